import type { MessagePort } from 'node:worker_threads';
import type {
  HostCall,
  HostCancel,
  HostChunk,
  HostDone,
  HostEnd,
  HostPull,
  RemoteError,
  StreamChunk,
  StreamCredit,
  StreamStart,
} from './agent-io.js';

export type { RemoteError };

/**
 * Messages between the coordinator and a worker, on the private MessageChannel handed to the
 * worker before any agent code runs. Plain objects with a one-letter tag: they are
 * structured-cloned on every call. Both sides import this file; it holds types and limits only.
 */

/** What a call can fail with inside the worker. */
export const CALL_FAILURES = [
  'ERR_SANDPOOL_AGENT_ERROR',
  'ERR_SANDPOOL_EXPORT_NOT_FOUND',
  'ERR_SANDPOOL_DATA_CLONE',
] as const;
export type CallFailureCode = (typeof CALL_FAILURES)[number];

/** What a load can fail with inside the worker. */
export const LOAD_FAILURES = ['ERR_SANDPOOL_MODULE_LOAD', 'ERR_SANDPOOL_SNAPSHOT_CORRUPT'] as const;
export type LoadFailureCode = (typeof LOAD_FAILURES)[number];

export type FailureCode = CallFailureCode | LoadFailureCode;

/** Bounds both sides keep: the worker's runtime never exceeds them, so the coordinator treats excess as forgery. */
export const LIMITS = {
  /** Replies per `done` message; the runtime splits larger ticks. */
  replyBatch: 64,
  /** Calls per `calls` message (the coordinator's side: see Channel). */
  callBatch: 16,
  errorName: 256,
  errorMessage: 16 * 1024,
  errorStack: 32 * 1024,
  /** Characters of one output chunk; longer writes are split. */
  outputChunk: 64 * 1024,
  /** Output bytes a worker may have posted that the coordinator has not acknowledged. */
  outputWindow: 1024 * 1024,
  /** A serialized result above this is refused with DATA_CLONE, in the worker and again here. */
  resultBytes: 256 * 1024 * 1024,
  /**
   * Characters of a string result or chunk sent inline, as a primitive. A longer one is
   * serialized, so it counts toward resultBytes and the coordinator sizes it before taking it.
   */
  inlineString: 64 * 1024,
} as const;

/** Agent error codes kept on `cause.code`: what Node and most libraries use (`ENOENT`, `ERR_X`, `E_PROP`, `42`). */
export const AGENT_CODE = /^[A-Za-z0-9_.:-]{1,64}$/;

/**
 * What a worker denies its agent before the agent is imported (worker/lockdown.ts), by the
 * name the agent reaches it by: the builtins Node's permission model does not cover (or
 * covers only where it is used), the process-wide levers a thread could pull on the host, and
 * the channels between threads. The coordinator picks them from the key's permissions.
 */
export const DENIABLE = [
  'node:sqlite',
  'node:ffi',
  'node:inspector',
  'node:wasi',
  'node:trace_events',
  'process.report',
  'process.kill',
  'v8.setFlagsFromString',
  'v8.setHeapSnapshotNearHeapLimit',
  'os.setPriority',
  'BroadcastChannel',
  'postMessageToThread',
  'navigator.locks',
  'fs.fd',
] as const;
export type Deniable = (typeof DENIABLE)[number];

export interface LoadRequest {
  t: 'load';
  key: string;
  /** Denied to the agent (see DENIABLE); absent: nothing (`permissions: 'none'`). */
  deny?: Deniable[];
  /** Absolute real path of the agent module. */
  file: string;
  /** Snapshot folder whose manifest must hold before anything in it runs; null for live code. */
  verifyDir: string | null;
  /**
   * The uid and gid of the key's swarm, which a child started with MUST_DROP drops to before
   * the agent is imported: a spare learns its swarm only with its load.
   */
  user?: readonly [uid: number, gid: number];
  /**
   * sha256 of the snapshot bundle `file`, from the manifest the coordinator authenticated:
   * the worker checks the bytes it imports against this rather than a manifest it rereads.
   */
  sha256?: string;
  /**
   * The bundle's size in bytes, from the same manifest: given with sha256, the worker reads
   * exactly that many and rereads no manifest (a swarm's manifest lists every file of its
   * stems: 300 KB of JSON for 1,000 of them).
   */
  bytes?: number;
  /**
   * Report heap and external memory this often (ms), 0 for never: where the coordinator
   * cannot read them itself (Node 20 under the permission model, whose workers have no
   * inspector to attach to).
   */
  heartbeatMs?: number;
  /** The beat's period while no call runs (default heartbeatMs). */
  idleHeartbeatMs?: number;
}

