import type { FastifyInstance } from 'fastify';
import type { KeyStats } from 'sandpool';
import { z } from 'zod';
import type { ServerContext } from '../context.js';
import { invalidRequest } from '../errors.js';
import { scopeOf, visibleSwarms } from '../guard.js';
import { publicLayers } from '../sandbox-layers.js';

/** The fields `?sort=` may name: each is a number where larger means "look here first". */
export const KEY_SORTS = ['cpuMs', 'calls', 'errors', 'inFlight', 'heapBytes'] as const;
export type KeySort = (typeof KEY_SORTS)[number];

export const MAX_KEYS_LIMIT = 1_000;
const DEFAULT_LIMIT = 100;

/** Query values arrive as text; digits only, so `limit= 5` or `limit=1e3` is refused rather than guessed at. */
const KeysQuerySchema = z.strictObject({
  sort: z.enum(KEY_SORTS, { error: `sort must be one of ${KEY_SORTS.join(', ')}` }).default('cpuMs'),
  limit: z
    .string({ error: 'limit must be given once' })
    .regex(/^\d{1,7}$/, 'limit must be a whole number')
    .transform(Number)
    .pipe(z.number().min(1, 'limit must be at least 1').max(MAX_KEYS_LIMIT, `limit must be at most ${MAX_KEYS_LIMIT}`))
    .optional(),
});

/**
 * `GET /v1/keys`: the pool's per-key figures for the swarms the token reaches, busiest
 * first. `total` counts the keys the token could see, so a client knows when `limit` cut.
 */
export function registerKeyRoutes(app: FastifyInstance, { pool, options }: ServerContext): void {
  app.get('/v1/keys', async (request) => {
    const parsed = KeysQuerySchema.safeParse(request.query ?? {});
    if (!parsed.success) {
      const issues = parsed.error.issues.map(({ path, message }) => ({ path, message }));
      throw invalidRequest('query', issues);
    }
    const { sort, limit = DEFAULT_LIMIT } = parsed.data;
    const all = pool.keyStats();
    const allowed = new Set(visibleSwarms(request, [...new Set(all.map((stats) => stats.swarm))]));
    const keys = all.filter((stats) => allowed.has(stats.swarm)).sort(byField(sort));
    // Which sandbox layers process keys get is no secret (/healthz says it to anyone).
    const sandbox = publicLayers(pool.stats().sandbox);
    const answer = { node: options.nodeName, sort, total: keys.length, keys: keys.slice(0, limit), sandbox };
    // The process's CPU no key owns sums every tenant's pool work: for a token that reaches all.
    return scopeOf(request) === '*' ? { ...answer, unattributedCpu: pool.stats().unattributedCpu } : answer;
  });
}

/** Descending; a key whose heap has not been read yet goes after every key that has; ties by key text, so pages are stable. */
function byField(field: KeySort): (a: KeyStats, b: KeyStats) => number {
  return (a, b) => (b[field] ?? -1) - (a[field] ?? -1) || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
}
