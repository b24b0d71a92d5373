import { request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { eventually, NO_DEATHS } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';
import { installServerCleanup, openServer } from './support/server.js';

installServerCleanup();

const AGENT = `
const state = { finallyRan: 0, aborted: null };
export function observed() {
  return state;
}
export async function* tokens(n) {
  for (let i = 0; i < n; i++) yield { token: \`t\${i}\` };
}
export async function* endless() {
  try {
    for (let i = 0; ; i++) {
      yield i;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  } finally {
    state.finallyRan += 1;
    state.aborted = sandpool.signal.aborted;
  }
}
export async function* failing() {
  yield 'ok';
  const error = new Error('no more');
  error.code = 'E_LATE';
  throw error;
}
`;

async function root(): Promise<string> {
  return makeRoot({ 'a/live/gen.mjs': AGENT, ...(await counterAgent('a')) });
}

function lines(body: string): unknown[] {
  return body
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as unknown);
}

describe('POST /v1/stream', () => {
  it('answers NDJSON: a line per chunk, then done; a plain function is one chunk', async () => {
    const server = openServer({ root: await root() });
    const reply = await server.app.inject({
      method: 'POST',
      url: '/v1/stream/a/gen',
      payload: { fn: 'tokens', args: [3] },
    });
    expect(reply.statusCode).toBe(200);
    expect(reply.headers['content-type']).toContain('application/x-ndjson');
    expect(reply.headers['x-sandpool-node']).toBe('node-1');
    expect(lines(reply.body)).toEqual([
      { chunk: { token: 't0' } },
      { chunk: { token: 't1' } },
      { chunk: { token: 't2' } },
      { done: true },
    ]);
    const plain = await server.app.inject({
      method: 'POST',
      url: '/v1/stream',
      payload: { key: 'a/notifier_agent', fn: 'add', args: [2, 3] },
    });
    expect(lines(plain.body)).toEqual([{ chunk: 5 }, { done: true }]);
  });

  it('a failure before the first chunk has its status; one after it is a final {code, message} line', async () => {
    const server = openServer({ root: await root() });
    const missing = await server.app.inject({ method: 'POST', url: '/v1/stream/a/gen', payload: { fn: 'nope' } });
    expect(missing.statusCode).toBe(404);
    expect(JSON.parse(missing.body)).toMatchObject({ code: 'ERR_SANDPOOL_EXPORT_NOT_FOUND' });
    const late = await server.app.inject({ method: 'POST', url: '/v1/stream/a/gen', payload: { fn: 'failing' } });
    expect(late.statusCode).toBe(200);
    const [first, last] = lines(late.body) as [unknown, { error: Record<string, unknown> }];
    expect(first).toEqual({ chunk: 'ok' });
    expect(last.error).toMatchObject({ code: 'ERR_SANDPOOL_AGENT_ERROR', cause: { code: 'E_LATE' } });
    expect(typeof last.error.message).toBe('string');
    expect(JSON.stringify(last)).not.toContain('/live/');
  });

  it('a client that hangs up ends the generator in the worker (its finally runs); the worker keeps serving', async () => {
    const server = openServer({ root: await root() });
    await server.app.listen({ port: 0, host: '127.0.0.1' });
    const { port } = server.app.server.address() as AddressInfo;
    const firstLine = await new Promise<string>((resolve, reject) => {
      const req = httpRequest(
        {
          port,
          host: '127.0.0.1',
          method: 'POST',
          path: '/v1/stream/a/gen',
          headers: { 'content-type': 'application/json' },
        },
        (res) => {
          let text = '';
          res.on('data', (data: Buffer) => {
            text += data.toString();
            const end = text.indexOf('\n');
            if (end >= 0) {
              resolve(text.slice(0, end));
              req.destroy();
            }
          });
          res.on('error', () => {});
        },
      );
      req.on('error', (error) => {
        if (!(error as { code?: string }).code?.startsWith('ECONNRESET')) reject(error);
      });
      req.end(JSON.stringify({ fn: 'endless' }));
    });
    expect(JSON.parse(firstLine)).toEqual({ chunk: 0 });
    await eventually(() => server.pool.stats().busy === 0);
    expect(await server.pool.call('a/gen', 'observed')).toEqual({ finallyRan: 1, aborted: true });
    expect(await server.pool.call('a/notifier_agent', 'add', [1, 1])).toBe(2);
    expect(server.pool.stats()).toMatchObject({ workers: 2, died: NO_DEATHS });
  });
});
