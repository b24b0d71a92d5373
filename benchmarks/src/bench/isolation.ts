import { availableParallelism } from 'node:os';
import { Piscina } from 'piscina';
import { createPool } from 'sandpool';
import { ms, perSecond, ratio } from '../lib/format.js';
import { round } from '../lib/histogram.js';
import {
  medianRound,
  type Noise,
  startNoise as noiseLanes,
  quietLoad as openLoop,
  type QuietPhase,
} from '../lib/open-loop.js';
import type { BenchContext, Benchmark, BenchReport } from '../lib/report.js';
import { fixture, makeRoot } from '../lib/temp-root.js';
import { sleep } from '../lib/timing.js';
import { calibrateCrunch } from '../lib/work.js';

const QUIET_KEYS = 6;
const QUIET_INTERVAL_MS = 5;
const NOISY_MS = 20;
const NOISY_IN_FLIGHT = 8;
/** Below this a p99 is scheduler noise; ratios use it as the floor (the rule). */
const FLOOR_MS = 1;

interface System {
  name: string;
  quiet(key: number, n: number): Promise<unknown>;
  noisy(): Promise<unknown>;
  close(): Promise<void>;
}

type Phase = QuietPhase;

interface AgentModule {
  ping(n: number): number;
  crunch(iterations: number): number;
}

