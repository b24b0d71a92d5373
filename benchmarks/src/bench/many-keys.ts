import { availableParallelism } from 'node:os';
import { Piscina } from 'piscina';
import { createPool, type PoolOptions } from 'sandpool';
import { ms, percent, perSecond } from '../lib/format.js';
import { Latency, type LatencySummary, round } from '../lib/histogram.js';
import type { BenchContext, Benchmark, BenchReport } from '../lib/report.js';
import { fixture, makeRoot } from '../lib/temp-root.js';
import { now, processCpuMs } from '../lib/timing.js';

const KEYS = 1_000;
const ZIPF_S = 1.1;
const MAX_WORKERS = 100;
/** The memory budget run: a cap on heap and external memory instead of a worker count. */
const BUDGET_MB = 2048;
const IN_FLIGHT = 64;
const SEED = 0x5eed;
const MAX_WARM_MS = 30_000;
/** Draws of the offline hit-ratio computation. */
const TRACE = 200_000;
/** The most strict spares of the larger spare run. */
const MANY_SPARES = 8;

interface Target {
  name: string;
  /** Resolves to whether the call found its module already loaded (null: the system cannot tell). */
  call(rank: number): Promise<boolean | null>;
  /** Cold loads since the last reset, where the system counts them itself. */
  coldLoads(): number | null;
  resetCounters(): void;
  /** Past the start-up fill: for sandpool, every slot taken and evictions begun. */
  steady(): boolean;
  details(): Record<string, number>;
  /** Workers alive now (null where the system has a fixed pool). */
  workers(): number | null;
  close(): Promise<void>;
}

type Run = {
  callsPerSecond: number;
  hitRatio: number;
  latency: LatencySummary;
  calls: number;
  errors: number;
  details: Record<string, number>;
  /** At the end of the window: the benchmark process's RSS (every thread's), and workers alive. */
  rssMb: number;
  workers: number | null;
  /**
   * The process's CPU over the window (every thread's), in cores, and per miss: on a machine
   * shared with other work, what a system got of the CPU, and what each miss cost of it.
   */
  cpuCores: number;
  cpuMsPerMiss: number | null;
  /** Calls per second of the process's CPU: throughput as far as the CPU it got allows, whatever else ran. */
  callsPerCpuSecond: number;
};

