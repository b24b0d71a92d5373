import { mkdir, writeFile } from 'node:fs/promises';
import * as nodeModule from 'node:module';
import { join } from 'node:path';
import { createPool } from 'sandpool';
import { abRatios } from '../lib/ab-ratios.js';
import { depStemSource, writeDepTree } from '../lib/dep-tree.js';
import { mb, ms } from '../lib/format.js';
import { Latency, type LatencySummary, round } from '../lib/histogram.js';
import type { BenchContext, Benchmark, BenchReport } from '../lib/report.js';
import { makeRoot } from '../lib/temp-root.js';
import { now, sleep } from '../lib/timing.js';

const SWARM = 'deps';
const STEM = 'agent';
const SNAPSHOT = 'frozen';
const PACKAGES = 30;
const MODULES_PER_PACKAGE = 50;
const TARGET = 1.2;
const MODES = ['strict', 'none'] as const;
type Mode = (typeof MODES)[number];

/** First call of a key in a pool that has never run it: spawn, verify or resolve, import, one call. */
async function coldCall(root: string, key: string, permissions: Mode, expected: number): Promise<number> {
  const pool = createPool({ root, spareWorkers: 0, idleTimeoutMs: 0, permissions });
  try {
    const t0 = now();
    const sum = await pool.call<number>(key, 'add', [1, 2]);
    const elapsed = now() - t0;
    if (sum !== 3) throw new Error(`${key}: add(1, 2) gave ${sum}`);
    const check = await pool.call<number>(key, 'check');
    if (check !== expected) throw new Error(`${key}: check() gave ${check}, not ${expected}: a module did not run`);
    return elapsed;
  } finally {
    await pool.close();
  }
}

export const snapshotStart: Benchmark = {
  name: 'snapshot-start',
  title: `Snapshot cold start: a stem importing ${(PACKAGES * MODULES_PER_PACKAGE).toLocaleString('en-US')} dependency files`,
  async run(context: BenchContext): Promise<BenchReport> {
    const starts = context.quick ? 6 : 15;
    const warm = 2;
    const gapMs = 100;
    const tree = await makeRoot([]);
    const summaries: Record<string, Record<string, LatencySummary>> = {};
    let deps: Awaited<ReturnType<typeof writeDepTree>>;
    let snapshot: { files: number; bytes: number; createMs: number };
    try {
      const live = join(tree.root, SWARM, 'live');
      await mkdir(live, { recursive: true });
      deps = await writeDepTree(tree.root, PACKAGES, MODULES_PER_PACKAGE);
      const expected = deps.expected;
      await writeFile(join(live, `${STEM}.mjs`), depStemSource(deps));
      context.progress(
        `${deps.files} dependency files (${mb(deps.bytes)}) in ${PACKAGES} packages; creating the snapshot`,
      );
      const store = createPool({ root: tree.root, spareWorkers: 0 });
      try {
        const t0 = now();
        const info = await store.snapshots.create(SWARM, SNAPSHOT);
        snapshot = { files: info.files, bytes: info.bytes, createMs: round(now() - t0) };
      } finally {
        await store.close();
      }
      const keys = { live: `${SWARM}/${STEM}`, snapshot: `${SWARM}@${SNAPSHOT}/${STEM}` };
      for (const mode of MODES) {
        const latencies = { live: new Latency(), snapshot: new Latency() };
        // Interleaved start by start: drift in the machine's load hits both alike.
        for (let i = 0; i < warm + starts; i += 1) {
          if (i === warm) context.progress(`permissions ${mode}: ${starts} cold starts each`);
          for (const variant of ['live', 'snapshot'] as const) {
            await sleep(gapMs);
            const elapsed = await coldCall(tree.root, keys[variant], mode, expected);
            if (i >= warm) latencies[variant].recordMs(elapsed);
          }
        }
        summaries[mode] = { live: latencies.live.summaryMs(), snapshot: latencies.snapshot.summaryMs() };
      }
    } finally {
      await tree.cleanup();
    }
    const { ratios, table, groups } = abRatios(MODES, summaries, 'snapshot', 'live', TARGET);
    const compileCache = typeof (nodeModule as { enableCompileCache?: unknown }).enableCompileCache === 'function';
    return {
      method: [
        `A swarm whose stem (live/${STEM}.mjs) imports ${PACKAGES} packages from <root>/node_modules, ${MODULES_PER_PACKAGE} files each (an index and the modules it imports; half ES modules, half CommonJS): ${deps.files} JavaScript files, ${mb(deps.bytes)}. The stem runs every module once at import; a check() after the timed call asserts it.`,
        `live: the key ${SWARM}/${STEM}, whose worker resolves, reads and compiles every file. snapshot: ${SWARM}@${SNAPSHOT}/${STEM}, created once (bundled: ${snapshot.files} file(s), ${mb(snapshot.bytes)}, in ${num0(snapshot.createMs)} ms), whose worker verifies the one bundle against the manifest and imports those bytes.`,
        `Each cold start is a new pool (spareWorkers 0, so the worker boots for the key) and its first call, add(1, 2): spawn, locate, verify or resolve, import and one round trip; the pool is closed after. ${starts} starts per variant after ${warm} unrecorded ones, live and snapshot interleaved, ${gapMs} ms apart, once with permissions 'strict' (the default) and once with 'none'.`,
        compileCache
          ? `This Node has module.enableCompileCache: snapshot workers use a compile cache, populated by the first start (see the compile-cache benchmark for its effect).`
          : `This Node has no module.enableCompileCache: snapshot workers compile the bundle from source every time, as live workers do their files.`,
        `Target: snapshot p50 <= ${TARGET}× live p50.`,
      ],
      parameters: {
        packages: PACKAGES,
        modulesPerPackage: MODULES_PER_PACKAGE,
        dependencyFiles: deps.files,
        dependencyBytes: deps.bytes,
        snapshotFiles: snapshot.files,
        snapshotBytes: snapshot.bytes,
        snapshotCreateMs: snapshot.createMs,
        starts,
        warmStarts: warm,
        gapMs,
        spareWorkers: 0,
        compileCache,
      },
      results: summaries,
      ratios,
      tables: [
        {
          title: 'First call of a fresh key',
          headers: ['permissions', 'variant', 'p50', 'p90', 'max', 'mean'],
          rows: MODES.flatMap((mode) =>
            (['live', 'snapshot'] as const).map((variant) => {
              const s = (summaries[mode] as Record<string, LatencySummary>)[variant] as LatencySummary;
              return [mode, variant, ms(s.p50), ms(s.p90), ms(s.max), ms(s.mean)];
            }),
          ),
          note: `${deps.files.toLocaleString('en-US')} dependency files; the snapshot holds ${snapshot.files} file(s). spareWorkers 0.`,
        },
        table,
      ],
      chart: {
        title: `Cold start with ${deps.files.toLocaleString('en-US')} dependency files: live vs snapshot`,
        panels: [
          {
            title: 'First-call latency of a fresh key',
            unit: 'ms',
            groups: groups(['live', 'snapshot'], (variant, mode) => `${variant}, permissions ${mode}`),
          },
        ],
      },
    };
  },
};

function num0(value: number): string {
  return Math.round(value).toLocaleString('en-US');
}
