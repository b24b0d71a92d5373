/**
 * Bodies that follow a host call's answer (a `fetch` response's): read on the host only as
 * fast as the worker asks for chunks, so a slow agent holds the connection back rather than
 * filling the coordinator's memory. A body ends at its last chunk, when the agent cancels it,
 * or when the agent call that made it ends: then the host side lets its source go (for
 * `fetch`, the connection is closed) and the worker hears why.
 */
import { IO_LIMITS, type RemoteError } from '../../protocol/agent-io.js';
import type { AgentWorker } from '../workers/agent-worker.js';
import { hostError } from './host-error.js';

/** What a capability returns to answer with a head now and stream a body after it. */
export class HostStream {
  constructor(
    readonly head: unknown,
    readonly body: AsyncIterable<Uint8Array>,
  ) {}
}

interface Body {
  readonly iterator: AsyncIterator<Uint8Array>;
  /** Counts bytes sent; the milliseconds to wait before the next chunk, for the key's byte rate. */
  readonly sent: (bytes: number) => number;
  /** Chunks the worker asked for and has not been sent. */
  credit: number;
  /** A read of the source is in progress (at most one at a time). */
  reading: boolean;
  readonly signal: AbortSignal;
  readonly onAbort: () => void;
}

export class HostBodies {
  private readonly open = new Map<number, Body>();

  constructor(
    private readonly thread: AgentWorker,
    /** The error a body of an agent call that has ended fails with. */
    private readonly ended: () => RemoteError,
  ) {}

  get size(): number {
    return this.open.size;
  }

  /** Starts holding host call `id`'s body; nothing is read before the worker asks. */
  start(id: number, body: AsyncIterable<Uint8Array>, signal: AbortSignal, sent: (bytes: number) => number): void {
    const iterator = body[Symbol.asyncIterator]();
    const onAbort = (): void => this.finish(id, this.ended());
    const entry: Body = { iterator, sent, credit: 0, reading: false, signal, onAbort };
    this.open.set(id, entry);
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  }

  has(id: number): boolean {
    return this.open.has(id);
  }

  /** The worker asks for `n` more chunks; asking past the window is a forgery. */
  pull(id: number, n: number): void {
    const body = this.open.get(id);
    if (body === undefined) return; // ended meanwhile: the worker hears it from the end message
    body.credit += n;
    if (body.credit > IO_LIMITS.hostBodyWindow) return this.thread.violate('credit for a body past its window');
    void this.pump(id, body);
  }

  /** The agent cancelled the body: it ends without a word to the worker. */
  cancel(id: number): void {
    this.finish(id, null, false);
  }

  /** Every body ends (the worker is gone). */
  closeAll(): void {
    for (const id of [...this.open.keys()]) this.finish(id, null, false);
  }

  private async pump(id: number, body: Body): Promise<void> {
    if (body.reading) return;
    body.reading = true;
    try {
      while (body.credit > 0 && this.open.get(id) === body) {
        const step = await body.iterator.next();
        if (this.open.get(id) !== body) return;
        if (step.done === true) return this.finish(id, null);
        body.credit -= 1;
        const bytes = ownBuffer(step.value);
        const wait = body.sent(bytes.byteLength);
        if (!this.thread.terminating) this.thread.post({ t: 'host-chunk', id, bytes }, [bytes]);
        // Past the key's byte rate the body waits, and the connection with it.
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait).unref());
      }
    } catch (error) {
      if (this.open.get(id) === body) this.finish(id, hostError(error));
    } finally {
      body.reading = false;
    }
  }

  /** Ends a body once: its source is let go, and the worker is told (`tell`) how it ended. */
  private finish(id: number, error: RemoteError | null, tell = true): void {
    const body = this.open.get(id);
    if (body === undefined) return;
    this.open.delete(id);
    body.signal.removeEventListener('abort', body.onAbort);
    void body.iterator.return?.()?.catch(() => {});
    if (tell && !this.thread.terminating) this.thread.post({ t: 'host-end', id, error });
  }
}

/** A chunk's bytes in an ArrayBuffer of their own, which can be moved to the worker. */
function ownBuffer(chunk: Uint8Array): ArrayBuffer {
  const { buffer, byteOffset, byteLength } = chunk;
  if (buffer instanceof ArrayBuffer && byteOffset === 0 && byteLength === buffer.byteLength) return buffer;
  return chunk.slice().buffer as ArrayBuffer;
}
