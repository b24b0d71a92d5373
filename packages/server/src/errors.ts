import { isSandpoolError, SandpoolError, type SandpoolErrorCode, type SandpoolIssue } from 'sandpool';
import { type HttpErrorCode, type ServerErrorCode, statusOf } from './status.js';

/** A failure of the HTTP layer itself (auth, routing, body), answered like a SandpoolError. */
export class HttpError extends Error {
  override readonly name = 'HttpError';
  constructor(
    readonly code: HttpErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export interface CauseBody {
  name: string;
  message: string;
  code?: string | number;
  stack?: string;
}

/** The JSON every failed request gets: `code` is the contract, `message` is for people. */
export interface ErrorBody {
  code: ServerErrorCode;
  message: string;
  key?: string;
  reason?: string;
  issues?: { path: (string | number)[]; message: string }[];
  cause?: CauseBody;
  stack?: string;
}

// ---- the SandpoolErrors the server itself raises: the only place it makes one -----------------

/** A request whose body, query or options failed their schema. */
export function invalidRequest(what: string, issues: readonly SandpoolIssue[]): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_INVALID_OPTIONS', `invalid ${what}: ${issues[0]?.message}`, { issues });
}

/** A `sandpool serve --config` file whose default export fails its schema: each field at fault is named, with why. */
export function invalidConfig(file: string, issues: readonly SandpoolIssue[]): SandpoolError {
  const shown = issues
    .slice(0, 5)
    .map(({ path, message }) => (path.length === 0 ? message : `${path.join('.')}: ${message}`));
  if (issues.length > shown.length) shown.push(`and ${issues.length - shown.length} more`);
  return new SandpoolError('ERR_SANDPOOL_INVALID_OPTIONS', `invalid config ${file}: ${shown.join('; ')}`, { issues });
}

/** A key given in a path, header or body that is no valid key. */
export function invalidKeyIn(message: string, issues: readonly SandpoolIssue[]): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_INVALID_KEY', message, { issues });
}

/** A deploy archive with an entry a build would not take (a link, a device, a name that leaves the folder). */
export function archiveRefused(message: string): HttpError {
  return new HttpError('ERR_SANDPOOL_HTTP_BAD_ARCHIVE', `deploy refused: ${message}`);
}

/** A deploy archive past the server's bounds on bytes or entries. */
export function archiveTooLarge(message: string): HttpError {
  return new HttpError('ERR_SANDPOOL_HTTP_BODY_TOO_LARGE', `deploy refused: ${message}`);
}

export function noSwarm(swarm: string): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_SWARM_NOT_FOUND', `no swarm ${swarm}`);
}

export function draining(nodeName: string): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_CLOSED', `node ${nodeName} is draining`);
}

/** A result or chunk that JSON cannot carry. */
export function notJson(what: string, key: string | undefined, cause: unknown): SandpoolError {
  return new SandpoolError(
    'ERR_SANDPOOL_DATA_CLONE',
    key === undefined ? `${what} cannot be written as JSON` : `${key}: ${what} cannot be written as JSON`,
    key === undefined ? { cause } : { key, cause },
  );
}

/** Bounds on what an error body echoes: a 9 MB key must not come back in the message. */
const MAX_MESSAGE = 1024;
const MAX_KEY = 300;
const MAX_ISSUES = 20;
const MAX_PATH_PART = 100;

/** Rewrites text for a remote caller: no absolute server paths, and nothing unbounded. */
export type Scrub = (text: string, limit?: number) => string;

/** A rewrite of paths (sandpool/internal's hostPaths) made into a Scrub: and bounded, too. */
export function makeScrub(redact: (text: string) => string): Scrub {
  return (text, limit = MAX_MESSAGE) => bound(redact(text), limit);
}

export function bound(text: string, limit: number): string {
  if (text.length <= limit) return text;
  return `${text.slice(0, limit)}… (${text.length - limit} more characters)`;
}

export interface ErrorReply {
  status: number;
  body: ErrorBody;
  /** Set when the error is not one the server expected: worth a log line. */
  unexpected: boolean;
}

/** Fastify's own request errors (bad JSON, body too large…) carry a 4xx `statusCode`. */
interface StatusError extends Error {
  statusCode: number;
}

/**
 * Turns whatever a handler threw into the status and body sent. Stacks stay out unless
 * `debug`: they name server paths and are no business of a remote caller.
 */
export function toErrorReply(error: unknown, debug: boolean, scrub: Scrub): ErrorReply {
  if (isSandpoolError(error))
    return { status: statusOf(error.code), body: sandpoolBody(error, debug, scrub), unexpected: false };
  if (error instanceof HttpError) return reply(error.code, scrub(error.message));
  if (isClientError(error)) {
    const code: HttpErrorCode =
      error.statusCode === 413
        ? 'ERR_SANDPOOL_HTTP_BODY_TOO_LARGE'
        : error.statusCode === 415
          ? 'ERR_SANDPOOL_HTTP_UNSUPPORTED_MEDIA_TYPE'
          : 'ERR_SANDPOOL_HTTP_BAD_REQUEST';
    return reply(code, scrub(error.message));
  }
  const body: ErrorBody = { code: 'ERR_SANDPOOL_HTTP_INTERNAL', message: 'internal server error' };
  if (debug && error instanceof Error) {
    body.message = scrub(error.message);
    if (error.stack !== undefined) body.stack = scrub(error.stack, Number.POSITIVE_INFINITY);
  }
  return { status: statusOf(body.code), body, unexpected: true };
}

export function outcomeOf(error: unknown): ServerErrorCode {
  if (isSandpoolError(error) || error instanceof HttpError) return error.code;
  return isClientError(error) ? 'ERR_SANDPOOL_HTTP_BAD_REQUEST' : 'ERR_SANDPOOL_HTTP_INTERNAL';
}

function reply(code: HttpErrorCode, message: string): ErrorReply {
  return { status: statusOf(code), body: { code, message }, unexpected: false };
}

function sandpoolBody(error: SandpoolError, debug: boolean, scrub: Scrub): ErrorBody {
  const code: SandpoolErrorCode = error.code;
  const body: ErrorBody = { code, message: scrub(error.message) };
  if (error.key !== undefined) body.key = bound(error.key, MAX_KEY);
  if (error.reason !== undefined) body.reason = error.reason;
  if (error.issues !== undefined) {
    body.issues = error.issues.slice(0, MAX_ISSUES).map((issue) => ({
      path: issue.path.map((part) => (typeof part === 'number' ? part : bound(String(part), MAX_PATH_PART))),
      message: scrub(issue.message),
    }));
  }
  if (error.cause instanceof Error) body.cause = causeBody(error.cause, debug, scrub);
  if (debug && error.stack !== undefined) body.stack = scrub(error.stack, Number.POSITIVE_INFINITY);
  return body;
}

/** The agent's own error (name, message, code) is what a caller needs to act on. */
function causeBody(cause: Error, debug: boolean, scrub: Scrub): CauseBody {
  const body: CauseBody = { name: bound(cause.name, MAX_PATH_PART), message: scrub(cause.message) };
  const code: unknown = (cause as Error & { code?: unknown }).code;
  if (typeof code === 'string') body.code = bound(code, MAX_PATH_PART);
  if (typeof code === 'number') body.code = code;
  if (debug && cause.stack !== undefined) body.stack = scrub(cause.stack, Number.POSITIVE_INFINITY);
  return body;
}

function isClientError(error: unknown): error is StatusError {
  if (!(error instanceof Error) || !('statusCode' in error)) return false;
  const status = error.statusCode;
  return typeof status === 'number' && status >= 400 && status < 500;
}
