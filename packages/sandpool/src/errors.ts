/**
 * The one error class and every way one is made. Each SandpoolError comes from a named
 * factory below, so a code is always given the details its callers rely on (`key` where the
 * error concerns one, `reason` on WORKER_EXITED, `issues` on the INVALID codes), and the
 * class's constructor is written here only.
 */

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
  /**
   * A key's call, or a capability call of its agent (seen in the agent), over its quota; or a
   * new snapshot name over its swarm's maxSnapshotsPerSwarm.
   */
  'ERR_SANDPOOL_QUOTA',
] as const;

export type SandpoolErrorCode = (typeof ERROR_CODES)[number];

const CODES: ReadonlySet<string> = new Set(ERROR_CODES);

/** Whether a string is one of the closed set of codes (a helper process's or a worker's answer is checked with it). */
export function isErrorCode(value: unknown): value is SandpoolErrorCode {
  return typeof value === 'string' && CODES.has(value);
}

/**
 * Why a keyed worker ended without the pool retiring it: it threw (`crash`), exited, ran out
 * of memory, was stopped under a call that had to end (`killed`), sent a message the
 * protocol does not allow (`protocol`), or ran a call past cpuTimeoutMs (`cpu`).
 */
export const EXIT_REASONS = ['crash', 'exit', 'oom', 'killed', 'protocol', 'cpu'] as const;
export type ExitReason = (typeof EXIT_REASONS)[number];

const EXITS: ReadonlySet<string> = new Set(EXIT_REASONS);

export function isExitReason(end: string): end is ExitReason {
  return EXITS.has(end);
}

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

/**
 * Marks every SandpoolError, in whichever copy of this package made it: two copies of
 * sandpool in one process (a common install shape) have two classes, and `instanceof`
 * would tell their errors apart.
 */
const BRAND = Symbol.for('sandpool.error');

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
    Object.defineProperty(this, BRAND, { value: true });
    // Absent rather than undefined, so logged errors show only the fields that apply.
    if (details.key !== undefined) Object.defineProperty(this, 'key', { value: details.key, enumerable: true });
    if (details.reason !== undefined)
      Object.defineProperty(this, 'reason', { value: details.reason, enumerable: true });
    if (details.issues !== undefined)
      Object.defineProperty(this, 'issues', { value: details.issues, enumerable: true });
  }
}

/** Whether `value` is a SandpoolError (of any copy of this package), and of `code` when given. */
export function isSandpoolError(value: unknown, code?: SandpoolErrorCode): value is SandpoolError {
  if (typeof value !== 'object' || value === null) return false;
  if ((value as { [BRAND]?: unknown })[BRAND] !== true) return false;
  return code === undefined || (value as { code?: unknown }).code === code;
}

/** `key` when given, else nothing: most factories take an optional key. */
function keyed(key: string | undefined, cause?: unknown): SandpoolErrorDetails {
  const details: SandpoolErrorDetails = {};
  if (key !== undefined) details.key = key;
  if (cause !== undefined) details.cause = cause;
  return details;
}

/** Field names of a schema failure, for a message: `a.b, c`. */
function fieldsOf(issues: readonly SandpoolIssue[], whole: string): string {
  return [...new Set(issues.map((issue) => issue.path.join('.') || whole))].join(', ');
}

// ---- input ------------------------------------------------------------------------------

export function invalidKey(shown: string, issues: readonly SandpoolIssue[]): SandpoolError {
  return new SandpoolError(
    'ERR_SANDPOOL_INVALID_KEY',
    `invalid agent key ${JSON.stringify(shown)}: ${fieldsOf(issues, 'key')}`,
    {
      issues,
    },
  );
}

/** Arguments that are not a valid selector (`invalidate`) or snapshot reference. */
export function invalidArguments(what: string, issues: readonly SandpoolIssue[]): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_INVALID_KEY', `invalid ${what}: ${fieldsOf(issues, '(arguments)')}`, {
    issues,
  });
}

