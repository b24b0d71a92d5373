import { chmod } from 'node:fs/promises';
import { describe, expect, it, onTestFinished, vi } from 'vitest';
import { SpareDemand } from '../packages/sandpool/dist/host/slots/spare-demand.js';
import { Spares } from '../packages/sandpool/dist/host/slots/spares.js';
import { AgentThread } from '../packages/sandpool/dist/host/workers/thread.js';
import { eventually, installCleanup, invariants, openPool, recordEvents } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';
import { hostLayers } from './support/sandbox.js';

installCleanup();

/** A clock the test moves by hand. */
function manualClock(): { now: number; read: () => number } {
  const clock = { now: 0, read: () => clock.now };
  return clock;
}

function missEvery(demand: SpareDemand, clock: { now: number }, count: number, gapMs: number): void {
  for (let i = 0; i < count; i++) {
    clock.now += gapMs;
    demand.missed();
  }
}

describe('how many spares a pool keeps', () => {
  it('one while misses come further apart than a boot; as many as come within one, up to the ceiling; fading back', () => {
    const clock = manualClock();
    const demand = new SpareDemand(4, clock.read);
    expect(demand.target()).toBe(1);
    demand.booted(50);
    missEvery(demand, clock, 10, 100);
    expect(demand.target()).toBe(1);
    clock.now += 1_000;
    missEvery(demand, clock, 3, 10);
    expect(demand.target()).toBe(3);
    missEvery(demand, clock, 20, 1);
    expect(demand.target()).toBe(4);
    clock.now += 10_000; // one half-life
    expect(demand.target()).toBe(2);
    clock.now += 10_000;
    expect(demand.target()).toBe(1);
    clock.now += 600_000;
    expect(demand.target()).toBe(1);
  });

  it('none at a ceiling of 0, whatever the misses', () => {
    const clock = manualClock();
    const demand = new SpareDemand(0, clock.read);
    demand.booted(50);
    missEvery(demand, clock, 50, 1);
    expect(demand.target()).toBe(0);
  });

  it('none before the first miss where spares serve only some keys (strict ones: keys run from artifacts)', () => {
    const clock = manualClock();
    const demand = new SpareDemand(4, clock.read, 'first-miss');
    clock.now += 60_000;
    expect(demand.target()).toBe(0);
    missEvery(demand, clock, 1, 10);
    expect(demand.target()).toBe(1);
    clock.now += 600_000;
    expect(demand.target()).toBe(1);
  });

  it('reads a boot from the cold starts: slower starts put more misses in one window; nonsense is ignored', () => {
    const clock = manualClock();
    const fast = new SpareDemand(8, clock.read);
    fast.booted(50);
    missEvery(fast, clock, 6, 40);
    expect(fast.target()).toBe(2);
    const slow = new SpareDemand(8, clock.read);
    for (let i = 0; i < 30; i++) slow.booted(400);
    slow.booted(Number.NaN);
    slow.booted(-1);
    missEvery(slow, clock, 6, 40);
    expect(slow.target()).toBe(6);
    // A tenant whose load takes a minute counts as a 1 s boot, no more.
    const heavy = new SpareDemand(8, clock.read);
    heavy.booted(60_000);
    missEvery(heavy, clock, 6, 500);
    expect(heavy.target()).toBe(3);
  });

  it('refills real threads to what the demand asks: a taken one once its key has loaded, a missing one at once; trims back to one as it fades', async () => {
    const clock = manualClock();
    const demand = new SpareDemand(3, clock.read);
    const settings = { env: {}, resourceLimits: {}, output: () => {}, onOutputDropped: () => {} };
    const spares = new Spares(demand, 'thread', () => new AgentThread(settings, []));
    spares.fill();
    expect(spares.size).toBe(1);
    // A key takes the spare: no other boots while it loads (the pool calls fill once it has).
    const first = spares.take();
    await new Promise((resolve) => setImmediate(resolve));
    expect(spares.size).toBe(0);
    // Two more keys at once find none and start cold; three are kept for next time.
    const taken = [first, spares.take(), spares.take()];
    expect(taken.map((thread) => thread !== null)).toEqual([true, false, false]);
    await eventually(() => spares.size === 3);
    spares.fill();
    expect(spares.size).toBe(3);
    clock.now += 60_000;
    spares.trim();
    // Trimmed spares are gone from the pool at once, though their threads still exit: no key gets one.
    expect(spares.size).toBe(1);
    const next = spares.take();
    expect(next?.terminating).toBe(false);
    next?.terminate({ retired: 'closed' });
    taken[0]?.terminate({ retired: 'closed' });
    await spares.close();
    expect(spares.size).toBe(0);
  });
});

