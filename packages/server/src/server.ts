import { createServer as createHttpServer, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import { pino } from 'pino';
import { createPool, type Pool } from 'sandpool';
import { hostPaths } from 'sandpool/internal';
import type { ServerContext } from './context.js';
import { HttpError, makeScrub, type Scrub, toErrorReply } from './errors.js';
import { installGuard } from './guard.js';
import { createMetrics } from './metrics.js';
import { type ServerOptions, splitOptions } from './options.js';
import { registerCallRoutes } from './routes/calls.js';
import { registerDeployRoutes } from './routes/deploy.js';
import { registerHealthRoutes } from './routes/health.js';
import { registerInvalidateRoutes } from './routes/invalidate.js';
import { registerKeyRoutes } from './routes/keys.js';
import { registerSnapshotRoutes } from './routes/snapshots.js';
import { registerStreamRoutes } from './routes/stream.js';
import { registerSwarmRoutes } from './routes/swarms.js';
import { type StoreReport, watchStore } from './store-state.js';

export interface SandpoolServer {
  /** Listen with `app.listen(...)`; `app.close()` drains requests, then closes the pool. */
  readonly app: FastifyInstance;
  readonly pool: Pool;
  readonly nodeName: string;
  /** The pool's store: connecting, connected or lost (null status when the root alone keeps snapshots). */
  readonly store: StoreReport;
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
  // Before anything can await: the pool's first store event comes once its database client loads.
  const store = watchStore(pool);
  const lifecycle = { draining: false };
  const root = resolve(poolOptions.root);
  const scrub = scrubFor(root);
  const context: ServerContext = {
    pool,
    metrics: createMetrics(pool, server.nodeName, server.metricsSwarms, store),
    options: server,
    store,
    lifecycle,
    root,
    scrub,
  };
  // Node checks the header and request deadlines only every connectionsCheckingInterval
  // (30 s by default): keep it well under the deadlines so a slow client goes close to them.
  const headersTimeout = Math.min(server.headersTimeoutMs, server.requestTimeoutMs);
  const checkEvery = Math.max(50, Math.min(1_000, Math.floor(headersTimeout / 4)));
  // Pino on stdout. With `logger`, fastify's own: every request, and a line per call. Without
  // it fastify runs with no logger, which spares every request a child logger and response
  // listeners, and the error handler writes the unexpected errors to a logger of its own.
  const errorLog = server.logger ? null : pino({ level: 'error' });
  const app = Fastify({
    ...(server.logger ? { logger: { level: 'info' } } : {}),
    bodyLimit: server.bodyLimit,
    // The guard answers draining requests itself, with the node header and a JSON error.
    return503OnClosing: false,
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    serverFactory: (handler) =>
      createHttpServer(
        {
          headersTimeout,
          requestTimeout: server.requestTimeoutMs,
          keepAliveTimeout: server.keepAliveTimeoutMs,
          connectionsCheckingInterval: checkEvery,
        },
        handler,
      ),
    // Errors the router meets before any route or hook (a malformed %-escape in the URL).
    frameworkErrors: (error, request, reply) => {
      const { status, body } = toErrorReply(
        new HttpError('ERR_SANDPOOL_HTTP_BAD_REQUEST', error.message),
        false,
        scrub,
      );
      request.log.info({ code: body.code }, 'bad request');
      // Typed for any route's schema; this reply belongs to none.
      void (reply as unknown as FastifyReply).code(status).header('x-sandpool-node', server.nodeName).send(body);
    },
  });
  acceptEmptyJson(app);
  closeSilentConnections(app, headersTimeout);

  installGuard(app, context);
  registerCallRoutes(app, context);
  registerStreamRoutes(app, context);
  registerSnapshotRoutes(app, context);
  registerDeployRoutes(app, context);
  registerSwarmRoutes(app, context);
  registerKeyRoutes(app, context);
  registerInvalidateRoutes(app, context);
  registerHealthRoutes(app, context);

  app.setNotFoundHandler((request) => {
    throw new HttpError('ERR_SANDPOOL_HTTP_NOT_FOUND', `no route ${request.method} ${request.url}`);
  });
  app.setErrorHandler((error: unknown, request, reply) => {
    const { status, body, unexpected } = toErrorReply(error, server.debug, scrub);
    if (unexpected) {
      if (errorLog === null) request.log.error({ err: error }, 'unexpected error');
      else errorLog.error({ err: error, reqId: request.id }, 'unexpected error');
    }
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
  return { app, pool, nodeName: server.nodeName, store, drain };
}

/**
 * `content-type: application/json` with no body is what many clients send on a POST that
 * needs none (snapshot create, verify): it parses as no body. Anything else goes to
 * fastify's own parser, which keeps its prototype-poisoning checks.
 */
function acceptEmptyJson(app: FastifyInstance): void {
  const json = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    const text = typeof body === 'string' ? body : body.toString('utf8');
    if (text.trim() === '') {
      done(null, undefined);
      return;
    }
    // Fastify's parser reports through `done`; its return value carries nothing.
    void json(request, text, done);
  });
}

/**
 * Node's headers deadline starts with a request's first byte, so a connection that sends
 * nothing would stay open for good: it gets the same deadline from its accept until its
 * first request has arrived, after which Node's own request and keep-alive deadlines hold.
 */
function closeSilentConnections(app: FastifyInstance, timeoutMs: number): void {
  const pending = new WeakMap<Socket, NodeJS.Timeout>();
  app.server.on('connection', (socket: Socket) => {
    const timer = setTimeout(() => socket.destroy(), timeoutMs).unref();
    pending.set(socket, timer);
    socket.once('close', () => clearTimeout(timer));
  });
  app.server.on('request', (request: IncomingMessage) => {
    const timer = pending.get(request.socket);
    if (timer === undefined) return;
    clearTimeout(timer);
    pending.delete(request.socket);
  });
}

/** `<dir>/dist/<file>.js` → `<dir>`. */
function packageDir(url: string): string {
  return dirname(dirname(fileURLToPath(url)));
}

function scrubFor(root: string): Scrub {
  // The library's own places (the root, sandpool's install folder), and the server's.
  return makeScrub(
    hostPaths(root, [
      // Where the server is installed: it shows in --debug stacks.
      ['<sandpool-server>', packageDir(import.meta.url)],
      ['<cwd>', process.cwd()],
      ['<tmp>', tmpdir()],
      ['<home>', homedir()],
    ]),
  );
}