export const manyKeys: Benchmark = {
  name: 'many-keys',
  title: `Many keys: ${KEYS.toLocaleString('en-US')} keys, zipf(${ZIPF_S}) popularity`,
  async run(context: BenchContext): Promise<BenchReport> {
    const warmMs = context.quick ? 2_000 : 5_000;
    const measureMs = context.quick ? 5_000 : 20_000;
    const cores = availableParallelism();
    const stems = Array.from({ length: KEYS }, (_, i) => `k${String(i).padStart(4, '0')}`);
    const cdf = zipfCdf(KEYS, ZIPF_S);
    const topShare = cdf[MAX_WORKERS - 1] as number;
    const tree = await makeRoot(stems.map((stem) => ({ swarm: 'many', stem, fixture: 'agent.mjs' })));
    const runs: Record<string, Run> = {};
    /** Per system, every key it was asked for (warm-up, then measured), and where measuring began. */
    const sequences: Record<string, { keys: number[]; measuredFrom: number }> = {};
    const warmedMs: Record<string, number> = {};
    try {
      const makers: Array<() => Target> = [
        () => sandpoolTarget(tree.root, stems, { eviction: 'lru', spareWorkers: 0 }),
        () => sandpoolTarget(tree.root, stems, { eviction: 'tinylfu', spareWorkers: 0 }),
        () => sandpoolTarget(tree.root, stems, { eviction: 'tinylfu', budgetMb: BUDGET_MB, spareWorkers: 0 }),
        () => sandpoolTarget(tree.root, stems, { eviction: 'lru', spareWorkers: 1 }),
        () => sandpoolTarget(tree.root, stems, { eviction: 'lru', spareWorkers: MANY_SPARES }),
        () => {
          const piscina = new Piscina<{ url: string; fn: string; args: number[] }, { value: number; cold: boolean }>({
            filename: fixture('piscina-dispatch.mjs').href,
            minThreads: cores,
            maxThreads: cores,
            idleTimeout: 60_000,
          });
          const urls = stems.map((stem) => tree.url('many', stem));
          let cold = 0;
          return {
            name: `piscina (shared, ${cores} threads)`,
            call: async (rank) => {
              const result = await piscina.run({ url: urls[rank] as string, fn: 'add', args: [1, 2] });
              if (result.cold) cold += 1;
              return !result.cold;
            },
            coldLoads: () => cold,
            steady: () => true,
            resetCounters: () => {
              cold = 0;
            },
            details: () => ({ moduleImports: cold }),
            workers: () => null,
            close: () => piscina.close(),
          };
        },
      ];
      for (const make of makers) {
        const target = make();
        try {
          const keys: number[] = [];
          const warmRandom = mulberry32(SEED + 1);
          const warmSample = (): number => keys[keys.push(pick(cdf, warmRandom())) - 1] as number;
          context.progress(`${target.name}: warm-up ${warmMs / 1000} s`);
          const warmStart = now();
          await load(target, warmSample, warmMs);
          // Measure the steady state, not the fill of an empty pool: warm up until it evicts.
          while (!target.steady() && now() - warmStart < MAX_WARM_MS) await load(target, warmSample, 1_000);
          warmedMs[target.name] = round(now() - warmStart, 3);
          target.resetCounters();
          context.progress(`${target.name}: measuring ${measureMs / 1000} s`);
          const random = mulberry32(SEED);
          sequences[target.name] = { keys, measuredFrom: keys.length };
          runs[target.name] = await load(target, () => keys[keys.push(pick(cdf, random())) - 1] as number, measureMs);
        } finally {
          await target.close();
        }
      }
    } finally {
      await tree.cleanup();
    }
    const names = Object.keys(runs);
    const get = (name: string): Run => runs[name] as Run;
    const [lruName, tinyName, budgetName, spareName, sparesName, piscinaName] = names as [
      string,
      string,
      string,
      string,
      string,
      string,
    ];
    context.progress(
      `offline hit ratios over the first ${TRACE.toLocaleString('en-US')} draws of the measured sequence`,
    );
    const trace = Array.from(
      { length: TRACE },
      (
        (random) => () =>
          pick(cdf, random())
      )(mulberry32(SEED)),
    );
    const steady = { lru: round(lruHits(trace, MAX_WORKERS, 0)), belady: round(beladyHits(trace, MAX_WORKERS, 0)) };
    // The pools' own sequences are short (a miss costs a thread start): their cache never
    // reaches the steady state, so they are held to the optimum of the sequence they served.
    const served = sequences[lruName] as { keys: number[]; measuredFrom: number };
    const offline = {
      lru: round(lruHits(served.keys, MAX_WORKERS, served.measuredFrom)),
      belady: round(beladyHits(served.keys, MAX_WORKERS, served.measuredFrom)),
    };
    const ratios = {
      tinylfuOverLruThroughput: round(get(tinyName).callsPerSecond / get(lruName).callsPerSecond, 3),
      tinylfuOverLruP99: round(get(tinyName).latency.p99 / get(lruName).latency.p99, 3),
      tinylfuHitPointsBelowBelady: round((offline.belady - get(tinyName).hitRatio) * 100, 3),
      lruHitPointsBelowBelady: round((offline.belady - get(lruName).hitRatio) * 100, 3),
      budgetOverLruThroughput: round(get(budgetName).callsPerSecond / get(lruName).callsPerSecond, 3),
      oneSpareOverLruThroughput: round(get(spareName).callsPerSecond / get(lruName).callsPerSecond, 3),
      sparesOverLruThroughput: round(get(sparesName).callsPerSecond / get(lruName).callsPerSecond, 3),
      sparesOverLruP50: round(get(sparesName).latency.p50 / get(lruName).latency.p50, 3),
      oneSpareOverLruPerCpu: round(get(spareName).callsPerCpuSecond / get(lruName).callsPerCpuSecond, 3),
      sparesOverLruPerCpu: round(get(sparesName).callsPerCpuSecond / get(lruName).callsPerCpuSecond, 3),
      sandpoolOverPiscinaThroughput: round(get(tinyName).callsPerSecond / get(piscinaName).callsPerSecond, 3),
    };
    return {
      method: [
        `${KEYS} keys, each its own module file; key ranks drawn from zipf(s = ${ZIPF_S}) with a seeded PRNG (the same sequence for both systems).`,
        `${IN_FLIGHT} callers in a closed loop (each awaits its call, then draws the next key): ${IN_FLIGHT} calls in flight.`,
        `sandpool: maxWorkers ${MAX_WORKERS}, spareWorkers 0, idleTimeoutMs 0, once with eviction 'lru' and once with 'tinylfu'; then 'tinylfu' with maxMemoryMb ${BUDGET_MB} and maxWorkers ${KEYS} (the budget, not the count, decides). A miss is a spawn (stats/events): hit ratio = 1 - spawns / calls in the window. RSS is the benchmark process's (all its threads) at the end of each window, after the previous system was closed.`,
        `The keys are live (many/<stem>), each run from the artifact built of live/ (the first warm-up builds it), under the default permissions 'strict'. Then 'lru' again with spareWorkers 1 and ${MANY_SPARES}: strict spares. Goal (issue 26): with spares ≥ 1.5× the calls/s of 'lru' without.`,
        `Offline, one request at a time, with ${MAX_WORKERS} slots: the hit ratio of an LRU cache and of Belady's optimum (evict the key asked for again furthest in the future), over the sequence the LRU pool served (warm-up and window; hits counted in the window), and at steady state (the first ${TRACE.toLocaleString('en-US')} draws of the measured sequence). The pools run ${IN_FLIGHT} calls at once and cannot evict a busy worker, so their ratios sit below the offline ones.`,
        `piscina: one shared pool of ${cores} threads (cores); the task imports the key's module once per thread and calls it; a miss is a call whose thread had to import the module first.`,
        `Warm-up ${warmMs / 1000} s, longer if sandpool has not filled its ${MAX_WORKERS} slots and started evicting by then (at most ${MAX_WARM_MS / 1000} s; not counted), then ${measureMs / 1000} s measured. Latency from call to result.`,
        `For scale: the ${MAX_WORKERS} most popular keys draw ${percent(topShare)} of the calls, the best hit ratio a ${MAX_WORKERS}-worker cache could keep.`,
      ],
      parameters: {
        keys: KEYS,
        zipfS: ZIPF_S,
        maxWorkers: MAX_WORKERS,
        inFlight: IN_FLIGHT,
        warmMs,
        measureMs,
        piscinaThreads: cores,
        topKeysShare: round(topShare),
      },
      results: {
        ...Object.fromEntries(names.map((name) => [name, { ...get(name), warmUpMs: warmedMs[name] ?? null }])),
        offlineHitRatio: { servedSequence: offline, steadyState: steady },
      },
      ratios,
      tables: [
        {
          title: `${KEYS.toLocaleString('en-US')} keys, zipf(${ZIPF_S}), ${IN_FLIGHT} in flight`,
          headers: [
            'system',
            'calls/s',
            'hit ratio',
            'p50',
            'p99',
            'p99.9',
            'workers',
            'RSS',
            'CPU',
            'CPU/miss',
            'calls/CPU-s',
            'misses',
          ],
          rows: names.map((name) => {
            const r = get(name);
            const misses = Object.entries(r.details)
              .map(([label, value]) => `${value} ${label}`)
              .join(', ');
            return [
              name,
              perSecond(r.callsPerSecond),
              percent(r.hitRatio),
              ms(r.latency.p50),
              ms(r.latency.p99),
              ms(r.latency.p999),
              r.workers === null ? '-' : String(r.workers),
              `${r.rssMb} MB`,
              `${r.cpuCores} cores`,
              r.cpuMsPerMiss === null ? '-' : ms(r.cpuMsPerMiss),
              String(r.callsPerCpuSecond),
              misses,
            ];
          }),
          note: `The ${MAX_WORKERS} most popular keys draw ${percent(topShare)} of the calls. Offline over the sequence served: LRU ${percent(offline.lru)}, Belady ${percent(offline.belady)} (at steady state: ${percent(steady.lru)}, ${percent(steady.belady)}). tinylfu / lru: throughput ${ratios.tinylfuOverLruThroughput}×, p99 ${ratios.tinylfuOverLruP99}×; hit ratio ${ratios.tinylfuHitPointsBelowBelady} points below Belady's (lru: ${ratios.lruHitPointsBelowBelady}). The ${BUDGET_MB} MB budget / lru at ${MAX_WORKERS} workers: throughput ${ratios.budgetOverLruThroughput}×. lru with strict spares / without: throughput ${ratios.oneSpareOverLruThroughput}× with spareWorkers 1, ${ratios.sparesOverLruThroughput}× with ${MANY_SPARES} (goal ≥ 1.5×), p50 ${ratios.sparesOverLruP50}×; calls per CPU-second ${ratios.oneSpareOverLruPerCpu}× and ${ratios.sparesOverLruPerCpu}× (what the CPU each run got cannot sway).`,
        },
      ],
      chart: {
        title: `Many keys: ${KEYS} keys, zipf(${ZIPF_S}), maxWorkers ${MAX_WORKERS}`,
        panels: [
          {
            title: 'Throughput',
            unit: 'calls/s',
            log: true,
            groups: names.map((name) => ({
              label: name,
              bars: [{ series: 'calls/s', value: get(name).callsPerSecond }],
            })),
          },
          {
            title: 'Hit ratio',
            unit: '%',
            groups: names.map((name) => ({
              label: name,
              bars: [{ series: 'hit ratio', value: get(name).hitRatio * 100 }],
            })),
          },
          {
            title: 'Latency',
            unit: 'ms',
            log: true,
            groups: names.map((name) => ({
              label: name,
              bars: [
                { series: 'p50', value: get(name).latency.p50 },
                { series: 'p99', value: get(name).latency.p99 },
              ],
            })),
          },
        ],
      },
    };
  },
};

