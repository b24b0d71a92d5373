// Each swarm's snapshots are bounded as a whole, not only one create at a time: how many names
// it may have (maxSnapshotsPerSwarm, ERR_SANDPOOL_QUOTA) and how many bytes of content it may
// keep on disk (maxSnapshotBytesPerSwarm, ERR_SANDPOOL_SNAPSHOT_BUILD). A tenant creating in a
// loop fills its own share and no more, a refusal changes nothing, both are counted from the
// disk (names and content made by another process count), content two names share counts
// once, and a neighbour answers throughout.
import { lstatSync, readdirSync } from 'node:fs';
import { utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { createPool, type Pool, SnapshotStore } from 'sandpool';
import { afterEach, describe, expect, it } from 'vitest';
import { rejection } from './support/errors.js';
import { installCleanup, invariants, openPool } from './support/pool.js';
import { counterAgent, makeRoot, removeRoots, writeFiles } from './support/root.js';

installCleanup();
afterEach(removeRoots);

const DIGEST = /^[0-9a-f]{64}$/;
/** Each version's data: the bulk of its content. */
const DATA_BYTES = 100_000;

/** An agent whose content differs per version by DATA_BYTES of its own data. */
function version(swarm: string, n: number): Record<string, string> {
  return {
    [`${swarm}/live/notifier_agent.mjs`]: `export const version = () => ${n};\n`,
    [`${swarm}/live/data.txt`]: String(n % 10).repeat(DATA_BYTES),
  };
}

/** Calls the neighbour until stopped; every answer must be right and the pool's books hold. */
function neighbour(pool: Pool): () => Promise<void> {
  let stop = false;
  const answers: unknown[] = [];
  const loop = (async () => {
    for (let i = 0; !stop; i++) {
      answers.push(await pool.call('n/notifier_agent', 'add', [i, 1]).catch((error: unknown) => error));
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
  })();
  return async () => {
    stop = true;
    await loop;
    expect(answers.length).toBeGreaterThan(0);
    expect(answers).toEqual(answers.map((_, i) => i + 1));
    expect(invariants(pool)).toEqual([]);
  };
}

const names = (root: string, swarm: string): string[] =>
  readdirSync(join(root, swarm, 'snapshots'))
    .filter((name) => !name.startsWith('.'))
    .sort();

/** The swarm's content folder as it is: every entry, work folders included. */
const contentEntries = (root: string, swarm: string): string[] =>
  readdirSync(join(root, '.sandpool-cache/artifacts', swarm)).sort();

/** Apparent bytes of every file under a folder. */
function bytesUnder(dir: string): number {
  let total = 0;
  for (const entry of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (entry.isFile()) total += lstatSync(join(entry.parentPath, entry.name)).size;
  }
  return total;
}

describe('maxSnapshotsPerSwarm', () => {
  it('refuses a new name past the bound with QUOTA, builds and changes nothing, and counts names made by any process', async () => {
    const root = await makeRoot({ ...(await counterAgent('n')), ...version('a', 1), ...version('b', 1) });
    const pool = openPool({ root, maxSnapshotsPerSwarm: 3 });
    const stop = neighbour(pool);
    await pool.snapshots.create('a', 'v1');
    // A name made by another store on the same root counts the same.
    await new SnapshotStore({ root }).create('a', 'v2');
    await pool.snapshots.point('a', 'v3', 'v1');
    await writeFiles(root, version('a', 4));
    const content = contentEntries(root, 'a');

    for (const attempt of [() => pool.snapshots.create('a', 'v4'), () => pool.snapshots.point('a', 'v5', 'v1')]) {
      const error = await rejection(attempt());
      expect(error.code).toBe('ERR_SANDPOOL_QUOTA');
      expect(error.message).toContain('maxSnapshotsPerSwarm');
    }
    expect(names(root, 'a')).toEqual(['v1', 'v2', 'v3']);
    // Refused before its build: not even unnamed content was added.
    expect(contentEntries(root, 'a')).toEqual(content);
    // A name it has may still move, and create of one it has (same content) still answers.
    await pool.snapshots.point('a', 'v3', 'v2');
    await expect(pool.snapshots.create('a', 'v2')).rejects.toMatchObject({ code: 'ERR_SANDPOOL_SNAPSHOT_EXISTS' });
    // Another swarm's share is its own.
    await pool.snapshots.create('b', 'v1');
    // A name removed makes room for one.
    await pool.snapshots.remove('a', 'v2');
    await pool.snapshots.create('a', 'v4');
    expect(await pool.call('a@v4/notifier_agent', 'version')).toBe(4);
    expect(names(root, 'a')).toEqual(['v1', 'v3', 'v4']);
    await stop();
  });

  it('lets no two new names take the last place, however many are made at once', async () => {
    const root = await makeRoot({ ...(await counterAgent('n')), ...version('a', 1) });
    const pool = openPool({ root, maxSnapshotsPerSwarm: 3 });
    const other = new SnapshotStore({ root, maxSnapshotsPerSwarm: 3 });
    const stop = neighbour(pool);
    await pool.snapshots.create('a', 'v1');
    await pool.snapshots.point('a', 'v2', 'v1');
    // Ten new names at once, from the pool's helper and from a store of this process.
    const outcomes = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        (i % 2 === 0 ? pool.snapshots : other).point('a', `new${i}`, 'v1').then(
          () => 'made',
          (error: { code?: string }) => error.code,
        ),
      ),
    );
    expect(outcomes.filter((outcome) => outcome === 'made')).toHaveLength(1);
    expect(outcomes.filter((outcome) => outcome === 'ERR_SANDPOOL_QUOTA')).toHaveLength(9);
    expect(names(root, 'a')).toHaveLength(3);
    await stop();
  });

  it('is an option of the pool and of a store, checked by their schemas', async () => {
    const root = await makeRoot();
    const pool = openPool({ root });
    expect(pool.options).toMatchObject({ maxSnapshotsPerSwarm: 1_000, maxSnapshotBytesPerSwarm: 4 * 1024 ** 3 });
    for (const bad of [{ maxSnapshotsPerSwarm: 0 }, { maxSnapshotBytesPerSwarm: -1 }, { maxSnapshotsPerSwarm: 1.5 }]) {
      expect(() => createPool({ root, ...bad })).toThrow(
        expect.objectContaining({ code: 'ERR_SANDPOOL_INVALID_OPTIONS' }),
      );
      expect(() => new SnapshotStore({ root, ...bad })).toThrow(
        expect.objectContaining({ code: 'ERR_SANDPOOL_INVALID_OPTIONS' }),
      );
    }
  });
});

