import { describe, expect, it } from 'vitest';
import { eventually, installCleanup, openPool, recordEvents } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();

async function threeSwarms(): Promise<string> {
  return makeRoot({
    ...(await counterAgent('a')),
    ...(await counterAgent('b')),
    ...(await counterAgent('c')),
  });
}

describe('single flight', () => {
  it('starts exactly one worker for 50 concurrent first calls', async () => {
    const pool = openPool({ root: await makeRoot(await counterAgent('a')) });
    const { events } = recordEvents(pool);
    const answers = await Promise.all(
      Array.from({ length: 50 }, () => pool.call<{ count: number }>('a/notifier_agent', 'notify', ['x'])),
    );
    expect(events.filter((event) => event.type === 'spawn')).toHaveLength(1);
    expect(answers.map((answer) => answer.count).sort((x, y) => x - y)).toEqual(
      Array.from({ length: 50 }, (_, i) => i + 1),
    );
    expect(pool.stats()).toMatchObject({ workers: 1, spawned: 1 });
  });
});

describe('LRU with maxWorkers: 2', () => {
  it('evicts the least recently used idle key and never exceeds two workers', async () => {
    const pool = openPool({ root: await threeSwarms(), maxWorkers: 2 });
    const { events, peak } = recordEvents(pool);
    await pool.call('a/notifier_agent', 'notify', ['1']);
    await pool.call('b/notifier_agent', 'notify', ['1']);
    await pool.call('a/notifier_agent', 'notify', ['2']); // b is now the least recently used
    await pool.call('c/notifier_agent', 'notify', ['1']);
    expect(events.filter((event) => event.type === 'evict')).toEqual([
      expect.objectContaining({ key: 'b/notifier_agent', reason: 'lru' }),
    ]);
    // a kept its worker and its state.
    expect(await pool.call('a/notifier_agent', 'notify', ['3'])).toMatchObject({ count: 3 });
    expect(peak()).toBe(2);
    expect(pool.stats()).toMatchObject({ workers: 2, retired: { lru: 1, idle: 0 }, spawned: 3 });
  });

  it('never evicts a busy key; a new key waits for one to go idle, then succeeds', async () => {
    const pool = openPool({ root: await threeSwarms(), maxWorkers: 2 });
    const { events, peak } = recordEvents(pool);
    const slowA = pool.call('a/notifier_agent', 'hold', ['a']);
    const slowB = pool.call('b/notifier_agent', 'hold', ['b']);
    await eventually(() => pool.stats().busy === 2);
    const c = pool.call('c/notifier_agent', 'slow', [0, 'c']);
    await eventually(() => pool.stats().queued === 1);
    expect(events.filter((event) => event.type === 'evict')).toEqual([]);
    await pool.call('b/notifier_agent', 'release', ['b']);
    expect(await c).toBe('c');
    // b finished first, so b made room; a was busy throughout and kept its worker.
    await pool.call('a/notifier_agent', 'release', ['a']);
    expect(events.filter((event) => event.type === 'evict')).toEqual([
      expect.objectContaining({ key: 'b/notifier_agent', reason: 'lru' }),
    ]);
    expect(await slowA).toBe('a');
    expect(await slowB).toBe('b');
    expect(peak()).toBe(2);
  });

  it('serves waiting keys in arrival order', async () => {
    const root = await makeRoot({
      ...(await counterAgent('a')),
      ...(await counterAgent('b')),
      ...(await counterAgent('c')),
    });
    const pool = openPool({ root, maxWorkers: 1 });
    const order: string[] = [];
    const a = pool.call('a/notifier_agent', 'hold', ['a']).then((value) => order.push(value as string));
    await eventually(() => pool.stats().busy === 1);
    const b = pool.call('b/notifier_agent', 'slow', [0, 'b']).then((value) => order.push(value as string));
    const c = pool.call('c/notifier_agent', 'slow', [0, 'c']).then((value) => order.push(value as string));
    await eventually(() => pool.stats().queued === 2 && pool.stats().preparing === 0);
    await pool.call('a/notifier_agent', 'release', ['a']);
    await Promise.all([a, b, c]);
    expect(order).toEqual(['a', 'b', 'c']);
  });
});

describe('idle timeout', () => {
  it('evicts an idle worker, and the next call respawns transparently', async () => {
    const pool = openPool({ root: await makeRoot(await counterAgent('a')), idleTimeoutMs: 100 });
    const { events } = recordEvents(pool);
    expect(await pool.call('a/notifier_agent', 'notify', ['x'])).toMatchObject({ count: 1 });
    await eventually(() => pool.stats().workers === 0);
    expect(events.filter((event) => event.type !== 'spawn')).toEqual([
      expect.objectContaining({ type: 'evict', key: 'a/notifier_agent', reason: 'idle' }),
      expect.objectContaining({ type: 'exit', key: 'a/notifier_agent', reason: 'retired' }),
    ]);
    // A fresh module: its counter starts again.
    expect(await pool.call('a/notifier_agent', 'notify', ['x'])).toMatchObject({ count: 1 });
  });

  it('does not evict a worker while it is busy past the idle timeout', async () => {
    const pool = openPool({ root: await makeRoot(await counterAgent('a')), idleTimeoutMs: 50 });
    expect(await pool.call('a/notifier_agent', 'slow', [200, 'done'])).toBe('done');
    expect(pool.stats()).toMatchObject({ workers: 1, retired: { lru: 0, idle: 0 } });
  });
});
