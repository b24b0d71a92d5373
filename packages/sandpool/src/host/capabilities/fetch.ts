/**
 * The built-in `fetch` capability: HTTP(S) for agents through the host, under a per-swarm
 * policy. undici does the HTTP (the client Node's own `fetch` is built on), through an
 * `Agent` of this fetcher's own whose connector enforces the address rule
 * (fetch-connect.ts); never the global dispatcher, which the embedding application may
 * have pointed at a proxy. Redirects are followed here, each hop checked like the first, so
 * an allowed origin cannot send the request somewhere else. Every request is bounded in
 * bytes both ways and in time, and ends when the caller's signal fires.
 */
import type { Readable } from 'node:stream';
import { Agent } from 'undici';
import { z } from 'zod';
import {
  accessDenied,
  badRequest,
  bodyTooLarge,
  fetchAborted,
  fetchTimeout,
  isSandpoolError,
  type SandpoolError,
} from '../../errors.js';
import { issuesOf } from '../../issues.js';
import { guardedConnector } from './fetch-connect.js';
import { type FetchPolicy, headerProblem, parseFetchPolicy, type ResolvedFetchPolicy, TOKEN } from './fetch-policy.js';

/** What an agent passes with the URL; the body is sent as given (a string as UTF-8). */
export interface FetchInit {
  method?: string;
  headers?: Readonly<Record<string, string>> | readonly (readonly [string, string])[];
  body?: string | Uint8Array | null;
}

export interface FetchResponse {
  status: number;
  statusText: string;
  /** In the order received, names as sent; without `set-cookie` (the capability keeps no cookies, and they can carry a session the host's secrets opened). */
  headers: [string, string][];
  /** The URL of the last hop. */
  url: string;
  redirected: boolean;
  /** The bytes of the body as they arrive, each chunk a copy of its own; read it, or `return()` it to let the connection go. */
  body: AsyncIterable<Uint8Array>;
}

export type Fetcher = ((url: string, init: FetchInit | undefined, signal: AbortSignal) => Promise<FetchResponse>) & {
  /** Ends every connection of this fetcher, idle or in use. */
  close(): Promise<void>;
};

/** The request headers an agent may send, in bytes: servers refuse more than this anyway. */
const MAX_HEADER_BYTES = 64 * 1024;
const REDIRECTS = new Set([301, 302, 303, 307, 308]);
/** Removed on a redirect to another origin (the fetch standard removes the first; undici removes both). */
const CREDENTIALS = ['authorization', 'cookie'];
/** Removed when a redirect turns the request into a GET. */
const BODY_HEADERS = ['content-type', 'content-encoding', 'content-language', 'content-location'];
const NO_BODY = new Set(['GET', 'HEAD']);
/** Methods the fetch standard forbids. */
const FORBIDDEN_METHODS = new Set(['CONNECT', 'TRACE', 'TRACK']);
/** Methods the fetch standard upper-cases. */
const NORMALISED_METHODS = new Set(['DELETE', 'GET', 'HEAD', 'OPTIONS', 'POST', 'PUT']);
/** A network error's code as the agent sees it: a short token, like Node's own (`ECONNREFUSED`, `UND_ERR_SOCKET`). */
const NETWORK_CODE = /^[A-Z][A-Z0-9_]{0,63}$/;

const InitSchema = z
  .strictObject({
    method: z.string().max(64).regex(TOKEN, 'method must be a token').optional(),
    headers: z.union([z.record(z.string(), z.string()), z.array(z.tuple([z.string(), z.string()]))]).optional(),
    body: z.union([z.string(), z.instanceof(Uint8Array), z.null()]).optional(),
  })
  .optional();

interface Hop {
  readonly url: URL;
  readonly method: string;
  /** The agent's own headers, names in lower case; the origin's secrets are added per hop. */
  readonly headers: readonly (readonly [string, string])[];
  readonly body: Uint8Array | null;
}

/**
 * Makes the `fetch` of one swarm from its policy (checked here: a bad one throws
 * `ERR_SANDPOOL_INVALID_OPTIONS`). The fetcher refuses an origin the policy does not list,
 * and an address it may not reach, with `ERR_SANDPOOL_ACCESS_DENIED`; a request or response
 * body past its bound with `ERR_SANDPOOL_DATA_CLONE` (as for arguments and results too
 * large); the policy's timeout with `ERR_SANDPOOL_TIMEOUT`; the caller's signal with
 * `ERR_SANDPOOL_ABORTED`. Network failures reject with an `Error` whose `code` is the
 * system's or undici's (`ECONNREFUSED`…) and whose message names only the origin.
 */
export function createFetcher(policy: FetchPolicy): Fetcher {
  const resolved = parseFetchPolicy(policy);
  const agent = new Agent({ connect: guardedConnector(resolved.allow, resolved.lookup) });
  const fetcher = (url: string, init: FetchInit | undefined, signal: AbortSignal): Promise<FetchResponse> =>
    fetchWith(resolved, agent, url, init, signal);
  return Object.assign(fetcher, { close: () => agent.destroy() });
}

