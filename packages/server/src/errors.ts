import { SandpoolError, type SandpoolErrorCode } from 'sandpool';
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
export function toErrorReply(error: unknown, debug: boolean): ErrorReply {
  if (error instanceof SandpoolError)
    return { status: statusOf(error.code), body: sandpoolBody(error, debug), unexpected: false };
  if (error instanceof HttpError) return reply(error.code, error.message);
  if (isClientError(error)) {
    const code: HttpErrorCode =
      error.statusCode === 413
        ? 'ERR_SANDPOOL_HTTP_BODY_TOO_LARGE'
        : error.statusCode === 415
          ? 'ERR_SANDPOOL_HTTP_UNSUPPORTED_MEDIA_TYPE'
          : 'ERR_SANDPOOL_HTTP_BAD_REQUEST';
    return reply(code, error.message);
  }
  const body: ErrorBody = { code: 'ERR_SANDPOOL_HTTP_INTERNAL', message: 'internal server error' };
  if (debug && error instanceof Error) {
    body.message = error.message;
    if (error.stack !== undefined) body.stack = error.stack;
  }
  return { status: statusOf(body.code), body, unexpected: true };
}

export function outcomeOf(error: unknown): ServerErrorCode {
  if (error instanceof SandpoolError || error instanceof HttpError) return error.code;
  return isClientError(error) ? 'ERR_SANDPOOL_HTTP_BAD_REQUEST' : 'ERR_SANDPOOL_HTTP_INTERNAL';
}

function reply(code: HttpErrorCode, message: string): ErrorReply {
  return { status: statusOf(code), body: { code, message }, unexpected: false };
}

function sandpoolBody(error: SandpoolError, debug: boolean): ErrorBody {
  const code: SandpoolErrorCode = error.code;
  const body: ErrorBody = { code, message: error.message };
  if (error.key !== undefined) body.key = error.key;
  if (error.reason !== undefined) body.reason = error.reason;
  if (error.issues !== undefined) {
    body.issues = error.issues.map((issue) => ({
      path: issue.path.map((part) => (typeof part === 'number' ? part : String(part))),
      message: issue.message,
    }));
  }
  if (error.cause instanceof Error) body.cause = causeBody(error.cause, debug);
  if (debug && error.stack !== undefined) body.stack = error.stack;
  return body;
}

/** The agent's own error (name, message, code) is what a caller needs to act on. */
function causeBody(cause: Error, debug: boolean): CauseBody {
  const body: CauseBody = { name: cause.name, message: cause.message };
  const code: unknown = (cause as Error & { code?: unknown }).code;
  if (typeof code === 'string' || typeof code === 'number') body.code = code;
  if (debug && cause.stack !== undefined) body.stack = cause.stack;
  return body;
}

function isClientError(error: unknown): error is StatusError {
  if (!(error instanceof Error) || !('statusCode' in error)) return false;
  const status = error.statusCode;
  return typeof status === 'number' && status >= 400 && status < 500;
}
