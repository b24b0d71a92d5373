import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { createPool } from 'sandpool';
import { num, ratio } from '../lib/format.js';
import { round } from '../lib/histogram.js';
import {
  bareIdleFleet,
  IDLE_FLEET,
  IDLE_SETTLE_MS,
  type IdleFleet,
  type IdleSummary,
  idlePlan,
  sandpoolIdleFleet,
  summarise,
} from '../lib/idle-fleet.js';
import { runPhase } from '../lib/phase.js';
import type { BenchContext, Benchmark, BenchReport, Json } from '../lib/report.js';
import { fixture, makeRoot, type TempRoot } from '../lib/temp-root.js';
import { collectGarbage, eachLimited, rss, sleep } from '../lib/timing.js';

const WARM_KEYS = 100;
const CHURN_MAX_WORKERS = 4;
const CHURN_KEYS = 32;
const CHURN_LANES = 4;

type Checkpoint = {
  cycles: number;
  rssMb: number;
  heapUsedMb: number;
  threads: number;
  seconds: number;
};

export const memory: Benchmark = {
  name: 'memory',
  title: 'Memory: RSS per idle warm worker, and RSS across evict/respawn churn',
  async run(context: BenchContext): Promise<BenchReport> {
    const { totalCycles, referenceCycles } = cyclesOf(context.quick);
    const step = referenceCycles;
    // Each part in a process of its own: RSS that one part's threads leave behind (malloc
    // keeps freed arenas) must not become the next part's baseline.
    context.progress(`sandpool: warming ${WARM_KEYS} keys (own process)`);
    const perWorker = (await runPhase('memory', 'sandpool-idle', context.quick)) as IdleFigure;
    context.progress(`bare workers: ${WARM_KEYS} threads that imported the module (own process)`);
    const bare = (await runPhase('memory', 'bare-idle', context.quick)) as IdleFigure;
    // Interleaved (sandpool, bare, bare, sandpool in a full run): load that rises or falls over
    // the run weighs on both sides alike.
    const order = context.quick ? ['sandpool', 'bare'] : ['sandpool', 'bare', 'bare', 'sandpool'];
    const fleets: { sandpool: IdleFleet[]; bare: IdleFleet[] } = { sandpool: [], bare: [] };
    for (const side of order as ('sandpool' | 'bare')[]) {
      context.progress(`${side}: ${IDLE_FLEET} idle workers, CPU at rest (own process)`);
      fleets[side].push((await runPhase('memory', `${side}-fleet`, context.quick)) as IdleFleet);
    }
    const idleSandpool = summarise(fleets.sandpool);
    const idleBare = summarise(fleets.bare);
    const idleRatio = round(idleSandpool.cpuPercent / idleBare.cpuPercent, 3);
    const plan = idlePlan(context.quick);
    context.progress(
      `sandpool churn: ${totalCycles} evict/respawn cycles, maxWorkers ${CHURN_MAX_WORKERS} (own process)`,
    );
    const churn = (await runPhase('memory', 'churn', context.quick)) as Churn;
    context.progress(`bare churn: ${totalCycles} new Worker/terminate cycles (own process)`);
    const bareChurn = (await runPhase('memory', 'bare-churn', context.quick)) as Churn;
    const growth = (run: Churn): { end: number; peak: number } => {
      const reference = run.checkpoints.find((c) => c.cycles >= referenceCycles) as Checkpoint;
      const last = run.checkpoints.at(-1) as Checkpoint;
      const peak = Math.max(...run.checkpoints.map((c) => c.rssMb));
      return { end: round(last.rssMb / reference.rssMb, 3), peak: round(peak / reference.rssMb, 3) };
    };
    const sandpoolGrowth = growth(churn);
    const bareGrowth = growth(bareChurn);
    return {
      method: [
        `RSS per idle warm worker: one pool (maxWorkers 128, spareWorkers 0, idleTimeoutMs 0); RSS before any worker, then after ${WARM_KEYS} distinct keys each answered one call (4 at a time) and 1 s of rest; the difference over ${WARM_KEYS}. global.gc() runs on the main thread before each reading (workers collect on their own). Then, ${IDLE_SETTLE_MS / 1000} s later, the process's CPU (all threads) over ${IDLE_CPU_MS / 1000} s of rest, in % of one core: what keeping them warm costs (the pool reads each worker's CPU and memory; under strict permissions on Node 20 each worker beats its memory to the coordinator).`,
        `Idle CPU against bare workers: ${IDLE_FLEET} keys of a pool as users run it (default permissions, strict; maxWorkers ${IDLE_FLEET}, spareWorkers 0, idleTimeoutMs 0), each answered one call, then left alone; against ${IDLE_FLEET} plain new Worker threads that do nothing but wait on their port. Each side in a fresh process, ${context.quick ? 'once each' : 'twice each, interleaved (sandpool, bare, bare, sandpool)'}; after ${IDLE_SETTLE_MS / 1000} s of rest, ${plan.windows} windows of ${plan.windowMs / 1000} s: the process's CPU (all threads) in % of one core, and its threads' context switches (voluntary and not, /proc/self/task/*/status) per second per worker, each wake-up of any thread. The ratio is of the median windows; the load average at each window's start and end is kept beside it.`,
        `bare floor: the same with ${WARM_KEYS} plain new Worker threads that imported the same module and wait on their port.`,
        `Churn: a pool with maxWorkers ${CHURN_MAX_WORKERS} (spareWorkers default) and ${CHURN_LANES} callers cycling through ${CHURN_KEYS} keys, so every call evicts the least recently used worker and starts a new one; a cycle is one spawn (stats().spawned). The callers pause every ${step} cycles for a reading (gc, 200 ms rest, RSS).`,
        `bare churn: the same readings over ${CHURN_LANES} callers that each start a plain new Worker, import a module, make one round trip and terminate it: what Node itself keeps across worker churn.`,
        'Each of the four parts runs in a fresh Node process (--expose-gc), so no part starts from RSS another left behind.',
        `Growth: RSS at ${totalCycles} cycles over RSS at ${referenceCycles} cycles${context.quick ? ' (quick mode: fewer cycles than the full run, 5,000 against 500)' : ''}; peak: the highest reading over the same reference. RSS moves by tens of MB between readings as malloc keeps or returns arenas, so one end-to-reference ratio is noisy.`,
      ],
      parameters: {
        warmKeys: WARM_KEYS,
        idleFleet: IDLE_FLEET,
        idleWindows: plan.windows,
        idleWindowMs: plan.windowMs,
        totalCycles,
        referenceCycles,
        churnMaxWorkers: CHURN_MAX_WORKERS,
        churnKeys: CHURN_KEYS,
        churnLanes: CHURN_LANES,
      },
      results: {
        sandpoolIdleWorker: perWorker,
        bareIdleWorker: bare,
        churn,
        bareChurn,
        idleFleet: { sandpool: fleets.sandpool, bare: fleets.bare },
        idleSummary: { sandpool: idleSandpool, bare: idleBare },
      },
      ratios: {
        [`${IDLE_FLEET} idle sandpool workers / ${IDLE_FLEET} bare workers, CPU`]: idleRatio,
        [`${IDLE_FLEET} idle sandpool workers / ${IDLE_FLEET} bare workers, wake-ups`]: round(
          idleSandpool.wakeupsPerWorkerSecond / idleBare.wakeupsPerWorkerSecond,
          3,
        ),
        [`sandpool churn: rss at ${totalCycles} / rss at ${referenceCycles} cycles`]: sandpoolGrowth.end,
        [`sandpool churn: peak rss / rss at ${referenceCycles} cycles`]: sandpoolGrowth.peak,
        [`bare churn: rss at ${totalCycles} / rss at ${referenceCycles} cycles`]: bareGrowth.end,
        [`bare churn: peak rss / rss at ${referenceCycles} cycles`]: bareGrowth.peak,
        'sandpool idle worker / bare idle worker': round(perWorker.perWorkerMb / bare.perWorkerMb, 3),
      },
      tables: [
        {
          title: `RSS per idle warm worker (${WARM_KEYS} workers)`,
          headers: ['threads', 'RSS before', 'RSS after', 'per worker', 'CPU while idle'],
          rows: [
            [
              'sandpool',
              `${num(perWorker.beforeMb)} MB`,
              `${num(perWorker.afterMb)} MB`,
              `${num(perWorker.perWorkerMb)} MB`,
              `${num(perWorker.idleCpuPercent)}% of a core`,
            ],
            [
              'bare Worker + import',
              `${num(bare.beforeMb)} MB`,
              `${num(bare.afterMb)} MB`,
              `${num(bare.perWorkerMb)} MB`,
              `${num(bare.idleCpuPercent)}% of a core`,
            ],
          ],
        },
        {
          title: `${IDLE_FLEET} idle workers against ${IDLE_FLEET} bare ones (median window)`,
          headers: ['threads', 'CPU at rest', 'wake-ups per worker per second', 'load average'],
          rows: [idleRow('sandpool (strict)', idleSandpool), idleRow('bare new Worker', idleBare)],
          note: `CPU ratio ${ratio(idleRatio)} (goal ≤ 1.5×).`,
        },
        {
          title: `Process RSS across churn (sandpool: maxWorkers ${CHURN_MAX_WORKERS}, ${num(churn.cyclesPerSecond)} cycles/s; bare: ${num(bareChurn.cyclesPerSecond)} cycles/s)`,
          headers: ['cycles', 'sandpool RSS', 'main heap used', 'threads', 'bare churn RSS'],
          rows: churn.checkpoints.map((c, i) => [
            String(c.cycles),
            `${num(c.rssMb)} MB`,
            `${num(c.heapUsedMb)} MB`,
            String(c.threads),
            bareChurn.checkpoints[i] === undefined
              ? 'n/a'
              : `${num((bareChurn.checkpoints[i] as Checkpoint).rssMb)} MB`,
          ]),
          note: `RSS at ${totalCycles} / at ${referenceCycles} cycles: sandpool ${ratio(sandpoolGrowth.end)} (peak ${ratio(sandpoolGrowth.peak)}), bare ${ratio(bareGrowth.end)} (peak ${ratio(bareGrowth.peak)}). threads: the sandpool process's threads (/proc/self/status), a leak check.`,
        },
      ],
      chart: {
        title: 'Memory: idle workers and churn',
        panels: [
          {
            title: 'RSS per idle warm worker',
            unit: 'MB',
            groups: [
              { label: 'sandpool', bars: [{ series: 'per worker', value: perWorker.perWorkerMb }] },
              { label: 'bare Worker + import', bars: [{ series: 'per worker', value: bare.perWorkerMb }] },
            ],
          },
          {
            title: `CPU of ${IDLE_FLEET} idle workers`,
            unit: '% of a core',
            groups: [
              { label: 'sandpool (strict)', bars: [{ series: 'CPU at rest', value: idleSandpool.cpuPercent }] },
              { label: 'bare new Worker', bars: [{ series: 'CPU at rest', value: idleBare.cpuPercent }] },
            ],
          },
          {
            title: 'Process RSS across churn',
            unit: 'MB',
            groups: churn.checkpoints.map((c, i) => ({
              label: `${c.cycles} cycles`,
              bars: [
                { series: `sandpool (maxWorkers ${CHURN_MAX_WORKERS})`, value: c.rssMb },
                { series: 'bare new Worker/terminate', value: bareChurn.checkpoints[i]?.rssMb ?? Number.NaN },
              ],
            })),
          },
        ],
      },
    };
  },
  phases: {
    'sandpool-idle': () => withRoot(WARM_STEMS, sandpoolIdle),
    'bare-idle': () => withRoot(WARM_STEMS, bareIdle),
    churn: (context) => withRoot(CHURN_STEMS, (tree) => churnRun(tree, context)),
    'sandpool-fleet': (context) => sandpoolIdleFleet(idlePlan(context.quick)),
    'bare-fleet': (context) => bareIdleFleet(idlePlan(context.quick)),
    'bare-churn': (context) => withRoot(CHURN_STEMS, (tree) => bareChurnRun(tree, context)),
  },
};

