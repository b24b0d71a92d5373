// The module's own: an application's tests that fake the global timers must not hold calls back.
import { setImmediate } from 'node:timers';
import { deserialize } from 'node:v8';
import { callTimeout, dataClone } from '../../errors.js';
import { isPrimitive } from '../../protocol/clone.js';
import { CALL_HEADER, LIMITS, type Outcome, type ReplyBatch, type SerializedResult } from '../../protocol/messages.js';
import { deserializeMoving } from '../../protocol/transfer-codec.js';
import { CpuShare } from '../telemetry/cpu-share.js';
import type { Telemetry } from '../telemetry/telemetry.js';
import type { AgentWorker } from '../workers/agent-worker.js';
import type { Call } from './call.js';
import { CallSlots } from './call-slots.js';
import type { Redact } from './host-paths.js';
import { toSandpoolError } from './remote-error.js';

/** What a channel reports to its cell: only what the calls cannot settle by themselves. */
export interface ChannelOwner {
  /** The idle worker took a call: it is busy until drained. */
  engaged(): void;
  /** A cancelled call did not settle within abortGraceMs: its worker must go. */
  cancelIgnored(): void;
  /** The last running call has settled, and every cancelled one too. */
  drained(): void;
  /** Its worker's CPU in nanoseconds now; NaN where it cannot be read. */
  cpuNs(): number;
}

/**
 * The calls in flight on one worker: ids, batching, deadlines, and decoding replies. A call
 * to an idle worker leaves at once. Calls made while it works, whose arguments are all
 * primitives, wait for the end of the event loop's turn and leave together, in messages of
 * up to LIMITS.callBatch calls; any other call is cloned now, as postMessage would, so a
 * caller may reuse its objects.
 */
export class Channel {
  readonly running = new CallSlots();
  /** Calls answered already (timed out, aborted) whose agent still runs, with their grace timers. */
  private readonly cancelling = new Map<number, NodeJS.Timeout>();
  /** Calls of this turn not sent yet, flattened as the batch message carries them (CALL_HEADER). */
  private outbox: unknown[] = [];
  private outboxCalls = 0;
  /** In endOfTurn: its outbox leaves with every other channel's at the end of the turn. */
  private awaitingTurn = false;
  private deadlineTimer: NodeJS.Timeout | undefined = undefined;
  private deadlineAt = 0;
  /**
   * Calls that arrived while a cancelled call was within its grace. They wait here, not on
   * the worker: a worker that may be terminated for ignoring its signal never takes a call it
   * might not start, and if it is, these go to its replacement (see takeDeferred).
   */
  private deferred: Call[] = [];
  /** The CPU of the calls someone observes. */
  private readonly cpu: CpuShare;

  constructor(
    private readonly thread: AgentWorker,
    private readonly owner: ChannelOwner,
    private readonly abortGraceMs: number,
    /** Whether calls are observed now: only then is the worker's CPU read as replies come. */
    private readonly observers: Pick<Telemetry, 'measuring'>,
    /** Makes what the worker's errors say fit for the caller (cells/host-paths.ts). */
    readonly redact: Redact,
  ) {
    this.cpu = new CpuShare(() => owner.cpuNs());
  }

  /** Calls the worker is running, answered or not: a busy worker is never idle. */
  get busy(): number {
    return this.running.size + this.cancelling.size;
  }

