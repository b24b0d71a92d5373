import * as current from 'sandpool';
import { loadNow } from '../lib/conditions.js';
import { ms, ratio } from '../lib/format.js';
import { Latency, type LatencySummary, round } from '../lib/histogram.js';
import { buildRelease, releaseRef } from '../lib/release-build.js';
import type { BenchContext, Benchmark, BenchReport } from '../lib/report.js';
import { makeRoot, type TempRoot } from '../lib/temp-root.js';
import { now, sleep, until } from '../lib/timing.js';

const WARM_KEYS = 3;
/** The goal (issue 23): a live key's cold start at most this many times the last release's. */
const GOAL = 1.2;
const SNAPSHOT = 's';

/** What this benchmark uses of a pool: the same in every build measured. */
interface PoolLike {
  call<T>(key: string, fn: string, args: unknown[]): Promise<T>;
  stats(): { spares: number };
  readonly snapshots: { create(swarm: string, name: string): Promise<unknown> };
  close(): Promise<void>;
}
interface Build {
  createPool(options: {
    root: string;
    maxWorkers: number;
    spareWorkers: number;
    idleTimeoutMs: number;
    permissions: 'none' | 'strict';
  }): PoolLike;
}

/** One shape of pool, opened the same way on each build. */
interface Shape {
  name: string;
  permissions: 'none' | 'strict';
  spareWorkers: number;
  /** Live keys (`cold/<stem>`) or snapshot keys (`frozen@s/<stem>`). */
  snapshot: boolean;
}

const SHAPES: readonly Shape[] = [
  { name: 'live, strict, spareWorkers 1 (the defaults)', permissions: 'strict', spareWorkers: 1, snapshot: false },
  { name: 'live, strict, spareWorkers 0', permissions: 'strict', spareWorkers: 0, snapshot: false },
  { name: 'live, none, spareWorkers 1', permissions: 'none', spareWorkers: 1, snapshot: false },
  { name: 'live, none, spareWorkers 0', permissions: 'none', spareWorkers: 0, snapshot: false },
  { name: 'snapshot, strict, spareWorkers 1', permissions: 'strict', spareWorkers: 1, snapshot: true },
  { name: 'snapshot, strict, spareWorkers 0', permissions: 'strict', spareWorkers: 0, snapshot: true },
];

interface Opened {
  shape: Shape;
  build: 'release' | 'this';
  pool: PoolLike;
  prefix: string;
  called: boolean;
  latency: Latency;
  /** Keys of a spare shape that found no spare booted at rest. */
  withoutSpare: number;
}

