/**
 * `pool.stream()`: the consumer's side of a stream call. A stream is a call the worker
 * answers with chunks before its reply, so it holds its worker busy (never idle, never
 * evicted) until it ends, and fails with the codes a call fails with. Credit-based: the
 * worker sends at most `highWaterMark` chunks beyond what the consumer has taken.
 */
import { chunkTimeout, invalidOptions, type SandpoolError, undelivered } from '../../errors.js';
import { issuesOf } from '../../issues.js';
import type { AgentKey } from '../../key.js';
import { type StreamOptions, StreamOptionsSchema } from '../../options.js';
import type { Call, StreamSink } from '../cells/call.js';

/** Where a stream's call goes: the pool's dispatch. */
export interface StreamDispatch {
  /** Opens the stream's call: admitted like a call, it throws its refusal. */
  openStream(
    key: AgentKey | string,
    fn: string,
    args: readonly unknown[],
    options: { signal?: AbortSignal; timeoutMs?: number; context?: unknown },
    sink: StreamSink,
    resolve: (value: unknown) => void,
    reject: (error: Error) => void,
  ): Call;
  /** A call refused before admission: its span and record, as any refused call has. */
  refuse(key: AgentKey | string, fn: string, error: SandpoolError): void;
}

type State = 'unstarted' | 'open' | 'ended' | 'failed' | 'closed';

const DONE: IteratorResult<never, undefined> = Object.freeze({ done: true, value: undefined });

export class PoolStream<T> implements AsyncIterableIterator<T, undefined>, StreamSink {
  readonly highWaterMark: number;
  private state: State = 'unstarted';
  private failure: Error | null = null;
  private readonly chunks: unknown[] = [];
  private waiter: { resolve: (step: IteratorResult<T, undefined>) => void; reject: (error: Error) => void } | null =
    null;
  private call: Call | null = null;
  /** Chunks received and chunks the consumer took: their difference never exceeds the high-water mark. */
  private received = 0;
  private taken = 0;
  private unsentCredit = 0;
  private chunkTimer: NodeJS.Timeout | undefined = undefined;
  private readonly chunkTimeoutMs: number;
  private readonly callOptions: { signal?: AbortSignal; timeoutMs?: number; context?: unknown } = {};
  /** Options the schema refused: the stream's call is refused with it when it would start. */
  private readonly invalid: SandpoolError | null = null;

