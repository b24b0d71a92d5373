import { z } from 'zod';
import { invalidKey } from './errors.js';
import { issuesOf } from './issues.js';
import { isReservedSwarm, SWARM } from './swarm-name.js';

export { isReservedSwarm } from './swarm-name.js';

const SNAPSHOT = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const STEM = /^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}$/;

export const SwarmSchema = z
  .string()
  .regex(SWARM, 'swarm must match ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$')
  .refine((name) => !isReservedSwarm(name), 'swarm must not be node_modules, a folder name Node reserves');
export const SnapshotNameSchema = z
  .string()
  .regex(SNAPSHOT, 'snapshot must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$')
  // The pattern admits dots for names like `2026.01`, but `..` must never reach a path.
  .refine((name) => !name.includes('..'), 'snapshot must not contain ".."');
export const StemSchema = z.string().regex(STEM, 'stem must match ^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}$');

export const AgentKeySchema = z.strictObject({
  swarm: SwarmSchema,
  snapshot: SnapshotNameSchema.nullable().optional(),
  stem: StemSchema,
});

/** `snapshot` absent or null means the swarm's live code. */
export type AgentKey = z.input<typeof AgentKeySchema>;

/** The validated key with `snapshot` made explicit. */
export interface ResolvedKey {
  readonly swarm: string;
  readonly snapshot: string | null;
  readonly stem: string;
  /** Text form, the key's identity inside the pool. */
  readonly text: string;
}

export function formatKey(key: AgentKey): string {
  const { swarm, snapshot, stem } = toResolvedKey(key);
  return snapshot === null ? `${swarm}/${stem}` : `${swarm}@${snapshot}/${stem}`;
}

const TEXT_FORM = /^([^@/]*)(?:@([^/]*))?\/([^/]*)$/;

/** Parses `swarm/stem` or `swarm@snapshot/stem`; throws ERR_SANDPOOL_INVALID_KEY on bad text. */
export function parseKey(text: string): { swarm: string; snapshot: string | null; stem: string } {
  const { swarm, snapshot, stem } = parseKeyText(text);
  return { swarm, snapshot, stem };
}

function parseKeyText(text: unknown): ResolvedKey {
  if (typeof text !== 'string') {
    throw invalidKey(String(text), [{ path: [], message: 'key must be a string or an object' }]);
  }
  const match = TEXT_FORM.exec(text);
  if (match === null) {
    throw invalidKey(text, [{ path: [], message: 'key text must be swarm/stem or swarm@snapshot/stem' }]);
  }
  const [, swarm, snapshot, stem] = match;
  return toResolvedKey({ swarm: swarm ?? '', snapshot: snapshot ?? null, stem: stem ?? '' }, text);
}

function toResolvedKey(key: unknown, shownAs?: string): ResolvedKey {
  const parsed = AgentKeySchema.safeParse(key);
  if (!parsed.success) {
    throw invalidKey(shownAs ?? safeJson(key), issuesOf(parsed.error));
  }
  const { swarm, stem } = parsed.data;
  const snapshot = parsed.data.snapshot ?? null;
  const text = snapshot === null ? `${swarm}/${stem}` : `${swarm}@${snapshot}/${stem}`;
  return { swarm, snapshot, stem, text };
}

const textCache = new Map<string, ResolvedKey>();
const TEXT_CACHE_LIMIT = 10_000;

/**
 * Validates a key given in either form. Text keys are cached: the hot path of `call`
 * sees the same few keys again and again, and re-running the schema costs more than the RPC.
 */
export function resolveKey(key: AgentKey | string): ResolvedKey {
  if (typeof key !== 'string') return fastResolve(key) ?? toResolvedKey(key);
  const cached = textCache.get(key);
  if (cached !== undefined) return cached;
  const resolved = parseKeyText(key);
  if (textCache.size >= TEXT_CACHE_LIMIT) textCache.clear();
  textCache.set(key, resolved);
  return resolved;
}

/**
 * The schema's checks by hand, for the well-formed object keys of the hot path (zod costs
 * about half a microsecond a key); null sends anything else through the schema, which also
 * explains what is wrong.
 */
function fastResolve(key: unknown): ResolvedKey | null {
  if (typeof key !== 'object' || key === null || Object.getPrototypeOf(key) !== Object.prototype) return null;
  for (const name in key) if (name !== 'swarm' && name !== 'snapshot' && name !== 'stem') return null;
  const { swarm, snapshot, stem } = key as Record<string, unknown>;
  if (typeof swarm !== 'string' || !SWARM.test(swarm) || isReservedSwarm(swarm)) return null;
  if (typeof stem !== 'string' || !STEM.test(stem)) return null;
  if (snapshot === undefined || snapshot === null) return { swarm, snapshot: null, stem, text: `${swarm}/${stem}` };
  if (typeof snapshot !== 'string' || !SNAPSHOT.test(snapshot) || snapshot.includes('..')) return null;
  return { swarm, snapshot, stem, text: `${swarm}@${snapshot}/${stem}` };
}

function safeJson(value: unknown): string {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}
