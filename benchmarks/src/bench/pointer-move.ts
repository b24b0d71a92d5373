// The pointer-move bound across two processes on one store: this process points a name at
// new content; a pool in another process (a phase of this benchmark) reports when it retired
// the old content's worker and when its first call answered the new content.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createPool, SnapshotStore } from 'sandpool';
import { ms } from '../lib/format.js';
import { Latency, type LatencySummary } from '../lib/histogram.js';
import type { BenchContext, Benchmark, BenchReport, Json } from '../lib/report.js';
import { makeRoot } from '../lib/temp-root.js';
import { sleep } from '../lib/timing.js';

const SWARM = 'moves';
const STEM = 'agent';
const KEY = `${SWARM}@prod/${STEM}`;
const RUN = fileURLToPath(new URL('../run.js', import.meta.url));
const MODES = ['busy', 'idle'] as const;
type Mode = (typeof MODES)[number];
const GAP_MS = 300;

/** Wall-clock milliseconds with sub-ms precision that two processes on one machine share. */
const wallNow = (): number => performance.timeOrigin + performance.now();

const agentSource = (version: number): string =>
  `export const version = () => ${version};\nexport const add = (a, b) => a + b;\n`;

type Message = { t: string; [field: string]: Json | undefined };

export const pointerMove: Benchmark = {
  name: 'pointer-move',
  title: 'Pointer move across two processes: point to retire, and to the first call on the new content',
  phases: { other: otherPool },
  async run(context: BenchContext): Promise<BenchReport> {
    const perMode = context.quick ? 8 : 25;
    const moves = perMode * MODES.length;
    const tree = await makeRoot([]);
    const store = new SnapshotStore({ root: tree.root });
    const latencies = {
      retire: { busy: new Latency(), idle: new Latency() },
      firstNew: { busy: new Latency(), idle: new Latency() },
    };
    let child: ChildProcess | null = null;
    try {
      context.progress(`creating ${moves + 1} snapshots`);
      await mkdir(join(tree.root, SWARM, 'live'), { recursive: true });
      for (let version = 0; version <= moves; version += 1) {
        await writeFile(join(tree.root, SWARM, 'live', `${STEM}.mjs`), agentSource(version));
        await store.create(SWARM, `v${version}`);
      }
      await store.point(SWARM, 'prod', 'v0');
      child = spawn(process.execPath, ['--expose-gc', RUN, '--child', 'pointer-move', '--phase', 'other'], {
        stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
        env: { ...process.env, SANDPOOL_BENCH_ROOT: tree.root },
      });
      const next = inbox(child);
      await next('ready');
      for (let version = 1; version <= moves; version += 1) {
        // Interleaved: busy and idle moves alternate, so drift hits both alike.
        const mode: Mode = MODES[(version - 1) % MODES.length] as Mode;
        if (version % 10 === 1) context.progress(`move ${version}/${moves}`);
        child.send({ t: 'expect', version, mode });
        await next('armed');
        await sleep(GAP_MS);
        const movedAt = wallNow();
        await store.point(SWARM, 'prod', `v${version}`);
        const seen = await next('moved');
        latencies.retire[mode].recordMs((seen.retiredAt as number) - movedAt);
        latencies.firstNew[mode].recordMs((seen.answeredAt as number) - movedAt);
      }
      child.send({ t: 'stop' });
      const summary = await next('summary');
      if ((summary.wrong as number) !== 0)
        throw new Error(`the other pool answered old content ${summary.wrong} times`);
    } finally {
      if (child !== null && child.exitCode === null) child.kill('SIGKILL');
      await tree.cleanup();
    }
    const results: Record<string, Record<Mode, LatencySummary>> = {
      retire: { busy: latencies.retire.busy.summaryMs(), idle: latencies.retire.idle.summaryMs() },
      firstNew: { busy: latencies.firstNew.busy.summaryMs(), idle: latencies.firstNew.idle.summaryMs() },
    };
    const row = (what: string, mode: Mode, s: LatencySummary): string[] => [
      what,
      mode,
      ms(s.p50),
      ms(s.p90),
      ms(s.p99),
      ms(s.max),
    ];
    return {
      method: [
        `One store, two processes: this one (a SnapshotStore) points ${SWARM}@prod at new content ${moves} times, each time at a snapshot of a distinct version; the other runs a pool (spareWorkers 0, idleTimeoutMs 0) that has served ${KEY} from the start.`,
        `busy: the other pool calls ${KEY} version() one call after another throughout the move. idle: no call reaches the key until the old worker is retired (the pool's periodic check finds the move), then one call is made.`,
        "retire: from the start of point() to the evict event (reason reload) of the old content's worker in the other process. first call on new content: from the start of point() to the first answer with the new version there (it includes the new worker's cold start).",
        `Times are wall-clock (performance.timeOrigin + performance.now()) compared across the two processes on one machine. Busy and idle moves alternate, ${GAP_MS} ms apart. The goal (issue 23) is 1 s.`,
      ],
      parameters: { moves, perMode, gapMs: GAP_MS },
      results,
      ratios: {
        retireP99Busy: results.retire?.busy.p99 ?? null,
        retireP99Idle: results.retire?.idle.p99 ?? null,
        goalMs: 1000,
      },
      tables: [
        {
          title: 'Pointer move across two processes',
          headers: ['from point() to', 'calls', 'p50', 'p90', 'p99', 'max'],
          rows: MODES.flatMap((mode) => [
            row('old worker retired', mode, results.retire?.[mode] as LatencySummary),
            row('first call on new content', mode, results.firstNew?.[mode] as LatencySummary),
          ]),
          note: `${perMode} moves per mode; goal: retire within 1 s.`,
        },
      ],
      chart: {
        title: 'Pointer move across two processes',
        panels: [
          {
            title: 'From point() in one process to the other pool',
            unit: 'ms',
            groups: MODES.flatMap((mode) => [
              {
                label: `retired, ${mode}`,
                bars: [
                  { series: 'p50', value: results.retire?.[mode].p50 ?? 0 },
                  { series: 'p99', value: results.retire?.[mode].p99 ?? 0 },
                ],
              },
              {
                label: `first new answer, ${mode}`,
                bars: [
                  { series: 'p50', value: results.firstNew?.[mode].p50 ?? 0 },
                  { series: 'p99', value: results.firstNew?.[mode].p99 ?? 0 },
                ],
              },
            ]),
          },
        ],
      },
    };
  },
};

