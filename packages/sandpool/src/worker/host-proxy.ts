/**
 * `sandpool.host`: the agent's way to the capabilities the pool declared. Each property is a
 * function that sends a host call on the private port and waits for its answer; the
 * coordinator decides what exists. Refusals the runtime can make itself (outside a call, a
 * name or arguments too large, too many in flight) never leave the worker.
 */
import v8 from 'node:v8';
import { HOST_NOT_FOUND, type HostChunk, type HostDone, type HostEnd, IO_LIMITS } from '../protocol/agent-io.js';
import type { FromWorker, RemoteError } from '../protocol/messages.js';
import { exceedsSize } from '../protocol/size.js';
import { currentCall } from './context.js';
import { fetchRequest, hasBody, toResponse } from './fetch-client.js';
import { HostBodyStreams } from './host-bodies.js';

/** Taken before any agent code: see worker/result.ts. */
const { deserialize, serialize } = v8;

type Post = (message: FromWorker, transfer?: ArrayBuffer[]) => void;
type HostFunction = (...args: unknown[]) => Promise<unknown>;

interface Waiting {
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  /** The agent's own signal (a `fetch` init's): it rejects the call at once, and cancels it on the host. */
  readonly signal: AbortSignal | null;
  readonly onAbort: (() => void) | null;
  /** The agent has its answer already (its signal fired): the host's only frees the slot. */
  answered: boolean;
}

export class HostProxy {
  private nextId = 0;
  /** Host calls sent and not answered: their count is what the coordinator bounds. */
  private readonly waiting = new Map<number, Waiting>();
  /** Bodies of answers being read: they count with the calls in flight, as the coordinator counts them. */
  private readonly bodies: HostBodyStreams;
  readonly api: Readonly<Record<string, HostFunction>>;

  constructor(private readonly post: Post) {
    this.bodies = new HostBodyStreams(post, rebuild);
    this.api = new Proxy(Object.freeze(Object.create(null)) as Record<string, HostFunction>, {
      // `then` stays undefined so `await sandpool.host` does not call a capability named then.
      get: (_target, name) =>
        typeof name === 'string' && name !== 'then' ? (...args: unknown[]) => this.call(name, args) : undefined,
      set: () => false,
      defineProperty: () => false,
      deleteProperty: () => false,
    });
  }

  answer(message: HostDone): void {
    const { id } = message;
    const waiting = this.waiting.get(id);
    if (waiting === undefined) return;
    this.waiting.delete(id);
    if (waiting.onAbort !== null) waiting.signal?.removeEventListener('abort', waiting.onAbort);
    const body = message.ok && message.body === true;
    if (waiting.answered) {
      if (body) this.bodies.discard(id);
      return;
    }
    if (!message.ok) {
      waiting.reject(rebuild(message.error));
      return;
    }
    try {
      const value = message.bytes === null ? message.value : deserialize(new Uint8Array(message.bytes));
      if (!body) return waiting.resolve(value);
      if (!hasBody(value)) this.bodies.discard(id);
      waiting.resolve(toResponse(value, hasBody(value) ? this.bodies.stream(id, waiting.signal) : null));
    } catch (error) {
      if (body) this.bodies.discard(id);
      waiting.reject(failure('ERR_SANDPOOL_DATA_CLONE', `the capability's result cannot be rebuilt: ${String(error)}`));
    }
  }

  chunk(message: HostChunk): void {
    this.bodies.chunk(message.id, message.bytes);
  }

  end(message: HostEnd): void {
    this.bodies.end(message);
  }

  private call(name: string, given: unknown[]): Promise<unknown> {
    const context = currentCall();
    if (context === undefined || context.ended) {
      return Promise.reject(
        failure(
          'ERR_SANDPOOL_ABORTED',
          `sandpool.host.${name.slice(0, 64)}() was called outside a running agent call (at the module's top level, or from a timer or promise that outlived its call)`,
        ),
      );
    }
    if (name.length > IO_LIMITS.hostName) {
      return Promise.reject(failure(HOST_NOT_FOUND, `no host capability ${JSON.stringify(name.slice(0, 64))}…`));
    }
    let args = given;
    let signal: AbortSignal | null = null;
    if (name === 'fetch') {
      ({ args, signal } = fetchRequest(given));
      if (signal?.aborted === true) return Promise.reject(signal.reason);
    }
    if (this.waiting.size + this.bodies.size >= IO_LIMITS.hostCalls) {
      return Promise.reject(
        failure('ERR_SANDPOOL_QUEUE_FULL', `${IO_LIMITS.hostCalls} host calls are in flight already in this worker`),
      );
    }
    // Sized before anything walks them: a sparse array of length 2^32−1 serializes to a few
    // bytes, and the capability on the coordinator's thread would walk every slot.
    if (exceedsSize(args, IO_LIMITS.hostArgsBytes)) {
      return Promise.reject(
        failure(
          'ERR_SANDPOOL_DATA_CLONE',
          `the arguments of sandpool.host.${name}() are larger than ${IO_LIMITS.hostArgsBytes} bytes (an array counts every slot)`,
        ),
      );
    }
    let bytes: ArrayBuffer;
    try {
      const buffer = serialize(args);
      if (buffer.byteLength > IO_LIMITS.hostArgsBytes) {
        return Promise.reject(
          failure(
            'ERR_SANDPOOL_DATA_CLONE',
            `the arguments of sandpool.host.${name}() serialize to ${buffer.byteLength} bytes, above ${IO_LIMITS.hostArgsBytes}`,
          ),
        );
      }
      bytes = buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength) as ArrayBuffer;
    } catch (error) {
      return Promise.reject(
        failure(
          'ERR_SANDPOOL_DATA_CLONE',
          `the arguments of sandpool.host.${name}() cannot be cloned: ${String(error)}`,
        ),
      );
    }
    const id = ++this.nextId;
    return new Promise((resolve, reject) => {
      const onAbort =
        signal === null
          ? null
          : (): void => {
              const waiting = this.waiting.get(id);
              if (waiting === undefined || waiting.answered) return;
              waiting.answered = true;
              reject(signal.reason);
              this.post({ t: 'host-cancel', id });
            };
      this.waiting.set(id, { resolve, reject, signal, onAbort, answered: false });
      this.post({ t: 'host', id, call: context.id, name, args: bytes }, [bytes]);
      if (onAbort !== null) signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}

function failure(code: string, message: string): Error {
  const error = new Error(message) as Error & { code: string };
  error.code = code;
  return error;
}

function rebuild(remote: RemoteError): Error {
  const error = new Error(remote.message) as Error & { code?: string | number };
  error.name = remote.name;
  if (remote.code !== undefined) error.code = remote.code;
  return error;
}