async function fetchWith(
  policy: ResolvedFetchPolicy,
  agent: Agent,
  url: string,
  init: FetchInit | undefined,
  signal: AbortSignal,
): Promise<FetchResponse> {
  let hop = firstHop(policy, url, init);
  const deadline = new Deadline(policy.timeoutMs, signal);
  try {
    for (let redirects = 0; ; redirects += 1) {
      // undici would still open a connection for a signal already aborted.
      if (deadline.signal.aborted) throw deadline.signal.reason;
      const secrets = policy.secrets.get(hop.url.origin) ?? [];
      const named = new Set(secrets.map(([name]) => name));
      const headers = [...hop.headers.filter(([name]) => !named.has(name)), ...secrets].flat();
      const response = await agent.request({
        origin: hop.url.origin,
        path: hop.url.pathname + hop.url.search,
        method: hop.method,
        headers,
        body: hop.body,
        signal: deadline.signal,
        responseHeaders: 'raw',
      });
      // undici errors a body destroyed before its end (by an abort, the deadline, or us), and
      // an 'error' with no listener would end the host: the agent meets it through the iterator.
      response.body.on('error', ignore);
      const raw = rawHeaders(response.headers);
      const location = REDIRECTS.has(response.statusCode) ? headerOf(raw, 'location') : undefined;
      if (location === undefined) {
        const declared = Number(headerOf(raw, 'content-length'));
        if (declared > policy.maxResponseBytes) {
          response.body.destroy();
          throw bodyTooLarge('response', policy.maxResponseBytes);
        }
        return {
          status: response.statusCode,
          statusText: response.statusText,
          headers: raw.filter(([name]) => !/^set-cookie2?$/i.test(name)),
          url: hop.url.href,
          redirected: redirects > 0,
          body: boundedBody(response.body, policy.maxResponseBytes, deadline),
        };
      }
      response.body.destroy();
      if (redirects === policy.maxRedirects) {
        throw new FetchFailure(`fetch: more than ${policy.maxRedirects} redirects`, 'ERR_TOO_MANY_REDIRECTS');
      }
      hop = redirectOf(policy, hop, response.statusCode, location);
    }
  } catch (error) {
    deadline.end();
    throw failure(error, deadline, hop.url.origin);
  }
}

function ignore(): void {}

function invalid(message: string, path: (string | number)[]): SandpoolError {
  return badRequest(message, [{ path, message }]);
}

function notAllowed(origin: string): SandpoolError {
  return accessDenied(`${origin} is not an allowed origin`);
}

/** The agent's request checked: what is wrong is refused before anything is sent. */
function firstHop(policy: ResolvedFetchPolicy, href: unknown, init: unknown): Hop {
  if (typeof href !== 'string') throw invalid('the URL must be a string', ['url']);
  const parsed = InitSchema.safeParse(init);
  if (!parsed.success) {
    const issues = issuesOf(parsed.error);
    throw badRequest(issues[0]?.message ?? 'invalid request', issues);
  }
  let url: URL;
  try {
    url = new URL(href);
  } catch {
    throw invalid('the URL cannot be parsed', ['url']);
  }
  if (url.username !== '' || url.password !== '') {
    throw invalid('credentials in the URL are not sent; the host adds an origin’s secrets', ['url']);
  }
  if (!policy.allow.has(url.origin)) throw notAllowed(url.origin);
  url.hash = '';

  const given = parsed.data?.method ?? 'GET';
  const method = NORMALISED_METHODS.has(given.toUpperCase()) ? given.toUpperCase() : given;
  if (FORBIDDEN_METHODS.has(method.toUpperCase())) throw invalid(`method ${method} is not allowed`, ['method']);

  const headers = agentHeaders(parsed.data?.headers ?? []);
  const body = bodyOf(parsed.data?.body ?? null, policy.maxRequestBytes);
  if (body !== null && NO_BODY.has(method)) throw invalid(`a ${method} request has no body`, ['body']);
  return { url, method, headers, body };
}

function agentHeaders(
  given: Readonly<Record<string, string>> | readonly (readonly [string, string])[],
): Hop['headers'] {
  const entries = Array.isArray(given) ? given : Object.entries(given);
  let bytes = 0;
  const out: [string, string][] = [];
  for (const [index, [rawName, value]] of entries.entries()) {
    const name = rawName.toLowerCase();
    const problem = headerProblem(name, value);
    if (problem !== null) throw invalid(problem, ['headers', Array.isArray(given) ? index : rawName]);
    bytes += name.length + value.length + 4;
    if (bytes > MAX_HEADER_BYTES) throw invalid(`the headers are larger than ${MAX_HEADER_BYTES} bytes`, ['headers']);
    out.push([name, value]);
  }
  return out;
}

