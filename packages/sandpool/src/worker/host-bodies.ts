/**
 * The agent's side of a host call's body (a `fetch` response's): a ReadableStream that asks
 * the host for chunks as the agent reads, a few ahead, never more than the host's window.
 * Cancelling it, or the agent's `fetch` signal firing, tells the host to let the body go; the
 * host ends it with an error when the agent call that made it ends.
 */
import { type HostEnd, IO_LIMITS, type RemoteError } from '../protocol/agent-io.js';
import type { FromWorker } from '../protocol/messages.js';

type Post = (message: FromWorker) => void;

/** Chunks read ahead of the agent. */
const READ_AHEAD = 4;

interface Open {
  readonly controller: ReadableStreamDefaultController<Uint8Array>;
  /** Chunks asked for and not received yet. */
  asked: number;
  /** The pull waiting for the next chunk (or the end). */
  wake: (() => void) | null;
  readonly signal: AbortSignal | null;
  readonly onAbort: () => void;
}

export class HostBodyStreams {
  private readonly open = new Map<number, Open>();

  constructor(
    private readonly post: Post,
    private readonly rebuild: (error: RemoteError) => Error,
  ) {}

  /** Bodies open: they count toward the host calls a worker may have in flight. */
  get size(): number {
    return this.open.size;
  }

  /** The body of host call `id`, as a stream the agent reads; `signal` (the agent's own) cancels it. */
  stream(id: number, signal: AbortSignal | null): ReadableStream<Uint8Array> {
    return new ReadableStream<Uint8Array>(
      {
        start: (controller) => {
          const onAbort = (): void => {
            if (!this.drop(id)) return;
            controller.error(signal?.reason);
            this.post({ t: 'host-cancel', id });
          };
          this.open.set(id, { controller, asked: 0, wake: null, signal, onAbort });
          signal?.addEventListener('abort', onAbort, { once: true });
        },
        pull: (controller) => {
          const entry = this.open.get(id);
          if (entry === undefined) return;
          const wanted = Math.min(Math.max(controller.desiredSize ?? 1, 1), IO_LIMITS.hostBodyWindow);
          if (entry.asked < wanted) {
            this.post({ t: 'host-pull', id, n: wanted - entry.asked });
            entry.asked = wanted;
          }
          return new Promise<void>((resolve) => {
            entry.wake = resolve;
          });
        },
        cancel: () => {
          if (this.drop(id)) this.post({ t: 'host-cancel', id });
        },
      },
      { highWaterMark: READ_AHEAD },
    );
  }

  /** Lets the host know a body will never be read (a response that has none). */
  discard(id: number): void {
    this.post({ t: 'host-cancel', id });
  }

  chunk(id: number, bytes: ArrayBuffer): void {
    const entry = this.open.get(id);
    if (entry === undefined) return; // cancelled meanwhile
    entry.asked -= 1;
    entry.controller.enqueue(new Uint8Array(bytes));
    this.wake(entry);
  }

  end({ id, error }: HostEnd): void {
    const entry = this.open.get(id);
    if (entry === undefined || !this.drop(id)) return;
    if (error === null) entry.controller.close();
    else entry.controller.error(this.rebuild(error));
    this.wake(entry);
  }

  private wake(entry: Open): void {
    const wake = entry.wake;
    entry.wake = null;
    wake?.();
  }

  /** Forgets a body; false when it was gone already. */
  private drop(id: number): boolean {
    const entry = this.open.get(id);
    if (entry === undefined) return false;
    this.open.delete(id);
    entry.signal?.removeEventListener('abort', entry.onAbort);
    return true;
  }
}
