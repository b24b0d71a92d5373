import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { deliveredCall } from 'sandpool/internal';
import { callOptionsFor, readCallInput } from '../call-input.js';
import type { ServerContext } from '../context.js';
import { bound, outcomeOf } from '../errors.js';
import { authorize } from '../guard.js';
import { toJson } from '../json.js';

/**
 * `POST /v1/call` (key in the body or the x-sandpool-key header) and `POST /v1/call/<key>`
 * (key in the path, where a balancer can hash it without reading the body).
 */
export function registerCallRoutes(app: FastifyInstance, context: ServerContext): void {
  app.post('/v1/call', (request, reply) => call(context, request, reply, undefined));
  app.post<{ Params: { '*': string } }>('/v1/call/*', (request, reply) =>
    call(context, request, reply, request.params['*']),
  );
}

async function call(
  { pool, metrics, options }: ServerContext,
  request: FastifyRequest,
  reply: FastifyReply,
  pathKey: string | undefined,
): Promise<FastifyReply> {
  const started = performance.now();
  let key: string | null = null;
  // Once the call is the pool's, the pool's record counts it in the metrics.
  let reached = false;
  const finish = (outcome: ReturnType<typeof outcomeOf> | 'ok'): void => {
    const seconds = (performance.now() - started) / 1000;
    if (!reached && outcome !== 'ok') metrics.observeRefused(outcome);
    // One line per call when logging: which key, how it ended, how long it took.
    if (options.logger) {
      request.log.info(
        { key: key ?? undefined, outcome, durationMs: Math.round(seconds * 1e6) / 1e3 },
        outcome === 'ok' ? 'call' : 'call failed',
      );
    }
  };
  try {
    const input = readCallInput(request.body, { path: pathKey, header: request.headers['x-sandpool-key'] });
    key = bound(input.key, 300);
    authorize(request, input.swarm, 'read');
    reached = true;
    // Written as JSON inside the call: a result JSON cannot carry fails the call itself, so
    // the pool's record (the metrics) says what the client is told.
    const json = await deliveredCall(
      pool,
      input.key,
      input.fn,
      input.args,
      callOptionsFor(input, options.callTimeoutCapMs),
      (result) => toJson(result, 'the result', input.key),
    );
    const text = `{"result":${json}}`;
    finish('ok');
    return reply.type('application/json; charset=utf-8').send(text);
  } catch (error) {
    finish(outcomeOf(error));
    throw error;
  }
}
