/**
 * The messages of the agent's side beyond plain calls: host capabilities (worker → host and
 * back), streams (start, credit, chunks) and their bounds. Types and limits only, shared by
 * both sides like messages.ts.
 */

/** An error as it crosses the thread boundary: structured clone drops an Error's `code`. */
export interface RemoteError {
  name: string;
  message: string;
  stack?: string;
  /** The agent's own code: a short token or a number (see AGENT_CODE), never a SandpoolError code. */
  code?: string | number;
}

export const IO_LIMITS = {
  /** Characters of a capability name. */
  hostName: 128,
  /** Serialized bytes of one host call's arguments: they are decoded on the coordinator's thread. */
  hostArgsBytes: 1024 * 1024,
  /** Host calls of one worker in flight at once; the runtime refuses the next one itself. */
  hostCalls: 64,
  /** Chunks a stream may run ahead of its consumer. */
  highWaterMark: 1024,
  /** ArrayBuffers one result may move out of band. */
  transfers: 1024,
  /** Chunks of a host call's body the worker may ask for beyond those it has received. */
  hostBodyWindow: 16,
} as const;

/** The code a call to an undeclared capability rejects with in the agent. */
export const HOST_NOT_FOUND = 'ERR_SANDPOOL_HOST_NOT_FOUND';

/**
 * An agent calls a capability. `call` is the id of the agent call it was made in: the
 * coordinator gives the capability that call's signal, and refuses a call that has ended.
 * `args` is the `v8.serialize` of the argument array, sized before it is decoded.
 */
export interface HostCall {
  t: 'host';
  id: number;
  call: number;
  name: string;
  args: ArrayBuffer;
}

/**
 * The capability's outcome: a primitive value, serialized bytes, or an error with its code.
 * With `body`, the value is a head (a `fetch` response's status and headers) whose body
 * follows as HostChunks the worker asks for with HostPull, and ends with a HostEnd.
 */
export type HostDone =
  | { t: 'host-done'; id: number; ok: true; value: unknown; bytes: ArrayBuffer | null; body?: true }
  | { t: 'host-done'; id: number; ok: false; error: RemoteError };

/** The worker may receive `n` more chunks of host call `id`'s body (at most hostBodyWindow ahead of what it has). */
export interface HostPull {
  t: 'host-pull';
  id: number;
  n: number;
}

/**
 * The agent gave up on host call `id` (its `fetch` signal fired, or it cancelled the body):
 * the host stops the capability, or closes the body (and the connection behind it).
 */
export interface HostCancel {
  t: 'host-cancel';
  id: number;
}

/** One chunk of a host call's body, moved. */
export interface HostChunk {
  t: 'host-chunk';
  id: number;
  bytes: ArrayBuffer;
}

/** A host call's body has ended: at its end (`error` null), or failed. */
export interface HostEnd {
  t: 'host-end';
  id: number;
  error: RemoteError | null;
}

/**
 * Starts a stream call: like a call in a batch, plus the chunks the worker may send before
 * it hears more credit. Its end is an ordinary reply (`done` ok undefined, or an error).
 */
export interface StreamStart {
  t: 'stream';
  id: number;
  fn: string;
  args: unknown[];
  deadline: number;
  credit: number;
  /** A traced stream: its span's W3C traceparent, the agent's `sandpool.traceparent`. */
  trace?: string;
}

/** The consumer took `n` more chunks: the worker may send that many more. */
export interface StreamCredit {
  t: 'credit';
  id: number;
  n: number;
}

/** One chunk: a primitive in `value`, anything else as serialized bytes (see SerializedResult). */
export interface StreamChunk {
  t: 'chunk';
  id: number;
  value: unknown;
  bytes: ArrayBuffer | null;
  /** As in SerializedResult: buffers moved with `sandpool.transfer`. */
  moved?: ArrayBuffer[];
}
