import { copyArgs, moveArgs } from '../protocol/clone.js';
import type { Cell } from './cell.js';
import type { Route } from './route.js';
import type { StreamSink } from './streams.js';

/**
 * One call from the moment `call` accepts it until it settles, exactly once. The coordinator
 * decides how it settles; this object only carries the call and its clean-up.
 */
export class PendingCall {
  /** Assigned by the channel when the call is posted to a ready worker; reused once it settles (see CallSlots). */
  id = 0;
  /** Its place in its channel's posting order: the oldest running call has the smallest. */
  seq = 0;
  /** The cell holding it: waiting in it, or running on its worker. */
  cell: Cell | null = null;
  /** performance.now() by which it must answer, once posted with a timeout. */
  deadline = 0;
  onAbort: (() => void) | undefined = undefined;
  /** Armed while the call waits for a slot or a start (queueTimeoutMs). */
  queueTimer: NodeJS.Timeout | undefined = undefined;
  settled = false;
  /** performance.now() when call() accepted it: its latency counts from here. */
  readonly acceptedAt = performance.now();
  /** Made by the first host call of this call: its capabilities' `ctx.signal`, aborted when the call ends. */
  hostAbort: AbortController | null = null;
  /** Buffers to move with the arguments (`transfer`); null for a copy. */
  transfer: ArrayBuffer[] | null = null;
  /** `{ shared: true }`: SharedArrayBuffers in its arguments and result are shared with the key. */
  shared = false;
  /** Set for a `stream()` call: where its chunks go. */
  stream: StreamSink | null = null;

  constructor(
    readonly route: Route,
    readonly fn: string,
    /** Replaced by a copy when the call has to wait (see copyArgs). */
    public args: unknown[],
    readonly timeoutMs: number,
    readonly signal: AbortSignal | undefined,
    private readonly resolveFn: (value: unknown) => void,
    private readonly rejectFn: (error: Error) => void,
  ) {}

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

  get keyText(): string {
    return this.route.key.text;
  }

  /** Returns false when the call had already settled. */
  settle(error: Error | null, value?: unknown): boolean {
    if (this.settled) return false;
    this.settled = true;
    if (this.queueTimer !== undefined) this.stopWaiting();
    if (this.onAbort !== undefined) this.signal?.removeEventListener('abort', this.onAbort);
    if (this.hostAbort !== null) this.hostAbort.abort(error ?? new Error('the call has settled'));
    if (error === null) this.resolveFn(value);
    else this.rejectFn(error);
    return true;
  }
}
