import { defineConfig } from 'vitest/config';

/** `pnpm test:cluster`: real processes (3 nodes and nginx), so much longer limits than the unit tests. */
export default defineConfig({
  test: {
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 60_000,
    include: ['cluster/**/*.test.ts'],
  },
});
