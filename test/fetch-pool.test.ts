import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { createPool, type FetchPolicy } from 'sandpool';
import { afterEach, describe, expect, it } from 'vitest';
import { code, thrownSync } from './support/errors.js';
import { closeServers, endless, type Served, serve } from './support/http.js';
import { eventually, installCleanup, invariants, openPool } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

/**
 * `sandpool.host.fetch` through a pool, against real HTTP servers on 127.0.0.1: what an agent
 * reaches, what it never sees, and how the body streams and ends. The fetcher's own rules
 * (addresses, redirects, secrets, bounds) are proved in fetch-capability.test.ts.
 */

installCleanup();
afterEach(closeServers);

const AGENT = `
export async function get(url, init) {
  const response = await sandpool.host.fetch(url, init);
  return {
    status: response.status,
    ok: response.ok,
    statusText: response.statusText,
    url: response.url,
    redirected: response.redirected,
    headers: [...response.headers],
    instance: response instanceof Response,
    body: await response.text(),
  };
}
export async function attempt(url, init) {
  try {
    return { ok: true, value: await get(url, init) };
  } catch (error) {
    return { ok: false, name: error.name, code: error.code, message: error.message };
  }
}
export async function json(url) {
  return await (await sandpool.host.fetch(new URL(url))).json();
}
// Reads n chunks, waits for the test, then cancels the body.
export async function readSome(url, n) {
  const reader = (await sandpool.host.fetch(url)).body.getReader();
  let bytes = 0;
  for (let i = 0; i < n; i += 1) bytes += (await reader.read()).value.byteLength;
  await sandpool.host.hold();
  await reader.cancel();
  return bytes;
}
export async function abortWaiting(url) {
  const controller = new AbortController();
  const pending = sandpool.host.fetch(url, { signal: controller.signal });
  await sandpool.host.arrived();
  controller.abort();
  return await pending.then(() => 'answered', (error) => error.name);
}
export async function abortReading(url) {
  const controller = new AbortController();
  const reader = (await sandpool.host.fetch(url, { signal: controller.signal })).body.getReader();
  await reader.read();
  controller.abort();
  for (;;) {
    try {
      if ((await reader.read()).done) return 'ended';
    } catch (error) {
      return error.name;
    }
  }
}
export async function keep(url) {
  globalThis.kept = await sandpool.host.fetch(url);
  return 'kept';
}
export async function readKept() {
  return await globalThis.kept.text().then(() => 'read', (error) => error.code);
}
`;

const NEIGHBOUR = 'n/notifier_agent';
const SECRET = 'Bearer s3cret-kept-on-the-host';

async function root(): Promise<string> {
  return makeRoot({ 'f/live/web.mjs': AGENT, 'g/live/web.mjs': AGENT, ...(await counterAgent('n')) });
}

/** Calls the neighbour in a loop until `done` resolves; its answers, which must count 1, 2, 3… */
async function neighbourAnswering(pool: ReturnType<typeof openPool>, done: Promise<unknown>): Promise<number[]> {
  const answers: number[] = [];
  let over = false;
  void done.finally(() => {
    over = true;
  });
  while (!over) answers.push(((await pool.call(NEIGHBOUR, 'notify', ['x'])) as { count: number }).count);
  return answers;
}

/** Holds each response until the test releases it; `requests()` is what arrived. */
function held(): {
  handler: (request: IncomingMessage, response: ServerResponse) => void;
  arrived: Promise<void>;
} {
  let arrive: () => void = () => {};
  const arrived = new Promise<void>((resolve) => {
    arrive = resolve;
  });
  return { handler: () => arrive(), arrived };
}