function idleRow(label: string, figure: IdleSummary): string[] {
  return [
    label,
    `${num(figure.cpuPercent)}% of a core`,
    num(figure.wakeupsPerWorkerSecond),
    `${num(figure.load[0])}–${num(figure.load[1])}`,
  ];
}

const WARM_STEMS = Array.from({ length: WARM_KEYS }, (_, i) => `warm${i}`);
const CHURN_STEMS = Array.from({ length: CHURN_KEYS }, (_, i) => `churn${i}`);

function cyclesOf(quick: boolean): { totalCycles: number; referenceCycles: number } {
  return quick ? { totalCycles: 600, referenceCycles: 100 } : { totalCycles: 5_000, referenceCycles: 500 };
}

async function withRoot<T extends Json>(stems: readonly string[], phase: (tree: TempRoot) => Promise<T>): Promise<T> {
  const tree = await makeRoot(stems.map((stem) => ({ swarm: 'mem', stem, fixture: 'agent.mjs' })));
  try {
    return await phase(tree);
  } finally {
    await tree.cleanup();
  }
}

type IdleFigure = {
  beforeMb: number;
  afterMb: number;
  perWorkerMb: number;
  /** CPU of the whole process (every thread) while the workers sat idle, in % of one core. */
  idleCpuPercent: number;
};

