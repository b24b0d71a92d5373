import { type ChildProcess, spawn } from 'node:child_process';
import { chmod } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { createPool, type Isolation, type SandboxLayers } from 'sandpool';
import {
  median,
  type Pipelined,
  type RpcSystem,
  runPipelined,
  runSequential,
  type Sequential,
} from '../lib/call-loops.js';
import { childPids, type ProcessMemory, processMemory, processTree } from '../lib/children.js';
import { type ColdVariant, poolVariant } from '../lib/cold-variant.js';
import { ms, num, perSecond, ratio } from '../lib/format.js';
import { Latency, type LatencySummary, round } from '../lib/histogram.js';
import { runPhase } from '../lib/phase.js';
import type { BenchContext, Benchmark, BenchReport, Json } from '../lib/report.js';
import { fixture, makeRoot, type TempRoot } from '../lib/temp-root.js';
import { collectGarbage, eachLimited, now, rss, sleep } from '../lib/timing.js';

const DEPTH = 64;
const IDLE_KEYS = 16;
const WARM_KEYS = 2;
/** The OS sandbox issue's goals for a process key (in its sandbox), each against a figure of the same run. */
const GOAL_SPARE_START_OVER_THREAD = 2;
const GOAL_ROUND_TRIP_OVER_THREAD = 1.5;
const GOAL_IDLE_RSS_OVER_BARE = 1.2;
const BARE_PROCESS = fileURLToPath(fixture('bare-process.mjs'));
/** What marks a pool's child in /proc/<pid>/cmdline (in a cell its entry is named by file name alone). */
const POOL_CHILD = 'bundle.js\0';

type Permissions = 'none' | 'strict';
/** A process key in the OS sandbox this host offers (`'auto'`), or with none (`'off'`). */
type Sandbox = 'auto' | 'off';

type IdleKeys = {
  keys: number;
  /**
   * Means over the keys (null for threads, which have no process of their own), each key's
   * processes summed: in a sandbox, bubblewrap, its init and Node.
   */
  child: ProcessMemory | null;
  /** The host's own RSS growth per key (MB): a thread key's whole cost, a process key's pipes and records. */
  hostMbPerKey: number;
};

