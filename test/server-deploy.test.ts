import { lstat, readdir, readFile, readlink, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import type { SandpoolServer } from '@sandpool/server';
import { pack } from 'tar-stream';
import { describe, expect, it } from 'vitest';
import { invariants } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';
import { installServerCleanup, openServer, type Reply } from './support/server.js';

installServerCleanup();

const TOKENS = {
  all: { swarms: '*' as const, write: true },
  'read-a': { swarms: ['a'] },
  'write-b': { swarms: ['b'], write: true },
};
const as = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` });

type Entry = {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'fifo';
  text?: string;
  linkname?: string;
};

/** A tar archive of exactly these entries, names as given: nothing normalised on the way. */
async function tar(entries: readonly Entry[]): Promise<Buffer> {
  const archive = pack();
  // Read as it is written: the packer waits for its reader once it holds a few chunks.
  const chunks: Buffer[] = [];
  const read = (async () => {
    for await (const chunk of archive) chunks.push(chunk as Buffer);
  })();
  for (const { name, type = 'file', text = '', linkname } of entries) {
    const header = {
      name,
      type,
      ...(linkname === undefined ? {} : { linkname }),
      ...(type === 'character-device' ? { devmajor: 1, devminor: 3 } : {}),
    };
    await new Promise<void>((resolve, reject) => {
      const done = (error?: Error | null): void => (error ? reject(error) : resolve());
      if (type === 'file') archive.entry(header, text, done);
      else archive.entry(header, done);
    });
  }
  archive.finalize();
  await read;
  return Buffer.concat(chunks);
}

/** The files of counterAgent(swarm, version) as archive entries, relative to live/. */
async function agentEntries(version: string): Promise<Entry[]> {
  return Object.entries(await counterAgent('x', version)).map(([path, text]) => ({
    name: path.replace('x/live/', ''),
    text,
  }));
}

async function deploy(
  server: SandpoolServer,
  swarm: string,
  body: Buffer,
  headers: Record<string, string> = as('all'),
): Promise<Reply> {
  const response = await server.app.inject({
    method: 'PUT',
    url: `/v1/swarms/${swarm}/live`,
    headers: { 'content-type': 'application/x-tar', ...headers },
    payload: body,
  });
  return {
    status: response.statusCode,
    node: undefined,
    body: response.body === '' ? {} : (JSON.parse(response.body) as Record<string, unknown>),
  };
}

async function call(server: SandpoolServer, key: string, fn = 'notify'): Promise<Reply> {
  const response = await server.app.inject({
    method: 'POST',
    url: `/v1/call/${key}`,
    headers: as('all'),
    payload: { fn, args: ['hi'] },
  });
  return { status: response.statusCode, node: undefined, body: JSON.parse(response.body) as Record<string, unknown> };
}

describe('PUT /v1/swarms/:swarm/live', () => {
  it('replaces the live files at once, reloads the live workers, and snapshots what it deployed', async () => {
    const root = await makeRoot(await counterAgent('b'));
    const server = openServer({ root, tokens: TOKENS });

    // A new swarm: nothing runs yet, so nothing reloads.
    const first = await deploy(
      server,
      'a',
      await tar([{ name: './', type: 'directory' }, ...(await agentEntries('v1'))]),
    );
    expect(first).toMatchObject({ status: 200, body: { swarm: 'a', files: 2, reloaded: [], failed: [] } });
    expect(first.body.bytes).toBeGreaterThan(0);
    expect((await call(server, 'a/notifier_agent')).body).toMatchObject({ result: { version: 'v1', count: 1 } });

    // The running key reloads onto the new files.
    const second = await deploy(server, 'a', await tar(await agentEntries('v2')));
    expect(second).toMatchObject({ status: 200, body: { reloaded: ['a/notifier_agent'], failed: [] } });
    expect((await call(server, 'a/notifier_agent')).body).toMatchObject({
      result: { version: 'v2', text: 'format-v2:hi:1' },
    });

    // live is a link to the version folder, by a relative name.
    expect((await lstat(join(root, 'a', 'live'))).isSymbolicLink()).toBe(true);
    expect(await readlink(join(root, 'a', 'live'))).toMatch(/^\.deploys\/[0-9a-z]+-[0-9a-f]+$/);

    // Snapshot, deploy again, and the snapshot still answers with what it froze.
    const created = await server.app.inject({ method: 'POST', url: '/v1/swarms/a/snapshots/jun', headers: as('all') });
    expect(created.statusCode).toBe(200);
    await utimesAll(join(root, 'a', '.deploys'));
    const third = await deploy(server, 'a', await tar(await agentEntries('v3')));
    expect(third.status).toBe(200);
    expect((await call(server, 'a/notifier_agent')).body).toMatchObject({ result: { version: 'v3' } });
    expect((await call(server, 'a@jun/notifier_agent')).body).toMatchObject({ result: { version: 'v2' } });
    // The live version and the one before it stay (workers may still run it); older ones went.
    expect((await readdir(join(root, 'a', '.deploys'))).length).toBe(2);

    const removed = await server.app.inject({
      method: 'DELETE',
      url: '/v1/swarms/a/snapshots/jun',
      headers: as('all'),
    });
    expect(removed.statusCode).toBe(204);
    expect((await call(server, 'a@jun/notifier_agent')).body).toMatchObject({
      code: 'ERR_SANDPOOL_SNAPSHOT_NOT_FOUND',
    });
    // The neighbour never noticed.
    expect((await call(server, 'b/notifier_agent')).body).toMatchObject({ result: { version: 'v1', count: 1 } });
    expect(invariants(server.pool)).toEqual([]);
  });

  it('adopts a hand-made live/ folder as the version before the first deploy', async () => {
    const root = await makeRoot(await counterAgent('a'));
    const server = openServer({ root, tokens: TOKENS });
    expect((await call(server, 'a/notifier_agent')).body).toMatchObject({ result: { version: 'v1' } });
    const answer = await deploy(server, 'a', await tar(await agentEntries('v2')));
    expect(answer).toMatchObject({ status: 200, body: { reloaded: ['a/notifier_agent'] } });
    expect((await call(server, 'a/notifier_agent')).body).toMatchObject({ result: { version: 'v2' } });
    const versions = await readdir(join(root, 'a', '.deploys'));
    expect(versions.filter((name) => name.endsWith('-adopted'))).toHaveLength(1);
  });

  it('deploys only with a token that may write the swarm', async () => {
    const root = await makeRoot({ ...(await counterAgent('a')), ...(await counterAgent('b')) });
    const server = openServer({ root, tokens: TOKENS });
    const body = await tar(await agentEntries('v2'));
    expect(await deploy(server, 'a', body, as('write-b'))).toMatchObject({
      status: 403,
      body: { code: 'ERR_SANDPOOL_HTTP_FORBIDDEN' },
    });
    expect(await deploy(server, 'a', body, as('read-a'))).toMatchObject({
      status: 403,
      body: { code: 'ERR_SANDPOOL_HTTP_FORBIDDEN' },
    });
    expect(await deploy(server, 'a', body, {})).toMatchObject({
      status: 401,
      body: { code: 'ERR_SANDPOOL_HTTP_UNAUTHORIZED' },
    });
    expect(await deploy(server, 'b', body, as('write-b'))).toMatchObject({ status: 200 });
    expect((await call(server, 'a/notifier_agent')).body).toMatchObject({ result: { version: 'v1' } });
    expect((await call(server, 'b/notifier_agent')).body).toMatchObject({ result: { version: 'v2' } });
    expect((await lstat(join(root, 'a', 'live'))).isDirectory()).toBe(true);
  });

  it('refuses hostile archives whole, writing nothing, while a neighbour answers', async () => {
    const root = await makeRoot({ ...(await counterAgent('a')), ...(await counterAgent('b')) });
    const server = openServer({ root, tokens: TOKENS, deployMaxBytes: 64 * 1024, deployMaxFiles: 20 });
    const good = await agentEntries('v2');
    const cases: [string, Buffer, number, string][] = [
      [
        'a name that climbs out',
        await tar([...good, { name: '../escape.mjs', text: 'x' }]),
        400,
        'ERR_SANDPOOL_HTTP_BAD_ARCHIVE',
      ],
      [
        'a name that climbs out midway',
        await tar([...good, { name: 'lib/../../escape.mjs', text: 'x' }]),
        400,
        'ERR_SANDPOOL_HTTP_BAD_ARCHIVE',
      ],
      [
        'an absolute name',
        await tar([...good, { name: '/tmp/escape.mjs', text: 'x' }]),
        400,
        'ERR_SANDPOOL_HTTP_BAD_ARCHIVE',
      ],
      [
        'a backslash name',
        await tar([...good, { name: '..\\escape.mjs', text: 'x' }]),
        400,
        'ERR_SANDPOOL_HTTP_BAD_ARCHIVE',
      ],
      [
        'a symlink',
        await tar([...good, { name: 'passwd', type: 'symlink', linkname: '/etc/passwd' }]),
        400,
        'ERR_SANDPOOL_HTTP_BAD_ARCHIVE',
      ],
      [
        'a hard link',
        await tar([...good, { name: 'passwd', type: 'link', linkname: '/etc/passwd' }]),
        400,
        'ERR_SANDPOOL_HTTP_BAD_ARCHIVE',
      ],
      [
        'a device',
        await tar([...good, { name: 'null', type: 'character-device' }]),
        400,
        'ERR_SANDPOOL_HTTP_BAD_ARCHIVE',
      ],
      ['a FIFO', await tar([...good, { name: 'pipe', type: 'fifo' }]), 400, 'ERR_SANDPOOL_HTTP_BAD_ARCHIVE'],
      [
        'a name twice',
        await tar([...good, { name: 'format.mjs', text: 'export const tag = () => "evil";' }]),
        400,
        'ERR_SANDPOOL_HTTP_BAD_ARCHIVE',
      ],
      [
        'a file under a file',
        await tar([...good, { name: 'format.mjs/x.mjs', text: 'x' }]),
        400,
        'ERR_SANDPOOL_HTTP_BAD_ARCHIVE',
      ],
      ['no files', await tar([{ name: 'empty', type: 'directory' }]), 400, 'ERR_SANDPOOL_HTTP_BAD_ARCHIVE'],
      ['not a tar archive', Buffer.from('{"fn":"x"}'.repeat(200)), 400, 'ERR_SANDPOOL_HTTP_BAD_ARCHIVE'],
      [
        'too many files',
        await tar([...good, ...Array.from({ length: 20 }, (_, i) => ({ name: `f${i}.txt`, text: 'x' }))]),
        413,
        'ERR_SANDPOOL_HTTP_BODY_TOO_LARGE',
      ],
      [
        'too many bytes',
        await tar([...good, { name: 'big.bin', text: 'x'.repeat(80 * 1024) }]),
        413,
        'ERR_SANDPOOL_HTTP_BODY_TOO_LARGE',
      ],
    ];
    let running = true;
    const neighbour: Reply[] = [];
    const load = (async () => {
      while (running) neighbour.push(await call(server, 'b/notifier_agent'));
    })();
    try {
      for (const [what, body, status, code] of cases) {
        const answer = await deploy(server, 'a', body);
        expect({ what, status: answer.status, code: answer.body.code }).toEqual({ what, status, code });
        expect((await call(server, 'a/notifier_agent')).body, what).toMatchObject({ result: { version: 'v1' } });
      }
    } finally {
      running = false;
      await load;
    }
    // Nothing was written anywhere: not beside the root, not in the swarm, no work folder left.
    expect(await readdir(join(root, '..'))).not.toContain('escape.mjs');
    // The coordinator's cache holds the artifacts the calls ran from.
    expect((await readdir(root)).sort()).toEqual(['.sandpool-cache', 'a', 'b']);
    expect(await readdir(join(root, 'a', '.deploys'))).toEqual([]);
    expect((await lstat(join(root, 'a', 'live'))).isDirectory()).toBe(true);
    expect(await readFile(join(root, 'a', 'live', 'format.mjs'), 'utf8')).toContain('format-v1');
    expect(neighbour.length).toBeGreaterThan(0);
    for (const answer of neighbour) expect(answer).toMatchObject({ status: 200, body: { result: { version: 'v1' } } });
    expect(invariants(server.pool)).toEqual([]);
  });

  it('refuses a body declared too large before reading it, and one that is not a tar archive by type', async () => {
    const root = await makeRoot(await counterAgent('a'));
    const server = openServer({ root, tokens: TOKENS, deployMaxBytes: 1024 });
    const big = await server.app.inject({
      method: 'PUT',
      url: '/v1/swarms/a/live',
      headers: { 'content-type': 'application/x-tar', 'content-length': '999999', ...as('all') },
      payload: Buffer.alloc(2048),
    });
    expect(big.statusCode).toBe(413);
    const json = await server.app.inject({
      method: 'PUT',
      url: '/v1/swarms/a/live',
      headers: as('all'),
      payload: { files: {} },
    });
    expect(json.statusCode).toBe(415);
    expect(JSON.parse(json.body)).toMatchObject({ code: 'ERR_SANDPOOL_HTTP_UNSUPPORTED_MEDIA_TYPE' });
    const badName = await deploy(server, 'a..b', await tar(await agentEntries('v2')));
    expect(badName).toMatchObject({ status: 400, body: { code: 'ERR_SANDPOOL_INVALID_KEY' } });
    expect((await readdir(root)).sort()).toEqual(['a']);
  });
});

/** Makes every version look old, so the deploy after may sweep them. */
async function utimesAll(dir: string): Promise<void> {
  const old = new Date(Date.now() - 24 * 60 * 60 * 1000);
  for (const name of await readdir(dir)) await utimes(join(dir, name), old, old);
}
