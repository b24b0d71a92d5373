/**
 * Runs the suite: `node --expose-gc dist/run.js [--quick] [--only name]... [--against ref]`.
 * Each benchmark runs in a child process of its own, so one benchmark's threads, heap and
 * RSS never leak into the next one's figures.
 */
import { spawn } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { coldStart } from './bench/cold-start.js';
import { compileCache } from './bench/compile-cache.js';
import { coordinator } from './bench/coordinator.js';
import { fairness } from './bench/fairness.js';
import { isolation } from './bench/isolation.js';
import { keyStart } from './bench/key-start.js';
import { manyKeys } from './bench/many-keys.js';
import { memory } from './bench/memory.js';
import { pointerMove } from './bench/pointer-move.js';
import { processIsolation } from './bench/process.js';
import { releaseColdStart } from './bench/release-cold-start.js';
import { rpc } from './bench/rpc.js';
import { snapshotStart } from './bench/snapshot-start.js';
import { loadNow } from './lib/conditions.js';
import { type Benchmark, makeContext, publish } from './lib/report.js';

const BENCHMARKS: readonly Benchmark[] = [
  isolation,
  fairness,
  rpc,
  coordinator,
  coldStart,
  releaseColdStart,
  snapshotStart,
  keyStart,
  compileCache,
  memory,
  processIsolation,
  manyKeys,
  pointerMove,
];

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string', multiple: true },
    child: { type: 'string' },
    phase: { type: 'string' },
    against: { type: 'string' },
  },
  strict: true,
});
const quick = values.quick === true;
const against = values.against ?? null;

if (values.child !== undefined && values.phase !== undefined) {
  const bench = find(values.child);
  const phase = bench.phases?.[values.phase];
  if (phase === undefined) throw new Error(`${bench.name} has no phase ${values.phase}`);
  const result = await phase(makeContext(`${bench.name}/${values.phase}`, quick));
  process.stdout.write(`${JSON.stringify(result)}\n`);
} else if (values.child !== undefined) {
  const bench = find(values.child);
  const context = makeContext(bench.name, quick, against);
  const report = await bench.run(context);
  if (report !== null) await publish(bench, report, context);
} else {
  const chosen = (values.only ?? BENCHMARKS.map((bench) => bench.name)).map(find);
  const started = performance.now();
  const load = loadNow();
  if (load > availableParallelism() / 2) {
    process.stderr.write(
      `warning: load average ${load.toFixed(1)} on ${availableParallelism()} cores: other work on this machine will skew the figures (each results file records the load)\n`,
    );
  }
  let failed = 0;
  for (const bench of chosen) {
    const t0 = performance.now();
    process.stderr.write(`\n== ${bench.name} (${quick ? 'quick' : 'full'}) ==\n`);
    const code = await runChild(bench.name);
    const seconds = ((performance.now() - t0) / 1000).toFixed(1);
    process.stderr.write(`== ${bench.name}: ${code === 0 ? 'done' : `FAILED (exit ${code})`} in ${seconds} s ==\n`);
    if (code !== 0) failed += 1;
  }
  process.stderr.write(`\nall done in ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
  process.exitCode = failed === 0 ? 0 : 1;
}

function find(name: string): Benchmark {
  const bench = BENCHMARKS.find((candidate) => candidate.name === name);
  if (bench === undefined) {
    process.stderr.write(`unknown benchmark ${name}; one of: ${BENCHMARKS.map((b) => b.name).join(', ')}\n`);
    process.exit(2);
  }
  return bench;
}

function runChild(name: string): Promise<number> {
  const args = [
    '--expose-gc',
    fileURLToPath(import.meta.url),
    '--child',
    name,
    ...(quick ? ['--quick'] : []),
    ...(against === null ? [] : ['--against', against]),
  ];
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { stdio: 'inherit' });
    child.on('exit', (code, signal) => resolve(code ?? (signal === null ? 1 : 128)));
  });
}
