import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { counterAgent, fixture, makeRoot, writeFiles } from './support/root.js';
import { installServerCleanup, openServer, request } from './support/server.js';

installServerCleanup();

/** The digest a snapshot reply names, or a failure saying what came instead. */
function digestOf(reply: { body: unknown }): string {
  const digest = (reply.body as { snapshot?: { digest?: unknown } } | null)?.snapshot?.digest;
  if (typeof digest !== 'string') throw new Error(`no snapshot digest in ${JSON.stringify(reply.body)}`);
  return digest;
}

const BIN = fileURLToPath(new URL('../packages/cli/dist/bin.js', import.meta.url));

describe('snapshot routes', () => {
  it('creates (idempotently for the same content), lists, gets and removes snapshots', async () => {
    const root = await makeRoot(await counterAgent('a'));
    const server = openServer({ root });
    const created = await request(server, 'POST', '/v1/swarms/a/snapshots/jan');
    expect(created).toMatchObject({
      status: 200,
      node: 'node-1',
      body: { snapshot: { swarm: 'a', name: 'jan', files: 6 } },
    });
    // A retry, or another node, creating the same content gets the same snapshot back.
    const again = await request(server, 'POST', '/v1/swarms/a/snapshots/jan');
    expect(again).toEqual(created);

    await writeFiles(root, await counterAgent('a', 'v2'));
    const conflict = await request(server, 'POST', '/v1/swarms/a/snapshots/jan');
    expect(conflict).toMatchObject({ status: 409, body: { code: 'ERR_SANDPOOL_SNAPSHOT_EXISTS' } });

    const call = await request(server, 'POST', '/v1/call/a@jan/notifier_agent', { fn: 'notify', args: ['hi'] });
    expect(call.body).toMatchObject({ result: { version: 'v1' } });
    expect((await request(server, 'GET', '/v1/swarms/a/snapshots')).body).toEqual({
      snapshots: [created.body.snapshot],
    });
    expect((await request(server, 'GET', '/v1/swarms/a/snapshots/jan')).body).toEqual(created.body);

    const removed = await request(server, 'DELETE', '/v1/swarms/a/snapshots/jan');
    expect(removed).toMatchObject({ status: 204, node: 'node-1' });
    // Its worker was drained by the remove.
    expect(server.pool.stats().workers).toBe(0);
    expect(await request(server, 'DELETE', '/v1/swarms/a/snapshots/jan')).toMatchObject({
      status: 404,
      body: { code: 'ERR_SANDPOOL_SNAPSHOT_NOT_FOUND' },
    });
    expect((await request(server, 'GET', '/v1/swarms/a/snapshots')).body).toEqual({ snapshots: [] });
  });

  it('points a channel at a snapshot (PUT /v1/swarms/:swarm/channels/:name), and the channel follows deploys', async () => {
    const root = await makeRoot(await counterAgent('a'));
    const server = openServer({ root });
    const jan = digestOf(await request(server, 'POST', '/v1/swarms/a/snapshots/jan'));
    await writeFiles(root, await counterAgent('a', 'v2'));
    const jun = digestOf(await request(server, 'POST', '/v1/swarms/a/snapshots/jun'));
    const prod = await request(server, 'PUT', '/v1/swarms/a/channels/prod', { target: 'jan' });
    expect(prod).toMatchObject({
      status: 200,
      body: { snapshot: { swarm: 'a', name: 'prod', digest: jan } },
    });
    const notify = { fn: 'notify', args: ['hi'] };
    expect((await request(server, 'POST', '/v1/call/a@prod/notifier_agent', notify)).body).toMatchObject({
      result: { version: 'v1' },
    });
    await request(server, 'PUT', '/v1/swarms/a/channels/prod', { target: 'jun' });
    expect((await request(server, 'GET', '/v1/swarms/a/snapshots/prod')).body).toMatchObject({
      snapshot: { digest: jun },
    });
    expect((await request(server, 'POST', '/v1/call/a@prod/notifier_agent', notify)).body).toMatchObject({
      result: { version: 'v2' },
    });
    for (const [body, status, code] of [
      [{}, 400, 'ERR_SANDPOOL_INVALID_OPTIONS'],
      [{ target: 1 }, 400, 'ERR_SANDPOOL_INVALID_OPTIONS'],
      [{ target: '../x' }, 400, 'ERR_SANDPOOL_INVALID_KEY'],
      [{ target: 'nope' }, 404, 'ERR_SANDPOOL_SNAPSHOT_NOT_FOUND'],
    ] as const) {
      expect(await request(server, 'PUT', '/v1/swarms/a/channels/prod', body)).toMatchObject({
        status,
        body: { code },
      });
    }
    expect((await request(server, 'GET', '/v1/swarms/a/snapshots/prod')).body).toMatchObject({
      snapshot: { digest: jun },
    });
  });

  it('answers a swarm without live code with 404 and bad names with 400', async () => {
    const server = openServer({ root: await makeRoot() });
    expect(await request(server, 'POST', '/v1/swarms/ghost/snapshots/jan')).toMatchObject({
      status: 404,
      body: { code: 'ERR_SANDPOOL_SWARM_NOT_FOUND' },
    });
    expect(await request(server, 'GET', '/v1/swarms/ghost/snapshots')).toMatchObject({ status: 404 });
    expect(await request(server, 'POST', '/v1/swarms/a/snapshots/a..b')).toMatchObject({
      status: 400,
      body: { code: 'ERR_SANDPOOL_INVALID_KEY' },
    });
  });
});

