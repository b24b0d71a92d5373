// How far one coordinator goes, and what several pools in several processes (a key's process
// chosen by its key, as the balancer's hash does) add on this machine.
import { availableParallelism } from 'node:os';
import { createPool } from 'sandpool';
import { median, type Pipelined, type RpcSystem, runPipelined, runPipelinedInterleaved } from '../lib/call-loops.js';
import { loadNow } from '../lib/conditions.js';
import { num, perSecond, ratio } from '../lib/format.js';
import { readyThenWait, runGang } from '../lib/gang.js';
import { round } from '../lib/histogram.js';
import { runPhase } from '../lib/phase.js';
import type { BenchContext, Benchmark, BenchReport, Json } from '../lib/report.js';
import { makeRoot } from '../lib/temp-root.js';
import { eachLimited } from '../lib/timing.js';
import { rawEcho } from './rpc.js';

/** Keys the calls spread over: many, so no call shares a worker's message with the next. */
const KEYS = 64;
/** Calls in flight in all: each result issues the next call, to the next key. */
const DEPTH = 1024;
/** Sequential calls' turns per system in the one-process run (runPipelinedInterleaved). */
const SLICES = 10;
/** Pools in processes of their own: one per core, the deployment the README describes. */
const PROCESSES = Math.max(2, availableParallelism());

type Timing = { measureMs: number; warmMs: number; rounds: number };

function timing(quick: boolean): Timing {
  return quick ? { measureMs: 1_000, warmMs: 300, rounds: 1 } : { measureMs: 3_000, warmMs: 1_000, rounds: 3 };
}

/** What the coordinator's thread would serve if it did nothing else: 1 s over its CPU per call. */
const ceilingOf = (run: Pipelined): number | null =>
  run.mainCpuUsPerCall === null || run.mainCpuUsPerCall === 0 ? null : round(1e6 / run.mainCpuUsPerCall);

/** The share of one core the coordinator's thread used while it served them. */
const busyOf = (run: Pipelined): number | null =>
  run.mainCpuUsPerCall === null ? null : round((run.callsPerSecond * run.mainCpuUsPerCall) / 1e6, 3);

type Ceiling = { sandpool: Pipelined; raw: Pipelined; load: [number, number] };
type Shard = { shard: number; of: number; keys: number; run: Pipelined; load: [number, number] };

const keysOf = (shard: number, of: number): string[] =>
  Array.from({ length: KEYS }, (_, i) => i)
    .filter((i) => i % of === shard)
    .map((i) => `spread/k${i}`);

async function withPool<T>(keys: readonly string[], body: (system: RpcSystem) => Promise<T>): Promise<T> {
  const tree = await makeRoot(
    keys.map((key) => ({ swarm: 'spread', stem: key.slice('spread/'.length), fixture: 'agent.mjs' })),
  );
  // Starts take seconds each on a loaded machine: the load bound is the warm-up's, not the measure's.
  const pool = createPool({
    root: tree.root,
    maxWorkers: keys.length,
    spareWorkers: 0,
    idleTimeoutMs: 0,
    loadTimeoutMs: 120_000,
    queueTimeoutMs: 120_000,
  });
  const system: RpcSystem = {
    name: 'sandpool call',
    add: (a, b) => pool.call<number>(keys[a % keys.length] as string, 'add', [a, b]),
    close: () => pool.close(),
  };
  try {
    // Every key started before any window, 4 at a time: a window measures calls, not starts.
    await eachLimited(
      keys.map((_, i) => i),
      4,
      async (i) => {
        await system.add(i, 1);
      },
    );
    return await body(system);
  } finally {
    await pool.close();
    await tree.cleanup();
  }
}

