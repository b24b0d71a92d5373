import type { IncomingMessage, ServerResponse } from 'node:http';
import { connect as netConnect, type Socket } from 'node:net';
import { SandpoolError } from 'sandpool';
import { afterEach, describe, expect, it } from 'vitest';
import { createFetcher, type Fetcher, type FetchResponse } from '../packages/sandpool/dist/host/capabilities/fetch.js';
import { isPublicAddress } from '../packages/sandpool/dist/host/capabilities/fetch-address.js';
import { guardedConnector } from '../packages/sandpool/dist/host/capabilities/fetch-connect.js';
import type { FetchPolicy } from '../packages/sandpool/dist/host/capabilities/fetch-policy.js';
import { code, rejection, thrownSync } from './support/errors.js';
import { closeServers, endless, serve } from './support/http.js';
import { eventually } from './support/pool.js';

/**
 * The built-in `fetch` capability against real HTTP servers on 127.0.0.1. Every address a
 * test could reach, were a check broken, is on this machine (loopback, `0.0.0.0`, IPv4-mapped
 * loopback): the other internal ranges are proved on the classification alone.
 */

const fetchers: Fetcher[] = [];

afterEach(async () => {
  await Promise.all(fetchers.splice(0).map((fetcher) => fetcher.close()));
  await closeServers();
});

function answer(text = 'hello'): (request: IncomingMessage, response: ServerResponse) => void {
  return (_request, response) => {
    response.setHeader('content-type', 'text/plain');
    response.end(text);
  };
}

function fetcher(policy: FetchPolicy): Fetcher {
  const made = createFetcher(policy);
  fetchers.push(made);
  return made;
}

const never = new AbortController().signal;

async function text(response: FetchResponse): Promise<string> {
  let out = '';
  for await (const chunk of response.body) out += Buffer.from(chunk).toString('utf8');
  return out;
}

/** Reads a body until it fails; the bytes read before, and the error. */
async function readUntilError(response: FetchResponse): Promise<{ bytes: number; error: SandpoolError }> {
  let bytes = 0;
  const error = await rejection(
    (async () => {
      for await (const chunk of response.body) bytes += chunk.byteLength;
    })(),
  );
  return { bytes, error };
}

describe('the policy', () => {
  it('is checked when the fetcher is made, and a bad secret is named by its header, never its value', () => {
    const secretValue = 'Bearer s3cret-never-shown';
    const cases: [unknown, string][] = [
      [{ allow: ['ftp://files.example.com'] }, 'allow.0'],
      [{ allow: ['https://api.example.com/v1'] }, 'allow.0'],
      [{ allow: ['https://user:pw@api.example.com'] }, 'allow.0'],
      [{ allow: [] }, 'allow'],
      [{ allow: ['https://api.example.com'], timeoutMs: 0 }, 'timeoutMs'],
      [{ allow: ['https://api.example.com'], maxRedirects: 21 }, 'maxRedirects'],
      [{ allow: ['https://api.example.com'], proxy: 'http://proxy' }, ''],
      [{ allow: ['https://api.example.com'], secrets: { 'https://other.example.com': { headers: {} } } }, 'secrets'],
      [
        { allow: ['https://api.example.com'], secrets: { 'https://api.example.com': { headers: { host: 'x' } } } },
        'secrets.https://api.example.com.headers.host',
      ],
    ];
    for (const [policy, path] of cases) {
      const thrown = thrownSync(() => createFetcher(policy as FetchPolicy));
      expect(thrown.code, JSON.stringify(policy)).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
      expect(
        thrown.paths.some((found) => found.startsWith(path)),
        `${JSON.stringify(policy)}: ${thrown.paths}`,
      ).toBe(true);
    }
    let error: unknown;
    try {
      createFetcher({
        allow: ['https://api.example.com'],
        secrets: { 'https://api.example.com': { headers: { Authorization: `${secretValue}\r\nx-injected: 1` } } },
      });
    } catch (thrown) {
      error = thrown;
    }
    expect(error).toBeInstanceOf(SandpoolError);
    expect(JSON.stringify(error) + String(error) + (error as Error).stack).not.toContain('s3cret');
    expect((error as SandpoolError).issues?.[0]?.path).toEqual([
      'secrets',
      'https://api.example.com',
      'headers',
      'Authorization',
    ]);
  });

  it('compares origins in their normal form: case, a trailing slash and the default port do not matter', async () => {
    const asked: string[] = [];
    const lookup = async (name: string): Promise<string[]> => {
      asked.push(name);
      return ['127.0.0.1'];
    };
    const fetch = fetcher({ allow: ['HTTPS://API.Example.COM:443/'], lookup });
    // Listed, so it gets as far as resolving the name (and is then refused for where it resolves).
    expect(await code(fetch('https://api.example.com/v1', {}, never))).toBe('ERR_SANDPOOL_ACCESS_DENIED');
    expect(asked).toEqual(['api.example.com']);
    // Another port or scheme is another origin: refused before any lookup.
    expect(await code(fetch('https://api.example.com:8443/v1', {}, never))).toBe('ERR_SANDPOOL_ACCESS_DENIED');
    expect(await code(fetch('http://api.example.com/v1', {}, never))).toBe('ERR_SANDPOOL_ACCESS_DENIED');
    expect(asked).toEqual(['api.example.com']);
  });
});

