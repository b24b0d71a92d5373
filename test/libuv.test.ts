import { execFileSync } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { code } from './support/errors.js';
import { installCleanup, invariants, openPool } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();

// Four async reads of a FIFO nobody writes: each holds a thread of the process's libuv pool
// (4 by default) until the test opens it, whatever the machine's load, and burns no CPU.
const HOG = `
  import { readFile } from 'node:fs';
  let left = 0;
  export function hog(fifo) {
    for (let i = 0; i < 4; i++) {
      left += 1;
      readFile(fifo, () => { left -= 1; });
    }
    return 'started';
  }
  export const running = () => left;
`;

describe("a tenant's async jobs in the libuv pool", () => {
  it("do not delay the coordinator's own file work: resolving keys, reading manifests and the snapshot helper's work answer while they run", async () => {
    const root = await makeRoot({ 'bad/live/hog.mjs': HOG, ...(await counterAgent('good')) });
    // Beside the swarm, where its grant reaches: a FIFO in live/ would fail its build.
    const fifo = join(root, 'bad/pipes/fifo');
    await mkdir(join(root, 'bad/pipes'));
    execFileSync('mkfifo', [fifo]);
    const pool = openPool({
      root,
      permissions: (key) => (key.swarm === 'bad' ? { fsRead: [join(root, 'bad/pipes')] } : 'strict'),
    });
    await pool.snapshots.create('good', 'jan');
    expect(await pool.call('bad/hog', 'hog', [fifo])).toBe('started');
    try {
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
    } finally {
      // A writer comes and goes: every read ends, and the pool threads are free.
      closeSync(openSync(fifo, 'w'));
    }
    // On Node 20 a new worker's ES module loading does wait for the pool (the README says so).
    expect(await pool.call('good@feb/notifier_agent', 'add', [1, 2])).toBe(3);
    expect(await pool.call('bad/hog', 'running')).toBe(0);
    expect(invariants(pool)).toEqual([]);
  });
});