interface SandpoolRun {
  eviction: NonNullable<PoolOptions['eviction']>;
  budgetMb?: number;
  spareWorkers: number;
}

function sandpoolTarget(root: string, stems: readonly string[], run: SandpoolRun): Target {
  const { eviction, budgetMb, spareWorkers } = run;
  const limits = budgetMb === undefined ? { maxWorkers: MAX_WORKERS } : { maxWorkers: KEYS, maxMemoryMb: budgetMb };
  const pool = createPool({ root, ...limits, spareWorkers, idleTimeoutMs: 0, eviction });
  const counts = { cold: 0, spare: 0, evicted: 0 };
  pool.on('spawn', ({ reason }) => {
    counts[reason] += 1;
  });
  pool.on('evict', () => {
    counts.evicted += 1;
  });
  const name = [
    `sandpool, ${eviction}`,
    ...(budgetMb === undefined ? [] : [`maxMemoryMb ${budgetMb}`]),
    ...(spareWorkers === 0 ? [] : [`spareWorkers ${spareWorkers}`]),
  ].join(', ');
  return {
    name,
    call: async (rank) => {
      await pool.call(`many/${stems[rank]}`, 'add', [1, 2]);
      return null;
    },
    coldLoads: () => counts.cold + counts.spare,
    steady: () => pool.stats().retired.lru > 0,
    resetCounters: () => {
      counts.cold = 0;
      counts.spare = 0;
      counts.evicted = 0;
    },
    details: () => ({ spawnsCold: counts.cold, spawnsFromSpare: counts.spare, evictions: counts.evicted }),
    workers: () => pool.stats().workers,
    close: () => pool.close(),
  };
}