describe('a pool’s spares under a burst of new keys', () => {
  it('grow to spareWorkers after a burst, serve the next burst from spares, and never pass the ceiling', async () => {
    // The demand fades with a 10 s half-life on performance.now(): held still here, so spares
    // that a loaded machine boots slowly are not trimmed before the next burst comes.
    vi.useFakeTimers({ toFake: ['performance'] });
    onTestFinished(() => {
      vi.useRealTimers();
    });
    const files: Record<string, string> = {};
    for (let i = 0; i < 12; i++) Object.assign(files, await counterAgent('s', 'v1', `k${i}`));
    const pool = openPool({ root: await makeRoot(files), permissions: 'none', spareWorkers: 4, maxWorkers: 20 });
    const { events } = recordEvents(pool);
    expect(pool.stats().spares).toBeLessThanOrEqual(1);
    const burst = (from: number): Promise<number[]> =>
      Promise.all(Array.from({ length: 4 }, (_, i) => pool.call<number>(`s/k${from + i}`, 'add', [i, 1])));
    expect(await burst(0)).toEqual([1, 2, 3, 4]);
    await eventually(() => pool.stats().spares === 4);
    const before = events.filter((event) => event.type === 'spawn' && event.reason === 'spare').length;
    expect(await burst(4)).toEqual([1, 2, 3, 4]);
    const fromSpares = events.filter((event) => event.type === 'spawn' && event.reason === 'spare').length - before;
    expect(fromSpares).toBe(4);
    expect(pool.stats().spares).toBeLessThanOrEqual(4);
    expect(invariants(pool)).toEqual([]);
  });
});

describe('a taken spare’s replacement', () => {
  const layers = hostLayers();
  // Under namespaces a spare process needs root (its key's folder is bound in when it comes).
  const spareProcesses = process.getuid?.() === 0 || !layers.namespaces;

  for (const [isolation, runs] of [
    ['thread', true],
    ['process', spareProcesses],
  ] as const)
    it.runIf(runs)(`boots once the ${isolation} key that took the spare has started, not beside its load`, async () => {
      // A load that takes long enough for the host's event loop to turn many times during it.
      const root = await makeRoot({
        's/live/slow.mjs':
          'await new Promise((resolve) => setTimeout(resolve, 2000));\nexport const add = (a, b) => a + b;\n',
      });
      await chmod(root, 0o755);
      const pool = openPool({ root, isolation, permissions: 'none', spareWorkers: 1 });
      await eventually(() => pool.stats().spares === 1);
      const took = new Promise<void>((resolve) => pool.on('spawn', (event) => event.reason === 'spare' && resolve()));
      let answered = false;
      const answer = pool.call('s/slow', 'add', [1, 2]).finally(() => {
        answered = true;
      });
      await took;
      for (let turn = 0; turn < 10; turn++) await new Promise((resolve) => setImmediate(resolve));
      // Still loading, and nothing boots beside it.
      expect(answered).toBe(false);
      expect(pool.stats().spares).toBe(0);
      expect(await answer).toBe(3);
      await eventually(() => pool.stats().spares === 1);
      expect(invariants(pool)).toEqual([]);
    });
});
