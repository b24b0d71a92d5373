import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import type { ServerContext } from '../context.js';
import { invalidRequest } from '../errors.js';
import { authorize } from '../guard.js';

interface SwarmParams {
  swarm: string;
}
interface SnapshotParams extends SwarmParams {
  name: string;
}

/** Only the shape is checked here; the store's schema judges the name. */
const PointBodySchema = z.strictObject(
  { target: z.string({ error: 'target must be a string' }) },
  { error: 'the body must be a JSON object' },
);

/**
 * The pool's snapshot store over HTTP. Every node serves the same root, so any node may
 * answer; `create` resolves to the existing snapshot when the live content is the same,
 * so a retried or repeated create is safe. The store validates the names itself. Creating,
 * pointing and removing need a token with `write`; reading and verifying do not.
 */
export function registerSnapshotRoutes(app: FastifyInstance, { pool }: ServerContext): void {
  app.get<{ Params: SwarmParams }>('/v1/swarms/:swarm/snapshots', async (request) => {
    authorize(request, request.params.swarm, 'read');
    return { snapshots: await pool.snapshots.list(request.params.swarm) };
  });
  app.get<{ Params: SnapshotParams }>('/v1/swarms/:swarm/snapshots/:name', async (request) => {
    authorize(request, request.params.swarm, 'read');
    return { snapshot: await pool.snapshots.get(request.params.swarm, request.params.name) };
  });
  app.post<{ Params: SnapshotParams }>('/v1/swarms/:swarm/snapshots/:name', async (request) => {
    authorize(request, request.params.swarm, 'write');
    return { snapshot: await pool.snapshots.create(request.params.swarm, request.params.name) };
  });
  app.post<{ Params: SnapshotParams }>('/v1/swarms/:swarm/snapshots/:name/verify', async (request) => {
    authorize(request, request.params.swarm, 'read');
    return { snapshot: await pool.snapshots.verify(request.params.swarm, request.params.name) };
  });
  // A channel is a snapshot name pointed at another's content: a deploy (`prod` -> `jun`) or a rollback.
  app.put<{ Params: SnapshotParams }>('/v1/swarms/:swarm/channels/:name', async (request) => {
    const parsed = PointBodySchema.safeParse(request.body ?? {});
    if (!parsed.success) {
      const issues = parsed.error.issues.map(({ path, message }) => ({ path, message }));
      throw invalidRequest('channel body', issues);
    }
    authorize(request, request.params.swarm, 'write');
    return { snapshot: await pool.snapshots.point(request.params.swarm, request.params.name, parsed.data.target) };
  });
  app.delete<{ Params: SnapshotParams }>('/v1/swarms/:swarm/snapshots/:name', async (request, reply) => {
    authorize(request, request.params.swarm, 'write');
    // Drains this node's workers of the snapshot first (see pool.snapshots.remove).
    await pool.snapshots.remove(request.params.swarm, request.params.name);
    return reply.code(204).send();
  });
}
