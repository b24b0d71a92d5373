import type { RetireReason, ThreadEnd } from './agent-worker.js';
import type { Cell, CellObserver, CellPhase, PhaseName } from './cell.js';
import { isExitReason } from './pool-errors.js';
import type { PoolEvents } from './pool-types.js';

type Emit = <E extends keyof PoolEvents>(event: E, ...args: PoolEvents[E]) => void;

const RETIRE_REASONS: ReadonlySet<ThreadEnd> = new Set<RetireReason>([
  'lru',
  'idle',
  'reload',
  'removed',
  'closed',
  'cpu',
]);
const WITH_THREAD: readonly PhaseName[] = ['starting', 'ready', 'draining', 'exiting'];

/**
 * The cells by phase, kept by the one transition function (Cell.transition calls here and
 * nowhere else does): every gauge is the size of a set, and every total and event is counted
 * at the transition that makes it true.
 */
export class Census implements CellObserver {
  private readonly byPhase: Record<Exclude<PhaseName, 'ended'>, Set<Cell>> = {
    resolving: new Set(),
    queued: new Set(),
    starting: new Set(),
    ready: new Set(),
    draining: new Set(),
    exiting: new Set(),
    stuck: new Set(),
  };
  /** Per swarm, its cells holding a slot (a thread): what maxWorkersPerSwarm bounds. */
  private readonly bySwarm = new Map<string, Set<Cell>>();
  readonly totals = { spawned: 0, evicted: 0, crashed: 0 };

  constructor(private readonly emit: Emit) {}

  phaseChanged(cell: Cell, from: CellPhase | null, to: CellPhase): void {
    if (from !== null && from.name !== 'ended') this.byPhase[from.name].delete(cell);
    if (to.name !== 'ended') this.byPhase[to.name].add(cell);
    this.countSlot(cell, 'thread' in to);
    const key = cell.key.text;
    if (to.name === 'starting') {
      this.totals.spawned += 1;
      this.announce('spawn', { key, reason: to.from, threadId: to.thread.threadId });
    } else if (
      (to.name === 'draining' || to.name === 'exiting') &&
      (from?.name === 'starting' || from?.name === 'ready') &&
      RETIRE_REASONS.has(to.reason)
    ) {
      this.totals.evicted += 1;
      this.announce('evict', { key, reason: to.reason as RetireReason, threadId: to.thread.threadId });
    } else if (to.name === 'ended' && from !== null && 'thread' in from && to.end !== null) {
      if (isExitReason(to.end)) this.totals.crashed += 1;
      this.announce('exit', { key, reason: to.end, threadId: from.thread.threadId });
    }
  }

  /** Slots held by one swarm's cells. */
  slotsOf(swarm: string): number {
    return this.bySwarm.get(swarm)?.size ?? 0;
  }

  private countSlot(cell: Cell, holds: boolean): void {
    const { swarm } = cell.key;
    const cells = this.bySwarm.get(swarm);
    if (holds) {
      if (cells === undefined) this.bySwarm.set(swarm, new Set([cell]));
      else cells.add(cell);
    } else if (cells?.delete(cell) && cells.size === 0) {
      this.bySwarm.delete(swarm);
    }
  }

  cells(phase: Exclude<PhaseName, 'ended'>): ReadonlySet<Cell> {
    return this.byPhase[phase];
  }

  /** Keyed threads alive, draining and exiting ones included: what maxWorkers bounds. */
  get slotHolders(): number {
    let count = 0;
    for (const phase of WITH_THREAD) count += this.byPhase[phase as Exclude<PhaseName, 'ended'>].size;
    return count;
  }

  *withThread(): Generator<Cell> {
    for (const phase of WITH_THREAD) yield* this.byPhase[phase as Exclude<PhaseName, 'ended'>];
  }

  /**
   * Listeners run after the books are straight; one that throws must not leave a transition
   * half done, so its error is rethrown on its own tick, as an uncaught error of the host's.
   */
  private announce<E extends 'spawn' | 'evict' | 'exit'>(event: E, ...args: PoolEvents[E]): void {
    try {
      this.emit(event, ...args);
    } catch (error) {
      process.nextTick(() => {
        throw error;
      });
    }
  }
}