describe('addresses', () => {
  it('are public only in plain unicast: every internal range, IPv4 and IPv6, is refused', () => {
    const internal = [
      '127.0.0.1',
      '127.255.255.254',
      '10.0.0.1',
      '172.16.5.4',
      '172.31.255.255',
      '192.168.1.1',
      '169.254.169.254', // cloud metadata
      '100.100.100.200', // a cloud's metadata, in CGNAT space
      '100.64.0.1',
      '0.0.0.0',
      '0.1.2.3',
      '224.0.0.1',
      '239.255.255.250',
      '255.255.255.255',
      '192.0.0.192',
      '198.18.0.1',
      '240.0.0.1',
      '::',
      '::1',
      '::ffff:127.0.0.1',
      '::ffff:7f00:1',
      '::ffff:10.0.0.1',
      '::ffff:169.254.169.254',
      '::127.0.0.1', // IPv4-compatible, deprecated
      '::7f00:1', // the same, in hex: plain unicast to ipaddr.js, outside 2000::/3
      '4000::1', // not allocated
      'fe80::1',
      'fc00::1',
      'fd00:ec2::254', // a cloud's IPv6 metadata address
      'ff02::1',
      '64:ff9b::7f00:1', // NAT64 of 127.0.0.1
      '2002:7f00:1::', // 6to4 of 127.0.0.1
      '2001:db8::1',
      'not an address',
      '',
    ];
    for (const address of internal) expect(isPublicAddress(address), address).toBe(false);
    for (const address of [
      '93.184.216.34',
      '8.8.8.8',
      '1.1.1.1',
      '172.32.0.1',
      '2606:4700:4700::1111',
      '::ffff:8.8.8.8',
    ]) {
      expect(isPublicAddress(address), address).toBe(true);
    }
  });

  it('an allowed IP-literal origin answers: status, headers, body as bytes, final URL', async () => {
    const api = await serve(answer('hello from the api'));
    const fetch = fetcher({ allow: [api.origin] });
    const response = await fetch(`${api.origin}/greeting?x=1#part`, { headers: { accept: 'text/plain' } }, never);
    expect(response).toMatchObject({
      status: 200,
      statusText: 'OK',
      url: `${api.origin}/greeting?x=1`,
      redirected: false,
    });
    expect(response.headers).toContainEqual(['content-type', 'text/plain']);
    expect(await text(response)).toBe('hello from the api');
    expect(api.requests.map(({ method, url }) => `${method} ${url}`)).toEqual(['GET /greeting?x=1']);
    expect(api.requests[0]?.headers.accept).toBe('text/plain');
  });

  it('an origin not listed is refused, however its host is spelled, and the server is never contacted', async () => {
    const api = await serve(answer());
    const other = await serve(answer());
    const fetch = fetcher({ allow: [api.origin] });
    const refused = [
      `${other.origin}/`,
      `https://127.0.0.1:${api.port}/`,
      `http://localhost:${api.port}/`,
      `http://0.0.0.0:${api.port}/`,
      `http://[::ffff:127.0.0.1]:${api.port}/`,
    ];
    for (const url of refused) {
      const error = await rejection(fetch(url, {}, never));
      expect(error.code, url).toBe('ERR_SANDPOOL_ACCESS_DENIED');
    }
    expect(api.connections() + other.connections()).toBe(0);
  });

  it('a listed hostname that resolves to loopback is refused without a connection (localhost, and names a lookup maps)', async () => {
    const api = await serve(answer());
    const byName = fetcher({ allow: [`http://localhost:${api.port}`] });
    expect(await code(byName(`http://localhost:${api.port}/`, {}, never))).toBe('ERR_SANDPOOL_ACCESS_DENIED');
    // A name the agent may use, resolving (as after a DNS rebinding) to each loopback spelling.
    for (const answerAddress of ['127.0.0.1', '::ffff:127.0.0.1', '127.0.0.2', '0.0.0.0', '::1']) {
      const fetch = fetcher({
        allow: [`http://rebound.example.test:${api.port}`],
        lookup: async () => [answerAddress],
      });
      const error = await rejection(fetch(`http://rebound.example.test:${api.port}/`, {}, never));
      expect(error.code, answerAddress).toBe('ERR_SANDPOOL_ACCESS_DENIED');
      expect(error.message).not.toContain(answerAddress);
    }
    expect(api.connections()).toBe(0);
  });

  it('the connector connects to the address it resolved, and refuses a socket whose peer it may not reach', async () => {
    const api = await serve(answer());
    const asked: string[] = [];
    const lookups: string[] = [];
    // undici's connector replaced by one that ends up on loopback whatever it is asked: the
    // address actually connected to is what the check sees.
    const misdirected = (
      options: { hostname: string },
      callback: (...args: [null, Socket] | [Error, null]) => void,
    ) => {
      asked.push(options.hostname);
      const socket = netConnect({ host: '127.0.0.1', port: api.port });
      socket.once('connect', () => callback(null, socket));
      socket.once('error', (error) => callback(error, null));
    };
    const origin = `https://public.example.test:${api.port}`;
    const connector = guardedConnector(
      new Set([origin]),
      async (name) => {
        lookups.push(name);
        return ['10.0.0.7', '93.184.216.34'];
      },
      misdirected,
    );
    const outcome = await new Promise<Error | null>((resolve) => {
      connector(
        {
          hostname: 'public.example.test',
          host: `public.example.test:${api.port}`,
          protocol: 'https:',
          port: String(api.port),
        },
        (error, socket) => {
          socket?.destroy();
          resolve(error);
        },
      );
    });
    expect(lookups).toEqual(['public.example.test']);
    // The internal answer is skipped, the public one is dialled: never the name.
    expect(asked).toEqual(['93.184.216.34']);
    expect(outcome).toBeInstanceOf(SandpoolError);
    expect((outcome as SandpoolError).code).toBe('ERR_SANDPOOL_ACCESS_DENIED');
    expect((outcome as SandpoolError).message).not.toContain('127.0.0.1');
    await eventually(() => api.connections() === 1);
    expect(api.requests).toEqual([]);
  });
});