export const releaseColdStart: Benchmark = {
  name: 'release-cold-start',
  title: 'Cold start against the last release, in one run',
  async run(context: BenchContext): Promise<BenchReport> {
    const keys = context.quick ? 10 : 30;
    const gapMs = context.quick ? 150 : 200;
    const { ref, chosenBy } = await releaseRef(context.against);
    const release = await buildRelease(ref, chosenBy, context.progress);
    const opened: Opened[] = [];
    const roots: TempRoot[] = [];
    const loads: number[] = [];
    try {
      const old = (await import(release.entry)) as Build;
      // Each build its own root holding the same files: a store's folders are each build's own.
      for (const [build, module] of [
        ['release', old],
        ['this', current as unknown as Build],
      ] as const) {
        const stems = SHAPES.flatMap((_, s) => Array.from({ length: keys + WARM_KEYS }, (_, i) => `k${s}x${i}`));
        const tree = await makeRoot(
          stems.flatMap((stem) => [
            { swarm: 'cold', stem, fixture: 'agent.mjs' },
            { swarm: 'frozen', stem, fixture: 'agent.mjs' },
          ]),
        );
        roots.push(tree);
        for (const [s, shape] of SHAPES.entries()) {
          const pool = module.createPool({
            root: tree.root,
            maxWorkers: keys + WARM_KEYS + 1,
            spareWorkers: shape.spareWorkers,
            idleTimeoutMs: 0,
            permissions: shape.permissions,
          });
          if (shape.snapshot && s === SHAPES.findIndex((other) => other.snapshot)) {
            await pool.snapshots.create('frozen', SNAPSHOT);
          }
          const swarm = shape.snapshot ? `frozen@${SNAPSHOT}` : 'cold';
          opened.push({
            shape,
            build,
            pool,
            prefix: `${swarm}/k${s}x`,
            called: false,
            latency: new Latency(),
            withoutSpare: 0,
          });
        }
      }
      // Round by round, key by key: each shape's key i on the release, then on this build, the
      // order swapped every round, so drift in the machine falls on both alike.
      for (let i = 0; i < keys + WARM_KEYS; i += 1) {
        if (i >= WARM_KEYS && (i - WARM_KEYS) % 5 === 0) context.progress(`key ${i - WARM_KEYS + 1}/${keys}`);
        loads.push(loadNow());
        for (const shape of SHAPES) {
          const pair = opened.filter((o) => o.shape === shape);
          for (const variant of i % 2 === 0 ? pair : pair.reverse()) {
            await settle(variant);
            await sleep(gapMs);
            const t0 = now();
            const value = await variant.pool.call<number>(`${variant.prefix}${i}`, 'add', [1, 2]);
            const elapsed = now() - t0;
            variant.called = true;
            if (value !== 3) throw new Error(`${variant.build} ${variant.prefix}${i}: add(1, 2) gave ${value}`);
            if (i >= WARM_KEYS) variant.latency.recordMs(elapsed);
          }
        }
      }
    } finally {
      for (const variant of opened) await variant.pool.close();
      for (const tree of roots) await tree.cleanup();
      await release.cleanup();
    }
    const summary = (shape: Shape, build: Opened['build']): LatencySummary =>
      (opened.find((o) => o.shape === shape && o.build === build) as Opened).latency.summaryMs();
    const rows = SHAPES.map((shape) => {
      const before = summary(shape, 'release');
      const after = summary(shape, 'this');
      return {
        shape,
        before,
        after,
        p50: round(after.p50 / before.p50, 3),
        p99: round(after.p99 / before.p99, 3),
      };
    });
    const load = { min: round(Math.min(...loads), 2), max: round(Math.max(...loads), 2) };
    const ratios = Object.fromEntries(
      rows.map(({ shape, p50, p99 }) => [
        shape.name,
        { p50, p99, ...(shape.snapshot ? {} : { goalP50: GOAL, met: p50 <= GOAL }) },
      ]),
    );
    return {
      method: [
        `The release: ${release.commit} (${chosenBy}), checked out in a git worktree under the OS temp folder, installed with pnpm install --offline --frozen-lockfile and built there (${release.buildSeconds} s), then removed.`,
        'Both builds run in this one process, each with its own root holding the same files; for each shape one pool per build, opened with the same options.',
        `${keys} keys per shape and build, each a module never loaded before (after ${WARM_KEYS} unrecorded warm-up keys, which also build a live swarm's artifact on this build); for each key, each shape's release pool and this build's pool in turn, the order swapped every round.`,
        'Time: from pool.call(key, "add", [1, 2]) to its result. Before each key the pool is left at rest: its spares booted (once it took a key), then a pause.',
        `Goal (issue 23): a live key's cold start at most ${GOAL}× the release's (p50); snapshot keys unchanged.`,
      ],
      parameters: { keys, warmKeys: WARM_KEYS, gapMs, release: release.commit, chosenBy },
      results: {
        loadDuringRun: load,
        keysWithoutSpareAtRest: Object.fromEntries(
          opened.filter((o) => o.shape.spareWorkers > 0).map((o) => [`${o.build}: ${o.shape.name}`, o.withoutSpare]),
        ),
        ...Object.fromEntries(rows.map(({ shape, before, after }) => [shape.name, { release: before, this: after }])),
      },
      ratios,
      tables: [
        {
          title: `First call to a new key: this build against ${release.commit} (load ${load.min}–${load.max})`,
          headers: ['shape', 'release p50', 'this p50', 'p50 ratio', 'release p99', 'this p99', 'p99 ratio'],
          rows: rows.map(({ shape, before, after, p50, p99 }) => [
            shape.name,
            ms(before.p50),
            ms(after.p50),
            `${ratio(p50)}${shape.snapshot ? '' : p50 <= GOAL ? ' (goal met)' : ` (goal ≤ ${GOAL}×: not met)`}`,
            ms(before.p99),
            ms(after.p99),
            ratio(p99),
          ]),
          note: `keys of a spare shape that found no spare booted at rest (after ${SPARE_BOOT_MS} ms): ${
            opened
              .filter((o) => o.shape.spareWorkers > 0 && o.withoutSpare > 0)
              .map((o) => `${o.build}, ${o.shape.name}: ${o.withoutSpare}`)
              .join('; ') || 'none'
          }.`,
        },
      ],
      chart: {
        title: `Cold start: this build against ${release.commit}`,
        panels: [
          {
            title: 'First-call latency, p50',
            unit: 'ms',
            groups: rows.map(({ shape, before, after }) => ({
              label: shape.name,
              bars: [
                { series: release.commit, value: before.p50 },
                { series: 'this build', value: after.p50 },
              ],
            })),
          },
        ],
      },
    };
  },
};

/** How long a pool may take to boot its spares again between keys; a build that keeps none for a shape gets no more. */
const SPARE_BOOT_MS = 3_000;

/**
 * At rest: once a pool took a key, its spares booted again (a strict pool keeps one only from
 * its first key on). A build that keeps no spare for a shape (the release under `strict`: no
 * strict key could take one) is at rest without it; such keys are counted.
 */
async function settle(variant: Opened): Promise<void> {
  const spares = variant.shape.spareWorkers;
  if (!variant.called || spares === 0) return;
  try {
    await until(() => variant.pool.stats().spares >= spares, SPARE_BOOT_MS, 'spares');
  } catch {
    variant.withoutSpare += 1;
  }
}
