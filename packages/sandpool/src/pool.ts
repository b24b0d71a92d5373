import { EventEmitter } from 'node:events';
import { resolve as resolvePath } from 'node:path';
import { z } from 'zod';
import { Backoff } from './backoff.js';
import { type CallTransport, PendingCall } from './call.js';
import { Cell, type CellHost } from './cell.js';
import { type ExitReason, SandpoolError } from './errors.js';
import { warnIfHeapCapOverridden } from './heap-warning.js';
import { issuesOf } from './issues.js';
import { type AgentKey, type ResolvedKey, resolveKey, SnapshotNameSchema, StemSchema, SwarmSchema } from './key.js';
import {
  type CallOptions,
  CallOptionsSchema,
  type PoolOptions,
  parsePoolOptions,
  type ResolvedPoolOptions,
} from './options.js';
import { PoolSnapshotStore } from './pool-snapshots.js';
import type { Outcome } from './protocol.js';
import { toSandpoolError } from './remote-error.js';
import { locateModule } from './resolve.js';
import { AgentThread, type RetireReason, type ThreadEnd } from './thread.js';
import { LiveWatcher } from './watch.js';

export type SpawnReason = 'cold' | 'spare';
export type EvictReason = RetireReason;

export interface PoolEvent<Reason extends string> {
  /** The key in text form. */
  key: string;
  reason: Reason;
  threadId: number;
}

export interface ReloadFailedEvent extends PoolEvent<'load-failed'> {
  error: SandpoolError;
}

export interface PoolEvents {
  spawn: [PoolEvent<SpawnReason>];
  evict: [PoolEvent<EvictReason>];
  exit: [PoolEvent<EvictReason | ExitReason>];
  'reload-failed': [ReloadFailedEvent];
}

export interface PoolStats {
  /** Keyed worker threads alive, draining and exiting ones included. */
  workers: number;
  /** Blank workers booted for the next new key. */
  spares: number;
  busy: number;
  idle: number;
  /** Times a worker took a key. */
  spawned: number;
  evicted: number;
  /** Exits for `crash`, `exit`, `oom` or `killed`. */
  crashed: number;
  /** Calls waiting for a worker slot or for their worker to start. */
  queued: number;
}

/** `remote()`'s view of an agent module: every exported function, returning a promise. */
export type Remote<T> = {
  readonly [K in keyof T as T[K] extends (...args: never[]) => unknown ? K : never]: T[K] extends (
    ...args: infer A
  ) => infer R
    ? (...args: A) => Promise<Awaited<R>>
    : never;
};

export const InvalidateSelectorSchema = z.strictObject({
  swarm: SwarmSchema,
  snapshot: SnapshotNameSchema.nullable().optional(),
  stem: StemSchema.optional(),
});
export type InvalidateSelector = z.input<typeof InvalidateSelectorSchema>;

/** Routing state of one key: the cell serving it and, during a reload, the one replacing it. */
interface KeyState {
  readonly key: ResolvedKey;
  serving: Cell | null;
  candidate: Cell | null;
  /** Calls waiting and running, across both cells. */
  pending: number;
}

export class Pool extends EventEmitter<PoolEvents> implements CellHost, AsyncDisposable {
  readonly options: ResolvedPoolOptions;
  /** The snapshot store under this pool's root; `remove` drains the snapshot's workers first. */
  readonly snapshots: PoolSnapshotStore;
  private readonly root: string;
  private readonly keys = new Map<string, KeyState>();
  /** Every cell holding a worker thread, draining and exiting ones included. */
  private readonly cells = new Set<Cell>();
  /** Cells waiting for a worker slot, first come first served. */
  private readonly slotQueue: Cell[] = [];
  /** Blank booted workers, each with the promise of its exit. */
  private readonly spares = new Map<AgentThread, Promise<void>>();
  private readonly backoff = new Backoff();
  /** Keyed threads alive: never above maxWorkers. */
  private alive = 0;
  /** Threads told to terminate that have not exited yet: slots about to free. */
  private exiting = 0;
  private waitingForSlot = 0;
  private useClock = 0;
  private arrivals = 0;
  private counters = { spawned: 0, evicted: 0, crashed: 0 };
  private readonly watcher: LiveWatcher | null;
  private closing: Promise<void> | null = null;
  private closeTimer: NodeJS.Timeout | undefined = undefined;