export const isolation: Benchmark = {
  name: 'isolation',
  title: 'Load isolation: 6 quiet keys at a steady rate, with and without a noisy key',
  async run(context: BenchContext): Promise<BenchReport> {
    const phaseMs = context.quick ? 3_000 : 4_000;
    const rounds = context.quick ? 1 : 3;
    const warmMs = context.quick ? 500 : 1_000;
    const cores = availableParallelism();
    const iterations = await calibrateCrunch(NOISY_MS);
    context.progress(`crunch: ${iterations.toLocaleString('en-US')} iterations take ${NOISY_MS} ms of CPU here`);
    const stems = [...Array.from({ length: QUIET_KEYS }, (_, i) => `quiet${i}`), 'noisy'];
    const tree = await makeRoot(stems.map((stem) => ({ swarm: 'iso', stem, fixture: 'agent.mjs' })));
    const results: Record<string, { quiet: Phase; noisy: Phase }> = {};
    const perRound: Record<string, { quiet: Phase[]; noisy: Phase[] }> = {};
    const systems: System[] = [];
    try {
      const makers: Array<() => Promise<System>> = [
        async () => {
          const pool = createPool({ root: tree.root, maxWorkers: stems.length, spareWorkers: 0, idleTimeoutMs: 0 });
          const keys = stems.map((stem) => `iso/${stem}`);
          await Promise.all(keys.map((key) => pool.call(key, 'ping', [0])));
          return {
            name: 'sandpool',
            quiet: (key, n) => pool.call(keys[key] as string, 'ping', [n]),
            noisy: () => pool.call('iso/noisy', 'crunch', [iterations]),
            close: () => pool.close(),
          };
        },
        async () => {
          const piscina = new Piscina({
            filename: fixture('piscina-dispatch.mjs').href,
            minThreads: cores,
            maxThreads: cores,
            idleTimeout: 60_000,
          });
          const urls = stems.map((stem) => tree.url('iso', stem));
          const noisyUrl = tree.url('iso', 'noisy');
          return {
            name: `piscina (shared, ${cores} threads)`,
            quiet: (key, n) => piscina.run({ url: urls[key], fn: 'ping', args: [n] }),
            noisy: () => piscina.run({ url: noisyUrl, fn: 'crunch', args: [iterations] }),
            close: () => piscina.close(),
          };
        },
        async () => {
          const modules = (await Promise.all(stems.map((stem) => import(tree.url('iso', stem))))) as AgentModule[];
          const noisyModule = modules[QUIET_KEYS] as AgentModule;
          return {
            name: 'in-process',
            quiet: async (key, n) => (modules[key] as AgentModule).ping(n),
            // Yield once per call so timers get a turn between calls, as an async caller would.
            noisy: async () => {
              await new Promise((resolve) => setImmediate(resolve));
              return noisyModule.crunch(iterations);
            },
            close: async () => {},
          };
        },
      ];
      for (const make of makers) systems.push(await make());
      for (const system of systems) {
        context.progress(`${system.name}: warm-up`);
        await quietLoad(system, warmMs);
        perRound[system.name] = { quiet: [], noisy: [] };
      }
      // Rounds run every system in turn, so a disturbance on the machine (this is 2 cores)
      // hits one round of each rather than all of one system; the median round is reported.
      for (let round = 1; round <= rounds; round += 1) {
        for (const system of systems) {
          const runs = perRound[system.name] as { quiet: Phase[]; noisy: Phase[] };
          context.progress(`round ${round}/${rounds}, ${system.name}: quiet keys alone, ${phaseMs / 1000} s`);
          runs.quiet.push(await quietLoad(system, phaseMs));
          context.progress(`round ${round}/${rounds}, ${system.name}: with the noisy key, ${phaseMs / 1000} s`);
          const noise = startNoise(system);
          await sleep(warmMs);
          runs.noisy.push(await quietLoad(system, phaseMs, noise));
          await noise.stop();
        }
      }
      for (const [name, runs] of Object.entries(perRound)) {
        results[name] = { quiet: medianRound(runs.quiet), noisy: medianRound(runs.noisy) };
      }
    } finally {
      for (const system of systems) await system.close();
      await tree.cleanup();
    }

    const names = Object.keys(results);
    const floored = (value: number): number => Math.max(value, FLOOR_MS);
    const over = (a: number, b: number): number => round(floored(a) / floored(b), 3);
    /** Each ratio twice: from send (the call as made) and from due (the schedule: counts a blocked caller). */
    const ratios: Record<string, { fromSend: number; fromDue: number }> = {};
    for (const name of names) {
      const { quiet, noisy } = results[name] as { quiet: Phase; noisy: Phase };
      ratios[`${name}: p99 with noise / without`] = {
        fromSend: over(noisy.fromSend.p99, quiet.fromSend.p99),
        fromDue: over(noisy.fromDue.p99, quiet.fromDue.p99),
      };
      ratios[`${name}: p50 with noise / without`] = {
        fromSend: over(noisy.fromSend.p50, quiet.fromSend.p50),
        fromDue: over(noisy.fromDue.p50, quiet.fromDue.p50),
      };
    }
    const sandpool = results.sandpool as { noisy: Phase };
    for (const name of names.filter((other) => other !== 'sandpool')) {
      const other = results[name] as { noisy: Phase };
      ratios[`${name} p99 / sandpool p99, both with noise`] = {
        fromSend: over(other.noisy.fromSend.p99, sandpool.noisy.fromSend.p99),
        fromDue: over(other.noisy.fromDue.p99, sandpool.noisy.fromDue.p99),
      };
    }

    const rows: string[][] = [];
    for (const name of names) {
      for (const [label, phase] of Object.entries(results[name] as { quiet: Phase; noisy: Phase })) {
        rows.push([
          name,
          label === 'quiet' ? 'no' : 'yes',
          ms(phase.fromSend.p50),
          ms(phase.fromSend.p99),
          ms(phase.fromDue.p50),
          ms(phase.fromDue.p99),
          perSecond(phase.quietPerSecond),
          label === 'quiet' ? '-' : perSecond(phase.noisyPerSecond),
        ]);
      }
    }
    return {
      method: [
        `${QUIET_KEYS} quiet keys each call ping(n) every ${QUIET_INTERVAL_MS} ms on a fixed schedule (open loop: a late call does not push the next one back).`,
        `The noisy key runs crunch(${iterations}) with ${NOISY_IN_FLIGHT} calls in flight, started ${warmMs} ms before the quiet measurement: a fixed iteration count calibrated once at start to take ${NOISY_MS} ms of CPU on an idle core (fixed work: a clock-bounded spin that is preempted does less and inflates throughput).`,
        'p50/p99: from the moment the call was made to its result.',
        'from due: from the moment the schedule wanted the call sent to its result (corrects for coordinated omission: counts the time a blocked event loop could not send it; includes up to ~1 ms of timer lateness, setTimeout having 1 ms granularity).',
        `sandpool: one worker per key (maxWorkers ${stems.length}, spareWorkers 0). piscina: one shared pool, minThreads = maxThreads = ${cores} (cores), a task that imports the key's module once per thread and calls it. in-process: the modules imported on the main thread and called directly.`,
        `Ratios use ${FLOOR_MS} ms as the floor of any p50/p99 (below it is scheduler noise).`,
        `Each phase runs ${phaseMs / 1000} s (the noise starts ${warmMs} ms before it); ${rounds} round(s), each running every system in turn; the round with the median p99 (from send) is reported, every round's p99 is in roundsP99.`,
      ],
      parameters: {
        quietKeys: QUIET_KEYS,
        quietIntervalMs: QUIET_INTERVAL_MS,
        noisyMs: NOISY_MS,
        noisyIterations: iterations,
        noisyInFlight: NOISY_IN_FLIGHT,
        phaseMs,
        rounds,
        warmMs,
        piscinaThreads: cores,
        floorMs: FLOOR_MS,
      },
      results: Object.fromEntries(
        names.map((name) => {
          const r = results[name] as { quiet: Phase; noisy: Phase };
          const runs = perRound[name] as { quiet: Phase[]; noisy: Phase[] };
          return [
            name,
            {
              withoutNoise: { ...r.quiet },
              withNoise: { ...r.noisy },
              roundsP99: {
                withoutNoise: runs.quiet.map((p) => p.fromSend.p99),
                withNoise: runs.noisy.map((p) => p.fromSend.p99),
              },
            },
          ];
        }),
      ),
      ratios,
      tables: [
        {
          title: 'Quiet keys: latency and throughput, without and with the noisy key',
          headers: ['system', 'noise', 'p50', 'p99', 'p50 from due', 'p99 from due', 'quiet calls', 'noisy calls'],
          rows,
          note: `p50/p99: from the moment the call was made to its result. "from due": from the moment the schedule wanted it sent (${QUIET_KEYS} keys × every ${QUIET_INTERVAL_MS} ms = ${(QUIET_KEYS * 1000) / QUIET_INTERVAL_MS}/s offered), which counts the time a blocked event loop could not send it, plus up to ~1 ms of timer lateness.`,
        },
        {
          title: 'Ratios (a p50 or p99 under 1 ms counts as 1 ms)',
          headers: ['comparison', 'from send', 'from due'],
          rows: Object.entries(ratios).map(([label, r]) => [label, ratio(r.fromSend), ratio(r.fromDue)]),
        },
      ],
      chart: {
        title: 'Load isolation: quiet-key latency without and with a noisy key',
        panels: [
          {
            title: 'Quiet-key latency',
            unit: 'ms',
            log: true,
            groups: names.flatMap((name) => {
              const r = results[name] as { quiet: Phase; noisy: Phase };
              return [
                {
                  label: `${name}, alone`,
                  bars: [
                    { series: 'p50', value: r.quiet.fromSend.p50 },
                    { series: 'p99', value: r.quiet.fromSend.p99 },
                    { series: 'p99 from due', value: r.quiet.fromDue.p99 },
                  ],
                },
                {
                  label: `${name}, noisy`,
                  bars: [
                    { series: 'p50', value: r.noisy.fromSend.p50 },
                    { series: 'p99', value: r.noisy.fromSend.p99 },
                    { series: 'p99 from due', value: r.noisy.fromDue.p99 },
                  ],
                },
              ];
            }),
          },
        ],
      },
    };
  },
};

function startNoise(system: System): Noise {
  return noiseLanes(() => system.noisy(), NOISY_IN_FLIGHT);
}

function quietLoad(system: System, durationMs: number, noise?: Noise): Promise<Phase> {
  return openLoop({ keys: QUIET_KEYS, intervalMs: QUIET_INTERVAL_MS, durationMs, call: system.quiet, noise });
}
