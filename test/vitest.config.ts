import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // Each file in its own process: thread counts from /proc/self/status stay per file.
    pool: 'forks',
    // Most of a file's time is spent waiting (worker starts, child processes, timers), so more
    // files than cores run at once; on two cores vitest's default would run them one by one.
    maxWorkers: 4,
    // Bounds for a hang, not measures: a test waits for events, and a loaded machine is slow.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    include: ['**/*.test.ts'],
    exclude: ['**/node_modules/**', 'soak/**', 'cluster/**', 'types/**'],
  },
});
