import type { ResolvedKey } from '../key.js';
import type { Outcome } from '../protocol/messages.js';
import type { AgentWorker, Isolation, RetireReason, ThreadEnd, ThreadOwner, WorkerMessage } from './agent-worker.js';
import type { PendingCall } from './call.js';
import type { HostCalls } from './capabilities.js';
import { Channel, type ChannelOwner } from './channel.js';
import { keyHash } from './frequency.js';
import type { ModuleLocation } from './resolve.js';
import type { KeyAccess } from './sandbox/view.js';

/**
 * One key's worker incarnation (a key has two during a reload: serving and candidate). Its
 * phase is one value of this union, and only `transition` changes it; data that exists only
 * in some phases lives only in them.
 *
 * resolving (finding the file) → queued (waiting for a slot) → starting (worker loading the
 * module) → ready (idle or busy) → draining (retired, finishing its calls) → exiting (told
 * to terminate) → ended; an exiting thread that does not end in time is stuck until it does.
 * Any phase may end early.
 */
export type CellPhase =
  | { readonly name: 'resolving'; readonly waiting: PendingCall[] }
  | {
      readonly name: 'queued';
      readonly waiting: PendingCall[];
      readonly location: ModuleLocation;
      /** Its worker's Node flags (permission model, type stripping), fixed before it starts. */
      readonly execArgv: readonly string[];
      readonly isolation: Isolation;
      /** What a process key's cell must show it (see Sandbox.access); null for a thread. */
      readonly access: KeyAccess | null;
    }
  | {
      readonly name: 'starting';
      readonly waiting: PendingCall[];
      readonly thread: AgentWorker;
      readonly channel: Channel;
      readonly from: 'cold' | 'spare';
      /** When it was given its worker (performance.now()): how long a cold start takes is what spares plan by. */
      readonly startedAt: number;
      readonly loadTimer: NodeJS.Timeout;
      /** Retired while loading (its snapshot is being removed): it serves its waiters, then drains. */
      retiring: RetireReason | null;
    }
  | { readonly name: 'ready'; readonly thread: AgentWorker; readonly channel: Channel }
  | {
      readonly name: 'draining';
      readonly thread: AgentWorker;
      readonly channel: Channel;
      readonly reason: RetireReason;
    }
  | {
      readonly name: 'exiting';
      readonly thread: AgentWorker;
      readonly channel: Channel;
      readonly reason: ThreadEnd;
      /** Fires if terminate() has not ended the thread in time (native code: see `stuck`). */
      readonly stuckTimer: NodeJS.Timeout;
    }
  /** terminate() could not stop it (a blocking syscall, a sync native call): it holds no slot, and is watched until it ends. */
  | { readonly name: 'stuck'; readonly thread: AgentWorker; readonly reason: ThreadEnd }
  | { readonly name: 'ended'; readonly end: ThreadEnd | null };

export type PhaseName = CellPhase['name'];

const NEXT: Readonly<Record<PhaseName, readonly PhaseName[]>> = {
  resolving: ['queued', 'ended'],
  queued: ['starting', 'ended'],
  starting: ['ready', 'exiting', 'ended'],
  ready: ['draining', 'exiting', 'ended'],
  draining: ['exiting', 'ended'],
  exiting: ['stuck', 'ended'],
  stuck: ['ended'],
  ended: [],
};

/** Sees every phase change: the one place that keeps the sets and totals derived from them. */
export interface CellObserver {
  /** `from` is null for a cell just made. */
  phaseChanged(cell: Cell, from: CellPhase | null, to: CellPhase): void;
}

/** What a cell's worker and channel report, for the coordinator to decide on. */
export interface CellEvents {
  cellMessage(cell: Cell, message: WorkerMessage): void;
  cellEnded(cell: Cell, end: ThreadEnd, error: Error | null): void;
  /** The worker sent what the protocol does not allow. */
  cellViolated(cell: Cell): void;
  callReturned(cell: Cell, call: PendingCall, value: unknown): void;
  callSettled(cell: Cell, call: PendingCall, outcome: Outcome): void;
  callUnsendable(cell: Cell, call: PendingCall, error: unknown): void;
  callTimedOut(cell: Cell, call: PendingCall): void;
  cancelIgnored(cell: Cell, call: PendingCall): void;
  cellDrained(cell: Cell): void;
}