  /**
   * Posts a call to the ready worker; the timeout clock starts here, at `now` (performance.now(),
   * passed in when the caller has just read it: one clock read per call is enough).
   */
  post(call: Call, now = performance.now()): void {
    if (this.cancelling.size > 0) {
      try {
        // Sent later: the caller may reuse its objects as soon as call() returns.
        call.copyArgs();
      } catch (error) {
        unsendable(call, error);
        return;
      }
      this.deferred.push(call);
      return;
    }
    if (call.queueTimer !== undefined) call.stopWaiting();
    const idle = this.busy === 0;
    let trace: string | null = null;
    if (call.observed !== null) {
      call.observed.cpuFrom = this.cpu.start(this.busy, now);
      trace = call.observed.traceparent;
    }
    this.running.add(call);
    if (idle) {
      this.thread.setReferenced(true);
      this.owner.engaged();
    }
    // The worker's sandpool.deadline is in epoch ms: the same instant, on the wall clock.
    let deadline = 0;
    if (call.timeoutMs > 0) {
      this.watchDeadline(call, now);
      deadline = performance.timeOrigin + call.deadline;
    }
    if (
      call.transfer === null &&
      call.stream === null &&
      !call.shared &&
      trace === null &&
      call.args.every(isPrimitive)
    ) {
      // Nothing runs and nothing waits to leave: a lone call goes now, not at the end of the
      // turn, so the worker starts on it while the caller's code goes on.
      if (idle) return this.send(appendCall([], call, deadline));
      if (!this.awaitingTurn) {
        this.awaitingTurn = true;
        endOfTurn.push(this);
        if (endOfTurn.length === 1) setImmediate(flushEndOfTurn);
      }
      // Copied now: the caller may reuse its array before the batch leaves.
      appendCall(this.outbox, call, deadline);
      // One huge batch makes the two threads take turns (the worker idles while the
      // coordinator fills it); 16 measured best at 64 and 1,024 in flight.
      if (++this.outboxCalls >= LIMITS.callBatch) this.flush();
      return;
    }
    this.flush(); // calls made earlier in this turn must arrive first
    if (call.stream !== null) this.sendStream(call, deadline, call.stream.highWaterMark, trace);
    else this.send(appendCall([], call, deadline), call.transfer ?? undefined, call.shared, trace);
  }

  /** The CPU share of the calls it runs now (see CpuShare). */
  cpuShare(): number {
    return this.cpu.now(this.busy);
  }

  /** The running call a worker's message names; undefined once it has settled or been cancelled. */
  callFor(id: number): Call | undefined {
    return this.isIssued(id) ? this.running.get(id) : undefined;
  }

  /** A stream call leaves alone: its start carries the credit the worker may use. */
  private sendStream(call: Call, deadline: number, credit: number, trace: string | null): void {
    if (this.thread.terminating) return;
    try {
      const { id, fn, args } = call;
      this.thread.post(
        trace === null
          ? { t: 'stream', id, fn, args, deadline, credit }
          : { t: 'stream', id, fn, args, deadline, credit, trace },
      );
    } catch (error) {
      this.running.settle(call);
      unsendable(call, error);
      this.afterSettle();
    }
  }

  /** The consumer of a stream took `n` chunks. */
  credit(call: Call, n: number): void {
    if (this.has(call) && !this.thread.terminating) this.thread.post({ t: 'credit', id: call.id, n });
  }

  has(call: Call): boolean {
    return this.running.get(call.id) === call;
  }

  /** Calls waiting for a cancelled call's grace to end, not yet on the worker. */
  get waiting(): readonly Call[] {
    return this.deferred;
  }

  /** The calls that never reached the worker, taken off the channel (it is ending: they may run elsewhere). */
  takeDeferred(): Call[] {
    const calls = this.deferred;
    this.deferred = [];
    return calls;
  }

  /** Takes back a call answered early: one still waiting for a grace leaves; a running one is cancelled. */
  withdraw(call: Call, why: 'timeout' | 'abort'): void {
    const index = this.deferred.indexOf(call);
    if (index >= 0) this.deferred.splice(index, 1);
    else this.cancel(call, why);
  }

  /**
   * Takes an answered call (aborted, timed out) off the channel and fires its signal in the
   * agent; a late reply is dropped. The agent has abortGraceMs to settle, or its worker goes.
   */
  cancel(call: Call, why: 'timeout' | 'abort'): void {
    if (!this.has(call)) return;
    this.running.cancel(call);
    if (this.abortGraceMs === 0) {
      this.owner.cancelIgnored();
      return;
    }
    if (!this.thread.terminating) this.thread.post({ t: 'cancel', id: call.id, why });
    const timer = setTimeout(() => {
      if (this.cancelling.delete(call.id)) this.owner.cancelIgnored();
    }, this.abortGraceMs);
    timer.unref();
    this.cancelling.set(call.id, timer);
  }

  /** Fires the signal of every running call, whose results are still wanted (the pool is closing). */
  signalAll(why: 'close'): void {
    if (this.thread.terminating) return;
    for (const { id } of this.running.calls()) this.thread.post({ t: 'cancel', id, why });
  }

