import Fastify, { type FastifyInstance } from 'fastify';
import { createPool, type Pool } from 'sandpool';
import type { ServerContext } from './context.js';
import { HttpError, toErrorReply } from './errors.js';
import { installGuard } from './guard.js';
import { createMetrics } from './metrics.js';
import { type ServerOptions, splitOptions } from './options.js';
import { registerCallRoutes } from './routes/calls.js';
import { registerHealthRoutes } from './routes/health.js';
import { registerSnapshotRoutes } from './routes/snapshots.js';
import { registerStreamRoutes } from './routes/stream.js';

export interface SandpoolServer {
  /** Listen with `app.listen(...)`; `app.close()` drains requests, then closes the pool. */
  readonly app: FastifyInstance;
  readonly pool: Pool;
  readonly nodeName: string;
  /**
   * Stops taking work: /readyz answers 503 and every /v1 route ERR_SANDPOOL_CLOSED, while
   * calls already running go on. `app.close()` does this first by itself; call it earlier
   * to give a balancer's health check time to notice before the listener goes.
   */
  drain(): void;
}

/** Key text is up to 258 characters (64 + 1 + 64 + 1 + 128); the router's default cap is 100. */
const MAX_PARAM_LENGTH = 512;

/** Builds the app and its pool; throws ERR_SANDPOOL_INVALID_OPTIONS synchronously on bad options. */
export function createServer(options: ServerOptions): SandpoolServer {
  const { server, pool: poolOptions } = splitOptions(options);
  const pool = createPool(poolOptions);
  const lifecycle = { draining: false };
  const context: ServerContext = { pool, metrics: createMetrics(pool, server.nodeName), options: server, lifecycle };
  const app = Fastify({
    // Pino on stdout: every request with `logger`, else only the unexpected errors the handler logs.
    logger: { level: server.logger ? 'info' : 'error' },
    bodyLimit: server.bodyLimit,
    // The guard answers draining requests itself, with the node header and a JSON error.
    return503OnClosing: false,
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
  });

  installGuard(app, context);
  registerCallRoutes(app, context);
  registerStreamRoutes(app, context);
  registerSnapshotRoutes(app, context);
  registerHealthRoutes(app, context);

  app.setNotFoundHandler((request) => {
    throw new HttpError('ERR_SANDPOOL_HTTP_NOT_FOUND', `no route ${request.method} ${request.url}`);
  });
  app.setErrorHandler((error: unknown, request, reply) => {
    const { status, body, unexpected } = toErrorReply(error, server.debug);
    if (unexpected) request.log.error({ err: error }, 'unexpected error');
    return reply.code(status).send(body);
  });
  const drain = (): void => {
    lifecycle.draining = true;
  };
  // preClose runs before the listener stops: from here on /readyz says 503 and calls are refused.
  app.addHook('preClose', async () => drain());
  // onClose runs once every in-flight request has been answered: only then may the pool go.
  app.addHook('onClose', async () => {
    await pool.close();
  });
  return { app, pool, nodeName: server.nodeName, drain };
}
