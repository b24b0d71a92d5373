import { Readable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { parseKey } from 'sandpool';
import type { ServerContext } from '../context.js';
import { LiveFolders } from '../deploy/live-folder.js';
import { archiveTooLarge, HttpError } from '../errors.js';
import { authorize } from '../guard.js';
import { sendReloadReport, toAnswer } from './invalidate.js';

const TAR = 'application/x-tar';

/**
 * `PUT /v1/swarms/:swarm/live` with a tar archive (`content-type: application/x-tar`): the
 * swarm's live files become the archive's, all at once, and this node's live workers of the
 * swarm reload blue-green; the answer is the reload report, as invalidate's (409 when some
 * keys' new code failed to load: they keep serving the old). Needs a token with `write` on
 * the swarm. The archive is read as it arrives, never held whole, and checked entry by entry
 * (see extractArchive); a refused one changes nothing.
 */
export function registerDeployRoutes(app: FastifyInstance, { pool, root, scrub, options }: ServerContext): void {
  const folders = new LiveFolders(root);
  const limits = { maxBytes: options.deployMaxBytes, maxEntries: options.deployMaxFiles };
  // The body stays a stream: the route reads it, bounded, after the token is checked.
  app.addContentTypeParser(TAR, (_request, payload, done) => done(null, payload));
  app.put<{ Params: { swarm: string } }>('/v1/swarms/:swarm/live', async (request, reply) => {
    const { swarm } = request.params;
    parseKey(`${swarm}/x`);
    authorize(request, swarm, 'write');
    if (!(request.body instanceof Readable)) {
      throw new HttpError('ERR_SANDPOOL_HTTP_UNSUPPORTED_MEDIA_TYPE', `a deploy takes a tar archive as ${TAR}`);
    }
    if (Number(request.headers['content-length'] ?? 0) > limits.maxBytes) {
      throw archiveTooLarge(`the archive is larger than ${limits.maxBytes} bytes`);
    }
    const { files, bytes } = await folders.replace(swarm, request.body, limits);
    const report = await pool.invalidate({ swarm });
    return sendReloadReport(reply, toAnswer(report, scrub), { swarm, files, bytes });
  });
}