describe('health and metrics', () => {
  it('reports calls by outcome, latency by kind, workers, spawns, evictions, crashes and loop delay', async () => {
    const root = await makeRoot({ ...(await counterAgent('a')), 'a/live/faulty.mjs': await fixture('faulty.mjs') });
    const server = openServer({ root, maxWorkers: 1 });
    await request(server, 'POST', '/v1/swarms/a/snapshots/jan');
    await request(server, 'POST', '/v1/call/a/notifier_agent', { fn: 'add', args: [1, 1] });
    await request(server, 'POST', '/v1/call/a@jan/notifier_agent', { fn: 'add', args: [1, 1] });
    await request(server, 'POST', '/v1/call/a/faulty', { fn: 'exit', args: [1] });
    await request(server, 'POST', '/v1/call/a/faulty', { fn: 'nope' });
    await request(server, 'POST', '/v1/call', { fn: 'x' });

    const response = await server.app.inject({ method: 'GET', url: '/metrics' });
    expect(response.headers['content-type']).toMatch(/^text\/plain/);
    const text = response.body;
    const value = (series: string): number => {
      const line = text.split('\n').find((candidate) => candidate.startsWith(series));
      if (line === undefined) throw new Error(`no ${series} in\n${text}`);
      return Number(line.slice(line.lastIndexOf(' ') + 1));
    };
    expect(value('sandpool_calls_total{outcome="ok"')).toBe(2);
    expect(value('sandpool_calls_total{outcome="ERR_SANDPOOL_WORKER_EXITED"')).toBe(1);
    expect(value('sandpool_calls_total{outcome="ERR_SANDPOOL_EXPORT_NOT_FOUND"')).toBe(1);
    expect(value('sandpool_calls_total{outcome="ERR_SANDPOOL_INVALID_KEY"')).toBe(1);
    expect(value('sandpool_call_duration_seconds_count{node="node-1",kind="live"}')).toBe(3);
    expect(value('sandpool_call_duration_seconds_count{node="node-1",kind="snapshot"}')).toBe(1);
    expect(value('sandpool_spawns_total{reason="cold"')).toBe(4);
    expect(value('sandpool_evictions_total{reason="lru"')).toBe(2);
    expect(value('sandpool_crashes_total{reason="exit"')).toBe(1);
    expect(value('sandpool_workers_alive')).toBe(1);
    expect(value('sandpool_workers_busy')).toBe(0);
    expect(value('sandpool_queue_depth')).toBe(0);
    expect(value('nodejs_eventloop_lag_p99_seconds')).toBeGreaterThanOrEqual(0);
  });

  it('drains: /readyz 503 and new calls refused, running calls answered, then close ends the pool', async () => {
    const server = openServer({ root: await makeRoot(await counterAgent('a')) });
    expect(await request(server, 'GET', '/readyz')).toMatchObject({ status: 200, body: { status: 'ready' } });
    // Running until the test releases it, through the pool: the server refuses calls once draining.
    const running = request(server, 'POST', '/v1/call/a/notifier_agent', { fn: 'hold', args: ['r', 300] });
    await expect.poll(() => server.pool.stats().busy, { timeout: 30_000 }).toBe(1);

    // app.close() drains first too, but once closing, fastify refuses injected requests.
    server.drain();
    const ready = await request(server, 'GET', '/readyz');
    expect(ready).toMatchObject({ status: 503, node: 'node-1', body: { code: 'ERR_SANDPOOL_CLOSED' } });
    expect((await request(server, 'GET', '/healthz')).status).toBe(200);
    const refused = await request(server, 'POST', '/v1/call/a/notifier_agent', { fn: 'add', args: [1, 1] });
    expect(refused).toMatchObject({ status: 503, body: { code: 'ERR_SANDPOOL_CLOSED' } });

    expect(await server.pool.call('a/notifier_agent', 'release', ['r'])).toBe(true);
    expect((await running).body).toEqual({ result: 300 });
    await server.app.close();
    expect(server.pool.stats()).toMatchObject({ workers: 0, spares: 0 });
  });
});

