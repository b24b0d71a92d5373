import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { SandpoolError } from 'sandpool';
import type { ServerContext } from './context.js';
import { HttpError } from './errors.js';

/** Routes a probe or a scraper reaches while the node drains; everything under /v1 is refused. */
const OPEN_WHILE_DRAINING = new Set(['/healthz', '/readyz', '/metrics']);

/**
 * What runs before every route: the node header (so even a 401, 404 or 413 says which node
 * answered), the bearer token, and the drain gate.
 */
export function installGuard(app: FastifyInstance, { options, lifecycle }: ServerContext): void {
  const expected = options.token === undefined ? null : digest(options.token);
  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-sandpool-node', options.nodeName);
    const route = request.routeOptions.url;
    if (expected !== null && route !== '/healthz' && !authorized(request.headers.authorization, expected)) {
      reply.header('www-authenticate', 'Bearer');
      throw new HttpError('ERR_SANDPOOL_HTTP_UNAUTHORIZED', 'a valid bearer token is required');
    }
    if (lifecycle.draining && (route === undefined || !OPEN_WHILE_DRAINING.has(route))) {
      throw new SandpoolError('ERR_SANDPOOL_CLOSED', `node ${options.nodeName} is draining`);
    }
  });
  // While draining, every answer closes its connection: a balancer's idle keep-alive
  // connection must not carry the next call to a node that is going away.
  app.addHook('onSend', async (_request, reply) => {
    if (lifecycle.draining) reply.header('connection', 'close');
  });
}

/** Hashing both sides gives equal lengths, which timingSafeEqual needs, and leaks no length. */
function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

function authorized(header: string | undefined, expected: Buffer): boolean {
  const match = header === undefined ? null : /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match?.[1] !== undefined && timingSafeEqual(digest(match[1]), expected);
}
