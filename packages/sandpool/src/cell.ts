import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { wrap } from 'comlink/dist/esm/comlink.mjs';
import type { PendingCall } from './call.js';
import type { ResolvedKey } from './key.js';
import type { FromWorker, Outcome } from './protocol.js';
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
  /** Resolves once the worker has exited (or at once if it never had one). */
  readonly ended: Promise<void>;
  markEnded!: () => void;
  private nextId = 0;
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

  attach(thread: AgentThread, location: ModuleLocation): void {
    this.thread = thread;
    this.state = 'starting';
    thread.owner = this;
    thread.label = this.key.text;
    thread.post({ t: 'load', key: this.key.text, file: location.file, verifyDir: location.verifyDir });
  }

  /** Posts a call to the ready worker; the timeout clock starts here. */
  post(call: PendingCall): void {
    const thread = this.thread;
    if (thread === null) throw new Error('sandpool: post to a cell without a worker');
    call.id = ++this.nextId;
    call.cell = this;
    if (call.transport === 'comlink') {
      this.remote(thread)
        .invoke(call.fn, call.args)
        .then(
          (outcome) => this.complete(call.id, outcome),
          (error: unknown) => this.unsendable(call, error),
        );
    } else {
      try {
        thread.post({ t: 'call', id: call.id, fn: call.fn, args: call.args });
      } catch (error) {
        this.host.callUnsendable(this, call, error);
        return;
      }
    }
    if (this.running.size === 0) thread.setReferenced(true);
    this.running.set(call.id, call);
    if (call.timeoutMs > 0) {
      call.timer = setTimeout(() => this.host.callTimedOut(this, call), call.timeoutMs);
    }
  }

  onMessage(message: FromWorker): void {
    switch (message.t) {
      case 'ok':
        return this.complete(message.id, { ok: true, value: message.value });
      case 'err':
        return this.complete(message.id, { ok: false, code: message.code, error: message.error });
      case 'ready':
        return this.host.cellReady(this);
      case 'load-failed':
        return this.host.cellLoadFailed(this, { ok: false, code: message.code, error: message.error });
    }
  }

  onEnd(end: ThreadEnd, error: Error | null): void {
    this.remotePort?.close();
    this.host.cellEnded(this, end, error);
  }

  private complete(id: number, outcome: Outcome): void {
    const call = this.running.get(id);
    if (call === undefined) return;
    this.running.delete(id);
    this.host.callCompleted(this, call, outcome);
    if (this.running.size === 0) this.host.cellIdle(this);
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
