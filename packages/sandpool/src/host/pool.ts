import { EventEmitter } from 'node:events';
import { resolve as resolvePath } from 'node:path';
import { SandpoolError } from '../errors.js';
import { issuesOf } from '../issues.js';
import { type AgentKey, type ResolvedKey, resolveKey } from '../key.js';
import {
  type CallOptions,
  type PoolOptions,
  parseCallOptions,
  parsePoolOptions,
  type ResolvedPoolOptions,
} from '../options.js';
import { copyArgs } from '../protocol/clone.js';
import type { Outcome } from '../protocol/messages.js';
import { liveDir } from '../store/layout.js';
import { Backoff } from './backoff.js';
import { type CallTransport, PendingCall } from './call.js';
import { Cell, type CellHost } from './cell.js';
import { stampFiles } from './freshness.js';
import { warnIfHeapCapOverridden } from './heap-warning.js';
import { KeyState } from './key-state.js';
import { aborted, closedError, deathError, isExitReason, queueFull, snapshotGone } from './pool-errors.js';
import { PoolSnapshotStore } from './pool-snapshots.js';
import {
  type InvalidateSelector,
  InvalidateSelectorSchema,
  type PoolEvents,
  type PoolStats,
  type Remote,
} from './pool-types.js';
import { toSandpoolError } from './remote-error.js';
import { locateModule } from './resolve.js';
import { AgentThread, type RetireReason, type ThreadEnd } from './thread.js';
import { LiveWatcher } from './watch.js';

/** Longest function name a call may carry: names are cached in the worker. */
const MAX_FN_NAME = 1024;

/**
 * The coordinator: routes every key to a cell (one worker thread), bounds how many live,
 * and decides every policy (eviction, back-off, reload, close). Cells only report.
 */
export class Pool extends EventEmitter<PoolEvents> implements CellHost, AsyncDisposable {
  readonly options: ResolvedPoolOptions;
  /** The snapshot store under this pool's root; `remove` drains the snapshot's workers first. */
  readonly snapshots: PoolSnapshotStore;
  private readonly root: string;
  private readonly keys = new Map<string, KeyState>();
  /** Every cell holding a worker thread, draining and exiting ones included. */
  private readonly cells = new Set<Cell>();
  /** Cells waiting for a worker slot, in the order their key was first asked for. */
  private readonly slotQueue: Cell[] = [];
  /** Blank booted workers, each with the promise of its exit. */
  private readonly spares = new Map<AgentThread, Promise<void>>();
  private readonly backoff = new Backoff();
  /** Snapshots being removed: their keys fail at once rather than start a worker on them. */
  private readonly removing = new Set<string>();
  private readonly watcher: LiveWatcher | null;
  /** Keyed threads alive: never above maxWorkers. */
  private alive = 0;
  /** Threads told to terminate that have not exited yet: slots about to free. */
  private exiting = 0;
  /** Calls in cells that have no worker yet (resolving their file or queued for a slot). */
  private waitingForSlot = 0;
  private useClock = 0;
  private arrivals = 0;
  private readonly counters = { spawned: 0, evicted: 0, crashed: 0 };
  private closing: Promise<void> | null = null;

  constructor(options: PoolOptions) {
    super();
    this.options = parsePoolOptions(options);
    this.root = resolvePath(this.options.root);
    this.snapshots = new PoolSnapshotStore(this.root, (swarm, name, removeFiles) =>
      this.removeSnapshot(swarm, name, removeFiles),
    );
    warnIfHeapCapOverridden(this.options.resourceLimits);
    this.watcher = this.options.watch
      ? new LiveWatcher(this.root, (swarm) => {
          if (this.closing === null) void this.invalidate({ swarm });
        })
      : null;
    this.fillSpares();
  }

  /** Calls `fn` of the key's agent; never throws synchronously. */
  call<T = unknown>(
    key: AgentKey | string,
    fn: string,
    args: readonly unknown[] = [],
    options?: CallOptions,
  ): Promise<T> {
    return this.submit(key, fn, args, options, 'message') as Promise<T>;
  }

