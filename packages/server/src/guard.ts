import { createHash } from 'node:crypto';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { ServerContext } from './context.js';
import { draining, HttpError } from './errors.js';
import type { TokenGrant } from './options.js';

/** Routes a probe or a scraper reaches while the node drains; everything under /v1 is refused. */
const OPEN_WHILE_DRAINING = new Set(['/healthz', '/readyz', '/metrics']);

const FULL: TokenGrant = { swarms: '*', write: true };
const grants = new WeakMap<FastifyRequest, TokenGrant>();

/**
 * What runs before every route: the node header (so even a 401, 404 or 413 says which node
 * answered), the bearer token, and the drain gate. The swarm a token may reach is only
 * known once a route has read its key, so routes check that with `authorize`.
 */
export function installGuard(app: FastifyInstance, { options, lifecycle }: ServerContext): void {
  const known = new Map<string, TokenGrant>();
  if (options.token !== undefined) known.set(digest(options.token), FULL);
  for (const [token, grant] of Object.entries(options.tokens ?? {})) known.set(digest(token), grant);
  const open = known.size === 0;
  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-sandpool-node', options.nodeName);
    const route = request.routeOptions.url;
    if (open) grants.set(request, FULL);
    else if (route !== '/healthz') {
      const grant = grantFor(request.headers.authorization, known);
      if (grant === undefined) {
        reply.header('www-authenticate', 'Bearer');
        throw new HttpError('ERR_SANDPOOL_HTTP_UNAUTHORIZED', 'a valid bearer token is required');
      }
      grants.set(request, grant);
    }
    if (lifecycle.draining && (route === undefined || !OPEN_WHILE_DRAINING.has(route))) {
      throw draining(options.nodeName);
    }
  });
  // While draining, every answer closes its connection: a balancer's idle keep-alive
  // connection must not carry the next call to a node that is going away.
  app.addHook('onSend', async (_request, reply) => {
    if (lifecycle.draining) reply.header('connection', 'close');
  });
}

/** Throws 403 unless the request's token reaches `swarm` (and may change it, for `write`). */
export function authorize(request: FastifyRequest, swarm: string, need: 'read' | 'write'): void {
  const grant = grants.get(request);
  if (grant === undefined || !reaches(grant, swarm)) {
    throw new HttpError('ERR_SANDPOOL_HTTP_FORBIDDEN', `this token does not grant swarm ${swarm}`);
  }
  if (need === 'write' && !grant.write) {
    throw new HttpError('ERR_SANDPOOL_HTTP_FORBIDDEN', `this token may not change the snapshots of swarm ${swarm}`);
  }
}

/** The swarms the request's token reaches: every one (`*`), or those listed. */
export function scopeOf(request: FastifyRequest): '*' | readonly string[] {
  return grants.get(request)?.swarms ?? [];
}

/** The swarms of `all` the request's token reaches. */
export function visibleSwarms(request: FastifyRequest, all: readonly string[]): string[] {
  const grant = grants.get(request);
  return grant === undefined ? [] : all.filter((swarm) => reaches(grant, swarm));
}

function reaches(grant: TokenGrant, swarm: string): boolean {
  return grant.swarms === '*' || grant.swarms.includes(swarm);
}

/** Tokens are looked up by digest: the table holds no token text, and a lookup compares fixed-length digests. */
function digest(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

function grantFor(header: string | undefined, known: ReadonlyMap<string, TokenGrant>): TokenGrant | undefined {
  const match = header === undefined ? null : /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match?.[1] === undefined ? undefined : known.get(digest(match[1]));
}
