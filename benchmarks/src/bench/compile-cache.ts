import { existsSync, realpathSync } from 'node:fs';
import { mkdir, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import * as nodeModule from 'node:module';
import { dirname, join } from 'node:path';
import { createPool } from 'sandpool';
import { abRatios } from '../lib/ab-ratios.js';
import { mb, ms } from '../lib/format.js';
import { Latency, type LatencySummary, round } from '../lib/histogram.js';
import type { BenchContext, Benchmark, BenchReport } from '../lib/report.js';
import { makeRoot } from '../lib/temp-root.js';
import { now, sleep } from '../lib/timing.js';

const SWARM = 'heavy';
const STEM = 'compiler';
const SNAPSHOT = 'frozen';
const TARGET = 0.5;
/** Permission modes, by label; the middle one is strict widened by the one grant the cache needs. */
const MODES = ['strict', 'strict + read of the cache', 'none'] as const;
type Mode = (typeof MODES)[number];
type Permissions = 'strict' | 'none' | { fsRead: string[] };

/** The heavy real agent: the TypeScript compiler, imported as a package from the root's node_modules. */
const AGENT = [
  "import './cjs-globals.mjs';",
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

/**
 * The compiler reads `__filename` (and `__dirname`), which CommonJS defines and the ES module
 * bundle a snapshot makes of it does not: without these the snapshot fails to load with a
 * ReferenceError. Imported first, so it runs before the compiler's module does.
 */
const CJS_GLOBALS = [
  "import { dirname } from 'node:path';",
  "import { fileURLToPath } from 'node:url';",
  '',
  "const file = import.meta.url.startsWith('file:') ? fileURLToPath(import.meta.url) : '/';",
  'globalThis.__filename ??= file;',
  'globalThis.__dirname ??= dirname(file);',
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
function permissionsOf(mode: Mode, root: string): Permissions {
  return mode === 'strict + read of the cache' ? { fsRead: [cacheRoot(root)] } : mode;
}

async function coldCall(root: string, key: string, mode: Mode): Promise<number> {
  const permissions = permissionsOf(mode, root);
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
    let strictWithoutFolder = 0;
    try {
      const live = join(tree.root, SWARM, 'live');
      await mkdir(live, { recursive: true });
      await mkdir(join(tree.root, 'node_modules'), { recursive: true });
      await symlink(typescriptDir, join(tree.root, 'node_modules', 'typescript'), 'dir');
      await writeFile(join(live, `${STEM}.mjs`), AGENT);
      await writeFile(join(live, 'cjs-globals.mjs'), CJS_GLOBALS);
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
      // A strict start on a fresh root is what a new deployment sees: counted apart. A start
      // under 'none' then makes the folder, which the uncached starts empty but keep.
      await rm(cacheRoot(tree.root), { recursive: true, force: true });
      await coldCall(tree.root, key, 'strict');
      strictWithoutFolder = await filesUnder(cacheRoot(tree.root));
      await coldCall(tree.root, key, 'none');
      const [digest] = await readdir(cacheRoot(tree.root));
      if (digest === undefined) throw new Error('the snapshot worker wrote no compile cache folder');
      const folder = join(cacheRoot(tree.root), digest);
      for (const mode of MODES) {
        const latencies = { cached: new Latency(), uncached: new Latency() };
        await emptyFolder(folder);
        context.progress(`permissions ${mode}: populating the cache`);
        await coldCall(tree.root, key, mode);
        cacheFiles[mode] = await filesUnder(cacheRoot(tree.root));
        for (let i = 0; i < warm + starts; i += 1) {
          if (i === warm) context.progress(`permissions ${mode}: ${starts} cold starts each`);
          // Interleaved: the uncached start empties the folder first, and its own exit
          // writes the cache again, so the next cached start finds it.
          for (const variant of ['cached', 'uncached'] as const) {
            if (variant === 'uncached') await emptyFolder(folder);
            await sleep(gapMs);
            const elapsed = await coldCall(tree.root, key, mode);
            if (i >= warm) latencies[variant].recordMs(elapsed);
          }
        }
        summaries[mode] = { cached: latencies.cached.summaryMs(), uncached: latencies.uncached.summaryMs() };
      }
    } finally {
      await tree.cleanup();
    }
    const { ratios, table, groups } = abRatios(MODES, summaries, 'cached', 'uncached', TARGET);
    return {
      method: [
        `An agent that imports the TypeScript compiler (typescript ${typescriptVersion}, linked into <root>/node_modules) and exports add and transpile (a helper imported first defines __filename and __dirname, which the compiler reads and an ES module bundle lacks); a snapshot of it, created once: ${snapshot.files} file(s), ${mb(snapshot.bytes)}, in ${Math.round(snapshot.createMs)} ms.`,
        `Each cold start is a new pool (spareWorkers 0) and its first call, add(1, 2): spawn, verify the bundle, import it, one round trip; a transpile call after it checks the compiler works, then the pool is closed (the worker writes its compile cache as it exits).`,
        `cached: the snapshot's compile cache folder (<root>/.sandpool-cache/compile/<digest>) as the previous start left it. uncached: that folder emptied before the start, so the worker compiles the bundle from source (and writes the cache again).`,
        `Under permissions 'strict' a worker may write that folder but not read it, and Node's compile cache needs both: a strict start wrote ${cacheFiles.strict ?? 0} cache file(s) even with the folder present (${strictWithoutFolder} with it absent), so strict starts run without a cache. 'strict + read of the cache' widens strict by fsRead of <root>/.sandpool-cache/compile, the one grant missing; 'none' has no permission model. One start under 'none' creates the folder first; uncached starts empty it rather than remove it.`,
        `A first start populates the cache (unrecorded; files in it: cacheFiles); then ${warm} unrecorded and ${starts} recorded starts per variant, interleaved, ${gapMs} ms apart; once with permissions 'strict' (the default: the worker may write only that folder) and once with 'none'.`,
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
      results: { ...summaries, cacheFiles, strictWithoutFolder },
      ratios,
      tables: [
        {
          title: 'First call of a fresh snapshot key',
          headers: ['permissions', 'compile cache', 'p50', 'p90', 'max', 'mean'],
          rows: MODES.flatMap((mode) =>
            (['cached', 'uncached'] as const).map((variant) => {
              const s = (summaries[mode] as Record<string, LatencySummary>)[variant] as LatencySummary;
              return [mode, variant === 'cached' ? 'yes' : 'removed', ms(s.p50), ms(s.p90), ms(s.max), ms(s.mean)];
            }),
          ),
          note: `Files in the cache after the populating start: ${MODES.map((mode) => `${mode} ${cacheFiles[mode]}`).join(', ')}. Strict grants the worker write but not read of its cache folder: Node then skips the cache.`,
        },
        table,
      ],
      chart: {
        title: 'Compile cache: snapshot cold start of an agent importing the TypeScript compiler',
        panels: [
          {
            title: 'First-call latency of a fresh snapshot key',
            unit: 'ms',
            groups: groups(
              ['cached', 'uncached'],
              (variant, mode) => `${variant === 'cached' ? 'with cache' : 'cache removed'}, ${mode}`,
            ),
          },
        ],
      },
    };
  },
};
