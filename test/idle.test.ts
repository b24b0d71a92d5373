import { createHook } from 'node:async_hooks';
import { readFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { Worker } from 'node:worker_threads';
import type { Pool } from 'sandpool';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { Cell } from '../packages/sandpool/dist/host/cells/cell.js';
import { MemoryGovernor } from '../packages/sandpool/dist/host/governors/memory.js';
import type { AgentWorker } from '../packages/sandpool/dist/host/workers/agent-worker.js';
import { eventually, installCleanup, invariants, openPool } from './support/pool.js';
import { makeRoot } from './support/root.js';

installCleanup();

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Times the kernel ran a thread (field 3 of its schedstat): each is a wake-up. */
function wakeups(tid: number): number {
  return Number(readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').trim().split(' ')[2]);
}

/**
 * Counts the coordinator's reads of worker heaps, by the probe this Node has:
 * `worker.getHeapStatistics()`, or the inspector's Runtime.getHeapUsage (Node 20).
 */
function countMemoryReads(): { count: number; stop(): void } {
  const counter = { count: 0, stop: () => {} };
  const target = (typeof (Worker.prototype as { getHeapStatistics?: unknown }).getHeapStatistics === 'function'
    ? Worker.prototype
    : Session.prototype) as unknown as Record<string, (...args: unknown[]) => unknown>;
  const name = target === (Session.prototype as unknown) ? 'post' : 'getHeapStatistics';
  const original = target[name] as (...args: unknown[]) => unknown;
  target[name] = function (this: unknown, ...args: unknown[]) {
    const message = name === 'post' ? JSON.stringify(args[1] ?? '') : 'Runtime.getHeapUsage';
    if (message.includes('Runtime.getHeapUsage')) counter.count += 1;
    return original.apply(this, args);
  };
  counter.stop = () => {
    target[name] = original;
  };
  return counter;
}

const heapOf = (pool: Pool): number | null => pool.keyStats().find((stats) => stats.stem === 't0')?.heapBytes ?? null;

const TID_AGENT = `
import { readlinkSync } from 'node:fs';
export const tid = () => Number(readlinkSync('/proc/thread-self').split('/').pop());
const kept = [];
/** Grows by 16 MB once the call has answered: while the pool sees the worker idle. */
export function growLater() {
  setTimeout(() => kept.push(Array.from({ length: 2 * 2 ** 20 }, (_, i) => i)), 300);
}
`;

describe('an idle worker costs nothing', () => {
  it('is not woken by the pool while it runs no code: its memory is read only once it ran', {
    timeout: 120_000,
  }, async () => {
    const root = await makeRoot(Object.fromEntries([0, 1, 2, 3].map((i) => [`s/live/t${i}.mjs`, TID_AGENT])));
    // 'none': the agent may read its own thread id; the probe and the CPU reads are the same under 'strict'.
    const pool = openPool({ root, permissions: 'none', spareWorkers: 0 });
    const tids: number[] = [];
    for (let i = 0; i < 4; i++) tids.push(await pool.call<number>(`s/t${i}`, 'tid'));
    await sleep(1_000); // the last calls' busy reads are over
    const reads = countMemoryReads();
    const before = tids.map(wakeups);
    const seconds = 4;
    await sleep(seconds * 1_000);
    const perSecond = tids.map((tid, i) => (wakeups(tid) - (before[i] ?? 0)) / seconds);
    reads.stop();
    // The pool read each idle worker's heap 4 times a second; now it reads none that ran no
    // code, unless the process grew by 32 MB (then each once: see the next test).
    expect(reads.count).toBeLessThanOrEqual(tids.length);
    // Those reads woke each idle worker 4 to 7 times a second; a bare idle worker wakes about
    // once a second or less, a read costs a few wake-ups, and a loaded machine splits a run in
    // more: the bound is loose, the reads above are the precise check.
    for (const rate of perSecond) expect(rate).toBeLessThan(4);
    // An idle worker that runs code is read again: growth between calls is seen.
    const heapBefore = heapOf(pool) ?? 0;
    await pool.call('s/t0', 'growLater');
    await eventually(() => (heapOf(pool) ?? 0) > heapBefore + 8 * 2 ** 20, 30_000);
    expect(invariants(pool)).toEqual([]);
  });
});

/**
 * Counts every callback this thread's event loop runs (timers, messages, immediates, I/O):
 * each is a wake-up of its JavaScript, whatever woke it. Installed by an agent in its own
 * worker, it sees the runtime's timers and the coordinator's messages as well as its own.
 */
const COUNTING_AGENT = `
import { createHook } from 'node:async_hooks';
let callbacks = 0;
createHook({ before() { callbacks += 1; } }).enable();
export const count = () => callbacks;
`;

describe('growth between calls under the default strict permissions', () => {
  it('is seen: on Node 20 the coordinator asks the worker, whose beat has stopped, once its thread ran', {
    timeout: 120_000,
  }, async () => {
    // Grows by 16 MB 3 s after answering: long after the beats that follow a call.
    const grower = `const kept = [];
export function growLater() {
  setTimeout(() => kept.push(Array.from({ length: 2 * 2 ** 20 }, (_, i) => i)), 3_000);
}`;
    const root = await makeRoot({ 's/live/t0.mjs': grower });
    const pool = openPool({ root, spareWorkers: 0 });
    await pool.call('s/t0', 'growLater');
    await sleep(1_000); // the beats after the call are over; it grows in 2 s
    const heapBefore = heapOf(pool) ?? 0;
    await eventually(() => (heapOf(pool) ?? 0) > heapBefore + 8 * 2 ** 20, 30_000);
    expect(invariants(pool)).toEqual([]);
  });
});

describe('an idle worker wakes up a bounded number of times', () => {
  it('runs a callback or two at rest, under the default strict permissions, and the coordinator none per worker', {
    timeout: 120_000,
  }, async () => {
    const keys = 32;
    const root = await makeRoot(
      Object.fromEntries(Array.from({ length: keys }, (_, i) => [`s/live/c${i}.mjs`, COUNTING_AGENT])),
    );
    const pool = openPool({ root, spareWorkers: 0 }); // strict: on Node 20 its workers beat their memory
    const all = <T>(call: (key: string) => Promise<T>): Promise<T[]> =>
      Promise.all(Array.from({ length: keys }, (_, i) => call(`s/c${i}`)));
    await all((key) => pool.call(key, 'count'));
    await sleep(1_000); // the calls' busy beats and reads are over
    // The coordinator's own callbacks over the same rest, counted the same way.
    let coordinator = 0;
    const hook = createHook({
      before() {
        coordinator += 1;
      },
    }).enable();
    const first = await all((key) => pool.call<number>(key, 'count'));
    const coordinatorStart = coordinator;
    const seconds = 12;
    await sleep(seconds * 1_000);
    const coordinatorCallbacks = coordinator - coordinatorStart;
    const last = await all((key) => pool.call<number>(key, 'count'));
    hook.disable();
    // Between the two calls each worker ran its runtime's timers and whatever the coordinator
    // sent it: the two calls' messages, and on Node 20 under the permission model the memory
    // beats after a call (the busy one, then idle ones until one finds the memory put: 3),
    // and the few the coordinator may ask for when the thread ran (V8's own idle GC, say).
    // Then nothing: a beat every 2 s would add 6 here, one every 250 ms 48.
    const atRest = 2 + 3 + 3;
    for (const [i, count] of last.entries()) expect(count - (first[i] ?? 0)).toBeLessThanOrEqual(atRest);
    // Pool-wide timers visit every idle worker (each governor's sweep 4 times a second, the
    // pointer check 5): the coordinator's callbacks do not grow with the workers, and stay
    // under one per worker per second (timers per worker would be 8 a second each).
    expect(coordinatorCallbacks / seconds).toBeLessThan(keys);
    expect(invariants(pool)).toEqual([]);
  });
});

describe('the memory governor and quiet idle workers', () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval', 'performance'] });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('reads a quiet idle worker again once the process grew: memory can grow off its thread', async () => {
    const governor = new MemoryGovernor(
      { heapBytes: 2 ** 30, externalBytes: 2 ** 30 },
      () => {},
      () => 0, // its thread never runs
    );
    if (!governor.active) return; // no probe on this Node: nothing reads
    let reads = 0;
    const thread = {
      isolation: 'thread',
      readMemory: () => {
        reads += 1;
        return Promise.resolve({ heap: 1, external: 1 });
      },
    } as unknown as AgentWorker;
    const cell = { busy: 0 } as unknown as Cell;
    governor.watch(cell, thread, false);
    await vi.advanceTimersByTimeAsync(250);
    expect(reads).toBe(1); // never read: read once
    await vi.advanceTimersByTimeAsync(2_500);
    expect(reads).toBe(1); // quiet, and the process did not grow
    const growth = Buffer.alloc(96 * 2 ** 20, 1); // as libuv's pool filling a buffer would
    await vi.advanceTimersByTimeAsync(250);
    expect(reads).toBe(2);
    governor.unwatch(cell);
    expect(growth.length).toBeGreaterThan(0);
  });

  it('asks an idle heartbeat worker for a beat only once its thread ran (Node 20 under the permission model)', async () => {
    let cpuNs = 0;
    const governor = new MemoryGovernor(
      { heapBytes: 2 ** 30, externalBytes: 2 ** 30 },
      () => {},
      () => cpuNs,
    );
    if (!governor.active) return;
    const asked: unknown[] = [];
    const thread = { isolation: 'thread', post: (message: unknown) => asked.push(message) } as unknown as AgentWorker;
    const cell = { busy: 0 } as unknown as Cell;
    governor.watch(cell, thread, true);
    await vi.advanceTimersByTimeAsync(250);
    expect(asked).toEqual([{ t: 'beat' }]); // never asked: asked once
    await vi.advanceTimersByTimeAsync(5_000);
    expect(asked).toHaveLength(1); // its thread ran nothing: its worker stays asleep
    cpuNs += 5_000_000; // a timer of its agent ran 5 ms
    await vi.advanceTimersByTimeAsync(250);
    expect(asked).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(asked).toHaveLength(2);
    governor.unwatch(cell);
  });
});
