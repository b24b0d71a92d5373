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
    const variants = ['no-spare', 'spare', 'bare', 'strict', 'strict-spare', 'snapshot-no-spare', 'snapshot-spare'];
    const stemsOf = (v: string): string[] => Array.from({ length: keys + WARM_KEYS }, (_, i) => `${v}${i}`);
    const live = variants.slice(0, 5).flatMap(stemsOf);
    const frozen = variants.slice(5).flatMap(stemsOf);
    const tree = await makeRoot([
      ...live.map((stem) => ({ swarm: 'cold', stem, fixture: 'agent.mjs' })),
      ...frozen.map((stem) => ({ swarm: 'frozen', stem, fixture: 'agent.mjs' })),
    ]);
    const opened: Variant[] = [];
    const latencies = new Map<string, Latency>();
    const spawnReasons: Record<string, number> = {};
    const strictSpawnReasons: Record<string, number> = {};
    try {
      // A spare's flags are fixed at boot: under 'none' a blank spare serves any key; under
      // 'strict' (the default) a strict spare serves a key of the pool's own grant, live or
      // snapshot (both run from an artifact). Live keys under 'none' and 'strict', and snapshot
      // keys under 'strict', each with and without a spare.
      const max = keys + WARM_KEYS + 1;
      const noSpare = sandpool(tree, 'cold', 0, max, 'none');
      const spare = sandpool(tree, 'cold', 1, max, 'none');
      const strict = sandpool(tree, 'cold', 0, max, 'strict');
      const strictSpare = sandpool(tree, 'cold', 1, max, 'strict');
      await strict.pool.snapshots.create('frozen', SNAPSHOT);
      const snapshotNoSpare = sandpool(tree, `frozen@${SNAPSHOT}`, 0, max, 'strict');
      const snapshotSpare = sandpool(tree, `frozen@${SNAPSHOT}`, 1, max, 'strict');
      count(spare.pool, spawnReasons);
      count(strictSpare.pool, strictSpawnReasons);
      count(snapshotSpare.pool, strictSpawnReasons);
      opened.push(
        noSpare.variant,
        spare.variant,
        bareWorker(tree),
        strict.variant,
        strictSpare.variant,
        snapshotNoSpare.variant,
        snapshotSpare.variant,
      );
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
    const [noSpareName, spareName, bareName, strictName, strictSpareName, snapshotNoSpareName, snapshotSpareName] =
      names as [string, string, string, string, string, string, string];
    const get = (name: string): LatencySummary => summaries.get(name) as LatencySummary;
    const ratios = {
      spareP50OverNoSpareP50: round(get(spareName).p50 / get(noSpareName).p50, 3),
      spareP99OverNoSpareP99: round(get(spareName).p99 / get(noSpareName).p99, 3),
      noSpareP50OverBareP50: round(get(noSpareName).p50 / get(bareName).p50, 3),
      spareP50OverBareP50: round(get(spareName).p50 / get(bareName).p50, 3),
      strictSpareP50OverStrictNoSpareP50: round(get(strictSpareName).p50 / get(strictName).p50, 3),
      strictSpareP99OverStrictNoSpareP99: round(get(strictSpareName).p99 / get(strictName).p99, 3),
      snapshotSpareP50OverSnapshotNoSpareP50: round(get(snapshotSpareName).p50 / get(snapshotNoSpareName).p50, 3),
      strictSpareP50OverSpareP50: round(get(strictSpareName).p50 / get(spareName).p50, 3),
      snapshotNoSpareP50OverStrictLiveP50: round(get(snapshotNoSpareName).p50 / get(strictName).p50, 3),
    };
    return {
      method: [
        `${keys} keys per variant, each a distinct module file never loaded before, called one after another (after ${WARM_KEYS} unrecorded warm-up keys); variants interleaved key by key.`,
        'Time: from pool.call(key, "add", [1, 2]) to its result (the file lookup, worker start, module import and one round trip).',
        `Before each key the variant is left at rest for ${gapMs} ms (a blank worker boots in about 30 ms here), and the spare variant first waits for stats().spares === 1, so a spare is booted when the key arrives.`,
        'bare: new Worker(entry, { execArgv: [], env: {} }) that imports the module, then one postMessage round trip; terminated afterwards.',
        'sandpool pools: maxWorkers above the key count (no eviction), idleTimeoutMs 0. Live keys (cold/<stem>, run from the artifact built of live/, which the warm-up keys build) under permissions none and strict, and snapshot keys (frozen@s/<stem>, one snapshot of their swarm made before the run) under strict, each without and with a spare; a strict pool keeps its strict spare from its first key on (a warm-up key).',
        'Goal (issue 26): a strict key with a spare ≤ 0.15× one without (p50).',
      ],
      parameters: { keys, warmKeys: WARM_KEYS, gapMs },
      results: {
        ...Object.fromEntries(summaries),
        spareSpawnReasons: spawnReasons,
        strictSpareSpawnReasons: strictSpawnReasons,
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
          note: `spawns of the spare variants (warm-up keys included): none ${reasons(spawnReasons)}; strict ${reasons(strictSpawnReasons)}.`,
        },
        {
          title: 'Ratios',
          headers: ['comparison', 'ratio'],
          rows: [
            ['spare p50 / no-spare p50', ratio(ratios.spareP50OverNoSpareP50)],
            ['spare p99 / no-spare p99', ratio(ratios.spareP99OverNoSpareP99)],
            ['no-spare p50 / bare p50', ratio(ratios.noSpareP50OverBareP50)],
            ['spare p50 / bare p50', ratio(ratios.spareP50OverBareP50)],
            ['strict, live: spare p50 / no-spare p50 (goal ≤ 0.15)', ratio(ratios.strictSpareP50OverStrictNoSpareP50)],
            ['strict, live: spare p99 / no-spare p99', ratio(ratios.strictSpareP99OverStrictNoSpareP99)],
            ['strict, snapshot: spare p50 / no-spare p50', ratio(ratios.snapshotSpareP50OverSnapshotNoSpareP50)],
            ['strict spare p50 / none spare p50 (live)', ratio(ratios.strictSpareP50OverSpareP50)],
            ['strict: snapshot no-spare p50 / live no-spare p50', ratio(ratios.snapshotNoSpareP50OverStrictLiveP50)],
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

const SNAPSHOT = 's';

function sandpool(
  tree: TempRoot,
  swarm: string,
  spareWorkers: number,
  maxWorkers: number,
  permissions: 'none' | 'strict',
): { pool: Pool; variant: Variant } {
  const pool = createPool({ root: tree.root, maxWorkers, spareWorkers, idleTimeoutMs: 0, permissions });
  const keys = swarm.includes('@') ? 'snapshot keys' : 'live keys';
  const name = `sandpool, ${keys}, spareWorkers ${spareWorkers}, permissions ${permissions}`;
  const keptFrom = permissions === 'strict' ? 'first-key' : 'start';
  return { pool, variant: poolVariant(name, pool, swarm, spareWorkers, keptFrom) };
}

function count(pool: Pool, reasons: Record<string, number>): void {
  pool.on('spawn', ({ reason }) => {
    reasons[reason] = (reasons[reason] ?? 0) + 1;
  });
}

function reasons(counts: Record<string, number>): string {
  return Object.entries(counts)
    .map(([reason, n]) => `${n} ${reason}`)
    .join(', ');
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
