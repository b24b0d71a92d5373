import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { counterAgent, fixture, makeRoot } from './support/root.js';
import { installServerCleanup, openServer, request } from './support/server.js';

installServerCleanup();

async function agentsRoot(): Promise<string> {
  return makeRoot({
    ...(await counterAgent('a')),
    'a/live/faulty.mjs': await fixture('faulty.mjs'),
    'a/live/syntax.mjs': await fixture('syntax-error.mjs'),
    'a/live/results.mjs': 'export const big = () => 10n; export const nothing = () => undefined;\n',
  });
}

describe('POST /v1/call', () => {
  it('takes the key from the body (text or object), the path or the x-sandpool-key header', async () => {
    const server = openServer({ root: await agentsRoot() });
    const forms = [
      request(server, 'POST', '/v1/call', { key: 'a/notifier_agent', fn: 'add', args: [1, 2] }),
      request(server, 'POST', '/v1/call', { key: { swarm: 'a', stem: 'notifier_agent' }, fn: 'add', args: [1, 2] }),
      request(server, 'POST', '/v1/call/a/notifier_agent', { fn: 'add', args: [1, 2] }),
      request(server, 'POST', '/v1/call', { fn: 'add', args: [1, 2] }, { 'x-sandpool-key': 'a/notifier_agent' }),
    ];
    for (const reply of await Promise.all(forms)) {
      expect(reply).toEqual({ status: 200, node: 'node-1', body: { result: 3 } });
    }
    // One key, one worker: four forms of it started exactly one.
    expect(server.pool.stats()).toMatchObject({ workers: 1, spawned: 1 });
  });

  it('answers results JSON cannot hold as null (undefined) and decimal text (bigint)', async () => {
    const server = openServer({ root: await agentsRoot() });
    expect((await request(server, 'POST', '/v1/call/a/results', { fn: 'nothing' })).body).toEqual({ result: null });
    expect((await request(server, 'POST', '/v1/call/a/results', { fn: 'big' })).body).toEqual({ result: '10' });
  });

  it('accepts the longest valid key in the path', async () => {
    const stem = 's'.repeat(128);
    const key = `${'w'.repeat(64)}@${'n'.repeat(64)}/${stem}`;
    const server = openServer({ root: await makeRoot() });
    const reply = await request(server, 'POST', `/v1/call/${key}`, { fn: 'f' });
    // Valid key, no such snapshot: the router passed all 258 characters through.
    expect(reply.body).toMatchObject({ code: 'ERR_SANDPOOL_SNAPSHOT_NOT_FOUND', key });
  });

  it.each([
    ['a bad key text', '/v1/call', { key: 'a/../x', fn: 'f' }, {}, 'ERR_SANDPOOL_INVALID_KEY'],
    ['a bad key object', '/v1/call', { key: { swarm: 'a', stem: 'x/y' }, fn: 'f' }, {}, 'ERR_SANDPOOL_INVALID_KEY'],
    ['no key anywhere', '/v1/call', { fn: 'f' }, {}, 'ERR_SANDPOOL_INVALID_KEY'],
    ['path and body keys that differ', '/v1/call/a/x', { key: 'a/y', fn: 'f' }, {}, 'ERR_SANDPOOL_INVALID_KEY'],
    [
      'header and body keys that differ',
      '/v1/call',
      { key: 'a/y', fn: 'f' },
      { 'x-sandpool-key': 'a/x' },
      'ERR_SANDPOOL_INVALID_KEY',
    ],
    ['a missing fn', '/v1/call/a/x', { args: [] }, {}, 'ERR_SANDPOOL_INVALID_OPTIONS'],
    ['args that are not an array', '/v1/call/a/x', { fn: 'f', args: 1 }, {}, 'ERR_SANDPOOL_INVALID_OPTIONS'],
    ['an unknown field', '/v1/call/a/x', { fn: 'f', extra: 1 }, {}, 'ERR_SANDPOOL_INVALID_OPTIONS'],
    [
      'a negative timeoutMs (the pool judges it)',
      '/v1/call/a/x',
      { fn: 'f', timeoutMs: -1 },
      {},
      'ERR_SANDPOOL_INVALID_OPTIONS',
    ],
  ])('refuses %s with 400 %s, spawning nothing', async (_name, url, payload, headers, code) => {
    const server = openServer({ root: await agentsRoot() });
    const reply = await request(server, 'POST', url, payload, headers);
    expect(reply).toMatchObject({ status: 400, node: 'node-1', body: { code } });
    expect(reply.body.issues).toEqual(expect.arrayContaining([expect.objectContaining({ path: expect.any(Array) })]));
    expect(server.pool.stats().spawned).toBe(0);
  });

  it.each([
    ['a missing module', 'a/nothing_here', 'echo', [], 404, 'ERR_SANDPOOL_MODULE_NOT_FOUND'],
    ['a missing export', 'a/faulty', 'nope', [], 404, 'ERR_SANDPOOL_EXPORT_NOT_FOUND'],
    ['a missing snapshot', 'a@jan/faulty', 'echo', [], 404, 'ERR_SANDPOOL_SNAPSHOT_NOT_FOUND'],
    ['an agent that throws', 'a/faulty', 'fail', ['E_AGENT'], 422, 'ERR_SANDPOOL_AGENT_ERROR'],
    ['a result that cannot be cloned', 'a/faulty', 'unclonable', [], 400, 'ERR_SANDPOOL_DATA_CLONE'],
    ['a module that fails to parse', 'a/syntax', 'broken', [], 500, 'ERR_SANDPOOL_MODULE_LOAD'],
    ['an agent that exits', 'a/faulty', 'exit', [3], 502, 'ERR_SANDPOOL_WORKER_EXITED'],
  ])('answers %s with %i %s and no stack', async (_name, key, fn, args, status, code) => {
    const server = openServer({ root: await agentsRoot() });
    const reply = await request(server, 'POST', `/v1/call/${key}`, { fn, args });
    expect(reply).toMatchObject({ status, node: 'node-1', body: { code, message: expect.any(String) } });
    expect(JSON.stringify(reply.body)).not.toMatch(/"stack"|\n\s+at /);
  });

  it("carries the agent's error as cause: name, message and code", async () => {
    const server = openServer({ root: await agentsRoot() });
    const reply = await request(server, 'POST', '/v1/call/a/faulty', { fn: 'fail', args: ['E_AGENT'] });
    expect(reply.body).toEqual({
      code: 'ERR_SANDPOOL_AGENT_ERROR',
      message: expect.any(String),
      key: 'a/faulty',
      cause: { name: 'TypeError', message: 'agent failed', code: 'E_AGENT' },
    });
  });

  it('puts stacks in error bodies only with debug', async () => {
    const server = openServer({ root: await agentsRoot(), debug: true });
    const reply = await request(server, 'POST', '/v1/call/a/faulty', { fn: 'fail', args: ['E_AGENT'] });
    expect(reply.body.stack).toMatch(/SandpoolError/);
    expect(reply.body.cause).toMatchObject({ stack: expect.stringContaining('agent failed') });
  });

  it('answers a timeout with 504 and names the reason a worker died with 502', async () => {
    const server = openServer({ root: await agentsRoot() });
    const timedOut = await request(server, 'POST', '/v1/call/a/faulty', { fn: 'hang', timeoutMs: 100 });
    expect(timedOut).toMatchObject({ status: 504, body: { code: 'ERR_SANDPOOL_TIMEOUT' } });
    const exited = await request(server, 'POST', '/v1/call/a/faulty', { fn: 'exit', args: [1] });
    expect(exited).toMatchObject({ status: 502, body: { code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'exit' } });
  });

  it('answers 429 when the key has maxPendingPerKey calls pending', async () => {
    const server = openServer({ root: await agentsRoot(), maxPendingPerKey: 1 });
    const slow = request(server, 'POST', '/v1/call/a/notifier_agent', { fn: 'slow', args: [300] });
    const refused = await request(server, 'POST', '/v1/call/a/notifier_agent', { fn: 'add', args: [1, 1] });
    expect(refused).toMatchObject({ status: 429, body: { code: 'ERR_SANDPOOL_QUEUE_FULL' } });
    expect((await slow).body).toEqual({ result: 300 });
  });
});