  /** A typed proxy over comlink: every export of the agent becomes `(...args) => Promise`. */
  remote<T>(key: AgentKey | string, options?: CallOptions): Remote<T> {
    return new Proxy(Object.create(null) as Remote<T>, {
      get: (_target, property) => {
        // Not thenable, so `await pool.remote(key)` does not call a `then` export.
        if (typeof property !== 'string' || property === 'then') return undefined;
        return (...args: unknown[]) => this.submit(key, property, args, options, 'comlink');
      },
    });
  }

  stats(): PoolStats {
    let busy = 0;
    let idle = 0;
    let queued = this.waitingForSlot;
    for (const cell of this.cells) {
      if (cell.running.size > 0) busy += 1;
      else if (cell.idle) idle += 1;
      queued += cell.waiting.length;
    }
    return { workers: this.alive, spares: this.spares.size, busy, idle, queued, ...this.counters };
  }

  /**
   * Reloads the matching workers blue-green (`snapshot` omitted means live); resolves when
   * the old ones are gone, or have stayed because the new code failed to load.
   */
  async invalidate(selector: InvalidateSelector): Promise<void> {
    const parsed = InvalidateSelectorSchema.safeParse(selector);
    if (!parsed.success) {
      throw new SandpoolError('ERR_SANDPOOL_INVALID_KEY', 'invalid invalidate selector', {
        issues: issuesOf(parsed.error),
      });
    }
    if (this.closing !== null) throw closedError();
    const { swarm, stem } = parsed.data;
    const snapshot = parsed.data.snapshot ?? null;
    const matches = (key: ResolvedKey): boolean =>
      key.swarm === swarm && key.snapshot === snapshot && (stem === undefined || key.stem === stem);
    this.backoff.resetWhere((text) => matches(resolveKey(text)));
    const settled: Promise<void>[] = [];
    for (const state of this.keys.values()) {
      if (matches(state.key)) settled.push(this.reload(state));
    }
    await Promise.all(settled);
  }

  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // ---- calls ---------------------------------------------------------------------------

  private submit(
    keyInput: AgentKey | string,
    fn: string,
    args: readonly unknown[],
    options: CallOptions | undefined,
    transport: CallTransport,
  ): Promise<unknown> {
    try {
      if (this.closing !== null) throw closedError();
      const key = resolveKey(keyInput);
      if (typeof fn !== 'string' || fn === '' || fn.length > MAX_FN_NAME) {
        throw new SandpoolError('ERR_SANDPOOL_EXPORT_NOT_FOUND', 'the function name must be a non-empty string', {
          key: key.text,
        });
      }
      if (!Array.isArray(args)) {
        throw new SandpoolError('ERR_SANDPOOL_INVALID_OPTIONS', 'args must be an array', { key: key.text });
      }
      const { timeoutMs, signal } = parseCallOptions(options);
      if (signal?.aborted) throw aborted(key.text);
      if (this.backoff.active) {
        const blocked = this.backoff.blocked(key.text, Date.now());
        if (blocked !== null) throw blocked;
      }
      if (this.removing.size > 0 && key.snapshot !== null && this.removing.has(`${key.swarm}@${key.snapshot}`)) {
        throw snapshotGone(key);
      }
      const known = this.keys.get(key.text);
      const state = known ?? new KeyState(key);
      if (state.pending >= this.options.maxPendingPerKey) {
        throw queueFull(key.text, `${state.pending} calls pending`);
      }
      const cell = state.serving;
      if ((cell === null || !cell.hasWorker) && this.waitingForSlot >= this.options.maxWaiting) {
        throw queueFull(key.text, `${this.waitingForSlot} calls wait for a worker`);
      }
      if (known === undefined) this.keys.set(key.text, state);
      return new Promise((resolve, reject) => {
        const timeout = timeoutMs ?? this.options.callTimeoutMs;
        const call = new PendingCall(state, fn, args as unknown[], timeout, signal, transport, resolve, reject);
        state.pending += 1;
        if (signal !== undefined) {
          call.onAbort = () => this.abort(call);
          signal.addEventListener('abort', call.onAbort, { once: true });
        }
        this.accept(cell ?? this.openCell(state), call);
      });
    } catch (error) {
      return Promise.reject(error);
    }
  }

