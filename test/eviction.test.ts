import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FrequencySketch, keyHash } from '../packages/sandpool/dist/host/slots/frequency.js';
import { installCleanup, invariants, openPool, recordEvents } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();

const HOT = ['hot0', 'hot1'];
const SCAN = ['one0', 'one1', 'one2', 'one3', 'one4'];

async function keys(): Promise<string> {
  const files: Record<string, string> = {};
  for (const swarm of [...HOT, ...SCAN]) Object.assign(files, await counterAgent(swarm));
  return makeRoot(files);
}

/** Two hot keys called often, then a scan of one-off keys through 3 slots: which keys were evicted? */
async function scanThrough(eviction: 'lru' | 'tinylfu'): Promise<string[]> {
  const pool = openPool({ root: await keys(), maxWorkers: 3, spareWorkers: 0, eviction });
  const { events } = recordEvents(pool);
  for (let round = 0; round < 10; round++) {
    for (const swarm of HOT) expect(await pool.call(`${swarm}/notifier_agent`, 'add', [round, 1])).toBe(round + 1);
  }
  for (const swarm of SCAN) expect(await pool.call(`${swarm}/notifier_agent`, 'add', [1, 1])).toBe(2);
  for (const swarm of HOT) expect(await pool.call(`${swarm}/notifier_agent`, 'add', [2, 2])).toBe(4);
  expect(invariants(pool)).toEqual([]);
  return events.filter((event) => event.type === 'evict').map((event) => (event.key as string).split('/')[0] as string);
}

describe('eviction policies', () => {
  it("'lru' lets a scan of one-off keys push out the keys called most", async () => {
    const evicted = await scanThrough('lru');
    expect(evicted).toEqual(expect.arrayContaining(HOT));
  });

  it("'tinylfu' keeps the keys called most through a scan: the one-off keys make room for each other", async () => {
    const evicted = await scanThrough('tinylfu');
    expect(evicted.filter((swarm) => HOT.includes(swarm))).toEqual([]);
    expect(evicted).toEqual(SCAN.slice(0, -1));
  });

  it('an unknown policy is refused with INVALID_OPTIONS', async () => {
    const root = await keys();
    expect(() => openPool({ root, eviction: 'fifo' as 'lru' })).toThrow(
      expect.objectContaining({ code: 'ERR_SANDPOOL_INVALID_OPTIONS' }),
    );
    expect(await openPool({ root }).call('hot0/notifier_agent', 'add', [1, 1])).toBe(2);
  });
});

describe('the frequency sketch', () => {
  it('never counts a key less than it was asked for, up to its 4-bit ceiling, before it ages', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 200 }), { maxLength: 300 }), (asks) => {
        const sketch = new FrequencySketch(100); // ages after 1,000 additions: never, here
        const counts = new Map<number, number>();
        for (const key of asks) {
          sketch.increment(keyHash(`s/${key}`));
          counts.set(key, (counts.get(key) ?? 0) + 1);
        }
        for (const [key, count] of counts)
          expect(sketch.estimate(keyHash(`s/${key}`))).toBeGreaterThanOrEqual(Math.min(15, count));
      }),
    );
  });

  it('halves every count once its sample is full, so old popularity fades', () => {
    const sketch = new FrequencySketch(10); // sample of 100 additions
    const old = keyHash('a/old');
    for (let i = 0; i < 12; i++) sketch.increment(old);
    expect(sketch.estimate(old)).toBe(12);
    for (let i = 0; i < 100; i++) sketch.increment(keyHash(`a/new${i}`));
    expect(sketch.estimate(old)).toBeLessThanOrEqual(6);
  });
});
