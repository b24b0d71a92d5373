import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // tsc over every lib file, four times: kept out of the main suite, run once by CI.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    include: ['types/**/*.test.ts'],
  },
});
