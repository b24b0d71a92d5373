import { EXIT_REASONS, type ExitReason } from '../../errors.js';
import type { EvictReason, PoolEvents } from '../../types.js';
import type { SlotBook } from '../slots/scheduler.js';
import type { Call } from './call.js';
import type { Cell, CellObserver, CellPhase, PhaseName } from './cell.js';

type Emit = <E extends keyof PoolEvents>(event: E, ...args: PoolEvents[E]) => void;

const RETIRE_REASONS: readonly EvictReason[] = ['lru', 'idle', 'cpu', 'reload', 'removed', 'closed'];
const WITH_THREAD = ['starting', 'ready', 'draining', 'exiting'] as const;

/** What stats() counts since the pool started. */
export interface Totals {
  spawned: number;
  retired: Record<EvictReason, number>;
  died: Record<ExitReason, number>;
}

/**
 * The cells by phase, kept by the one transition function (Cell.transition calls here and
 * nowhere else does): every gauge is the size of a set, and every total and event is counted
 * at the transition that makes it true. It also holds the calls waiting for a slot, which
 * cells add and remove as they take calls in and hand them on.
 */
export class Census implements CellObserver, SlotBook<Cell> {
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
  /** Calls held by cells that have no worker yet (resolving their file or queued for a slot). */
  readonly slotWaiters = new Set<Call>();
  readonly totals: Totals = {
    spawned: 0,
    retired: zeroes(RETIRE_REASONS),
    died: zeroes(EXIT_REASONS),
  };

  constructor(private readonly emit: Emit) {}

  phaseChanged(cell: Cell, from: CellPhase | null, to: CellPhase): void {
    if (from !== null && from.name !== 'ended') this.byPhase[from.name].delete(cell);
    if (to.name !== 'ended') this.byPhase[to.name].add(cell);
    this.countSlot(cell, 'thread' in to);
    const key = cell.key.text;
    if (to.name === 'starting') {
      this.totals.spawned += 1;
      this.announce('spawn', { key, reason: to.from, threadId: to.thread.threadId, pid: to.thread.pid });
      return;
    }
    const retired = from?.name === 'starting' || from?.name === 'ready' ? retiredFor(to) : null;
    if (retired !== null && 'thread' in to) {
      this.totals.retired[retired] += 1;
      this.announce('evict', { key, reason: retired, threadId: to.thread.threadId, pid: to.thread.pid });
    } else if (to.name === 'ended' && from !== null && 'thread' in from && to.end !== null) {
      const reason = 'died' in to.end ? to.end.died : 'retired';
      if (reason !== 'retired') this.totals.died[reason] += 1;
      this.announce('exit', { key, reason, threadId: from.thread.threadId, pid: from.thread.pid });
    }
  }

  slotWait(call: Call, waits: boolean): void {
    if (waits) this.slotWaiters.add(call);
    else this.slotWaiters.delete(call);
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
    for (const phase of WITH_THREAD) count += this.byPhase[phase].size;
    return count;
  }

  *withThread(): Generator<Cell> {
    for (const phase of WITH_THREAD) yield* this.byPhase[phase];
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

/** Why a phase retires its cell, if it is a retirement: draining, or exiting as the pool asked. */
function retiredFor(phase: CellPhase): EvictReason | null {
  if (phase.name === 'draining') return phase.reason;
  if (phase.name === 'exiting' && 'retired' in phase.end) return phase.end.retired;
  return null;
}

function zeroes<R extends string>(reasons: readonly R[]): Record<R, number> {
  return Object.fromEntries(reasons.map((reason) => [reason, 0])) as Record<R, number>;
}