describe('redirects', () => {
  it('are followed by the capability: same origin, with 303 and a POST turned into a GET without its body', async () => {
    const api = await serve((request, response) => {
      if (request.url === '/start') {
        response.writeHead(303, { location: '/final' }).end();
      } else answer('arrived')(request, response);
    });
    const fetch = fetcher({ allow: [api.origin] });
    const response = await fetch(
      `${api.origin}/start`,
      { method: 'post', body: 'payload', headers: { 'content-type': 'text/plain' } },
      never,
    );
    expect(response).toMatchObject({ status: 200, url: `${api.origin}/final`, redirected: true });
    expect(await text(response)).toBe('arrived');
    expect(api.requests.map(({ method, url, body }) => `${method} ${url} ${body}`)).toEqual([
      'POST /start payload',
      'GET /final ',
    ]);
    expect(api.requests[1]?.headers['content-type']).toBeUndefined();
  });

  it('to an internal address or an unlisted origin are refused, and the target is never contacted', async () => {
    const internal = await serve(answer('internal secrets'));
    const targets = [
      // Listed, but by a name that resolves to loopback.
      `http://localhost:${internal.port}/admin`,
      // Not listed: other spellings of loopback.
      `http://127.0.0.1:${internal.port}/admin`,
      `http://[::ffff:127.0.0.1]:${internal.port}/admin`,
      `http://0.0.0.0:${internal.port}/admin`,
      'file:///etc/passwd',
    ];
    const api = await serve((request, response) => {
      const target = targets[Number(request.url?.slice(1))];
      // A redirect with a body that never ends: refusing it must let its connection go.
      endless(request, response.writeHead(302, { location: target }));
    });
    const fetch = fetcher({ allow: [api.origin, `http://localhost:${internal.port}`] });
    for (const [index, target] of targets.entries()) {
      expect(await code(fetch(`${api.origin}/${index}`, {}, never)), target).toBe('ERR_SANDPOOL_ACCESS_DENIED');
    }
    expect(api.requests).toHaveLength(targets.length);
    expect(internal.connections()).toBe(0);
    await eventually(() => api.cutOff() === targets.length);
  });

  it('are bounded in number', async () => {
    const api = await serve((_request, response) => response.writeHead(307, { location: '/again' }).end());
    const fetch = fetcher({ allow: [api.origin], maxRedirects: 3 });
    const error = await fetch(`${api.origin}/`, {}, never).then(
      () => null,
      (thrown: unknown) => thrown as Error & { code?: string },
    );
    expect(error?.code).toBe('ERR_TOO_MANY_REDIRECTS');
    expect(api.requests).toHaveLength(4);
  });
});

