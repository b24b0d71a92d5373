import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { createServer } from '@sandpool/server';
import { AgentKeySchema, parseKey, SnapshotStore } from 'sandpool';
import { describe, expect, it } from 'vitest';
import { code, thrownSync } from './support/errors.js';
import { installCleanup, invariants, openPool } from './support/pool.js';
import { counterAgent, makeRoot, writeFiles } from './support/root.js';
import { installServerCleanup, openServer, request } from './support/server.js';

installCleanup();
installServerCleanup();

/**
 * `<root>/node_modules` is on the resolution path of every swarm's files: a swarm of that
 * name would be imported by its neighbours. Dot names are the store's own folders.
 */
const RESERVED = ['node_modules', 'NODE_MODULES', 'Node_Modules', '.sandpool-cache', '.tmp-x', '.hidden'];

/** A root whose `node_modules` folder holds what a tenant of that name would have deployed. */
async function rootWithReservedFolder(): Promise<string> {
  const root = await makeRoot(await counterAgent('a'));
  await writeFiles(root, {
    'node_modules/live/notifier_agent.mjs': 'export const add = () => "reserved folder ran";\n',
    'node_modules/snapshots/.keep': '',
  });
  return root;
}

describe('reserved swarm names', () => {
  it.each(RESERVED)('%j is refused with INVALID_KEY as text, as an object and by the schema', (swarm) => {
    expect(thrownSync(() => parseKey(`${swarm}/notifier_agent`)).code).toBe('ERR_SANDPOOL_INVALID_KEY');
    expect(AgentKeySchema.safeParse({ swarm, stem: 'notifier_agent' }).success).toBe(false);
  });

  it('keeps names that only contain the word', () => {
    for (const swarm of ['node_modules2', 'my-node_modules', 'node-modules']) {
      expect(parseKey(`${swarm}/x`)).toEqual({ swarm, snapshot: null, stem: 'x' });
    }
  });

  it('refuses calls, snapshots and invalidation of a reserved swarm while a neighbour answers', async () => {
    const root = await rootWithReservedFolder();
    const pool = openPool({ root });
    // The neighbour's artifact is built at its first call: built before the listing.
    expect(await pool.call('a/notifier_agent', 'add', [2, 3])).toBe(5);
    const before = await readdir(root, { recursive: true });
    for (const swarm of RESERVED) {
      const neighbour = pool.call('a/notifier_agent', 'add', [2, 3]);
      expect(await code(pool.call(`${swarm}/notifier_agent`, 'add', [2, 3]))).toBe('ERR_SANDPOOL_INVALID_KEY');
      expect(await code(pool.call({ swarm, stem: 'notifier_agent' }, 'add', [2, 3]))).toBe('ERR_SANDPOOL_INVALID_KEY');
      expect(await code(pool.snapshots.create(swarm, 'jan'))).toBe('ERR_SANDPOOL_INVALID_KEY');
      expect(await code(pool.snapshots.list(swarm))).toBe('ERR_SANDPOOL_INVALID_KEY');
      expect(await code(pool.invalidate({ swarm }))).toBe('ERR_SANDPOOL_INVALID_KEY');
      expect(await neighbour).toBe(5);
    }
    const store = new SnapshotStore({ root });
    expect(await code(store.create('node_modules', 'jan'))).toBe('ERR_SANDPOOL_INVALID_KEY');
    expect(await readdir(root, { recursive: true })).toEqual(before);
    expect(pool.stats().workers).toBe(1);
    expect(invariants(pool)).toEqual([]);
  });

  it('is refused by every server route and in token grants, and nothing is written', async () => {
    const root = await rootWithReservedFolder();
    const server = openServer({ root, token: 'all-write' });
    const auth = { authorization: 'Bearer all-write' };
    // The neighbour's artifact is built at its first call: built before the listing.
    expect((await request(server, 'POST', '/v1/call/a/notifier_agent', { fn: 'add', args: [1, 2] }, auth)).status).toBe(
      200,
    );
    const before = await readdir(root, { recursive: true });
    const deploy = await server.app.inject({
      method: 'PUT',
      url: '/v1/swarms/node_modules/live',
      headers: { 'content-type': 'application/x-tar', ...auth },
      payload: Buffer.alloc(1024),
    });
    expect(deploy.statusCode).toBe(400);
    expect(JSON.parse(deploy.body)).toMatchObject({ code: 'ERR_SANDPOOL_INVALID_KEY' });
    const refused = [
      request(server, 'POST', '/v1/swarms/node_modules/invalidate', undefined, auth),
      request(server, 'POST', '/v1/swarms/node_modules/snapshots/jan', undefined, auth),
      request(server, 'GET', '/v1/swarms/node_modules/snapshots', undefined, auth),
      request(server, 'GET', '/v1/swarms/node_modules/stems', undefined, auth),
      request(server, 'POST', '/v1/call/node_modules/notifier_agent', { fn: 'add', args: [1, 2] }, auth),
    ];
    for (const reply of await Promise.all(refused)) {
      expect(reply).toMatchObject({ status: 400, body: { code: 'ERR_SANDPOOL_INVALID_KEY' } });
    }
    const listed = await request(server, 'GET', '/v1/swarms', undefined, auth);
    expect(JSON.stringify(listed.body)).not.toContain('node_modules');
    expect(await request(server, 'POST', '/v1/call/a/notifier_agent', { fn: 'add', args: [1, 2] }, auth)).toMatchObject(
      { status: 200, body: { result: 3 } },
    );
    expect(await readdir(join(root), { recursive: true })).toEqual(before);
    expect(() => createServer({ nodeName: 'n', root, tokens: { t: { swarms: ['node_modules'] } } })).toThrow(
      expect.objectContaining({ code: 'ERR_SANDPOOL_INVALID_OPTIONS' }),
    );
  });
});
