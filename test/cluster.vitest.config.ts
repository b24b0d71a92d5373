import { defineConfig } from 'vitest/config';

/**
 * `pnpm test:cluster`: real processes (3 nodes and a balancer per file), so much longer limits
 * than the unit tests, and one file at a time: two fleets on two cores would starve each other,
 * and the HAProxy test's bound reads how many calls each node has in flight.
 */
export default defineConfig({
  test: {
    pool: 'forks',
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 60_000,
    include: ['cluster/**/*.test.ts'],
  },
});