export const processIsolation: Benchmark = {
  name: 'process',
  title: 'Process isolation beside thread isolation: cold start, round trip, throughput, idle memory',
  async run(context: BenchContext): Promise<BenchReport> {
    const keys = context.quick ? 8 : 20;
    const layers = hostLayers();
    const measureMs = context.quick ? 400 : 1_500;
    const repeats = context.quick ? 1 : 3;

    context.progress(`cold start: ${keys} new keys per variant, interleaved`);
    const cold = await coldStarts(keys);

    context.progress(`round trip and ${DEPTH} in flight: ${repeats} round(s) of ${measureMs} ms`);
    const calls = await callCosts(context, measureMs, repeats);

    context.progress(`idle memory: ${IDLE_KEYS} keys per mode, each in a fresh Node process`);
    const idleThread = (await runPhase('process', 'idle-thread', context.quick)) as IdleKeys;
    const idleProcess = (await runPhase('process', 'idle-process', context.quick)) as IdleKeys;
    const idleUnboxed = (await runPhase('process', 'idle-process-off', context.quick)) as IdleKeys;
    const idleBare = (await runPhase('process', 'idle-bare', context.quick)) as IdleKeys;

    const figures = (name: string) => calls.get(name) as { seq: Sequential; pipe: Pipelined };
    const thread = figures('thread key');
    const proc = figures('process key');
    const unboxed = figures('process key, sandbox off');
    const bare = figures('bare child over IPC');
    const processChild = idleProcess.child as ProcessMemory;
    const unboxedChild = idleUnboxed.child as ProcessMemory;
    const bareChild = idleBare.child as ProcessMemory;
    const ratios = {
      processSpareStartOverThreadSpare: round(cold.p50('process, spare') / cold.p50('thread, spare'), 3),
      processRoundTripOverThread: round(proc.seq.meanUs / thread.seq.meanUs, 3),
      processIdleRssOverBareProcess: round(processChild.rssMb / bareChild.rssMb, 3),
      sandboxSpareStartOverOff: round(cold.p50('process, spare') / cold.p50('process, spare, sandbox off'), 3),
      sandboxColdStartOverOff: round(cold.p50('process, no spare') / cold.p50('process, no spare, sandbox off'), 3),
      sandboxRoundTripOverOff: round(proc.seq.meanUs / unboxed.seq.meanUs, 3),
      sandboxIdleRssOverOff: round(processChild.rssMb / unboxedChild.rssMb, 3),
      processRoundTripOverBareIpc: round(proc.seq.meanUs / bare.seq.meanUs, 3),
      processThroughputOverThread: round(proc.pipe.callsPerSecond / thread.pipe.callsPerSecond, 3),
      processThroughputOverBareIpc: round(proc.pipe.callsPerSecond / bare.pipe.callsPerSecond, 3),
      processIdlePrivateOverBareProcess: round(processChild.privateMb / bareChild.privateMb, 3),
      processIdlePssOverThreadKey: round((processChild.pssMb + idleProcess.hostMbPerKey) / idleThread.hostMbPerKey, 3),
      coldProcessOverThread: round(cold.p50('process, no spare') / cold.p50('thread, no spare'), 3),
      coldProcessSpareOverNoSpare: round(cold.p50('process, spare') / cold.p50('process, no spare'), 3),
    };
    const goals = {
      [`process key's first call with a spare ≤ ${GOAL_SPARE_START_OVER_THREAD}× a thread key's`]:
        ratios.processSpareStartOverThreadSpare <= GOAL_SPARE_START_OVER_THREAD,
      [`process key's round trip ≤ ${GOAL_ROUND_TRIP_OVER_THREAD}× a thread key's`]:
        ratios.processRoundTripOverThread <= GOAL_ROUND_TRIP_OVER_THREAD,
      [`idle process key's RSS ≤ ${GOAL_IDLE_RSS_OVER_BARE}× a bare node child's`]:
        ratios.processIdleRssOverBareProcess <= GOAL_IDLE_RSS_OVER_BARE,
    };
    const met = (goal: boolean): string => (goal ? 'met' : 'not met');
    const memoryRow = (name: string, idle: IdleKeys): string[] => [
      name,
      idle.child === null ? '—' : `${num(idle.child.rssMb)} MB`,
      idle.child === null ? '—' : `${num(idle.child.pssMb)} MB`,
      idle.child === null ? '—' : `${num(idle.child.privateMb)} MB`,
      `${num(idle.hostMbPerKey)} MB`,
    ];
    return {
      method: [
        `Process keys run in the OS sandbox this host offers (sandbox 'auto': ${describeLayers(layers)}) unless a variant says "sandbox off" (none of it: the host's file system and network, uid per swarm still).`,
        `Cold start: ${keys} keys per variant (after ${WARM_KEYS} unrecorded), each a module file never loaded before, variants interleaved key by key; from pool.call(key, "add", [1, 2]) to its result. Each variant rests 200 ms before a key, and a spare variant first waits for its spare. Spares need permissions 'none' (a spare boots before its key, so before its per-key flags are known), so the spare comparison runs with 'none'; the default, strict, is measured beside it. A sandboxed spare is a booted cell whose key's folder is bound in (one mount) when a key takes it.`,
        'bare child: spawn(node, [a module that imports the key and answers over IPC]) with serialization "advanced", to its first answer: what a hand-written child-process pool pays.',
        `Round trip: one call at a time for ${measureMs} ms, mean µs per call; pipelined: ${DEPTH} calls kept in flight (each result issues the next). Median of ${repeats} round(s), systems in turn; the first round warms up each. thread key and process keys: one pool each (maxWorkers 1, spareWorkers 0, permissions strict, the default); bare child over IPC: the same plain child as above, {id, a, b} out and {id, value} back.`,
        `Idle memory: ${IDLE_KEYS} keys that each answered one call, then 1 s of rest, in a fresh Node process per mode (--expose-gc, gc before each reading). Per key, summed over its processes (in a sandbox: bubblewrap, its init and Node), from /proc/<pid>/smaps_rollup: RSS (counts the Node binary's pages, which every process shares), PSS (shared pages split between the processes mapping them) and private (what the machine frees when the key ends). Host per key: the host's RSS growth over the keys, divided by them: for a thread key that is its whole cost.`,
        'Process keys run as their swarm’s uid when the benchmark runs as root, so the temp root is made world-readable.',
      ],
      parameters: { keys, warmKeys: WARM_KEYS, measureMs, repeats, depth: DEPTH, idleKeys: IDLE_KEYS },
      results: {
        sandbox: { ...layers, missing: layers.missing.map((entry) => ({ ...entry })) },
        coldStart: Object.fromEntries(cold.summaries),
        calls: Object.fromEntries([...calls].map(([name, entry]) => [name, { ...entry }])),
        idle: { thread: idleThread, process: idleProcess, processSandboxOff: idleUnboxed, bareProcess: idleBare },
        goals,
      },
      ratios,
      tables: [
        {
          title: 'First call to a new key',
          headers: ['variant', 'p50', 'p90', 'p99', 'mean'],
          rows: [...cold.summaries].map(([name, s]) => [name, ms(s.p50), ms(s.p90), ms(s.p99), ms(s.mean)]),
          note: `process key with a spare / thread key with a spare: ${ratio(ratios.processSpareStartOverThreadSpare)} (goal ≤ ${GOAL_SPARE_START_OVER_THREAD}×: ${met(goals[`process key's first call with a spare ≤ ${GOAL_SPARE_START_OVER_THREAD}× a thread key's`] as boolean)}); sandbox / off: ${ratio(ratios.sandboxSpareStartOverOff)} with a spare, ${ratio(ratios.sandboxColdStartOverOff)} without; process / thread, no spare: ${ratio(ratios.coldProcessOverThread)}.`,
        },
        {
          title: 'Warm calls on one key',
          headers: ['system', 'round trip', 'p99', `${DEPTH} in flight`],
          rows: [...calls].map(([name, { seq, pipe }]) => [
            name,
            `${num(seq.meanUs)} µs`,
            `${num(seq.latency.p99 * 1000)} µs`,
            perSecond(pipe.callsPerSecond),
          ]),
          note: `process key round trip: ${ratio(ratios.processRoundTripOverThread)} a thread key's (goal ≤ ${GOAL_ROUND_TRIP_OVER_THREAD}×: ${met(goals[`process key's round trip ≤ ${GOAL_ROUND_TRIP_OVER_THREAD}× a thread key's`] as boolean)}), ${ratio(ratios.sandboxRoundTripOverOff)} the same without a sandbox, ${ratio(ratios.processRoundTripOverBareIpc)} the bare child's; throughput ${ratio(ratios.processThroughputOverThread)} a thread key's, ${ratio(ratios.processThroughputOverBareIpc)} the bare child's.`,
        },
        {
          title: `Idle key memory (${IDLE_KEYS} keys per mode)`,
          headers: ['mode', 'RSS per key', 'PSS per key', 'private per key', 'host RSS per key'],
          rows: [
            memoryRow('thread key', idleThread),
            memoryRow('process key', idleProcess),
            memoryRow('process key, sandbox off', idleUnboxed),
            memoryRow('bare child process', idleBare),
          ],
          note: `process key RSS / bare child's: ${ratio(ratios.processIdleRssOverBareProcess)} (goal ≤ ${GOAL_IDLE_RSS_OVER_BARE}×: ${met(goals[`idle process key's RSS ≤ ${GOAL_IDLE_RSS_OVER_BARE}× a bare node child's`] as boolean)}); sandbox / off: ${ratio(ratios.sandboxIdleRssOverOff)}; private / bare child's: ${ratio(ratios.processIdlePrivateOverBareProcess)}; a process key's PSS plus its host share over a thread key's: ${ratio(ratios.processIdlePssOverThreadKey)}.`,
        },
      ],
      chart: {
        title: 'Process isolation beside thread isolation',
        panels: [
          {
            title: 'First call to a new key, p50',
            unit: 'ms',
            groups: [...cold.summaries].map(([name, s]) => ({ label: name, bars: [{ series: 'p50', value: s.p50 }] })),
          },
          {
            title: 'Warm round trip',
            unit: 'µs',
            groups: [...calls].map(([name, { seq }]) => ({
              label: name,
              bars: [{ series: 'round trip', value: seq.meanUs }],
            })),
          },
          {
            title: 'Idle key memory',
            unit: 'MB',
            groups: [
              { label: 'thread key', bars: [{ series: 'host RSS per key', value: idleThread.hostMbPerKey }] },
              ...(
                [
                  ['process key', processChild],
                  ['process key, sandbox off', unboxedChild],
                  ['bare child', bareChild],
                ] as const
              ).map(([label, child]) => ({
                label,
                bars: [
                  { series: 'RSS per key', value: child.rssMb },
                  { series: 'PSS per key', value: child.pssMb },
                  { series: 'private per key', value: child.privateMb },
                ],
              })),
            ],
          },
        ],
      },
    };
  },
  phases: {
    'idle-thread': () => withRoot(IDLE_STEMS, (tree) => idleKeys(tree, 'thread', 'auto')),
    'idle-process': () => withRoot(IDLE_STEMS, (tree) => idleKeys(tree, 'process', 'auto')),
    'idle-process-off': () => withRoot(IDLE_STEMS, (tree) => idleKeys(tree, 'process', 'off')),
    'idle-bare': () => withRoot(IDLE_STEMS, idleBareChildren),
  },
};

