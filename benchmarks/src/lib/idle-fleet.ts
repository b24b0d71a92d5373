import { readdirSync, readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { createPool } from 'sandpool';
import { median } from './call-loops.js';
import { loadNow } from './conditions.js';
import { round } from './histogram.js';
import type { Json } from './report.js';
import { fixture, makeRoot } from './temp-root.js';
import { eachLimited, sleep } from './timing.js';

/** How many idle workers each side keeps: the figure, where per-worker costs show. */
export const IDLE_FLEET = 300;

/**
 * Rest before the windows: V8 runs a memory-reducing GC in every isolate some 6 to 8 s after
 * it starts (bare workers as much), and the pool's last busy reads end within a second.
 */
export const IDLE_SETTLE_MS = 10_000;

/** One measured window of rest. */
export type IdleWindow = {
  /** CPU of the whole process (every thread), in % of one core. */
  cpuPercent: number;
  /** Times the kernel switched to one of the process's threads, per second, per worker. */
  wakeupsPerWorkerSecond: number;
  /** 1-minute load average at the window's start and end. */
  load: [number, number];
};

export type IdleFleet = { workers: number; windows: IdleWindow[] };

/** Context switches of every thread of this process (voluntary and not): each is a wake-up. */
function contextSwitches(): number {
  let total = 0;
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      const status = readFileSync(`/proc/self/task/${tid}/status`, 'utf8');
      for (const match of status.matchAll(/^(?:non)?voluntary_ctxt_switches:\s+(\d+)/gm)) total += Number(match[1]);
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return total;
}

async function idleWindows(workers: number, windows: number, windowMs: number): Promise<IdleFleet> {
  await sleep(IDLE_SETTLE_MS);
  const measured: IdleWindow[] = [];
  for (let i = 0; i < windows; i++) {
    const loadStart = loadNow();
    const switchesStart = contextSwitches();
    const cpuStart = process.cpuUsage();
    const t0 = performance.now();
    await sleep(windowMs);
    const cpu = process.cpuUsage(cpuStart);
    const elapsed = performance.now() - t0;
    const switches = contextSwitches() - switchesStart;
    measured.push({
      cpuPercent: round(((cpu.user + cpu.system) / 1000 / elapsed) * 100),
      wakeupsPerWorkerSecond: round(switches / workers / (elapsed / 1000)),
      load: [round(loadStart), round(loadNow())],
    });
  }
  return { workers, windows: measured };
}

export type IdlePlan = { windows: number; windowMs: number };

export function idlePlan(quick: boolean): IdlePlan {
  return quick ? { windows: 2, windowMs: 3_000 } : { windows: 3, windowMs: 5_000 };
}

/**
 * A pool as users run it (default permissions: strict), each of IDLE_FLEET keys answered one
 * call, then left alone.
 */
export async function sandpoolIdleFleet(plan: IdlePlan): Promise<Json> {
  const stems = Array.from({ length: IDLE_FLEET }, (_, i) => `idle${i}`);
  const tree = await makeRoot(stems.map((stem) => ({ swarm: 'idle', stem, fixture: 'agent.mjs' })));
  const pool = createPool({ root: tree.root, maxWorkers: IDLE_FLEET, spareWorkers: 0, idleTimeoutMs: 0 });
  try {
    await eachLimited(stems, 4, async (stem) => {
      await pool.call(`idle/${stem}`, 'add', [1, 2]);
    });
    if (pool.stats().workers !== IDLE_FLEET)
      throw new Error(`expected ${IDLE_FLEET} workers, ${pool.stats().workers} alive`);
    return await idleWindows(IDLE_FLEET, plan.windows, plan.windowMs); // awaited: the workers outlive it
  } finally {
    await pool.close();
    await tree.cleanup();
  }
}

/** The floor: IDLE_FLEET plain `new Worker` threads that do nothing but wait on their port. */
export async function bareIdleFleet(plan: IdlePlan): Promise<Json> {
  const workers: Worker[] = [];
  try {
    await eachLimited(
      Array.from({ length: IDLE_FLEET }, (_, i) => i),
      4,
      async () => {
        const worker = new Worker(fixture('bare-nothing.mjs'), { execArgv: [], env: {} });
        workers.push(worker);
        await new Promise((resolve, reject) => {
          worker.once('message', resolve);
          worker.once('error', reject);
        });
      },
    );
    return await idleWindows(IDLE_FLEET, plan.windows, plan.windowMs); // awaited: the workers outlive it
  } finally {
    await Promise.all(workers.map((worker) => worker.terminate()));
  }
}

export type IdleSummary = {
  cpuPercent: number;
  wakeupsPerWorkerSecond: number;
  load: [number, number];
};

/** The median window of every run of one side, and the range of load they ran under. */
export function summarise(runs: readonly IdleFleet[]): IdleSummary {
  const windows = runs.flatMap((run) => run.windows);
  const loads = windows.flatMap((window) => window.load);
  return {
    cpuPercent: median(windows, (window) => window.cpuPercent).cpuPercent,
    wakeupsPerWorkerSecond: median(windows, (window) => window.wakeupsPerWorkerSecond).wakeupsPerWorkerSecond,
    load: [round(Math.min(...loads)), round(Math.max(...loads))],
  };
}