describe('secrets', () => {
  const SECRET = 'Bearer s3cret-for-api';

  it('reach only their origin, override the agent’s own headers, and never come back', async () => {
    const other = await serve(answer('other'));
    const api = await serve((request, response) => {
      if (request.url === '/away') return void response.writeHead(307, { location: `${other.origin}/landed` }).end();
      response.setHeader('set-cookie', 'session=opened-with-the-secret');
      answer('api')(request, response);
    });
    const fetch = fetcher({
      allow: [api.origin, other.origin],
      secrets: { [api.origin]: { headers: { Authorization: SECRET, 'X-Api-Key': 'k3y-for-api' } } },
    });
    const agentHeaders = { authorization: 'Bearer agent-forged', 'x-api-key': 'forged', 'x-trace': 't1' };

    const response = await fetch(`${api.origin}/data`, { headers: agentHeaders }, never);
    expect(await text(response)).toBe('api');
    const atApi = api.requests[0]?.headers;
    expect(atApi?.authorization).toBe(SECRET);
    expect(atApi?.['x-api-key']).toBe('k3y-for-api');
    expect(atApi?.['x-trace']).toBe('t1');
    expect(response.headers.map(([name]) => name.toLowerCase())).not.toContain('set-cookie');
    expect(JSON.stringify({ ...response, body: null })).not.toMatch(/s3cret|k3y|session=/);

    await text(await fetch(`${other.origin}/direct`, { headers: { 'x-trace': 't2' } }, never));
    await text(await fetch(`${api.origin}/away`, { headers: agentHeaders }, never));
    expect(other.requests.map(({ url }) => url)).toEqual(['/direct', '/landed']);
    for (const seen of other.requests) {
      expect(JSON.stringify(seen.headers)).not.toMatch(/s3cret|k3y/);
      // The agent's own credentials do not follow a redirect to another origin either.
      expect(seen.headers.authorization).toBeUndefined();
    }
    expect(other.requests[1]?.headers['x-trace']).toBe('t1');
  });

  it('appear in no error', async () => {
    const api = await serve((request, response) => {
      if (request.url === '/cut') return void response.socket?.destroy();
      response.writeHead(200, { 'content-length': '100' }).write('partial');
      setImmediate(() => response.socket?.destroy());
    });
    const fetch = fetcher({ allow: [api.origin], secrets: { [api.origin]: { headers: { authorization: SECRET } } } });
    const failures: unknown[] = [];
    failures.push(await fetch(`${api.origin}/cut`, {}, never).catch((error: unknown) => error));
    failures.push(
      await fetch(`${api.origin}/midway`, {}, never).then(
        (response) => text(response).catch((error: unknown) => error),
        (error: unknown) => error,
      ),
    );
    expect(api.requests.map((seen) => seen.headers.authorization)).toEqual([SECRET, SECRET]);
    for (const error of failures) {
      expect(error).toBeInstanceOf(Error);
      expect((error as { code?: string }).code).toMatch(/^[A-Z_]+$/);
      const everything = `${String(error)} ${(error as Error).stack} ${JSON.stringify(error)}`;
      expect(everything).not.toContain('s3cret');
    }
  });
});

