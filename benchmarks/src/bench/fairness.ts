import { availableParallelism } from 'node:os';
import { Piscina } from 'piscina';
import { createPool } from 'sandpool';
import { ms, num, perSecond, ratio } from '../lib/format.js';
import { round } from '../lib/histogram.js';
import { medianRound, type QuietPhase, quietLoad, startNoise } from '../lib/open-loop.js';
import type { BenchContext, Benchmark, BenchReport, Json } from '../lib/report.js';
import { fixture, makeRoot } from '../lib/temp-root.js';
import { sleep } from '../lib/timing.js';
import { calibrateCrunch } from '../lib/work.js';

const QUIET_KEYS = 6;
const QUIET_INTERVAL_MS = 5;
const NOISY_COUNTS = [0, 1, 2, 4, 8] as const;
const NOISY_MS = 20;
/** Two calls in flight per noisy key: the next one is already queued when one answers, so the key never idles. */
const IN_FLIGHT_PER_NOISY_KEY = 2;
/** Below this a p99 is scheduler noise; ratios use it as the floor (the rule). */
const FLOOR_MS = 1;
const TARGET_P99_RATIO = 3;
const TARGET_THROUGHPUT_RATIO = 0.7;

interface System {
  name: string;
  quiet(key: number, n: number): Promise<unknown>;
  noisy(key: number): Promise<unknown>;
  /** Demote events since the last call, where the system has them. */
  takeDemotes(): number | null;
  close(): Promise<void>;
}

type Phase = QuietPhase & { demotes: number | null; noisyErrors: number };