const IDLE_CPU_MS = 3_000;

async function idleCpuPercent(): Promise<number> {
  await sleep(IDLE_SETTLE_MS);
  const start = process.cpuUsage();
  await sleep(IDLE_CPU_MS);
  const used = process.cpuUsage(start);
  return round(((used.user + used.system) / 1000 / IDLE_CPU_MS) * 100);
}

async function settledRss(restMs: number): Promise<number> {
  collectGarbage();
  await sleep(restMs);
  collectGarbage();
  return rss();
}

async function idleFigure(before: number, after: number): Promise<IdleFigure> {
  return {
    beforeMb: round(before / 2 ** 20),
    afterMb: round(after / 2 ** 20),
    perWorkerMb: round((after - before) / WARM_KEYS / 2 ** 20),
    idleCpuPercent: await idleCpuPercent(),
  };
}

async function sandpoolIdle(tree: TempRoot): Promise<IdleFigure> {
  const pool = createPool({ root: tree.root, maxWorkers: 128, spareWorkers: 0, idleTimeoutMs: 0 });
  try {
    const before = await settledRss(500);
    const keys = Array.from({ length: WARM_KEYS }, (_, i) => `mem/warm${i}`);
    await eachLimited(keys, 4, async (key) => {
      await pool.call(key, 'add', [1, 2]);
    });
    if (pool.stats().workers !== WARM_KEYS)
      throw new Error(`expected ${WARM_KEYS} workers, ${pool.stats().workers} alive`);
    const after = await settledRss(1_000);
    return await idleFigure(before, after); // awaited here: the workers must outlive the measurement
  } finally {
    await pool.close();
  }
}

