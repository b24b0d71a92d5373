import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { SandpoolError } from 'sandpool';
import { type CallKind, readCallInput } from '../call-input.js';
import type { ServerContext } from '../context.js';
import { outcomeOf } from '../errors.js';

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
  { pool, metrics }: ServerContext,
  request: FastifyRequest,
  reply: FastifyReply,
  pathKey: string | undefined,
): Promise<FastifyReply> {
  const started = process.hrtime.bigint();
  let kind: CallKind | null = null;
  try {
    const input = readCallInput(request.body, { path: pathKey, header: request.headers['x-sandpool-key'] });
    kind = input.kind;
    const result = await pool.call(
      input.key,
      input.fn,
      input.args,
      input.timeoutMs === undefined ? {} : { timeoutMs: input.timeoutMs },
    );
    const text = resultJson(result, input.key);
    metrics.observeCall('ok', kind, elapsed(started));
    return reply.type('application/json; charset=utf-8').send(text);
  } catch (error) {
    metrics.observeCall(outcomeOf(error), kind, elapsed(started));
    throw error;
  }
}

/**
 * Results are structured clones, not JSON: undefined becomes null and a bigint its decimal
 * text, as in `sandpool call`. A cycle cannot be written at all.
 */
function resultJson(result: unknown, key: string): string {
  try {
    const text = JSON.stringify(result ?? null, (_name, value: unknown) =>
      typeof value === 'bigint' ? value.toString() : value,
    );
    return `{"result":${text}}`;
  } catch (cause) {
    throw new SandpoolError('ERR_SANDPOOL_DATA_CLONE', `${key}: the result cannot be written as JSON`, { key, cause });
  }
}

function elapsed(started: bigint): number {
  return Number(process.hrtime.bigint() - started) / 1e9;
}