  /** Decodes a reply message; a reply to an id never issued is a forgery. */
  receive(message: ReplyBatch | SerializedResult): void {
    if (this.observers.measuring) this.cpu.replies(this.busy, message.t === 'result' ? 1 : repliesIn(message));
    else this.cpu.lapse();
    if (message.t === 'result') {
      this.settleSerialized(message);
    } else {
      const { ok, err } = message;
      for (let i = 0; i < ok.length; i += 2) {
        const call = this.take(ok[i] as number);
        if (call !== undefined) call.settle(null, ok[i + 1]);
      }
      for (let i = 0; i < err.length; i += 3) {
        this.settle(err[i] as number, { ok: false, code: err[i + 1], error: err[i + 2] } as Outcome);
      }
    }
    this.cpu.settled();
    this.afterSettle();
  }

  /** Every call still running, taken off the channel (the worker is gone or going). */
  drain(): Call[] {
    clearTimeout(this.deadlineTimer);
    this.deadlineTimer = undefined;
    for (const timer of this.cancelling.values()) clearTimeout(timer);
    this.cancelling.clear();
    const calls = this.running.calls();
    this.running.clear();
    this.outbox = [];
    this.outboxCalls = 0;
    return calls;
  }

  private settleSerialized({ id, bytes, moved, shared }: SerializedResult): void {
    if (bytes.byteLength > LIMITS.resultBytes) {
      this.thread.violate(`a result of ${bytes.byteLength} bytes, past the limit its runtime keeps`);
      return;
    }
    if (this.cancelling.has(id)) return this.settle(id, { ok: true, value: undefined });
    const call = this.callFor(id);
    if (call === undefined) return;
    if (shared !== undefined && !call.shared) {
      this.thread.violate(`shared memory in the result of call ${id}, which did not allow it`);
      return;
    }
    let value: unknown;
    try {
      value =
        moved === undefined && shared === undefined
          ? deserialize(new Uint8Array(bytes))
          : deserializeMoving(bytes, moved ?? [], shared);
    } catch (error) {
      // Too deep for this thread's stack, say: that call fails, the worker goes on.
      const message = error instanceof Error ? error.message : String(error);
      this.settle(id, {
        ok: false,
        code: 'ERR_SANDPOOL_DATA_CLONE',
        error: { name: 'DataCloneError', message: `the result cannot be rebuilt in the host: ${message}` },
      });
      return;
    }
    this.settle(id, { ok: true, value });
  }

  private isIssued(id: number): boolean {
    if (this.running.issued(id)) return true;
    this.thread.violate(`a reply to call ${id}, which was never made`);
    return false;
  }

  private settle(id: number, outcome: Outcome): void {
    const call = this.take(id);
    if (call === undefined) return;
    if (outcome.ok) call.settle(null, outcome.value);
    else call.settle(toSandpoolError(outcome, call.keyText, this.redact));
  }

  /** The running call a reply settles, off the channel; undefined when its answer was given already. */
  private take(id: number): Call | undefined {
    const grace = this.cancelling.get(id);
    if (grace !== undefined) {
      // A cancelled call settled within its grace: its answer was given already.
      clearTimeout(grace);
      this.cancelling.delete(id);
      this.running.release(id);
      if (this.cancelling.size === 0) for (const call of this.takeDeferred()) this.post(call);
      return undefined;
    }
    if (!this.isIssued(id)) return undefined;
    const call = this.running.get(id);
    if (call !== undefined) this.running.settle(call); // else settled already, or a duplicate
    return call;
  }

  private afterSettle(): void {
    if (this.busy === 0) this.owner.drained();
  }

  /** The end of the event loop's turn in which calls were put in its outbox. */
  turnEnded(): void {
    this.awaitingTurn = false;
    this.flush();
  }

  private readonly flush = (): void => {
    if (this.outboxCalls === 0) return;
    const calls = this.outbox;
    this.outbox = [];
    this.outboxCalls = 0;
    this.send(calls);
  };

