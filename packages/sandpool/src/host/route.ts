import type { SandpoolError } from '../errors.js';
import type { ResolvedKey } from '../key.js';
import type { Cell } from './cell.js';
import type { KeyTotals } from './key-stats.js';

export type ReloadOutcome = { ok: true } | { ok: false; error: SandpoolError };

/**
 * Routing state of one key: the cell serving it and, during a blue-green reload, the
 * candidate loading beside it. Every count it answers is derived from the sets it and its
 * cells hold.
 */
export class Route {
  serving: Cell | null = null;
  candidate: Cell | null = null;
  /**
   * Every cell of this key that has not ended: serving, candidate, retired by a reload, or
   * detached and dying. A call not settled yet is held by one of them, waiting or running,
   * so the key's pending calls are counted there, with no set of calls to keep per call.
   */
  private readonly live = new Set<Cell>();
  /** Cells a reload retired that have not exited yet: the old code is gone when this empties. */
  readonly replaced = new Set<Cell>();
  private waiters: Array<(outcome: ReloadOutcome) => void> = [];
  /** Why the reload in flight did not take, if it did not. */
  private failure: SandpoolError | null = null;

  constructor(
    readonly key: ResolvedKey,
    /** Its totals for keyStats(), looked up once per route rather than once per call. */
    readonly totals: KeyTotals,
  ) {}

  /** A cell made for this key; it counts until it ends. */
  adopt(cell: Cell): void {
    this.live.add(cell);
  }

  /** The cell has ended: it holds no call and no slot. */
  release(cell: Cell): void {
    this.live.delete(cell);
    this.replaced.delete(cell);
  }

  get cells(): ReadonlySet<Cell> {
    return this.live;
  }

  /** Calls of this key not settled yet, waiting or running, across its cells. */
  get pending(): number {
    let count = 0;
    for (const cell of this.live) count += cell.held;
    return count;
  }

  get unused(): boolean {
    return this.live.size === 0 && this.serving === null && this.candidate === null;
  }

  /** The cell's role in this route, which eviction respects. */
  isCandidate(cell: Cell): boolean {
    return this.candidate === cell;
  }

  isBeingReplaced(cell: Cell): boolean {
    return this.serving === cell && this.candidate !== null;
  }

  /** Resolves once the reloads now in flight have settled (see `settleReloads`). */
  waitForReload(): Promise<ReloadOutcome> {
    return new Promise((resolve) => {
      this.waiters.push(resolve);
      this.settleReloads();
    });
  }

  /** New code failed to load while a reload was waited for; the old code, if any, stays. */
  reloadFailed(error: SandpoolError): void {
    if (this.waiters.length > 0) this.failure = error;
  }

  /** New code took over: whatever failed before it no longer matters. */
  reloadTook(): void {
    this.failure = null;
  }

  /**
   * A reload has settled when no candidate is loading, the serving cell owes no reload of
   * its own, and every cell it replaced has exited (or the new code failed and the old stays).
   */
  settleReloads(): void {
    if (this.waiters.length === 0) return;
    if (this.candidate !== null || this.replaced.size > 0) return;
    // A serving cell that has not finished loading (or must load again) has not taken yet.
    const serving = this.serving?.phase.name;
    if (this.serving?.stale === true || serving === 'resolving' || serving === 'queued' || serving === 'starting')
      return;
    const outcome: ReloadOutcome = this.failure === null ? { ok: true } : { ok: false, error: this.failure };
    const waiters = this.waiters;
    this.waiters = [];
    this.failure = null;
    for (const resolve of waiters) resolve(outcome);
  }
}