describe('the HTTP layer', () => {
  it('answers a body over the limit with 413 and a JSON error, before any call', async () => {
    const server = openServer({ root: await agentsRoot(), bodyLimit: 1024 });
    const reply = await request(server, 'POST', '/v1/call/a/faulty', { fn: 'echo', args: ['x'.repeat(2048)] });
    expect(reply).toMatchObject({ status: 413, node: 'node-1', body: { code: 'ERR_SANDPOOL_HTTP_BODY_TOO_LARGE' } });
    expect(server.pool.stats().spawned).toBe(0);
  });

  it('takes bodies up to 10 MB by default', async () => {
    const server = openServer({ root: await agentsRoot() });
    const text = 'x'.repeat(9 * 1024 * 1024);
    const reply = await request(server, 'POST', '/v1/call/a/faulty', { fn: 'size', args: [text] });
    expect(reply.body).toEqual({ result: text.length });
    const over = await request(server, 'POST', '/v1/call/a/faulty', { fn: 'size', args: [`${text}${text}`] });
    expect(over.status).toBe(413);
  });

  it('answers bad JSON with 400 and unknown routes with 404, in JSON with the node header', async () => {
    const server = openServer({ root: await agentsRoot() });
    const bad = await server.app.inject({
      method: 'POST',
      url: '/v1/call/a/faulty',
      headers: { 'content-type': 'application/json' },
      payload: '{"fn":',
    });
    expect(bad.statusCode).toBe(400);
    expect(bad.headers['x-sandpool-node']).toBe('node-1');
    expect(bad.json()).toMatchObject({ code: 'ERR_SANDPOOL_HTTP_BAD_REQUEST' });
    expect(await request(server, 'GET', '/v2/nothing')).toMatchObject({
      status: 404,
      node: 'node-1',
      body: { code: 'ERR_SANDPOOL_HTTP_NOT_FOUND' },
    });
  });

  it('guards every route but /healthz with the bearer token', async () => {
    const server = openServer({ root: await agentsRoot(), token: 's3cret' });
    for (const [method, url] of [
      ['POST', '/v1/call/a/notifier_agent'],
      ['GET', '/v1/swarms/a/snapshots'],
      ['GET', '/readyz'],
      ['GET', '/metrics'],
      ['GET', '/nowhere'],
    ] as const) {
      for (const authorization of [undefined, 'Bearer wrong', 's3cret', 'Basic czNjcmV0']) {
        const headers: Record<string, string> = authorization === undefined ? {} : { authorization };
        const reply = await request(server, method, url, method === 'POST' ? { fn: 'add' } : undefined, headers);
        expect(reply, `${method} ${url} ${authorization}`).toMatchObject({
          status: 401,
          node: 'node-1',
          body: { code: 'ERR_SANDPOOL_HTTP_UNAUTHORIZED' },
        });
      }
    }
    expect((await request(server, 'GET', '/healthz')).status).toBe(200);
    const allowed = await request(
      server,
      'POST',
      '/v1/call/a/notifier_agent',
      { fn: 'add', args: [2, 3] },
      {
        authorization: 'Bearer s3cret',
      },
    );
    expect(allowed.body).toEqual({ result: 5 });
    expect(server.pool.stats().spawned).toBe(1);
  });

  it('without logger, writes one JSON line per unexpected error (with its request id) and nothing per call', async () => {
    const root = await agentsRoot();
    // Its own process: the line goes to the real stdout, where an operator's collector reads it.
    const script = join(root, 'log-check.mjs');
    await writeFile(
      script,
      `const { createServer } = await import(process.argv[2]);
const server = createServer({ root: process.argv[3], nodeName: 'n1', spareWorkers: 0 });
const post = () => server.app.inject({ method: 'POST', url: '/v1/call/a/notifier_agent', payload: { fn: 'add', args: [1, 2] } });
const ok = await post();
server.pool.keyStats = () => { throw new TypeError('boom'); };
const failed = await server.app.inject({ method: 'GET', url: '/v1/keys' });
await server.app.close();
console.error(JSON.stringify([ok.statusCode, ok.body, failed.statusCode, failed.json().code]));
`,
    );
    const { stdout, stderr } = await new Promise<{ stdout: string; stderr: string }>((resolve, reject) => {
      execFile(process.execPath, [script, import.meta.resolve('@sandpool/server'), root], (error, out, err) =>
        error === null ? resolve({ stdout: out, stderr: err }) : reject(new Error(`${error.message}\n${err}`)),
      );
    });
    expect(JSON.parse(stderr)).toEqual([200, '{"result":3}', 500, 'ERR_SANDPOOL_HTTP_INTERNAL']);
    const lines = stdout.split('\n').filter((line) => line !== '');
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0] ?? '')).toMatchObject({
      level: 50,
      msg: 'unexpected error',
      reqId: expect.any(String),
      err: { type: 'TypeError', message: 'boom' },
    });
  });

  it('refuses bad server options synchronously with ERR_SANDPOOL_INVALID_OPTIONS', async () => {
    const root = await makeRoot();
    for (const options of [
      { root, nodeName: 'has space' },
      { root, nodeName: 'n', bodyLimit: 0 },
      { root, nodeName: 'n', token: '' },
      { root, nodeName: 'n', maxWorkers: -1 },
      { root, nodeName: 'n', notAnOption: true },
    ]) {
      expect(() => openServer(options), JSON.stringify(options)).toThrow(
        expect.objectContaining({ code: 'ERR_SANDPOOL_INVALID_OPTIONS' }),
      );
    }
  });
});
