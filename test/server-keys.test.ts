import { chmod, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { counterAgent, makeRoot } from './support/root.js';
import { installServerCleanup, openServer, type Reply, request } from './support/server.js';

installServerCleanup();

const TOKENS = {
  all: { swarms: '*' as const },
  'read-a': { swarms: ['a'] },
  'write-a': { swarms: ['a'], write: true },
  'write-b': { swarms: ['b'], write: true },
};
const as = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` });

async function twoSwarms(): Promise<string> {
  return makeRoot({
    ...(await counterAgent('a')),
    ...(await counterAgent('a', 'v1', 'second')),
    ...(await counterAgent('b')),
  });
}

function keysOf(reply: Reply): string[] {
  return (reply.body.keys as { key: string }[]).map((stats) => stats.key);
}

describe('GET /v1/keys', () => {
  it('lists the per-key figures of the swarms the token reaches, sorted and bounded', async () => {
    const server = openServer({ root: await twoSwarms(), tokens: TOKENS });
    const call = (key: string, fn: string): Promise<Reply> =>
      request(server, 'POST', `/v1/call/${key}`, { fn, args: [1, 2] }, as('all'));
    for (let n = 0; n < 3; n += 1) await call('a/notifier_agent', 'add');
    await call('a/notifier_agent', 'nope');
    await call('a/second', 'add');
    await call('b/notifier_agent', 'add');
    await call('b/notifier_agent', 'add');

    const byCalls = await request(server, 'GET', '/v1/keys?sort=calls', undefined, as('all'));
    expect(byCalls).toMatchObject({ status: 200, body: { node: 'node-1', sort: 'calls', total: 3 } });
    expect(keysOf(byCalls)).toEqual(['a/notifier_agent', 'b/notifier_agent', 'a/second']);
    // No key runs in a process here: no sandbox to tell of, and no cgroup per key.
    expect(byCalls.body.sandbox).toBeNull();
    expect((byCalls.body.keys as unknown[])[0]).toMatchObject({ isolation: 'thread', cgroup: null });
    expect((byCalls.body.keys as unknown[])[0]).toMatchObject({
      key: 'a/notifier_agent',
      swarm: 'a',
      snapshot: null,
      stem: 'notifier_agent',
      calls: 4,
      errors: 1,
      inFlight: 0,
      queued: 0,
      workers: 1,
      demoted: false,
      latency: { p50: expect.any(Number), p99: expect.any(Number), max: expect.any(Number) },
    });

    const byErrors = await request(server, 'GET', '/v1/keys?sort=errors&limit=1', undefined, as('all'));
    expect(keysOf(byErrors)).toEqual(['a/notifier_agent']);
    expect(byErrors.body.total).toBe(3);

    // A scoped token sees its own swarm's keys and nothing of the others, not even their count.
    const scoped = await request(server, 'GET', '/v1/keys?sort=calls', undefined, as('read-a'));
    expect(keysOf(scoped)).toEqual(['a/notifier_agent', 'a/second']);
    expect(scoped.body.total).toBe(2);

    // The default order is CPU, busiest first.
    const byCpu = await request(server, 'GET', '/v1/keys', undefined, as('all'));
    const cpu = (byCpu.body.keys as { cpuMs: number }[]).map((stats) => stats.cpuMs);
    expect(cpu).toEqual([...cpu].sort((x, y) => y - x));
    expect(byCpu.body.sort).toBe('cpuMs');
  });

  it('refuses bad queries and missing tokens in the documented error shape', async () => {
    const server = openServer({ root: await twoSwarms(), tokens: TOKENS });
    for (const query of ['sort=bogus', 'limit=0', 'limit=1001', 'limit=ten', 'limit=1&limit=2', 'page=2']) {
      const reply = await request(server, 'GET', `/v1/keys?${query}`, undefined, as('all'));
      expect(reply, query).toMatchObject({ status: 400, body: { code: 'ERR_SANDPOOL_INVALID_OPTIONS' } });
      expect(reply.body.message, query).toEqual(expect.any(String));
    }
    expect((await request(server, 'GET', '/v1/keys?limit=1000', undefined, as('all'))).status).toBe(200);
    expect(await request(server, 'GET', '/v1/keys')).toMatchObject({
      status: 401,
      body: { code: 'ERR_SANDPOOL_HTTP_UNAUTHORIZED' },
    });
  });

  it("says which sandbox layers the node's process keys get, to every token, as /healthz does", async () => {
    const root = await twoSwarms();
    // Readable by a process key's uid, as makeRoot's 0700 folder is not.
    await chmod(root, 0o755);
    const server = openServer({ root, tokens: TOKENS, isolation: 'process' });
    await request(server, 'POST', '/v1/call/a/notifier_agent', { fn: 'add', args: [1, 2] }, as('all'));
    const { sandbox } = (await request(server, 'GET', '/healthz')).body;
    expect(sandbox).not.toBeNull();
    const scoped = await request(server, 'GET', '/v1/keys', undefined, as('read-a'));
    expect(scoped.body.sandbox).toEqual(sandbox);
    expect((scoped.body.keys as unknown[])[0]).toMatchObject({ key: 'a/notifier_agent', isolation: 'process' });
  });
});

describe('POST /v1/swarms/:swarm/invalidate', () => {
  it('reloads the swarm with a write token, and answers 409 with scrubbed errors when new code fails', async () => {
    const root = await twoSwarms();
    const server = openServer({ root, tokens: TOKENS });
    const notify = async (key: string): Promise<unknown> =>
      (await request(server, 'POST', `/v1/call/${key}`, { fn: 'notify', args: ['x'] }, as('all'))).body;
    await notify('a/notifier_agent');
    await notify('a/second');
    await notify('b/notifier_agent');

    for (const token of ['read-a', 'write-b']) {
      expect(await request(server, 'POST', '/v1/swarms/a/invalidate', undefined, as(token))).toMatchObject({
        status: 403,
        body: { code: 'ERR_SANDPOOL_HTTP_FORBIDDEN' },
      });
    }

    await writeFile(join(root, 'a/live/format.mjs'), "export const tag = (m) => '[format-v2] ' + m;\n");
    const all = await request(server, 'POST', '/v1/swarms/a/invalidate', undefined, as('write-a'));
    expect(all).toEqual({
      status: 200,
      node: 'node-1',
      body: { reloaded: ['a/notifier_agent', 'a/second'], failed: [] },
    });
    expect(await notify('a/notifier_agent')).toMatchObject({ result: { text: '[format-v2] x', count: 1 } });
    // Another swarm's worker kept its state.
    expect(await notify('b/notifier_agent')).toMatchObject({ result: { count: 2 } });

    const one = await request(server, 'POST', '/v1/swarms/a/invalidate', { stem: 'second' }, as('write-a'));
    expect(one.body).toEqual({ reloaded: ['a/second'], failed: [] });

    // A missing import: the build names the place in the swarm, never a host path.
    await writeFile(join(root, 'a/live/second.mjs'), "import './gone.mjs';\nexport const x = 1;\n");
    const partial = await request(server, 'POST', '/v1/swarms/a/invalidate', {}, as('write-a'));
    expect(partial).toMatchObject({
      status: 409,
      body: {
        code: 'ERR_SANDPOOL_HTTP_RELOAD_FAILED',
        message: expect.any(String),
        reloaded: ['a/notifier_agent'],
        failed: [
          { key: 'a/second', code: 'ERR_SANDPOOL_MODULE_LOAD', message: expect.stringContaining('live/second.mjs:1:') },
        ],
      },
    });
    expect(JSON.stringify(partial.body)).not.toContain(root);
    // The key whose new code failed keeps answering with its old code.
    expect(await notify('a/second')).toMatchObject({ result: { text: '[format-v2] x' } });
  });

  it('checks the swarm, the body and the names', async () => {
    const server = openServer({ root: await twoSwarms(), tokens: TOKENS });
    const writer = openServer({ root: await twoSwarms(), token: 'all-write' });
    const send = (url: string, body?: unknown): Promise<Reply> => request(writer, 'POST', url, body, as('all-write'));
    expect(await send('/v1/swarms/ghost/invalidate')).toMatchObject({
      status: 404,
      body: { code: 'ERR_SANDPOOL_SWARM_NOT_FOUND' },
    });
    expect(await send('/v1/swarms/a/invalidate', { stem: 'x', extra: 1 })).toMatchObject({
      status: 400,
      body: { code: 'ERR_SANDPOOL_INVALID_OPTIONS' },
    });
    expect(await send('/v1/swarms/a/invalidate', { stem: '../x' })).toMatchObject({
      status: 400,
      body: { code: 'ERR_SANDPOOL_INVALID_KEY' },
    });
    expect(await send('/v1/swarms/a..b/invalidate')).toMatchObject({
      status: 400,
      body: { code: 'ERR_SANDPOOL_INVALID_KEY' },
    });
    // Nothing loaded yet: nothing to reload, and nothing failed.
    expect(await send('/v1/swarms/a/invalidate', { snapshot: 'jan' })).toMatchObject({
      status: 200,
      body: { reloaded: [], failed: [] },
    });
    expect((await request(server, 'POST', '/v1/swarms/a/invalidate')).status).toBe(401);
  });
});