describe('sandpool serve', () => {
  it('serves until SIGTERM, finishes the running call, then exits 0', async () => {
    const root = await makeRoot({
      ...(await counterAgent('a')),
      // Says it runs, then answers after \`ms\`: a key reads only its artifact, so no file the test makes can release it.
      'a/live/gate.mjs': `export async function hold(ms) {
  console.log('holding');
  await new Promise((resolve) => setTimeout(resolve, ms));
  return 'released';
}
`,
    });
    const { NODE_OPTIONS: _ignored, ...env } = process.env;
    const child = spawn(process.execPath, [BIN, 'serve', '--root', root, '--port', '0', '--node-name', 'cli-1'], {
      env: { ...env, SANDPOOL_TOKEN: 'tok' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      let output = '';
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
      child.stderr.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
      const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
      const seen = (pattern: RegExp) => expect.poll(() => pattern.test(output), { timeout: 30_000 }).toBe(true);
      await seen(/listening on (\S+)/);
      const base = /listening on (\S+)/.exec(output)?.[1] ?? '';

      const call = (fn: string, args: unknown[], token = 'tok', stem = 'notifier_agent'): Promise<Response> =>
        fetch(`${base}/v1/call/a/${stem}`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
          body: JSON.stringify({ fn, args }),
        });
      const denied = await call('add', [1, 2], 'wrong');
      expect(denied.status).toBe(401);
      expect(denied.headers.get('x-sandpool-node')).toBe('cli-1');
      expect(await (await call('add', [1, 2])).json()).toEqual({ result: 3 });

      // Generous: the SIGTERM below is sent, and seen, long before the call ends.
      const running = call('hold', [5_000], 'tok', 'gate');
      await seen(/\[a\/gate\] holding/);
      child.kill('SIGTERM');
      await seen(/SIGTERM, draining/);
      const answer = await running;
      expect(answer.status).toBe(200);
      expect(await answer.json()).toEqual({ result: 'released' });
      expect(await exited).toBe(0);
      expect(output).toContain('node cli-1 stopped');
    } finally {
      child.kill('SIGKILL');
    }
  });
});