/** A schema refused options: `what` names them (`pool options`, `call options`…). */
export function invalidOptions(what: string, issues: readonly SandpoolIssue[]): SandpoolError {
  const first = issues[0]?.message;
  const message = `invalid ${what}: ${fieldsOf(issues, '(options)')}${first === undefined ? '' : `: ${first}`}`;
  return new SandpoolError('ERR_SANDPOOL_INVALID_OPTIONS', message, { issues });
}

/** Options that passed their schema but cannot be used: a per-key function's bad answer, a missing secret. */
export function unusableOptions(
  message: string,
  details: { key?: string; cause?: unknown; issues?: readonly SandpoolIssue[] } = {},
): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_INVALID_OPTIONS', message, details);
}

/** `sandbox: 'require'` on a host that lacks a layer of the OS sandbox: each named with why. */
export function sandboxMissing(missing: readonly { readonly layer: string; readonly reason: string }[]): SandpoolError {
  const named = missing.map(({ layer, reason }) => `${layer} (${reason})`).join('; ');
  return new SandpoolError('ERR_SANDPOOL_INVALID_OPTIONS', `sandbox 'require': this host lacks ${named}`, {
    issues: [{ path: ['sandbox'], message: `missing ${named}` }],
  });
}

export function badFunctionName(key: string, max: number): SandpoolError {
  return new SandpoolError(
    'ERR_SANDPOOL_EXPORT_NOT_FOUND',
    `the function name must be a non-empty string of at most ${max} characters`,
    { key },
  );
}

// ---- calls ------------------------------------------------------------------------------

export function aborted(key: string): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_ABORTED', `the call to ${key} was aborted`, { key });
}

export function closed(key?: string): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_CLOSED', 'the pool is closing or closed', keyed(key));
}

export function queueFull(key: string, detail: string): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_QUEUE_FULL', `${key}: ${detail}`, { key });
}

export function queueTimeout(key: string, fn: string, ms: number): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_QUEUE_TIMEOUT', `${key} ${fn}() waited ${ms} ms for a worker`, { key });
}

export function callTimeout(key: string, fn: string, ms: number): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_TIMEOUT', `${key} ${fn}() outlived ${ms} ms`, { key });
}

export function chunkTimeout(key: string, fn: string, ms: number): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_TIMEOUT', `${key} ${fn}() sent no chunk for ${ms} ms (chunkTimeoutMs)`, {
    key,
  });
}

/** Arguments, a result or a chunk that cannot be cloned or rebuilt on this side. */
export function dataClone(key: string, what: string, cause?: unknown): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_DATA_CLONE', `${key}: ${what}`, keyed(key, cause));
}

/** What a caller's `deliver` (sandpool/internal) threw for a result or chunk: its own SandpoolError, else DATA_CLONE. */
export function undelivered(key: string, what: 'its result' | 'a chunk', thrown: unknown): SandpoolError {
  return isSandpoolError(thrown) ? thrown : dataClone(key, `${what} cannot be delivered`, thrown);
}

/** A call over its key's `quotas.calls`. */
export function quotaExceeded(key: string): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_QUOTA', `${key}: over its calls quota (quotas.calls)`, { key });
}

/**
 * A snapshot name its swarm may not add: it has maxSnapshotsPerSwarm names already. A bound on
 * the tenant, as a call quota is, not a fault of its code: no build is tried.
 */
export function snapshotQuota(swarm: string, max: number): SandpoolError {
  return new SandpoolError(
    'ERR_SANDPOOL_QUOTA',
    `swarm ${swarm} has ${max} snapshot names, its maxSnapshotsPerSwarm: remove one it no longer needs first`,
  );
}

/** A call's `context` larger than its bound, sized before it is copied. */
export function contextTooLarge(key: string, bound: number): SandpoolError {
  const message = `the call's context is larger than ${bound} bytes serialized`;
  return new SandpoolError('ERR_SANDPOOL_INVALID_OPTIONS', `${key}: ${message}`, {
    key,
    issues: [{ path: ['context'], message }],
  });
}