  private accept(cell: Cell, call: PendingCall): void {
    cell.lastUsed = ++this.useClock;
    if (cell.state === 'ready') {
      cell.post(call);
      return;
    }
    try {
      call.args = copyArgs(call.args);
    } catch (error) {
      this.callUnsendable(cell, call, error);
      return;
    }
    call.cell = cell;
    cell.waiting.push(call);
    if (!cell.hasWorker) this.waitingForSlot += 1;
  }

  private finish(call: PendingCall, error: SandpoolError | null, value?: unknown): void {
    if (!call.settle(error, value)) return;
    call.state.pending -= 1;
    this.tidy(call.state);
  }

  private abort(call: PendingCall): void {
    const cell = call.cell;
    if (cell !== null && cell.running.get(call.id) === call) {
      // JavaScript cannot be interrupted: a running call is stopped with its worker.
      this.finish(call, aborted(call.keyText));
      this.kill(cell);
      return;
    }
    if (cell !== null) this.unqueue(cell, call);
    this.finish(call, aborted(call.keyText));
  }

  /** An aborted waiter leaves its queue; a start it shared with others goes on. */
  private unqueue(cell: Cell, call: PendingCall): void {
    const index = cell.waiting.indexOf(call);
    if (index < 0) return;
    cell.waiting.splice(index, 1);
    if (cell.hasWorker) return;
    this.waitingForSlot -= 1;
    if (cell.waiting.length === 0) this.cancelCell(cell);
  }

  /** Moves calls that waited on one cell to another, keeping the slot accounting true. */
  private moveWaiting(from: Cell, to: Cell): void {
    const calls = from.waiting.splice(0);
    if (!from.hasWorker) this.waitingForSlot -= calls.length;
    for (const call of calls) this.accept(to, call);
  }

  private failWaiting(cell: Cell, error: SandpoolError): void {
    const calls = cell.waiting.splice(0);
    if (!cell.hasWorker) this.waitingForSlot -= calls.length;
    for (const call of calls) this.finish(call, error);
  }

  // ---- cells ---------------------------------------------------------------------------

  private openCell(state: KeyState): Cell {
    const cell = new Cell(state.key, this, ++this.arrivals);
    state.serving = cell;
    void this.prepare(state, cell);
    return cell;
  }

  /** Finds the module, then waits for a slot: nothing is spawned for a key that has no file. */
  private async prepare(state: KeyState, cell: Cell): Promise<void> {
    try {
      cell.location = await locateModule(this.root, cell.key);
      if (state.candidate === cell && cell.key.snapshot === null) {
        cell.filesBefore = await stampFiles(liveDir(this.root, cell.key.swarm));
      }
    } catch (error) {
      if (cell.state !== 'resolving') return;
      const failure = toSandpoolError(error, cell.key.text);
      if (state.candidate === cell) this.candidateFailed(state, cell, failure);
      this.endWithoutWorker(cell, failure);
      return;
    }
    if (cell.state === 'resolving') this.enqueue(cell);
  }

  private enqueue(cell: Cell): void {
    cell.state = 'queued';
    let index = this.slotQueue.length;
    while (index > 0 && (this.slotQueue[index - 1] as Cell).arrival > cell.arrival) index -= 1;
    this.slotQueue.splice(index, 0, cell);
    this.pump();
  }

