import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import { releaseProxy, wrap } from 'comlink/dist/esm/comlink.mjs';
import nodeEndpoint from 'comlink/dist/esm/node-adapter.mjs';
import { Piscina } from 'piscina';
import { createPool } from 'sandpool';
import {
  median,
  type Pipelined,
  type RpcSystem,
  runPipelined,
  runPipelinedInterleaved,
  runSequentialInterleaved,
  type Sequential,
} from '../lib/call-loops.js';
import { num, perSecond, ratio, us } from '../lib/format.js';
import { round } from '../lib/histogram.js';
import type { BenchContext, Benchmark, BenchReport } from '../lib/report.js';
import { fixture, makeRoot } from '../lib/temp-root.js';

const DEPTHS = [64, 1024] as const;
/** Calls spread over this many keys, against the raw echo over as many workers. */
const SPREADS = [8, 64] as const;
/** In flight while calls spread: each result issues the next call, to the next key. */
const SPREAD_DEPTH = 1024;
/** The default pool: tracing on, @opentelemetry/api loaded, no provider registered. */
const TRACED = 'sandpool call';
/** The same calls on a pool with tracing off: what a call costs with no telemetry at all. */
const UNTRACED = 'sandpool call, tracing off';
/** The same calls with a `call` listener: every call observed, its record made and its CPU read. */
const RECORDED = 'sandpool call, call records';
/** Sequential calls run in this many turns per system, interleaved (runSequentialInterleaved). */
const SLICES = 10;

interface AddAgent {
  add(a: number, b: number): number;
}