/** The other process: a pool serving `KEY`, reporting what it saw of each move. */
async function otherPool(): Promise<Json> {
  const root = process.env.SANDPOOL_BENCH_ROOT;
  if (root === undefined || process.send === undefined) throw new Error('pointer-move/other runs under run()');
  const send = (message: Message): void => {
    process.send?.(message);
  };
  const pool = createPool({ root, spareWorkers: 0, idleTimeoutMs: 0 });
  let retiredAt: number | null = null;
  pool.on('evict', ({ key, reason }) => {
    if (key === KEY && reason === 'reload') retiredAt = wallNow();
  });
  let wrong = 0;
  let previous = 0;
  if ((await pool.call<number>(KEY, 'version')) !== 0) throw new Error('prod does not start at v0');
  const expect = async (version: number, mode: Mode): Promise<void> => {
    retiredAt = null;
    send({ t: 'armed' });
    let answeredAt: number | null = null;
    if (mode === 'busy') {
      while (answeredAt === null || retiredAt === null) {
        const got = await pool.call<number>(KEY, 'version');
        if (got < previous) wrong += 1;
        if (got === version && answeredAt === null) answeredAt = wallNow();
        previous = got;
      }
    } else {
      while (retiredAt === null) await sleep(1);
      const got = await pool.call<number>(KEY, 'version');
      if (got !== version) wrong += 1;
      answeredAt = wallNow();
      previous = got;
    }
    send({ t: 'moved', retiredAt, answeredAt });
  };
  await new Promise<void>((done) => {
    process.on('message', (raw) => {
      const message = raw as Message;
      if (message.t === 'expect') {
        expect(message.version as number, message.mode as Mode).catch((error: unknown) => {
          process.stderr.write(`pointer-move/other: ${String(error)}\n`);
          process.exit(1);
        });
      } else if (message.t === 'stop') done();
    });
    send({ t: 'ready' });
  });
  await pool.close();
  await new Promise<void>((resolve) => {
    process.send?.({ t: 'summary', wrong }, () => resolve());
  });
  process.disconnect();
  return null;
}

/** Messages from the other process, awaited in order by type. */
function inbox(child: ChildProcess): (type: string) => Promise<Message> {
  const queue: Message[] = [];
  const waiters: Array<{ type: string; resolve: (m: Message) => void }> = [];
  let failed: Error | null = null;
  child.on('message', (raw) => {
    const message = raw as Message;
    const waiter = waiters.findIndex((w) => w.type === message.t);
    if (waiter >= 0) waiters.splice(waiter, 1)[0]?.resolve(message);
    else queue.push(message);
  });
  child.on('exit', (code, signal) => {
    failed = new Error(`the other process ended (${signal ?? `exit ${code}`})`);
  });
  return (type) => {
    const queued = queue.findIndex((m) => m.t === type);
    if (queued >= 0) return Promise.resolve(queue.splice(queued, 1)[0] as Message);
    if (failed !== null) return Promise.reject(failed);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(failed ?? new Error(`no ${type} from the other process in 60 s`)), 60_000);
      waiters.push({
        type,
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
      });
    });
  };
}
