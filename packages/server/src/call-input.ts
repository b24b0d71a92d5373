import { AgentKeySchema, formatKey, parseKey, type SandpoolError, type SandpoolIssue } from 'sandpool';
import { z } from 'zod';
import { invalidKeyIn, invalidRequest } from './errors.js';

/**
 * The call body. `key` is checked apart, with the library's own key schema, so its failures
 * are ERR_SANDPOOL_INVALID_KEY; `timeoutMs` only has to be a number here: the pool's call
 * options schema judges its range, so the rule lives in one place.
 */
const CallBodySchema = z.strictObject(
  {
    key: z.unknown().optional(),
    fn: z.string({ error: 'fn must be a string' }),
    args: z.array(z.unknown(), { error: 'args must be an array' }).default([]),
    timeoutMs: z.number({ error: 'timeoutMs must be a number' }).optional(),
  },
  { error: 'the body must be a JSON object' },
);

export type CallKind = 'live' | 'snapshot';

export interface CallInput {
  /** Text form: the pool caches validated text keys, so this is the cheap way to pass it on. */
  readonly key: string;
  readonly kind: CallKind;
  /** Whose key it is: what a scoped token is checked against. */
  readonly swarm: string;
  readonly fn: string;
  readonly args: unknown[];
  readonly timeoutMs: number | undefined;
}

/** Where a key may come from; the balancer hashes the path or the header, never the body. */
export interface KeySources {
  readonly path?: string | undefined;
  readonly header?: string | string[] | undefined;
}

export function readCallInput(body: unknown, sources: KeySources): CallInput {
  const parsed = CallBodySchema.safeParse(body);
  if (!parsed.success) {
    throw invalidRequest('call body', issuesOf(parsed.error.issues, []));
  }
  const { fn, args, timeoutMs } = parsed.data;
  const { key, kind, swarm } = pickKey(sources, parsed.data.key);
  return { key, kind, swarm, fn, args, timeoutMs };
}

interface NormalKey {
  key: string;
  kind: CallKind;
  swarm: string;
}

function pickKey(sources: KeySources, bodyKey: unknown): NormalKey {
  if (Array.isArray(sources.header)) throw invalid('x-sandpool-key must be sent once');
  const given: [string, unknown][] = [
    ['path', sources.path],
    ['x-sandpool-key header', sources.header],
    ['body', bodyKey],
  ];
  let chosen: (NormalKey & { from: string }) | null = null;
  for (const [from, value] of given) {
    if (value === undefined || value === '') continue;
    const key = normalize(value, from);
    if (chosen !== null && chosen.key !== key.key) {
      throw invalid(`the key in the ${from} (${key.key}) differs from the one in the ${chosen.from} (${chosen.key})`);
    }
    chosen ??= { ...key, from };
  }
  if (chosen === null)
    throw invalid('no key: give it in the path (/v1/call/<key>), the x-sandpool-key header or the body');
  return { key: chosen.key, kind: chosen.kind, swarm: chosen.swarm };
}

const cache = new Map<string, NormalKey>();
const CACHE_LIMIT = 10_000;

/** Validates a key in either form; text keys are cached because the same few arrive again and again. */
function normalize(value: unknown, from: string): NormalKey {
  if (typeof value === 'string') {
    const hit = cache.get(value);
    if (hit !== undefined) return hit;
    const key = parseKey(value);
    const result = { key: formatKey(key), kind: kindOf(key.snapshot), swarm: key.swarm };
    if (cache.size >= CACHE_LIMIT) cache.clear();
    cache.set(value, result);
    return result;
  }
  const parsed = AgentKeySchema.safeParse(value);
  if (!parsed.success) {
    const issues = issuesOf(parsed.error.issues, ['key']);
    const fields = [...new Set(issues.map((issue) => issue.path.join('.')))].join(', ');
    throw invalidKeyIn(`invalid agent key in the ${from}: ${fields}`, issues);
  }
  return { key: formatKey(parsed.data), kind: kindOf(parsed.data.snapshot), swarm: parsed.data.swarm };
}

function kindOf(snapshot: string | null | undefined): CallKind {
  return snapshot === null || snapshot === undefined ? 'live' : 'snapshot';
}

function invalid(message: string): SandpoolError {
  return invalidKeyIn(message, [{ path: ['key'], message }]);
}

function issuesOf(issues: readonly z.core.$ZodIssue[], prefix: PropertyKey[]): SandpoolIssue[] {
  return issues.map(({ path, message, code }) => ({ path: [...prefix, ...path], message, code }));
}

/**
 * The server's call timeout bounds every call: a client may ask for less, never for more,
 * and its 0 ("no limit") means the server's limit. Negative or fractional values are left
 * for the pool's schema to refuse.
 */
function capTimeout(requested: number | undefined, cap: number): number | undefined {
  if (requested === undefined || cap === 0 || requested < 0 || !Number.isInteger(requested)) return requested;
  return requested === 0 ? cap : Math.min(requested, cap);
}

/** The pool options of an HTTP call: its timeout, bounded by the server's (see capTimeout). */
export function callOptionsFor(input: CallInput, capMs: number): { timeoutMs?: number } {
  const timeoutMs = capTimeout(input.timeoutMs, capMs);
  return timeoutMs === undefined ? {} : { timeoutMs };
}