async function ceilingPhase(context: BenchContext): Promise<Json> {
  const { measureMs, warmMs } = timing(context.quick);
  return withPool(keysOf(0, 1), async (sandpool) => {
    const raw = rawEcho(KEYS);
    try {
      await Promise.all(Array.from({ length: KEYS }, (_, i) => raw.add(i, 1)));
      const pair = [sandpool, raw];
      await runPipelinedInterleaved(pair, DEPTH, warmMs / SLICES, SLICES);
      const loadStart = loadNow();
      const runs = await runPipelinedInterleaved(pair, DEPTH, measureMs / SLICES, SLICES);
      const result: Ceiling = {
        sandpool: runs.get(sandpool.name) as Pipelined,
        raw: runs.get(raw.name) as Pipelined,
        load: [round(loadStart), round(loadNow())],
      };
      return result as unknown as Json;
    } finally {
      await raw.close();
    }
  });
}

async function shardPhase(context: BenchContext, shard: number, of: number): Promise<Json> {
  const { measureMs, warmMs } = timing(context.quick);
  const keys = keysOf(shard, of);
  return withPool(keys, async (system) => {
    await runPipelined(system, DEPTH / of, warmMs);
    await readyThenWait();
    const loadStart = loadNow();
    const run = await runPipelined(system, DEPTH / of, measureMs);
    const result: Shard = { shard, of, keys: keys.length, run, load: [round(loadStart), round(loadNow())] };
    return result as unknown as Json;
  });
}

const shardPhases = (of: number): string[] => Array.from({ length: of }, (_, shard) => `shard-${shard}-of-${of}`);

type Spread = { processes: number; callsPerSecond: number; coordinatorBusy: (number | null)[]; load: [number, number] };

function spreadOf(shards: readonly Shard[]): Spread {
  const loads = shards.flatMap((shard) => shard.load);
  return {
    processes: shards.length,
    callsPerSecond: round(shards.reduce((sum, shard) => sum + shard.run.callsPerSecond, 0)),
    coordinatorBusy: shards.map((shard) => busyOf(shard.run)),
    load: [Math.min(...loads), Math.max(...loads)],
  };
}

