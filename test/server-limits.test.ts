import { connect, type Socket } from 'node:net';
import type { SandpoolServer } from '@sandpool/server';
import { describe, expect, it } from 'vitest';
import { counterAgent, makeRoot } from './support/root.js';
import { installServerCleanup, openServer, request } from './support/server.js';

installServerCleanup();

const SLOW_AGENT = 'export async function nap(ms) { await new Promise((r) => setTimeout(r, ms)); return ms; }\n';

async function listen(server: SandpoolServer): Promise<number> {
  await server.app.listen({ port: 0, host: '127.0.0.1' });
  const address = server.app.server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

/** A raw socket, so a test controls every byte and sees when the server hangs up. */
function open(port: number): Promise<{ socket: Socket; closed: Promise<number> }> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const socket = connect(port, '127.0.0.1');
    socket.on('error', () => {});
    // Read (and drop) what comes: a paused socket that nobody reads may never see the server's FIN.
    socket.resume();
    const closed = new Promise<number>((done) => socket.on('close', () => done(Date.now() - started)));
    socket.once('connect', () => resolve({ socket, closed }));
    socket.once('error', reject);
  });
}

/** Writes `text` one byte at a time, `every` ms apart, until the socket closes. */
function trickle(socket: Socket, text: string, every: number): void {
  let at = 0;
  const timer = setInterval(() => {
    if (socket.destroyed || at >= text.length) return clearInterval(timer);
    socket.write(text[at] ?? '');
    at += 1;
  }, every);
  socket.on('close', () => clearInterval(timer));
}

const LIMITS = { headersTimeoutMs: 500, requestTimeoutMs: 1_000, keepAliveTimeoutMs: 300 };
// What "within the bound" means here: the deadline, Node's check interval and a wide margin
// for a loaded machine. A connection the server never closes would hang well past it.
const BOUND_MS = 20_000;

describe('slow clients', () => {
  it('closes 200 connections that trickle partial headers, and keeps answering others', async () => {
    const server = openServer({ root: await makeRoot(await counterAgent('a')), ...LIMITS });
    const port = await listen(server);
    const sockets = await Promise.all(Array.from({ length: 200 }, () => open(port)));
    for (const { socket } of sockets) {
      socket.write('POST /v1/call HTTP/1.1\r\nHost: x\r\n');
      trickle(socket, `X-Slow: ${'a'.repeat(100)}`, 100);
    }
    const reply = await fetch(`http://127.0.0.1:${port}/v1/call/a/notifier_agent`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ fn: 'add', args: [1, 2] }),
    });
    expect(await reply.json()).toEqual({ result: 3 });
    const lifetimes = await Promise.all(sockets.map(({ closed }) => closed));
    expect(Math.max(...lifetimes)).toBeLessThan(BOUND_MS);
  });

  it('closes connections that send nothing at all', async () => {
    const server = openServer({ root: await makeRoot(), ...LIMITS });
    const port = await listen(server);
    const sockets = await Promise.all(Array.from({ length: 50 }, () => open(port)));
    const lifetimes = await Promise.all(sockets.map(({ closed }) => closed));
    expect(Math.max(...lifetimes)).toBeLessThan(BOUND_MS);
  });

  it('closes 200 connections whose bodies arrive a byte at a time', async () => {
    const server = openServer({ root: await makeRoot(await counterAgent('a')), ...LIMITS });
    const port = await listen(server);
    const sockets = await Promise.all(Array.from({ length: 200 }, () => open(port)));
    // Sent whole, it would take a minute: a server without a request deadline keeps it far past the bound.
    const body = JSON.stringify({ fn: 'add', args: [1, 2], pad: 'x'.repeat(1_200) });
    for (const { socket } of sockets) {
      socket.write(
        `POST /v1/call/a/notifier_agent HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`,
      );
      trickle(socket, body, 50);
    }
    const lifetimes = await Promise.all(sockets.map(({ closed }) => closed));
    expect(Math.max(...lifetimes)).toBeLessThan(BOUND_MS);
  });

  it('closes an idle keep-alive connection after its request was answered', async () => {
    const server = openServer({ root: await makeRoot(), ...LIMITS });
    const port = await listen(server);
    const { socket, closed } = await open(port);
    let answer = '';
    socket.on('data', (chunk: Buffer) => {
      answer += chunk.toString();
    });
    socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    expect(await closed).toBeLessThan(BOUND_MS);
    expect(answer).toMatch(/^HTTP\/1\.1 200/);
  });
});

