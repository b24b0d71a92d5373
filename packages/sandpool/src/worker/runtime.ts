/**
 * The worker's call runtime: looks up agent functions, runs them, and sends their outcomes
 * back in batches. It sends only what the coordinator's checks accept (bounded errors,
 * primitives in `done`, everything else as sized bytes).
 */

import type { StreamStart } from '../protocol/agent-io.js';
import { isInline } from '../protocol/clone.js';
import {
  CALL_HEADER,
  type CancelReason,
  type FromWorker,
  LIMITS,
  type Outcome,
  type RemoteError,
} from '../protocol/messages.js';
import { toRemoteError } from '../protocol/remote-error.js';
import { CallContext, runInCall } from './context.js';
import { serializeResult } from './result.js';
import { closeQuietly, isStreamSource, StreamPump } from './stream.js';
import { takeTransfer } from './transfer.js';

type AgentFunction = (...args: unknown[]) => unknown;
export type Post = (message: FromWorker, transfer?: ArrayBuffer[]) => void;

/** An agent function with the object it belongs to, so `this` works as in the agent's own calls. */
interface Bound {
  fn: AgentFunction;
  self: Record<string, unknown>;
}

/** Names listed in an EXPORT_NOT_FOUND message at most. */
const LISTED_EXPORTS = 20;

export class Runtime {
  private exportsOf: Record<string, unknown> | null = null;
  /** CommonJS agents (.cjs, or .js under a CommonJS package) expose `module.exports` as the default export. */
  private fallback: Record<string, unknown> | null = null;
  private readonly functions = new Map<string, Bound>();
  /** Calls that went async, by id: a cancel reaches them here. */
  private readonly running = new Map<number, CallContext>();
  /** Stream calls by id: credit and cancels reach their pumps here. */
  private readonly streams = new Map<number, StreamPump>();
  /** Running calls made with `{ shared: true }`: their results may share memory with the caller. */
  private readonly sharing = new Set<number>();
  private okReplies: unknown[] = [];
  private errReplies: unknown[] = [];
  /**
   * A calls message is being run: the replies of its synchronous calls leave when it ends,
   * with no microtask. Each message is its own tick, so a microtask batched no more, and with
   * calls spread over many keys a message carries one call: its microtask (an async resource
   * each, on Node 20) was a tenth of the worker's cost of the call.
   */
  private inMessage = false;

  constructor(private readonly post: Post) {}

  /** Whether a call or stream is still running after its message was handled. */
  get busy(): boolean {
    return this.running.size > 0 || this.streams.size > 0;
  }

  setModule(namespace: Record<string, unknown>): void {
    this.exportsOf = namespace;
    const def = namespace.default;
    if ((typeof def === 'object' && def !== null) || typeof def === 'function') {
      this.fallback = def as Record<string, unknown>;
    }
  }

  /**
   * `calls` is `id, fn, deadline, argc, args…` as the coordinator flattened it (CALL_HEADER);
   * `shared`: one call, made with `{ shared: true }`; `trace`: one call, with its traceparent.
   */
  onCalls(calls: unknown[], shared = false, trace: string | null = null): void {
    if (shared) this.sharing.add(calls[0] as number);
    this.inMessage = true;
    try {
      this.runCalls(calls, trace);
    } finally {
      this.inMessage = false;
      this.flush();
    }
  }

  private runCalls(calls: unknown[], trace: string | null): void {
    for (let i = 0; i < calls.length; ) {
      const id = calls[i] as number;
      const fn = calls[i + 1] as string;
      const deadline = calls[i + 2] as number;
      const start = i + CALL_HEADER;
      i = start + (calls[i + 3] as number);
      const context = new CallContext(id, deadline > 0 ? deadline : null, trace);
      const result = runInCall(context, this.runCall, fn, calls.slice(start, i));
      if (result instanceof Promise) {
        this.running.set(id, context);
        void result.then((outcome) => {
          this.running.delete(id);
          context.ended = true;
          this.reply(id, outcome);
        });
      } else {
        context.ended = true;
        this.reply(id, result);
      }
    }
  }