/** A port nothing listens on (one a server had a moment ago). */
async function freePort(): Promise<number> {
  const server = createNetServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe('the fetch option', () => {
  it('is off unless a key has a policy: checked at createPool, or per spawn when a function', async () => {
    const api = await serve((_request, response) => response.end('x'));
    const policy: FetchPolicy = { allow: [api.origin] };
    const agentsRoot = await root();
    const none = openPool({ root: agentsRoot, host: { other: () => 1 } });
    const other = openPool({ root: agentsRoot, fetch: { g: policy } });
    for (const pool of [none, other]) {
      expect(await pool.call('f/web', 'attempt', [api.origin])).toMatchObject({
        ok: false,
        code: 'ERR_SANDPOOL_HOST_NOT_FOUND',
      });
    }
    expect(await other.call('g/web', 'attempt', [api.origin])).toMatchObject({ ok: true, value: { body: 'x' } });

    expect(thrownSync(() => createPool({ root: agentsRoot, fetch: { f: { allow: ['ftp://x'] } } }))).toEqual({
      code: 'ERR_SANDPOOL_INVALID_OPTIONS',
      paths: ['fetch.f.allow.0'],
    });
    expect(thrownSync(() => createPool({ root: agentsRoot, fetch: { '../x': policy } })).paths).toEqual(['fetch']);

    const perKey = openPool({
      root: agentsRoot,
      fetch: (key) => (key.swarm === 'f' ? policy : key.swarm === 'g' ? ({ allow: 'nope' } as never) : null),
    });
    expect(await perKey.call('f/web', 'attempt', [api.origin])).toMatchObject({ ok: true });
    expect(await code(perKey.call('g/web', 'get', [api.origin]))).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
    expect(await perKey.call(NEIGHBOUR, 'notify', ['x'])).toMatchObject({ count: 1 });
    // A capability named fetch and a fetch policy for the same key: which one is meant is unclear.
    const both = openPool({ root: agentsRoot, host: { fetch: () => 'mine' }, fetch: { f: policy } });
    expect(await code(both.call('f/web', 'get', [api.origin]))).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
  });

  it('reaches a listed service, adding a secret the agent never sees, while a neighbour answers', async () => {
    const api = await serve((request, response) => {
      response.setHeader('content-type', 'application/json');
      response.setHeader('set-cookie', 'session=from-the-secret');
      response.end(JSON.stringify({ path: request.url, authorized: request.headers.authorization === SECRET }));
    });
    const pool = openPool({
      root: await root(),
      fetch: { f: { allow: [api.origin], secrets: { [api.origin]: { headers: { authorization: SECRET } } } } },
    });
    const calls = Promise.all([
      pool.call('f/web', 'get', [`${api.origin}/orders?x=1`, { headers: { accept: 'application/json' } }]),
      pool.call('f/web', 'json', [`${api.origin}/by-url-object`]),
    ]);
    const neighbour = neighbourAnswering(pool, calls);
    const [got, parsed] = await calls;
    expect(got).toMatchObject({
      status: 200,
      ok: true,
      url: `${api.origin}/orders?x=1`,
      redirected: false,
      instance: true,
      body: JSON.stringify({ path: '/orders?x=1', authorized: true }),
    });
    expect(parsed).toEqual({ path: '/by-url-object', authorized: true });
    expect(JSON.stringify(got)).not.toContain('s3cret');
    expect((got as { headers: [string, string][] }).headers.map(([name]) => name)).not.toContain('set-cookie');
    expect(api.requests.map((seen) => seen.headers.authorization)).toEqual([SECRET, SECRET]);
    const answers = await neighbour;
    expect(answers).toEqual(answers.map((_n, index) => index + 1));
    expect(invariants(pool)).toEqual([]);
  });

  it('refuses what the policy does not allow with ACCESS_DENIED in the agent: an unlisted origin, a name resolving to a private address, a redirect to one', async () => {
    const internal = await serve((_request, response) => response.end('internal secrets'));
    const api = await serve((_request, response) =>
      response.writeHead(302, { location: `http://localhost:${internal.port}/admin` }).end(),
    );
    const pool = openPool({
      root: await root(),
      fetch: {
        f: {
          allow: [api.origin, `http://localhost:${internal.port}`, `http://rebound.test:${internal.port}`],
          // As DNS rebinding would answer: a listed name that now resolves to this machine.
          lookup: async () => ['127.0.0.1'],
        },
      },
    });
    const targets = [
      `http://127.0.0.1:${internal.port}/admin`,
      `http://rebound.test:${internal.port}/admin`,
      `${api.origin}/redirect`,
    ];
    const attempts = Promise.all(targets.map((target) => pool.call('f/web', 'attempt', [target])));
    const neighbour = neighbourAnswering(pool, attempts);
    for (const [index, outcome] of (await attempts).entries()) {
      expect(outcome, targets[index]).toMatchObject({ ok: false, code: 'ERR_SANDPOOL_ACCESS_DENIED' });
    }
    const answers = await neighbour;
    expect(answers).toEqual(answers.map((_n, index) => index + 1));
    expect(api.requests).toHaveLength(1);
    expect(internal.connections()).toBe(0);
    // Uncaught in the agent, the refusal is the call's cause.
    const error = await pool.call('f/web', 'get', [targets[0]]).catch((thrown: unknown) => thrown);
    expect(error).toMatchObject({ code: 'ERR_SANDPOOL_AGENT_ERROR', cause: { code: 'ERR_SANDPOOL_ACCESS_DENIED' } });
  });

  it('keeps its codes: a timeout, a body past its bound, a refused connection', async () => {
    const slow = await serve(() => {});
    const large = await serve((_request, response) => response.end(Buffer.alloc(4096)));
    const closedOrigin = `http://127.0.0.1:${await freePort()}`;
    const pool = openPool({
      root: await root(),
      fetch: {
        f: { allow: [slow.origin], timeoutMs: 300 },
        g: { allow: [large.origin, closedOrigin], maxResponseBytes: 1024 },
      },
    });
    const outcomes = await Promise.all([
      pool.call('f/web', 'attempt', [slow.origin]),
      pool.call('g/web', 'attempt', [large.origin]),
      pool.call('g/web', 'attempt', [closedOrigin]),
    ]);
    expect(outcomes.map((outcome) => (outcome as { code: string }).code)).toEqual([
      'ERR_SANDPOOL_TIMEOUT',
      'ERR_SANDPOOL_DATA_CLONE',
      'ECONNREFUSED',
    ]);
  });
});

describe('a fetch body', () => {
  it('streams from the host only as far as the agent reads, and cancelling it closes the connection', async () => {
    let written = 0;
    let stalled = false;
    let progressAt = performance.now();
    const api: Served = await serve((_request, response) => {
      // Up to 100 MB in 64 KiB chunks, as fast as the client takes them.
      const more = (): void => {
        while (written < 100 * 2 ** 20 && !response.destroyed) {
          written += 2 ** 16;
          progressAt = performance.now();
          if (!response.write(Buffer.alloc(2 ** 16, 1))) {
            stalled = true;
            return void response.once('drain', () => {
              stalled = false;
              more();
            });
          }
        }
        response.end();
      };
      more();
    });
    let release: () => void = () => {};
    const holding = new Promise<void>((resolve) => {
      release = resolve;
    });
    let held = false;
    const pool = openPool({
      root: await root(),
      host: {
        hold: () => {
          held = true;
          return holding;
        },
      },
      fetch: { f: { allow: [api.origin], maxResponseBytes: 2 ** 30 } },
    });
    const reading = pool.call<number>('f/web', 'readSome', [api.origin, 2]);
    await eventually(() => held);
    // The agent has read two chunks and stopped: the server is held back by the socket (it
    // stops writing for good), not by a host reading the whole body into memory.
    await eventually(() => stalled && performance.now() - progressAt > 500);
    expect(written).toBeLessThan(50 * 2 ** 20);
    release();
    expect(await reading).toBeGreaterThan(0);
    await eventually(() => api.cutOff() === 1);
  });

  it("ends with the agent's abort, waiting or reading, and fails with ABORTED when read after its call ended", async () => {
    const waiting = held();
    const stalls = await serve(waiting.handler);
    const bodies = await serve(endless);
    const pool = openPool({
      root: await root(),
      host: { arrived: () => waiting.arrived },
      fetch: { f: { allow: [stalls.origin, bodies.origin] } },
    });
    expect(await pool.call('f/web', 'abortWaiting', [stalls.origin])).toBe('AbortError');
    await eventually(() => stalls.cutOff() === 1);
    expect(await pool.call('f/web', 'abortReading', [bodies.origin])).toBe('AbortError');
    await eventually(() => bodies.cutOff() === 1);
    expect(await pool.call('f/web', 'keep', [bodies.origin])).toBe('kept');
    await eventually(() => bodies.cutOff() === 2);
    expect(await pool.call('f/web', 'readKept')).toBe('ERR_SANDPOOL_ABORTED');
    expect(invariants(pool)).toEqual([]);
  });
});