export const fairness: Benchmark = {
  name: 'fairness',
  title: 'Fairness: 6 quiet keys while 1, 2, 4 and 8 keys flood fixed-work CPU calls',
  async run(context: BenchContext): Promise<BenchReport> {
    const phaseMs = context.quick ? 2_000 : 3_000;
    const rounds = context.quick ? 1 : 3;
    const warmMs = context.quick ? 400 : 600;
    const cores = availableParallelism();
    const maxNoisy = Math.max(...NOISY_COUNTS);
    const iterations = await calibrateCrunch(NOISY_MS);
    context.progress(`crunch: ${iterations.toLocaleString('en-US')} iterations take ${NOISY_MS} ms of CPU here`);
    const quietStems = Array.from({ length: QUIET_KEYS }, (_, i) => `quiet${i}`);
    const noisyStems = Array.from({ length: maxNoisy }, (_, i) => `noisy${i}`);
    const stems = [...quietStems, ...noisyStems];
    const tree = await makeRoot(stems.map((stem) => ({ swarm: 'fair', stem, fixture: 'agent.mjs' })));
    const systems: System[] = [];
    const perRound = new Map<string, Map<number, Phase[]>>();
    try {
      const sandpool = async (on: boolean): Promise<System> => {
        const pool = createPool({
          root: tree.root,
          fairness: on,
          maxWorkers: stems.length,
          spareWorkers: 0,
          idleTimeoutMs: 0,
        });
        let demotes = 0;
        pool.on('demote', () => {
          demotes += 1;
        });
        await Promise.all(stems.map((stem) => pool.call(`fair/${stem}`, 'add', [1, 2])));
        return {
          name: `sandpool, fairness ${on ? 'on' : 'off'}`,
          quiet: (key, n) => pool.call(`fair/${quietStems[key]}`, 'add', [n, 2]),
          noisy: (key) => pool.call(`fair/${noisyStems[key]}`, 'crunch', [iterations]),
          takeDemotes: () => {
            const taken = demotes;
            demotes = 0;
            return taken;
          },
          close: () => pool.close(),
        };
      };
      const piscina = async (): Promise<System> => {
        const shared = new Piscina({
          filename: fixture('piscina-dispatch.mjs').href,
          minThreads: cores,
          maxThreads: cores,
          idleTimeout: 60_000,
        });
        const quietUrls = quietStems.map((stem) => tree.url('fair', stem));
        const noisyUrls = noisyStems.map((stem) => tree.url('fair', stem));
        return {
          name: `piscina (shared, ${cores} threads)`,
          quiet: (key, n) => shared.run({ url: quietUrls[key], fn: 'add', args: [n, 2] }),
          noisy: (key) => shared.run({ url: noisyUrls[key], fn: 'crunch', args: [iterations] }),
          takeDemotes: () => null,
          close: () => shared.close(),
        };
      };
      systems.push(await sandpool(true), await sandpool(false), await piscina());
      for (const system of systems) {
        context.progress(`${system.name}: warm-up`);
        await quietLoad({ keys: QUIET_KEYS, intervalMs: QUIET_INTERVAL_MS, durationMs: warmMs, call: system.quiet });
        const stop = startNoise((lane) => system.noisy(lane % maxNoisy), maxNoisy * IN_FLIGHT_PER_NOISY_KEY);
        await sleep(warmMs);
        await stop.stop();
        system.takeDemotes();
        perRound.set(system.name, new Map(NOISY_COUNTS.map((count) => [count, []])));
      }
      // Rounds run every system in turn, so a disturbance on the machine hits one round of
      // each rather than all of one system; the median round is reported per system and N.
      for (let round = 1; round <= rounds; round += 1) {
        for (const system of systems) {
          for (const count of NOISY_COUNTS) {
            context.progress(`round ${round}/${rounds}, ${system.name}: ${count} noisy keys, ${phaseMs / 1000} s`);
            const noise =
              count === 0
                ? undefined
                : startNoise((lane) => system.noisy(lane % count), count * IN_FLIGHT_PER_NOISY_KEY);
            if (noise !== undefined) await sleep(warmMs);
            system.takeDemotes();
            const phase = await quietLoad({
              keys: QUIET_KEYS,
              intervalMs: QUIET_INTERVAL_MS,
              durationMs: phaseMs,
              call: system.quiet,
              noise,
            });
            const demotes = system.takeDemotes();
            await noise?.stop();
            perRound
              .get(system.name)
              ?.get(count)
              ?.push({ ...phase, demotes, noisyErrors: noise?.errors ?? 0 });
          }
        }
      }
    } finally {
      for (const system of systems) await system.close();
      await tree.cleanup();
    }

    const names = systems.map((system) => system.name);
    const [onName, offName, piscinaName] = names as [string, string, string];
    const results = new Map<string, Map<number, Phase>>();
    for (const [name, byCount] of perRound) {
      results.set(name, new Map([...byCount].map(([count, runs]) => [count, medianRound(runs) as Phase])));
    }
    const at = (name: string, count: number): Phase => results.get(name)?.get(count) as Phase;
    const floored = (value: number): number => Math.max(value, FLOOR_MS);
    const over = (a: number, b: number): number => round(floored(a) / floored(b), 3);
    const noisyCounts = NOISY_COUNTS.filter((count) => count > 0);

    const p99Ratios: Record<string, Record<string, number>> = {};
    for (const name of names) {
      p99Ratios[name] = Object.fromEntries(
        noisyCounts.map((count) => [`N=${count}`, over(at(name, count).fromSend.p99, at(name, 0).fromSend.p99)]),
      );
    }
    const throughputOnOverOff = Object.fromEntries(
      noisyCounts.map((count) => [
        `N=${count}`,
        round(at(onName, count).noisyPerSecond / at(offName, count).noisyPerSecond, 3),
      ]),
    );
    const targetP99 = (p99Ratios[onName] as Record<string, number>)[`N=${maxNoisy}`] as number;
    const targetThroughput = throughputOnOverOff[`N=${maxNoisy}`] as number;
    const ratios = {
      [`quiet p99 with ${maxNoisy} noisy / without, fairness on (target <= ${TARGET_P99_RATIO})`]: {
        value: targetP99,
        target: TARGET_P99_RATIO,
        met: targetP99 <= TARGET_P99_RATIO,
      },
      [`noisy calls/s with ${maxNoisy} noisy, fairness on / off (target >= ${TARGET_THROUGHPUT_RATIO})`]: {
        value: targetThroughput,
        target: TARGET_THROUGHPUT_RATIO,
        met: targetThroughput >= TARGET_THROUGHPUT_RATIO,
      },
      quietP99WithNoiseOverWithout: p99Ratios,
      noisyThroughputFairnessOnOverOff: throughputOnOverOff,
      [`${piscinaName} p99 / fairness on p99, ${maxNoisy} noisy`]: over(
        at(piscinaName, maxNoisy).fromSend.p99,
        at(onName, maxNoisy).fromSend.p99,
      ),
    };

    const rows: string[][] = [];
    for (const name of names) {
      for (const count of NOISY_COUNTS) {
        const phase = at(name, count);
        rows.push([
          name,
          String(count),
          ms(phase.fromSend.p50),
          ms(phase.fromSend.p99),
          ms(phase.fromSend.max),
          ms(phase.fromDue.p99),
          count === 0 ? '-' : over(phase.fromSend.p99, at(name, 0).fromSend.p99).toString(),
          count === 0 ? '-' : perSecond(phase.noisyPerSecond),
          phase.demotes === null ? 'n/a' : String(phase.demotes),
        ]);
      }
    }
    const summary: Record<string, Json> = {};
    for (const name of names) {
      const runs = perRound.get(name) as Map<number, Phase[]>;
      summary[name] = Object.fromEntries(
        NOISY_COUNTS.map((count) => [
          `N=${count}`,
          { ...at(name, count), roundsP99: (runs.get(count) ?? []).map((phase) => phase.fromSend.p99) },
        ]),
      );
    }
    const capacity = (cores * 1000) / NOISY_MS;
    return {
      method: [
        `${QUIET_KEYS} quiet keys each call add(n, 2) every ${QUIET_INTERVAL_MS} ms on a fixed schedule (open loop: a late call does not push the next one back); p50/p99/max from the moment the call was made to its result, "from due" from the moment the schedule wanted it sent.`,
        `N = ${noisyCounts.join(', ')} noisy keys each keep ${IN_FLIGHT_PER_NOISY_KEY} calls of crunch(${iterations}) in flight: a fixed iteration count calibrated once at start to take ${NOISY_MS} ms of CPU on an idle core (fixed work: a clock-bounded spin that is preempted returns on time having done less, which inflates noisy throughput). ${cores} cores can complete at most ~${capacity} such calls/s.`,
        `sandpool: one worker per key (maxWorkers ${stems.length}, spareWorkers 0, permissions strict), with fairness on and off, each its own pool in the same run; demotes = 'demote' events during the measured window. piscina: one shared pool, minThreads = maxThreads = ${cores} (cores), a task that imports the key's module once per thread; quiet and noisy tasks share its queue.`,
        `Ratios use ${FLOOR_MS} ms as the floor of any p99. Targets: quiet p99 with ${maxNoisy} noisy keys <= ${TARGET_P99_RATIO}x the no-noise p99, fairness on; noisy calls/s with fairness on >= ${TARGET_THROUGHPUT_RATIO}x with it off.`,
        `Each phase measures ${phaseMs / 1000} s, the noise starting ${warmMs} ms before it; ${rounds} round(s), each running every system and N in turn; per system and N, the round with the median quiet p99 is reported (every round's p99 in roundsP99).`,
      ],
      parameters: {
        quietKeys: QUIET_KEYS,
        quietIntervalMs: QUIET_INTERVAL_MS,
        noisyCounts: [...NOISY_COUNTS],
        noisyMs: NOISY_MS,
        noisyIterations: iterations,
        inFlightPerNoisyKey: IN_FLIGHT_PER_NOISY_KEY,
        phaseMs,
        warmMs,
        rounds,
        piscinaThreads: cores,
        floorMs: FLOOR_MS,
        permissions: 'strict',
      },
      results: summary,
      ratios,
      tables: [
        {
          title: 'Quiet keys with N noisy keys',
          headers: ['system', 'N', 'p50', 'p99', 'max', 'p99 from due', 'p99 / N=0', 'noisy calls', 'demotes'],
          rows,
          note: `Quiet load: ${QUIET_KEYS} keys × every ${QUIET_INTERVAL_MS} ms = ${(QUIET_KEYS * 1000) / QUIET_INTERVAL_MS}/s offered. Noisy capacity: ~${capacity} calls/s on ${cores} cores. "p99 / N=0" floors both at ${FLOOR_MS} ms.`,
        },
        {
          title: 'Targets',
          headers: ['comparison', 'ratio', 'target', 'met'],
          rows: [
            [
              `quiet p99, ${maxNoisy} noisy / none, fairness on`,
              ratio(targetP99),
              `<= ${TARGET_P99_RATIO}×`,
              targetP99 <= TARGET_P99_RATIO ? 'yes' : 'no',
            ],
            [
              `noisy calls/s, ${maxNoisy} noisy, fairness on / off`,
              ratio(targetThroughput),
              `>= ${TARGET_THROUGHPUT_RATIO}×`,
              targetThroughput >= TARGET_THROUGHPUT_RATIO ? 'yes' : 'no',
            ],
            ...noisyCounts
              .filter((count) => count !== maxNoisy)
              .map((count) => [
                `noisy calls/s, ${count} noisy, fairness on / off`,
                ratio(throughputOnOverOff[`N=${count}`] as number),
                '-',
                '-',
              ]),
            ...[offName, piscinaName].map((name) => [
              `quiet p99, ${maxNoisy} noisy / none, ${name}`,
              ratio((p99Ratios[name] as Record<string, number>)[`N=${maxNoisy}`] as number),
              '-',
              '-',
            ]),
          ],
          note: `Throughput at N=${maxNoisy}: ${num(at(onName, maxNoisy).noisyPerSecond)}/s with fairness on, ${num(at(offName, maxNoisy).noisyPerSecond)}/s off.`,
        },
      ],
      chart: {
        title: 'Fairness: quiet-key p99 and noisy throughput with N noisy keys',
        panels: [
          {
            title: 'Quiet-key p99 (from send)',
            unit: 'ms',
            log: true,
            groups: NOISY_COUNTS.map((count) => ({
              label: `${count} noisy`,
              bars: names.map((name) => ({ series: name, value: at(name, count).fromSend.p99 })),
            })),
          },
          {
            title: 'Noisy throughput',
            unit: 'calls/s',
            groups: noisyCounts.map((count) => ({
              label: `${count} noisy`,
              bars: names.map((name) => ({ series: name, value: at(name, count).noisyPerSecond })),
            })),
          },
        ],
      },
    };
  },
};
