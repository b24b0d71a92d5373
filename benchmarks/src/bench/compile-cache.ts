import { execFile } from 'node:child_process';
import { existsSync, realpathSync } from 'node:fs';
import { mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import * as nodeModule from 'node:module';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { Worker } from 'node:worker_threads';
import { createPool } from 'sandpool';
import { mb, ms, ratio } from '../lib/format.js';
import { Latency, type LatencySummary, round } from '../lib/histogram.js';
import type { BenchContext, Benchmark, BenchReport } from '../lib/report.js';
import { makeRoot } from '../lib/temp-root.js';
import { now, sleep } from '../lib/timing.js';

const SWARM = 'heavy';
const STEM = 'compiler';
const SNAPSHOT = 'frozen';
/** Where a snapshot keeps its per-stem bundles (the store's layout). */
const BUNDLES_DIR = '.sandpool-bundles';
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

/** Where earlier releases kept a snapshot's compile cache: no worker may write there now. */
const cacheRoot = (root: string): string => join(root, '.sandpool-cache', 'compile');

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
    await pool.close();
  }
}

type CachedAndEmptied = Record<'cached' | 'uncached', LatencySummary>;

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
  title:
    'Compile cache: a snapshot of an agent importing the TypeScript compiler, cold start without one against Node with one',
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
    const sandpool = { strict: new Latency(), none: new Latency() };
    const floorLatency = Object.fromEntries(
      FLOORS.map((floor) => [floor, { cached: new Latency(), uncached: new Latency() }]),
    ) as Record<Floor, Record<'cached' | 'uncached', Latency>>;
    let snapshot = { files: 0, bytes: 0, createMs: 0 };
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
      const bundle = join(tree.root, SWARM, 'snapshots', SNAPSHOT, BUNDLES_DIR, `${STEM}.mjs`);
      const cacheDir = (floor: Floor): string => join(tree.root, `${floor.replace(' ', '-')}-cache`);
      for (const floor of FLOORS) await FLOOR_RUN[floor](bundle, cacheDir(floor));
      context.progress(`${warm} unrecorded and ${starts} recorded rounds, every start of a round interleaved`);
      for (let i = 0; i < warm + starts; i += 1) {
        const record = (latency: Latency, elapsed: number): void => {
          if (i >= warm) latency.recordMs(elapsed);
        };
        for (const mode of MODES) {
          await sleep(gapMs);
          record(sandpool[mode], await coldCall(tree.root, key, mode));
        }
        for (const floor of FLOORS) {
          await sleep(gapMs);
          record(floorLatency[floor].cached, await FLOOR_RUN[floor](bundle, cacheDir(floor)));
          await rm(cacheDir(floor), { recursive: true, force: true });
          await sleep(gapMs);
          // Writes the cache again for the next round's cached start.
          record(floorLatency[floor].uncached, await FLOOR_RUN[floor](bundle, cacheDir(floor)));
        }
      }
      if (existsSync(cacheRoot(tree.root))) throw new Error('a snapshot worker made a compile cache folder');
    } finally {
      await tree.cleanup();
    }
    const summaries = { strict: sandpool.strict.summaryMs(), none: sandpool.none.summaryMs() };
    const floors = Object.fromEntries(
      FLOORS.map((floor) => [
        floor,
        { cached: floorLatency[floor].cached.summaryMs(), uncached: floorLatency[floor].uncached.summaryMs() },
      ]),
    ) as Record<Floor, CachedAndEmptied>;
    const bare = floors['bare worker'];
    const ratios: Record<string, number> = {};
    const ratioRows: string[][] = [];
    const add = (label: string, value: number): void => {
      ratios[label] = round(value, 3);
      ratioRows.push([label, ratio(round(value, 3))]);
    };
    for (const mode of MODES) {
      add(`sandpool ${mode} p50 / bare worker without cache p50`, summaries[mode].p50 / bare.uncached.p50);
      add(`sandpool ${mode} p50 / bare worker with cache p50`, summaries[mode].p50 / bare.cached.p50);
    }
    for (const floor of FLOORS) {
      add(
        `${floor}: with cache p50 / without p50 (what a cache saves)`,
        floors[floor].cached.p50 / floors[floor].uncached.p50,
      );
    }
    const row = (label: string, cache: string, s: LatencySummary): string[] => [
      label,
      cache,
      ms(s.p50),
      ms(s.p90),
      ms(s.max),
      ms(s.mean),
    ];
    return {
      method: [
        `An agent that imports the TypeScript compiler (typescript ${typescriptVersion}, linked into <root>/node_modules) and exports add and transpile; a snapshot of it, created once: ${snapshot.files} file(s), ${mb(snapshot.bytes)}, in ${Math.round(snapshot.createMs)} ms.`,
        `Each sandpool cold start is a new pool (spareWorkers 0) and its first call, add(1, 2): spawn, verify the bundle, import it, one round trip; a transpile call after it checks the compiler works, then the pool is closed. Sandpool uses no compile cache (a worker could write one that later starts would run; Node enables one only where its worker may write): the run fails if any worker made one.`,
        `Floors, the same bytes with nothing of sandpool's: 'node alone' is a plain \`node\` process importing the snapshot's bundle with NODE_COMPILE_CACHE, timed inside it around the import alone; 'bare worker' is \`new Worker\` that calls module.enableCompileCache, imports the bundle and answers, timed from the constructor to the answer. Each with its cache as its previous start left it, and with its cache folder removed first.`,
        `${warm} unrecorded and ${starts} recorded rounds; in each, every start (sandpool strict, none, then each floor with and without its cache) runs once, ${gapMs} ms apart, so all see the same machine. The bare worker with its cache is what a start could reach with one.`,
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
      results: { ...summaries, floors },
      ratios,
      tables: [
        {
          title: 'First call of a fresh snapshot key',
          headers: ['start', 'compile cache', 'p50', 'p90', 'max', 'mean'],
          rows: [
            ...MODES.map((mode) => row(`sandpool, permissions ${mode}`, 'none', summaries[mode])),
            ...FLOORS.flatMap((floor) => [
              row(floor, 'yes', floors[floor].cached),
              row(floor, 'removed', floors[floor].uncached),
            ]),
          ],
        },
        { title: 'Ratios', headers: ['comparison', 'ratio'], rows: ratioRows },
      ],
      chart: {
        title: 'Compile cache: snapshot cold start of an agent importing the TypeScript compiler',
        panels: [
          {
            title: 'First-call latency of a fresh snapshot key',
            unit: 'ms',
            groups: [
              ...MODES.map((mode) => ({
                label: `sandpool, ${mode}`,
                bars: [
                  { series: 'p50', value: summaries[mode].p50 },
                  { series: 'p90', value: summaries[mode].p90 },
                ],
              })),
              ...FLOORS.flatMap((floor) =>
                (['cached', 'uncached'] as const).map((variant) => ({
                  label: `${variant === 'cached' ? 'with cache' : 'cache removed'}, ${floor}`,
                  bars: [
                    { series: 'p50', value: floors[floor][variant].p50 },
                    { series: 'p90', value: floors[floor][variant].p90 },
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
