import { execFile } from 'node:child_process';
import { existsSync, realpathSync } from 'node:fs';
import { mkdir, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import * as nodeModule from 'node:module';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { Worker } from 'node:worker_threads';
import { createPool } from 'sandpool';
import { abRatios } from '../lib/ab-ratios.js';
import { mb, ms, ratio } from '../lib/format.js';
import { Latency, type LatencySummary, round } from '../lib/histogram.js';
import type { BenchContext, Benchmark, BenchReport } from '../lib/report.js';
import { makeRoot } from '../lib/temp-root.js';
import { now, sleep } from '../lib/timing.js';

const SWARM = 'heavy';
const STEM = 'compiler';
const SNAPSHOT = 'frozen';
const TARGET = 0.5;
/** Where a snapshot keeps its per-stem bundles (the store's layout). */
const BUNDLES_DIR = '.sandpool-bundles';
/** Permission modes: the default, where the worker may read and write only its snapshot's cache folder, and none. */
const MODES = ['strict', 'none'] as const;
type Mode = (typeof MODES)[number];

/** The heavy real agent: the TypeScript compiler, imported as a package from the root's node_modules. */
const AGENT = [
  "import ts from 'typescript';",
  '',
  'export function add(a, b) {',
  '  return a + b;',
  '}',
  '',
  'export function transpile(source) {',
  '  return ts.transpileModule(source, { compilerOptions: { target: ts.ScriptTarget.ES2022 } }).outputText;',
  '}',
  '',
].join('\n');

/** Where sandpool keeps a snapshot's compile cache: the coordinator-owned cache folder of the root. */
const cacheRoot = (root: string): string => join(root, '.sandpool-cache', 'compile');

async function emptyFolder(dir: string): Promise<void> {
  for (const entry of await readdir(dir)) await rm(join(dir, entry), { recursive: true, force: true });
}

async function filesUnder(dir: string): Promise<number> {
  if (!existsSync(dir)) return 0;
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((entry) => entry.isFile()).length;
}

/** A new pool's first call to the key, and a transpile to prove the compiler works. */
async function coldCall(root: string, key: string, permissions: Mode): Promise<number> {
  const pool = createPool({ root, spareWorkers: 0, idleTimeoutMs: 0, permissions });
  try {
    const t0 = now();
    const sum = await pool.call<number>(key, 'add', [1, 2]);
    const elapsed = now() - t0;
    if (sum !== 3) throw new Error(`${key}: add(1, 2) gave ${sum}`);
    const out = await pool.call<string>(key, 'transpile', ['const x: number = 1;']);
    if (!out.includes('const x = 1')) throw new Error(`${key}: transpile gave ${JSON.stringify(out)}`);
    return elapsed;
  } finally {
    // The worker writes its compile cache as it exits: close() waits for that.
    await pool.close();
  }
}

type CachedAndEmptied = Record<'cached' | 'uncached', LatencySummary>;

/**
 * `warm` unrecorded then `starts` recorded pairs, `gapMs` apart: a start as the previous one
 * left the cache, then one after `empty()`. Interleaved, so both see the same machine; an
 * emptied start writes the cache again, so the next cached start finds it.
 */
async function cachedAgainstEmptied(
  { warm, starts, gapMs }: { warm: number; starts: number; gapMs: number },
  empty: () => Promise<void>,
  start: () => Promise<number>,
): Promise<CachedAndEmptied> {
  const latencies = { cached: new Latency(), uncached: new Latency() };
  for (let i = 0; i < warm + starts; i += 1) {
    for (const variant of ['cached', 'uncached'] as const) {
      if (variant === 'uncached') await empty();
      await sleep(gapMs);
      const elapsed = await start();
      if (i >= warm) latencies[variant].recordMs(elapsed);
    }
  }
  return { cached: latencies.cached.summaryMs(), uncached: latencies.uncached.summaryMs() };
}

/** The least a start of this agent can cost with Node's compile cache, measured on the same bytes. */
type Floor = 'node alone' | 'bare worker';
const FLOORS: readonly Floor[] = ['node alone', 'bare worker'];

/**
 * node alone: a `node` process importing the snapshot's bundle with NODE_COMPILE_CACHE, timed
 * inside it around the import alone. What a cache leaves is the module's evaluation.
 */
async function nodeAloneImport(bundle: string, cacheDir: string): Promise<number> {
  const script = `const t0 = performance.now(); await import(${JSON.stringify(pathToFileURL(bundle).href)}); process.stdout.write(String(performance.now() - t0));`;
  const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], {
    env: { ...process.env, NODE_COMPILE_CACHE: cacheDir },
  });
  const elapsed = Number(stdout);
  if (!Number.isFinite(elapsed)) throw new Error(`node alone: the import printed ${JSON.stringify(stdout)}`);
  return elapsed;
}