const IDLE_STEMS = Array.from({ length: IDLE_KEYS }, (_, i) => `idle${i}`);

/** The layers a process key gets here, as a pool reports them. */
function hostLayers(): SandboxLayers {
  const pool = createPool({ root: '/', isolation: 'process', spareWorkers: 0 });
  const layers = pool.stats().sandbox as SandboxLayers;
  void pool.close();
  return layers;
}

function describeLayers(layers: SandboxLayers): string {
  const on = [
    layers.namespaces ? 'namespaces (network: loopback)' : null,
    layers.uidPerSwarm ? 'a uid per swarm' : null,
    layers.cgroups === null ? null : `cgroup ${layers.cgroups}`,
  ].filter((layer) => layer !== null);
  const off = layers.missing.map(({ layer, reason }) => `${layer} missing: ${reason}`);
  return [...on, ...off].join(', ') || 'none';
}

/** A root every child can read: process keys drop to another uid when the host is root. */
async function openRoot(stems: readonly string[]): Promise<TempRoot> {
  const tree = await makeRoot(stems.map((stem) => ({ swarm: 'proc', stem, fixture: 'agent.mjs' })));
  await chmod(tree.root, 0o755);
  return tree;
}

async function withRoot<T extends Json>(stems: readonly string[], phase: (tree: TempRoot) => Promise<T>): Promise<T> {
  const tree = await openRoot(stems);
  try {
    return await phase(tree);
  } finally {
    await tree.cleanup();
  }
}