  constructor(options: PoolOptions) {
    super();
    this.options = parsePoolOptions(options);
    this.root = resolvePath(this.options.root);
    this.snapshots = new PoolSnapshotStore(this.root, (swarm, name) =>
      this.retireWhere((key) => key.swarm === swarm && key.snapshot === name, 'removed'),
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

  /** A typed proxy: every export of the agent becomes `(...args) => Promise`. */
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
    let queued = 0;
    for (const cell of this.cells) {
      if (cell.running.size > 0) busy += 1;
      else if (cell.idle) idle += 1;
      queued += cell.waiting.length;
    }
    for (const cell of this.slotQueue) queued += cell.waiting.length;
    return { workers: this.alive, spares: this.spares.size, busy, idle, queued, ...this.counters };
  }

  /**
   * Reloads the matching live (or snapshot) workers blue-green; resolves when the old ones
   * are gone, or have stayed because the new code failed to load.
   */
  async invalidate(selector: InvalidateSelector): Promise<void> {
    const parsed = InvalidateSelectorSchema.safeParse(selector);
    if (!parsed.success) {
      throw new SandpoolError('ERR_SANDPOOL_INVALID_KEY', 'invalid invalidate selector', {
        issues: issuesOf(parsed.error),
      });
    }
    this.assertOpen();
    const { swarm, stem } = parsed.data;
    const snapshot = parsed.data.snapshot ?? null;
    const matches = (key: ResolvedKey): boolean =>
      key.swarm === swarm && key.snapshot === snapshot && (stem === undefined || key.stem === stem);
    this.backoff.resetWhere((text) => matches(resolveKey(text)));
    const waits: Promise<void>[] = [];
    for (const state of this.keys.values()) {
      if (matches(state.key)) waits.push(this.reload(state));
    }
    await Promise.all(waits);
  }

  /** Retires the matching workers (draining their calls) and resolves once they have exited. */
  private async retireWhere(matches: (key: ResolvedKey) => boolean, reason: RetireReason): Promise<void> {
    const ended: Promise<void>[] = [];
    for (const state of this.keys.values()) {
      if (!matches(state.key)) continue;
      for (const cell of [state.serving, state.candidate]) {
        if (cell === null) continue;
        ended.push(cell.ended);
        this.retire(cell, reason);
      }
    }
    await Promise.all(ended);
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
      this.assertOpen();
      const key = resolveKey(keyInput);
      if (typeof fn !== 'string' || fn === '') {
        throw new SandpoolError('ERR_SANDPOOL_EXPORT_NOT_FOUND', 'the function name must be a non-empty string', {
          key: key.text,
        });
      }
      if (!Array.isArray(args)) {
        throw new SandpoolError('ERR_SANDPOOL_INVALID_OPTIONS', 'args must be an array', { key: key.text });
      }
      const { timeoutMs, signal } = parseCallOptions(options);
      if (signal?.aborted) throw aborted(key.text);
      const blocked = this.backoff.blocked(key.text, Date.now());
      if (blocked !== null) throw blocked;
      let state = this.keys.get(key.text);
      if (state === undefined) {
        state = { key, serving: null, candidate: null, pending: 0 };
        this.keys.set(key.text, state);
      }
      if (state.pending >= this.options.maxPendingPerKey) {
        throw new SandpoolError('ERR_SANDPOOL_QUEUE_FULL', `${key.text} has ${state.pending} calls pending`, {
          key: key.text,
        });
      }
      const cell = state.serving ?? this.openCell(state);
      if (!cell.hasWorker && this.waitingForSlot >= this.options.maxWaiting) {
        this.dropIfUnused(state);
        throw new SandpoolError('ERR_SANDPOOL_QUEUE_FULL', `${this.waitingForSlot} calls wait for a worker`, {
          key: key.text,
        });
      }
      return new Promise((resolve, reject) => {
        const timeout = timeoutMs ?? this.options.callTimeoutMs;
        const call = new PendingCall(key.text, fn, args as unknown[], timeout, signal, transport, resolve, reject);
        state.pending += 1;
        if (signal !== undefined) {
          call.onAbort = () => this.abort(call);
          signal.addEventListener('abort', call.onAbort, { once: true });
        }
        this.accept(cell, call);
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
    call.cell = cell;
    cell.waiting.push(call);
    if (!cell.hasWorker) this.waitingForSlot += 1;
  }

  private finish(call: PendingCall, error: SandpoolError | null, value?: unknown): void {
    if (!call.settle(error, value)) return;
    const state = this.keys.get(call.keyText);
    if (state === undefined) return;
    state.pending -= 1;
    this.dropIfUnused(state);
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

  private unqueue(cell: Cell, call: PendingCall): void {
    const index = cell.waiting.indexOf(call);
    if (index < 0) return;
    cell.waiting.splice(index, 1);
    if (cell.hasWorker) return;
    this.waitingForSlot -= 1;
    if (cell.waiting.length === 0) this.cancelCell(cell);
  }

  // ---- cells ---------------------------------------------------------------------------

  private openCell(state: KeyState): Cell {
    const cell = new Cell(state.key, this, ++this.arrivals);
    state.serving = cell;
    void this.prepare(cell);
    return cell;
  }

  /** Finds the module, then waits for a slot; nothing is spawned for a key that has no file. */
  private async prepare(cell: Cell): Promise<void> {
    try {
      cell.location = await locateModule(this.root, cell.key);
    } catch (error) {
      this.failWaiting(cell, toSandpoolError(error, cell.key.text));
      this.detach(cell);
      cell.state = 'ended';
      cell.markEnded();
      return;
    }
    if (cell.state !== 'resolving') return;
    this.enqueue(cell);
  }

  /** Queues a cell for a slot in the order its key was first asked for, not the order its file was found. */
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
      const cell = this.slotQueue.shift() as Cell;
      this.start(cell);
    }
    let shortfall = this.slotQueue.length - this.exiting;
    while (shortfall > 0) {
      const victim = this.leastRecentlyUsedIdle();
      if (victim === null) break;
      this.retire(victim, 'lru');
      shortfall -= 1;
    }
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
    clearTimeout(cell.loadTimer);
    if (cell.state !== 'starting') return;
    cell.state = cell.retiring === null ? 'ready' : 'draining';
    const state = this.keys.get(cell.key.text);
    if (state !== undefined && state.candidate === cell) this.promote(state, cell);
    for (const call of cell.waiting.splice(0)) cell.post(call);
    if (cell.running.size === 0) this.cellIdle(cell);
    if (cell.staleOnReady && state?.serving === cell) void this.reload(state);
  }

  cellLoadFailed(cell: Cell, outcome: Outcome & { ok: false }): void {
    this.loadFailed(cell, toSandpoolError(outcome, cell.key.text));
  }

  private loadTimedOut(cell: Cell): void {
    if (cell.state !== 'starting') return;
    this.loadFailed(
      cell,
      new SandpoolError(
        'ERR_SANDPOOL_MODULE_LOAD',
        `${cell.key.text} was still loading after ${this.options.loadTimeoutMs} ms`,
        { key: cell.key.text },
      ),
    );
  }

  private loadFailed(cell: Cell, error: SandpoolError): void {
    clearTimeout(cell.loadTimer);
    this.startFailed(cell, error);
    cell.state = 'draining';
    this.terminate(cell, 'crash');
  }

  /**
   * A worker that never became ready. A reload candidate leaves the old worker serving; a
   * key's only worker fails its waiting callers and backs the key off.
   */
  private startFailed(cell: Cell, error: SandpoolError): void {
    const state = this.keys.get(cell.key.text);
    if (state !== undefined && state.candidate === cell) {
      state.candidate = null;
      const threadId = cell.thread?.threadId ?? 0;
      this.emit('reload-failed', { key: cell.key.text, reason: 'load-failed', threadId, error });
      // Files changed again while it loaded (the rest of a half-written file, say): try once more.
      if (cell.staleOnReady) void this.reload(state);
      return;
    }
    this.backoff.loadFailed(cell.key.text, error, Date.now());
    this.failWaiting(cell, error);
    this.detach(cell);
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
      this.backoff.reset(cell.key.text);
      this.finish(call, null, outcome.value);
    } else {
      this.finish(call, toSandpoolError(outcome, cell.key.text));
    }
  }

  callUnsendable(cell: Cell, call: PendingCall, error: unknown): void {
    this.finish(
      call,
      new SandpoolError('ERR_SANDPOOL_DATA_CLONE', `arguments of ${cell.key.text} ${call.fn}() cannot be cloned`, {
        key: cell.key.text,
        cause: error,
      }),
    );
  }

  callTimedOut(cell: Cell, call: PendingCall): void {
    this.finish(
      call,
      new SandpoolError('ERR_SANDPOOL_TIMEOUT', `${cell.key.text} ${call.fn}() outlived ${call.timeoutMs} ms`, {
        key: cell.key.text,
      }),
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
    const threadId = cell.thread?.threadId ?? 0;
    const state = this.keys.get(key);
    if (wasStarting) this.startFailed(cell, deathError(key, end, failure, true));
    this.detach(cell);
    const exitError =
      end === 'closed'
        ? new SandpoolError('ERR_SANDPOOL_CLOSED', `the pool closed before ${key} answered`, { key })
        : deathError(key, end, failure, false);
    for (const call of cell.running.values()) this.finish(call, exitError);
    cell.running.clear();
    if (isExitReason(end)) {
      this.counters.crashed += 1;
      if (end !== 'killed' && !wasStarting) this.backoff.died(key, exitError, Date.now());
    }
    this.emit('exit', { key, reason: end, threadId });
    cell.markEnded();
    if (cell.key.snapshot === null && this.watcher !== null && !this.hasLiveCell(cell.key.swarm)) {
      this.watcher.unwatch(cell.key.swarm);
    }
    if (state !== undefined) this.dropIfUnused(state);
    this.pump();
  }

  /** The pool retires a cell: idle ones stop now, busy ones finish their calls first. */
  private retire(cell: Cell, reason: RetireReason): void {
    if (cell.retiring !== null || cell.state === 'ended') return;
    cell.retiring = reason;
    this.detach(cell);
    if (!cell.hasWorker) {
      // Only `removed` and `closed` reach a cell that never started: its callers asked too late.
      this.failWaiting(cell, reason === 'removed' ? snapshotGone(cell.key) : closedError(cell.key.text));
      this.cancelCell(cell);
      return;
    }
    this.counters.evicted += 1;
    this.emit('evict', { key: cell.key.text, reason, threadId: cell.thread?.threadId ?? 0 });
    // A starting cell finishes its start and serves the calls that waited for it, then drains.
    if (cell.state === 'starting') return;
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

  /** A cell with no worker yet leaves the queue; its waiting calls are settled by the caller. */
  private cancelCell(cell: Cell): void {
    const index = this.slotQueue.indexOf(cell);
    if (index >= 0) this.slotQueue.splice(index, 1);
    this.waitingForSlot -= cell.waiting.length;
    this.detach(cell);
    cell.state = 'ended';
    cell.markEnded();
  }

  /** The key stops routing to this cell; it keeps its worker until it is terminated. */
  private detach(cell: Cell): void {
    const state = this.keys.get(cell.key.text);
    if (state === undefined) return;
    if (state.serving === cell) state.serving = null;
    if (state.candidate === cell) state.candidate = null;
  }

  private dropIfUnused(state: KeyState): void {
    if (state.pending === 0 && state.serving === null && state.candidate === null) {
      this.keys.delete(state.key.text);
    }
  }

  private failWaiting(cell: Cell, error: SandpoolError): void {
    if (!cell.hasWorker) this.waitingForSlot -= cell.waiting.length;
    for (const call of cell.waiting.splice(0)) this.finish(call, error);
  }

  private hasLiveCell(swarm: string): boolean {
    for (const cell of this.cells) if (cell.key.swarm === swarm && cell.key.snapshot === null) return true;
    return false;
  }

  private leastRecentlyUsedIdle(): Cell | null {
    let victim: Cell | null = null;
    for (const cell of this.cells) {
      if (cell.idle && cell.retiring === null && (victim === null || cell.lastUsed < victim.lastUsed)) victim = cell;
    }
    return victim;
  }

  // ---- reload --------------------------------------------------------------------------

  /** Blue-green: a candidate loads beside the serving cell and takes over once ready. */
  private reload(state: KeyState): Promise<void> {
    const serving = state.serving;
    if (serving === null || serving.state === 'resolving' || serving.state === 'queued') return Promise.resolve();
    if (serving.state === 'starting' || state.candidate !== null) {
      // It may have read the old files: reload again once it serves.
      (state.candidate ?? serving).staleOnReady = true;
      return serving.ended;
    }
    const candidate = new Cell(state.key, this, ++this.arrivals);
    state.candidate = candidate;
    void this.prepareCandidate(state, candidate);
    return Promise.race([serving.ended, candidate.ended]);
  }

  private async prepareCandidate(state: KeyState, candidate: Cell): Promise<void> {
    try {
      candidate.location = await locateModule(this.root, state.key);
    } catch (error) {
      if (state.candidate === candidate) this.startFailed(candidate, toSandpoolError(error, state.key.text));
      candidate.state = 'ended';
      candidate.markEnded();
      return;
    }
    if (state.candidate !== candidate) return;
    this.enqueue(candidate);
  }

  private promote(state: KeyState, candidate: Cell): void {
    const old = state.serving;
    state.candidate = null;
    state.serving = candidate;
    if (old !== null) {
      // Calls still waiting on the old cell go to the one that is ready.
      for (const call of old.waiting.splice(0)) this.accept(candidate, call);
      this.retire(old, 'reload');
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

  private takeSpare(): AgentThread | null {
    for (const thread of this.spares.keys()) {
      this.spares.delete(thread);
      return thread;
    }
    return null;
  }

  // ---- close ---------------------------------------------------------------------------

  private assertOpen(): void {
    if (this.closing !== null) throw closedError(undefined);
  }

  private async shutdown(): Promise<void> {
    this.watcher?.close();
    for (const cell of this.slotQueue.splice(0)) {
      this.failWaiting(cell, closedError(cell.key.text));
      this.cancelCell(cell);
    }
    for (const state of [...this.keys.values()]) {
      for (const cell of [state.serving, state.candidate]) {
        if (cell === null || cell.hasWorker) continue;
        this.failWaiting(cell, closedError(cell.key.text));
        this.cancelCell(cell);
      }
    }
    const ended = [...this.cells].map((cell) => cell.ended);
    for (const cell of [...this.cells]) {
      this.failWaiting(cell, closedError(cell.key.text));
      this.retire(cell, 'closed');
    }
    const sparesEnded = [...this.spares.values()];
    for (const thread of this.spares.keys()) thread.terminate('closed');
    this.closeTimer = setTimeout(() => {
      for (const cell of this.cells) this.terminate(cell, 'closed');
    }, this.options.closeTimeoutMs);
    await Promise.all([...ended, ...sparesEnded]);
    clearTimeout(this.closeTimer);
  }
}

export function createPool(options: PoolOptions): Pool {
  return new Pool(options);
}

function parseCallOptions(options: CallOptions | undefined): {
  timeoutMs: number | undefined;
  signal: AbortSignal | undefined;
} {
  if (options === undefined) return { timeoutMs: undefined, signal: undefined };
  // Most calls pass nothing or a well-formed object: skip the schema for those, it costs more than the RPC.
  if (isPlainCallOptions(options)) return { timeoutMs: options.timeoutMs, signal: options.signal };
  const parsed = CallOptionsSchema.safeParse(options);
  if (!parsed.success) {
    throw new SandpoolError('ERR_SANDPOOL_INVALID_OPTIONS', 'invalid call options', { issues: issuesOf(parsed.error) });
  }
  return { timeoutMs: parsed.data.timeoutMs, signal: parsed.data.signal };
}

function isPlainCallOptions(options: CallOptions): boolean {
  for (const name in options) if (name !== 'timeoutMs' && name !== 'signal') return false;
  const { timeoutMs, signal } = options;
  return (
    (timeoutMs === undefined || (Number.isInteger(timeoutMs) && timeoutMs >= 0 && timeoutMs <= 2_147_483_647)) &&
    (signal === undefined || signal instanceof AbortSignal)
  );
}

function aborted(key: string): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_ABORTED', `the call to ${key} was aborted`, { key });
}

function closedError(key: string | undefined): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_CLOSED', 'the pool is closing or closed', key === undefined ? {} : { key });
}

function snapshotGone(key: ResolvedKey): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_SNAPSHOT_NOT_FOUND', `snapshot ${key.swarm}@${key.snapshot} was removed`, {
    key: key.text,
  });
}

function isExitReason(end: ThreadEnd): end is ExitReason {
  return end === 'crash' || end === 'exit' || end === 'oom' || end === 'killed';
}

function deathError(key: string, end: ThreadEnd, failure: Error | null, starting: boolean): SandpoolError {
  if (starting) {
    return new SandpoolError('ERR_SANDPOOL_MODULE_LOAD', `the worker of ${key} died while loading (${end})`, {
      key,
      ...(failure === null ? {} : { cause: failure }),
    });
  }
  const reason: ExitReason = isExitReason(end) ? end : 'killed';
  return new SandpoolError('ERR_SANDPOOL_WORKER_EXITED', `the worker of ${key} exited (${reason})`, {
    key,
    reason,
    ...(failure === null ? {} : { cause: failure }),
  });
}
