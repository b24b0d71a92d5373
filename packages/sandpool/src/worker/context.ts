/**
 * The agent's view of the call it is running: `sandpool.signal` and `sandpool.deadline`
 * follow the call through its awaits (AsyncLocalStorage). The signal is made only when an
 * agent asks for it, so calls that never look cost no AbortController.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import type { CancelReason } from '../protocol/messages.js';

const MESSAGES: Record<CancelReason, [string, string]> = {
  timeout: ['the call outlived its timeout', 'TimeoutError'],
  abort: ['the caller aborted the call', 'AbortError'],
  close: ['the pool is closing', 'AbortError'],
};

export class CallContext {
  private controller: AbortController | null = null;
  private reason: CancelReason | null = null;
  /** Its outcome has been sent: a host call made from what it left behind (a timer) is refused. */
  ended = false;

  constructor(
    /** The coordinator's id of the call, which host calls made in it carry. */
    readonly id: number,
    /** Epoch ms by which the call must settle, or null. */
    readonly deadline: number | null,
    /** The W3C traceparent of the call's span in the host, or null when it has none. */
    readonly traceparent: string | null = null,
  ) {}

  get signal(): AbortSignal {
    if (this.controller === null) {
      this.controller = new AbortController();
      if (this.reason !== null) this.controller.abort(reasonError(this.reason));
    }
    return this.controller.signal;
  }

  cancel(reason: CancelReason): void {
    if (this.reason !== null) return;
    this.reason = reason;
    this.controller?.abort(reasonError(reason));
  }
}

function reasonError(reason: CancelReason): DOMException {
  const [message, name] = MESSAGES[reason];
  return new DOMException(message, name);
}

const storage = new AsyncLocalStorage<CallContext>();
/** Outside any call (the module's top level, a timer left behind) the signal never fires. */
const NEVER = new AbortController().signal;

/** Runs `fn(a, b)` as the call `context`; no closure per call on the hot path. */
export function runInCall<A, B, R>(context: CallContext, fn: (a: A, b: B) => R, a: A, b: B): R {
  return storage.run(context, fn, a, b);
}

export function currentCall(): CallContext | undefined {
  return storage.getStore();
}

export function currentSignal(): AbortSignal {
  return storage.getStore()?.signal ?? NEVER;
}