async function coldStarts(keys: number): Promise<{
  summaries: Map<string, LatencySummary>;
  p50(name: string): number;
}> {
  const shapes: Array<{
    name: string;
    isolation: Isolation;
    spares: number;
    permissions: Permissions;
    sandbox: Sandbox;
  }> = [
    { name: 'thread, no spare', isolation: 'thread', spares: 0, permissions: 'none', sandbox: 'auto' },
    { name: 'thread, spare', isolation: 'thread', spares: 1, permissions: 'none', sandbox: 'auto' },
    { name: 'process, no spare', isolation: 'process', spares: 0, permissions: 'none', sandbox: 'auto' },
    { name: 'process, spare', isolation: 'process', spares: 1, permissions: 'none', sandbox: 'auto' },
    { name: 'process, no spare, sandbox off', isolation: 'process', spares: 0, permissions: 'none', sandbox: 'off' },
    { name: 'process, spare, sandbox off', isolation: 'process', spares: 1, permissions: 'none', sandbox: 'off' },
    { name: 'process, strict', isolation: 'process', spares: 0, permissions: 'strict', sandbox: 'auto' },
  ];
  const total = keys + WARM_KEYS;
  const names = [...shapes.map((shape) => shape.name), 'bare child'];
  const tree = await openRoot(names.flatMap((_, v) => Array.from({ length: total }, (_, i) => `cold${v}-${i}`)));
  const variants: ColdVariant[] = [];
  const latencies = names.map(() => new Latency());
  try {
    for (const shape of shapes) {
      const pool = createPool({
        root: tree.root,
        maxWorkers: total + 1,
        spareWorkers: shape.spares,
        idleTimeoutMs: 0,
        isolation: shape.isolation,
        permissions: shape.permissions,
        sandbox: shape.sandbox,
      });
      variants.push(poolVariant(shape.name, pool, 'proc', shape.spares));
    }
    variants.push(bareChildVariant(tree));
    for (let i = 0; i < total; i += 1) {
      for (const [v, variant] of variants.entries()) {
        await variant.settle();
        await sleep(200);
        const elapsed = await variant.firstCall(`cold${v}-${i}`);
        if (i >= WARM_KEYS) latencies[v]?.recordMs(elapsed);
      }
    }
  } finally {
    for (const variant of variants) await variant.close();
    await tree.cleanup();
  }
  const summaries = new Map(names.map((name, v) => [name, (latencies[v] as Latency).summaryMs()]));
  return { summaries, p50: (name) => summaries.get(name)?.p50 ?? Number.NaN };
}

