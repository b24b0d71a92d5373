import { once } from 'node:events';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { deliveredStream } from 'sandpool/internal';
import { callOptionsFor, readCallInput } from '../call-input.js';
import type { ServerContext } from '../context.js';
import { outcomeOf, toErrorReply } from '../errors.js';
import { authorize } from '../guard.js';
import { toJson } from '../json.js';

/**
 * `POST /v1/stream` (and `/v1/stream/<key>`): the body of `/v1/call`, answered as NDJSON —
 * `{"chunk":…}` per chunk, then `{"done":true}`, or `{"error":{code,message}}` when the
 * stream fails after it began. A failure before the first chunk is an ordinary error reply
 * with its status. A client that hangs up ends the generator in the worker (its `finally`
 * runs and its signal fires); the worker and its other calls stay.
 */
export function registerStreamRoutes(app: FastifyInstance, context: ServerContext): void {
  app.post('/v1/stream', (request, reply) => stream(context, request, reply, undefined));
  app.post<{ Params: { '*': string } }>('/v1/stream/*', (request, reply) =>
    stream(context, request, reply, request.params['*']),
  );
}

async function stream(
  { pool, metrics, options, scrub }: ServerContext,
  request: FastifyRequest,
  reply: FastifyReply,
  pathKey: string | undefined,
): Promise<void> {
  // Once the stream is the pool's, the pool's record counts it in the metrics.
  let reached = false;
  let iterator: AsyncIterableIterator<string, undefined> | null = null;
  let first: IteratorResult<string, undefined>;
  try {
    const input = readCallInput(request.body, { path: pathKey, header: request.headers['x-sandpool-key'] });
    authorize(request, input.swarm, 'read');
    reached = true;
    // Each chunk is written as JSON as it arrives, inside the stream's call: one JSON cannot
    // carry fails the call, so the pool's record (the metrics) says what the client is told.
    const callOptions = callOptionsFor(input, options.callTimeoutCapMs);
    iterator = deliveredStream(pool, input.key, input.fn, input.args, callOptions, (chunk) => toJson(chunk, 'a chunk'));
    first = await iterator.next();
  } catch (error) {
    if (!reached) metrics.observeRefused(outcomeOf(error));
    throw error;
  }
  const raw = reply.raw;
  reply.hijack();
  raw.writeHead(200, {
    ...(reply.getHeaders() as Record<string, string | number | string[]>),
    'content-type': 'application/x-ndjson; charset=utf-8',
    'cache-control': 'no-store',
  });
  let gone = false;
  const closed = once(raw, 'close').then(() => {
    gone = !raw.writableFinished;
    // A next() waiting for the agent returns at once: the loop below ends.
    if (gone) void iterator?.return?.();
  });
  try {
    for (let step = first; step.done !== true && !gone; step = await iterator.next()) {
      if (!raw.write(`{"chunk":${step.value}}\n`)) await Promise.race([once(raw, 'drain'), closed]);
    }
    if (!gone) raw.end('{"done":true}\n');
  } catch (error) {
    void iterator.return?.();
    if (!gone) raw.end(`${JSON.stringify({ error: toErrorReply(error, options.debug, scrub).body })}\n`);
  }
}