function bodyOf(body: string | Uint8Array | null, bound: number): Uint8Array | null {
  if (body === null) return null;
  // Measured before any copy: a string's UTF-8 length is counted without encoding it.
  const size = typeof body === 'string' ? Buffer.byteLength(body, 'utf8') : body.byteLength;
  if (size > bound) throw bodyTooLarge('request', bound);
  return typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
}

/** undici's `responseHeaders: 'raw'` gives `[name, value, name, value…]`; pairs are what the agent gets. */
function rawHeaders(flat: unknown): [string, string][] {
  const list = flat as readonly string[];
  const pairs: [string, string][] = [];
  for (let at = 0; at + 1 < list.length; at += 2) pairs.push([String(list[at]), String(list[at + 1])]);
  return pairs;
}

function headerOf(headers: readonly [string, string][], wanted: string): string | undefined {
  return headers.find(([name]) => name.toLowerCase() === wanted)?.[1];
}

/** The next hop of a redirect, checked like a first request. */
function redirectOf(policy: ResolvedFetchPolicy, hop: Hop, status: number, location: string): Hop {
  let url: URL;
  try {
    url = new URL(location, hop.url);
  } catch {
    throw new FetchFailure('fetch: a redirect to a location that cannot be parsed', 'ERR_INVALID_REDIRECT');
  }
  if (!policy.allow.has(url.origin)) throw notAllowed(url.origin);
  url.hash = '';
  url.username = '';
  url.password = '';
  const toGet =
    (status === 303 && !NO_BODY.has(hop.method)) || ((status === 301 || status === 302) && hop.method === 'POST');
  const crossOrigin = url.origin !== hop.url.origin;
  const dropped = new Set([...(toGet ? BODY_HEADERS : []), ...(crossOrigin ? CREDENTIALS : [])]);
  return {
    url,
    method: toGet ? 'GET' : hop.method,
    headers: hop.headers.filter(([name]) => !dropped.has(name)),
    body: toGet ? null : hop.body,
  };
}

/**
 * The body as the agent reads it: counted as it arrives, and ended (connection closed) past
 * the bound, at the deadline or on the caller's abort. Not a generator: a generator never
 * started ignores `return()`, and the connection would wait for the timeout to be let go.
 */
function boundedBody(body: Readable, bound: number, deadline: Deadline): AsyncIterableIterator<Uint8Array> {
  const chunks = body[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  let received = 0;
  const finish = (): void => {
    body.destroy();
    deadline.end();
  };
  return {
    async next() {
      try {
        if (deadline.signal.aborted) throw deadline.signal.reason;
        const step = await chunks.next();
        if (step.done === true) {
          finish();
          return { done: true, value: undefined };
        }
        received += step.value.byteLength;
        if (received > bound) deadline.fail(bodyTooLarge('response', bound));
        if (deadline.signal.aborted) throw deadline.signal.reason;
        return { done: false, value: new Uint8Array(step.value) };
      } catch (error) {
        finish();
        throw failure(error, deadline, 'the response');
      }
    },
    async return() {
      finish();
      return { done: true, value: undefined };
    },
    [Symbol.asyncIterator]() {
      return this;
    },
  };
}

/**
 * What a failed request rejects with: the deadline's own reason when it fired (timeout,
 * abort, a bound), a SandpoolError as it is, and anything else as a network error that keeps
 * only its code. undici's messages are not passed on: the agent learns the origin and the
 * code, never an address, a header or a secret.
 */
function failure(error: unknown, deadline: Deadline, origin: string): Error {
  if (deadline.signal.aborted) return deadline.signal.reason as Error;
  if (isSandpoolError(error) || error instanceof FetchFailure) return error;
  const code = (error as { code?: unknown } | null)?.code;
  const known = typeof code === 'string' && NETWORK_CODE.test(code) ? code : 'ERR_FETCH_FAILED';
  return new FetchFailure(`fetch: ${origin} failed (${known})`, known);
}

/** A failure that is not sandpool's to name: the agent matches on `code`, as on Node's own errors. */
class FetchFailure extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
  }
}

/**
 * One request's end: the policy's timeout, the caller's signal, or a bound passed, whichever
 * comes first, as the reason of the signal undici is given (aborting it closes the connection).
 */
class Deadline {
  private readonly controller = new AbortController();
  private readonly timer: NodeJS.Timeout;
  private readonly onAbort = (): void => this.fail(fetchAborted());

  constructor(
    timeoutMs: number,
    private readonly caller: AbortSignal,
  ) {
    this.timer = setTimeout(() => this.fail(fetchTimeout(timeoutMs)), timeoutMs).unref();
    if (caller.aborted) this.onAbort();
    else caller.addEventListener('abort', this.onAbort, { once: true });
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  fail(reason: SandpoolError): void {
    if (!this.controller.signal.aborted) this.controller.abort(reason);
    this.end();
  }

  end(): void {
    clearTimeout(this.timer);
    this.caller.removeEventListener('abort', this.onAbort);
  }
}