describe('call timeouts', () => {
  it.each([
    ['0 (no limit)', 0],
    ['more than the server allows', 60_000],
    ['nothing', undefined],
  ])('a client asking for %s is still bound by the server timeout', async (_name, timeoutMs) => {
    const server = openServer({ root: await makeRoot({ 'a/live/slow.mjs': SLOW_AGENT }), callTimeoutMs: 300 });
    const reply = await request(server, 'POST', '/v1/call/a/slow', {
      fn: 'nap',
      args: [10_000],
      ...(timeoutMs === undefined ? {} : { timeoutMs }),
    });
    expect(reply).toMatchObject({ status: 504, body: { code: 'ERR_SANDPOOL_TIMEOUT' } });
  });

  it('lets a client ask for less than the server allows', async () => {
    const server = openServer({ root: await makeRoot({ 'a/live/slow.mjs': SLOW_AGENT }), callTimeoutMs: 60_000 });
    const reply = await request(server, 'POST', '/v1/call/a/slow', { fn: 'nap', args: [10_000], timeoutMs: 200 });
    expect(reply).toMatchObject({ status: 504, body: { code: 'ERR_SANDPOOL_TIMEOUT' } });
  });
});

describe('error bodies', () => {
  it('answers a malformed %-escape in the URL in the documented shape', async () => {
    const server = openServer({ root: await makeRoot() });
    const reply = await request(server, 'POST', '/v1/call/a/%E0%A4%A', { fn: 'f' });
    expect(reply.status).toBe(400);
    expect(reply.node).toBe('node-1');
    expect(Object.keys(reply.body).sort()).toEqual(['code', 'message']);
    expect(reply.body.code).toBe('ERR_SANDPOOL_HTTP_BAD_REQUEST');
  });

  it.each([
    ['an unknown route', 'GET', '/v1/nothing', undefined, 404, 'ERR_SANDPOOL_HTTP_NOT_FOUND'],
    ['an unknown swarm route', 'GET', '/v1/swarms/a/nothing', undefined, 404, 'ERR_SANDPOOL_HTTP_NOT_FOUND'],
  ] as const)('answers %s in the documented shape', async (_name, method, url, payload, status, code) => {
    const server = openServer({ root: await makeRoot() });
    const reply = await request(server, method, url, payload);
    expect(reply).toMatchObject({ status, body: { code, message: expect.any(String) } });
  });

  it('names no absolute server path, not even in --debug stacks', async () => {
    const root = await makeRoot({
      'a/live/broken.mjs': 'export const = ;\n',
      'a/live/throws.mjs': 'throw new Error("boom");\n',
      'a/live/fails.mjs': 'export function f() { throw new Error("no"); }\n',
    });
    const server = openServer({ root, debug: true });
    for (const stem of ['broken', 'throws', 'fails', 'missing']) {
      const reply = await request(server, 'POST', `/v1/call/a/${stem}`, { fn: 'f' });
      expect(reply.status).toBeGreaterThanOrEqual(400);
      const text = JSON.stringify(reply.body);
      expect(text).not.toContain(root);
      expect(text).not.toMatch(/\/(tmp|root|home|usr|work)\//);
    }
    // Still useful: the stack names the agent's file and line, relative to the swarm's folder.
    const failed = await request(server, 'POST', '/v1/call/a/fails', { fn: 'f' });
    expect(JSON.stringify(failed.body)).toContain('live/fails.mjs:1:29');
  });

  it('refuses a result or chunk whose JSON would pass its bound before writing any, and keeps answering', async () => {
    const holes = 'export function holes() { const a = []; a.length = 2e7; a[0] = 1; return a; }\n';
    const chunks = 'export async function* holes() { yield 1; const a = []; a.length = 2e7; yield a; }\n';
    const root = await makeRoot({
      ...(await counterAgent('n')),
      'x/live/sparse.mjs': holes,
      'x/live/stream.mjs': chunks,
    });
    const server = openServer({ root });
    // A few bytes cloned, 100 MB of JSON: refused at once, not written for half a minute.
    const result = await request(server, 'POST', '/v1/call/x/sparse', { fn: 'holes' });
    expect(result.status).toBe(400);
    expect(result.body).toMatchObject({ code: 'ERR_SANDPOOL_DATA_CLONE' });
    const streamed = await server.app.inject({
      method: 'POST',
      url: '/v1/stream/x/stream',
      headers: { 'content-type': 'application/json' },
      payload: JSON.stringify({ fn: 'holes' }),
    });
    const lines = streamed.body
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(lines[0]).toEqual({ chunk: 1 });
    expect(lines[1]).toMatchObject({ error: { code: 'ERR_SANDPOOL_DATA_CLONE' } });
    const neighbour = await request(server, 'POST', '/v1/call/n/notifier_agent', { fn: 'add', args: [2, 3] });
    expect(neighbour.body).toEqual({ result: 5 });
  });

  it('does not echo a 9 MB key back', async () => {
    const server = openServer({ root: await makeRoot(), bodyLimit: 20 * 1024 * 1024 });
    const key = `a/${'x'.repeat(9 * 1024 * 1024)}`;
    const response = await server.app.inject({
      method: 'POST',
      url: '/v1/call',
      headers: { 'content-type': 'application/json' },
      payload: JSON.stringify({ key, fn: 'f' }),
    });
    expect(response.statusCode).toBe(400);
    expect(JSON.parse(response.body)).toMatchObject({ code: 'ERR_SANDPOOL_INVALID_KEY' });
    expect(response.body.length).toBeLessThan(16 * 1024);
  });

  it('accepts an empty JSON body where none is needed', async () => {
    const server = openServer({ root: await makeRoot(await counterAgent('a')) });
    const created = await server.app.inject({
      method: 'POST',
      url: '/v1/swarms/a/snapshots/jan',
      headers: { 'content-type': 'application/json' },
      payload: '',
    });
    expect(created.statusCode).toBe(200);
    expect(JSON.parse(created.body)).toMatchObject({ snapshot: { swarm: 'a', name: 'jan' } });
    // A call needs its body: empty is a 400 in the call's own terms, not a JSON parse error.
    const call = await server.app.inject({
      method: 'POST',
      url: '/v1/call/a/notifier_agent',
      headers: { 'content-type': 'application/json' },
      payload: '',
    });
    expect(call.statusCode).toBe(400);
    expect(JSON.parse(call.body)).toMatchObject({ code: 'ERR_SANDPOOL_INVALID_OPTIONS' });
  });
});

describe('scoped tokens', () => {
  const tokens = {
    reader: { swarms: ['a'] },
    writer: { swarms: ['a'], write: true },
    admin: { swarms: '*' as const, write: true },
  };
  const as = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` });

  async function scopedServer(): Promise<SandpoolServer> {
    return openServer({ root: await makeRoot({ ...(await counterAgent('a')), ...(await counterAgent('b')) }), tokens });
  }

  it('lets a token call only its swarms', async () => {
    const server = await scopedServer();
    const call = (key: string, token: string) =>
      request(server, 'POST', `/v1/call/${key}`, { fn: 'add', args: [1, 2] }, as(token));
    expect(await call('a/notifier_agent', 'reader')).toMatchObject({ status: 200, body: { result: 3 } });
    expect(await call('b/notifier_agent', 'reader')).toMatchObject({
      status: 403,
      body: { code: 'ERR_SANDPOOL_HTTP_FORBIDDEN' },
    });
    expect(await call('b/notifier_agent', 'admin')).toMatchObject({ status: 200 });
    expect(await call('a/notifier_agent', 'nobody')).toMatchObject({ status: 401 });
    // The refused call started nothing.
    expect(server.pool.stats().spawned).toBe(2);
  });

  it('needs write scope to create or remove a snapshot, not to read or verify one', async () => {
    const server = await scopedServer();
    const url = '/v1/swarms/a/snapshots/jan';
    expect(await request(server, 'POST', url, undefined, as('reader'))).toMatchObject({
      status: 403,
      body: { code: 'ERR_SANDPOOL_HTTP_FORBIDDEN' },
    });
    expect(await request(server, 'POST', url, undefined, as('writer'))).toMatchObject({ status: 200 });
    expect(await request(server, 'GET', url, undefined, as('reader'))).toMatchObject({ status: 200 });
    expect(await request(server, 'POST', `${url}/verify`, undefined, as('reader'))).toMatchObject({
      status: 200,
      body: { snapshot: { name: 'jan' } },
    });
    expect(await request(server, 'DELETE', url, undefined, as('reader'))).toMatchObject({ status: 403 });
    expect(await request(server, 'GET', '/v1/swarms/b/snapshots', undefined, as('writer'))).toMatchObject({
      status: 403,
    });
    expect((await request(server, 'DELETE', url, undefined, as('writer'))).status).toBe(204);
  });

  it('lists only the swarms a token reaches, and their stems', async () => {
    const server = await scopedServer();
    expect((await request(server, 'GET', '/v1/swarms', undefined, as('reader'))).body).toEqual({ swarms: ['a'] });
    expect((await request(server, 'GET', '/v1/swarms', undefined, as('admin'))).body).toEqual({ swarms: ['a', 'b'] });
    expect((await request(server, 'GET', '/v1/swarms/a/stems', undefined, as('reader'))).body).toEqual({
      swarm: 'a',
      stems: ['format', 'notifier_agent'],
    });
    expect(await request(server, 'GET', '/v1/swarms/b/stems', undefined, as('reader'))).toMatchObject({ status: 403 });
    expect(await request(server, 'GET', '/v1/swarms/zz/stems', undefined, as('admin'))).toMatchObject({
      status: 404,
      body: { code: 'ERR_SANDPOOL_SWARM_NOT_FOUND' },
    });
  });

  it('refuses a token file with a bad shape at start', () => {
    expect(() => openServer({ root: '/nonexistent', tokens: { t: { swarms: ['../x'] } } })).toThrow(
      expect.objectContaining({ code: 'ERR_SANDPOOL_INVALID_OPTIONS' }),
    );
  });
});