/** Hit ratio of an LRU cache of `slots` over `trace`, one request at a time, counted from `from`. */
function lruHits(trace: readonly number[], slots: number, from: number): number {
  const resident = new Map<number, true>();
  let hits = 0;
  for (const [i, key] of trace.entries()) {
    if (resident.delete(key)) hits += i >= from ? 1 : 0;
    else if (resident.size >= slots) resident.delete(resident.keys().next().value as number);
    resident.set(key, true);
  }
  return hits / Math.max(1, trace.length - from);
}

/** Belady's optimum: on a miss with every slot taken, evict the key asked for again furthest ahead. */
function beladyHits(trace: readonly number[], slots: number, from: number): number {
  const nextUse = new Array<number>(trace.length);
  const seen = new Map<number, number>();
  for (let i = trace.length - 1; i >= 0; i--) {
    const key = trace[i] as number;
    nextUse[i] = seen.get(key) ?? Number.POSITIVE_INFINITY;
    seen.set(key, i);
  }
  const resident = new Map<number, number>(); // key → its next use
  let hits = 0;
  for (let i = 0; i < trace.length; i++) {
    const key = trace[i] as number;
    if (resident.has(key)) hits += i >= from ? 1 : 0;
    else if (resident.size >= slots) {
      let furthest = -1;
      let victim = -1;
      for (const [candidate, next] of resident) {
        if (next > furthest) {
          furthest = next;
          victim = candidate;
        }
      }
      resident.delete(victim);
    }
    resident.set(key, nextUse[i] as number);
  }
  return hits / Math.max(1, trace.length - from);
}

