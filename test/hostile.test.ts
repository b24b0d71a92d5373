import { mkdir, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { code } from './support/errors.js';
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
