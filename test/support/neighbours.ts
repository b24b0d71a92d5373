// The neighbours every containment test keeps answering while it attacks.
import type { Pool } from 'sandpool';
import { expect } from 'vitest';
import { eventually, invariants } from './pool.js';

/** The neighbour in a worker thread, and one in a process of its own (another swarm): counterAgent('n') and counterAgent('m'). */
export const THREAD_NEIGHBOUR = 'n/notifier_agent';
export const PROCESS_NEIGHBOUR = 'm/notifier_agent';

/**
 * Runs `attack` while the neighbours (by default both) are called in a loop, every answer
 * checked: they keep answering, right, during it and once more after it; the host lives, and
 * the books hold.
 */
export async function withNeighbours<T>(
  pool: Pool,
  attack: () => Promise<T>,
  neighbours: readonly string[] = [THREAD_NEIGHBOUR, PROCESS_NEIGHBOUR],
): Promise<T> {
  for (const key of neighbours) expect(await pool.call(key, 'add', [0, 1])).toBe(1);
  let stop = false;
  const answered = new Map(neighbours.map((key) => [key, 0]));
  const wrong: unknown[] = [];
  const loops = neighbours.map(async (key) => {
    for (let i = 0; !stop; i++) {
      const value = await pool.call(key, 'add', [i, 1]).catch((error: unknown) => error);
      if (value === i + 1) answered.set(key, (answered.get(key) ?? 0) + 1);
      else wrong.push([key, value]);
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
  });
  try {
    const result = await attack();
    const atEnd = new Map(answered);
    await eventually(() => neighbours.every((key) => (answered.get(key) ?? 0) > (atEnd.get(key) ?? 0)));
    return result;
  } finally {
    stop = true;
    await Promise.all(loops);
    expect(wrong).toEqual([]);
    expect(invariants(pool)).toEqual([]);
  }
}

/** withNeighbours with the thread neighbour alone, for pools without process keys. */
export function withNeighbour<T>(pool: Pool, attack: () => Promise<T>): Promise<T> {
  return withNeighbours(pool, attack, [THREAD_NEIGHBOUR]);
}
