import { describe, expect, it } from 'vitest';
import { rejection } from './support/errors.js';
import { eventually, installCleanup, invariants, NO_DEATHS, openPool } from './support/pool.js';
import { counterAgent, fixture, makeRoot } from './support/root.js';

installCleanup();

async function root(): Promise<string> {
  return makeRoot({ 'bad/live/hog.mjs': await fixture('hog.mjs'), ...(await counterAgent('n')) });
}

/** Runs `fn` on the hog while a neighbour key keeps answering; returns what the hog's call did. */
async function withNeighbour(
  pool: ReturnType<typeof openPool>,
  fn: string,
  may: 'reject' | 'settle' = 'reject',
): Promise<unknown> {
  let stop = false;
  let answered = 0;
  const neighbour = (async () => {
    while (!stop) {
      expect(await pool.call('n/notifier_agent', 'add', [answered, 1], { timeoutMs: 60_000 })).toBe(answered + 1);
      answered += 1;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  })();
  const call = pool.call('bad/hog', fn, [], { timeoutMs: 120_000 });
  const outcome = may === 'reject' ? await rejection(call) : await call.catch((error: unknown) => error);
  stop = true;
  await neighbour;
  expect(answered).toBeGreaterThan(0);
  return outcome;
}

describe('memory: each pattern ends only its own worker, with oom', () => {
  for (const fn of ['growMap', 'pushObjects', 'doubleString', 'concatString']) {
    it(`${fn} at a 64 MB heap budget`, { timeout: 240_000 }, async () => {
      const pool = openPool({ root: await root(), resourceLimits: { maxOldGenerationSizeMb: 64 } });
      expect(await withNeighbour(pool, fn)).toMatchObject({ code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'oom' });
      expect(await pool.call('bad/hog', 'add', [1, 1])).toBe(2);
      expect(invariants(pool)).toEqual([]);
    });
  }

  // V8 11 (Node 20) makes new Array(1e8) a dictionary and fill() one built-in loop that never
  // checks for termination: it grows until V8 aborts the process, whatever the coordinator
  // does (measured; the README says so and points to isolation: 'process'). V8 12+ contains it.
  const fillInterruptible = Number(process.versions.v8.split('.')[0]) >= 12;
  for (const budget of [64, 128, 256]) {
    it.runIf(fillInterruptible)(
      `new Array(1e8).fill(0) at a ${budget} MB budget: one 800 MB allocation lands under V8's limit`,
      { timeout: 240_000 },
      async () => {
        const pool = openPool({ root: await root(), resourceLimits: { maxOldGenerationSizeMb: budget } });
        // One synchronous allocation the governor cannot interrupt: it may even finish (and
        // the worker be ended after), or end by the governor or the timeout. The host lives.
        const outcome = await withNeighbour(pool, 'bigArray', 'settle');
        if (outcome !== 1e8) {
          expect(outcome).toMatchObject({ code: expect.stringMatching(/^ERR_SANDPOOL_(WORKER_EXITED|TIMEOUT)$/) });
        }
        expect(invariants(pool)).toEqual([]);
        // fill() is one built-in call that terminate() cannot interrupt: the thread ends once it returns.
        await eventually(() => pool.stats().stuck === 0 && pool.stats().workers <= 1, 30_000);
        expect(await pool.call('bad/hog', 'add', [1, 1])).toBe(2);
      },
    );
  }

  it('ArrayBuffers past maxExternalMb', { timeout: 240_000 }, async () => {
    const pool = openPool({ root: await root(), maxExternalMb: 64 });
    for (const fn of ['buffers', 'buffersSlowly']) {
      expect(await withNeighbour(pool, fn)).toMatchObject({ code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'oom' });
    }
    expect(invariants(pool)).toEqual([]);
  });

  it('a result holding many references to one big string is refused in the worker, which goes on', async () => {
    const pool = openPool({ root: await root() });
    expect(await withNeighbour(pool, 'manyReferences')).toMatchObject({ code: 'ERR_SANDPOOL_DATA_CLONE' });
    expect(await pool.call('bad/hog', 'add', [2, 2])).toBe(4);
    expect(pool.stats().died).toEqual(NO_DEATHS);
  });
});
