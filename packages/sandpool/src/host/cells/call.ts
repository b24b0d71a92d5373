import type { AsyncResource } from 'node:async_hooks';
import { type SandpoolError, undelivered } from '../../errors.js';
import type { ResolvedKey } from '../../key.js';
import { copyArgs, moveArgs } from '../../protocol/clone.js';
import type { CallObservation } from '../telemetry/observation.js';

/** Where a stream call's chunks go (pool.stream()'s consumer). */
export interface StreamSink {
  readonly highWaterMark: number;
  push(value: unknown): void;
  fail(error: SandpoolError): void;
}

/** What a call tells, once, when it settles: its key's route, which keeps the key's totals. */
export interface CallBook {
  readonly key: ResolvedKey;
  settled(call: Call, failed: boolean): void;
}

/** Where a call is held now: waiting in a cell that has no worker yet, or running on its worker. */
export interface CallSite {
  /** Takes back a call answered early: a waiting call leaves; a running one's signal fires in the agent. */
  withdraw(call: Call, why: 'abort' | 'timeout'): void;
  /** Its worker's CPU share of the calls it runs, now (see CpuShare); NaN with no worker. */
  cpuShare(): number;
  /** The digest of the snapshot its worker runs; null for live code. */
  readonly digest: string | null;
  /** A stream's consumer took `n` chunks: the worker may send as many more. */
  credit(call: Call, n: number): void;
  /** The worker broke the protocol on this call: it ends, with `protocol`. */
  violate(problem: string): void;
}

/**
 * One call from the moment `call()` accepts it until it settles, exactly once. It carries its
 * own completion: whoever answers it (its channel with the worker's reply, a timer, its
 * worker's death) settles it here, and it tells its route; nothing climbs back up.
 */
export class Call {
  /** Assigned by the channel when the call is posted to a ready worker; reused once it settles (see CallSlots). */
  id = 0;
  /** Its place in its channel's posting order: the oldest running call has the smallest. */
  seq = 0;
  /** Where it is held: waiting in a cell, or running on that cell's worker. */
  site: CallSite | null = null;
  /** performance.now() by which it must answer, once posted with a timeout. */
  deadline = 0;
  /** Armed while the call waits for a slot or a start (queueTimeoutMs). */
  queueTimer: NodeJS.Timeout | undefined = undefined;
  settled = false;
  /** performance.now() when call() accepted it: its latency counts from here. */
  readonly acceptedAt = performance.now();

  /** Buffers to move with the arguments (`transfer`); null for a copy. */
  transfer: ArrayBuffer[] | null = null;
  /** `{ shared: true }`: SharedArrayBuffers in its arguments and result are shared with the key. */
  shared = false;
  /** Set for a `stream()` call: where its chunks go. */
  stream: StreamSink | null = null;
  /** The caller's `context`, serialized (each capability call gets its own copy); null for none. */
  context: Uint8Array | null = null;
  /** The caller's async context, which its capabilities run in; null where no capability can run. */
  scope: AsyncResource | null = null;
  /** It never reached a worker that then ended, and was sent to the key's next one (which happens once). */
  resent = false;
  /** Its span and record, when a tracer provider is registered or the pool has `call` listeners; null otherwise. */
  observed: CallObservation | null = null;
  /**
   * What its caller makes of its value before it counts as answered (the server's JSON): a
   * value it cannot deliver fails the call, so the caller, the key's totals and the record
   * all see the same outcome. Null for a plain call.
   */
  deliver: ((value: unknown) => unknown) | null = null;
  private onAbort: (() => void) | undefined = undefined;
  /** Made by the first host call of this call: its capabilities' `ctx.signal`, aborted when the call ends. */
  private hostAbort: AbortController | null = null;

  constructor(
    readonly book: CallBook,
    readonly fn: string,
    /** Replaced by a copy when the call has to wait (see copyArgs). */
    public args: unknown[],
    readonly timeoutMs: number,
    readonly signal: AbortSignal | undefined,
    private readonly resolveFn: (value: unknown) => void,
    private readonly rejectFn: (error: Error) => void,
  ) {}

  get keyText(): string {
    return this.book.key.text;
  }

  /** Its caller's signal interrupts it with `error` (made when it fires). */
  listen(signal: AbortSignal, error: () => SandpoolError): void {
    this.onAbort = () => this.interrupt(error(), 'abort');
    signal.addEventListener('abort', this.onAbort, { once: true });
  }

  /** The call reached its worker, or settled: it no longer waits. */
  stopWaiting(): void {
    clearTimeout(this.queueTimer);
    this.queueTimer = undefined;
  }

  /** The arguments as they are now, for a call that must wait (see copyArgs); throws DataCloneError. */
  copyArgs(): void {
    if (this.transfer === null) {
      this.args = copyArgs(this.args);
      return;
    }
    const moved = moveArgs(this.args, this.transfer);
    this.args = moved.args;
    this.transfer = moved.transfer;
  }

  /** The signal of the host calls it makes: aborted when it settles. */
  hostSignal(): AbortSignal {
    this.hostAbort ??= new AbortController();
    return this.hostAbort.signal;
  }

  /** Answers the caller; returns false when the call had already settled. */
  settle(failure: SandpoolError | null, value?: unknown): boolean {
    if (this.settled) return false;
    this.settled = true;
    let error = failure;
    if (error === null && this.deliver !== null) {
      try {
        value = this.deliver(value);
      } catch (thrown) {
        error = undelivered(this.keyText, 'its result', thrown);
      }
    }
    if (this.queueTimer !== undefined) this.stopWaiting();
    if (this.onAbort !== undefined) this.signal?.removeEventListener('abort', this.onAbort);
    if (this.hostAbort !== null) this.hostAbort.abort(error ?? new Error('the call has settled'));
    if (error === null) this.resolveFn(value);
    else this.rejectFn(error);
    this.book.settled(this, error !== null);
    if (this.observed !== null) this.observed.end(this, error);
    return true;
  }

  /**
   * Answers the caller now (a stream's consumer that left gets `error` null) and takes the
   * call back from where it is held: a waiting call leaves its cell; a running one has its
   * signal fired in the agent, which has abortGraceMs to stop.
   */
  interrupt(error: SandpoolError | null, why: 'abort' | 'timeout'): void {
    const site = this.site;
    if (!this.settle(error)) return;
    site?.withdraw(this, why);
  }
}