  /**
   * `shared`: the batch is one call of `{ shared: true }`, whose result may share memory too;
   * `trace`: the batch is one call, with its traceparent.
   */
  private send(calls: unknown[], transfer?: ArrayBuffer[], shared = false, trace: string | null = null): void {
    if (this.thread.terminating) return; // its exit rejects the calls
    try {
      this.thread.post(
        shared || trace !== null
          ? { t: 'calls', calls, ...(shared ? { shared: true as const } : {}), ...(trace === null ? {} : { trace }) }
          : { t: 'calls', calls },
        transfer,
      );
      return;
    } catch (error) {
      // Some argument cannot be cloned: send them one by one so only its call fails.
      if (transfer !== undefined || shared || trace !== null) return this.unsendable(calls[0] as number, error); // sent alone
    }
    for (let i = 0, end = 0; i < calls.length; i = end) {
      end = i + CALL_HEADER + (calls[i + 3] as number);
      try {
        this.thread.post({ t: 'calls', calls: calls.slice(i, end) });
      } catch (error) {
        const call = this.running.get(calls[i] as number);
        if (call === undefined) continue;
        this.running.settle(call);
        unsendable(call, error);
      }
    }
    this.afterSettle();
  }

  private unsendable(id: number, error: unknown): void {
    const call = this.running.get(id);
    if (call !== undefined) {
      this.running.settle(call);
      unsendable(call, error);
    }
    this.afterSettle();
  }

  /**
   * One timer per channel, armed for the earliest deadline, instead of one per call: most
   * calls finish long before their timeout, and a timer per call would cost more than the call.
   * It stays armed when the worker idles, for the calls that follow (their deadlines are
   * later): one-at-a-time calls would otherwise arm and clear a timer each.
   */
  private watchDeadline(call: Call, now: number): void {
    call.deadline = now + call.timeoutMs;
    if (this.deadlineTimer !== undefined && call.deadline >= this.deadlineAt) return;
    this.armDeadline(call.deadline);
  }

  private armDeadline(at: number): void {
    clearTimeout(this.deadlineTimer);
    this.deadlineAt = at;
    this.deadlineTimer = setTimeout(this.checkDeadlines, Math.max(0, Math.ceil(at - performance.now())));
    // A busy worker keeps the host alive on its own; a stale deadline must not.
    this.deadlineTimer.unref();
  }

  private readonly checkDeadlines = (): void => {
    this.deadlineTimer = undefined;
    const now = performance.now();
    const expired: Call[] = [];
    let next = Number.POSITIVE_INFINITY;
    for (const call of this.running.calls()) {
      if (call.timeoutMs <= 0) continue;
      if (call.deadline <= now) expired.push(call);
      else next = Math.min(next, call.deadline);
    }
    for (const call of expired) {
      if (!this.has(call)) continue;
      call.settle(callTimeout(call.keyText, call.fn, call.timeoutMs));
      this.cancel(call, 'timeout');
    }
    if (next !== Number.POSITIVE_INFINITY && this.running.size > 0) this.armDeadline(next);
    if (expired.length > 0) this.afterSettle();
  };
}

/**
 * Channels with calls in their outbox this turn of the event loop; one setImmediate sends
 * them all, once every message that arrived in the turn has been handled. With calls spread
 * over many keys a tick carries one call per key: sent at the end of each tick, every call
 * was a message and a wake-up of its worker. At the end of the turn, the calls that the
 * replies of all the workers made leave together, a message per worker: over 64 keys at
 * 1,024 in flight this took the coordinator's CPU per call from 14 to 3.2 µs. A lone call to
 * an idle worker still leaves at once.
 */
let endOfTurn: Channel[] = [];

function flushEndOfTurn(): void {
  // A send that fails settles calls, whose records may make calls: those go in a new list.
  const channels = endOfTurn;
  endOfTurn = [];
  for (const channel of channels) channel.turnEnded();
}

/** Arguments or a result that cannot be cloned fail only their own call. */
export function unsendable(call: Call, error: unknown): void {
  call.settle(dataClone(call.keyText, `the arguments or result of ${call.fn}() cannot be cloned`, error));
}

/** Appends a call as a CallBatch carries it (see CALL_HEADER); returns the batch. */
function appendCall(batch: unknown[], call: Call, deadline: number): unknown[] {
  const { args } = call;
  batch.push(call.id, call.fn, deadline, args.length);
  for (let i = 0; i < args.length; i += 1) batch.push(args[i]);
  return batch;
}

/** How many calls a reply batch answers. */
function repliesIn({ ok, err }: ReplyBatch): number {
  return ok.length / 2 + err.length / 3;
}
