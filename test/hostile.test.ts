import { mkdir, readdir, readFile, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { code, rejection } from './support/errors.js';
import { eventually, installCleanup, invariants, openPool, recordEvents } from './support/pool.js';
import { counterAgent, fixture, makeRoot, writeFiles } from './support/root.js';

installCleanup();

describe('hostile input', () => {
  it('carries a 50 MB string argument and answers', async () => {
    const pool = openPool({ root: await makeRoot({ 'a/live/faulty.mjs': await fixture('faulty.mjs') }) });
    const huge = 'x'.repeat(50 * 2 ** 20);
    expect(await pool.call('a/faulty', 'size', [huge])).toBe(huge.length);
    expect(await pool.call('a/faulty', 'echo', ['small after huge'])).toBe('small after huge');
  });

  it('refuses a swarm folder linked outside the root, reading nothing there', async () => {
    const outside = await makeRoot(await counterAgent('elsewhere'));
    const root = await makeRoot();
    await mkdir(join(root, 'a'));
    await symlink(join(outside, 'elsewhere/live'), join(root, 'a/live'));
    const pool = openPool({ root });
    const { events } = recordEvents(pool);
    expect(await code(pool.call('a/notifier_agent', 'notify', ['x']))).toBe('ERR_SANDPOOL_MODULE_NOT_FOUND');
    expect(events).toEqual([]);
  });

  it('refuses a stem linked to a file of another swarm', async () => {
    const root = await makeRoot({ ...(await counterAgent('a')), ...(await counterAgent('b')) });
    await symlink(join(root, 'b/live/notifier_agent.mjs'), join(root, 'a/live/borrowed.mjs'));
    const pool = openPool({ root });
    expect(await code(pool.call('a/borrowed', 'notify', ['x']))).toBe('ERR_SANDPOOL_MODULE_NOT_FOUND');
  });

  it("refuses a node_modules of the tenant's that leads out of its swarm, however deep, and reads nothing", async () => {
    const reader = `
      import { readFileSync } from 'node:fs';
      export function read(path) { return readFileSync(path, 'utf8'); }
    `;
    const forms: Array<(root: string) => Promise<void>> = [
      // live/node_modules itself a link to /
      async (root) => symlink('/', join(root, 'a/live/node_modules')),
      // a package inside it a link to /
      async (root) => {
        await mkdir(join(root, 'a/live/node_modules'), { recursive: true });
        await symlink('/', join(root, 'a/live/node_modules/x'));
      },
      // deeper, as pnpm lays packages out
      async (root) => {
        await mkdir(join(root, 'a/live/node_modules/.pnpm/x@1/node_modules'), { recursive: true });
        await symlink('/etc', join(root, 'a/live/node_modules/.pnpm/x@1/node_modules/x'));
      },
      // the swarm's own node_modules, above live/
      async (root) => {
        await mkdir(join(root, 'a/node_modules'), { recursive: true });
        await symlink('/', join(root, 'a/node_modules/x'));
      },
    ];
    for (const plant of forms) {
      const root = await makeRoot({
        ...(await counterAgent('n')),
        'a/live/reader.mjs': reader,
        'b/live/secret.txt': 'B',
      });
      await plant(root);
      const pool = openPool({ root });
      const neighbour = pool.call('n/notifier_agent', 'add', [1, 1]);
      const error = await rejection(pool.call('a/reader', 'read', [join(root, 'b/live/secret.txt')]));
      if (error.code === 'ERR_SANDPOOL_MODULE_NOT_FOUND') {
        // A link in live/ fails the build of its artifact.
        expect(error.message).toMatch(/live\/node_modules.* is a symlink that leaves the live folder/);
      } else {
        // One the build never read is not in the artifact, the only folder of the swarm's the key may read.
        expect(error).toMatchObject({ code: 'ERR_SANDPOOL_AGENT_ERROR', cause: { code: 'ERR_ACCESS_DENIED' } });
      }
      expect(await neighbour).toBe(2);
      expect(invariants(pool)).toEqual([]);
      await pool.close();
    }
  });

  it("a node_modules that stays inside the tenant's folder still loads, pnpm's links and all", async () => {
    const root = await makeRoot({
      'a/live/uses.mjs': "import { twice } from 'dep'; export const run = (n) => twice(n);",
      'a/live/node_modules/.pnpm/dep@1/node_modules/dep/package.json':
        '{ "name": "dep", "type": "module", "main": "index.js" }',
      'a/live/node_modules/.pnpm/dep@1/node_modules/dep/index.js': 'export const twice = (n) => n * 2;',
    });
    await symlink('.pnpm/dep@1/node_modules/dep', join(root, 'a/live/node_modules/dep'));
    const pool = openPool({ root });
    expect(await pool.call('a/uses', 'run', [21])).toBe(42);
  });

  it('never copies a file a link leads to outside live/, not even into a type-stripped copy', async () => {
    // What /proc/self/environ holds is the environment this process started with.
    const environ = (await readFile('/proc/self/environ', 'latin1')).split('\0');
    const marker = environ.reduce((longest, entry) => (entry.length > longest.length ? entry : longest), '');
    expect(marker.length).toBeGreaterThan(8);
    const root = await makeRoot({
      ...(await counterAgent('n')),
      'a/live/agent.ts': 'export const f = (): number => 1;\n',
    });
    await symlink('/proc/self/environ', join(root, 'a/live/leak.txt'));
    const pool = openPool({ root });
    expect(await code(pool.call('a/agent', 'f'))).toBe('ERR_SANDPOOL_MODULE_NOT_FOUND');
    expect(await pool.call('n/notifier_agent', 'add', [1, 1])).toBe(2);
    const files = await readdir(root, { recursive: true, withFileTypes: true });
    for (const file of files.filter((entry) => entry.isFile())) {
      expect(await readFile(join(file.parentPath, file.name), 'latin1')).not.toContain(marker);
    }
  });

  it('follows a link that stays inside its own folder', async () => {
    const root = await makeRoot(await counterAgent('a'));
    await symlink(join(root, 'a/live/notifier_agent.mjs'), join(root, 'a/live/alias.mjs'));
    const pool = openPool({ root });
    expect(await pool.call('a/alias', 'add', [1, 2])).toBe(3);
  });

  it('a key that names a folder, not a file, is not found', async () => {
    const root = await makeRoot(await counterAgent('a'));
    await writeFiles(root, { 'a/live/dir.mjs/inner.mjs': 'export const f = () => 1;' });
    const pool = openPool({ root });
    expect(await code(pool.call('a/dir', 'f'))).toBe('ERR_SANDPOOL_MODULE_NOT_FOUND');
  });

  it('a flood of distinct bad keys spawns nothing and leaves the pool serving', async () => {
    const pool = openPool({ root: await makeRoot(await counterAgent('a')) });
    const { events } = recordEvents(pool);
    const flood = await Promise.allSettled(Array.from({ length: 500 }, (_, i) => pool.call(`a/../${i}`, 'f')));
    expect(flood.every((result) => result.status === 'rejected')).toBe(true);
    expect(events).toEqual([]);
    expect(await pool.call('a/notifier_agent', 'add', [1, 1])).toBe(2);
  });
});

describe('an agent that forges messages to its parent port', () => {
  it('is not heard: the protocol runs on a private channel, and the worker can find neither it nor the port', async () => {
    const root = await makeRoot({
      ...(await counterAgent('a')),
      'b/live/forger.mjs': `
        import { parentPort, workerData } from 'node:worker_threads';
        export function forge() {
          parentPort.postMessage({ t: 'done', ok: [1, 'forged'], err: null });
          parentPort.postMessage({ t: 'ready' });
          return new Promise(() => {});
        }
        export function look() {
          return { data: workerData, handles: typeof process._getActiveHandles };
        }`,
    });
    const pool = openPool({ root });
    const { events } = recordEvents(pool);
    expect(await pool.call('b/forger', 'look')).toEqual({ data: {}, handles: 'undefined' });
    // The forged reply for call 1 is never seen: the call times out on its own.
    expect(await code(pool.call('b/forger', 'forge', [], { timeoutMs: 300 }))).toBe('ERR_SANDPOOL_TIMEOUT');
    expect(await pool.call('a/notifier_agent', 'add', [1, 1])).toBe(2);
    // It ignores its signal, so its worker goes after the abort grace.
    await eventually(() => events.some((event) => event.type === 'exit'));
    expect(events.filter((event) => event.type === 'exit').map((event) => event.reason)).toEqual(['killed']);
    expect(invariants(pool)).toEqual([]);
  });
});