describe('maxSnapshotBytesPerSwarm', () => {
  it('bounds what a tenant creating in a loop keeps on disk, refusing with SNAPSHOT_BUILD and adding nothing', async () => {
    const root = await makeRoot({ ...(await counterAgent('n')), ...version('a', 0), ...version('b', 0) });
    const bound = 2.5 * DATA_BYTES;
    const pool = openPool({ root, maxSnapshotBytesPerSwarm: bound });
    const stop = neighbour(pool);
    const made: string[] = [];
    const refused: string[] = [];
    for (let n = 0; n < 12; n++) {
      await writeFiles(root, version('a', n));
      await pool.snapshots.create('a', `v${n}`).then(
        () => made.push(`v${n}`),
        (error: { code?: string; message?: string }) => {
          expect(error.code).toBe('ERR_SANDPOOL_SNAPSHOT_BUILD');
          expect(error.message).toContain('maxSnapshotBytesPerSwarm');
          refused.push(`v${n}`);
        },
      );
    }
    // Two versions fit; each later one is refused whole: no name, no content, no work folder left.
    expect(made).toEqual(['v0', 'v1']);
    expect(refused).toHaveLength(10);
    expect(names(root, 'a')).toEqual(['v0', 'v1']);
    const kept = contentEntries(root, 'a');
    expect(kept.filter((entry) => DIGEST.test(entry))).toHaveLength(2);
    expect(kept.filter((entry) => !DIGEST.test(entry) && !entry.startsWith('.lock-'))).toEqual([]);
    expect(bytesUnder(join(root, '.sandpool-cache/artifacts/a'))).toBeLessThanOrEqual(bound);

    // Content two names share counts once: a third name of v0's content is no new byte.
    await writeFiles(root, version('a', 0));
    expect((await pool.snapshots.create('a', 'again')).digest).toBe((await pool.snapshots.get('a', 'v0')).digest);
    // Another swarm's share is its own.
    await pool.snapshots.create('b', 'v0');
    // A name removed leaves its content on the disk, counted, until its grace has passed.
    await pool.snapshots.remove('a', 'v1');
    await writeFiles(root, version('a', 5));
    expect((await rejection(pool.snapshots.create('a', 'v5'))).message).toContain('10 minutes');
    // An hour on: the sweep takes content no name uses (v1's), never what a name still points to.
    const hour = new Date(Date.now() - 60 * 60 * 1000);
    for (const entry of contentEntries(root, 'a').filter((name) => DIGEST.test(name))) {
      await utimes(join(root, '.sandpool-cache/artifacts/a', entry), hour, hour);
    }
    // Past it, the create that needs the room removes it first.
    await pool.snapshots.create('a', 'v5');
    expect(await pool.call('a@v5/notifier_agent', 'version')).toBe(5);
    expect(await pool.call('a@v0/notifier_agent', 'version')).toBe(0);
    expect(bytesUnder(join(root, '.sandpool-cache/artifacts/a'))).toBeLessThanOrEqual(bound);
    await stop();
  });
});
