import { EXIT_REASONS, type ExitReason, SandpoolError } from '../errors.js';
import type { ResolvedKey } from '../key.js';
import type { ThreadEnd } from './agent-worker.js';

export function aborted(key: string): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_ABORTED', `the call to ${key} was aborted`, { key });
}

export function closedError(key?: string): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_CLOSED', 'the pool is closing or closed', key === undefined ? {} : { key });
}

export function snapshotGone(key: ResolvedKey): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_SNAPSHOT_NOT_FOUND', `snapshot ${key.swarm}@${key.snapshot} was removed`, {
    key: key.text,
  });
}

export function queueFull(key: string, detail: string): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_QUEUE_FULL', `${key}: ${detail}`, { key });
}

const EXITS: ReadonlySet<string> = new Set(EXIT_REASONS);

export function isExitReason(end: ThreadEnd): end is ExitReason {
  return EXITS.has(end);
}

/** The error a worker's death gives the calls it held, or its callers if it died while loading. */
export function deathError(key: string, end: ExitReason, failure: Error | null, loading: boolean): SandpoolError {
  const cause = failure === null ? {} : { cause: failure };
  if (loading) {
    return new SandpoolError('ERR_SANDPOOL_MODULE_LOAD', `the worker of ${key} died while loading (${end})`, {
      key,
      ...cause,
    });
  }
  return new SandpoolError('ERR_SANDPOOL_WORKER_EXITED', `the worker of ${key} exited (${end})`, {
    key,
    reason: end,
    ...cause,
  });
}
