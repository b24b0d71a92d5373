import { queueTimeout, type SandpoolError } from '../../errors.js';
import type { ResolvedKey } from '../../key.js';
import type { MemoryBeat } from '../../protocol/messages.js';
import type { SnapshotRef } from '../../store/names.js';
import type { HostCalls } from '../capabilities/capabilities.js';
import type { KeyPolicy } from '../policy/key-policy.js';
import { keyHash } from '../slots/frequency.js';
import type { Telemetry } from '../telemetry/telemetry.js';
import type { AgentWorker, RetireReason, ThreadEnd, ThreadOwner, WorkerMessage } from '../workers/agent-worker.js';
import type { LaunchPlan } from '../workers/launch.js';
import type { Call, CallSite } from './call.js';
import { Channel, type ChannelOwner } from './channel.js';
import { receiveChunk } from './chunks.js';
import type { Redact } from './host-paths.js';
import { toSandpoolError } from './remote-error.js';

/**
 * One key's worker incarnation (a key has two during a reload: serving and candidate). Its
 * phase is one value of this union, and only `transition` changes it; data that exists only
 * in some phases lives only in them, and so do the timers: the load timer runs while it
 * starts, the stuck timer while it exits, each cleared by the transition that leaves.
 *
 * resolving (finding the file) → queued (waiting for a slot) → starting (worker loading the
 * module) → ready (idle or busy) → draining (retired, finishing its calls) → exiting (told
 * to terminate) → ended; an exiting thread that does not end in time is stuck until it does.
 * Any phase may end early.
 */
