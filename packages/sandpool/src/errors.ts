/** Every code a SandpoolError can carry; callers match on these, never on message text. */
export const ERROR_CODES = [
  'ERR_SANDPOOL_INVALID_KEY',
  'ERR_SANDPOOL_INVALID_OPTIONS',
  'ERR_SANDPOOL_MODULE_NOT_FOUND',
  'ERR_SANDPOOL_MODULE_LOAD',
  'ERR_SANDPOOL_EXPORT_NOT_FOUND',
  'ERR_SANDPOOL_AGENT_ERROR',
  'ERR_SANDPOOL_DATA_CLONE',
  'ERR_SANDPOOL_TIMEOUT',
  'ERR_SANDPOOL_ABORTED',
  'ERR_SANDPOOL_WORKER_EXITED',
  'ERR_SANDPOOL_QUEUE_FULL',
  'ERR_SANDPOOL_CLOSED',
  'ERR_SANDPOOL_SWARM_NOT_FOUND',
  'ERR_SANDPOOL_SNAPSHOT_EXISTS',
  'ERR_SANDPOOL_SNAPSHOT_NOT_FOUND',
  'ERR_SANDPOOL_SNAPSHOT_CORRUPT',
  /** create could not freeze the swarm: an import that cannot be pinned, a file swapped or too large. */
  'ERR_SANDPOOL_SNAPSHOT_BUILD',
  'ERR_SANDPOOL_QUEUE_TIMEOUT',
  /** An agent called `sandpool.host.<name>()` for a name the pool does not declare (seen in the agent, and as an agent error's `cause.code`). */
  'ERR_SANDPOOL_HOST_NOT_FOUND',
  /** The `fetch` capability refused a URL: an origin the policy does not list, or an address it may not reach. */
  'ERR_SANDPOOL_ACCESS_DENIED',
] as const;

export type SandpoolErrorCode = (typeof ERROR_CODES)[number];

/**
 * Why a keyed worker ended without the pool retiring it: it threw (`crash`), exited, ran out
 * of memory, was stopped under a call that had to end (`killed`), sent a message the
 * protocol does not allow (`protocol`), or ran a call past cpuTimeoutMs (`cpu`).
 */
export const EXIT_REASONS = ['crash', 'exit', 'oom', 'killed', 'protocol', 'cpu'] as const;
export type ExitReason = (typeof EXIT_REASONS)[number];

/** One issue of a failed schema: the zod issue shape reduced to what callers need. */
export interface SandpoolIssue {
  readonly path: readonly PropertyKey[];
  readonly message: string;
  readonly code?: string;
}

export interface SandpoolErrorDetails {
  cause?: unknown;
  key?: string;
  reason?: ExitReason;
  issues?: readonly SandpoolIssue[];
}

export class SandpoolError extends Error {
  override readonly name = 'SandpoolError';
  readonly code: SandpoolErrorCode;
  /** The key in text form (`swarm/stem`, `swarm@snapshot/stem`) where the error concerns one. */
  declare readonly key?: string;
  /** Set on ERR_SANDPOOL_WORKER_EXITED. */
  declare readonly reason?: ExitReason;
  /** Set on the two INVALID codes: each issue has a `path` naming the failing field. */
  declare readonly issues?: readonly SandpoolIssue[];

  constructor(code: SandpoolErrorCode, message: string, details: SandpoolErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.code = code;
    // Absent rather than undefined, so logged errors show only the fields that apply.
    if (details.key !== undefined) Object.defineProperty(this, 'key', { value: details.key, enumerable: true });
    if (details.reason !== undefined)
      Object.defineProperty(this, 'reason', { value: details.reason, enumerable: true });
    if (details.issues !== undefined)
      Object.defineProperty(this, 'issues', { value: details.issues, enumerable: true });
  }
}

export function isSandpoolError(value: unknown, code?: SandpoolErrorCode): value is SandpoolError {
  return value instanceof SandpoolError && (code === undefined || value.code === code);
}