  /** Hands free slots to queued cells, and evicts idle cells to make room for the rest. */
  private pump(): void {
    while (this.slotQueue.length > 0 && this.alive < this.options.maxWorkers) {
      this.start(this.slotQueue.shift() as Cell);
    }
    let shortfall = this.slotQueue.length - this.exiting;
    if (shortfall <= 0) return;
    // A reload candidate does not evict the worker it is to replace: the old one keeps serving
    // until the new one is ready. Only when no other worker could ever make room (another key
    // waits, or every worker alive is being replaced) does it go first.
    const othersWait = this.slotQueue.some((cell) => !this.isCandidate(cell));
    const includeReplaced = othersWait || [...this.cells].every((cell) => this.isBeingReplaced(cell));
    while (shortfall > 0) {
      const victim = this.leastRecentlyUsedIdle(includeReplaced);
      if (victim === null) break;
      const state = this.keys.get(victim.key.text);
      if (state !== undefined && this.isBeingReplaced(victim)) this.retireReplaced(state, victim);
      else this.retire(victim, 'lru');
      shortfall -= 1;
    }
  }

  private leastRecentlyUsedIdle(includeReplaced: boolean): Cell | null {
    let victim: Cell | null = null;
    for (const cell of this.cells) {
      if (!cell.idle || cell.retiring !== null || (victim !== null && cell.lastUsed >= victim.lastUsed)) continue;
      if (this.isCandidate(cell) || (!includeReplaced && this.isBeingReplaced(cell))) continue;
      victim = cell;
    }
    return victim;
  }

  private isCandidate(cell: Cell): boolean {
    return this.keys.get(cell.key.text)?.candidate === cell;
  }

  private isBeingReplaced(cell: Cell): boolean {
    const state = this.keys.get(cell.key.text);
    return state !== undefined && state.serving === cell && state.candidate !== null;
  }

  private start(cell: Cell): void {
    const spare = this.takeSpare();
    const thread = spare ?? new AgentThread(this.options);
    this.alive += 1;
    this.cells.add(cell);
    this.waitingForSlot -= cell.waiting.length;
    cell.attach(thread, cell.location as NonNullable<Cell['location']>);
    if (cell.key.snapshot === null) this.watcher?.watch(cell.key.swarm);
    this.counters.spawned += 1;
    cell.loadTimer = setTimeout(() => this.loadTimedOut(cell), this.options.loadTimeoutMs);
    this.emit('spawn', { key: cell.key.text, reason: spare === null ? 'cold' : 'spare', threadId: thread.threadId });
    if (spare !== null) setImmediate(() => this.fillSpares());
  }

  cellReady(cell: Cell): void {
    if (cell.state !== 'starting') return;
    clearTimeout(cell.loadTimer);
    cell.state = cell.retiring === null ? 'ready' : 'draining';
    const state = this.keys.get(cell.key.text);
    if (state !== undefined && state.candidate === cell) {
      void this.promoteIfFresh(state, cell);
      return;
    }
    for (const call of cell.waiting.splice(0)) cell.post(call);
    if (cell.running.size === 0) this.cellIdle(cell);
    if (state === undefined) return;
    if (state.serving === cell && cell.staleOnReady) {
      // Files changed while it loaded: it may hold the old code.
      cell.staleOnReady = false;
      this.startCandidate(state);
    }
    this.tidy(state);
  }

  cellLoadFailed(cell: Cell, outcome: Outcome & { ok: false }): void {
    this.loadFailed(cell, toSandpoolError(outcome, cell.key.text));
  }

  private loadTimedOut(cell: Cell): void {
    const { text } = cell.key;
    const ms = this.options.loadTimeoutMs;
    this.loadFailed(
      cell,
      new SandpoolError('ERR_SANDPOOL_MODULE_LOAD', `${text} was still loading after ${ms} ms`, { key: text }),
    );
  }

  private loadFailed(cell: Cell, error: SandpoolError): void {
    if (cell.state !== 'starting') return;
    clearTimeout(cell.loadTimer);
    cell.failedToLoad = true;
    this.startFailed(cell, error);
    cell.state = 'draining';
    this.terminate(cell, 'crash');
  }

