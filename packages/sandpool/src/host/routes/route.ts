import type { SandpoolError } from '../../errors.js';
import type { ResolvedKey } from '../../key.js';
import { liveDir } from '../../store/layout.js';
import { digestOf, type SnapshotRef } from '../../store/names.js';
import type { PoolEvents } from '../../types.js';
import type { Call, CallBook } from '../cells/call.js';
import { Cell, type CellObserver, type CellRoute } from '../cells/cell.js';
import { unsendable } from '../cells/channel.js';
import type { Lifecycle } from '../cells/lifecycle.js';
import type { Scheduler } from '../slots/scheduler.js';
import type { Backoff } from './backoff.js';
import { settledStamp, stampFiles } from './freshness.js';
import type { KeyBook, KeyTotals } from './key-book.js';
import type { LiveWatcher } from './watch.js';

export type ReloadOutcome = { ok: true } | { ok: false; error: SandpoolError };

/** What every route of a pool shares. */
export interface RouteContext {
  readonly root: string;
  readonly census: CellObserver;
  readonly lifecycle: Lifecycle;
  readonly scheduler: Scheduler<Cell>;
  readonly backoff: Backoff;
  readonly book: KeyBook;
  readonly watcher: LiveWatcher | null;
  readonly queueTimeoutMs: number;
  readonly loadTimeoutMs: number;
  /** Whether the pool is closing: no new reload candidate starts then. */
  closing(): boolean;
  /** Order of first demand, for a new cell. */
  nextArrival(): number;
  /** The route holds nothing: the table forgets it (if it is still the key's route). */
  forget(route: Route): void;
  /** A live cell of `swarm` has ended: the watcher may stop watching it. */
  liveCellEnded(swarm: string): void;
  emit<E extends keyof PoolEvents>(event: E, ...args: PoolEvents[E]): void;
}

/**
 * One key: the cell serving it and, during a blue-green reload, the candidate loading
 * beside it. Calls reach the serving cell here and tell the route when they settle; the
 * route decides what its cells' starts, failures and deaths mean for the key (back-off,
 * reload outcomes, routing). Every count it answers is derived from the sets it and its
 * cells hold.
 */
export class Route implements CellRoute, CallBook {
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
  /**
   * Its snapshot name points elsewhere now: it takes no new call (the table no longer routes
   * to it), its cells finish what they hold and end, and none is started for a new call.
   */
  superseded = false;

  constructor(
    readonly key: ResolvedKey,
    /** Its totals for keyStats(), looked up once per route rather than once per call. */
    readonly totals: KeyTotals,
    private readonly ctx: RouteContext,
    /** The content a snapshot key's route serves, resolved when it opened; null for live. */
    readonly snapshot: SnapshotRef | null = null,
  ) {}

  /** The one content digest this route serves (SnapshotInfo.digest); null for live. */
  get digest(): string | null {
    return this.snapshot === null ? null : digestOf(this.snapshot);
  }

  /** Its name moved: its cells finish what they hold and end (one still loading serves its callers first). */
  supersede(): void {
    this.superseded = true;
    for (const cell of [this.serving, this.candidate]) {
      if (cell === null) continue;
      const phase = cell.phase.name;
      // A cell not started yet holds calls admitted before the move: it serves them, then ends (see serves).
      if (phase === 'starting' || phase === 'ready') this.ctx.lifecycle.retire(cell, 'reload');
    }
    this.tidy();
  }

  // ---- calls ------------------------------------------------------------------------------

  /** A call admitted for this key: it runs on the serving cell, started if there is none. */
  accept(call: Call): void {
    const cell = this.serving ?? this.open();
    this.ctx.scheduler.touch(cell);
    call.site = cell;
    const { phase } = cell;
    if (phase.name === 'ready') {
      // Accepted this instant: its acceptance time is its hand-off time.
      phase.channel.post(call, call.acceptedAt);
      return;
    }
    try {
      call.copyArgs();
    } catch (error) {
      unsendable(call, error);
      return;
    }
    cell.hold(call, this.ctx.queueTimeoutMs);
  }

