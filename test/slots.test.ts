import { describe, expect, it } from 'vitest';
import { code } from './support/errors.js';
import { eventually, installCleanup, invariants, openPool, recordEvents } from './support/pool.js';
import { counterAgent, fixture, makeRoot } from './support/root.js';

installCleanup();

/** Swarm `noisy` with four stems, and swarm `quiet` with one. */
async function tenants(): Promise<string> {
  const files: Record<string, string> = { ...(await counterAgent('quiet', 'v1', 'q')) };
  for (const stem of ['a', 'b', 'c', 'd']) Object.assign(files, await counterAgent('noisy', 'v1', stem));
  files['noisy/live/faulty.mjs'] = await fixture('faulty.mjs');
  return makeRoot(files);
}

describe('fair shares of the slots', () => {
  it('serves waiting swarms round-robin: a quiet tenant does not queue behind a noisy one', async () => {
    const pool = openPool({ root: await tenants(), maxWorkers: 1 });
    const order: string[] = [];
    const track = (call: Promise<unknown>) => call.then((value) => order.push(value as string));
    // noisy/a holds the only slot until every other call waits.
    const first = track(pool.call('noisy/a', 'hold', ['noisy/a']));
    await eventually(() => pool.stats().busy === 1);
    const noisy = ['noisy/b', 'noisy/c', 'noisy/d'].map((key) => track(pool.call(key, 'slow', [0, key])));
    await eventually(() => pool.stats().queued === 3 && pool.stats().preparing === 0);
    const quiet = track(pool.call('quiet/q', 'slow', [0, 'quiet/q']));
    await eventually(() => pool.stats().queued === 4 && pool.stats().preparing === 0);
    await pool.call('noisy/a', 'release', ['noisy/a']);
    await Promise.all([first, ...noisy, quiet]);
    // FIFO would serve quiet/q last; round-robin gives it the turn after noisy's next one.
    expect(order).toEqual(['noisy/a', 'noisy/b', 'quiet/q', 'noisy/c', 'noisy/d']);
    expect(invariants(pool)).toEqual([]);
  });

  it('maxWorkersPerSwarm caps a tenant, which makes room from its own workers, and leaves slots to others', async () => {
    const pool = openPool({ root: await tenants(), maxWorkers: 3, maxWorkersPerSwarm: 2 });
    const { events } = recordEvents(pool);
    const alive = new Map<string, number>();
    let noisyPeak = 0;
    pool.on('spawn', ({ key }) => {
      alive.set(key, 1);
      noisyPeak = Math.max(noisyPeak, [...alive.keys()].filter((k) => k.startsWith('noisy/')).length);
    });
    pool.on('exit', ({ key }) => alive.delete(key));
    // Each noisy call holds its worker until released: two run, two wait for noisy's share.
    const noisy = ['a', 'b', 'c', 'd'].map((stem) => pool.call(`noisy/${stem}`, 'hold', [stem]));
    await eventually(() => pool.stats().busy === 2 && pool.stats().queued === 2);
    // A slot is still free for the other tenant: it starts at once, while noisy keys wait.
    expect(await pool.call('quiet/q', 'add', [1, 2])).toBe(3);
    // A release reaches its key's worker, running or still to start, after the call it ends.
    for (const stem of ['a', 'b', 'c', 'd']) void pool.call(`noisy/${stem}`, 'release', [stem]);
    expect(await Promise.all(noisy)).toEqual(['a', 'b', 'c', 'd']);
    expect(noisyPeak).toBe(2);
    // noisy made room from its own idle workers, never from quiet's.
    const evicted = events.filter((event) => event.type === 'evict').map((event) => event.key);
    expect(evicted.every((key) => key.startsWith('noisy/'))).toBe(true);
    expect(invariants(pool)).toEqual([]);
  });
});

describe('queueTimeoutMs', () => {
  it('ends a wait for a slot held by calls that never end, with QUEUE_TIMEOUT, spawning nothing for it', async () => {
    // queueTimeoutMs also bounds the holder's own start: generous for a loaded machine.
    const pool = openPool({ root: await tenants(), maxWorkers: 1, queueTimeoutMs: 20_000, closeTimeoutMs: 200 });
    const { events } = recordEvents(pool);
    const holding = pool.call('noisy/faulty', 'hang', [], { timeoutMs: 0 });
    await eventually(() => pool.stats().busy === 1);
    expect(await code(pool.call('quiet/q', 'add', [1, 1]))).toBe('ERR_SANDPOOL_QUEUE_TIMEOUT');
    expect(events.filter((event) => event.type === 'spawn').map((event) => event.key)).toEqual(['noisy/faulty']);
    expect(pool.stats()).toMatchObject({ queued: 0, workers: 1, busy: 1 });
    expect(invariants(pool)).toEqual([]);
    void holding.catch(() => {});
  });

  it('does not touch a call that reached its worker in time, whatever it then takes', async () => {
    // The limit must outlast a cold start on a loaded machine; the call then outlasts the limit.
    const pool = openPool({ root: await tenants(), queueTimeoutMs: 20_000 });
    expect(await pool.call('quiet/q', 'slow', [20_300, 'late but fine'], { timeoutMs: 0 })).toBe('late but fine');
  });
});
