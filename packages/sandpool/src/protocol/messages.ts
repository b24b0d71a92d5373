import type { MessagePort } from 'node:worker_threads';

/**
 * Messages between the coordinator and a worker over the worker's own port. Kept as plain
 * objects with a one-letter tag: they are structured-cloned on every call.
 */

/** An error as it crosses the thread boundary: structured clone drops an Error's `code`. */
export interface RemoteError {
  name: string;
  message: string;
  stack?: string;
  code?: unknown;
}

export type FailureCode =
  | 'ERR_SANDPOOL_AGENT_ERROR'
  | 'ERR_SANDPOOL_EXPORT_NOT_FOUND'
  | 'ERR_SANDPOOL_DATA_CLONE'
  | 'ERR_SANDPOOL_MODULE_LOAD'
  | 'ERR_SANDPOOL_SNAPSHOT_CORRUPT';

export interface LoadRequest {
  t: 'load';
  key: string;
  /** Absolute real path of the agent module. */
  file: string;
  /** Snapshot folder whose manifest must hold before anything in it runs; null for live code. */
  verifyDir: string | null;
  /**
   * sha256 of the snapshot bundle `file`, from the manifest the coordinator authenticated:
   * the worker checks the bytes it imports against this rather than a manifest it rereads.
   */
  sha256?: string;
  /** Folder for the V8 compile cache of this snapshot (writable by its workers only); null: none. */
  compileCacheDir?: string | null;
}

/**
 * The calls posted in one tick, flattened as `id, fn, args, id, fn, args…`: one message
 * (and one structured clone) for the whole batch rather than one per call.
 */
export interface CallBatch {
  t: 'calls';
  calls: unknown[];
}

/** Opens a comlink endpoint for `remote()` on a port of its own. */
export interface RemoteRequest {
  t: 'remote';
  port: MessagePort;
}

export type ToWorker = LoadRequest | CallBatch | RemoteRequest;

/**
 * The replies settled in one tick, flattened likewise: `ok` as `id, value…`,
 * `err` as `id, code, error…`.
 */
export interface ReplyBatch {
  t: 'done';
  ok: unknown[];
  err: unknown[];
}

/**
 * What the worker prints. It travels on the worker's own port rather than the `stdout: true`
 * streams, which keep the host alive even when the worker is unref()ed.
 */
export interface OutputChunk {
  t: 'out';
  stream: 'stdout' | 'stderr';
  text: string;
}

export type FromWorker =
  | OutputChunk
  | { t: 'ready' }
  | { t: 'load-failed'; code: FailureCode; error: RemoteError }
  | ReplyBatch;

/** The envelope comlink carries for `remote()`: comlink alone would drop `code` and error kinds. */
export type Outcome = { ok: true; value: unknown } | { ok: false; code: FailureCode; error: RemoteError };

export function toRemoteError(thrown: unknown): RemoteError {
  if (thrown instanceof Error) {
    const out: RemoteError = { name: thrown.name, message: thrown.message };
    if (thrown.stack !== undefined) out.stack = thrown.stack;
    const code = (thrown as { code?: unknown }).code;
    if (code !== undefined) out.code = typeof code === 'string' || typeof code === 'number' ? code : String(code);
    return out;
  }
  return { name: 'Error', message: describe(thrown) };
}

function describe(value: unknown): string {
  if (typeof value === 'string') return value;
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}