  /** Fires the signal of a call still running; one that settled already needs nothing. */
  cancel(id: number, why: CancelReason): void {
    this.running.get(id)?.cancel(why);
    this.streams.get(id)?.cancel();
  }

  /**
   * A stream call: the function's async iterable is pumped within the consumer's credit; a
   * plain value is its one chunk. The stream's end is an ordinary reply.
   */
  onStream({ id, fn, args, deadline, credit, trace }: StreamStart): void {
    const context = new CallContext(id, deadline > 0 ? deadline : null, trace ?? null);
    const pump = new StreamPump(credit, (value) => this.chunk(id, value));
    this.running.set(id, context);
    this.streams.set(id, pump);
    const stream = async (name: string, params: unknown[]): Promise<Outcome> => {
      const outcome = await this.run(name, params);
      if (!outcome.ok) return outcome;
      if (isStreamSource(outcome.value)) return pump.run(outcome.value, agentError);
      return this.chunk(id, outcome.value) ?? { ok: true, value: undefined };
    };
    void runInCall(context, stream, fn, args).then((outcome) => {
      this.running.delete(id);
      this.streams.delete(id);
      context.ended = true;
      this.reply(id, outcome);
    });
  }

  credit(id: number, n: number): void {
    this.streams.get(id)?.addCredit(n);
  }

  /** Sends one chunk now (its value may change after the next yield); an outcome if it cannot go. */
  private chunk(id: number, value: unknown): Outcome | null {
    if (isInline(value, LIMITS.inlineString)) {
      this.post({ t: 'chunk', id, value, bytes: null });
      return null;
    }
    const moved = takeTransfer(value);
    const serialized = serializeResult(value, moved);
    if (!serialized.ok) return { ok: false, code: 'ERR_SANDPOOL_DATA_CLONE', error: cloneError(serialized) };
    try {
      const { bytes } = serialized;
      if (moved === undefined) this.post({ t: 'chunk', id, value: undefined, bytes }, [bytes]);
      else this.post({ t: 'chunk', id, value: undefined, bytes, moved }, [bytes, ...moved]);
    } catch (cause) {
      return {
        ok: false,
        code: 'ERR_SANDPOOL_DATA_CLONE',
        error: cloneError({ reason: 'a chunk cannot be moved', cause }),
      };
    }
    return null;
  }

  /**
   * Primitive replies settled in the same tick leave together, after it (or at the end of the
   * calls message that settled them): a lone reply waits for nothing. An object result is serialized at once instead, as postMessage would clone
   * it: the agent's next call in this tick may change an object it returned.
   */
  private reply(id: number, outcome: Outcome): void {
    const shared = this.sharing.size > 0 && this.sharing.delete(id);
    if (outcome.ok && !isInline(outcome.value, LIMITS.inlineString)) {
      this.flush();
      this.replyObject(id, outcome.value, shared);
      return;
    }
    if (!this.inMessage && this.okReplies.length === 0 && this.errReplies.length === 0) queueMicrotask(this.flush);
    if (outcome.ok) this.okReplies.push(id, outcome.value);
    else this.errReplies.push(id, outcome.code, outcome.error);
    if (this.okReplies.length >= LIMITS.replyBatch * 2 || this.errReplies.length >= LIMITS.replyBatch * 3) {
      this.flush();
    }
  }

