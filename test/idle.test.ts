import { readFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { Worker } from 'node:worker_threads';
import type { Pool } from 'sandpool';
import { describe, expect, it } from 'vitest';
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
    // The pool read each idle worker's heap 4 times a second; now it reads none that ran no code.
    expect(reads.count).toBe(0);
    // Those reads woke each idle worker 4 to 7 times a second; a bare idle worker wakes about
    // once a second or less. Timers in an agent would wake it: this one has none.
    for (const rate of perSecond) expect(rate).toBeLessThan(2);
    // An idle worker that runs code is read again: growth between calls is seen.
    const heapBefore = heapOf(pool) ?? 0;
    await pool.call('s/t0', 'growLater');
    await eventually(() => (heapOf(pool) ?? 0) > heapBefore + 8 * 2 ** 20, 30_000);
    expect(invariants(pool)).toEqual([]);
  });
});
