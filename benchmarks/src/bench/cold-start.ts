import { Worker } from 'node:worker_threads';
import { createPool, type Pool } from 'sandpool';
import { poolVariant, type ColdVariant as Variant } from '../lib/cold-variant.js';
import { ms, ratio } from '../lib/format.js';
import { Latency, type LatencySummary, round } from '../lib/histogram.js';
import type { BenchContext, Benchmark, BenchReport } from '../lib/report.js';
import { fixture, makeRoot, type TempRoot } from '../lib/temp-root.js';
import { now, sleep } from '../lib/timing.js';

const WARM_KEYS = 3;

export const coldStart: Benchmark = {
  name: 'cold-start',
  title: 'Cold start: the first call to a key not yet loaded',
  async run(context: BenchContext): Promise<BenchReport> {
    const keys = context.quick ? 20 : 40;
    const gapMs = context.quick ? 150 : 200;
    const variants = ['no-spare', 'spare', 'bare', 'strict'];
    const stems = variants.flatMap((v) => Array.from({ length: keys + WARM_KEYS }, (_, i) => `${v}${i}`));
    const tree = await makeRoot(stems.map((stem) => ({ swarm: 'cold', stem, fixture: 'agent.mjs' })));
    const opened: Variant[] = [];
    const latencies = new Map<string, Latency>();
    const spawnReasons: Record<string, number> = {};
    try {
      // A spare boots before its key is known, so only keys without per-key permission flags
      // can take one: the spare comparison runs with permissions 'none', and 'strict' (the
      // default, which never uses a spare) is measured beside them.
      const noSpare = sandpool(tree, 0, keys + WARM_KEYS + 1, 'none');
      const spare = sandpool(tree, 1, keys + WARM_KEYS + 1, 'none');
      const strict = sandpool(tree, 0, keys + WARM_KEYS + 1, 'strict');
      spare.pool.on('spawn', ({ reason }) => {
        spawnReasons[reason] = (spawnReasons[reason] ?? 0) + 1;
      });
      opened.push(noSpare.variant, spare.variant, bareWorker(tree), strict.variant);
      for (const variant of opened) latencies.set(variant.name, new Latency());
      // Interleaved, key by key: drift in the machine over the run hits every variant alike.
      for (let i = 0; i < keys + WARM_KEYS; i += 1) {
        if (i === WARM_KEYS || (i > WARM_KEYS && (i - WARM_KEYS) % 10 === 0)) {
          context.progress(`key ${i - WARM_KEYS + 1}/${keys}`);
        }
        for (const [index, variant] of opened.entries()) {
          await variant.settle();
          await sleep(gapMs);
          const elapsed = await variant.firstCall(`${variants[index]}${i}`);
          if (i >= WARM_KEYS) latencies.get(variant.name)?.recordMs(elapsed);
        }
      }
    } finally {
      for (const variant of opened) await variant.close();
      await tree.cleanup();
    }
    const summaries = new Map([...latencies].map(([name, latency]) => [name, latency.summaryMs()]));
    const names = [...summaries.keys()];
    const [noSpareName, spareName, bareName] = names as [string, string, string];
    const get = (name: string): LatencySummary => summaries.get(name) as LatencySummary;
    const ratios = {
      spareP50OverNoSpareP50: round(get(spareName).p50 / get(noSpareName).p50, 3),
      spareP99OverNoSpareP99: round(get(spareName).p99 / get(noSpareName).p99, 3),
      noSpareP50OverBareP50: round(get(noSpareName).p50 / get(bareName).p50, 3),
      spareP50OverBareP50: round(get(spareName).p50 / get(bareName).p50, 3),
    };
    return {
      method: [
        `${keys} keys per variant, each a distinct module file never loaded before, called one after another (after ${WARM_KEYS} unrecorded warm-up keys); variants interleaved key by key.`,
        'Time: from pool.call(key, "add", [1, 2]) to its result (the file lookup, worker start, module import and one round trip).',
        `Before each key the variant is left at rest for ${gapMs} ms (a blank worker boots in about 30 ms here), and the spare variant first waits for stats().spares === 1, so a spare is booted when the key arrives.`,
        'bare: new Worker(entry, { execArgv: [], env: {} }) that imports the module, then one postMessage round trip; terminated afterwards.',
        'sandpool pools: maxWorkers above the key count (no eviction), idleTimeoutMs 0.',
      ],
      parameters: { keys, warmKeys: WARM_KEYS, gapMs },
      results: {
        ...Object.fromEntries(summaries),
        spareSpawnReasons: spawnReasons,
      },
      ratios,
      tables: [
        {
          title: 'First call to a new key',
          headers: ['variant', 'p50', 'p90', 'p99', 'max', 'mean'],
          rows: names.map((name) => {
            const s = get(name);
            return [name, ms(s.p50), ms(s.p90), ms(s.p99), ms(s.max), ms(s.mean)];
          }),
          note: `spare variant spawns: ${Object.entries(spawnReasons)
            .map(([reason, count]) => `${count} ${reason}`)
            .join(', ')} (warm-up keys included).`,
        },
        {
          title: 'Ratios',
          headers: ['comparison', 'ratio'],
          rows: [
            ['spare p50 / no-spare p50', ratio(ratios.spareP50OverNoSpareP50)],
            ['spare p99 / no-spare p99', ratio(ratios.spareP99OverNoSpareP99)],
            ['no-spare p50 / bare p50', ratio(ratios.noSpareP50OverBareP50)],
            ['spare p50 / bare p50', ratio(ratios.spareP50OverBareP50)],
          ],
        },
      ],
      chart: {
        title: 'Cold start: first call to a key not yet loaded',
        panels: [
          {
            title: 'First-call latency',
            unit: 'ms',
            groups: names.map((name) => ({
              label: name,
              bars: [
                { series: 'p50', value: get(name).p50 },
                { series: 'p99', value: get(name).p99 },
              ],
            })),
          },
        ],
      },
    };
  },
};

function sandpool(
  tree: TempRoot,
  spareWorkers: number,
  maxWorkers: number,
  permissions: 'none' | 'strict',
): { pool: Pool; variant: Variant } {
  const pool = createPool({ root: tree.root, maxWorkers, spareWorkers, idleTimeoutMs: 0, permissions });
  const name = `sandpool, spareWorkers ${spareWorkers}, permissions ${permissions}`;
  return { pool, variant: poolVariant(name, pool, 'cold', spareWorkers) };
}

function bareWorker(tree: TempRoot): Variant {
  return {
    name: 'bare Worker + import',
    firstCall: async (stem) => {
      const t0 = now();
      const worker = new Worker(fixture('bare-cold.mjs'), {
        execArgv: [],
        env: {},
        workerData: { url: tree.url('cold', stem) },
      });
      const value = await new Promise<unknown>((resolve, reject) => {
        worker.once('message', resolve);
        worker.once('error', reject);
        worker.postMessage({ a: 1, b: 2 });
      });
      const elapsed = now() - t0;
      await worker.terminate();
      if (value !== 3) throw new Error(`bare ${stem}: add(1, 2) gave ${String(value)}`);
      return elapsed;
    },
    settle: async () => {},
    close: async () => {},
  };
}