describe('bounds', () => {
  it('a request body past maxRequestBytes is refused before anything is sent, counted in UTF-8 bytes', async () => {
    const api = await serve(answer());
    const fetch = fetcher({ allow: [api.origin], maxRequestBytes: 1024 });
    expect(await code(fetch(`${api.origin}/`, { method: 'POST', body: new Uint8Array(1025) }, never))).toBe(
      'ERR_SANDPOOL_DATA_CLONE',
    );
    expect(await code(fetch(`${api.origin}/`, { method: 'POST', body: 'é'.repeat(513) }, never))).toBe(
      'ERR_SANDPOOL_DATA_CLONE',
    );
    expect(api.connections()).toBe(0);
    await text(await fetch(`${api.origin}/`, { method: 'POST', body: 'é'.repeat(512) }, never));
    expect(api.requests.map((seen) => seen.body.length)).toEqual([512]);
  });

  it('a response body past maxResponseBytes errors the stream and closes the connection', async () => {
    const api = await serve(endless);
    const fetch = fetcher({ allow: [api.origin], maxResponseBytes: 8 * 1024 });
    const { bytes, error } = await readUntilError(await fetch(`${api.origin}/`, {}, never));
    expect(error.code).toBe('ERR_SANDPOOL_DATA_CLONE');
    expect(bytes).toBeLessThanOrEqual(8 * 1024);
    await eventually(() => api.cutOff() === 1);
  });

  it('a response that declares more than maxResponseBytes is refused at its headers', async () => {
    const api = await serve((_request, response) => {
      response.writeHead(200, { 'content-length': String(64 * 1024) });
      response.write(Buffer.alloc(1024));
    });
    const fetch = fetcher({ allow: [api.origin], maxResponseBytes: 8 * 1024 });
    expect(await code(fetch(`${api.origin}/`, {}, never))).toBe('ERR_SANDPOOL_DATA_CLONE');
    await eventually(() => api.cutOff() === 1);
  });

  it('timeoutMs ends a request waiting for its answer, and one whose body stalls', async () => {
    const api = await serve((request, response) => {
      if (request.url === '/stall-body') response.writeHead(200).write('start');
      // otherwise: never answer
    });
    const fetch = fetcher({ allow: [api.origin], timeoutMs: 300 });
    expect(await code(fetch(`${api.origin}/silent`, {}, never))).toBe('ERR_SANDPOOL_TIMEOUT');
    const { bytes, error } = await readUntilError(await fetch(`${api.origin}/stall-body`, {}, never));
    expect(error.code).toBe('ERR_SANDPOOL_TIMEOUT');
    expect(bytes).toBe(5);
    await eventually(() => api.cutOff() === 2);
  });

  it('the caller’s signal aborts a request: before it starts, waiting for headers, and reading the body', async () => {
    const api = await serve((request, response) => {
      if (request.url === '/body') response.writeHead(200).write('start');
    });
    const fetch = fetcher({ allow: [api.origin] });
    expect(await code(fetch(`${api.origin}/`, {}, AbortSignal.abort()))).toBe('ERR_SANDPOOL_ABORTED');
    expect(api.connections()).toBe(0);

    const waiting = new AbortController();
    const pending = fetch(`${api.origin}/headers`, {}, waiting.signal);
    await eventually(() => api.requests.length === 1);
    waiting.abort();
    expect(await code(pending)).toBe('ERR_SANDPOOL_ABORTED');

    const reading = new AbortController();
    const response = await fetch(`${api.origin}/body`, {}, reading.signal);
    const chunks = response.body[Symbol.asyncIterator]();
    expect(Buffer.from((await chunks.next()).value as Uint8Array).toString()).toBe('start');
    reading.abort();
    expect(await code(chunks.next())).toBe('ERR_SANDPOOL_ABORTED');
    await eventually(() => api.cutOff() === 2);
  });

  it('a body the agent stops reading, or never starts, lets its connection go', async () => {
    const api = await serve(endless);
    const fetch = fetcher({ allow: [api.origin] });
    const unread = await fetch(`${api.origin}/`, {}, never);
    await unread.body[Symbol.asyncIterator]().return?.();
    await eventually(() => api.cutOff() === 1);
    const started = await fetch(`${api.origin}/`, {}, never);
    for await (const _chunk of started.body) break;
    await eventually(() => api.cutOff() === 2);
  });
});

describe('what an agent passes', () => {
  it('is checked before anything is sent: framing and proxy headers, split values, bodies on GET, forbidden methods, credentials', async () => {
    const api = await serve(answer());
    const fetch = fetcher({ allow: [api.origin] });
    const url = `${api.origin}/`;
    const refused: [unknown, unknown][] = [
      [url, { headers: { host: 'internal.example' } }],
      [url, { headers: { 'Proxy-Authorization': 'x' } }],
      [url, { headers: { 'transfer-encoding': 'chunked' } }],
      [url, { headers: [['x-split', 'a\r\nx-injected: 1']] }],
      [url, { headers: { 'bad name': 'x' } }],
      [url, { body: 'on a GET' }],
      [url, { method: 'CONNECT' }],
      [url, { method: 'GET /admin HTTP/1.1' }],
      [url, { redirect: 'follow' }],
      [`http://user:pw@127.0.0.1:${api.port}/`, {}],
      ['not a url', {}],
      [42, {}],
    ];
    for (const [target, init] of refused) {
      const error = await rejection(fetch(target as string, init as never, never));
      expect(error.code, JSON.stringify([target, init])).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
    }
    expect(api.connections()).toBe(0);
  });
});
