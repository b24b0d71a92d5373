import { describe, expect, it } from 'vitest';
import { code, rejection, thrownSync } from './support/errors.js';
import { eventually, installCleanup, invariants, openPool, recordEvents } from './support/pool.js';
import { counterAgent, fixture, makeRoot } from './support/root.js';

installCleanup();

async function root(): Promise<string> {
  return makeRoot({ 'c/live/coop.mjs': await fixture('cooperative.mjs'), ...(await counterAgent('n')) });
}

const KEY = 'c/coop';
const NEIGHBOUR = 'n/notifier_agent';

describe('the agent global', () => {
  it('gives the key, the deadline of the call running now, and its signal, through awaits', async () => {
    const pool = openPool({ root: await root() });
    const before = Date.now();
    const seen = await pool.call<{ key: string; deadline: number; aborted: boolean }>(KEY, 'context', [], {
      timeoutMs: 5_000,
    });
    expect(seen.key).toBe(KEY);
    expect(seen.aborted).toBe(false);
    // Epoch ms, taken from the host's monotonic clock: within a few ms of Date.now(), which
    // the system may slew apart from it, so a second either way.
    expect(seen.deadline).toBeGreaterThanOrEqual(before + 5_000 - 1_000);
    expect(seen.deadline).toBeLessThanOrEqual(Date.now() + 5_000 + 1_000);
    expect(await pool.call(KEY, 'context', [], { timeoutMs: 0 })).toMatchObject({ deadline: null });
  });
});