export const rpc: Benchmark = {
  name: 'rpc',
  title: 'RPC cost: one key, add(a, b)',
  async run(context: BenchContext): Promise<BenchReport> {
    const measureMs = context.quick ? 400 : 1_500;
    const warmMs = context.quick ? 200 : 500;
    const repeats = context.quick ? 1 : 3;
    const spreadKeys = Array.from({ length: Math.max(...SPREADS) }, (_, i) => `spread/k${i}`);
    const tree = await makeRoot([
      { swarm: 'rpc', stem: 'adder', fixture: 'agent.mjs' },
      ...spreadKeys.map((key) => ({ swarm: 'spread', stem: key.slice('spread/'.length), fixture: 'agent.mjs' })),
    ]);
    /** Per spread: sandpool's calls over its keys, and the raw echo over as many workers. */
    const spreads = new Map<number, RpcSystem[]>();
    const spreadPipelined = new Map<string, Pipelined[]>();
    const systems: RpcSystem[] = [];
    /** The default pool's calls beside the same calls with tracing off, and with call records. */
    const telemetrySystems: RpcSystem[] = [];
    // One call at a time by construction (a single argument slot): measured sequentially only.
    const floors: RpcSystem[] = [];
    const sequential = new Map<string, Sequential[]>();
    const pipelined = new Map<string, Pipelined[]>();
    const telemetryPipelined = new Map<string, Pipelined[]>();
    try {
      const options = { root: tree.root, maxWorkers: 1, spareWorkers: 0, idleTimeoutMs: 0 };
      const pool = createPool(options);
      const agent = pool.remote<AddAgent>('rpc/adder');
      const untraced = createPool({ ...options, tracing: false });
      const recorded = createPool({ ...options, tracing: false });
      let records = 0;
      recorded.on('call', () => {
        records += 1;
      });
      const traced: RpcSystem = {
        name: TRACED,
        add: (a, b) => pool.call<number>('rpc/adder', 'add', [a, b]),
        close: async () => {},
      };
      telemetrySystems.push(
        traced,
        {
          name: UNTRACED,
          add: (a, b) => untraced.call<number>('rpc/adder', 'add', [a, b]),
          close: () => untraced.close(),
        },
        {
          name: RECORDED,
          add: (a, b) => recorded.call<number>('rpc/adder', 'add', [a, b]),
          close: async () => {
            await recorded.close();
            if (records === 0) throw new Error(`${RECORDED}: no record was made`);
          },
        },
      );
      systems.push(
        traced,
        { name: 'sandpool remote', add: (a, b) => agent.add(a, b), close: () => pool.close() },
        rawEcho(),
        comlink(),
        piscinaPerKey(),
      );
      floors.push(doorbell('doorbell, waitAsync', false), doorbell('doorbell, blocking worker', true));
      for (const keys of SPREADS) {
        const spread = createPool({ ...options, maxWorkers: keys });
        const pair: RpcSystem[] = [
          {
            name: spreadName('sandpool call', keys),
            add: (a, b) => spread.call<number>(spreadKeys[a % keys] as string, 'add', [a, b]),
            close: () => spread.close(),
          },
          rawEcho(keys),
        ];
        spreads.set(keys, pair);
        for (const system of pair) {
          // Every key started before any window: a window measures calls, not starts.
          const sums = await Promise.all(Array.from({ length: keys }, (_, i) => system.add(i, 1)));
          if (sums.some((sum, i) => sum !== i + 1)) throw new Error(`${system.name}: a wrong sum`);
          spreadPipelined.set(system.name, []);
        }
      }
      const extra = telemetrySystems.slice(1);
      for (const system of [...systems, ...extra, ...floors]) {
        if ((await system.add(2, 3)) !== 5) throw new Error(`${system.name}: add(2, 3) is not 5`);
        sequential.set(system.name, []);
      }
      for (const system of systems) pipelined.set(system.name, []);
      for (const system of telemetrySystems) telemetryPipelined.set(system.name, []);
      for (let repeat = 1; repeat <= repeats; repeat += 1) {
        const lone = [...systems, ...extra, ...floors];
        context.progress(`round ${repeat}/${repeats}: sequential, interleaved`);
        if (repeat === 1) await runSequentialInterleaved(lone, warmMs / SLICES, SLICES);
        for (const [name, run] of await runSequentialInterleaved(lone, measureMs / SLICES, SLICES)) {
          sequential.get(name)?.push(run);
        }
        for (const system of systems) {
          context.progress(`round ${repeat}/${repeats}: ${system.name}, pipelined`);
          for (const depth of DEPTHS) {
            if (repeat === 1) await runPipelined(system, depth, warmMs);
            pipelined.get(system.name)?.push(await runPipelined(system, depth, measureMs));
          }
        }
        for (const [keys, pair] of spreads) {
          context.progress(`round ${repeat}/${repeats}: spread over ${keys} keys, interleaved`);
          if (repeat === 1) await runPipelinedInterleaved(pair, SPREAD_DEPTH, warmMs / SLICES, SLICES);
          const runs = await runPipelinedInterleaved(pair, SPREAD_DEPTH, measureMs / SLICES, SLICES);
          for (const [name, run] of runs) spreadPipelined.get(name)?.push(run);
        }
        context.progress(`round ${repeat}/${repeats}: telemetry, pipelined, interleaved`);
        for (const depth of DEPTHS) {
          if (repeat === 1) await runPipelinedInterleaved(telemetrySystems, depth, warmMs / SLICES, SLICES);
          const runs = await runPipelinedInterleaved(telemetrySystems, depth, measureMs / SLICES, SLICES);
          for (const [name, run] of runs) telemetryPipelined.get(name)?.push(run);
        }
      }
    } finally {
      const spreadSystems = [...spreads.values()].flat();
      for (const system of [...floors, ...telemetrySystems.slice(1), ...systems, ...spreadSystems].reverse()) {
        await system.close();
      }
      await tree.cleanup();
    }

    // Median of the rounds: one round disturbed by the machine does not decide the figure.
    const seq = new Map([...sequential].map(([name, runs]) => [name, median(runs, (r) => r.meanUs)]));
    const pipe = new Map(
      [...pipelined].map(([name, runs]) => [
        name,
        DEPTHS.map((depth) =>
          median(
            runs.filter((r) => r.depth === depth),
            (r) => r.callsPerSecond,
          ),
        ),
      ]),
    );
    const names = systems.map((system) => system.name);
    const raw = 'raw postMessage';
    const rawSeq = seq.get(raw) as Sequential;
    const rawPipe = pipe.get(raw) as Pipelined[];
    const floorNames = floors.map((floor) => floor.name);
    const floorSeq = seq.get(floorNames[0] ?? '') as Sequential;
    const ratios: Record<string, Record<string, number | null>> = {};
    for (const name of names) {
      const s = seq.get(name) as Sequential;
      const p = pipe.get(name) as Pipelined[];
      const entry: Record<string, number | null> = {
        roundTripOverRaw: round(s.meanUs / rawSeq.meanUs, 3),
        roundTripP50OverRaw: round(s.latency.p50 / rawSeq.latency.p50, 3),
        roundTripOverFloor: round(s.meanUs / floorSeq.meanUs, 3),
      };
      DEPTHS.forEach((depth, i) => {
        entry[`throughputOverRaw@${depth}`] = round((p[i]?.callsPerSecond ?? 0) / (rawPipe[i]?.callsPerSecond ?? 1), 3);
        const cpu = p[i]?.mainCpuUsPerCall ?? null;
        const rawCpu = rawPipe[i]?.mainCpuUsPerCall ?? null;
        entry[`mainCpuOverRaw@${depth}`] = cpu === null || rawCpu === null ? null : round(cpu / rawCpu, 3);
      });
      ratios[name] = entry;
    }
    for (const name of floorNames) {
      ratios[name] = { roundTripOverRaw: round((seq.get(name) as Sequential).meanUs / rawSeq.meanUs, 3) };
    }
    // Telemetry's cost, each as a cost ratio against tracing off (1.0 = free; above 1 costs).
    const telemetryPipe = new Map(
      [...telemetryPipelined].map(([name, runs]) => [
        name,
        DEPTHS.map((depth) =>
          median(
            runs.filter((r) => r.depth === depth),
            (r) => r.callsPerSecond,
          ),
        ),
      ]),
    );
    const telemetry = (name: string): Record<string, number | null> => {
      const s = seq.get(name) as Sequential;
      const p = telemetryPipe.get(name) as Pipelined[];
      const off = seq.get(UNTRACED) as Sequential;
      const offPipe = telemetryPipe.get(UNTRACED) as Pipelined[];
      const entry: Record<string, number | null> = {
        roundTrip: round(s.meanUs / off.meanUs, 3),
        roundTripP50: round(s.latency.p50 / off.latency.p50, 3),
        mainCpuSequential:
          s.mainCpuUsPerCall === null || off.mainCpuUsPerCall === null
            ? null
            : round(s.mainCpuUsPerCall / off.mainCpuUsPerCall, 3),
      };
      DEPTHS.forEach((depth, i) => {
        entry[`throughput@${depth}`] = round((offPipe[i]?.callsPerSecond ?? 0) / (p[i]?.callsPerSecond ?? 1), 3);
        const cpu = p[i]?.mainCpuUsPerCall ?? null;
        const offCpu = offPipe[i]?.mainCpuUsPerCall ?? null;
        entry[`mainCpu@${depth}`] = cpu === null || offCpu === null ? null : round(cpu / offCpu, 3);
      });
      return entry;
    };
    const telemetryCost: Record<string, Record<string, number | null>> = {
      [TRACED]: telemetry(TRACED),
      [RECORDED]: telemetry(RECORDED),
    };
    // Calls spread over many keys against the raw echo over as many workers.
    const spreadMedian = (name: string): Pipelined =>
      median(spreadPipelined.get(name) as Pipelined[], (r) => r.callsPerSecond);
    const spreadRatios: Record<string, Record<string, number | null>> = {};
    for (const keys of SPREADS) {
      const mine = spreadMedian(spreadName('sandpool call', keys));
      const raw = spreadMedian(spreadName('raw postMessage', keys));
      spreadRatios[`${keys} keys`] = {
        throughputOverRaw: round(mine.callsPerSecond / raw.callsPerSecond, 3),
        mainCpuOverRaw:
          mine.mainCpuUsPerCall === null || raw.mainCpuUsPerCall === null
            ? null
            : round(mine.mainCpuUsPerCall / raw.mainCpuUsPerCall, 3),
        processCpuOverRaw: round(mine.processCpuUsPerCall / raw.processCpuUsPerCall, 3),
      };
    }
    const cpu = (value: number | null | undefined): string =>
      value === null || value === undefined ? 'n/a' : `${num(value)} µs`;
    return {
      method: [
        `sequential: one call at a time; every system in turn, ${SLICES} turns of a tenth of the measure window each, so that the machine's noise falls on all alike; mean is elapsed time over calls (µs per call).`,
        `pipelined: ${DEPTHS.join(' and ')} calls kept in flight (each result issues the next) for the window; calls/s counts to the last result.`,
        'main-thread CPU: the main thread\'s own run time (Linux /proc/self/task/<pid>/schedstat) over the pipelined window (for the telemetry table\'s @1, over the sequential calls), divided by the calls; it includes structured clone of arguments and results on the main thread. process.cpuUsage() is process-wide (it counts the worker thread too), so it is shown apart as "process CPU".',
        'raw postMessage: a worker answering {id, a, b} with {id, value}, callers matched by a Map of pending ids: one message each way per call.',
        "doorbell: no message at all, the floor between two threads. a, b and the result sit in a SharedArrayBuffer; the host stores a call number and Atomics.notify()s, then awaits Atomics.waitAsync() on the answer number. The waitAsync worker awaits Atomics.waitAsync() too, so its event loop keeps turning (what an agent's timers need); the blocking worker sits in Atomics.wait() and could run nothing else. One call at a time, so sequential only.",
        'comlink: wrap(nodeEndpoint(worker)) against expose(api, nodeEndpoint(parentPort)), the ESM build.',
        'piscina per key: one pool for the key, minThreads = maxThreads = 1, concurrentTasksPerWorker 64.',
        'sandpool call / remote: one pool, one key (maxWorkers 1, spareWorkers 0); remote is pool.remote<T>(key).add(a, b).',
        `telemetry: "${TRACED}" is the default pool, which looks for a registered OpenTelemetry provider (the API is installed; none is registered); "${UNTRACED}" is the same key on a pool with tracing: false; "${RECORDED}" a pool with a \`call\` listener. Their sequential calls are interleaved with every system's; their pipelined windows with each other's (${SLICES} turns of a tenth of the measure window each), so that the machine's noise falls on the three alike.`,
        `spread: ${SPREAD_DEPTH} calls in flight, each to the next of ${SPREADS.join(' or ')} keys in turn (a pool with maxWorkers = keys, every key started first), against the raw echo over as many workers (each call to the next worker); the two take turns, ${SLICES} slices of a tenth of the measure window each. CPU per call as for pipelined calls.`,
        `Each figure is the median of ${repeats} round(s); a round runs every system in turn, ${measureMs} ms per measure (the first round after ${warmMs} ms of warm-up per measure).`,
      ],
      parameters: { measureMs, warmMs, repeats, depths: [...DEPTHS], spreads: [...SPREADS], spreadDepth: SPREAD_DEPTH },
      results: Object.fromEntries([
        ...names.map((name) => [
          name,
          {
            sequential: { ...(seq.get(name) as Sequential) },
            pipelined: (pipe.get(name) as Pipelined[]).map((p) => ({ ...p })),
          },
        ]),
        ...floorNames.map((name) => [name, { sequential: { ...(seq.get(name) as Sequential) } }]),
        [
          'spread',
          Object.fromEntries(
            [...spreadPipelined.keys()].map((name) => [name, { pipelinedInterleaved: { ...spreadMedian(name) } }]),
          ),
        ],
        [
          'telemetry',
          Object.fromEntries(
            [TRACED, UNTRACED, RECORDED].map((name) => [
              name,
              {
                sequential: { ...(seq.get(name) as Sequential) },
                pipelinedInterleaved: (telemetryPipe.get(name) as Pipelined[]).map((p) => ({ ...p })),
              },
            ]),
          ),
        ],
      ]),
      ratios: { ...ratios, spread: spreadRatios, telemetryCost, otelApiLoaded: apiLoaded() },
      tables: [
        {
          title: 'Telemetry: cost against the same calls with tracing off (1.00× is free; lower is better)',
          headers: [
            'system',
            'round trip',
            'p50',
            ...DEPTHS.map((d) => `time per call @${d}`),
            'main CPU @1',
            ...DEPTHS.map((d) => `main CPU @${d}`),
          ],
          rows: [TRACED, RECORDED].map((name) => {
            const r = telemetryCost[name] as Record<string, number | null>;
            const show = (value: number | null | undefined): string =>
              value === null || value === undefined ? 'n/a' : ratio(value);
            return [
              name,
              show(r.roundTrip),
              show(r.roundTripP50),
              ...DEPTHS.map((d) => show(r[`throughput@${d}`])),
              show(r.mainCpuSequential),
              ...DEPTHS.map((d) => show(r[`mainCpu@${d}`])),
            ];
          }),
          note: `${TRACED}: the default, @opentelemetry/api ${apiLoaded() ? 'loaded' : 'NOT loadable'}, no provider registered. ${RECORDED}: a call listener, so every call is observed (record, CPU read as replies arrive). Time per call: the inverse of calls/s. Main CPU @1: of the sequential calls (one in flight), each with a CPU reading of its own.`,
        },
        {
          title: 'Round trip and pipelined throughput',
          headers: ['system', 'round trip', 'p50', 'p99', ...DEPTHS.map((d) => `${d} in flight`)],
          rows: names.map((name) => {
            const s = seq.get(name) as Sequential;
            const p = pipe.get(name) as Pipelined[];
            return [
              name,
              `${num(s.meanUs)} µs`,
              us(s.latency.p50),
              us(s.latency.p99),
              ...p.map((x) => perSecond(x.callsPerSecond)),
            ];
          }),
          note: 'round trip: mean of sequential calls; p50/p99 of the same calls. In flight: calls per second.',
        },
        {
          title: 'Against the raw postMessage echo (throughput: higher is better; round trip and CPU: lower is better)',
          headers: [
            'system',
            'round trip / raw',
            ...DEPTHS.map((d) => `calls/s @${d} / raw`),
            ...DEPTHS.map((d) => `CPU @${d} / raw`),
          ],
          rows: names.map((name) => {
            const r = ratios[name] as Record<string, number | null>;
            const show = (value: number | null | undefined): string =>
              value === null || value === undefined ? 'n/a' : ratio(value);
            return [
              name,
              show(r.roundTripOverRaw),
              ...DEPTHS.map((d) => show(r[`throughputOverRaw@${d}`])),
              ...DEPTHS.map((d) => show(r[`mainCpuOverRaw@${d}`])),
            ];
          }),
        },
        {
          title: 'A lone call against the raw echo and the floor (lower is better)',
          headers: [
            'system',
            'round trip',
            'p50',
            'p99',
            'round trip / raw',
            'p50 / raw',
            `round trip / ${floorNames[0]}`,
          ],
          rows: [...names.filter((name) => name.startsWith('sandpool')), raw, ...floorNames].map((name) => {
            const s = seq.get(name) as Sequential;
            return [
              name,
              `${num(s.meanUs)} µs`,
              us(s.latency.p50),
              us(s.latency.p99),
              ratio(s.meanUs / rawSeq.meanUs),
              ratio(s.latency.p50 / rawSeq.latency.p50),
              ratio(s.meanUs / floorSeq.meanUs),
            ];
          }),
          note: 'sequential calls, one in flight. The doorbells move no message: what is left is the cost of waking the other thread.',
        },
        {
          title: `Calls spread over many keys, ${SPREAD_DEPTH} in flight, against the raw echo over as many workers`,
          headers: [
            'keys',
            'sandpool calls/s',
            'raw calls/s',
            'calls/s / raw',
            'main CPU',
            'raw main CPU',
            'process CPU',
            'raw process CPU',
            'process CPU / raw',
          ],
          rows: SPREADS.map((keys) => {
            const mine = spreadMedian(spreadName('sandpool call', keys));
            const raw = spreadMedian(spreadName('raw postMessage', keys));
            const r = spreadRatios[`${keys} keys`] as Record<string, number | null>;
            return [
              String(keys),
              perSecond(mine.callsPerSecond),
              perSecond(raw.callsPerSecond),
              ratio(r.throughputOverRaw as number),
              cpu(mine.mainCpuUsPerCall),
              cpu(raw.mainCpuUsPerCall),
              cpu(mine.processCpuUsPerCall),
              cpu(raw.processCpuUsPerCall),
              ratio(r.processCpuOverRaw as number),
            ];
          }),
          note: 'CPU per call: main thread (the coordinator) and process (every thread, the workers included). Calls/s: higher is better; CPU: lower is better.',
        },
        {
          title: 'CPU per call while pipelined',
          headers: ['system', ...DEPTHS.map((d) => `main thread @${d}`), ...DEPTHS.map((d) => `process @${d}`)],
          rows: names.map((name) => {
            const p = pipe.get(name) as Pipelined[];
            return [name, ...p.map((x) => cpu(x.mainCpuUsPerCall)), ...p.map((x) => cpu(x.processCpuUsPerCall))];
          }),
          note: "main thread: the coordinator's CPU per call (schedstat of the main thread). process: all threads, the worker's included.",
        },
      ],
      chart: {
        title: 'RPC cost: one key, add(a, b)',
        panels: [
          {
            title: 'Pipelined throughput',
            unit: 'calls/s',
            groups: names.map((name) => ({
              label: name,
              bars: (pipe.get(name) as Pipelined[]).map((p) => ({
                series: `${p.depth} in flight`,
                value: p.callsPerSecond,
              })),
            })),
          },
          {
            title: 'Sequential round trip',
            unit: 'µs',
            groups: names.map((name) => ({
              label: name,
              bars: [{ series: 'round trip', value: (seq.get(name) as Sequential).meanUs }],
            })),
          },
          {
            title: 'Main-thread CPU per call, 1,024 in flight',
            unit: 'µs',
            groups: names.map((name) => ({
              label: name,
              bars: [{ series: 'main-thread CPU', value: (pipe.get(name) as Pipelined[])[1]?.mainCpuUsPerCall ?? 0 }],
            })),
          },
        ],
      },
    };
  },
};

