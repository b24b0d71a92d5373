// A name's pointer is a file in the tenant's folder: whoever can write `<swarm>/snapshots/` can
// put back an older, genuinely signed pointer of the same name (prod moved from jan to jun, the
// old prod put back). Each pointer carries a generation under its HMAC and the store keeps the
// highest it gave each name where the tenant cannot write: the old pointer is refused
// (SNAPSHOT_CORRUPT) by this process, another process on the store, and after a restart; the
// neighbour answers throughout and the attacker never gets the old content.
import { spawn } from 'node:child_process';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Pool } from 'sandpool';
import { afterEach, describe, expect, it } from 'vitest';
import { inbox } from './support/child.js';
import { installCleanup, invariants, openPool } from './support/pool.js';
import { counterAgent, makeRoot, removeRoots, writeFiles } from './support/root.js';

installCleanup();
afterEach(removeRoots);

const SECRET = 'a secret of sixteen characters or more';
const PROD = 'a@prod/notifier_agent';

const agent = (version: number): string => `export const version = () => ${version};\n`;

/** What a call of `a@prod` gives: the version it ran, or the code it was refused with. */
function outcome(pool: Pool): Promise<unknown> {
  return pool.call(PROD, 'version').catch((error: { code?: string }) => error.code);
}

/** Calls the neighbour until stopped; every answer must be right. */
function neighbour(pool: Pool): () => Promise<number> {
  let stop = false;
  const wrong: unknown[] = [];
  let answered = 0;
  const loop = (async () => {
    for (let i = 0; !stop; i++) {
      const value = await pool.call('n/notifier_agent', 'add', [i, 1]).catch((error: unknown) => error);
      if (value === i + 1) answered += 1;
      else wrong.push(value);
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
  })();
  return async () => {
    stop = true;
    await loop;
    expect(wrong).toEqual([]);
    return answered;
  };
}

/** Another pool on the same root, in a process of its own: what it gets from `a@prod`. */
async function fromAnotherProcess(root: string, secret: string | undefined): Promise<unknown> {
  const sandpool = pathToFileURL(join(import.meta.dirname, '../packages/sandpool/dist/index.js')).href;
  const script = join(root, 'other-pool.mjs');
  await writeFile(
    script,
    `
import { createPool } from ${JSON.stringify(sandpool)};
const pool = createPool({ root: ${JSON.stringify(root)}, spareWorkers: 0, loadTimeoutMs: 60_000${
      secret === undefined ? '' : `, snapshotSecret: ${JSON.stringify(secret)}`
    } });
const got = await pool.call(${JSON.stringify(PROD)}, 'version').catch((error) => error.code);
await pool.close();
process.send({ t: 'got', got }, () => process.disconnect());
`,
  );
  const child = spawn(process.execPath, [script], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env: {} });
  try {
    return (await inbox(child, 'the other pool', 60_000)('got')).got;
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
}

/** The tenant's move: the pointer file replaced by bytes it kept (the folder is its own, the file read-only). */
async function putBack(root: string, bytes: Buffer): Promise<void> {
  const pointer = join(root, 'a/snapshots/prod');
  await rm(pointer, { force: true });
  await writeFile(pointer, bytes);
}

describe('an older genuine pointer put back', () => {
  it('is refused as SNAPSHOT_CORRUPT here, in another process and after a restart, and the name moves on from it', async () => {
    const root = await makeRoot({ ...(await counterAgent('n')), 'a/live/notifier_agent.mjs': agent(1) });
    const pointer = join(root, 'a/snapshots/prod');
    let pool = openPool({ root, snapshotSecret: SECRET });
    await pool.snapshots.create('a', 'jan');
    await writeFiles(root, { 'a/live/notifier_agent.mjs': agent(2) });
    await pool.snapshots.create('a', 'jun');
    await pool.snapshots.point('a', 'prod', 'jan');
    const janProd = await readFile(pointer);
    expect(await outcome(pool)).toBe(1);
    await pool.snapshots.point('a', 'prod', 'jun');
    expect(await outcome(pool)).toBe(2);

    let stop = neighbour(pool);
    // Rolled back by hand: the old prod, signed under the pool's own secret, bytes unchanged.
    await putBack(root, janProd);
    expect(await outcome(pool)).toBe('ERR_SANDPOOL_SNAPSHOT_CORRUPT');
    await expect(pool.snapshots.get('a', 'prod')).rejects.toMatchObject({ code: 'ERR_SANDPOOL_SNAPSHOT_CORRUPT' });
    await expect(pool.snapshots.verify('a', 'prod')).rejects.toMatchObject({
      code: 'ERR_SANDPOOL_SNAPSHOT_CORRUPT',
    });
    // The old pointer given a later generation by hand no longer carries its signature.
    const forged = JSON.parse(janProd.toString('utf8')) as { generation: number };
    await putBack(root, Buffer.from(JSON.stringify({ ...forged, generation: forged.generation + 10 })));
    expect(await outcome(pool)).toBe('ERR_SANDPOOL_SNAPSHOT_CORRUPT');
    await putBack(root, janProd);
    // A process that never saw the move, and this one after a restart, refuse it the same.
    expect(await fromAnotherProcess(root, SECRET)).toBe('ERR_SANDPOOL_SNAPSHOT_CORRUPT');
    expect(await stop()).toBeGreaterThan(0);
    expect(invariants(pool)).toEqual([]);
    await pool.close();
    pool = openPool({ root, snapshotSecret: SECRET });
    stop = neighbour(pool);
    expect(await outcome(pool)).toBe('ERR_SANDPOOL_SNAPSHOT_CORRUPT');

    // The operator points the name again: a new generation, above the one put back.
    await pool.snapshots.point('a', 'prod', 'jun');
    expect(await outcome(pool)).toBe(2);
    const junProd = await readFile(pointer);
    // Removed, and its last pointer put back: the name stays gone, and is never jun's again.
    await pool.snapshots.remove('a', 'prod');
    await putBack(root, junProd);
    expect(await outcome(pool)).toBe('ERR_SANDPOOL_SNAPSHOT_CORRUPT');
    await rm(pointer);
    // Made again, it counts on from its removal: no pointer of its earlier life passes.
    await pool.snapshots.point('a', 'prod', 'jan');
    expect(await outcome(pool)).toBe(1);
    for (const old of [janProd, junProd]) {
      await putBack(root, old);
      expect(await outcome(pool)).toBe('ERR_SANDPOOL_SNAPSHOT_CORRUPT');
    }
    expect(await fromAnotherProcess(root, SECRET)).toBe('ERR_SANDPOOL_SNAPSHOT_CORRUPT');
    expect(await stop()).toBeGreaterThan(0);
    expect(invariants(pool)).toEqual([]);
  }, 180_000);

  it('a pointer put back between a move and its record is judged again once the record lands', async () => {
    const root = await makeRoot({ ...(await counterAgent('n')), 'a/live/notifier_agent.mjs': agent(1) });
    const pool = openPool({ root, snapshotSecret: SECRET });
    await pool.snapshots.create('a', 'jan');
    await writeFiles(root, { 'a/live/notifier_agent.mjs': agent(2) });
    await pool.snapshots.create('a', 'jun');
    await pool.snapshots.point('a', 'prod', 'jan');
    const janProd = await readFile(join(root, 'a/snapshots/prod'));
    await pool.snapshots.point('a', 'prod', 'jun');
    expect(await outcome(pool)).toBe(2);
    const stop = neighbour(pool);
    // The window a move leaves between its pointer and its record (two file operations), held
    // open: the record as it was before the move, and the old pointer put back in it.
    const record = join(root, '.sandpool-cache/generations/a/prod');
    const landed = await readFile(record, 'utf8');
    const setRecord = async (text: string): Promise<void> => {
      await writeFile(`${record}.next`, text);
      await rename(`${record}.next`, record);
    };
    await setRecord(`${(JSON.parse(janProd.toString('utf8')) as { generation: number }).generation}\n`);
    await putBack(root, janProd);
    expect(await outcome(pool)).toBe(1);
    // The record lands: the pointer read in the window is not served from memory again.
    await setRecord(landed);
    expect(await outcome(pool)).toBe('ERR_SANDPOOL_SNAPSHOT_CORRUPT');
    await stop();
    expect(invariants(pool)).toEqual([]);
  }, 120_000);

  it('without a secret, a verbatim copy of an old pointer is refused too', async () => {
    const root = await makeRoot({ ...(await counterAgent('n')), 'a/live/notifier_agent.mjs': agent(1) });
    const pool = openPool({ root });
    await pool.snapshots.create('a', 'jan');
    await writeFiles(root, { 'a/live/notifier_agent.mjs': agent(2) });
    await pool.snapshots.create('a', 'jun');
    await pool.snapshots.point('a', 'prod', 'jan');
    const janProd = await readFile(join(root, 'a/snapshots/prod'));
    await pool.snapshots.point('a', 'prod', 'jun');
    const stop = neighbour(pool);
    await putBack(root, janProd);
    expect(await outcome(pool)).toBe('ERR_SANDPOOL_SNAPSHOT_CORRUPT');
    expect(await fromAnotherProcess(root, undefined)).toBe('ERR_SANDPOOL_SNAPSHOT_CORRUPT');
    expect(await stop()).toBeGreaterThan(0);
    expect(invariants(pool)).toEqual([]);
  }, 120_000);
});
