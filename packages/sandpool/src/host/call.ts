import type { Cell } from './cell.js';
import type { Route } from './route.js';

/**
 * One call from the moment `call` accepts it until it settles, exactly once. The coordinator
 * decides how it settles; this object only carries the call and its clean-up.
 */
export class PendingCall {
  /** Assigned by the channel when the call is posted to a ready worker. */
  id = 0;
  /** The cell holding it: waiting in it, or running on its worker. */
  cell: Cell | null = null;
  /** performance.now() by which it must answer, once posted with a timeout. */
  deadline = 0;
  onAbort: (() => void) | undefined = undefined;
  /** Armed while the call waits for a slot or a start (queueTimeoutMs). */
  queueTimer: NodeJS.Timeout | undefined = undefined;
  settled = false;

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

  get keyText(): string {
    return this.route.key.text;
  }

  /** Returns false when the call had already settled. */
  settle(error: Error | null, value?: unknown): boolean {
    if (this.settled) return false;
    this.settled = true;
    this.route.pending.delete(this);
    this.stopWaiting();
    if (this.onAbort !== undefined) this.signal?.removeEventListener('abort', this.onAbort);
    if (error === null) this.resolveFn(value);
    else this.rejectFn(error);
    return true;
  }
}
