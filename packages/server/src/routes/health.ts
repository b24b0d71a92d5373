import type { FastifyInstance } from 'fastify';
import type { ServerContext } from '../context.js';
import { scopeOf } from '../guard.js';
import { swarmSeries } from '../metrics.js';
import { publicLayers } from '../sandbox-layers.js';

/** Liveness, readiness and the Prometheus scrape. */
export function registerHealthRoutes(app: FastifyInstance, { metrics, options, lifecycle, pool }: ServerContext): void {
  // Which sandbox layers process keys get here, without the reasons one is missing: the route is open.
  const sandbox = publicLayers(pool.stats().sandbox);
  // Alive as long as the process answers, draining included: a probe must not kill a node mid-drain.
  app.get('/healthz', async () => ({ status: 'ok', node: options.nodeName, sandbox }));
  app.get('/readyz', async (_request, reply) => {
    if (!lifecycle.draining) return { status: 'ready', node: options.nodeName };
    return reply.code(503).send({ code: 'ERR_SANDPOOL_CLOSED', message: `node ${options.nodeName} is draining` });
  });
  app.get('/metrics', async (request, reply) => {
    const text = await metrics.registry.metrics();
    const scope = scopeOf(request);
    // A token scoped to some swarms sees their series only: nothing of another tenant, not even a total.
    return reply.type(metrics.registry.contentType).send(scope === '*' ? text : swarmSeries(text, scope));
  });
}