export class Cell implements ThreadOwner, ChannelOwner {
  private current: CellPhase = { name: 'resolving', waiting: [] };
  /** Use clock tick of its last call, for LRU. */
  lastUsed = 0;
  /** Its key's hash in the eviction policy's frequency sketch. */
  readonly keyHash: number;
  /** Files changed while it loaded: it may hold the old code and must reload once it serves. */
  stale = false;
  /** For a live reload: its files as they were when it began to load (see settledStamp). */
  filesBefore: string | null = null;
  /** Its key's host capabilities, resolved before it starts (the `host` option may be a function of the key). */
  host: HostCalls | null = null;
  /** Resolves once the cell holds no slot: its worker has exited, or is stuck beyond reach. */
  readonly released: Promise<void>;
  private markReleased!: () => void;

  constructor(
    readonly key: ResolvedKey,
    /** Order of first demand, which the slot queue keeps within a swarm. */
    readonly arrival: number,
    private readonly observer: CellObserver,
    private readonly events: CellEvents,
  ) {
    this.keyHash = keyHash(key.text);
    this.released = new Promise((resolve) => {
      this.markReleased = resolve;
    });
    observer.phaseChanged(this, null, this.current);
  }

  get phase(): CellPhase {
    return this.current;
  }

  /** The one place a phase changes. */
  transition(next: CellPhase): void {
    const from = this.current;
    if (!NEXT[from.name].includes(next.name)) {
      throw new Error(`sandpool: cell ${this.key.text} cannot go from ${from.name} to ${next.name}`);
    }
    this.current = next;
    this.observer.phaseChanged(this, from, next);
    if (next.name === 'ended' || next.name === 'stuck') this.markReleased();
  }

  /** A channel for a thread this cell is about to start on. */
  openChannel(thread: AgentWorker, abortGraceMs: number): Channel {
    thread.owner = this;
    thread.label = this.key.text;
    return new Channel(thread, this, abortGraceMs);
  }

  get thread(): AgentWorker | null {
    return 'thread' in this.current ? this.current.thread : null;
  }

  get channel(): Channel | null {
    return 'channel' in this.current ? this.current.channel : null;
  }

  /** Calls accepted before the worker was ready, in arrival order; null once it serves. */
  get waiting(): PendingCall[] | null {
    return 'waiting' in this.current ? this.current.waiting : null;
  }

  /** Calls not answered yet that this cell holds: waiting for its worker, or running on it. */
  get held(): number {
    return (this.waiting?.length ?? 0) + (this.channel?.running.size ?? 0);
  }

  /** Calls its worker is running, cancelled ones still within their grace included. */
  get busy(): number {
    return this.channel?.busy ?? 0;
  }

  get idle(): boolean {
    return this.current.name === 'ready' && this.current.channel.busy === 0;
  }

  get threadId(): number {
    return this.thread?.threadId ?? 0;
  }

  onMessage(message: WorkerMessage): void {
    this.events.cellMessage(this, message);
  }

  onEnd(end: ThreadEnd, error: Error | null): void {
    this.events.cellEnded(this, end, error);
  }

  onViolation(): void {
    this.events.cellViolated(this);
  }

  callReturned(call: PendingCall, value: unknown): void {
    this.events.callReturned(this, call, value);
  }

  callSettled(call: PendingCall, outcome: Outcome): void {
    this.events.callSettled(this, call, outcome);
  }

  callUnsendable(call: PendingCall, error: unknown): void {
    this.events.callUnsendable(this, call, error);
  }

  callTimedOut(call: PendingCall): void {
    this.events.callTimedOut(this, call);
  }

  cancelIgnored(call: PendingCall): void {
    this.events.cancelIgnored(this, call);
  }

  drained(): void {
    this.events.cellDrained(this);
  }
}
