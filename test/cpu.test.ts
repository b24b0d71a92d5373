import { readdirSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { describe, expect, it } from 'vitest';
import { rejection } from './support/errors.js';
import { eventually, installCleanup, invariants, openPool, recordEvents } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();

const BURNER = `
  export function spin(ms) { const end = Date.now() + ms; while (Date.now() < end); return 'done'; }
  export function forever() { for (;;); }
  // Returns at once, then keeps a core busy from a timer: CPU with no call running.
  export function burnInBackground() {
    setInterval(() => { const end = Date.now() + 45; while (Date.now() < end); }, 50);
    return 'burning';
  }
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
    expect(await pool.call('a/burner', 'spin', [150])).toBe('done');
    expect(await pool.call('n/notifier_agent', 'add', [1, 2])).toBe(3);
    await rejection(pool.call('n/notifier_agent', 'nope'));
    await new Promise((resolve) => setTimeout(resolve, 60)); // one more sample
    const stats = Object.fromEntries(pool.keyStats().map((entry) => [entry.key, entry]));
    expect(stats['a/burner']).toMatchObject({ swarm: 'a', stem: 'burner', calls: 1, errors: 0, workers: 1 });
    expect(stats['a/burner']?.cpuMs).toBeGreaterThan(30);
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

  it('heavy calls on more busy keys than cores are demoted, and get their priority back once idle', async () => {
    const pool = openPool({ root: await root(), spareWorkers: 0 });
    const demoted: string[] = [];
    pool.on('demote', ({ key, reason }) => demoted.push(`${key} ${reason}`));
    const keys = Array.from({ length: CROWD }, (_, i) => `c/burner${i}`);
    const spins = keys.map((key) => pool.call(key, 'spin', [400]));
    await eventually(() => demoted.length > 0);
    expect(pool.keyStats().filter((entry) => entry.demoted).length).toBeGreaterThan(0);
    expect(await Promise.all(spins)).toEqual(keys.map(() => 'done'));
    expect(demoted.every((entry) => entry.endsWith(' cpu-share'))).toBe(true);
    expect(await pool.call('n/notifier_agent', 'add', [1, 1])).toBe(2);
    // Idle again: raised back, or recycled where raising is not allowed; either way none stays demoted.
    await eventually(() => pool.keyStats().every((entry) => !entry.demoted));
    expect(invariants(pool)).toEqual([]);
  });

  it('a worker burning CPU with no call running is demoted, then evicted with cpu', { timeout: 15_000 }, async () => {
    const pool = openPool({ root: await root() });
    const demotions: string[] = [];
    pool.on('demote', ({ key, reason }) => demotions.push(`${key} ${reason}`));
    const { events } = recordEvents(pool);
    expect(await pool.call('a/burner', 'burnInBackground')).toBe('burning');
    await eventually(() => events.some((event) => event.type === 'evict' && event.reason === 'cpu'), 8_000);
    expect(demotions).toEqual(['a/burner background-cpu']);
    expect(await pool.call('n/notifier_agent', 'add', [1, 1])).toBe(2);
    expect(invariants(pool)).toEqual([]);
  });
});
