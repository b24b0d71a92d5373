// Cold start of a live key and of a snapshot key of the same agent file, against a bare worker
// importing that file, in one run and interleaved: the figures a change to how keys load
// (live keys run from artifacts) is held to.
import { Worker } from 'node:worker_threads';
import { createPool } from 'sandpool';
import { ms, ratio } from '../lib/format.js';
import { Latency, type LatencySummary, round } from '../lib/histogram.js';
import type { BenchContext, Benchmark, BenchReport } from '../lib/report.js';
import { fixture, makeRoot, type TempRoot } from '../lib/temp-root.js';
import { now, sleep } from '../lib/timing.js';

const SWARM = 'start';
const STEM = 'agent';
const SNAPSHOT = 'frozen';
const MODES = ['strict', 'none'] as const;
type Mode = (typeof MODES)[number];
const VARIANTS = ['bare', ...MODES.flatMap((mode) => [`live, ${mode}`, `snapshot, ${mode}`])] as const;
const GAP_MS = 100;

export const keyStart: Benchmark = {
  name: 'key-start',
  title: 'Cold start of a live key and a snapshot key, against a bare worker importing the same file',
  async run(context: BenchContext): Promise<BenchReport> {
    const starts = context.quick ? 12 : 30;
    const warm = 2;
    const tree = await makeRoot([{ swarm: SWARM, stem: STEM, fixture: 'agent.mjs' }]);
    const latencies = new Map<string, Latency>(VARIANTS.map((variant) => [variant, new Latency()]));
    let snapshotFiles = 0;
    try {
      const store = createPool({ root: tree.root, spareWorkers: 0 });
      try {
        snapshotFiles = (await store.snapshots.create(SWARM, SNAPSHOT)).files;
      } finally {
        await store.close();
      }
      const start = (variant: string): Promise<number> => {
        if (variant === 'bare') return bareStart(tree);
        const [kind, mode] = variant.split(', ') as ['live' | 'snapshot', Mode];
        return poolStart(tree.root, kind === 'live' ? `${SWARM}/${STEM}` : `${SWARM}@${SNAPSHOT}/${STEM}`, mode);
      };
      // Interleaved start by start: drift in the machine's load hits every variant alike.
      for (let i = 0; i < warm + starts; i += 1) {
        if (i === warm || (i > warm && (i - warm) % 10 === 0)) context.progress(`start ${i - warm + 1}/${starts}`);
        for (const variant of VARIANTS) {
          const elapsed = await start(variant);
          if (i >= warm) latencies.get(variant)?.recordMs(elapsed);
        }
      }
    } finally {
      await tree.cleanup();
    }
    const results = Object.fromEntries([...latencies].map(([name, latency]) => [name, latency.summaryMs()]));
    const get = (name: string): LatencySummary => results[name] as LatencySummary;
    const ratios: Record<string, number> = {};
    for (const mode of MODES) {
      ratios[`live${cap(mode)}P50OverBareP50`] = round(get(`live, ${mode}`).p50 / get('bare').p50, 3);
      ratios[`snapshot${cap(mode)}P50OverBareP50`] = round(get(`snapshot, ${mode}`).p50 / get('bare').p50, 3);
      ratios[`snapshot${cap(mode)}P50OverLiveP50`] = round(get(`snapshot, ${mode}`).p50 / get(`live, ${mode}`).p50, 3);
    }
    return {
      method: [
        `One agent file (fixtures/agent.mjs) as ${SWARM}/live/${STEM}.mjs, and a snapshot of it (${SWARM}@${SNAPSHOT}, ${snapshotFiles} file(s)), created once.`,
        `live and snapshot: a new pool (spareWorkers 0, so the worker boots for the key), left ${GAP_MS} ms at rest, then its first add(1, 2), timed from the call to its result (spawn, locate, verify or resolve, import, one round trip); the pool is closed after. Under permissions 'strict' (the default) and 'none'.`,
        `bare: new Worker(entry, { execArgv: [], env: {} }) importing the same live file and answering one postMessage, timed from the constructor to the answer; terminated after.`,
        `${starts} starts per variant after ${warm} unrecorded ones, the ${VARIANTS.length} variants interleaved start by start.`,
      ],
      parameters: { starts, warmStarts: warm, gapMs: GAP_MS, spareWorkers: 0, snapshotFiles },
      results,
      ratios,
      tables: [
        {
          title: 'First call of a fresh key',
          headers: ['variant', 'p50', 'p90', 'max', 'mean'],
          rows: VARIANTS.map((name) => {
            const s = get(name);
            return [name, ms(s.p50), ms(s.p90), ms(s.max), ms(s.mean)];
          }),
        },
        {
          title: 'Ratios, p50',
          headers: ['permissions', 'live / bare', 'snapshot / bare', 'snapshot / live'],
          rows: MODES.map((mode) => [
            mode,
            ratio(ratios[`live${cap(mode)}P50OverBareP50`] as number),
            ratio(ratios[`snapshot${cap(mode)}P50OverBareP50`] as number),
            ratio(ratios[`snapshot${cap(mode)}P50OverLiveP50`] as number),
          ]),
        },
      ],
      chart: {
        title: 'Cold start: live key, snapshot key, bare worker',
        panels: [
          {
            title: 'First-call latency of a fresh key',
            unit: 'ms',
            groups: VARIANTS.map((name) => ({
              label: name,
              bars: [
                { series: 'p50', value: get(name).p50 },
                { series: 'p90', value: get(name).p90 },
              ],
            })),
          },
        ],
      },
    };
  },
};

async function poolStart(root: string, key: string, permissions: Mode): Promise<number> {
  const pool = createPool({ root, spareWorkers: 0, idleTimeoutMs: 0, permissions });
  try {
    // The pool's start-up work (its sweep of the store) is not the key's cold start.
    await sleep(GAP_MS);
    const t0 = now();
    const sum = await pool.call<number>(key, 'add', [1, 2]);
    const elapsed = now() - t0;
    if (sum !== 3) throw new Error(`${key}: add(1, 2) gave ${sum}`);
    return elapsed;
  } finally {
    await pool.close();
  }
}

async function bareStart(tree: TempRoot): Promise<number> {
  await sleep(GAP_MS);
  const t0 = now();
  const worker = new Worker(fixture('bare-cold.mjs'), {
    execArgv: [],
    env: {},
    workerData: { url: tree.url(SWARM, STEM) },
  });
  try {
    const value = await new Promise<unknown>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
      worker.postMessage({ a: 1, b: 2 });
    });
    if (value !== 3) throw new Error(`bare: add(1, 2) gave ${String(value)}`);
    return now() - t0;
  } finally {
    await worker.terminate();
  }
}

function cap(mode: Mode): string {
  return `${mode[0]?.toUpperCase()}${mode.slice(1)}`;
}
