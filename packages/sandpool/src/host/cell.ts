import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { wrap } from 'comlink/dist/esm/comlink.mjs';
import type { ResolvedKey } from '../key.js';
import { isPrimitive } from '../protocol/clone.js';
import type { FromWorker, Outcome, OutputChunk } from '../protocol/messages.js';
import type { PendingCall } from './call.js';
import type { ModuleLocation } from './resolve.js';
import type { AgentThread, RetireReason, ThreadEnd, ThreadOwner } from './thread.js';

/**
 * `resolving` (finding the file) → `queued` (waiting for a slot under maxWorkers) →
 * `starting` (worker loading the module) → `ready` (idle or busy) → `draining` → `ended`.
 */
export type CellState = 'resolving' | 'queued' | 'starting' | 'ready' | 'draining' | 'ended';

/** What a cell reports to the pool, which owns every policy decision. */
export interface CellHost {
  cellReady(cell: Cell): void;
  cellLoadFailed(cell: Cell, outcome: Outcome & { ok: false }): void;
  cellIdle(cell: Cell): void;
  cellEnded(cell: Cell, end: ThreadEnd, error: Error | null): void;
  callCompleted(cell: Cell, call: PendingCall, outcome: Outcome): void;
  callUnsendable(cell: Cell, call: PendingCall, error: unknown): void;
  callTimedOut(cell: Cell, call: PendingCall): void;
}

interface RemoteApi {
  invoke(fn: string, args: unknown[]): Promise<Outcome>;
}

/**
 * Calls per message at most. One huge batch makes the two threads take turns (the worker
 * idles while the coordinator fills it); smaller ones let the worker start on the first
 * while the rest are still being made. 16 measured best at 64 and 1,024 in flight
 * (against 32 and unbounded).
 */
const BATCH_LIMIT = 16;

/** One key's worker incarnation: a key may have two during a reload (serving and candidate). */
export class Cell implements ThreadOwner {
  state: CellState = 'resolving';
  location: ModuleLocation | null = null;
  thread: AgentThread | null = null;
  /** Calls accepted before the worker was ready, in arrival order. */
  readonly waiting: PendingCall[] = [];
  readonly running = new Map<number, PendingCall>();
  lastUsed = 0;
  idleSince = 0;
  idleTimer: NodeJS.Timeout | undefined = undefined;
  loadTimer: NodeJS.Timeout | undefined = undefined;
  retiring: RetireReason | null = null;
  /** Set when files changed while this cell was loading: it may hold the old code. */
  staleOnReady = false;
  /** Retired by a reload: counted in its key's `replaced` until it exits. */
  replaced = false;
  /** A reload candidate's view of its live files before it loaded (see stampFiles). */
  filesBefore: string | null = null;
  /** Its module failed to load: its exit is that failure, not a death under calls. */
  failedToLoad = false;
  /** Resolves once the worker has exited (or at once if it never had one). */
  readonly ended: Promise<void>;
  markEnded!: () => void;
  private nextId = 0;
  /** Calls of this tick not sent yet, flattened as the batch message carries them. */
  private outbox: unknown[] = [];
  private deadlineTimer: NodeJS.Timeout | undefined = undefined;
  private deadlineAt = 0;
  private remoteApi: RemoteApi | null = null;
  private remotePort: MessagePort | null = null;

  constructor(
    readonly key: ResolvedKey,
    private readonly host: CellHost,
    /** Order of first demand, which the slot queue keeps. */
    readonly arrival: number,
  ) {
    this.ended = new Promise((resolve) => {
      this.markEnded = resolve;
    });
  }

  get hasWorker(): boolean {
    return this.thread !== null;
  }

  get idle(): boolean {
    return this.state === 'ready' && this.running.size === 0;
  }

  get threadId(): number {
    return this.thread?.threadId ?? 0;
  }

  attach(thread: AgentThread, location: ModuleLocation): void {
    this.thread = thread;
    this.state = 'starting';
    thread.owner = this;
    thread.label = this.key.text;
    thread.post({ t: 'load', key: this.key.text, file: location.file, verifyDir: location.verifyDir });
  }

  /**
   * Posts a call to the ready worker; the timeout clock starts here. Calls whose arguments
   * are all primitives wait for the end of the tick and leave together in one message;
   * any other call is cloned now, as postMessage would, so a caller may reuse its objects.
   */
  post(call: PendingCall): void {
    const thread = this.thread;
    if (thread === null) throw new Error('sandpool: post to a cell without a worker');
    call.id = ++this.nextId;
    call.cell = this;
    if (this.running.size === 0) thread.setReferenced(true);
    this.running.set(call.id, call);
    if (call.timeoutMs > 0) this.watchDeadline(call);
    if (call.transport === 'comlink') {
      this.remote(thread)
        .invoke(call.fn, call.args)
        .then(
          (outcome) => this.complete(call.id, outcome),
          (error: unknown) => this.unsendable(call, error),
        );
      return;
    }
    if (call.args.every(isPrimitive)) {
      if (this.outbox.length === 0) queueMicrotask(this.flush);
      this.outbox.push(call.id, call.fn, call.args.slice());
      if (this.outbox.length >= BATCH_LIMIT * 3) this.flush();
      return;
    }
    this.flush(); // calls made earlier in this tick must arrive first
    this.send([call.id, call.fn, call.args]);
  }