function spreadName(system: string, keys: number): string {
  return `${system}, ${keys} keys`;
}

/** The raw echo over `workers` workers (a call goes to worker a % workers), or over one. */
export function rawEcho(workers?: number): RpcSystem {
  const threads = Array.from({ length: workers ?? 1 }, () => new Worker(fixture('echo-worker.mjs'), { execArgv: [] }));
  const pending = new Map<number, (value: number) => void>();
  let nextId = 0;
  for (const worker of threads) {
    worker.on('message', (message: { id: number; value: number }) => {
      const resolve = pending.get(message.id);
      pending.delete(message.id);
      resolve?.(message.value);
    });
  }
  return {
    name: workers === undefined ? 'raw postMessage' : spreadName('raw postMessage', workers),
    add: (a, b) =>
      new Promise((resolve) => {
        const id = nextId++;
        pending.set(id, resolve);
        (threads[a % threads.length] as Worker).postMessage({ id, a, b });
      }),
    close: async () => {
      await Promise.all(threads.map((worker) => worker.terminate()));
    },
  };
}

function doorbell(name: string, blocking: boolean): RpcSystem {
  const buffer = new SharedArrayBuffer(32);
  const counts = new Int32Array(buffer, 0, 2);
  const slots = new Float64Array(buffer, 8, 3);
  const worker = new Worker(fixture('doorbell-worker.mjs'), { execArgv: [], workerData: { buffer, blocking } });
  let calls = 0;
  return {
    name,
    add: async (a, b) => {
      slots[0] = a;
      slots[1] = b;
      calls += 1;
      Atomics.store(counts, 0, calls);
      Atomics.notify(counts, 0);
      // Until the worker has answered this call: a wake-up alone does not say it has (with more
      // threads in the run, one came back early and read the call before's result). A bound, so
      // that a worker which died fails the run instead of hanging it.
      for (let answered = Atomics.load(counts, 1); answered !== calls; answered = Atomics.load(counts, 1)) {
        const wait = Atomics.waitAsync(counts, 1, answered, 5_000);
        if ((wait.async ? await wait.value : wait.value) === 'timed-out') throw new Error(`${name}: no answer in 5 s`);
      }
      return slots[2] as number;
    },
    close: async () => {
      Atomics.store(counts, 0, -1);
      Atomics.notify(counts, 0);
      await worker.terminate();
    },
  };
}

function comlink(): RpcSystem {
  const worker = new Worker(fixture('comlink-worker.mjs'), { execArgv: [] });
  const api = wrap<AddAgent>(nodeEndpoint(worker));
  return {
    name: 'comlink',
    add: (a, b) => api.add(a, b),
    close: async () => {
      api[releaseProxy]();
      await worker.terminate();
    },
  };
}

function piscinaPerKey(): RpcSystem {
  const piscina = new Piscina<{ a: number; b: number }, number>({
    filename: fixture('piscina-add.mjs').href,
    minThreads: 1,
    maxThreads: 1,
    concurrentTasksPerWorker: 64,
    idleTimeout: 60_000,
  });
  return {
    name: 'piscina per key',
    add: (a, b) => piscina.run({ a, b }),
    close: () => piscina.close(),
  };
}

/** Whether sandpool finds @opentelemetry/api where it looks for it: else "tracing on" would measure nothing. */
function apiLoaded(): boolean {
  try {
    createRequire(import.meta.resolve('sandpool'))('@opentelemetry/api');
    return true;
  } catch {
    return false;
  }
}
