/**
 * The `fetch` capability's per-swarm policy: which origins an agent may reach, the headers
 * the host adds for each (its secrets), and the bounds of one request. Checked once, when
 * the fetcher is made; origins are compared in the WHATWG URL's own form, so
 * `https://API.example.com:443/` and `https://api.example.com` are one origin.
 */
import { z } from 'zod';
import { invalidOptions } from '../../errors.js';
import { issuesOf } from '../../issues.js';
import type { FetchPolicy as PublicFetchPolicy } from '../../types.js';

/**
 * Resolves a host name to the addresses to try, in order. Every address it returns is
 * checked at connect time like a DNS answer, so it cannot widen what is reached; it exists
 * so tests can make a name resolve where they need without touching `/etc/hosts`.
 */
export type FetchLookup = (hostname: string) => Promise<readonly string[]>;

/** setTimeout's ceiling. */
const MAX_MS = 2_147_483_647;
const MIB = 1024 * 1024;
/** Origins one policy may list: the allowlist is read on every request and hop. */
const MAX_ORIGINS = 1000;

/** RFC 9110 `token`: the characters a method or a header name may have. */
export const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** A header value: Latin-1 without control characters (tab allowed), so no CR/LF can split a request. */
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

/**
 * Headers the capability frames itself: where a request goes (`host`, which would otherwise
 * reach another virtual host behind an allowed address), how it is delimited, and proxy
 * credentials. Neither a secret nor an agent may set them.
 */
const FRAMING = new Set([
  'host',
  'connection',
  'keep-alive',
  'transfer-encoding',
  'content-length',
  'te',
  'trailer',
  'upgrade',
  'expect',
  'http2-settings',
]);

/** Why a header cannot be sent as given, or null; `name` in lower case. */
export function headerProblem(name: string, value: string): string | null {
  if (!TOKEN.test(name)) return `header name ${JSON.stringify(name.slice(0, 64))} is not a token`;
  if (FRAMING.has(name) || name.startsWith('proxy-')) return `header ${name} is set by the host`;
  if (!FIELD_VALUE.test(value)) return `header ${name} has a value with control or non-Latin-1 characters`;
  return null;
}

/** `text` as an origin (`scheme://host[:port]`, default port dropped), or null when it is not an http(s) origin alone. */
export function originOf(text: string): string | null {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return null;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return null;
  if (url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '' || url.pathname !== '/') {
    return null;
  }
  return url.origin;
}

const Origin = z.string().transform((text, ctx) => {
  const origin = originOf(text);
  if (origin === null) {
    ctx.addIssue({ code: 'custom', message: `${JSON.stringify(text.slice(0, 200))} is not an http(s) origin` });
    return z.NEVER;
  }
  return origin;
});

const SecretSchema = z.strictObject({
  headers: z.record(z.string(), z.string()).transform((headers, ctx) => {
    const out: [string, string][] = [];
    for (const [given, value] of Object.entries(headers)) {
      const name = given.toLowerCase();
      const problem = headerProblem(name, value);
      // The message names the header, never its value: the value is the secret.
      if (problem !== null) ctx.addIssue({ code: 'custom', message: problem, path: [given] });
      else if (out.some(([seen]) => seen === name)) {
        ctx.addIssue({ code: 'custom', message: `header ${name} is given twice`, path: [given] });
      } else out.push([name, value]);
    }
    return out;
  }),
});

const bytes = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);

export const FetchPolicySchema = z
  .strictObject({
    /** Origins that may be reached, e.g. `https://api.example.com` or `http://127.0.0.1:8080`. */
    allow: z.array(Origin).min(1).max(MAX_ORIGINS),
    /** Headers the host adds to every request to that origin (a listed one); the agent never sees them. */
    secrets: z.record(z.string(), SecretSchema).default({}),
    /** Bytes of one request body at most. */
    maxRequestBytes: bytes.default(MIB),
    /** Bytes of one response body at most: past it the body errors and the connection is closed. */
    maxResponseBytes: bytes.default(10 * MIB),
    /** The whole request, redirects and body included, from the call to the body's last byte. */
    timeoutMs: z.number().int().positive().max(MAX_MS).default(30_000),
    /** Redirects followed at most; each hop is checked like the first request. */
    maxRedirects: z.number().int().nonnegative().max(20).default(5),
    /** Name resolution (default: the system's, as `dns.lookup`); meant for tests, checked like DNS. */
    lookup: z.custom<FetchLookup>((value) => typeof value === 'function', 'lookup must be a function').optional(),
  })
  .transform((policy, ctx) => {
    const allow = new Set(policy.allow);
    const secrets = new Map<string, readonly (readonly [string, string])[]>();
    for (const [given, secret] of Object.entries(policy.secrets)) {
      const origin = originOf(given);
      if (origin === null || !allow.has(origin)) {
        ctx.addIssue({
          code: 'custom',
          message: 'secrets are given only for listed origins',
          path: ['secrets', given],
        });
      } else if (secrets.has(origin)) {
        ctx.addIssue({ code: 'custom', message: `secrets for ${origin} are given twice`, path: ['secrets', given] });
      } else secrets.set(origin, secret.headers);
    }
    return { ...policy, allow, secrets };
  });

/** The policy as given to the pool, one per swarm (the public type; the schema is its check). */
export type FetchPolicy = PublicFetchPolicy;
export type ResolvedFetchPolicy = z.output<typeof FetchPolicySchema>;

export function parseFetchPolicy(policy: unknown): ResolvedFetchPolicy {
  const parsed = FetchPolicySchema.safeParse(policy);
  if (parsed.success) return parsed.data;
  throw invalidOptions('fetch policy', issuesOf(parsed.error));
}