/** A SharedArrayBuffer where the call did not pass `{ shared: true }`: it would be memory the key shares with the host. */
export function sharedMemoryRefused(key: string, fn: string, where: 'arguments' | 'result'): SandpoolError {
  const message =
    where === 'arguments'
      ? `${fn.slice(0, 64)}(): a SharedArrayBuffer in the arguments would be memory the agent shares with this process; pass { shared: true } to call() to share it`
      : `${fn.slice(0, 64)}(): the result holds a SharedArrayBuffer, which the call did not allow ({ shared: true })`;
  return new SandpoolError('ERR_SANDPOOL_DATA_CLONE', `${key}: ${message}`, { key });
}

/** The error a worker's death gives the calls it held, or its callers if it died while loading. */
export function workerDied(key: string, end: ExitReason, failure: Error | null, loading: boolean): SandpoolError {
  const cause = failure ?? undefined;
  if (loading) {
    return new SandpoolError(
      'ERR_SANDPOOL_MODULE_LOAD',
      `the worker of ${key} died while loading (${end})`,
      keyed(key, cause),
    );
  }
  return new SandpoolError('ERR_SANDPOOL_WORKER_EXITED', `the worker of ${key} exited (${end})`, {
    ...keyed(key, cause),
    reason: end,
  });
}

// ---- modules ----------------------------------------------------------------------------

export function moduleNotFound(message: string, key?: string, cause?: unknown): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_MODULE_NOT_FOUND', message, keyed(key, cause));
}

export function moduleLoad(message: string, key?: string, cause?: unknown): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_MODULE_LOAD', message, keyed(key, cause));
}

// ---- the store --------------------------------------------------------------------------

export function swarmNotFound(swarm: string, detail = 'does not exist'): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_SWARM_NOT_FOUND', `swarm ${swarm} ${detail}`);
}

export function snapshotNotFound(swarm: string, name: string, key?: string): SandpoolError {
  return new SandpoolError(
    'ERR_SANDPOOL_SNAPSHOT_NOT_FOUND',
    `snapshot ${name} of swarm ${swarm} does not exist`,
    keyed(key),
  );
}

/** Calls to a snapshot being removed fail with this. */
export function snapshotRemoved(key: string, swarm: string, name: string): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_SNAPSHOT_NOT_FOUND', `snapshot ${swarm}@${name} was removed`, { key });
}

export function snapshotExists(swarm: string, name: string, cause?: unknown): SandpoolError {
  return new SandpoolError(
    'ERR_SANDPOOL_SNAPSHOT_EXISTS',
    `snapshot ${name} of swarm ${swarm} already exists with different content`,
    keyed(undefined, cause),
  );
}

export function snapshotCorrupt(message: string, key?: string, cause?: unknown): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_SNAPSHOT_CORRUPT', message, keyed(key, cause));
}

export function snapshotBuild(message: string, cause?: unknown): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_SNAPSHOT_BUILD', message, keyed(undefined, cause));
}

// ---- the fetch capability ----------------------------------------------------------------

/** An origin or an address the fetch policy does not allow. */
export function accessDenied(message: string): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_ACCESS_DENIED', `fetch: ${message}`);
}

/** A request or response body past its bound. */
export function bodyTooLarge(what: 'request' | 'response', bound: number): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_DATA_CLONE', `fetch: the ${what} body is larger than ${bound} bytes`);
}

/** An agent's request the capability refuses before sending anything. */
export function badRequest(message: string, issues: readonly SandpoolIssue[]): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_INVALID_OPTIONS', `fetch: ${message}`, { issues });
}

export function fetchTimeout(ms: number): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_TIMEOUT', `fetch: not finished within ${ms} ms`);
}

export function fetchAborted(): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_ABORTED', 'fetch: aborted');
}

// ---- across a boundary ------------------------------------------------------------------

/**
 * An error that crossed a process or thread boundary as plain data (a worker's outcome, the
 * snapshot helper's answer), made again on this side; its code was checked by the receiver.
 */
export function rebuilt(code: SandpoolErrorCode, message: string, details: SandpoolErrorDetails): SandpoolError {
  return new SandpoolError(code, message, details);
}