  constructor(
    private readonly dispatch: StreamDispatch,
    private readonly keyInput: AgentKey | string,
    private readonly fn: string,
    private readonly args: readonly unknown[],
    options: StreamOptions | undefined,
    /**
     * What the consumer makes of each chunk (the server's JSON), as the chunk arrives: one it
     * cannot deliver fails the stream's call, so the consumer and the record see one outcome.
     */
    private readonly deliver: ((chunk: unknown) => unknown) | null = null,
  ) {
    const parsed = StreamOptionsSchema.safeParse(options ?? {});
    if (!parsed.success) {
      this.highWaterMark = 1;
      this.chunkTimeoutMs = 0;
      this.invalid = invalidOptions('stream options', issuesOf(parsed.error));
      return;
    }
    const { highWaterMark, chunkTimeoutMs, timeoutMs, signal, context } = parsed.data;
    this.highWaterMark = highWaterMark;
    this.chunkTimeoutMs = chunkTimeoutMs;
    if (signal !== undefined) this.callOptions.signal = signal;
    if (timeoutMs !== undefined) this.callOptions.timeoutMs = timeoutMs;
    if (context !== undefined) this.callOptions.context = context;
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  next(): Promise<IteratorResult<T, undefined>> {
    if (this.state === 'unstarted') this.start();
    if (this.chunks.length > 0) return Promise.resolve({ done: false, value: this.take() });
    if (this.state === 'failed') {
      const failure = this.failure as Error;
      this.state = 'closed';
      return Promise.reject(failure);
    }
    if (this.state !== 'open') return Promise.resolve(DONE);
    if (this.waiter !== null) return Promise.reject(new Error('sandpool: next() called before the last one settled'));
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
      if (this.chunkTimeoutMs > 0) this.chunkTimer = setTimeout(this.chunkTimedOut, this.chunkTimeoutMs);
    });
  }

  /** The consumer is done (`break`): the generator in the worker is returned and its signal fires. */
  return(): Promise<IteratorResult<T, undefined>> {
    this.close();
    return Promise.resolve(DONE);
  }

  throw(error?: unknown): Promise<IteratorResult<T, undefined>> {
    this.close();
    return Promise.reject(error);
  }

  // ---- the sink -------------------------------------------------------------------------

  push(chunk: unknown): void {
    if (this.state !== 'open') return;
    this.received += 1;
    if (this.received - this.taken > this.highWaterMark) {
      this.call?.site?.violate('a chunk beyond the credit it was given');
      return;
    }
    let value = chunk;
    if (this.deliver !== null) {
      try {
        value = this.deliver(chunk);
      } catch (thrown) {
        this.fail(undelivered(this.call?.keyText ?? '', 'a chunk', thrown));
        return;
      }
    }
    const waiter = this.waiter;
    if (waiter === null) {
      this.chunks.push(value);
      return;
    }
    this.waiter = null;
    clearTimeout(this.chunkTimer);
    this.taken += 1;
    this.credit();
    waiter.resolve({ done: false, value: value as T });
  }

  fail(error: SandpoolError): void {
    const call = this.call;
    if (call !== null && !call.settled) call.interrupt(error, 'abort');
    else this.failed(error);
  }

  // ---- internals --------------------------------------------------------------------------

  /** The call is made here, at the first `next()`: a refusal of any kind surfaces, and is recorded, once. */
  private start(): void {
    if (this.invalid !== null) {
      this.state = 'failed';
      this.failure = this.invalid;
      this.dispatch.refuse(this.keyInput, this.fn, this.invalid);
      return;
    }
    this.state = 'open';
    try {
      this.call = this.dispatch.openStream(
        this.keyInput,
        this.fn,
        this.args,
        this.callOptions,
        this,
        () => this.ended(),
        (error) => this.failed(error),
      );
    } catch (error) {
      this.failed(error instanceof Error ? error : new Error(String(error)));
    }
  }

  private take(): T {
    const value = this.chunks.shift() as T;
    this.taken += 1;
    this.credit();
    return value;
  }

  /** Credit leaves once per tick however many chunks the consumer took in it. */
  private credit(): void {
    if (this.unsentCredit === 0) queueMicrotask(this.sendCredit);
    this.unsentCredit += 1;
  }

  private readonly sendCredit = (): void => {
    const n = this.unsentCredit;
    this.unsentCredit = 0;
    const call = this.call;
    if (call !== null && this.state === 'open') call.site?.credit(call, n);
  };

  private ended(): void {
    if (this.state !== 'open') return;
    this.state = 'ended';
    this.settleWaiter(null);
  }

  private failed(error: Error): void {
    if (this.state !== 'open' && this.state !== 'unstarted') return;
    // Chunks that arrived before the failure are still the consumer's; the error follows them.
    this.state = 'failed';
    this.failure = error;
    this.settleWaiter(error);
  }

  private settleWaiter(error: Error | null): void {
    const waiter = this.waiter;
    if (waiter === null) return;
    this.waiter = null;
    clearTimeout(this.chunkTimer);
    if (error === null) waiter.resolve(DONE);
    else {
      this.state = 'closed';
      waiter.reject(error);
    }
  }

  private close(): void {
    const call = this.call;
    const wasOpen = this.state === 'open';
    this.state = 'closed';
    this.chunks.length = 0;
    this.settleWaiter(null);
    if (wasOpen && call !== null && !call.settled) call.interrupt(null, 'abort');
  }

  private readonly chunkTimedOut = (): void => {
    this.chunkTimer = undefined;
    const call = this.call;
    const key = call?.keyText ?? '';
    const error = chunkTimeout(key, this.fn, this.chunkTimeoutMs);
    if (call !== null && !call.settled) call.interrupt(error, 'timeout');
    else this.failed(error);
  };
}