describe('cooperative cancellation', () => {
  it('an abort answers the caller at once and fires the signal; the key keeps its worker and its other calls', async () => {
    const pool = openPool({ root: await root() });
    const { events } = recordEvents(pool);
    expect(await pool.call(KEY, 'count')).toBe(1);
    const controller = new AbortController();
    const aborted = pool.call(KEY, 'waitForSignal', [10_000], { signal: controller.signal });
    const other = pool.call(KEY, 'waitForSignal', [200]);
    await eventually(() => pool.stats().busy === 1);
    controller.abort();
    expect(await code(aborted)).toBe('ERR_SANDPOOL_ABORTED');
    expect(await other).toBe('finished');
    expect(await pool.call(NEIGHBOUR, 'add', [2, 3])).toBe(5);
    // Same worker, same module state: nothing was terminated.
    expect(await pool.call(KEY, 'count')).toBe(2);
    expect(events.filter((event) => event.type === 'exit')).toEqual([]);
    expect(invariants(pool)).toEqual([]);
  });

  it('a timeout fires the signal as a TimeoutError and spares the worker when the agent stops', async () => {
    // The agent stops at once; the longest grace lets a loaded machine carry its answer back.
    const pool = openPool({ root: await root(), abortGraceMs: 1_000 });
    const { events } = recordEvents(pool);
    expect(await code(pool.call(KEY, 'waitForSignal', [10_000], { timeoutMs: 100 }))).toBe('ERR_SANDPOOL_TIMEOUT');
    expect(await code(pool.call(KEY, 'reasonAfterAbort', [0], { timeoutMs: 100 }))).toBe('ERR_SANDPOOL_TIMEOUT');
    expect(await pool.call(KEY, 'count')).toBe(1);
    expect(events.filter((event) => event.type === 'exit')).toEqual([]);
    expect(invariants(pool)).toEqual([]);
  });

  it('a call that ignores its signal is stopped with its worker after abortGraceMs; its other calls get killed', async () => {
    const pool = openPool({ root: await root(), abortGraceMs: 100 });
    const { events } = recordEvents(pool);
    const other = pool.call(KEY, 'waitForSignal', [10_000], { timeoutMs: 0 });
    const spinning = pool.call(KEY, 'spin', [], { timeoutMs: 100 });
    expect(await code(spinning)).toBe('ERR_SANDPOOL_TIMEOUT');
    // The caller was answered at the timeout; the worker goes only after the grace.
    expect(events.filter((event) => event.type === 'exit')).toEqual([]);
    expect(await rejection(other)).toMatchObject({ code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'killed' });
    expect(events).toContainEqual(expect.objectContaining({ type: 'exit', key: KEY, reason: 'killed' }));
    expect(await pool.call(NEIGHBOUR, 'add', [1, 1])).toBe(2);
    expect(await pool.call(KEY, 'count')).toBe(1);
    expect(invariants(pool)).toEqual([]);
  });

  it('a call that settles late but within its grace keeps the worker, and its late answer is dropped', async () => {
    const pool = openPool({ root: await root(), abortGraceMs: 1_000 });
    const { events } = recordEvents(pool);
    // It answers as soon as its signal fires: after the caller's TIMEOUT, within any grace.
    expect(await code(pool.call(KEY, 'reasonAfterAbort', [0], { timeoutMs: 50 }))).toBe('ERR_SANDPOOL_TIMEOUT');
    // Made in the tick of the timeout, before the host can read that answer: it waits until the
    // cancelled call settles, then runs on the same worker; neither answer may be taken for the other.
    const count = pool.call(KEY, 'count');
    expect(pool.keyStats().find((stats) => stats.key === KEY)).toMatchObject({ inFlight: 1 });
    expect(await count).toBe(1);
    await eventually(() => pool.stats().busy === 0);
    expect(pool.stats().workers).toBe(1);
    expect(events.filter((event) => event.type === 'exit')).toEqual([]);
    expect(invariants(pool)).toEqual([]);
  });

  it('a call made while a timed-out call ignores its signal runs on the worker that replaces it, once', async () => {
    const pool = openPool({ root: await root(), abortGraceMs: 300 });
    const { events } = recordEvents(pool);
    expect(await pool.call(KEY, 'count')).toBe(1);
    expect(await code(pool.call(KEY, 'spin', [], { timeoutMs: 100 }))).toBe('ERR_SANDPOOL_TIMEOUT');
    // The worker still spins: these never reach it, and run on the next worker instead.
    const after = [pool.call(KEY, 'count'), pool.call(KEY, 'count')];
    const neighbour = pool.call(NEIGHBOUR, 'add', [2, 2]);
    expect(await Promise.all(after)).toEqual([1, 2]);
    expect(await neighbour).toBe(4);
    expect(events).toContainEqual(expect.objectContaining({ type: 'exit', key: KEY, reason: 'killed' }));
    expect(pool.stats().spawned).toBe(3);
    expect(invariants(pool)).toEqual([]);
  });

  it('a call that waits for a grace can still be aborted, and never runs', async () => {
    const pool = openPool({ root: await root(), abortGraceMs: 300 });
    expect(await code(pool.call(KEY, 'spin', [], { timeoutMs: 100 }))).toBe('ERR_SANDPOOL_TIMEOUT');
    const controller = new AbortController();
    const waiting = pool.call(KEY, 'count', [], { signal: controller.signal });
    controller.abort();
    expect(await code(waiting)).toBe('ERR_SANDPOOL_ABORTED');
    expect(await pool.call(KEY, 'count')).toBe(1);
    expect(invariants(pool)).toEqual([]);
  });

  it('abortGraceMs 0 stops the worker at once, as before cancellation existed', async () => {
    const pool = openPool({ root: await root(), abortGraceMs: 0 });
    const other = pool.call(KEY, 'waitForSignal', [10_000], { timeoutMs: 0 });
    expect(await code(pool.call(KEY, 'waitForSignal', [10_000], { timeoutMs: 50 }))).toBe('ERR_SANDPOOL_TIMEOUT');
    expect(await rejection(other)).toMatchObject({ reason: 'killed' });
  });

  it('close fires the signal of running calls and still delivers what settles within closeTimeoutMs', async () => {
    const pool = openPool({ root: await root() });
    const running = pool.call(KEY, 'reasonAfterAbort', [20]);
    await eventually(() => pool.stats().busy === 1);
    await pool.close();
    expect(await running).toBe('AbortError');
  });

  it('refuses abortGraceMs above 1000 ms', async () => {
    expect(thrownSync(() => openPool({ root: '/tmp', abortGraceMs: 1_001 }))).toEqual({
      code: 'ERR_SANDPOOL_INVALID_OPTIONS',
      paths: ['abortGraceMs'],
    });
  });
});