  /**
   * A worker that never became ready. A reload candidate leaves the old worker serving; a
   * key's own worker fails its waiting callers and backs the key off.
   */
  private startFailed(cell: Cell, error: SandpoolError): void {
    const state = this.keys.get(cell.key.text);
    if (state !== undefined && state.candidate === cell) {
      this.candidateFailed(state, cell, error);
      return;
    }
    this.backoff.loadFailed(cell.key.text, error, Date.now());
    this.failWaiting(cell, error);
    this.detach(cell);
  }

  private candidateFailed(state: KeyState, cell: Cell, error: SandpoolError): void {
    state.candidate = null;
    this.emit('reload-failed', { key: cell.key.text, reason: 'load-failed', threadId: cell.threadId, error });
    // Files changed again while it loaded (the rest of a half-written file, say): try again.
    if (cell.staleOnReady) this.startCandidate(state);
    this.tidy(state);
  }

  cellIdle(cell: Cell): void {
    const thread = cell.thread;
    if (thread === null) return;
    if (cell.state === 'draining') {
      this.terminate(cell, cell.retiring ?? 'closed');
      return;
    }
    if (cell.state !== 'ready') return;
    thread.setReferenced(false);
    cell.idleSince = Date.now();
    if (this.slotQueue.length > 0) {
      this.pump();
      if (cell.state !== 'ready') return;
    }
    this.armIdleTimer(cell);
  }

  private armIdleTimer(cell: Cell): void {
    const timeout = this.options.idleTimeoutMs;
    if (timeout === 0 || cell.idleTimer !== undefined) return;
    cell.idleTimer = setTimeout(
      () => {
        cell.idleTimer = undefined;
        if (!cell.idle) return;
        // Re-armed rather than reset on every call: one timer per idle stretch, not per call.
        if (Date.now() - cell.idleSince < timeout) this.armIdleTimer(cell);
        else this.retire(cell, 'idle');
      },
      Math.max(1, timeout - (Date.now() - cell.idleSince)),
    );
    cell.idleTimer.unref();
  }

  callCompleted(cell: Cell, call: PendingCall, outcome: Outcome): void {
    if (outcome.ok) {
      if (this.backoff.active) this.backoff.reset(cell.key.text);
      this.finish(call, null, outcome.value);
    } else {
      this.finish(call, toSandpoolError(outcome, cell.key.text));
    }
  }

  callUnsendable(cell: Cell, call: PendingCall, error: unknown): void {
    const { text } = cell.key;
    this.finish(
      call,
      new SandpoolError('ERR_SANDPOOL_DATA_CLONE', `arguments or result of ${text} ${call.fn}() cannot be cloned`, {
        key: text,
        cause: error,
      }),
    );
  }

  callTimedOut(cell: Cell, call: PendingCall): void {
    const { text } = cell.key;
    this.finish(
      call,
      new SandpoolError('ERR_SANDPOOL_TIMEOUT', `${text} ${call.fn}() outlived ${call.timeoutMs} ms`, { key: text }),
    );
    this.kill(cell);
  }

  /** Stops a worker under a call that must end now; its other calls reject as 'killed'. */
  private kill(cell: Cell): void {
    if (cell.thread === null || cell.thread.terminating) return;
    this.detach(cell);
    cell.state = 'draining';
    this.terminate(cell, 'killed');
  }

  cellEnded(cell: Cell, end: ThreadEnd, failure: Error | null): void {
    clearTimeout(cell.loadTimer);
    clearTimeout(cell.idleTimer);
    const wasStarting = cell.state === 'starting';
    cell.state = 'ended';
    this.alive -= 1;
    if (cell.thread?.terminating) this.exiting -= 1;
    this.cells.delete(cell);
    const key = cell.key.text;
    const death = isExitReason(end) ? end : null;
    if (wasStarting && death !== null) this.startFailed(cell, deathError(key, death, failure, true));
    const state = this.keys.get(key);
    this.detach(cell);
    const exitError = death === null ? closedError(key) : deathError(key, death, failure, false);
    for (const call of cell.running.values()) this.finish(call, exitError);
    cell.running.clear();
    if (death !== null) {
      this.counters.crashed += 1;
      // A kill is the pool's own doing and a failed load has backed off already.
      if (death !== 'killed' && !wasStarting && !cell.failedToLoad) this.backoff.died(key, exitError, Date.now());
    }
    this.emit('exit', { key, reason: end, threadId: cell.threadId });
    if (cell.replaced && state !== undefined) state.replaced -= 1;
    cell.markEnded();
    if (cell.key.snapshot === null && this.watcher !== null && !this.hasLiveCell(cell.key.swarm)) {
      this.watcher.unwatch(cell.key.swarm);
    }
    if (state !== undefined) this.tidy(state);
    this.pump();
  }

