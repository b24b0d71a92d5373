import { readFileSync } from 'node:fs';
import { setTimeout as sleepFor } from 'node:timers/promises';

export const now = (): number => performance.now();

export function sleep(ms: number): Promise<void> {
  return sleepFor(ms);
}

const MAIN_THREAD_SCHEDSTAT = `/proc/self/task/${process.pid}/schedstat`;

/**
 * CPU time of the main thread alone, in ms. `process.cpuUsage()` is process-wide
 * (getrusage RUSAGE_SELF) and so counts every worker thread too; Node 20 has no
 * `process.threadCpuUsage()`. Linux's schedstat gives the main thread's run time in ns.
 * Returns null where it is missing.
 */
export function mainThreadCpuMs(): number | null {
  try {
    const [runNs] = readFileSync(MAIN_THREAD_SCHEDSTAT, 'utf8').split(' ');
    return Number(runNs) / 1e6;
  } catch {
    return null;
  }
}

/** Process-wide CPU (all threads), in ms. */
export function processCpuMs(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1000;
}

/** Polls until `ready()` holds, or throws after `timeoutMs`. */
export async function until(ready: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = now() + timeoutMs;
  while (!ready()) {
    if (now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(2);
  }
}

/** Runs `task` on each item with at most `limit` at once. */
export async function eachLimited<T>(
  items: readonly T[],
  limit: number,
  task: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < items.length) {
      const item = items[next++] as T;
      await task(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
}

export function collectGarbage(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
}

export function rss(): number {
  return process.memoryUsage.rss();
}
