import { readdirSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { rejection } from './support/errors.js';
import { eventually, installCleanup, invariants, openPool, recordEvents } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();

/** Fixed work: the same CPU however loaded the machine, where a clock-bound loop would do less. */
function crunch(n: number): number {
  let x = 1;
  for (let i = 0; i < n; i++) x = (x * 48271) % 2147483647;
  return x;
}

const BURNER = `
  import { existsSync } from 'node:fs';
  export function spin(ms) { const end = Date.now() + ms; while (Date.now() < end); return 'done'; }
  export ${crunch.toString()}
  /** Keeps its core busy until the test creates \`file\`: busy keys overlap for as long as the test needs. */
  export function spinUntil(file) { while (!existsSync(file)); return 'done'; }
  export function forever() { for (;;); }
  // Returns at once, leaving chains of async pbkdf2 jobs on the libuv pool: CPU on threads no key owns.
  export function poolChains(rounds) {
    const crypto = process.getBuiltinModule('node:crypto');
    for (let chain = 0; chain < 4; chain++) {
      const next = (left) => { if (left > 0) crypto.pbkdf2('p', 's', 2e5, 32, 'sha256', () => next(left - 1)); };
      next(rounds);
    }
    return 'queued';
  }
`;

/** CPU (ms) this process spends on `crunch(n)`: what a worker spends on it, to within a factor. */
function cpuOfCrunch(n: number): number {
  const start = process.cpuUsage();
  crunch(n);
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1000;
}

/** One burner more than there are cores: busy keys outnumber them. */
const CROWD = availableParallelism() + 1;

async function root(): Promise<string> {
  const burners = Object.fromEntries(Array.from({ length: CROWD }, (_, i) => [`c/live/burner${i}.mjs`, BURNER]));
  return makeRoot({ 'a/live/burner.mjs': BURNER, ...burners, ...(await counterAgent('n')) });
}

const onLinux = process.platform === 'linux';

describe.runIf(onLinux)('CPU, counted on the worker thread', () => {
  it('keyStats() reports each key its CPU, calls, errors and latency', async () => {
    const pool = openPool({ root: await root() });
    const work = 5_000_000;
    const expectedMs = cpuOfCrunch(work);
    expect(await pool.call('a/burner', 'crunch', [work])).toBe(crunch(work));
    // A clock-bound spin: its latency is at least 150 ms, however little CPU it got.
    expect(await pool.call('a/burner', 'spin', [150])).toBe('done');
    expect(await pool.call('n/notifier_agent', 'add', [1, 2])).toBe(3);
    await rejection(pool.call('n/notifier_agent', 'nope'));
    const cpuOf = (key: string): number => pool.keyStats().find((entry) => entry.key === key)?.cpuMs ?? 0;
    // CPU is read on samples: the last of the work shows on the next one.
    await eventually(() => cpuOf('a/burner') > expectedMs / 2);
    const stats = Object.fromEntries(pool.keyStats().map((entry) => [entry.key, entry]));
    expect(stats['a/burner']).toMatchObject({ swarm: 'a', stem: 'burner', calls: 2, errors: 0, workers: 1 });
    expect(stats['n/notifier_agent']).toMatchObject({ calls: 2, errors: 1, inFlight: 0, queued: 0 });
    expect(stats['n/notifier_agent']?.cpuMs).toBeLessThan(stats['a/burner']?.cpuMs ?? 0);
    expect(stats['a/burner']?.latency?.max).toBeGreaterThanOrEqual(150);
  });

  it('CPU a key causes on the libuv pool is counted as the process unattributed CPU, not lost', async () => {
    const pool = openPool({ root: await root() });
    const before = pool.stats().unattributedCpu;
    expect(await pool.call('a/burner', 'poolChains', [10])).toBe('queued');
    const unattributed = (): number => {
      const { libuvMs, v8Ms, otherMs } = pool.stats().unattributedCpu;
      return libuvMs + v8Ms + otherMs - (before.libuvMs + before.v8Ms + before.otherMs);
    };
    await eventually(() => unattributed() > 500, 30_000);
    // Node 22+ names its pool's threads libuv-worker (this process has them by now); Node 20 names none.
    const named = readdirSync('/proc/self/task').some((tid) =>
      readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').includes('libuv'),
    );
    if (named) expect(pool.stats().unattributedCpu.libuvMs - before.libuvMs).toBeGreaterThan(300);
    // The key's own thread did not do that work: its CPU stays far below what the pool burned.
    const key = pool.keyStats().find((stats) => stats.key === 'a/burner');
    expect(key?.cpuMs ?? 0).toBeLessThan(unattributed());
    expect(await pool.call('n/notifier_agent', 'add', [1, 1])).toBe(2);
    expect(invariants(pool)).toEqual([]);
  });

  it('cpuTimeoutMs ends a call by the CPU it used, with WORKER_EXITED cpu; a neighbour answers', async () => {
    const pool = openPool({ root: await root(), cpuTimeoutMs: 200 });
    const { events } = recordEvents(pool);
    const error = await rejection(pool.call('a/burner', 'forever', [], { timeoutMs: 0 }));
    expect(error).toMatchObject({ code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'cpu' });
    expect(events).toContainEqual(expect.objectContaining({ type: 'exit', key: 'a/burner', reason: 'cpu' }));
    expect(await pool.call('n/notifier_agent', 'add', [2, 2])).toBe(4);
    // A call that waits, using no CPU, is not touched.
    expect(await pool.call('n/notifier_agent', 'slow', [300, 'idle wait'], { timeoutMs: 0 })).toBe('idle wait');
    expect(invariants(pool)).toEqual([]);
  });

  it('a call ended by cpuTimeoutMs puts its key in no back-off: after three in a row the next call starts a worker', async () => {
    const pool = openPool({ root: await root(), cpuTimeoutMs: 100 });
    const { events } = recordEvents(pool);
    // Three deaths in a row under calls would back a crashing key off; these are the pool's own kills.
    for (let i = 0; i < 3; i++) {
      const error = await rejection(pool.call('a/burner', 'forever', [], { timeoutMs: 0 }));
      expect(error).toMatchObject({ code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'cpu' });
    }
    expect(await pool.call('a/burner', 'spin', [1])).toBe('done');
    const spawns = events.filter((event) => event.type === 'spawn' && event.key === 'a/burner');
    expect(spawns).toHaveLength(4);
    expect(invariants(pool)).toEqual([]);
  });

  it('heavy calls on more busy keys than cores are demoted, and get their priority back once idle', async () => {
    const dir = await root();
    // The release flag sits where the keys may read: they run from their artifacts, not from live/.
    const signals = join(dir, 'signals');
    await mkdir(signals);
    const pool = openPool({ root: dir, spareWorkers: 0, permissions: { fsRead: [signals] } });
    const demoted: string[] = [];
    pool.on('demote', ({ key, reason }) => demoted.push(`${key} ${reason}`));
    const keys = Array.from({ length: CROWD }, (_, i) => `c/burner${i}`);
    // Started first, so the spins overlap whatever a cold start takes; they spin until told.
    for (const key of keys) expect(await pool.call(key, 'crunch', [1])).toBe(crunch(1));
    const release = join(signals, 'release');
    const spins = keys.map((key) => pool.call(key, 'spinUntil', [release]));
    await eventually(() => demoted.length > 0);
    expect(pool.keyStats().filter((entry) => entry.demoted).length).toBeGreaterThan(0);
    await writeFile(release, '');
    expect(await Promise.all(spins)).toEqual(keys.map(() => 'done'));
    expect(demoted.every((entry) => entry.endsWith(' cpu-share'))).toBe(true);
    expect(await pool.call('n/notifier_agent', 'add', [1, 1])).toBe(2);
    // Idle again: raised back, or recycled where raising is not allowed; either way none stays demoted.
    await eventually(() => pool.keyStats().every((entry) => !entry.demoted));
    expect(invariants(pool)).toEqual([]);
  });

  // A worker burning CPU with no call running is judged on the CPU it gets: over 100 ms in a
  // second, a tenth of a core, which one thread does not get at load 30 on two cores. The
  // windows are judged in cpu-governor.test.ts on scripted CPU; a child process burning on its
  // pool threads, which do get it, is demoted for real in process-isolation.test.ts.
});
