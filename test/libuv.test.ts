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
      pbkdf2('p', 's', 3e6, 64, 'sha512', () => { left -= 1; });
    }
    return 'started';
  }
  export const running = () => left;
`;

describe("a tenant's async jobs in the libuv pool", () => {
  it("do not delay the coordinator's own file work: resolving keys, reading manifests and the snapshot helper's work answer while they run", async () => {
    const root = await makeRoot({ 'bad/live/hog.mjs': HOG, ...(await counterAgent('good')) });
    // On Node 20 the last start waits for the tenant's jobs (see below): minutes on a loaded machine.
    const pool = openPool({ root, loadTimeoutMs: 240_000 });
    await pool.snapshots.create('good', 'jan');
    expect(await pool.call('bad/hog', 'hog')).toBe('started');
    expect(await code(pool.call('good/missing', 'f'))).toBe('ERR_SANDPOOL_MODULE_NOT_FOUND');
    expect(await code(pool.call('good@feb/notifier_agent', 'f'))).toBe('ERR_SANDPOOL_SNAPSHOT_NOT_FOUND');
    expect(await pool.invalidate({ swarm: 'good' })).toEqual({ reloaded: [], failed: [] });
    // Snapshot work runs in the snapshot helper, on a libuv pool of its own.
    const feb = await pool.snapshots.create('good', 'feb');
    expect(feb).toMatchObject({ swarm: 'good', name: 'feb', stems: ['format', 'notifier_agent'] });
    expect(await pool.snapshots.verify('good', 'feb')).toEqual(feb);
    await pool.snapshots.remove('good', 'jan');
    expect((await pool.snapshots.list('good')).map((info) => info.name)).toEqual(['feb']);
    // All of that was answered while every job still held its pool thread.
    expect(await pool.call('bad/hog', 'running')).toBe(4);
    // On Node 20 a new worker's ES module loading does wait for the pool (the README says so).
    expect(await pool.call('good@feb/notifier_agent', 'add', [1, 2])).toBe(3);
    expect(invariants(pool)).toEqual([]);
  }, 300_000);
});