export const coordinator: Benchmark = {
  name: 'coordinator',
  title: "The coordinator's ceiling per process, and pools in several processes with key affinity",
  async run(context: BenchContext): Promise<BenchReport> {
    const { measureMs, warmMs, rounds } = timing(context.quick);
    context.progress(`one process: ${KEYS} keys against the raw echo over ${KEYS} workers, ${DEPTH} in flight`);
    const ceiling = (await runPhase('coordinator', 'ceiling', context.quick)) as unknown as Ceiling;
    const spreads: { one: Spread[]; many: Spread[] } = { one: [], many: [] };
    for (let i = 1; i <= rounds; i += 1) {
      // Alternated, so load that rises or falls over the run weighs on both alike.
      for (const of of [1, PROCESSES]) {
        context.progress(`round ${i}/${rounds}: ${of} process(es), ${KEYS / of} keys and ${DEPTH / of} in flight each`);
        const shards = (await runGang('coordinator', shardPhases(of), context.quick)) as unknown as Shard[];
        (of === 1 ? spreads.one : spreads.many).push(spreadOf(shards));
      }
    }
    const one = median(spreads.one, (s) => s.callsPerSecond);
    const many = median(spreads.many, (s) => s.callsPerSecond);
    const sandpoolCeiling = ceilingOf(ceiling.sandpool);
    const rawCeiling = ceilingOf(ceiling.raw);
    const ceilingRatio =
      sandpoolCeiling === null || rawCeiling === null ? null : round(sandpoolCeiling / rawCeiling, 3);
    const scale = round(many.callsPerSecond / one.callsPerSecond, 3);
    const busy = (value: number | null): string => (value === null ? 'n/a' : `${num(value * 100)}% of a core`);
    return {
      method: [
        `Ceiling: one process, a pool (default permissions, strict; maxWorkers = keys, spareWorkers 0) with ${KEYS} keys of add(a, b), every key started first; ${DEPTH} calls in flight, each result issuing the next call to the next key, so no two calls in a row share a worker. The raw postMessage echo over ${KEYS} workers (each call to the next worker) takes turns with it, ${SLICES} slices each, ${measureMs} ms in all (after ${warmMs} ms of warm-up). The coordinator's thread's CPU per call (its own schedstat) gives its ceiling: 1 s over it, the calls/s at which that thread would be busy all the time, whatever the cores. The raw echo's ceiling is worked out the same way.`,
        `Several processes: the same ${KEYS} keys split over ${PROCESSES} processes (one per core) by key, key i to process i mod ${PROCESSES}, as a balancer hashing the key gives each key one home; each process runs its own pool and its own callers (${DEPTH} / ${PROCESSES} in flight), no balancer or HTTP in between (pnpm bench:server measures that hop). Every process starts its keys and warms up, then all measure ${measureMs} ms together; against one process with all ${KEYS} keys and ${DEPTH} in flight, alternated, ${rounds} round(s) each, the median round by calls/s.`,
        'The load average at the start and end of each window is kept: on a shared machine the figures move with it, the ratios less.',
      ],
      parameters: { keys: KEYS, depth: DEPTH, processes: PROCESSES, measureMs, warmMs, rounds, slices: SLICES },
      results: { ceiling, spreads, one, many } as unknown as { [key: string]: Json },
      ratios: {
        'sandpool ceiling / raw echo ceiling': ceilingRatio,
        [`${PROCESSES} processes / 1 process, calls/s`]: scale,
      },
      tables: [
        {
          title: `The coordinator's ceiling: ${KEYS} keys, ${DEPTH} in flight, one process`,
          headers: ['system', 'calls/s', "coordinator's thread", 'CPU per call, its thread', 'ceiling (1 s / that)'],
          rows: [ceiling.sandpool, ceiling.raw].map((run, i) => [
            i === 0 ? 'sandpool call' : `raw postMessage over ${KEYS} workers`,
            perSecond(run.callsPerSecond),
            busy(busyOf(run)),
            run.mainCpuUsPerCall === null ? 'n/a' : `${num(run.mainCpuUsPerCall)} µs`,
            perSecond(ceilingOf(run) ?? Number.NaN),
          ]),
          note: `sandpool's ceiling ${ratio(ceilingRatio ?? Number.NaN)} the raw echo's; load ${num(ceiling.load[0])}–${num(ceiling.load[1])}.`,
        },
        {
          title: `${KEYS} keys over ${PROCESSES} processes by key, against one process (median of ${rounds})`,
          headers: ['processes', 'calls/s in all', "each coordinator's thread", 'load average'],
          rows: [one, many].map((spread) => [
            String(spread.processes),
            perSecond(spread.callsPerSecond),
            spread.coordinatorBusy.map(busy).join(', '),
            `${num(spread.load[0])}–${num(spread.load[1])}`,
          ]),
          note: `${PROCESSES} processes ${ratio(scale)} one process's calls/s on ${availableParallelism()} cores: the workers share the same cores.`,
        },
      ],
      chart: {
        title: "The coordinator's ceiling and pools in several processes",
        panels: [
          {
            title: `Ceiling of one coordinator, ${KEYS} keys`,
            unit: 'calls/s',
            groups: [
              { label: 'sandpool', bars: [{ series: 'ceiling', value: sandpoolCeiling ?? Number.NaN }] },
              { label: 'raw postMessage', bars: [{ series: 'ceiling', value: rawCeiling ?? Number.NaN }] },
            ],
          },
          {
            title: `${KEYS} keys in one process or ${PROCESSES}`,
            unit: 'calls/s',
            groups: [one, many].map((spread) => ({
              label: `${spread.processes} process${spread.processes === 1 ? '' : 'es'}`,
              bars: [{ series: 'calls/s in all', value: spread.callsPerSecond }],
            })),
          },
        ],
      },
    };
  },
  phases: {
    ceiling: (context) => ceilingPhase(context),
    ...Object.fromEntries(
      [1, PROCESSES].flatMap((of) =>
        Array.from({ length: of }, (_, shard) => [
          `shard-${shard}-of-${of}`,
          (context: BenchContext) => shardPhase(context, shard, of),
        ]),
      ),
    ),
  },
};
