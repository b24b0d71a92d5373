import type { SandpoolErrorCode } from 'sandpool';

/**
 * Codes the HTTP layer adds for failures that happen before any pool call: they share the
 * `ERR_SANDPOOL_` prefix so a client matches one vocabulary, and `HTTP_` says where they came from.
 */
export const HTTP_ERROR_CODES = {
  ERR_SANDPOOL_HTTP_BAD_REQUEST: 400,
  // A deploy archive with an entry a build would not take: a link, a device, a name that leaves the folder.
  ERR_SANDPOOL_HTTP_BAD_ARCHIVE: 400,
  ERR_SANDPOOL_HTTP_UNAUTHORIZED: 401,
  ERR_SANDPOOL_HTTP_FORBIDDEN: 403,
  ERR_SANDPOOL_HTTP_NOT_FOUND: 404,
  // Some keys' new code failed to load on invalidate: they keep serving the old code (see the report).
  ERR_SANDPOOL_HTTP_RELOAD_FAILED: 409,
  ERR_SANDPOOL_HTTP_BODY_TOO_LARGE: 413,
  ERR_SANDPOOL_HTTP_UNSUPPORTED_MEDIA_TYPE: 415,
  ERR_SANDPOOL_HTTP_INTERNAL: 500,
} as const;

export type HttpErrorCode = keyof typeof HTTP_ERROR_CODES;
export type ServerErrorCode = SandpoolErrorCode | HttpErrorCode;

/**
 * The status of every library code. A Record over the union, so a code added to the
 * library fails the build here until it gets a status.
 */
const SANDPOOL_STATUS: Record<SandpoolErrorCode, number> = {
  ERR_SANDPOOL_INVALID_KEY: 400,
  ERR_SANDPOOL_INVALID_OPTIONS: 400,
  // The arguments came from JSON, so they always clone: this is a result the agent cannot send.
  ERR_SANDPOOL_DATA_CLONE: 400,
  ERR_SANDPOOL_MODULE_NOT_FOUND: 404,
  ERR_SANDPOOL_EXPORT_NOT_FOUND: 404,
  // Seen by agents (a capability the pool does not declare); a client meets it only as an agent error's cause.
  ERR_SANDPOOL_HOST_NOT_FOUND: 404,
  // Seen by agents (the fetch capability refused a URL); a client meets it only as an agent error's cause.
  ERR_SANDPOOL_ACCESS_DENIED: 403,
  ERR_SANDPOOL_SNAPSHOT_NOT_FOUND: 404,
  ERR_SANDPOOL_SWARM_NOT_FOUND: 404,
  ERR_SANDPOOL_SNAPSHOT_EXISTS: 409,
  ERR_SANDPOOL_AGENT_ERROR: 422,
  // The swarm's code cannot be frozen as it is (an unpinnable import, a file too large): the client's to fix.
  ERR_SANDPOOL_SNAPSHOT_BUILD: 422,
  ERR_SANDPOOL_QUEUE_TIMEOUT: 503,
  ERR_SANDPOOL_QUEUE_FULL: 429,
  // A key's calls over its quota, or a new snapshot name past its swarm's maxSnapshotsPerSwarm; seen by
  // agents too, for a capability's quota (then a client meets it as a cause).
  ERR_SANDPOOL_QUOTA: 429,
  // The server never gives the pool an AbortSignal (a client hanging up must not kill a
  // worker other clients share), so this stays unreachable; 499 is nginx's "client closed".
  ERR_SANDPOOL_ABORTED: 499,
  ERR_SANDPOOL_MODULE_LOAD: 500,
  ERR_SANDPOOL_SNAPSHOT_CORRUPT: 500,
  ERR_SANDPOOL_WORKER_EXITED: 502,
  ERR_SANDPOOL_CLOSED: 503,
  ERR_SANDPOOL_TIMEOUT: 504,
};

const STATUS: Record<ServerErrorCode, number> = { ...SANDPOOL_STATUS, ...HTTP_ERROR_CODES };

export function statusOf(code: ServerErrorCode): number {
  return STATUS[code];
}