function bareChildVariant(tree: TempRoot): ColdVariant {
  return {
    name: 'bare child',
    firstCall: async (stem) => {
      const t0 = now();
      const child = await bareChild(tree.url('proc', stem));
      const value = await child.add(1, 2);
      const elapsed = now() - t0;
      await child.close();
      if (value !== 3) throw new Error(`bare child ${stem}: add(1, 2) gave ${value}`);
      return elapsed;
    },
    settle: async () => {},
    close: async () => {},
  };
}

/** A plain child over IPC, ready once it has imported `url`. */
async function bareChild(url: string): Promise<RpcSystem & { child: ChildProcess }> {
  const child = spawn(process.execPath, [BARE_PROCESS, url], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    serialization: 'advanced',
    env: {},
  });
  const pending = new Map<number, (value: number) => void>();
  let nextId = 0;
  await new Promise<void>((resolve, reject) => {
    child.once('message', () => resolve());
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`bare child exited ${code} before it was ready`)));
  });
  child.on('message', (message: { id: number; value: number }) => {
    const resolve = pending.get(message.id);
    pending.delete(message.id);
    resolve?.(message.value);
  });
  return {
    name: 'bare child over IPC',
    child,
    add: (a, b) =>
      new Promise((resolve) => {
        const id = nextId++;
        pending.set(id, resolve);
        child.send({ id, a, b });
      }),
    close: async () => {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGKILL');
      await exited;
    },
  };
}