  /** The pool retires a cell: idle ones stop now, busy ones finish their calls first. */
  private retire(cell: Cell, reason: RetireReason): void {
    if (cell.retiring !== null || cell.state === 'ended' || cell.thread?.terminating === true) return;
    cell.retiring = reason;
    this.detach(cell);
    if (!cell.hasWorker) {
      // Only `removed` and `closed` retire a cell that never started: its callers asked too late.
      this.failWaiting(cell, reason === 'removed' ? snapshotGone(cell.key) : closedError(cell.key.text));
      this.cancelCell(cell);
      return;
    }
    this.counters.evicted += 1;
    this.emit('evict', { key: cell.key.text, reason, threadId: cell.threadId });
    if (cell.state === 'starting' && reason !== 'closed') return; // it serves its waiters first, then drains
    cell.state = 'draining';
    if (cell.running.size === 0) this.terminate(cell, reason);
  }

  private terminate(cell: Cell, reason: ThreadEnd): void {
    const thread = cell.thread;
    if (thread === null || thread.terminating) return;
    clearTimeout(cell.idleTimer);
    this.exiting += 1;
    thread.terminate(reason);
  }

  /** A cell with no worker yet leaves the queue; its waiting calls must be settled first. */
  private cancelCell(cell: Cell): void {
    const index = this.slotQueue.indexOf(cell);
    if (index >= 0) this.slotQueue.splice(index, 1);
    this.endWithoutWorker(cell, null);
  }

  private endWithoutWorker(cell: Cell, failure: SandpoolError | null): void {
    const state = this.keys.get(cell.key.text);
    this.detach(cell);
    if (failure !== null) this.failWaiting(cell, failure);
    cell.state = 'ended';
    cell.markEnded();
    if (state !== undefined) this.tidy(state);
  }

  /** The key stops routing to this cell; it keeps its worker until it is terminated. */
  private detach(cell: Cell): void {
    const state = this.keys.get(cell.key.text);
    if (state === undefined) return;
    if (state.serving === cell) state.serving = null;
    if (state.candidate === cell) state.candidate = null;
  }

  /** Settles reloads that are done and forgets keys that hold nothing. */
  private tidy(state: KeyState): void {
    state.settleReloads();
    if (state.unused && this.keys.get(state.key.text) === state) this.keys.delete(state.key.text);
  }

  private hasLiveCell(swarm: string): boolean {
    for (const cell of this.cells) if (cell.key.swarm === swarm && cell.key.snapshot === null) return true;
    return false;
  }

  // ---- reload --------------------------------------------------------------------------

  /** Blue-green: a candidate loads beside the serving cell and takes over once it is ready. */
  private reload(state: KeyState): Promise<void> {
    const serving = state.serving;
    // A cell that has not started yet will read the new files anyway.
    if (serving === null || serving.state === 'resolving' || serving.state === 'queued') return Promise.resolve();
    if (serving.state === 'starting' || state.candidate !== null) {
      // It may have read the old files: reload again once it serves.
      (state.candidate ?? serving).staleOnReady = true;
    } else {
      this.startCandidate(state);
    }
    return state.waitForReload();
  }

  private startCandidate(state: KeyState): void {
    if (this.closing !== null || state.serving === null) return;
    const candidate = new Cell(state.key, this, ++this.arrivals);
    state.candidate = candidate;
    void this.prepare(state, candidate);
  }

