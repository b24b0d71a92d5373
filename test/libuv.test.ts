import { describe, expect, it } from 'vitest';
import { code } from './support/errors.js';
import { installCleanup, invariants, openPool } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();

const HOG = `
  import { pbkdf2 } from 'node:crypto';
  let left = 0;
  // Enough async jobs to fill the process's libuv pool (4 threads by default) for seconds.
  export function hog() {
    for (let i = 0; i < 4; i++) {
      left += 1;
      pbkdf2('p', 's', 1e6, 64, 'sha512', () => { left -= 1; });
    }
    return 'started';
  }
  export const running = () => left;
`;

describe("a tenant's async jobs in the libuv pool", () => {
  it("do not delay the coordinator's own file work: resolving keys and reading manifests answer while they run", async () => {
    const root = await makeRoot({ 'bad/live/hog.mjs': HOG, ...(await counterAgent('good')) });
    const pool = openPool({ root });
    await pool.snapshots.create('good', 'jan');
    expect(await pool.call('bad/hog', 'hog')).toBe('started');
    expect(await code(pool.call('good/missing', 'f'))).toBe('ERR_SANDPOOL_MODULE_NOT_FOUND');
    expect(await code(pool.call('good@feb/notifier_agent', 'f'))).toBe('ERR_SANDPOOL_SNAPSHOT_NOT_FOUND');
    expect(await pool.invalidate({ swarm: 'good' })).toEqual({ reloaded: [], failed: [] });
    // All of that was answered while every job still held its pool thread.
    expect(await pool.call('bad/hog', 'running')).toBe(4);
    expect(invariants(pool)).toEqual([]);
  }, 30_000);
});
