import { mkdirSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { SandpoolError } from '../errors.js';
import { issuesOf } from '../issues.js';
import { type AgentKey, type ResolvedKey, resolveKey } from '../key.js';
import { type CallOptions, type ResolvedPoolOptions, swarmCap } from '../options.js';
import type { Outcome } from '../protocol/messages.js';
import { liveDir } from '../store/layout.js';
import { type AdmissionState, type AdmittedCall, admit } from './admission.js';
import type { AgentWorker, Isolation, RetireReason, ThreadEnd, ThreadSettings, WorkerMessage } from './agent-worker.js';
import { Backoff } from './backoff.js';
import { PendingCall } from './call.js';
import { capabilitiesFor, HostCalls } from './capabilities.js';
import { Cell, type CellEvents, type CellPhase } from './cell.js';
import { Census } from './census.js';
import { CpuGovernor } from './cpu.js';
import { settledStamp, stampFiles } from './freshness.js';
import { IDLE_POLL_MS, MemoryGovernor, v8HeapLimitMb } from './governor.js';
import { violations } from './invariants.js';
import { isolationFor } from './isolation.js';
import { collectKeyStats, KeyBook, type KeyStats } from './key-stats.js';
import { labelledWriter } from './output.js';
import { endsSandbox, type PermissionPolicy, permissionArgs, policyFor } from './permissions.js';
import { aborted, closedError, deathError, isExitReason, snapshotGone } from './pool-errors.js';
import {
  type InvalidateReport,
  type InvalidateSelector,
  InvalidateSelectorSchema,
  type PoolEvents,
  type PoolStats,
} from './pool-types.js';
import { AgentProcess, type ProcessSettings } from './process.js';
import { toSandpoolError } from './remote-error.js';
import { locateModule, type ModuleLocation } from './resolve.js';
import { type ReloadOutcome, Route } from './route.js';
import { Sandbox } from './sandbox/sandbox.js';
import type { KeyAccess } from './sandbox/view.js';
import { Scheduler, type SlotUser } from './scheduler.js';
import { SpareDemand } from './spare-demand.js';
import { Spares } from './spares.js';
import { receiveChunk, type StreamSink } from './streams.js';
import { AgentThread } from './thread.js';
import { typeScriptExecArgv } from './typescript.js';
import { LiveWatcher } from './watch.js';

type Emit = <E extends keyof PoolEvents>(event: E, ...args: PoolEvents[E]) => void;

/** A thread told to terminate that has not ended after this long is stuck (see Cell's `stuck`). */
const STUCK_AFTER_MS = 1_500;
/** How often a worker the coordinator cannot probe reports its memory. */
const HEARTBEAT_MS = 20;

/**
 * The coordinator behind the public Pool: routes every key to a cell, and decides every
 * policy the parts report to it (what a worker's death means for its calls, back-off,
 * blue-green reload, snapshot removal, close). The slots belong to the Scheduler, the counts
 * to the Census, the calls in flight to each cell's Channel.
 */
export class Coordinator implements CellEvents, SlotUser, AdmissionState {
  readonly root: string;
  readonly census: Census;
  readonly backoff = new Backoff();
  /** `swarm@snapshot` of snapshots being removed: their keys fail at once rather than start a worker. */
  readonly removing = new Set<string>();
  private readonly routes = new Map<string, Route>();
  /** Calls held by cells that have no worker yet (resolving their file or queued for a slot). */
  private readonly waitingCalls = new Set<PendingCall>();
  private readonly scheduler: Scheduler;
  private readonly spares: Spares;
  private readonly settings: ThreadSettings;
  /** How process-isolated keys run (isolation 'process'). */
  private readonly process: ProcessSettings;
  private readonly sandbox: Sandbox;
  private readonly watcher: LiveWatcher | null;
  private readonly memory: MemoryGovernor;
  private readonly cpu: CpuGovernor;
  private arrivals = 0;
  private readonly keys = new KeyBook();
  private outputDropped = 0;
  private closing: Promise<void> | null = null;

  constructor(
    readonly options: ResolvedPoolOptions,
    private readonly emit: Emit,
  ) {
    this.root = resolvePath(options.root);
    this.sandbox = new Sandbox(options);
    this.census = new Census(emit);
    this.scheduler = new Scheduler(
      this.census,
      {
        ...options,
        swarmCap: swarmCap(options),
        memoryBudget: options.maxMemoryMb === undefined ? null : options.maxMemoryMb * 2 ** 20,
      },
      this,
    );
    const onOutputDropped = (chars: number): void => {
      this.outputDropped += chars;
    };
    this.memory = new MemoryGovernor(
      {
        heapBytes: options.resourceLimits.maxOldGenerationSizeMb * 2 ** 20,
        externalBytes: options.maxExternalMb * 2 ** 20,
      },
      (cell, detail) => this.kill(cell, 'oom', new Error(detail)),
    );
    this.cpu = new CpuGovernor(options, {
      used: (cell, ms) => this.keys.cpu(cell.key.text, ms),
      demoted: (cell, reason) => this.emit('demote', { key: cell.key.text, reason, threadId: cell.threadId }),
      overran: (cell, detail) => this.kill(cell, 'cpu', new Error(detail)),
      idleBurner: (cell) => this.retire(cell, 'cpu'),
      recycle: (cell) => this.retire(cell, 'cpu'),
    });
    const heapBudget = options.resourceLimits.maxOldGenerationSizeMb;
    this.process = { sandbox: this.sandbox, heapMb: heapBudget };
    this.settings = {
      env: options.env,
      // The governor ends a worker at its budget; V8's own limit is the backstop above it.
      resourceLimits: this.memory.active
        ? { ...options.resourceLimits, maxOldGenerationSizeMb: v8HeapLimitMb(heapBudget) }
        : options.resourceLimits,
      output: options.onOutput ?? labelledWriter(() => onOutputDropped(1)),
      onOutputDropped,
    };
    // Under a per-key permission model no key can take a spare (its flags are fixed at boot).
    // With isolation a function of the key, which kind the next key needs is unknown: threads.
    const spareKind = options.isolation === 'process' ? 'process' : 'thread';
    const sparesUsable =
      (options.permissions === 'none' || typeof options.permissions === 'function') &&
      (spareKind === 'thread' || this.sandbox.sparesPossible);
    this.spares = new Spares(new SpareDemand(sparesUsable ? options.spareWorkers : 0), spareKind, () =>
      spareKind === 'process'
        ? new AgentProcess(this.settings, typeScriptExecArgv(), this.process, null)
        : new AgentThread(this.settings, typeScriptExecArgv()),
    );
    if (typeof options.permissions === 'object' && endsSandbox(options.permissions)) {
      process.emitWarning(
        'permissions grant childProcess or worker: their children run without the permission model, outside the sandbox',
        { code: 'SANDPOOL_SANDBOX_ENDED' },
      );
    }
    this.watcher = options.watch
      ? new LiveWatcher(this.root, (swarm) => {
          if (this.closing === null) void this.invalidate({ swarm });
        })
      : null;
    this.spares.fill();
    const { layers } = this.sandbox;
    // After createPool has returned, so a listener added then hears it.
    if (layers !== null) queueMicrotask(() => this.emit('sandbox', layers));
  }

  // ---- admission state --------------------------------------------------------------------

  get closed(): boolean {
    return this.closing !== null;
  }

  get maxPendingPerKey(): number {
    return this.options.maxPendingPerKey;
  }

  get maxWaiting(): number {
    return this.options.maxWaiting;
  }

  get callTimeoutMs(): number {
    return this.options.callTimeoutMs;
  }

  get waitingForSlot(): number {
    return this.waitingCalls.size;
  }

  route(key: ResolvedKey): Route | undefined {
    return this.routes.get(key.text);
  }

  // ---- calls ------------------------------------------------------------------------------

  /** Never throws synchronously: every refusal is a rejected promise. */
  submit(keyInput: AgentKey | string, fn: string, args: readonly unknown[], options?: CallOptions): Promise<unknown> {
    try {
      const admitted = admit(this, keyInput, fn, args, options);
      return new Promise((resolve, reject) => {
        this.enter(admitted, resolve, reject, null);
      });
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** A stream call (see streams.ts): admitted like a call, with no timeout unless given. Throws its refusal. */
  openStream(
    keyInput: AgentKey | string,
    fn: string,
    args: readonly unknown[],
    options: CallOptions,
    sink: StreamSink,
    resolve: (value: unknown) => void,
    reject: (error: Error) => void,
  ): PendingCall {
    return this.enter(admit(this, keyInput, fn, args, { timeoutMs: 0, ...options }), resolve, reject, sink);
  }

  private enter(
    admitted: AdmittedCall,
    resolve: (value: unknown) => void,
    reject: (error: Error) => void,
    sink: StreamSink | null,
  ): PendingCall {
    const route = admitted.route ?? new Route(admitted.key, this.keys.of(admitted.key.text));
    if (admitted.route === undefined) this.routes.set(admitted.key.text, route);
    const call = new PendingCall(
      route,
      admitted.fn,
      admitted.args,
      admitted.timeoutMs,
      admitted.signal,
      resolve,
      reject,
    );
    if (admitted.transfer !== undefined) call.transfer = admitted.transfer;
    call.stream = sink;
    const { signal } = admitted;
    if (signal !== undefined) {
      call.onAbort = () => this.abort(call);
      signal.addEventListener('abort', call.onAbort, { once: true });
    }
    this.accept(route.serving ?? this.openCell(route), call);
    return call;
  }

  private accept(cell: Cell, call: PendingCall): void {
    this.scheduler.touch(cell);
    call.cell = cell;
    const { phase } = cell;
    if (phase.name === 'ready') {
      // Accepted this instant: its acceptance time is its hand-off time.
      phase.channel.post(call, call.acceptedAt);
      return;
    }
    const waiting = cell.waiting;
    if (waiting === null) throw new Error(`sandpool: a call routed to a ${phase.name} cell`);
    try {
      call.copyArgs();
    } catch (error) {
      this.finish(call, unsendable(call, error));
      return;
    }
    waiting.push(call);
    if (cell.thread === null) this.waitingCalls.add(call);
    const limit = this.options.queueTimeoutMs;
    if (limit > 0 && call.queueTimer === undefined) {
      call.queueTimer = setTimeout(() => this.queueTimedOut(call, limit), limit);
      call.queueTimer.unref();
    }
  }

  /** It waited too long for a slot or a start: it leaves, and a start nobody waits for is cancelled. */
  private queueTimedOut(call: PendingCall, limit: number): void {
    const error = new SandpoolError(
      'ERR_SANDPOOL_QUEUE_TIMEOUT',
      `${call.keyText} ${call.fn}() waited ${limit} ms for a worker`,
      { key: call.keyText },
    );
    this.leaveWaiting(call);
    this.finish(call, error);
  }

  /** Takes a waiting call out of its cell; a cell with no worker that nobody waits for ends. */
  private leaveWaiting(call: PendingCall): void {
    const cell = call.cell;
    const waiting = cell?.waiting;
    const index = waiting?.indexOf(call) ?? -1;
    if (cell === null || waiting === null || waiting === undefined || index < 0) return;
    waiting.splice(index, 1);
    // A start it shared with other callers goes on; one nobody waits for is cancelled.
    if (cell.thread === null && waiting.length === 0) this.endWithoutWorker(cell, closedError(call.keyText));
  }

  private finish(call: PendingCall, error: SandpoolError | null, value?: unknown): void {
    if (!call.settle(error, value)) return;
    this.keys.settled(call.route.totals, error !== null, performance.now() - call.acceptedAt);
    this.waitingCalls.delete(call);
    this.tidy(call.route);
  }

  private abort(call: PendingCall): void {
    this.interrupt(call, aborted(call.keyText), 'abort');
  }

  /**
   * Answers a call now (a stream's consumer that left gets `error` null) and fires its
   * signal in the agent, which has abortGraceMs to stop; a call still waiting just leaves.
   */
  interrupt(call: PendingCall, error: SandpoolError | null, why: 'abort' | 'timeout'): void {
    const cell = call.cell;
    const channel = cell?.channel;
    if (channel?.has(call)) {
      // The caller is answered now; the agent sees its signal fire and has abortGraceMs to stop.
      this.finish(call, error);
      channel.cancel(call, why);
      return;
    }
    this.leaveWaiting(call);
    this.finish(call, error);
  }

  private failWaiting(cell: Cell, error: SandpoolError): void {
    const waiting = cell.waiting;
    if (waiting === null) return;
    for (const call of waiting.splice(0)) this.finish(call, error);
  }

  callReturned(cell: Cell, call: PendingCall, value: unknown): void {
    if (this.backoff.active) this.backoff.reset(cell.key.text);
    this.finish(call, null, value);
  }

  callSettled(cell: Cell, call: PendingCall, outcome: Outcome): void {
    if (outcome.ok) this.callReturned(cell, call, outcome.value);
    else this.finish(call, toSandpoolError(outcome, cell.key.text));
  }

  callUnsendable(_cell: Cell, call: PendingCall, error: unknown): void {
    this.finish(call, unsendable(call, error));
  }

  callTimedOut(cell: Cell, call: PendingCall): void {
    const { text } = cell.key;
    this.finish(
      call,
      new SandpoolError('ERR_SANDPOOL_TIMEOUT', `${text} ${call.fn}() outlived ${call.timeoutMs} ms`, { key: text }),
    );
  }

  /** JavaScript cannot be interrupted: a call that ignores its signal is stopped with its worker. */
  cancelIgnored(cell: Cell): void {
    this.kill(cell, 'killed');
  }

  cellDrained(cell: Cell): void {
    const { phase } = cell;
    if (phase.name === 'draining') {
      this.terminate(cell, phase.reason);
      return;
    }
    if (phase.name !== 'ready') return;
    phase.thread.setReferenced(false);
    this.cpu.drained(cell);
    if (cell.phase.name !== 'ready') return; // recycled to get its priority back
    this.scheduler.cellIdle(cell);
  }

  // ---- cells ------------------------------------------------------------------------------

  private openCell(route: Route): Cell {
    const cell = new Cell(route.key, ++this.arrivals, this.census, this);
    route.adopt(cell);
    route.serving = cell;
    void this.prepare(route, cell);
    return cell;
  }

  /** Finds the module, then waits for a slot: nothing is spawned for a key that has no file. */
  private async prepare(route: Route, cell: Cell): Promise<void> {
    let location: Awaited<ReturnType<typeof locateModule>>;
    let execArgv: string[];
    let isolation: Isolation;
    let access: KeyAccess | null = null;
    try {
      location = await locateModule(this.root, cell.key, { snapshotSecret: this.options.snapshotSecret });
      cell.host = new HostCalls(capabilitiesFor(this.options.host, cell.key), cell.key);
      if (route.candidate === cell && cell.key.snapshot === null) {
        // A reload loads only files that have stopped changing, and checks after the load
        // that they did not change under it (promoteIfFresh).
        cell.filesBefore = await settledStamp(liveDir(this.root, cell.key.swarm));
      }
      const policy = policyFor(this.options.permissions, cell.key);
      execArgv = this.execArgvFor(location, policy, cell.key);
      isolation = isolationFor(this.options.isolation, cell.key);
      if (isolation === 'process') {
        this.sandbox.checkReadable(cell.key, location);
        access = this.sandbox.access(cell.key, location, policy);
      }
    } catch (error) {
      if (cell.phase.name !== 'resolving') return;
      const failure = toSandpoolError(error, cell.key.text);
      if (route.candidate === cell) this.candidateFailed(route, cell, failure);
      this.endWithoutWorker(cell, failure);
      return;
    }
    const { phase } = cell;
    if (phase.name !== 'resolving') return;
    cell.transition({ name: 'queued', waiting: phase.waiting, location, execArgv, isolation, access });
    this.scheduler.enqueue(cell);
  }

  /** The key's worker flags: its permission model (see permissions.ts) and type stripping. */
  private execArgvFor(location: ModuleLocation, policy: PermissionPolicy, key: ResolvedKey): string[] {
    const cache = location.compileCacheDir;
    // Node reads and writes the compile cache, and grants nothing under a folder that does
    // not exist yet: the coordinator makes it, and the worker may read and write it.
    if (cache !== null) mkdirSync(cache, { recursive: true });
    const folders = {
      folder: location.folder,
      extraRead: cache === null ? location.extraReadDirs : [...location.extraReadDirs, cache],
      write: cache === null ? [] : [cache],
    };
    return [...typeScriptExecArgv(), ...permissionArgs(policy, folders, key)];
  }

  /** A worker for a key: a spare if one fits (of its kind, booted without per-key flags, so only a key that needs none). */
  private spawn(
    execArgv: readonly string[],
    isolation: Isolation,
    access: KeyAccess | null,
  ): { thread: AgentWorker; from: 'cold' | 'spare' } {
    const fits = isolation === this.spares.isolation && sameFlags(execArgv, typeScriptExecArgv());
    const spare = fits ? this.spares.take() : null;
    if (spare !== null) return { thread: spare, from: 'spare' };
    const thread =
      isolation === 'process'
        ? new AgentProcess(this.settings, execArgv, this.process, access)
        : new AgentThread(this.settings, execArgv);
    return { thread, from: 'cold' };
  }

  startCell(cell: Cell): void {
    const { phase } = cell;
    if (phase.name !== 'queued') throw new Error(`sandpool: cannot start a ${phase.name} cell`);
    const { thread, from } = this.spawn(phase.execArgv, phase.isolation, phase.access);
    const channel = cell.openChannel(thread, this.options.abortGraceMs);
    for (const call of phase.waiting) this.waitingCalls.delete(call);
    const loadTimer = setTimeout(() => this.loadTimedOut(cell), this.options.loadTimeoutMs);
    cell.transition({
      name: 'starting',
      waiting: phase.waiting,
      thread,
      channel,
      from,
      startedAt: performance.now(),
      loadTimer,
      retiring: null,
    });
    const { file, verifyDir, sha256, compileCacheDir } = phase.location;
    const heartbeat = thread.isolation === 'thread' && this.memory.needsHeartbeat(phase.execArgv);
    this.memory.watch(cell, thread, heartbeat);
    thread.assign(cell.key, phase.access);
    thread.post({
      t: 'load',
      ...(heartbeat ? { heartbeatMs: HEARTBEAT_MS, idleHeartbeatMs: IDLE_POLL_MS } : {}),
      key: cell.key.text,
      file,
      verifyDir,
      // A child of another uid could not write the host's cache folder.
      compileCacheDir: thread.isolation === 'process' ? null : compileCacheDir,
      ...(sha256 === null ? {} : { sha256 }),
    });
    if (cell.key.snapshot === null) this.watcher?.watch(cell.key.swarm);
  }

  cellViolated(cell: Cell): void {
    this.kill(cell, 'protocol');
  }

  cellMessage(cell: Cell, message: WorkerMessage): void {
    const { phase } = cell;
    switch (message.t) {
      case 'ready':
        if (phase.name !== 'starting') return cell.thread?.violate('a ready message outside a load');
        if (cell.thread instanceof AgentProcess) {
          const child = cell.thread;
          this.cpu.watchProcess(cell, child.nodePid, (nice) => child.prioritize(nice));
        } else if (message.tid > 0) this.cpu.watch(cell, message.tid);
        return this.cellReady(cell, phase);
      case 'load-failed':
        if (phase.name !== 'starting') return cell.thread?.violate('a load failure outside a load');
        return this.loadFailed(cell, toSandpoolError({ ok: false, ...message }, cell.key.text));
      case 'done':
      case 'result':
        return cell.channel?.receive(message);
      case 'memory':
        return this.memory.beat(cell, message);
      case 'chunk':
        return receiveChunk(cell, message, this);
      case 'host': {
        const { channel, thread } = cell;
        if (channel === null || thread === null || cell.host === null) return;
        return cell.host.handle(message, channel, thread);
      }
    }
  }

  private cellReady(cell: Cell, phase: Extract<CellPhase, { name: 'starting' }>): void {
    clearTimeout(phase.loadTimer);
    const { thread, channel, waiting } = phase;
    if (phase.from === 'cold' && thread.isolation === this.spares.isolation) {
      this.spares.booted(performance.now() - phase.startedAt);
    }
    cell.transition({ name: 'ready', thread, channel });
    const route = this.routes.get(cell.key.text);
    if (route?.candidate === cell) {
      this.promoteIfFresh(route, cell);
      return;
    }
    for (const call of waiting) channel.post(call);
    if (phase.retiring !== null) {
      this.retire(cell, phase.retiring);
      return;
    }
    if (channel.busy === 0) this.cellDrained(cell);
    if (route === undefined) return;
    if (route.serving === cell && (cell.stale || this.changedSince(cell))) {
      // Files changed while it loaded: it may hold the old code.
      cell.stale = false;
      this.startCandidate(route);
    }
    this.tidy(route);
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
    const { phase } = cell;
    if (phase.name !== 'starting') return;
    clearTimeout(phase.loadTimer);
    this.startFailed(cell, error);
    this.terminate(cell, 'crash');
  }

  /**
   * A worker that never became ready. A reload candidate leaves the old worker serving; a
   * key's own worker fails its waiting callers and backs the key off.
   */
  private startFailed(cell: Cell, error: SandpoolError): void {
    const route = this.routes.get(cell.key.text);
    if (route !== undefined && route.candidate === cell) {
      this.candidateFailed(route, cell, error);
      return;
    }
    route?.reloadFailed(error);
    this.backoff.loadFailed(cell.key.text, error, Date.now());
    this.failWaiting(cell, error);
    this.detach(cell);
  }

  private candidateFailed(route: Route, cell: Cell, error: SandpoolError): void {
    route.candidate = null;
    route.reloadFailed(error);
    this.emit('reload-failed', { key: cell.key.text, reason: 'load-failed', threadId: cell.threadId, error });
    // Files changed again while it loaded (the rest of a half-written file, say): try again.
    if (cell.stale) this.startCandidate(route);
    this.tidy(route);
  }

  /** Stops a worker that must end now; its calls reject with WORKER_EXITED `reason` (and `cause`). */
  private kill(cell: Cell, reason: 'killed' | 'protocol' | 'oom' | 'cpu', cause: Error | null = null): void {
    const { phase } = cell;
    if (phase.name !== 'starting' && phase.name !== 'ready' && phase.name !== 'draining') return;
    if (phase.name === 'starting') {
      clearTimeout(phase.loadTimer);
      this.startFailed(cell, deathError(cell.key.text, reason, cause, true));
    }
    this.detach(cell);
    if (cause !== null) phase.thread.stop(reason, cause);
    this.terminate(cell, reason);
  }

  cellEnded(cell: Cell, end: ThreadEnd, failure: Error | null): void {
    const { phase } = cell;
    this.memory.unwatch(cell);
    this.cpu.unwatch(cell);
    if (phase.name === 'exiting') clearTimeout(phase.stuckTimer);
    const key = cell.key.text;
    const death = isExitReason(end) ? end : null;
    const route = this.routes.get(key);
    if (phase.name === 'starting') {
      clearTimeout(phase.loadTimer);
      this.startFailed(cell, deathError(key, death ?? 'exit', failure, true));
    }
    const loadFailed = phase.name === 'exiting' && phase.reason === 'crash';
    this.detach(cell);
    const exitError = death === null ? closedError(key) : deathError(key, death, failure, false);
    const running = cell.channel?.drain() ?? [];
    cell.transition({ name: 'ended', end });
    route?.release(cell);
    for (const call of running) this.finish(call, exitError);
    // A kill or a cpuTimeoutMs overrun is the pool's own doing, and a failed load has backed off already.
    if (death !== null && death !== 'killed' && death !== 'cpu' && phase.name !== 'starting' && !loadFailed) {
      this.backoff.died(key, exitError, Date.now());
    }
    this.scheduler.forget(cell);
    if (route !== undefined) this.tidy(route);
    if (cell.key.snapshot === null && this.watcher !== null && !this.hasLiveCell(cell.key.swarm)) {
      this.watcher.unwatch(cell.key.swarm);
    }
    this.scheduler.pump();
  }

  evictCell(cell: Cell, reason: 'lru' | 'idle'): void {
    const route = this.routes.get(cell.key.text);
    if (reason === 'lru' && route !== undefined && route.isBeingReplaced(cell)) {
      // It makes room for its own candidate: the candidate serves from now on, once it starts.
      const candidate = route.candidate as Cell;
      route.candidate = null;
      route.serving = candidate;
      this.retireReplaced(route, cell);
      return;
    }
    this.retire(cell, reason);
  }

  isCandidate(cell: Cell): boolean {
    return this.routes.get(cell.key.text)?.isCandidate(cell) ?? false;
  }

  isBeingReplaced(cell: Cell): boolean {
    return this.routes.get(cell.key.text)?.isBeingReplaced(cell) ?? false;
  }

  memoryOf(cell: Cell): number | null {
    const reading = this.memory.lastReading(cell);
    return reading === null ? null : reading.heap + reading.external;
  }

  /** The pool retires a cell: idle ones stop now, busy ones finish their calls first. */
  private retire(cell: Cell, reason: RetireReason): void {
    const { phase } = cell;
    switch (phase.name) {
      case 'resolving':
      case 'queued':
        // Only `removed` and `closed` retire a cell that never started: its callers asked too late.
        this.endWithoutWorker(cell, reason === 'removed' ? snapshotGone(cell.key) : closedError(cell.key.text));
        return;
      case 'starting':
        this.detach(cell);
        if (reason === 'closed') {
          clearTimeout(phase.loadTimer);
          this.failWaiting(cell, closedError(cell.key.text));
          this.terminate(cell, reason);
        } else {
          // Its callers asked before the retirement: it serves them once loaded, then drains.
          phase.retiring = reason;
        }
        return;
      case 'ready':
        this.detach(cell);
        this.scheduler.forget(cell);
        if (phase.channel.busy === 0) {
          this.terminate(cell, reason);
          return;
        }
        cell.transition({ name: 'draining', thread: phase.thread, channel: phase.channel, reason });
        if (reason === 'closed') phase.channel.signalAll('close');
        return;
      default:
        return;
    }
  }

  private terminate(cell: Cell, reason: ThreadEnd): void {
    const { phase } = cell;
    if (phase.name !== 'starting' && phase.name !== 'ready' && phase.name !== 'draining') return;
    this.scheduler.forget(cell);
    this.memory.unwatch(cell);
    this.cpu.unwatch(cell);
    const stuckTimer = setTimeout(() => this.stuck(cell), STUCK_AFTER_MS);
    stuckTimer.unref();
    cell.transition({ name: 'exiting', thread: phase.thread, channel: phase.channel, reason, stuckTimer });
    phase.thread.terminate(reason);
  }

  /**
   * terminate() did not end the thread (blocked in native code or a syscall). Its calls are
   * answered now, it gives up its slot, and `exit` fires when the thread really ends.
   */
  private stuck(cell: Cell): void {
    const { phase } = cell;
    if (phase.name !== 'exiting') return;
    const key = cell.key.text;
    const error = isExitReason(phase.reason) ? deathError(key, phase.reason, null, false) : closedError(key);
    const running = phase.channel.drain();
    cell.transition({ name: 'stuck', thread: phase.thread, reason: phase.reason });
    for (const call of running) this.finish(call, error);
    this.scheduler.pump();
  }

  /** A cell with no worker yet ends; its waiting calls fail with `failure`. */
  private endWithoutWorker(cell: Cell, failure: SandpoolError): void {
    const route = this.routes.get(cell.key.text);
    this.scheduler.dequeue(cell);
    this.detach(cell);
    this.failWaiting(cell, failure);
    cell.transition({ name: 'ended', end: null });
    if (route !== undefined) {
      route.release(cell);
      this.tidy(route);
    }
  }

  /** The key stops routing to this cell; it keeps its worker until it is terminated. */
  private detach(cell: Cell): void {
    const route = this.routes.get(cell.key.text);
    if (route === undefined) return;
    if (route.serving === cell) route.serving = null;
    if (route.candidate === cell) route.candidate = null;
    // A key whose last cell leaves holds nothing: it must not stay routed while that cell exits.
    this.tidy(route);
  }

  /** Settles reloads that are done and forgets keys that hold nothing. */
  private tidy(route: Route): void {
    route.settleReloads();
    if (route.unused && this.routes.get(route.key.text) === route) this.routes.delete(route.key.text);
  }

  private hasLiveCell(swarm: string): boolean {
    for (const cell of this.census.withThread())
      if (cell.key.swarm === swarm && cell.key.snapshot === null) return true;
    return false;
  }

  // ---- reload -----------------------------------------------------------------------------

  /**
   * Reloads the matching workers blue-green (`snapshot` omitted means live); resolves once
   * the old ones are gone, or have stayed because the new code failed to load.
   */
  async invalidate(selector: InvalidateSelector): Promise<InvalidateReport> {
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
    const reloads: Promise<[string, ReloadOutcome]>[] = [];
    for (const route of this.routes.values()) {
      if (!matches(route.key)) continue;
      const reload = this.reload(route);
      if (reload !== null) reloads.push(reload.then((outcome) => [route.key.text, outcome]));
    }
    const report: InvalidateReport = { reloaded: [], failed: [] };
    for (const [key, outcome] of await Promise.all(reloads)) {
      if (outcome.ok) report.reloaded.push(key);
      else report.failed.push({ key, error: outcome.error });
    }
    return report;
  }

  /** Null when the key has no code loaded yet: a cell still starting up will read the new files anyway. */
  private reload(route: Route): Promise<ReloadOutcome> | null {
    const serving = route.serving;
    if (serving === null || serving.phase.name === 'resolving' || serving.phase.name === 'queued') return null;
    if (serving.phase.name === 'starting' || route.candidate !== null) {
      // It may have read the old files: reload again once it serves.
      (route.candidate ?? serving).stale = true;
    } else {
      this.startCandidate(route);
    }
    return route.waitForReload();
  }

  private startCandidate(route: Route): void {
    if (this.closing !== null || route.serving === null) return;
    const candidate = new Cell(route.key, ++this.arrivals, this.census, this);
    route.adopt(candidate);
    route.candidate = candidate;
    void this.prepare(route, candidate);
  }

  /** Whether a live cell's files changed since it started to load (see settledStamp). */
  private changedSince(cell: Cell): boolean {
    return cell.filesBefore !== null && stampFiles(liveDir(this.root, cell.key.swarm)) !== cell.filesBefore;
  }

  /**
   * A candidate that loaded while its files were being written may hold half a file: the old
   * worker keeps serving, and a fresh candidate reads the files again.
   */
  private promoteIfFresh(route: Route, candidate: Cell): void {
    if (candidate.stale || this.changedSince(candidate)) {
      route.candidate = null;
      this.retire(candidate, 'reload');
      this.startCandidate(route);
      this.tidy(route);
      return;
    }
    const old = route.serving;
    route.candidate = null;
    route.serving = candidate;
    route.reloadTook();
    if (old !== null) this.retireReplaced(route, old);
    this.cellDrained(candidate);
    this.tidy(route);
  }

  /** Counted until it exits, so invalidate() resolves once the old code is gone. */
  private retireReplaced(route: Route, old: Cell): void {
    if (old.thread !== null && (old.phase.name === 'ready' || old.phase.name === 'starting')) route.replaced.add(old);
    this.retire(old, 'reload');
  }

  // ---- snapshots --------------------------------------------------------------------------

  /** Calls to the snapshot fail while its workers drain and its files go; then it is gone. */
  async removeSnapshot(swarm: string, name: string, removeFiles: () => Promise<void>): Promise<void> {
    const id = `${swarm}@${name}`;
    this.removing.add(id);
    try {
      const ended: Promise<void>[] = [];
      for (const route of [...this.routes.values()]) {
        if (route.key.swarm !== swarm || route.key.snapshot !== name) continue;
        for (const cell of [route.serving, route.candidate]) {
          if (cell === null) continue;
          ended.push(cell.released);
          this.retire(cell, 'removed');
        }
      }
      await Promise.all(ended);
      await removeFiles();
    } finally {
      this.removing.delete(id);
    }
  }

  // ---- stats and close --------------------------------------------------------------------

  stats(): PoolStats {
    let busy = 0;
    let idle = 0;
    let queued = this.waitingCalls.size;
    for (const cell of this.census.withThread()) {
      if (cell.busy > 0) busy += 1;
      else if (cell.idle) idle += 1;
    }
    for (const cell of this.census.cells('starting')) queued += cell.waiting?.length ?? 0;
    return {
      workers: this.census.slotHolders,
      stuck: this.census.cells('stuck').size,
      spares: this.spares.size,
      busy,
      idle,
      queued,
      outputDropped: this.outputDropped,
      sandbox: this.sandbox.layers,
      ...this.census.totals,
    };
  }

  /** Per key: CPU, memory, calls, errors, in flight, queued, demoted, latency (see KeyStats). */
  keyStats(): KeyStats[] {
    return collectKeyStats({
      book: this.keys,
      routes: this.routes,
      cells: this.census.withThread(),
      memory: (cell) => this.memory.lastReading(cell),
      demoted: (cell) => this.cpu.isDemoted(cell),
    });
  }

  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    this.watcher?.close();
    for (const phase of ['resolving', 'queued'] as const) {
      for (const cell of [...this.census.cells(phase)]) this.retire(cell, 'closed');
    }
    const released = [...this.census.withThread()].map((cell) => cell.released);
    for (const cell of [...this.census.withThread()]) this.retire(cell, 'closed');
    const sparesEnded = this.spares.close();
    const closeTimer = setTimeout(() => {
      for (const cell of [...this.census.cells('draining')]) this.terminate(cell, 'closed');
    }, this.options.closeTimeoutMs);
    await Promise.all([...released, sparesEnded]);
    clearTimeout(closeTimer);
    await this.sandbox.close();
  }

  // ---- invariants (tests) -----------------------------------------------------------------

  /** Every rule the books must obey, checked from scratch; empty when all hold. */
  violations(): string[] {
    return violations({
      census: this.census,
      queued: [...this.scheduler.queued()],
      routes: this.routes,
      waitingCalls: this.waitingCalls,
      maxWorkers: this.options.maxWorkers,
    });
  }
}

function sameFlags(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((flag, i) => flag === b[i]);
}

function unsendable(call: PendingCall, error: unknown): SandpoolError {
  const key = call.keyText;
  return new SandpoolError('ERR_SANDPOOL_DATA_CLONE', `arguments or result of ${key} ${call.fn}() cannot be cloned`, {
    key,
    cause: error,
  });
}