/**
 * bare worker: `new Worker` that enables the compile cache, imports the bundle and answers:
 * a worker's boot plus the import, with nothing of sandpool's (no channel, no verification).
 */
async function bareWorkerStart(bundle: string, cacheDir: string): Promise<number> {
  const script = [
    "const { enableCompileCache, flushCompileCache } = require('node:module');",
    "const { parentPort } = require('node:worker_threads');",
    `enableCompileCache(${JSON.stringify(cacheDir)});`,
    `import(${JSON.stringify(pathToFileURL(bundle).href)}).then(() => {`,
    "  parentPort.postMessage('imported');",
    '  flushCompileCache?.();',
    "  parentPort.postMessage('flushed');",
    '});',
  ].join('\n');
  const t0 = now();
  const worker = new Worker(script, { eval: true });
  const messages: unknown[] = [];
  let elapsed = 0;
  await new Promise<void>((resolve, reject) => {
    worker.on('error', reject);
    worker.on('message', (message) => {
      if (message === 'imported') elapsed = now() - t0;
      messages.push(message);
      if (message === 'flushed') resolve();
    });
  });
  await worker.terminate();
  if (messages.join() !== 'imported,flushed') throw new Error(`bare worker: it sent ${JSON.stringify(messages)}`);
  return elapsed;
}

const FLOOR_RUN: Record<Floor, (bundle: string, cacheDir: string) => Promise<number>> = {
  'node alone': nodeAloneImport,
  'bare worker': bareWorkerStart,
};

