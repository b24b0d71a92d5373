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
  runSequential,
  type Sequential,
} from '../lib/call-loops.js';
import { num, perSecond, ratio, us } from '../lib/format.js';
import { round } from '../lib/histogram.js';
import type { BenchContext, Benchmark, BenchReport } from '../lib/report.js';
import { fixture, makeRoot } from '../lib/temp-root.js';

const DEPTHS = [64, 1024] as const;

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
    const tree = await makeRoot([{ swarm: 'rpc', stem: 'adder', fixture: 'agent.mjs' }]);
    const systems: RpcSystem[] = [];
    const sequential = new Map<string, Sequential[]>();
    const pipelined = new Map<string, Pipelined[]>();
    try {
      const pool = createPool({ root: tree.root, maxWorkers: 1, spareWorkers: 0, idleTimeoutMs: 0 });
      const agent = pool.remote<AddAgent>('rpc/adder');
      systems.push(
        { name: 'sandpool call', add: (a, b) => pool.call<number>('rpc/adder', 'add', [a, b]), close: async () => {} },
        { name: 'sandpool remote', add: (a, b) => agent.add(a, b), close: () => pool.close() },
        rawEcho(),
        comlink(),
        piscinaPerKey(),
      );
      for (const system of systems) {
        if ((await system.add(2, 3)) !== 5) throw new Error(`${system.name}: add(2, 3) is not 5`);
        sequential.set(system.name, []);
        pipelined.set(system.name, []);
      }
      for (let repeat = 1; repeat <= repeats; repeat += 1) {
        for (const system of systems) {
          context.progress(`round ${repeat}/${repeats}: ${system.name}`);
          if (repeat === 1) await runSequential(system, warmMs);
          sequential.get(system.name)?.push(await runSequential(system, measureMs));
          for (const depth of DEPTHS) {
            if (repeat === 1) await runPipelined(system, depth, warmMs);
            pipelined.get(system.name)?.push(await runPipelined(system, depth, measureMs));
          }
        }
      }
    } finally {
      for (const system of [...systems].reverse()) await system.close();
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
    const ratios: Record<string, Record<string, number | null>> = {};
    for (const name of names) {
      const s = seq.get(name) as Sequential;
      const p = pipe.get(name) as Pipelined[];
      const entry: Record<string, number | null> = { roundTripOverRaw: round(s.meanUs / rawSeq.meanUs, 3) };
      DEPTHS.forEach((depth, i) => {
        entry[`throughputOverRaw@${depth}`] = round((p[i]?.callsPerSecond ?? 0) / (rawPipe[i]?.callsPerSecond ?? 1), 3);
        const cpu = p[i]?.mainCpuUsPerCall ?? null;
        const rawCpu = rawPipe[i]?.mainCpuUsPerCall ?? null;
        entry[`mainCpuOverRaw@${depth}`] = cpu === null || rawCpu === null ? null : round(cpu / rawCpu, 3);
      });
      ratios[name] = entry;
    }
    const cpu = (value: number | null | undefined): string =>
      value === null || value === undefined ? 'n/a' : `${num(value)} µs`;
    return {
      method: [
        'sequential: one call at a time for the measure window; mean is elapsed time over calls (µs per call).',
        `pipelined: ${DEPTHS.join(' and ')} calls kept in flight (each result issues the next) for the window; calls/s counts to the last result.`,
        'main-thread CPU: the main thread\'s own run time (Linux /proc/self/task/<pid>/schedstat) over the pipelined window, divided by the calls; it includes structured clone of arguments and results on the main thread. process.cpuUsage() is process-wide (it counts the worker thread too), so it is shown apart as "process CPU".',
        'raw postMessage: a worker answering {id, a, b} with {id, value}, callers matched by a Map of pending ids: one message each way per call.',
        'comlink: wrap(nodeEndpoint(worker)) against expose(api, nodeEndpoint(parentPort)), the ESM build.',
        'piscina per key: one pool for the key, minThreads = maxThreads = 1, concurrentTasksPerWorker 64.',
        'sandpool call / remote: one pool, one key (maxWorkers 1, spareWorkers 0); remote is pool.remote<T>(key).add(a, b).',
        `Each figure is the median of ${repeats} round(s); a round runs every system in turn, ${measureMs} ms per measure (the first round after ${warmMs} ms of warm-up per measure).`,
      ],
      parameters: { measureMs, warmMs, repeats, depths: [...DEPTHS] },
      results: Object.fromEntries(
        names.map((name) => [
          name,
          {
            sequential: { ...(seq.get(name) as Sequential) },
            pipelined: (pipe.get(name) as Pipelined[]).map((p) => ({ ...p })),
          },
        ]),
      ),
      ratios,
      tables: [
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

function rawEcho(): RpcSystem {
  const worker = new Worker(fixture('echo-worker.mjs'), { execArgv: [] });
  const pending = new Map<number, (value: number) => void>();
  let nextId = 0;
  worker.on('message', (message: { id: number; value: number }) => {
    const resolve = pending.get(message.id);
    pending.delete(message.id);
    resolve?.(message.value);
  });
  return {
    name: 'raw postMessage',
    add: (a, b) =>
      new Promise((resolve) => {
        const id = nextId++;
        pending.set(id, resolve);
        worker.postMessage({ id, a, b });
      }),
    close: async () => {
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
