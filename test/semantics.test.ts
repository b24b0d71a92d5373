import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished, vi } from 'vitest';
import { code } from './support/errors.js';
import { eventually, installCleanup, openPool, recordEvents } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();

const STATEFUL = `
const state = { count: 0 };
export function bump() { state.count += 1; return state; }
export function echo(value) { return value; }
export const version = () => 'v1';
`;

describe('arguments and results are copied when the call is made and when it returns', () => {
  it('a caller may reuse its argument objects at once, through call and remote, ready or not', async () => {
    const pool = openPool({ root: await makeRoot({ 'a/live/agent.mjs': STATEFUL }) });
    const send = async (via: 'call' | 'remote'): Promise<unknown[]> => {
      const message = { n: -1 };
      const replies: Promise<unknown>[] = [];
      for (let n = 0; n < 5; n++) {
        message.n = n;
        replies.push(
          via === 'call'
            ? pool.call('a/agent', 'echo', [message])
            : pool.remote<{ echo(value: unknown): unknown }>('a/agent').echo(message),
        );
      }
      return Promise.all(replies);
    };
    const expected = [0, 1, 2, 3, 4].map((n) => ({ n }));
    expect(await send('call')).toEqual(expected); // the first ones wait for the worker to start
    expect(await send('call')).toEqual(expected); // the worker is ready
    expect(await send('remote')).toEqual(expected);
  });

  it('a returned object is copied when returned, before the next call of the batch changes it', async () => {
    const pool = openPool({ root: await makeRoot({ 'a/live/agent.mjs': STATEFUL }) });
    await pool.call('a/agent', 'version');
    const answers = await Promise.all([1, 2, 3].map(() => pool.call<{ count: number }>('a/agent', 'bump')));
    expect(answers.map((answer) => answer.count)).toEqual([1, 2, 3]);
  });

  it('a waiting call with an argument that cannot be cloned fails at once, alone', async () => {
    const pool = openPool({ root: await makeRoot({ 'a/live/agent.mjs': STATEFUL }) });
    const good = pool.call('a/agent', 'echo', ['fine']);
    expect(await code(pool.call('a/agent', 'echo', [{ f: () => 1 }]))).toBe('ERR_SANDPOOL_DATA_CLONE');
    expect(await good).toBe('fine');
  });
});

describe('reload under a full pool', () => {
  it('at maxWorkers 1, the old worker makes room for its replacement and invalidate resolves', async () => {
    const root = await makeRoot({ 'a/live/agent.mjs': STATEFUL });
    const pool = openPool({ root, maxWorkers: 1 });
    const { events, peak } = recordEvents(pool);
    expect(await pool.call('a/agent', 'version')).toBe('v1');
    await writeFile(join(root, 'a/live/agent.mjs'), STATEFUL.replace("'v1'", "'v2'"));
    await pool.invalidate({ swarm: 'a' });
    expect(await pool.call('a/agent', 'version')).toBe('v2');
    expect(events.filter((event) => event.type === 'evict').map((event) => event.reason)).toEqual(['reload']);
    expect(peak()).toBe(1);
  });

  it('keeps counting waiting calls right, so new keys are not refused afterwards', async () => {
    const root = await makeRoot({ ...(await counterAgent('a')), ...(await counterAgent('b')) });
    const pool = openPool({ root, maxWorkers: 1, maxWaiting: 1 });
    await pool.call('a/notifier_agent', 'add', [1, 1]);
    for (let round = 0; round < 3; round++) {
      const reloading = pool.invalidate({ swarm: 'a' });
      await pool.call('a/notifier_agent', 'add', [1, 1]);
      await reloading;
    }
    expect(pool.stats().queued).toBe(0);
    expect(await pool.call('b/notifier_agent', 'add', [2, 2])).toBe(4);
  });

  it('a second invalidate during a failing reload resolves, and the old worker keeps serving', async () => {
    const root = await makeRoot({ 'a/live/agent.mjs': STATEFUL });
    const pool = openPool({ root });
    expect(await pool.call('a/agent', 'version')).toBe('v1');
    await writeFile(join(root, 'a/live/agent.mjs'), 'export const version = ( => broken;');
    await Promise.all([pool.invalidate({ swarm: 'a' }), pool.invalidate({ swarm: 'a' })]);
    expect(await pool.call('a/agent', 'version')).toBe('v1');
  });
});

