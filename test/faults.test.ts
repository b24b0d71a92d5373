import { describe, expect, it, onTestFinished, vi } from 'vitest';
import { code, rejection } from './support/errors.js';
import { eventually, installCleanup, NO_DEATHS, openPool, recordEvents } from './support/pool.js';
import { counterAgent, fixture, makeRoot } from './support/root.js';

installCleanup();

async function root(): Promise<string> {
  return makeRoot({
    'bad/live/faulty.mjs': await fixture('faulty.mjs'),
    'bad/live/on_import.mjs': await fixture('throws-on-import.mjs'),
    // Loads for ten minutes: far past any loadTimeoutMs under test, however loaded the machine.
    'bad/live/slow_load.mjs': 'await new Promise((r) => setTimeout(r, 600_000)); export const f = () => 1;',
    ...(await counterAgent('good')),
  });
}

const NEIGHBOUR = 'good/notifier_agent';

/** The unrelated key answers while its neighbour misbehaves. */
async function neighbourAnswers(pool: ReturnType<typeof openPool>): Promise<void> {
  expect(await pool.call(NEIGHBOUR, 'add', [2, 3], { timeoutMs: 10_000 })).toBe(5);
}

describe('call timeouts', () => {
  it('TIMEOUT kills the worker, rejects its other calls as killed, and the next call respawns', async () => {
    const pool = openPool({ root: await root() });
    const { events } = recordEvents(pool);
    // Their rejections are taken at once: they may come while the neighbour still starts.
    const other = rejection(pool.call('bad/faulty', 'hang', [], { timeoutMs: 0 }));
    const looping = rejection(pool.call('bad/faulty', 'spin', [], { timeoutMs: 200 }));
    await neighbourAnswers(pool); // while its neighbour loops forever
    expect(await looping).toMatchObject({ code: 'ERR_SANDPOOL_TIMEOUT', key: 'bad/faulty' });
    expect(await other).toMatchObject({ code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'killed' });
    expect(events).toContainEqual(expect.objectContaining({ type: 'exit', key: 'bad/faulty', reason: 'killed' }));
    expect(await pool.call('bad/faulty', 'echo', ['again'])).toBe('again');
  });

  it('starts the clock when the call reaches its worker, not while it waits for a slot', async () => {
    const pool = openPool({ root: await root(), maxWorkers: 1 });
    const first = pool.call('bad/faulty', 'hang', [], { timeoutMs: 5_000 });
    await eventually(() => pool.stats().busy === 1);
    // Waits over 5 s for the slot: longer than its own 3 s budget, which must not count.
    const waiting = pool.call(NEIGHBOUR, 'slow', [50, 'made it'], { timeoutMs: 3_000 });
    expect(await code(first)).toBe('ERR_SANDPOOL_TIMEOUT');
    expect(await waiting).toBe('made it');
  });

  it('per-call timeoutMs overrides the pool default, and 0 means none', async () => {
    const pool = openPool({ root: await root(), callTimeoutMs: 50 });
    expect(await pool.call(NEIGHBOUR, 'slow', [150, 'late'], { timeoutMs: 0 })).toBe('late');
    expect(await code(pool.call(NEIGHBOUR, 'slow', [150, 'late']))).toBe('ERR_SANDPOOL_TIMEOUT');
  });
});

describe('AbortSignal', () => {
  it('removes a waiting call from its queue and leaves the worker alone', async () => {
    const pool = openPool({ root: await root(), maxWorkers: 1 });
    const { events } = recordEvents(pool);
    const busy = pool.call(NEIGHBOUR, 'hold', ['first']);
    await eventually(() => pool.stats().busy === 1);
    const controller = new AbortController();
    const waiting = pool.call('bad/faulty', 'echo', [1], { signal: controller.signal });
    await eventually(() => pool.stats().queued === 1);
    controller.abort();
    expect(await code(waiting)).toBe('ERR_SANDPOOL_ABORTED');
    expect(pool.stats().queued).toBe(0);
    expect(await pool.call(NEIGHBOUR, 'release', ['first'])).toBe(true);
    expect(await busy).toBe('first');
    expect(events.filter((event) => event.type === 'exit')).toEqual([]);
  });

  it('treats an aborted running call like a timeout', async () => {
    const pool = openPool({ root: await root() });
    const controller = new AbortController();
    const agent = pool.remote<typeof import('./fixtures/faulty.mjs')>('bad/faulty', { signal: controller.signal });
    const looping = agent.spin();
    await eventually(() => pool.stats().busy === 1);
    await neighbourAnswers(pool);
    controller.abort();
    expect(await code(looping)).toBe('ERR_SANDPOOL_ABORTED');
    await eventually(() => pool.stats().died.killed === 1);
    expect(await pool.call('bad/faulty', 'echo', ['back'])).toBe('back');
  });

  it('rejects at once with an already aborted signal', async () => {
    const pool = openPool({ root: await root() });
    expect(await code(pool.call(NEIGHBOUR, 'add', [1, 1], { signal: AbortSignal.abort() }))).toBe(
      'ERR_SANDPOOL_ABORTED',
    );
    expect(pool.stats().spawned).toBe(0);
  });

  it('an aborted waiter leaves the shared start of its worker alone', async () => {
    const pool = openPool({ root: await root() });
    const controller = new AbortController();
    const aborted = pool.call(NEIGHBOUR, 'add', [1, 1], { signal: controller.signal });
    const kept = pool.call(NEIGHBOUR, 'add', [2, 2]);
    controller.abort();
    expect(await code(aborted)).toBe('ERR_SANDPOOL_ABORTED');
    expect(await kept).toBe(4);
    expect(pool.stats()).toMatchObject({ spawned: 1, died: NO_DEATHS });
  });
});