  settled(call: Call, failed: boolean): void {
    this.ctx.book.settled(this.totals, failed, performance.now() - call.acceptedAt);
    if (!failed && this.ctx.backoff.active) this.ctx.backoff.reset(this.key.text);
    this.tidy();
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

  // ---- its cells ----------------------------------------------------------------------------

  private open(): Cell {
    const cell = this.newCell();
    this.serving = cell;
    void this.ctx.lifecycle.prepare(cell);
    return cell;
  }

  private newCell(): Cell {
    const { census, lifecycle, loadTimeoutMs } = this.ctx;
    const cell = new Cell(this, this.ctx.nextArrival(), census, lifecycle, loadTimeoutMs);
    this.live.add(cell);
    return cell;
  }

  isCandidate(cell: Cell): boolean {
    return this.candidate === cell;
  }

  isBeingReplaced(cell: Cell): boolean {
    return this.serving === cell && this.candidate !== null;
  }

  /** A reload loads only files that have stopped changing, and checks after the load that they did not change under it. */
  async beforeLoad(cell: Cell): Promise<void> {
    if (this.candidate === cell && this.key.snapshot === null) {
      cell.filesBefore = await settledStamp(liveDir(this.ctx.root, this.key.swarm));
    }
  }

  loading(_cell: Cell): void {
    if (this.key.snapshot === null) this.ctx.watcher?.watch(this.key.swarm);
  }

  promote(cell: Cell): boolean {
    if (this.candidate !== cell) return false;
    this.promoteIfFresh(cell);
    return true;
  }

  serves(cell: Cell): void {
    if (this.superseded) {
      this.ctx.lifecycle.retire(cell, 'reload');
      this.tidy();
      return;
    }
    if (this.serving === cell && (cell.stale || this.changedSince(cell))) {
      // Files changed while it loaded: it may hold the old code.
      cell.stale = false;
      this.startCandidate();
    }
    this.tidy();
  }

  prepareFailed(cell: Cell, error: SandpoolError): void {
    if (this.candidate === cell) this.candidateFailed(cell, error);
  }

  /** A reload candidate leaves the old worker serving; a key's own worker fails its waiting callers and backs the key off. */
  startFailed(cell: Cell, error: SandpoolError): void {
    if (this.candidate === cell) {
      this.candidateFailed(cell, error);
      return;
    }
    this.reloadFailed(error);
    this.ctx.backoff.loadFailed(this.key.text, error, Date.now());
    for (const call of cell.takeWaiting()) call.settle(error);
    this.detach(cell);
  }

  yieldToCandidate(cell: Cell): boolean {
    if (!this.isBeingReplaced(cell)) return false;
    // It makes room for its own candidate: the candidate serves from now on, once it starts.
    this.serving = this.candidate;
    this.candidate = null;
    this.retireReplaced(cell);
    return true;
  }

  detach(cell: Cell): void {
    if (this.serving === cell) this.serving = null;
    if (this.candidate === cell) this.candidate = null;
    // A key whose last cell leaves holds nothing: it must not stay routed while that cell exits.
    this.tidy();
  }

  released(cell: Cell, death: SandpoolError | null): void {
    this.live.delete(cell);
    this.replaced.delete(cell);
    if (death !== null) this.ctx.backoff.died(this.key.text, death, Date.now());
    this.tidy();
    if (this.key.snapshot === null) this.ctx.liveCellEnded(this.key.swarm);
  }

  /** Settles reloads that are done and lets the table forget a route that holds nothing. */
  private tidy(): void {
    this.settleReloads();
    if (this.unused) this.ctx.forget(this);
  }

  // ---- reload -----------------------------------------------------------------------------

  /** Null when the key has no code loaded yet: a cell still starting up will read the new files anyway. */
  reload(): Promise<ReloadOutcome> | null {
    const serving = this.serving;
    if (serving === null || serving.phase.name === 'resolving' || serving.phase.name === 'queued') return null;
    if (serving.phase.name === 'starting' || this.candidate !== null) {
      // It may have read the old files: reload again once it serves.
      (this.candidate ?? serving).stale = true;
    } else {
      this.startCandidate();
    }
    return this.waitForReload();
  }

  private startCandidate(): void {
    if (this.ctx.closing() || this.serving === null) return;
    const candidate = this.newCell();
    this.candidate = candidate;
    void this.ctx.lifecycle.prepare(candidate);
  }

  /** Whether a live cell's files changed since it started to load (see settledStamp). */
  private changedSince(cell: Cell): boolean {
    return cell.filesBefore !== null && stampFiles(liveDir(this.ctx.root, this.key.swarm)) !== cell.filesBefore;
  }

  /**
   * A candidate that loaded while its files were being written may hold half a file: the old
   * worker keeps serving, and a fresh candidate reads the files again.
   */
  private promoteIfFresh(candidate: Cell): void {
    if (candidate.stale || this.changedSince(candidate)) {
      // The fresh candidate first: retiring the stale one settles reloads that see no candidate.
      this.candidate = null;
      this.startCandidate();
      this.ctx.lifecycle.retire(candidate, 'reload');
      this.tidy();
      return;
    }
    const old = this.serving;
    this.candidate = null;
    this.serving = candidate;
    // New code took over: whatever failed before it no longer matters.
    this.failure = null;
    if (old !== null) this.retireReplaced(old);
    this.ctx.lifecycle.drained(candidate);
    this.tidy();
  }

  private candidateFailed(cell: Cell, error: SandpoolError): void {
    this.candidate = null;
    this.reloadFailed(error);
    this.ctx.emit('reload-failed', { key: this.key.text, reason: 'load-failed', ...cell.worker, error });
    // Files changed again while it loaded (the rest of a half-written file, say): try again.
    if (cell.stale) this.startCandidate();
    this.tidy();
  }

  /** Counted until it exits, so invalidate() resolves once the old code is gone. */
  private retireReplaced(old: Cell): void {
    if (old.thread !== null && (old.phase.name === 'ready' || old.phase.name === 'starting')) this.replaced.add(old);
    this.ctx.lifecycle.retire(old, 'reload');
  }

  /** Resolves once the reloads now in flight have settled (see `settleReloads`). */
  private waitForReload(): Promise<ReloadOutcome> {
    return new Promise((resolve) => {
      this.waiters.push(resolve);
      this.settleReloads();
    });
  }

  /** New code failed to load while a reload was waited for; the old code, if any, stays. */
  private reloadFailed(error: SandpoolError): void {
    if (this.waiters.length > 0) this.failure = error;
  }

  /**
   * A reload has settled when no candidate is loading, the serving cell owes no reload of
   * its own, and every cell it replaced has exited (or the new code failed and the old stays).
   */
  private settleReloads(): void {
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