/**
 * The calls posted in one tick, flattened as CALL_HEADER describes (deadline in epoch ms, 0
 * for none): one message (and one structured clone) for the whole batch rather than one per call.
 */
export interface CallBatch {
  t: 'calls';
  calls: unknown[];
  /** A call made with `{ shared: true }`, alone in its batch: its result may share memory too. */
  shared?: true;
  /** A traced call, alone in its batch: its span's W3C traceparent, the agent's `sandpool.traceparent`. */
  trace?: string;
}

/** A child process's argument: it must drop to its load's `user` before agent code (worker/entry.ts). */
export const MUST_DROP = '--sandpool-must-drop';

/**
 * A call in a CallBatch is `id, fn, deadline, argc`, then its `argc` arguments, flat: one
 * array for the whole batch, none per call, on either side of the channel.
 */
export const CALL_HEADER = 4;

/** Why the coordinator fires a call's `sandpool.signal`. */
export type CancelReason = 'timeout' | 'abort' | 'close';

/**
 * Fire a call's signal. For `timeout` and `abort` the caller has been answered already and
 * the call has `abortGraceMs` to settle before its worker is terminated; for `close` its
 * result is still wanted, within `closeTimeoutMs`.
 */
export interface Cancel {
  t: 'cancel';
  id: number;
  why: CancelReason;
}

/** The coordinator has written this many more bytes of the worker's output. */
export interface OutputAck {
  t: 'out-ack';
  bytes: number;
}

/**
 * Post a memory beat now: the coordinator saw an idle heartbeat worker's thread run (see
 * LoadRequest.heartbeatMs), and an idle worker whose memory stays put beats no more by itself.
 */
export interface BeatRequest {
  t: 'beat';
}

export type ToWorker =
  | LoadRequest
  | BeatRequest
  | CallBatch
  | Cancel
  | OutputAck
  | StreamStart
  | StreamCredit
  | HostDone
  | HostChunk
  | HostEnd;

/**
 * The global symbol (`Symbol.for`) under which a worker keeps `process.memoryUsage` as it was
 * before agent code ran; the coordinator's Node 20 memory probe evaluates it.
 */
export const MEMORY_USAGE_SYMBOL = 'sandpool.memoryUsage';

/** What the worker finds in `workerData`: the private port, taken before any agent code runs. */
export interface WorkerBoot {
  port: MessagePort;
  /** A strict spare: it will verify a bundle, so it loads the verifier while it waits for its key. */
  verifies?: true;
  /**
   * A strict spare's denials (see DENIABLE), applied while it waits for its key: its load must
   * name the same list, or it loads nothing.
   */
  deny?: Deniable[];
}

/**
 * The replies settled in one tick whose values are primitives, flattened:
 * `ok` as `id, value…`, `err` as `id, code, error…`.
 */
export interface ReplyBatch {
  t: 'done';
  ok: unknown[];
  err: unknown[];
}

/**
 * One non-primitive result as `v8.serialize` bytes in a transferred ArrayBuffer: its size is
 * known before anything is deserialized, and a value the coordinator cannot rebuild (too deep
 * for its stack) fails that one call with DATA_CLONE.
 */
export interface SerializedResult {
  t: 'result';
  id: number;
  bytes: ArrayBuffer;
  /** Buffers the agent asked to move (`sandpool.transfer`): `bytes` refers to them by index. */
  moved?: ArrayBuffer[];
  /** The SharedArrayBuffers of a `{ shared: true }` call's result: `bytes` refers to them by index. */
  shared?: SharedArrayBuffer[];
}

/**
 * What the worker prints. It travels on the private port rather than the `stdout: true`
 * streams, which keep the host alive even when the worker is unref()ed; `dropped` counts the
 * bytes the worker discarded while its output window was full.
 */
export interface OutputChunk {
  t: 'out';
  stream: 'stdout' | 'stderr';
  text: string;
  dropped: number;
}

export interface Ready {
  t: 'ready';
  /** The worker's kernel thread id, read from /proc/thread-self/stat before agent code ran; 0 where unknown. */
  tid: number;
}

export interface LoadFailed {
  t: 'load-failed';
  code: LoadFailureCode;
  error: RemoteError;
}

/** The worker's own memory figures (see LoadRequest.heartbeatMs). */
export interface MemoryBeat {
  t: 'memory';
  heap: number;
  external: number;
}

export type FromWorker =
  | OutputChunk
  | Ready
  | LoadFailed
  | ReplyBatch
  | SerializedResult
  | StreamChunk
  | HostCall
  | HostPull
  | HostCancel
  | MemoryBeat;

/** How a call ended in the worker, once decoded. */
export type Outcome = { ok: true; value: unknown } | { ok: false; code: FailureCode; error: RemoteError };
