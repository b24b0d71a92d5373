/**
 * The worker's side of a stream: pulls the agent's async iterable only while it has credit,
 * so a slow consumer pauses the generator (at its `yield`) rather than filling memory. A
 * cancel (the consumer broke off, aborted, or timed out) returns the iterator, which runs
 * the generator's `finally`.
 */
import type { Outcome } from '../protocol/messages.js';

export class StreamPump {
  private wake: (() => void) | null = null;
  private cancelled = false;

  constructor(
    private credit: number,
    /** Sends one chunk; an outcome when it could not be sent (it ends the stream with it). */
    private readonly send: (value: unknown) => Outcome | null,
  ) {}

  addCredit(n: number): void {
    this.credit += n;
    this.resume();
  }

  cancel(): void {
    this.cancelled = true;
    this.resume();
  }

  /** Sends the iterable's values, then ends; errors thrown by the agent become its outcome. */
  async run(source: AsyncIterable<unknown>, agentError: (error: unknown) => Outcome): Promise<Outcome> {
    let iterator: AsyncIterator<unknown> | undefined;
    try {
      iterator = source[Symbol.asyncIterator]();
      for (;;) {
        while (this.credit <= 0 && !this.cancelled) await new Promise<void>((resolve) => (this.wake = resolve));
        if (this.cancelled) break;
        const step = await iterator.next();
        if (step.done === true) return { ok: true, value: undefined };
        if (this.cancelled) break; // the consumer left while the chunk was being made
        this.credit -= 1;
        const failed = this.send(step.value);
        if (failed !== null) {
          await iterator.return?.();
          return failed;
        }
      }
      await iterator.return?.();
      return { ok: true, value: undefined };
    } catch (error) {
      return agentError(error);
    }
  }

  private resume(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }
}

/** An async generator's result, a ReadableStream, or anything else iterable with for await. */
export function isStreamSource(value: unknown): value is AsyncIterable<unknown> {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as { [Symbol.asyncIterator]?: unknown })[Symbol.asyncIterator] === 'function'
  );
}

/** A stream returned to `call()` is never read: let its generator or source release what it holds. */
export function closeQuietly(source: AsyncIterable<unknown>): void {
  try {
    const iterator = source[Symbol.asyncIterator]();
    void iterator.return?.()?.catch(() => {});
  } catch {
    // Nothing to release.
  }
}
