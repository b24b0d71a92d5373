import { describe, expect, it } from 'vitest';
import { eventually, installCleanup, invariants, openPool, recordEvents } from './support/pool.js';
import { makeRoot } from './support/root.js';

installCleanup();

const MB = 2 ** 20;
/** An agent that holds 20 MB of ArrayBuffer for its life: external memory the coordinator reads. */
const HOLDER = `
  const held = new Uint8Array(20 * 1024 * 1024).fill(1);
  export const add = (a, b) => a + b + (held[0] - 1);
`;
const STEMS = ['a', 'b', 'c', 'd'];

async function holders(): Promise<string> {
  return makeRoot(Object.fromEntries(STEMS.map((stem) => [`m/live/${stem}.mjs`, HOLDER])));
}

/** Heap and external bytes the coordinator has read for a key, or null before its first reading. */
function readOf(pool: ReturnType<typeof openPool>, key: string): number | null {
  const entry = pool.keyStats().find((stats) => stats.key === key);
  return entry?.externalBytes === null || entry?.externalBytes === undefined
    ? null
    : entry.externalBytes + (entry.heapBytes ?? 0);
}

/** What one holder reads at, on this Node (its heap differs between versions). */
async function sizeOfOne(root: string): Promise<number> {
  const pool = openPool({ root, spareWorkers: 0 });
  await pool.call('m/a', 'add', [1, 2]);
  await eventually(() => (readOf(pool, 'm/a') ?? 0) > 20 * MB);
  const size = readOf(pool, 'm/a') as number;
  await pool.close();
  return size;
}

describe('maxMemoryMb', () => {
  it('starts a worker only while the ones alive leave room for it; an idle one makes room', async () => {
    const root = await holders();
    // Room for three and a half: three start, a fourth must make room.
    const maxMemoryMb = Math.floor((3.5 * (await sizeOfOne(root))) / MB);
    const pool = openPool({ root, maxWorkers: 10, spareWorkers: 0, maxMemoryMb });
    const { events } = recordEvents(pool);
    const read = (key: string): number | null => readOf(pool, key);
    for (const stem of ['a', 'b', 'c']) {
      expect(await pool.call(`m/${stem}`, 'add', [1, 2])).toBe(3);
      await eventually(() => (read(`m/${stem}`) ?? 0) > 20 * MB);
    }
    expect(pool.stats().workers).toBe(3);
    expect(events.filter((event) => event.type === 'evict')).toEqual([]);
    expect(await pool.call('m/d', 'add', [2, 2])).toBe(4);
    expect(events.filter((event) => event.type === 'evict')).toEqual([
      expect.objectContaining({ key: 'm/a', reason: 'lru' }),
    ]);
    await eventually(() => pool.stats().workers === 3);
    expect(invariants(pool)).toEqual([]);
  });

  it('always runs one worker, however far past the budget it is', async () => {
    const pool = openPool({ root: await holders(), spareWorkers: 0, maxMemoryMb: 8 });
    expect(await pool.call('m/a', 'add', [1, 2])).toBe(3);
    await eventually(() => (pool.keyStats()[0]?.externalBytes ?? 0) > 20 * MB);
    expect(await pool.call('m/b', 'add', [1, 2])).toBe(3);
    expect(pool.stats()).toMatchObject({ workers: 1, retired: { lru: 1 } });
    expect(invariants(pool)).toEqual([]);
  });

  it('is refused with INVALID_OPTIONS unless a positive integer', async () => {
    const root = await holders();
    for (const maxMemoryMb of [0, -1, 1.5, '64']) {
      expect(() => openPool({ root, maxMemoryMb: maxMemoryMb as number })).toThrow(
        expect.objectContaining({ code: 'ERR_SANDPOOL_INVALID_OPTIONS' }),
      );
    }
  });
});
