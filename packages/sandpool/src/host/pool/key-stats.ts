import { resolveKey } from '../../key.js';
import type { KeyStats } from '../../types.js';
import type { Quotas } from '../capabilities/quotas.js';
import type { Cell } from '../cells/cell.js';
import type { KeyBook } from '../routes/key-book.js';
import type { Route } from '../routes/route.js';
import type { MemoryReading } from '../workers/memory-probe.js';

export interface KeySources {
  readonly book: KeyBook;
  readonly routes: ReadonlyMap<string, Route>;
  /** Cells holding a thread. */
  readonly cells: Iterable<Cell>;
  memory(cell: Cell): MemoryReading | null;
  demoted(cell: Cell): boolean;
  readonly quotas: Quotas;
}

/** One entry per key the pool routes, runs or has totals for. */
export function collectKeyStats({ book, routes, cells, memory, demoted, quotas }: KeySources): KeyStats[] {
  const texts = new Set<string>([...book.keys(), ...routes.keys()]);
  const byKey = new Map<string, Cell[]>();
  for (const cell of cells) {
    const list = byKey.get(cell.key.text);
    if (list === undefined) byKey.set(cell.key.text, [cell]);
    else list.push(cell);
    texts.add(cell.key.text);
  }
  const stats: KeyStats[] = [];
  for (const text of texts) {
    const key = resolveKey(text);
    const route = routes.get(text);
    const serving = route?.serving ?? null;
    const reading = serving === null ? null : memory(serving);
    const keyCells = byKey.get(text) ?? [];
    // Only a route's own cells hold waiting calls: no scan of its pending calls.
    const queued = (serving?.waiting?.length ?? 0) + (route?.candidate?.waiting?.length ?? 0);
    stats.push({
      key: text,
      swarm: key.swarm,
      snapshot: key.snapshot,
      stem: key.stem,
      state: serving?.phase.name ?? null,
      isolation: serving?.thread?.isolation ?? null,
      cgroup: serving?.thread?.cgroupBounds() ?? null,
      workers: keyCells.length,
      heapBytes: reading?.heap ?? null,
      externalBytes: reading?.external ?? null,
      inFlight: (route?.pending ?? 0) - queued,
      queued,
      demoted: keyCells.some(demoted),
      ...book.read(text),
      ...quotas.read(text),
    });
  }
  return stats;
}