describe('memory caps', () => {
  it("fails a key past its heap cap with WORKER_EXITED 'oom'; the process and other keys go on", async () => {
    const pool = openPool({ root: await root(), resourceLimits: { maxOldGenerationSizeMb: 24 } });
    await neighbourAnswers(pool);
    const error = await rejection(pool.call('bad/faulty', 'allocate', [], { timeoutMs: 120_000 }));
    expect(error).toMatchObject({ code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'oom' });
    await neighbourAnswers(pool);
    expect(await pool.call('bad/faulty', 'echo', ['recovered'])).toBe('recovered');
  });
});

describe('crash-loop protection', () => {
  it('fails fast after a load failure, retries after the back-off, and invalidate resets it', async () => {
    // The back-off reads Date.now(): a clock the test moves, so no slow timer on a loaded machine opens a window early.
    vi.useFakeTimers({ toFake: ['Date'] });
    onTestFinished(() => {
      vi.useRealTimers();
    });
    let now = Date.now();
    const advance = (ms: number): void => {
      now += ms;
      vi.setSystemTime(now);
    };
    const pool = openPool({ root: await root() });
    const { events } = recordEvents(pool);
    const spawns = () => events.filter((event) => event.type === 'spawn' && event.key === 'bad/on_import').length;
    expect(await code(pool.call('bad/on_import', 'f'))).toBe('ERR_SANDPOOL_MODULE_LOAD');
    expect(await code(pool.call('bad/on_import', 'f'))).toBe('ERR_SANDPOOL_MODULE_LOAD');
    expect(spawns()).toBe(1); // the second failed fast
    await neighbourAnswers(pool);
    advance(120);
    expect(await code(pool.call('bad/on_import', 'f'))).toBe('ERR_SANDPOOL_MODULE_LOAD');
    expect(spawns()).toBe(2);
    // The window doubled to 200 ms: still closed after 120 ms.
    advance(120);
    expect(await code(pool.call('bad/on_import', 'f'))).toBe('ERR_SANDPOOL_MODULE_LOAD');
    expect(spawns()).toBe(2);
    await pool.invalidate({ swarm: 'bad', stem: 'on_import' });
    expect(await code(pool.call('bad/on_import', 'f'))).toBe('ERR_SANDPOOL_MODULE_LOAD');
    expect(spawns()).toBe(3);
  });

  it('fails a module that outlives loadTimeoutMs with MODULE_LOAD', async () => {
    // Pool-wide, so it also bounds the neighbour's start: generous for a loaded machine.
    const pool = openPool({ root: await root(), loadTimeoutMs: 20_000 });
    expect(await code(pool.call('bad/slow_load', 'f'))).toBe('ERR_SANDPOOL_MODULE_LOAD');
    await neighbourAnswers(pool);
    await eventually(() => pool.stats().workers === 1);
  });

  it('one death respawns; three deaths in a row back off; a success resets', async () => {
    const pool = openPool({ root: await root() });
    const { events } = recordEvents(pool);
    for (let death = 1; death <= 3; death++) {
      expect(await rejection(pool.call('bad/faulty', 'exit', [2]))).toMatchObject({ reason: 'exit' });
    }
    const spawned = events.filter((event) => event.type === 'spawn').length;
    expect(await rejection(pool.call('bad/faulty', 'echo', [1]))).toMatchObject({
      code: 'ERR_SANDPOOL_WORKER_EXITED',
      reason: 'exit',
    });
    expect(events.filter((event) => event.type === 'spawn').length).toBe(spawned);
    await new Promise((resolve) => setTimeout(resolve, 120));
    expect(await pool.call('bad/faulty', 'echo', ['ok'])).toBe('ok');
    // The success reset the count: one more death does not back off.
    await code(pool.call('bad/faulty', 'exit', [2]));
    expect(await pool.call('bad/faulty', 'echo', ['ok'])).toBe('ok');
  });
});

describe('backpressure', () => {
  it('maxPendingPerKey rejects the excess at once with QUEUE_FULL; other keys are untouched', async () => {
    const pool = openPool({ root: await root(), maxPendingPerKey: 4 });
    const flood = Array.from({ length: 10 }, () => pool.call('bad/faulty', 'echo', ['x']));
    const settled = await Promise.allSettled(flood);
    const rejected = settled.filter((result) => result.status === 'rejected');
    expect(rejected).toHaveLength(6);
    for (const result of rejected) expect(result.reason).toMatchObject({ code: 'ERR_SANDPOOL_QUEUE_FULL' });
    await neighbourAnswers(pool);
    expect(await pool.call('bad/faulty', 'echo', ['after'])).toBe('after');
  });

  it('maxWaiting bounds the calls waiting for a worker slot', async () => {
    const pool = openPool({ root: await root(), maxWorkers: 1, maxWaiting: 2 });
    const controller = new AbortController();
    const busy = pool.call('bad/faulty', 'hang', [], { signal: controller.signal });
    await eventually(() => pool.stats().busy === 1);
    const waiting = [pool.call(NEIGHBOUR, 'add', [1, 1]), pool.call(NEIGHBOUR, 'add', [1, 2])];
    await eventually(() => pool.stats().queued === 2);
    expect(await code(pool.call(NEIGHBOUR, 'add', [1, 3]))).toBe('ERR_SANDPOOL_QUEUE_FULL');
    // The slot frees when the test says, not when a timer does.
    controller.abort();
    expect(await code(busy)).toBe('ERR_SANDPOOL_ABORTED');
    expect(await Promise.all(waiting)).toEqual([2, 3]);
  });
});
