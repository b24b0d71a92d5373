import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { parseKey } from 'sandpool';
import { z } from 'zod';
import type { ServerContext } from '../context.js';
import { invalidRequest, noSwarm, type Scrub } from '../errors.js';
import { authorize } from '../guard.js';
import { type ServerErrorCode, statusOf } from '../status.js';

/** Only the shape is checked here; the names go to the pool, whose key schema judges them. */
const InvalidateBodySchema = z.strictObject(
  {
    snapshot: z.string({ error: 'snapshot must be a string' }).nullable().optional(),
    stem: z.string({ error: 'stem must be a string' }).optional(),
  },
  { error: 'the body must be a JSON object' },
);

export interface InvalidateAnswer {
  reloaded: string[];
  failed: { key: string; code: string; message: string }[];
}

/**
 * `POST /v1/swarms/:swarm/invalidate`: reloads this node's workers of the swarm (live by
 * default, or one snapshot, or one stem) blue-green. A key whose new code fails to load
 * keeps serving its old code; that is a partial failure, answered 409 with the full report
 * and the documented `code`/`message`, so a client that only reads the error shape still
 * sees that something went wrong.
 */
export function registerInvalidateRoutes(app: FastifyInstance, { pool, root, scrub }: ServerContext): void {
  app.post<{ Params: { swarm: string } }>('/v1/swarms/:swarm/invalidate', async (request, reply) => {
    const { swarm } = request.params;
    // A bad name answers ERR_SANDPOOL_INVALID_KEY before the token is looked at, as the stems route does.
    parseKey(`${swarm}/x`);
    const parsed = InvalidateBodySchema.safeParse(request.body ?? {});
    if (!parsed.success) {
      const issues = parsed.error.issues.map(({ path, message }) => ({ path, message }));
      throw invalidRequest('invalidate body', issues);
    }
    authorize(request, swarm, 'write');
    // Checked after the token, so a scoped token cannot learn which other swarms exist.
    const folder = await stat(join(root, swarm)).catch(() => null);
    if (folder === null || !folder.isDirectory()) {
      throw noSwarm(swarm);
    }
    const report = await pool.invalidate({ swarm, ...parsed.data });
    const answer = toAnswer(report, scrub);
    if (answer.failed.length === 0) return answer;
    const code: ServerErrorCode = 'ERR_SANDPOOL_HTTP_RELOAD_FAILED';
    const message = `${answer.failed.length} of ${answer.failed.length + answer.reloaded.length} keys failed to load their new code and keep serving the old`;
    return reply.code(statusOf(code)).send({ code, message, ...answer });
  });
}

function toAnswer(report: Awaited<ReturnType<ServerContext['pool']['invalidate']>>, scrub: Scrub): InvalidateAnswer {
  return {
    reloaded: [...report.reloaded].sort(),
    failed: report.failed
      .map(({ key, error }) => ({ key, code: error.code, message: scrub(error.message) }))
      .sort((a, b) => (a.key < b.key ? -1 : 1)),
  };
}
