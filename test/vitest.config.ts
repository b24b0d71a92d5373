import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // Each file in its own process: thread counts from /proc/self/status stay per file.
    pool: 'forks',
    testTimeout: 20_000,
    hookTimeout: 20_000,
    include: ['**/*.test.ts'],
    exclude: ['**/node_modules/**', 'soak/**', 'cluster/**', 'types/**'],
  },
});