async function bareIdle(tree: TempRoot): Promise<IdleFigure> {
  const workers: Worker[] = [];
  try {
    const before = await settledRss(500);
    const indexes = Array.from({ length: WARM_KEYS }, (_, i) => i);
    await eachLimited(indexes, 4, async (i) => {
      const worker = new Worker(fixture('bare-idle.mjs'), {
        execArgv: [],
        env: {},
        workerData: { url: tree.url('mem', `warm${i}`) },
      });
      workers.push(worker);
      await new Promise((resolve, reject) => {
        worker.once('message', resolve);
        worker.once('error', reject);
      });
    });
    const after = await settledRss(1_000);
    return await idleFigure(before, after); // awaited here: the workers must outlive the measurement
  } finally {
    await Promise.all(workers.map((worker) => worker.terminate()));
  }
}

type Churn = {
  checkpoints: Checkpoint[];
  cyclesPerSecond: number;
  finalStats: Record<string, Json>;
};

async function churnRun(tree: TempRoot, context: BenchContext): Promise<Churn> {
  const pool = createPool({ root: tree.root, maxWorkers: CHURN_MAX_WORKERS, idleTimeoutMs: 0 });
  try {
    let next = 0;
    const run = await churnLoop(
      context,
      () => pool.stats().spawned,
      async () => {
        await pool.call(`mem/churn${next++ % CHURN_KEYS}`, 'add', [1, 2]);
      },
    );
    const { spawned, retired, died, workers, spares } = pool.stats();
    return { ...run, finalStats: { spawned, retired, died, workers, spares } };
  } finally {
    await pool.close();
  }
}

async function bareChurnRun(tree: TempRoot, context: BenchContext): Promise<Churn> {
  let cycles = 0;
  let next = 0;
  const run = await churnLoop(
    context,
    () => cycles,
    async () => {
      cycles += 1;
      const worker = new Worker(fixture('bare-cold.mjs'), {
        execArgv: [],
        env: {},
        resourceLimits: { maxOldGenerationSizeMb: 256 },
        workerData: { url: tree.url('mem', `churn${next++ % CHURN_KEYS}`) },
      });
      await new Promise((resolve, reject) => {
        worker.once('message', resolve);
        worker.once('error', reject);
        worker.postMessage({ a: 1, b: 2 });
      });
      await worker.terminate();
    },
  );
  return { ...run, finalStats: { cycles } };
}

/** Runs `cycle` on CHURN_LANES callers, pausing for an RSS reading every `step` cycles. */
async function churnLoop(
  context: BenchContext,
  cyclesNow: () => number,
  cycle: () => Promise<void>,
): Promise<Omit<Churn, 'finalStats'>> {
  const { totalCycles, referenceCycles: step } = cyclesOf(context.quick);
  const checkpoints: Checkpoint[] = [];
  let busyMs = 0;
  const start = performance.now();
  for (let target = step; target <= totalCycles; target += step) {
    const t0 = performance.now();
    const lane = async (): Promise<void> => {
      while (cyclesNow() < target) await cycle();
    };
    await Promise.all(Array.from({ length: CHURN_LANES }, lane));
    busyMs += performance.now() - t0;
    const rssBytes = await settledRss(200);
    const cycles = cyclesNow();
    checkpoints.push({
      cycles,
      rssMb: round(rssBytes / 2 ** 20),
      heapUsedMb: round(process.memoryUsage().heapUsed / 2 ** 20),
      threads: threadCount(),
      seconds: round((performance.now() - start) / 1000, 3),
    });
    context.progress(`${cycles} cycles, RSS ${num(rssBytes / 2 ** 20)} MB`);
  }
  return { checkpoints, cyclesPerSecond: round(((checkpoints.at(-1)?.cycles ?? 0) * 1000) / busyMs, 3) };
}

function threadCount(): number {
  const match = /^Threads:\s+(\d+)/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return match === null ? -1 : Number(match[1]);
}
