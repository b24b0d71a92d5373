import type { Pool } from 'sandpool';
import { now, until } from './timing.js';

/** One way of answering the first call to a key never loaded before. */
export interface ColdVariant {
  name: string;
  /** Time of the first call to a key never loaded before, in ms. */
  firstCall(stem: string): Promise<number>;
  /** Waits until the variant is back at rest, as between two new keys in real use. */
  settle(): Promise<void>;
  close(): Promise<void>;
}

/**
 * A pool's first `add(1, 2)` to `<swarm>/<stem>` (`swarm` may name a snapshot: `a@jan`); at
 * rest once its spares are booted again. A strict pool keeps spares only from the first key
 * that could take one (`keptFrom: 'first-key'`).
 */
export function poolVariant(
  name: string,
  pool: Pool,
  swarm: string,
  spares: number,
  keptFrom: 'start' | 'first-key' = 'start',
): ColdVariant {
  let called = false;
  return {
    name,
    firstCall: async (stem) => {
      called = true;
      const t0 = now();
      const value = await pool.call<number>(`${swarm}/${stem}`, 'add', [1, 2]);
      const elapsed = now() - t0;
      if (value !== 3) throw new Error(`${name} ${swarm}/${stem}: add(1, 2) gave ${value}`);
      return elapsed;
    },
    settle: () =>
      until(() => pool.stats().spares === (called || keptFrom === 'start' ? spares : 0), 10_000, `${name}: its spares`),
    close: () => pool.close(),
  };
}