async function load(target: Target, sample: () => number, durationMs: number): Promise<Run> {
  const latency = new Latency();
  const cpuStart = processCpuMs();
  const start = now();
  const end = start + durationMs;
  let calls = 0;
  let errors = 0;
  const lane = async (): Promise<void> => {
    while (now() < end) {
      const rank = sample();
      const t0 = now();
      try {
        await target.call(rank);
        const t1 = now();
        latency.recordMs(t1 - t0);
        if (t1 <= end) calls += 1;
      } catch {
        errors += 1;
      }
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, lane));
  const cpuMs = processCpuMs() - cpuStart;
  const misses = target.coldLoads() ?? 0;
  return {
    callsPerSecond: round((calls * 1000) / durationMs),
    hitRatio: round(Math.max(0, 1 - misses / Math.max(1, calls))),
    latency: latency.summaryMs(),
    calls,
    errors,
    details: target.details(),
    rssMb: Math.round(process.memoryUsage().rss / 2 ** 20),
    workers: target.workers(),
    cpuCores: round(cpuMs / (now() - start), 3),
    cpuMsPerMiss: misses === 0 ? null : round(cpuMs / misses),
    callsPerCpuSecond: round((calls * 1000) / cpuMs),
  };
}

/** Cumulative probabilities of ranks 0..n-1 under zipf(s). */
function zipfCdf(n: number, s: number): number[] {
  const weights = Array.from({ length: n }, (_, k) => 1 / (k + 1) ** s);
  const total = weights.reduce((sum, w) => sum + w, 0);
  let running = 0;
  return weights.map((w) => {
    running += w / total;
    return running;
  });
}

function pick(cdf: readonly number[], u: number): number {
  let low = 0;
  let high = cdf.length - 1;
  while (low < high) {
    const middle = (low + high) >> 1;
    if ((cdf[middle] as number) < u) low = middle + 1;
    else high = middle;
  }
  return low;
}

/** A small seeded PRNG: both systems see the same key sequence. */
function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