  /**
   * A candidate that loaded while its files were being written may hold half a file: the old
   * worker keeps serving, and a fresh candidate reads the files again.
   */
  private async promoteIfFresh(state: KeyState, candidate: Cell): Promise<void> {
    const { key } = candidate;
    const stale =
      candidate.staleOnReady ||
      (candidate.filesBefore !== null && (await stampFiles(liveDir(this.root, key.swarm))) !== candidate.filesBefore);
    if (state.candidate !== candidate || candidate.state !== 'ready') return;
    if (stale) {
      state.candidate = null;
      this.retire(candidate, 'reload');
      this.startCandidate(state);
      this.tidy(state);
      return;
    }
    this.promote(state, candidate);
    if (candidate.running.size === 0) this.cellIdle(candidate);
    this.tidy(state);
  }

  private promote(state: KeyState, candidate: Cell): void {
    const old = state.serving;
    state.candidate = null;
    state.serving = candidate;
    if (old === null) return;
    this.moveWaiting(old, candidate);
    this.retireReplaced(state, old);
  }

  /** Counted until it exits, so invalidate() resolves once the old code is gone. */
  private retireReplaced(state: KeyState, old: Cell): void {
    if (old.hasWorker && old.retiring === null && old.thread?.terminating !== true) {
      state.replaced += 1;
      old.replaced = true;
    }
    this.retire(old, 'reload');
  }

  // ---- snapshots -----------------------------------------------------------------------

  /** Calls to the snapshot fail while its workers drain and its files go; then it is gone. */
  private async removeSnapshot(swarm: string, name: string, removeFiles: () => Promise<void>): Promise<void> {
    const id = `${swarm}@${name}`;
    this.removing.add(id);
    try {
      const ended: Promise<void>[] = [];
      for (const state of [...this.keys.values()]) {
        if (state.key.swarm !== swarm || state.key.snapshot !== name) continue;
        for (const cell of [state.serving, state.candidate]) {
          if (cell === null) continue;
          ended.push(cell.ended);
          this.retire(cell, 'removed');
        }
      }
      await Promise.all(ended);
      await removeFiles();
    } finally {
      this.removing.delete(id);
    }
  }

  // ---- spares --------------------------------------------------------------------------

  private fillSpares(): void {
    while (this.closing === null && this.spares.size < this.options.spareWorkers) {
      const thread = new AgentThread(this.options);
      thread.setReferenced(false);
      this.spares.set(
        thread,
        new Promise((resolve) => {
          thread.owner = {
            onMessage: () => {},
            onEnd: () => {
              this.spares.delete(thread);
              resolve();
            },
          };
        }),
      );
    }
  }

  /** The oldest spare: the most likely to have finished booting. */
  private takeSpare(): AgentThread | null {
    for (const thread of this.spares.keys()) {
      this.spares.delete(thread);
      return thread;
    }
    return null;
  }

  // ---- close ---------------------------------------------------------------------------

  private async shutdown(): Promise<void> {
    this.watcher?.close();
    for (const cell of this.slotQueue.splice(0)) {
      this.failWaiting(cell, closedError(cell.key.text));
      this.endWithoutWorker(cell, null);
    }
    for (const state of [...this.keys.values()]) {
      for (const cell of [state.serving, state.candidate]) {
        if (cell !== null && !cell.hasWorker) this.retire(cell, 'closed');
      }
    }
    const ended = [...this.cells].map((cell) => cell.ended);
    for (const cell of [...this.cells]) {
      this.failWaiting(cell, closedError(cell.key.text));
      this.retire(cell, 'closed');
    }
    const sparesEnded = [...this.spares.values()];
    for (const thread of this.spares.keys()) thread.terminate('closed');
    const closeTimer = setTimeout(() => {
      for (const cell of this.cells) this.terminate(cell, 'closed');
    }, this.options.closeTimeoutMs);
    await Promise.all([...ended, ...sparesEnded]);
    clearTimeout(closeTimer);
  }
}

export function createPool(options: PoolOptions): Pool {
  return new Pool(options);
}