describe('bounds', () => {
  it('a call refused by maxWaiting starts no worker and evicts none', async () => {
    const root = await makeRoot({ ...(await counterAgent('a')), ...(await counterAgent('b')) });
    const pool = openPool({ root, maxWorkers: 1, maxWaiting: 0 });
    const { events } = recordEvents(pool);
    // maxWaiting 0: even a first call cannot wait for its worker.
    expect(await code(pool.call('a/notifier_agent', 'add', [1, 1]))).toBe('ERR_SANDPOOL_QUEUE_FULL');
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(events).toEqual([]);
  });

  it('close() does not wait for a worker still loading', async () => {
    const root = await makeRoot({
      'a/live/slow.mjs': 'await new Promise((r) => setTimeout(r, 600_000)); export const f = () => 1;',
    });
    const pool = openPool({ root });
    const waiting = code(pool.call('a/slow', 'f'));
    await eventually(() => pool.stats().workers === 1);
    const started = Date.now();
    await pool.close();
    expect(await waiting).toBe('ERR_SANDPOOL_CLOSED');
    // Waiting for the load would take ten minutes; not waiting takes moments, even on a loaded machine.
    expect(Date.now() - started).toBeLessThan(30_000);
  });

  it('back-off windows double: 100, 200, 400 ms', async () => {
    // The back-off reads Date.now(): a clock the test moves, so a slow timer cannot open a window early.
    vi.useFakeTimers({ toFake: ['Date'] });
    onTestFinished(() => {
      vi.useRealTimers();
    });
    let now = Date.now();
    const advance = (ms: number): void => {
      now += ms;
      vi.setSystemTime(now);
    };
    const root = await makeRoot({ 'a/live/broken.mjs': 'throw new Error("no");' });
    const pool = openPool({ root });
    const { events } = recordEvents(pool);
    const spawns = () => events.filter((event) => event.type === 'spawn').length;
    for (const window of [100, 200, 400]) {
      expect(await code(pool.call('a/broken', 'f'))).toBe('ERR_SANDPOOL_MODULE_LOAD');
      const spawned = spawns();
      advance(window * 0.6);
      expect(await code(pool.call('a/broken', 'f'))).toBe('ERR_SANDPOOL_MODULE_LOAD');
      expect(spawns()).toBe(spawned); // still inside the window: failed fast
      advance(window * 0.6);
      expect(await code(pool.call('a/broken', 'f'))).toBe('ERR_SANDPOOL_MODULE_LOAD');
      expect(spawns()).toBe(spawned + 1); // past it: a new worker tried
    }
  });
});

describe('snapshot removal', () => {
  it('calls arriving while a snapshot is removed fail, and no worker outlives it', async () => {
    const root = await makeRoot(await counterAgent('a'));
    const pool = openPool({ root });
    const { events } = recordEvents(pool);
    await pool.snapshots.create('a', 'jan');
    const busy = pool.call('a@jan/notifier_agent', 'slow', [300, 'busy']);
    await eventually(() => pool.stats().busy === 1);
    const removing = pool.snapshots.remove('a', 'jan');
    await eventually(() => events.some((event) => event.type === 'evict' && event.reason === 'removed'));
    expect(await code(pool.call('a@jan/notifier_agent', 'add', [1, 1]))).toBe('ERR_SANDPOOL_SNAPSHOT_NOT_FOUND');
    await removing;
    expect(await busy).toBe('busy');
    expect(pool.stats().workers).toBe(0);
  });
});