export type CellPhase =
  | { readonly name: 'resolving'; readonly waiting: Call[] }
  | { readonly name: 'queued'; readonly waiting: Call[]; readonly plan: LaunchPlan }
  | {
      readonly name: 'starting';
      readonly waiting: Call[];
      readonly thread: AgentWorker;
      readonly channel: Channel;
      readonly from: 'cold' | 'spare';
      /** When it was given its worker (performance.now()): how long a cold start takes is what spares plan by. */
      readonly startedAt: number;
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
  | { readonly name: 'exiting'; readonly thread: AgentWorker; readonly channel: Channel; readonly end: ThreadEnd }
  /** terminate() could not stop it (a blocking syscall, a sync native call): it holds no slot, and is watched until it ends. */
  | { readonly name: 'stuck'; readonly thread: AgentWorker; readonly end: ThreadEnd }
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

/** A thread told to terminate that has not ended after this long is stuck. */
const STUCK_AFTER_MS = 1_500;

/** Sees every phase change, and every call that starts or stops waiting for a slot: the census. */
export interface CellObserver {
  /** `from` is null for a cell just made. */
  phaseChanged(cell: Cell, from: CellPhase | null, to: CellPhase): void;
  /** A call waits in a cell that has no worker yet (`true`), or no longer does. */
  slotWait(call: Call, waits: boolean): void;
}

/** What a cell's worker does that needs a decision of the pool's (cells/lifecycle.ts). */
export interface CellLife {
  ready(cell: Cell, tid: number): void;
  loadFailed(cell: Cell, error: SandpoolError): void;
  loadTimedOut(cell: Cell): void;
  /** Its worker did not end in time after terminate(). */
  stuck(cell: Cell): void;
  ended(cell: Cell, end: ThreadEnd, failure: Error | null): void;
  /** It must end now: a protocol breach, or a cancelled call that ignored its signal. */
  kill(cell: Cell, reason: 'killed' | 'protocol'): void;
  /** Its idle worker took a call. */
  engaged(cell: Cell): void;
  /** Its last running call has settled. */
  drained(cell: Cell): void;
  /** A cell with no worker yet lost its last waiting call: nobody wants its start. */
  abandoned(cell: Cell): void;
  /** Its worker's own report of its memory (where the coordinator cannot read it). */
  beat(cell: Cell, beat: MemoryBeat): void;
  /** Its worker's CPU in nanoseconds now; NaN where it is not read. */
  cpuNs(cell: Cell): number;
}

/** The cell's key's route (routes/route.ts): what it decides about the cells it serves from. */
export interface CellRoute {
  readonly key: ResolvedKey;
  /** What a snapshot key's name pointed to when the route opened: its cells load that content only. Null for live. */
  readonly snapshot: SnapshotRef | null;
  /** A call for this key: it runs on the serving cell, started if there is none. */
  accept(call: Call): void;
  /** Whether the cell is a reload candidate: never an eviction victim. */
  isCandidate(cell: Cell): boolean;
  /** Whether the cell serves a key whose candidate is loading. */
  isBeingReplaced(cell: Cell): boolean;
  /** Before the cell's files are located for a load: a live reload candidate stamps them. */
  beforeLoad(cell: Cell): Promise<void>;
  /** The cell got its worker and began to load. */
  loading(cell: Cell): void;
  /** The cell's worker is ready: true when the route took it over (a reload candidate to promote). */
  promote(cell: Cell): boolean;
  /** The cell serves its key now (its waiting calls are posted): it may owe a reload. */
  serves(cell: Cell): void;
  /** The cell's module could not be found or planned for (it is abandoned next): a candidate's reload failed. */
  prepareFailed(cell: Cell, error: SandpoolError): void;
  /** The cell's worker did not load: its waiting calls fail with `error`, and the key backs off. */
  startFailed(cell: Cell, error: SandpoolError): void;
  /** An evicted cell being replaced makes room for its candidate, which serves from now on; false if it is not being replaced. */
  yieldToCandidate(cell: Cell): boolean;
  /** The key stops routing to the cell; it keeps its worker until that ends. */
  detach(cell: Cell): void;
  /** The cell has ended: `death` is why its worker died, when it did and the pool did not end it. */
  released(cell: Cell, death: SandpoolError | null): void;
}

export class Cell implements ThreadOwner, ChannelOwner, CallSite {
  private current: CellPhase = { name: 'resolving', waiting: [] };
  /** The load timer while starting, the stuck timer while exiting. */
  private timer: NodeJS.Timeout | undefined = undefined;
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
  /** Its key's settings for this spawn, resolved before it starts. */
  policy: KeyPolicy | null = null;
  /** The digest of the snapshot it loads, known once its module is located; null for live code. */
  digest: string | null = null;
  /** Resolves once the cell holds no slot: its worker has exited, or is stuck beyond reach. */
  readonly released: Promise<void>;
  private markReleased!: () => void;

  constructor(
    readonly route: CellRoute,
    /** Order of first demand, which the slot queue keeps within a swarm. */
    readonly arrival: number,
    private readonly observer: CellObserver,
    private readonly life: CellLife,
    readonly loadTimeoutMs: number,
  ) {
    this.keyHash = keyHash(route.key.text);
    this.released = new Promise((resolve) => {
      this.markReleased = resolve;
    });
    observer.phaseChanged(this, null, this.current);
  }

  get key(): ResolvedKey {
    return this.route.key;
  }

  get phase(): CellPhase {
    return this.current;
  }

  /** The one place a phase changes; it arms and clears the phase's timer. */
  transition(next: CellPhase): void {
    const from = this.current;
    if (!NEXT[from.name].includes(next.name)) {
      throw new Error(`sandpool: cell ${this.key.text} cannot go from ${from.name} to ${next.name}`);
    }
    clearTimeout(this.timer);
    this.timer = undefined;
    if ((from.name === 'resolving' || from.name === 'queued') && next.name !== 'queued') {
      // Its waiting calls now wait for a worker that exists, not for a slot.
      for (const call of from.waiting) this.observer.slotWait(call, false);
    }
    this.current = next;
    if (next.name === 'starting') {
      this.timer = setTimeout(() => this.life.loadTimedOut(this), this.loadTimeoutMs);
    } else if (next.name === 'exiting') {
      this.timer = setTimeout(() => this.life.stuck(this), STUCK_AFTER_MS);
      this.timer.unref();
    }
    this.observer.phaseChanged(this, from, next);
    if (next.name === 'ended' || next.name === 'stuck') this.markReleased();
  }

  /** A channel for a worker this cell is about to start on. */
  openChannel(
    thread: AgentWorker,
    abortGraceMs: number,
    observers: Pick<Telemetry, 'measuring'>,
    redact: Redact,
  ): Channel {
    thread.owner = this;
    thread.label = this.key.text;
    return new Channel(thread, this, abortGraceMs, observers, redact);
  }

  get thread(): AgentWorker | null {
    return 'thread' in this.current ? this.current.thread : null;
  }

  get channel(): Channel | null {
    return 'channel' in this.current ? this.current.channel : null;
  }

  /** Calls accepted before the worker was ready, in arrival order; null once it serves. */
  get waiting(): readonly Call[] | null {
    return 'waiting' in this.current ? this.current.waiting : null;
  }

  /** Calls not answered yet that this cell holds: waiting for its worker, or running on it. */
  get held(): number {
    const { channel } = this;
    return (this.waiting?.length ?? 0) + (channel === null ? 0 : channel.running.size + channel.waiting.length);
  }

  /** Calls its worker is running, cancelled ones still within their grace included. */
  get busy(): number {
    return this.channel?.busy ?? 0;
  }

  get idle(): boolean {
    return this.current.name === 'ready' && this.current.channel.busy === 0;
  }

  /** Who its worker is, as events say it. */
  get worker(): { threadId: number | null; pid: number } {
    const thread = this.thread;
    return thread === null ? { threadId: null, pid: 0 } : { threadId: thread.threadId, pid: thread.pid };
  }

  /** The oldest call its worker runs, for CPU accounting. */
  oldestCall(): object | null {
    return this.channel?.running.oldest() ?? null;
  }

  // ---- calls ------------------------------------------------------------------------------

  /** Holds a call until its worker is ready; it waits at most `queueTimeoutMs` (0: no limit). */
  hold(call: Call, queueTimeoutMs: number): void {
    const { current } = this;
    if (!('waiting' in current)) throw new Error(`sandpool: a call held by a ${current.name} cell`);
    current.waiting.push(call);
    if (this.thread === null) this.observer.slotWait(call, true);
    if (queueTimeoutMs > 0 && call.queueTimer === undefined) {
      const key = this.key.text;
      const timedOut = (): void => call.interrupt(queueTimeout(key, call.fn, queueTimeoutMs), 'timeout');
      call.queueTimer = setTimeout(timedOut, queueTimeoutMs);
      call.queueTimer.unref();
    }
  }

  /** Every waiting call, taken out of the cell (to be answered now). */
  takeWaiting(): Call[] {
    const { current } = this;
    if (!('waiting' in current)) return [];
    const calls = current.waiting.splice(0);
    if (this.thread === null) for (const call of calls) this.observer.slotWait(call, false);
    return calls;
  }

  withdraw(call: Call, why: 'abort' | 'timeout'): void {
    const channel = this.channel;
    if (channel !== null && (channel.has(call) || channel.waiting.includes(call))) {
      channel.withdraw(call, why);
      return;
    }
    const waiting = 'waiting' in this.current ? this.current.waiting : null;
    const index = waiting?.indexOf(call) ?? -1;
    if (waiting === null || index < 0) return;
    waiting.splice(index, 1);
    if (this.thread !== null) return;
    this.observer.slotWait(call, false);
    // A start it shared with other callers goes on; one nobody waits for is cancelled.
    if (waiting.length === 0) this.life.abandoned(this);
  }

  credit(call: Call, n: number): void {
    this.channel?.credit(call, n);
  }

  cpuShare(): number {
    return this.channel?.cpuShare() ?? Number.NaN;
  }

  violate(problem: string): void {
    this.thread?.violate(problem);
  }

  // ---- its worker -------------------------------------------------------------------------

  onMessage(message: WorkerMessage): void {
    const { current } = this;
    switch (message.t) {
      case 'ready':
        if (current.name !== 'starting') return this.violate('a ready message outside a load');
        return this.life.ready(this, message.tid);
      case 'load-failed':
        if (current.name !== 'starting') return this.violate('a load failure outside a load');
        return this.life.loadFailed(
          this,
          toSandpoolError({ ok: false, ...message }, this.key.text, current.channel.redact),
        );
      case 'done':
      case 'result':
        return this.channel?.receive(message);
      case 'memory':
        return this.life.beat(this, message);
      case 'chunk': {
        const { channel, thread } = this;
        if (channel === null || thread === null) return;
        return receiveChunk(channel, thread, message);
      }
      case 'host': {
        const { channel, thread, host } = this;
        if (channel === null || thread === null || host === null) return;
        return host.handle(message, (id) => channel.callFor(id), thread);
      }
      case 'host-pull':
      case 'host-cancel': {
        const { thread, host } = this;
        if (thread === null || host === null) return;
        return message.t === 'host-pull' ? host.pull(message, thread) : host.cancel(message, thread);
      }
    }
  }

  onEnd(end: ThreadEnd, error: Error | null): void {
    this.life.ended(this, end, error);
  }

  onViolation(): void {
    this.life.kill(this, 'protocol');
  }

  cancelIgnored(): void {
    this.life.kill(this, 'killed');
  }

  engaged(): void {
    this.life.engaged(this);
  }

  drained(): void {
    this.life.drained(this);
  }

  cpuNs(): number {
    return this.life.cpuNs(this);
  }
}
