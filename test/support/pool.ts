import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createPool, type Pool, type PoolOptions, type PoolStats } from 'sandpool';
import { afterEach, beforeAll, beforeEach, expect } from 'vitest';
import { removeRoots } from './root.js';

/** Threads of this process, from the kernel: worker threads do not show in active resources. */
export function threadCount(): number {
  const match = /^Threads:\s+(\d+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return Number(match?.[1]);
}

/** Agent processes this process started (isolation 'process'), from the kernel; esbuild's service is not one. */
/** This process's children that sandpool started: process keys' workers and the snapshot helper. */
export function childProcesses(): number[] {
  return childrenWhose((cmdline) => isAgentProcess(cmdline) || cmdline.includes('store/helper-entry.js'));
}

/** This process's children that run agents (process keys), the snapshot helper left out. */
export function agentProcesses(): number[] {
  return childrenWhose(isAgentProcess);
}

/** In a cell the entry is named by its file name alone (no host path on a cell's command line). */
function isAgentProcess(cmdline: string): boolean {
  return /(^|[\0/])bundle\.js\0/.test(cmdline);
}

function childrenWhose(matches: (cmdline: string) => boolean): number[] {
  const children = readFileSync(`/proc/self/task/${process.pid}/children`, 'utf8').trim();
  if (children === '') return [];
  return children
    .split(' ')
    .map(Number)
    .filter((pid) => {
      try {
        return matches(readFileSync(`/proc/${pid}/cmdline`, 'latin1'));
      } catch {
        return false; // gone already
      }
    });
}

const pools: Pool[] = [];

/** The coordinator's invariants, checked from scratch: a list of what is wrong, empty when all hold. */
export function invariants(pool: Pool): string[] {
  const check = (pool as unknown as Record<symbol, () => string[]>)[Symbol.for('sandpool.invariants')];
  if (check === undefined) throw new Error('this build of sandpool has no invariant check');
  return check.call(pool);
}

/**
 * A pool closed after the test; tests that need no spare say so to keep thread counts exact.
 * A worker's start may take over 10 s (the default loadTimeoutMs) on a machine at load 30: a
 * minute bounds a hang; a test of loadTimeoutMs sets its own.
 */
export const TEST_LOAD_TIMEOUT_MS = 60_000;

export function openPool(options: PoolOptions): Pool {
  const pool = createPool({ spareWorkers: 0, idleTimeoutMs: 0, loadTimeoutMs: TEST_LOAD_TIMEOUT_MS, ...options });
  pools.push(pool);
  return pool;
}

export interface Recorded {
  type: 'spawn' | 'evict' | 'exit';
  key: string;
  reason: string;
  threadId: number | null;
  pid: number;
}

/** stats().died when no worker died. */
export const NO_DEATHS: PoolStats['died'] = { crash: 0, exit: 0, oom: 0, killed: 0, protocol: 0, cpu: 0 };

/** Workers that died or were killed, whatever the reason (stats().died, summed). */
export function deaths(stats: PoolStats): number {
  return Object.values(stats.died).reduce((sum, count) => sum + count, 0);
}

/** Records every lifecycle event, and the most keyed workers ever alive at once. */
export function recordEvents(pool: Pool): { events: Recorded[]; peak: () => number } {
  const events: Recorded[] = [];
  let alive = 0;
  let peak = 0;
  pool.on('spawn', (event) => {
    events.push({ type: 'spawn', ...event });
    alive += 1;
    peak = Math.max(peak, alive);
  });
  pool.on('evict', (event) => events.push({ type: 'evict', ...event }));
  pool.on('exit', (event) => {
    events.push({ type: 'exit', ...event });
    alive -= 1;
  });
  return { events, peak: () => peak };
}

/**
 * Closes every pool a test opened, checks none kept a worker, and checks the process is
 * back to the threads it had before the test: no worker thread outlives its pool.
 */
export function installCleanup(): void {
  let baseline = 0;
  let children = 0;
  beforeAll(async () => {
    // libuv starts its thread pool on the first file-system call: start it before counting.
    await readFile('/proc/self/status');
  });
  beforeEach(() => {
    baseline = threadCount();
    children = childProcesses().length;
  });
  afterEach(async () => {
    const open = pools.splice(0);
    await Promise.all(open.map((pool) => pool.close()));
    for (const pool of open) expect(pool.stats().workers + pool.stats().spares).toBe(0);
    await removeRoots();
    await eventually(() => threadCount() <= baseline).catch(() => {
      throw new Error(`${threadCount() - baseline} threads outlived the test`);
    });
    await eventually(() => childProcesses().length <= children).catch(() => {
      throw new Error(`${childProcesses().length - children} child processes outlived the test`);
    });
  });
}

/**
 * Waits until `predicate` holds, polling; fails the test after `timeoutMs`, a bound for a
 * loaded machine, never a measure. On a clock no test fakes (some fake `Date` or `performance`).
 */
export async function eventually(predicate: () => boolean, timeoutMs = 15_000): Promise<void> {
  const elapsedMs = elapsedSince(process.hrtime.bigint());
  while (!predicate()) {
    if (elapsedMs() > timeoutMs) throw new Error('condition not reached in time');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function elapsedSince(start: bigint): () => number {
  return () => Number(process.hrtime.bigint() - start) / 1e6;
}

/** Runs `fn` while sampling this process's RSS every 5 ms; how far it rose above where it started. */
export async function rssGrowth<T>(fn: () => Promise<T>): Promise<{ value: T; growth: number }> {
  const before = process.memoryUsage().rss;
  let peak = before;
  const sampler = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss);
  }, 5);
  try {
    const value = await fn();
    return { value, growth: Math.max(peak, process.memoryUsage().rss) - before };
  } finally {
    clearInterval(sampler);
  }
}