  private readonly flush = (): void => {
    if (this.outbox.length === 0) return;
    const calls = this.outbox;
    this.outbox = [];
    this.send(calls);
  };

  private send(calls: unknown[]): void {
    const thread = this.thread;
    if (thread === null || thread.terminating) return; // its exit rejects the calls
    try {
      thread.post({ t: 'calls', calls });
      return;
    } catch {
      // Some argument cannot be cloned: send them one by one so only its call fails.
    }
    for (let i = 0; i < calls.length; i += 3) {
      try {
        thread.post({ t: 'calls', calls: calls.slice(i, i + 3) });
      } catch (error) {
        const call = this.running.get(calls[i] as number);
        if (call !== undefined) this.unsendable(call, error);
      }
    }
  }

  /**
   * One timer per cell, armed for the earliest deadline, instead of one per call: most calls
   * finish long before their timeout, and a timer per call would cost more than the call.
   */
  private watchDeadline(call: PendingCall): void {
    call.deadline = performance.now() + call.timeoutMs;
    if (this.deadlineTimer !== undefined && call.deadline >= this.deadlineAt) return;
    this.armDeadline(call.deadline);
  }

  private armDeadline(at: number): void {
    clearTimeout(this.deadlineTimer);
    this.deadlineAt = at;
    this.deadlineTimer = setTimeout(this.checkDeadlines, Math.max(0, Math.ceil(at - performance.now())));
    // A busy worker keeps the host alive on its own; an idle cell's stale deadline must not.
    this.deadlineTimer.unref();
  }

  private readonly checkDeadlines = (): void => {
    this.deadlineTimer = undefined;
    const now = performance.now();
    let next = Number.POSITIVE_INFINITY;
    for (const call of this.running.values()) {
      if (call.timeoutMs <= 0) continue;
      if (call.deadline <= now) return this.host.callTimedOut(this, call);
      next = Math.min(next, call.deadline);
    }
    if (next !== Number.POSITIVE_INFINITY) this.armDeadline(next);
  };

  onMessage(message: Exclude<FromWorker, OutputChunk>): void {
    switch (message.t) {
      case 'done':
        return this.completeBatch(message.ok, message.err);
      case 'ready':
        return this.host.cellReady(this);
      case 'load-failed':
        return this.host.cellLoadFailed(this, { ok: false, code: message.code, error: message.error });
    }
  }

  onEnd(end: ThreadEnd, error: Error | null): void {
    clearTimeout(this.deadlineTimer);
    this.remotePort?.close();
    this.host.cellEnded(this, end, error);
  }

  private completeBatch(ok: unknown[], err: unknown[]): void {
    for (let i = 0; i < ok.length; i += 2) this.settle(ok[i] as number, { ok: true, value: ok[i + 1] });
    for (let i = 0; i < err.length; i += 3) {
      this.settle(err[i] as number, { ok: false, code: err[i + 1], error: err[i + 2] } as Outcome);
    }
    if (this.running.size === 0) this.host.cellIdle(this);
  }

  private complete(id: number, outcome: Outcome): void {
    this.settle(id, outcome);
    if (this.running.size === 0) this.host.cellIdle(this);
  }

  private settle(id: number, outcome: Outcome): void {
    const call = this.running.get(id);
    if (call === undefined) return;
    this.running.delete(id);
    this.host.callCompleted(this, call, outcome);
  }

  private unsendable(call: PendingCall, error: unknown): void {
    if (!this.running.delete(call.id)) return;
    this.host.callUnsendable(this, call, error);
    if (this.running.size === 0) this.host.cellIdle(this);
  }

  /** comlink's endpoint for `remote()`, opened on first use on a port of its own. */
  private remote(thread: AgentThread): RemoteApi {
    if (this.remoteApi !== null) return this.remoteApi;
    const { port1, port2 } = new MessageChannel();
    thread.post({ t: 'remote', port: port2 }, [port2]);
    this.remoteApi = wrap<RemoteApi>(port1 as unknown as Parameters<typeof wrap>[0]) as unknown as RemoteApi;
    // The worker's own ref/unref decides whether the host stays alive, not this port.
    port1.unref();
    this.remotePort = port1;
    return this.remoteApi;
  }
}