export const compileCache: Benchmark = {
  name: 'compile-cache',
  title: 'Compile cache: a snapshot of an agent importing the TypeScript compiler, cold start with and without it',
  async run(context: BenchContext): Promise<BenchReport | null> {
    if (typeof (nodeModule as { enableCompileCache?: unknown }).enableCompileCache !== 'function') {
      context.progress(`Node ${process.version} has no compile cache (module.enableCompileCache, 22.1+): skipped`);
      return null;
    }
    const starts = context.quick ? 5 : 12;
    const warm = 1;
    const gapMs = 100;
    const typescriptDir = dirname(
      realpathSync(nodeModule.createRequire(import.meta.url).resolve('typescript/package.json')),
    );
    const typescriptVersion = (
      nodeModule.createRequire(import.meta.url)('typescript/package.json') as { version: string }
    ).version;
    const tree = await makeRoot([]);
    const summaries: Record<string, Record<string, LatencySummary>> = {};
    const cacheFiles: Record<string, number> = {};
    let snapshot = { files: 0, bytes: 0, createMs: 0 };
    const floors: Partial<Record<Floor, CachedAndEmptied>> = {};
    const runs = { warm, starts, gapMs };
    try {
      const live = join(tree.root, SWARM, 'live');
      await mkdir(live, { recursive: true });
      await mkdir(join(tree.root, 'node_modules'), { recursive: true });
      await symlink(typescriptDir, join(tree.root, 'node_modules', 'typescript'), 'dir');
      await writeFile(join(live, `${STEM}.mjs`), AGENT);
      context.progress(`typescript ${typescriptVersion} linked from ${typescriptDir}; creating the snapshot`);
      const store = createPool({ root: tree.root, spareWorkers: 0 });
      try {
        const t0 = now();
        const info = await store.snapshots.create(SWARM, SNAPSHOT);
        snapshot = { files: info.files, bytes: info.bytes, createMs: round(now() - t0) };
      } finally {
        await store.close();
      }
      const key = `${SWARM}@${SNAPSHOT}/${STEM}`;
      // The coordinator makes the cache folder at the first start; uncached starts empty it.
      await coldCall(tree.root, key, 'strict');
      const [digest] = await readdir(cacheRoot(tree.root));
      if (digest === undefined) throw new Error('the snapshot worker wrote no compile cache folder');
      const folder = join(cacheRoot(tree.root), digest);
      for (const mode of MODES) {
        await emptyFolder(folder);
        context.progress(`permissions ${mode}: populating the cache`);
        await coldCall(tree.root, key, mode);
        cacheFiles[mode] = await filesUnder(cacheRoot(tree.root));
        context.progress(`permissions ${mode}: ${starts} cold starts each`);
        summaries[mode] = await cachedAgainstEmptied(
          runs,
          () => emptyFolder(folder),
          () => coldCall(tree.root, key, mode),
        );
      }
      const bundle = join(tree.root, SWARM, 'snapshots', SNAPSHOT, BUNDLES_DIR, `${STEM}.mjs`);
      for (const floor of FLOORS) {
        context.progress(`${floor}: ${starts} starts each, with and without its compile cache`);
        const cacheDir = join(tree.root, `${floor.replace(' ', '-')}-cache`);
        await FLOOR_RUN[floor](bundle, cacheDir);
        floors[floor] = await cachedAgainstEmptied(
          runs,
          () => rm(cacheDir, { recursive: true, force: true }),
          () => FLOOR_RUN[floor](bundle, cacheDir),
        );
      }
    } finally {
      await tree.cleanup();
    }
    const { ratios, table, groups } = abRatios(MODES, summaries, 'cached', 'uncached', TARGET);
    const floorSummary = (floor: Floor): CachedAndEmptied => {
      const summary = floors[floor];
      if (summary === undefined) throw new Error(`${floor} was not measured`);
      return summary;
    };
    for (const floor of FLOORS) {
      const summary = floorSummary(floor);
      const value = round(summary.cached.p50 / summary.uncached.p50, 3);
      ratios[`${floor}: cached p50 / uncached p50 (a floor for this agent)`] = value;
      table.rows.push([`${floor}: cached p50 / uncached p50`, ratio(value), '-', '-']);
    }
    return {
      method: [
        `An agent that imports the TypeScript compiler (typescript ${typescriptVersion}, linked into <root>/node_modules) and exports add and transpile; a snapshot of it, created once: ${snapshot.files} file(s), ${mb(snapshot.bytes)}, in ${Math.round(snapshot.createMs)} ms.`,
        `Each cold start is a new pool (spareWorkers 0) and its first call, add(1, 2): spawn, verify the bundle, import it, one round trip; a transpile call after it checks the compiler works, then the pool is closed (the worker writes its compile cache as it exits).`,
        `cached: the snapshot's compile cache folder (<root>/.sandpool-cache/compile/<digest>) as the previous start left it. uncached: that folder emptied before the start, so the worker compiles the bundle from source (and writes the cache again).`,
        `A first start populates the cache (unrecorded; files in it: cacheFiles); then ${warm} unrecorded and ${starts} recorded starts per variant, interleaved, ${gapMs} ms apart; once with permissions 'strict' (the default: the worker may read and write that folder, and write nothing else) and once with 'none'.`,
        `Floors, the same bytes with Node's compile cache and nothing of sandpool's, ${starts} of each variant interleaved after ${warm} unrecorded: 'node alone' is a plain \`node\` process importing the snapshot's bundle with NODE_COMPILE_CACHE, timed inside it around the import alone; 'bare worker' is \`new Worker\` that calls module.enableCompileCache, imports the bundle and answers, timed from the constructor to the answer. Uncached empties the floor's own cache folder first. A cache saves compilation, never the module's evaluation or a worker's boot: no start of this agent in a worker can reach below the bare worker's ratio.`,
        `Target: cached p50 <= ${TARGET}× uncached p50.`,
      ],
      parameters: {
        typescript: typescriptVersion,
        snapshotFiles: snapshot.files,
        snapshotBytes: snapshot.bytes,
        snapshotCreateMs: snapshot.createMs,
        starts,
        warmStarts: warm,
        gapMs,
        spareWorkers: 0,
      },
      results: { ...summaries, floors, cacheFiles },
      ratios,
      tables: [
        {
          title: 'First call of a fresh snapshot key',
          headers: ['start', 'compile cache', 'p50', 'p90', 'max', 'mean'],
          rows: [
            ...MODES.map((mode): [string, Record<string, LatencySummary>] => [
              `sandpool, permissions ${mode}`,
              summaries[mode] as Record<string, LatencySummary>,
            ]),
            ...FLOORS.map((floor): [string, Record<string, LatencySummary>] => [floor, floorSummary(floor)]),
          ].flatMap(([label, summary]) =>
            (['cached', 'uncached'] as const).map((variant) => {
              const s = summary[variant] as LatencySummary;
              return [label, variant === 'cached' ? 'yes' : 'removed', ms(s.p50), ms(s.p90), ms(s.max), ms(s.mean)];
            }),
          ),
          note: `Files in the cache after the populating start: ${MODES.map((mode) => `${mode} ${cacheFiles[mode]}`).join(', ')}. The floors run the same bytes with nothing of sandpool's.`,
        },
        table,
      ],
      chart: {
        title: 'Compile cache: snapshot cold start of an agent importing the TypeScript compiler',
        panels: [
          {
            title: 'First-call latency of a fresh snapshot key',
            unit: 'ms',
            groups: [
              ...groups(
                ['cached', 'uncached'],
                (variant, mode) => `${variant === 'cached' ? 'with cache' : 'cache removed'}, ${mode}`,
              ),
              ...FLOORS.flatMap((floor) =>
                (['cached', 'uncached'] as const).map((variant) => ({
                  label: `${variant === 'cached' ? 'with cache' : 'cache removed'}, ${floor}`,
                  bars: [
                    { series: 'p50', value: floorSummary(floor)[variant].p50 },
                    { series: 'p90', value: floorSummary(floor)[variant].p90 },
                  ],
                })),
              ),
            ],
          },
        ],
      },
    };
  },
};
