import { mkdir, rm, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { evictionsNeeded } from '../packages/sandpool/dist/host/slots/scheduler.js';
import { code } from './support/errors.js';
import { eventually, installCleanup, invariants, openPool, recordEvents } from './support/pool.js';
import { counterAgent, fixture, makeRoot, writeFiles } from './support/root.js';

installCleanup();

/**
 * Five bugs the earlier suite let through. Each test here fails when its bug is put back.
 */

describe('eviction counts the workers already exiting', () => {
  it('evictionsNeeded: slots being freed are not freed twice', () => {
    expect(evictionsNeeded(0, 0)).toBe(0);
    expect(evictionsNeeded(3, 0)).toBe(3);
    expect(evictionsNeeded(1, 1)).toBe(0);
    expect(evictionsNeeded(3, 1)).toBe(2);
    expect(evictionsNeeded(1, 4)).toBe(0);
  });

  it('a second pump while the first victim is still exiting evicts nobody else', async () => {
    // `slowexit` keeps its thread in a blocking native call after its last reply, so its exit
    // takes about six seconds however it is terminated: long enough to be seen exiting, even
    // while d's artifact is built on a loaded machine.
    const root = await makeRoot({
      ...(await counterAgent('b')),
      ...(await counterAgent('c')),
      ...(await counterAgent('d')),
      'a/live/slowexit.mjs': `
        import { spawnSync } from 'node:child_process';
        export function block() {
          setTimeout(() => spawnSync('/bin/sleep', ['6']), 0);
          return 'blocked';
        }`,
    });
    // Its slow exit comes from a child process, which the strict permission model refuses.
    const pool = openPool({ root, maxWorkers: 3, permissions: 'none' });
    const { events } = recordEvents(pool);
    expect(await pool.call('a/slowexit', 'block')).toBe('blocked');
    expect(await pool.call('b/notifier_agent', 'notify', ['1'])).toMatchObject({ count: 1 });
    const slowC = pool.call('c/notifier_agent', 'hold', ['c']);
    await eventually(() => pool.stats().busy === 1);
    // d needs a slot: a, the least recently used idle worker, is evicted and starts exiting.
    const d = pool.call('d/notifier_agent', 'notify', ['1']);
    // Awaited below; a failure before then must not also surface as an unhandled rejection at close.
    d.catch(() => {});
    await eventually(() => events.some((event) => event.type === 'evict'));
    expect(invariants(pool)).toEqual([]);
    // c goes idle while a is still exiting: the pump that follows must not evict b for d.
    await pool.call('c/notifier_agent', 'release', ['c']);
    expect(await slowC).toBe('c');
    expect(events.some((event) => event.type === 'exit')).toBe(false);
    expect(await d).toMatchObject({ count: 1 });
    expect(events.filter((event) => event.type === 'evict')).toEqual([
      expect.objectContaining({ key: 'a/slowexit', reason: 'lru' }),
    ]);
    // b kept its worker and its state.
    expect(await pool.call('b/notifier_agent', 'notify', ['2'])).toMatchObject({ count: 2 });
    expect(invariants(pool)).toEqual([]);
  });
});

describe('module containment needs the path separator', () => {
  it('a stem linked into a sibling folder with the same prefix is not found', async () => {
    const root = await makeRoot({
      ...(await counterAgent('a')),
      ...(await counterAgent('n')),
      'a/live-evil/x.mjs': 'export const f = () => "evil";',
    });
    await symlink(join(root, 'a/live-evil/x.mjs'), join(root, 'a/live/x.mjs'));
    // The build's own check, apart from the permission model's refusal of links that leave.
    const pool = openPool({ root, permissions: 'none' });
    const { events } = recordEvents(pool);
    expect(await code(pool.call('a/x', 'f'))).toBe('ERR_SANDPOOL_MODULE_NOT_FOUND');
    // The folder is refused whole: nothing of swarm a runs until the link goes.
    expect(await code(pool.call('a/notifier_agent', 'add', [1, 1]))).toBe('ERR_SANDPOOL_MODULE_NOT_FOUND');
    expect(events).toEqual([]);
    expect(await pool.call('n/notifier_agent', 'add', [1, 1])).toBe(2);
  });

  it('a live folder linked into a sibling of the root with the same prefix is not found', async () => {
    const root = await makeRoot();
    const sibling = `${root}-evil`;
    onTestFinished(() => rm(sibling, { recursive: true, force: true }));
    await writeFiles(sibling, await counterAgent('a'));
    await mkdir(join(root, 'a'));
    await symlink(join(sibling, 'a/live'), join(root, 'a/live'));
    const pool = openPool({ root, permissions: 'none' });
    const { events } = recordEvents(pool);
    expect(await code(pool.call('a/notifier_agent', 'add', [1, 1]))).toBe('ERR_SANDPOOL_MODULE_NOT_FOUND');
    expect(events).toEqual([]);
  });
});

describe('the idle timer spares a busy worker', () => {
  it('a call longer than idleTimeoutMs keeps its worker and its module state', async () => {
    const pool = openPool({ root: await makeRoot(await counterAgent('a')), idleTimeoutMs: 100 });
    const { events } = recordEvents(pool);
    const first = await pool.call<{ count: number; threadId: number }>('a/notifier_agent', 'notify', ['x']);
    expect(first.count).toBe(1);
    // Busy from well before the timer would fire until well after it.
    expect(await pool.call('a/notifier_agent', 'slow', [400, 'done'])).toBe('done');
    const after = await pool.call<{ count: number; threadId: number }>('a/notifier_agent', 'notify', ['x']);
    expect(after).toMatchObject({ count: 2, threadId: first.threadId });
    expect(events.filter((event) => event.type !== 'spawn')).toEqual([]);
    expect(pool.stats()).toMatchObject({ workers: 1, retired: { lru: 0, idle: 0 }, spawned: 1 });
    // Idle, it does go.
    await eventually(() => pool.stats().workers === 0);
    expect(events.filter((event) => event.type === 'evict')).toEqual([
      expect.objectContaining({ key: 'a/notifier_agent', reason: 'idle' }),
    ]);
  });
});

describe('kills are the pool doing, not a crash loop', () => {
  it('four timeouts in a row, and the next call still spawns and succeeds', async () => {
    const pool = openPool({ root: await makeRoot({ 'a/live/faulty.mjs': await fixture('faulty.mjs') }) });
    const { events } = recordEvents(pool);
    for (let i = 0; i < 4; i++) {
      expect(await code(pool.call('a/faulty', 'hang', [], { timeoutMs: 50 }))).toBe('ERR_SANDPOOL_TIMEOUT');
      // Each death is on the books before the next call: a back-off it opened would refuse that call.
      await eventually(() => pool.stats().workers === 0);
    }
    expect(await pool.call('a/faulty', 'echo', ['alive'])).toBe('alive');
    expect(events.filter((event) => event.type === 'spawn')).toHaveLength(5);
    expect(events.filter((event) => event.type === 'exit').map((event) => event.reason)).toEqual([
      'killed',
      'killed',
      'killed',
      'killed',
    ]);
    expect(invariants(pool)).toEqual([]);
  });

  it('aborts are kills too', async () => {
    const pool = openPool({ root: await makeRoot({ 'a/live/faulty.mjs': await fixture('faulty.mjs') }) });
    for (let i = 0; i < 4; i++) {
      const controller = new AbortController();
      const call = pool.call('a/faulty', 'hang', [], { signal: controller.signal });
      await eventually(() => pool.stats().busy === 1);
      controller.abort();
      expect(await code(call)).toBe('ERR_SANDPOOL_ABORTED');
      await eventually(() => pool.stats().workers === 0);
    }
    expect(await pool.call('a/faulty', 'echo', ['alive'])).toBe('alive');
  });
});

describe('remote() is not thenable', () => {
  it('await pool.remote(key) resolves to the proxy and makes no call', async () => {
    const root = await makeRoot({
      'a/live/agent.mjs': `
        let calls = 0;
        export default { then() { calls += 1; } };
        export function count() { return calls; }
        export function ping() { return 'pong'; }`,
    });
    const pool = openPool({ root });
    const { events } = recordEvents(pool);
    const agent = pool.remote<{ ping(): string; count(): number }>('a/agent');
    const awaited: unknown = await agent;
    expect(awaited).toBe(agent);
    expect(events).toEqual([]);
    expect(await agent.ping()).toBe('pong');
    expect(await agent.count()).toBe(0);
    expect((agent as unknown as { then?: unknown }).then).toBeUndefined();
  });
});