async function callCosts(
  context: BenchContext,
  measureMs: number,
  repeats: number,
): Promise<Map<string, { seq: Sequential; pipe: Pipelined }>> {
  const tree = await openRoot(['thread', 'process', 'unboxed', 'bare']);
  const systems: RpcSystem[] = [];
  const runs = new Map<string, { seq: Sequential[]; pipe: Pipelined[] }>();
  const pools = [
    { name: 'thread key', stem: 'thread', isolation: 'thread', sandbox: 'auto' },
    { name: 'process key', stem: 'process', isolation: 'process', sandbox: 'auto' },
    { name: 'process key, sandbox off', stem: 'unboxed', isolation: 'process', sandbox: 'off' },
  ] as const;
  try {
    for (const { name, stem, isolation, sandbox } of pools) {
      const pool = createPool({
        root: tree.root,
        maxWorkers: 1,
        spareWorkers: 0,
        idleTimeoutMs: 0,
        isolation,
        sandbox,
      });
      systems.push({
        name,
        add: (a, b) => pool.call<number>(`proc/${stem}`, 'add', [a, b]),
        close: () => pool.close(),
      });
    }
    systems.push(await bareChild(tree.url('proc', 'bare')));
    for (const system of systems) {
      if ((await system.add(2, 3)) !== 5) throw new Error(`${system.name}: add(2, 3) is not 5`);
      runs.set(system.name, { seq: [], pipe: [] });
    }
    for (let repeat = 1; repeat <= repeats; repeat += 1) {
      for (const system of systems) {
        context.progress(`round ${repeat}/${repeats}: ${system.name}`);
        const into = runs.get(system.name) as { seq: Sequential[]; pipe: Pipelined[] };
        if (repeat === 1) await runSequential(system, measureMs / 2);
        into.seq.push(await runSequential(system, measureMs));
        if (repeat === 1) await runPipelined(system, DEPTH, measureMs / 2);
        into.pipe.push(await runPipelined(system, DEPTH, measureMs));
      }
    }
  } finally {
    for (const system of systems) await system.close();
    await tree.cleanup();
  }
  return new Map(
    [...runs].map(([name, { seq, pipe }]) => [
      name,
      { seq: median(seq, (run) => run.meanUs), pipe: median(pipe, (run) => run.callsPerSecond) },
    ]),
  );
}

async function settledRss(): Promise<number> {
  collectGarbage();
  await sleep(1_000);
  collectGarbage();
  return rss();
}

/** Means over the keys, each key's processes (the child and all below it) summed. */
function meanMemory(pids: readonly number[]): ProcessMemory {
  const readings = pids.map((pid) => {
    const each = processTree(pid).map(processMemory);
    const sum = (field: keyof ProcessMemory): number => each.reduce((total, reading) => total + reading[field], 0);
    return { rssMb: sum('rssMb'), pssMb: sum('pssMb'), privateMb: sum('privateMb') };
  });
  const mean = (field: keyof ProcessMemory): number =>
    round(readings.reduce((sum, reading) => sum + reading[field], 0) / readings.length, 3);
  return { rssMb: mean('rssMb'), pssMb: mean('pssMb'), privateMb: mean('privateMb') };
}

async function idleKeys(tree: TempRoot, isolation: Isolation, sandbox: Sandbox): Promise<IdleKeys> {
  const pool = createPool({
    root: tree.root,
    maxWorkers: IDLE_KEYS + 1,
    spareWorkers: 0,
    idleTimeoutMs: 0,
    isolation,
    sandbox,
  });
  try {
    const before = await settledRss();
    await eachLimited(IDLE_STEMS, 4, async (stem) => {
      await pool.call(`proc/${stem}`, 'add', [1, 2]);
    });
    if (pool.stats().workers !== IDLE_KEYS)
      throw new Error(`expected ${IDLE_KEYS} workers, ${pool.stats().workers} alive`);
    const after = await settledRss();
    const pids = childPids(POOL_CHILD);
    if (isolation === 'process' && pids.length !== IDLE_KEYS)
      throw new Error(`expected ${IDLE_KEYS} child processes, found ${pids.length}`);
    return {
      keys: IDLE_KEYS,
      child: isolation === 'process' ? meanMemory(pids) : null,
      hostMbPerKey: round((after - before) / IDLE_KEYS / 2 ** 20, 3),
    };
  } finally {
    await pool.close();
  }
}

async function idleBareChildren(tree: TempRoot): Promise<IdleKeys> {
  const children: Array<{ child: ChildProcess; close(): Promise<void> }> = [];
  try {
    const before = await settledRss();
    await eachLimited(IDLE_STEMS, 4, async (stem) => {
      const child = await bareChild(tree.url('proc', stem));
      children.push(child);
      await child.add(1, 2);
    });
    const after = await settledRss();
    return {
      keys: IDLE_KEYS,
      child: meanMemory(children.map(({ child }) => child.pid as number)),
      hostMbPerKey: round((after - before) / IDLE_KEYS / 2 ** 20, 3),
    };
  } finally {
    await Promise.all(children.map((child) => child.close()));
  }
}