  private replyObject(id: number, value: unknown, share: boolean): void {
    if (isStreamSource(value)) {
      closeQuietly(value);
      const message = 'the function returns a stream (an async iterable): consume it with pool.stream(), not call()';
      this.reply(id, { ok: false, code: 'ERR_SANDPOOL_DATA_CLONE', error: { name: 'DataCloneError', message } });
      return;
    }
    const moved = takeTransfer(value);
    const serialized = serializeResult(value, moved, share);
    if (!serialized.ok) {
      this.reply(id, { ok: false, code: 'ERR_SANDPOOL_DATA_CLONE', error: cloneError(serialized) });
      return;
    }
    const { bytes, shared } = serialized;
    if (moved === undefined && shared === undefined) {
      this.post({ t: 'result', id, bytes }, [bytes]);
      return;
    }
    try {
      this.post(
        {
          t: 'result',
          id,
          bytes,
          ...(moved === undefined ? {} : { moved }),
          ...(shared === undefined ? {} : { shared }),
        },
        [bytes, ...(moved ?? [])],
      );
    } catch (cause) {
      // A detached buffer, Buffer's shared pool, the same buffer twice, or shared memory a
      // child process cannot send: nothing was moved.
      this.reply(id, {
        ok: false,
        code: 'ERR_SANDPOOL_DATA_CLONE',
        error: cloneError({ reason: 'the result cannot be moved', cause }),
      });
    }
  }

  private readonly flush = (): void => {
    if (this.okReplies.length === 0 && this.errReplies.length === 0) return;
    const ok = this.okReplies;
    const err = this.errReplies;
    this.okReplies = [];
    this.errReplies = [];
    this.post({ t: 'done', ok, err });
  };

  /** `run`, bound once: the hot path passes it to runInCall without a closure per call. */
  private readonly runCall = (name: string, args: unknown[]): Outcome | Promise<Outcome> => this.run(name, args);

  /** Runs one agent function; sync results stay sync so a plain function costs no extra tick. */
  private run(name: string, args: unknown[]): Outcome | Promise<Outcome> {
    const bound = this.lookup(name);
    if (bound === null) return this.missing(name);
    let value: unknown;
    try {
      value = bound.fn.apply(bound.self, args);
    } catch (error) {
      return agentError(error);
    }
    if (isThenable(value)) {
      return Promise.resolve(value).then((resolved): Outcome => ({ ok: true, value: resolved }), agentError);
    }
    return { ok: true, value };
  }

  private lookup(name: string): Bound | null {
    const cached = this.functions.get(name);
    if (cached !== undefined) return cached;
    for (const self of [this.exportsOf, this.fallback]) {
      const fn = self !== null && Object.hasOwn(self, name) ? self[name] : undefined;
      if (typeof fn !== 'function') continue;
      const bound = { fn: fn as AgentFunction, self: self as Record<string, unknown> };
      this.functions.set(name, bound);
      return bound;
    }
    return null; // misses are not cached: names come from callers
  }

  private missing(name: string): Outcome {
    const names = new Set<string>();
    for (const self of [this.exportsOf, this.fallback]) {
      if (self === null) continue;
      for (const key of Object.keys(self)) if (typeof self[key] === 'function') names.add(key);
    }
    const listed = [...names].slice(0, LISTED_EXPORTS).join(', ');
    const more = names.size > LISTED_EXPORTS ? `, and ${names.size - LISTED_EXPORTS} more` : '';
    const message =
      `the agent has no exported function ${JSON.stringify(name).slice(0, 200)}; ` +
      (names.size === 0 ? 'it exports no functions' : `its functions: ${listed}${more}`);
    return { ok: false, code: 'ERR_SANDPOOL_EXPORT_NOT_FOUND', error: { name: 'Error', message } };
  }
}

function agentError(error: unknown): Outcome {
  return { ok: false, code: 'ERR_SANDPOOL_AGENT_ERROR', error: toRemoteError(error) };
}

function cloneError(failure: { reason: string; cause?: unknown }): RemoteError {
  const cause = failure.cause === undefined ? null : toRemoteError(failure.cause);
  const error = new Error(cause === null ? failure.reason : `${failure.reason}: ${cause.message}`);
  error.name = cause?.name ?? 'DataCloneError';
  return toRemoteError(error);
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (
    (typeof value === 'object' || typeof value === 'function') &&
    value !== null &&
    typeof (value as { then?: unknown }).then === 'function'
  );
}
