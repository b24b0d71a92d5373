import { resolveKey } from '../key.js';
import type { Cell } from './cell.js';
import type { MemoryReading } from './memory-probe.js';
import type { Route } from './route.js';

/** What `pool.keyStats()` says of one key: the per-tenant view of who uses what. */
export interface KeyStats {
  key: string;
  swarm: string;
  snapshot: string | null;
  stem: string;
  /** Phase of the worker serving it, or null when it has none now. */
  state: string | null;
  /** Its keyed threads alive (two during a reload). */
  workers: number;
  /** CPU time its workers used, also between calls, since the pool started (ms). */
  cpuMs: number;
  /** Heap and external bytes of its serving worker at the last reading; null when not read. */
  heapBytes: number | null;
  externalBytes: number | null;
  /** Calls settled, and how many of them failed. */
  calls: number;
  errors: number;
  /** Calls running on a worker now, and waiting for a slot or a start. */
  inFlight: number;
  queued: number;
  /** Its worker runs at a lowered CPU priority now. */
  demoted: boolean;
  /** Latency of its last LATENCY_WINDOW calls, from call() to settlement (ms). */
  latency: { p50: number; p99: number; max: number } | null;
}

/** Latencies kept per key: enough for a p99 that moves with the load, bounded per key. */
const LATENCY_WINDOW = 256;
/** Keys whose totals are kept at most: the first seen are forgotten first. */
const MAX_KEYS = 10_000;

export interface KeyTotals {
  calls: number;
  errors: number;
  cpuMs: number;
  latencies: Float64Array;
  next: number;
}

/**
 * Totals per key, counted where a call settles and where CPU is sampled; they outlive the
 * key's routes and workers, bounded to MAX_KEYS keys.
 */
export class KeyBook {
  private readonly totals = new Map<string, KeyTotals>();

  settled(totals: KeyTotals, failed: boolean, ms: number): void {
    totals.calls += 1;
    if (failed) totals.errors += 1;
    totals.latencies[totals.next % LATENCY_WINDOW] = ms;
    totals.next += 1;
  }

  cpu(key: string, ms: number): void {
    this.of(key).cpuMs += ms;
  }

  keys(): IterableIterator<string> {
    return this.totals.keys();
  }

  read(key: string): Pick<KeyStats, 'calls' | 'errors' | 'cpuMs' | 'latency'> {
    const totals = this.totals.get(key);
    if (totals === undefined) return { calls: 0, errors: 0, cpuMs: 0, latency: null };
    const count = Math.min(totals.next, LATENCY_WINDOW);
    let latency: KeyStats['latency'] = null;
    if (count > 0) {
      const sorted = totals.latencies.slice(0, count).sort();
      const at = (q: number): number => round(sorted[Math.min(count - 1, Math.floor(q * count))] as number);
      latency = { p50: at(0.5), p99: at(0.99), max: round(sorted[count - 1] as number) };
    }
    return { calls: totals.calls, errors: totals.errors, cpuMs: round(totals.cpuMs), latency };
  }

  of(key: string): KeyTotals {
    const known = this.totals.get(key);
    if (known !== undefined) return known;
    const totals: KeyTotals = { calls: 0, errors: 0, cpuMs: 0, latencies: new Float64Array(LATENCY_WINDOW), next: 0 };
    this.totals.set(key, totals);
    if (this.totals.size > MAX_KEYS) {
      // Reordering on every call would cost the hot path more than an early-seen key is worth.
      const oldest = this.totals.keys().next().value;
      if (oldest !== undefined) this.totals.delete(oldest);
    }
    return totals;
  }
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}

export interface KeySources {
  readonly book: KeyBook;
  readonly routes: ReadonlyMap<string, Route>;
  /** Cells holding a thread. */
  readonly cells: Iterable<Cell>;
  memory(cell: Cell): MemoryReading | null;
  demoted(cell: Cell): boolean;
}

/** One entry per key the pool routes, runs or has totals for. */
export function collectKeyStats({ book, routes, cells, memory, demoted }: KeySources): KeyStats[] {
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
      workers: keyCells.length,
      heapBytes: reading?.heap ?? null,
      externalBytes: reading?.external ?? null,
      inFlight: (route?.pending ?? 0) - queued,
      queued,
      demoted: keyCells.some(demoted),
      ...book.read(text),
    });
  }
  return stats;
}
