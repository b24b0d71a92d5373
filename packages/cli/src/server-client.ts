import { InvalidArgumentError } from 'commander';
import { z } from 'zod';

/** Where a running `sandpool serve` listens, and the bearer token to show it. */
export interface ServerTarget {
  readonly url: string;
  readonly token: string | undefined;
}

export interface ServerOptionsOfCommand {
  readonly url: string;
  readonly token?: string;
}

/** The server's documented error shape; anything else is reported by status alone. */
const ErrorBodySchema = z.object({ code: z.string(), message: z.string() });

/** Long enough for an invalidate that waits for new workers to load; a hung server still ends the command. */
const ANSWER_TIMEOUT_MS = 30_000;

export const DEFAULT_URL = 'http://127.0.0.1:8080';

/** `--token` wins; else `$SANDPOOL_TOKEN`, the variable `serve` reads, so one shell serves and inspects. */
export function targetOf(options: ServerOptionsOfCommand): ServerTarget {
  const token = options.token ?? process.env.SANDPOOL_TOKEN;
  return { url: options.url, token: token === '' ? undefined : token };
}

export function parseUrl(text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new InvalidArgumentError('expected an http:// or https:// URL.');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new InvalidArgumentError('expected an http:// or https:// URL.');
  }
  return url.href.replace(/\/+$/, '');
}

/** An answer the command must act on; `error <code>: message` is what the CLI prints for it. */
export class ServerAnswerError extends Error {
  override readonly name = 'ServerAnswerError';
  constructor(
    readonly code: string,
    message: string,
    readonly status: number | null,
  ) {
    super(message);
  }
}

export interface Answer {
  readonly status: number;
  readonly node: string | null;
  readonly body: unknown;
}

/** A request body sent as it is, with its own content type (a deploy's tar archive). */
export class RawBody {
  constructor(
    readonly type: string,
    readonly bytes: Uint8Array,
  ) {}
}

/**
 * One request, its body JSON or raw; connection failures become ERR_SANDPOOL_HTTP_UNREACHABLE,
 * like the balancer's own.
 */
export async function send(
  target: ServerTarget,
  method: 'GET' | 'POST' | 'PUT' | 'DELETE',
  path: string,
  body?: unknown,
): Promise<Answer> {
  const headers: Record<string, string> = {};
  if (target.token !== undefined) headers.authorization = `Bearer ${target.token}`;
  if (body !== undefined) headers['content-type'] = body instanceof RawBody ? body.type : 'application/json';
  const payload = body === undefined ? undefined : body instanceof RawBody ? body.bytes : JSON.stringify(body);
  let response: Response;
  try {
    response = await fetch(`${target.url}${path}`, {
      method,
      headers,
      ...(payload === undefined ? {} : { body: payload }),
      signal: AbortSignal.timeout(ANSWER_TIMEOUT_MS),
    });
  } catch (error) {
    throw new ServerAnswerError('ERR_SANDPOOL_HTTP_UNREACHABLE', `cannot reach ${target.url}: ${why(error)}`, null);
  }
  const text = await response.text();
  let parsed: unknown = null;
  try {
    parsed = text === '' ? null : JSON.parse(text);
  } catch {
    // Not JSON (a proxy's HTML page): judged by its status below.
  }
  return { status: response.status, node: response.headers.get('x-sandpool-node'), body: parsed };
}

/** The error a non-2xx answer stands for, in the server's own words when it sent them. */
export function answerError(answer: Answer): ServerAnswerError {
  const error = ErrorBodySchema.safeParse(answer.body);
  if (error.success) return new ServerAnswerError(error.data.code, error.data.message, answer.status);
  return new ServerAnswerError('ERR_SANDPOOL_HTTP_UNEXPECTED', `the server answered ${answer.status}`, answer.status);
}

/** Checks a 2xx body against what this CLI understands; a mismatch means the server is of another version. */
export function expectBody<T>(schema: z.ZodType<T>, answer: Answer): T {
  if (answer.status < 200 || answer.status > 299) throw answerError(answer);
  const parsed = schema.safeParse(answer.body);
  if (!parsed.success) {
    throw new ServerAnswerError(
      'ERR_SANDPOOL_HTTP_UNEXPECTED',
      `unexpected answer from the server: ${parsed.error.issues[0]?.message ?? 'wrong shape'}`,
      answer.status,
    );
  }
  return parsed.data;
}

function why(error: unknown): string {
  if (error instanceof Error && error.name === 'TimeoutError') return `no answer within ${ANSWER_TIMEOUT_MS / 1000} s`;
  const cause = error instanceof Error ? error.cause : undefined;
  if (typeof cause === 'object' && cause !== null && 'code' in cause && typeof cause.code === 'string')
    return cause.code;
  return error instanceof Error ? error.message : String(error);
}
