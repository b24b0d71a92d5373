// The digest is in the key: a snapshot name moved by one process (point, or remove and create)
// is seen by a pool in another process on the same store; its old workers drain without losing
// a call, no worker of the old content starts again, and a call never runs older content than
// its name pointed to when the call was admitted. The move-to-retire bound is measured here.
import { spawn } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { inbox, percentile } from './support/child.js';
import { installCleanup, invariants, openPool } from './support/pool.js';
import { counterAgent, makeRoot, removeRoots, writeFiles } from './support/root.js';

installCleanup();
afterEach(removeRoots);

const KEY = 'a@prod/notifier_agent';
const MOVES = 30;
const HOLD_MS = 300;

const agent = (version: number): string =>
  [
    `export const version = () => ${version};`,
    `export const slow = (ms) => new Promise((done) => setTimeout(() => done(${version}), ms));`,
  ].join('\n');

/** A pool in its own process: calls the neighbour throughout, `prod` when told, and reports what it saw. */
function childScript(root: string): string {
  const sandpool = pathToFileURL(join(import.meta.dirname, '../packages/sandpool/dist/index.js')).href;
  return `
import { readFileSync } from 'node:fs';
import { createPool } from ${JSON.stringify(sandpool)};
const pool = createPool({ root: ${JSON.stringify(root)}, spareWorkers: 0, idleTimeoutMs: 0, loadTimeoutMs: 60_000 });
const KEY = ${JSON.stringify(KEY)};
const pointer = ${JSON.stringify(join(root, 'a/snapshots/prod'))};
let versions = {};
/** The version the name points to now, read before a call: the call must answer it or newer. */
const pointed = () => versions[JSON.parse(readFileSync(pointer, 'utf8')).digest];
let spawns = 0;
pool.on('spawn', ({ key }) => { if (key === KEY) spawns += 1; });
pool.on('evict', ({ key, reason }) => {
  if (key === KEY && reason === 'reload') process.send({ t: 'retired', at: Date.now() });
});
let stop = false, answered = 0;
const wrong = [];
const neighbour = (async () => {
  for (let i = 0; !stop; i++) {
    const value = await pool.call('n/notifier_agent', 'add', [i, 1]).catch((error) => error.code);
    if (value === i + 1) answered += 1; else wrong.push(value);
  }
})();
let holding = null;
const outcome = (promise) => promise.then((value) => ({ value }), (error) => ({ error: error.code }));
process.on('message', async (message) => {
  if (message.t === 'versions') {
    versions = message.versions;
    process.send({ t: 'ready', ...(await outcome(pool.call(KEY, 'version'))) });
  } else if (message.t === 'hold') {
    const want = pointed();
    holding = outcome(pool.call(KEY, 'slow', [message.ms])).then((got) => ({ ...got, want }));
    process.send({ t: 'holding' });
  } else if (message.t === 'probe') {
    const want = pointed();
    const got = await outcome(pool.call(KEY, 'version'));
    process.send({ t: 'probed', ...got, want, held: await holding });
  } else if (message.t === 'stop') {
    stop = true;
    await neighbour;
    const violations = pool[Symbol.for('sandpool.invariants')]();
    await pool.close();
    process.send({ t: 'summary', answered, wrong, spawns, violations }, () => process.disconnect());
  }
});
`;
}

describe('a snapshot name moved by another process', () => {
  it('retires the old content within the bound, drains it without losing a call, and never runs older content', async () => {
    const root = await makeRoot({ ...(await counterAgent('n')), 'a/live/notifier_agent.mjs': agent(0) });
    const pool = openPool({ root });
    const versions: Record<string, number> = {};
    for (let version = 0; version <= MOVES; version++) {
      await writeFiles(root, { 'a/live/notifier_agent.mjs': agent(version) });
      versions[(await pool.snapshots.create('a', `v${version}`)).digest] = version;
    }
    expect(Object.keys(versions)).toHaveLength(MOVES + 1);
    await pool.snapshots.point('a', 'prod', 'v0');
    expect(await pool.call(KEY, 'version')).toBe(0);

    const script = join(root, 'other-pool.mjs');
    await writeFile(script, childScript(root));
    const child = spawn(process.execPath, [script], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env: {} });
    const next = inbox(child, 'the child', 30_000);
    try {
      child.send({ t: 'versions', versions });
      expect(await next('ready', 60_000)).toMatchObject({ value: 0 });
      const bounds: number[] = [];
      for (let version = 1; version <= MOVES; version++) {
        // A call in flight on the old content when the name moves.
        child.send({ t: 'hold', ms: HOLD_MS });
        await next('holding');
        const movedAt = Date.now();
        await pool.snapshots.point('a', 'prod', `v${version}`);
        // In the process that moved it, the next call already runs the new content.
        expect(await pool.call(KEY, 'version')).toBe(version);
        const retired = await next('retired');
        bounds.push((retired.at as number) - movedAt);
        child.send({ t: 'probe' });
        const probed = await next('probed', 60_000);
        expect(probed).toEqual({
          t: 'probed',
          value: version,
          want: version,
          held: { value: version - 1, want: version - 1 },
        });
      }
      // Moves by remove and create count the same: prod is made again with new content.
      await pool.snapshots.remove('a', 'prod');
      await pool.snapshots.point('a', 'prod', 'v0');
      await next('retired');
      child.send({ t: 'hold', ms: 1 });
      await next('holding');
      child.send({ t: 'probe' });
      expect(await next('probed', 60_000)).toMatchObject({ value: 0, want: 0 });

      child.send({ t: 'stop' });
      const summary = await next('summary', 60_000);
      expect(summary.wrong).toEqual([]);
      expect(summary.answered as number).toBeGreaterThan(0);
      // One worker per content it served: none of an old content started again.
      expect(summary.spawns).toBe(MOVES + 2);
      expect(summary.violations).toEqual([]);
      const p50 = percentile(bounds, 50);
      const p99 = percentile(bounds, 99);
      console.log(`pointer move to retire, across processes: p50 ${p50} ms, p99 ${p99} ms over ${bounds.length} moves`);
      // Generous: the goal is 1 s; a loaded machine may be slower, but never unbounded.
      expect(p99).toBeLessThan(5_000);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
    expect(invariants(pool)).toEqual([]);
  }, 240_000);

  it('a sign in another process never puts back content a point moved the name away from', async () => {
    const secret = 'a secret of sixteen characters or more';
    const root = await makeRoot({ ...(await counterAgent('n')), 'a/live/notifier_agent.mjs': agent(1) });
    const pool = openPool({ root, snapshotSecret: secret });
    const digests = [(await pool.snapshots.create('a', 'jan')).digest];
    await writeFiles(root, { 'a/live/notifier_agent.mjs': agent(2) });
    digests.push((await pool.snapshots.create('a', 'feb')).digest);
    await pool.snapshots.point('a', 'prod', 'jan');

    // Signs prod over and over while this process moves it: each sign reads the pointer,
    // verifies its content, then replaces the pointer.
    const sandpool = pathToFileURL(join(import.meta.dirname, '../packages/sandpool/dist/index.js')).href;
    const script = join(root, 'signer.mjs');
    await writeFile(
      script,
      `
import { SnapshotStore } from ${JSON.stringify(sandpool)};
const store = new SnapshotStore({ root: ${JSON.stringify(root)}, snapshotSecret: ${JSON.stringify(secret)} });
let stop = false, signed = 0;
const refused = [];
process.on('message', () => { stop = true; });
process.send({ t: 'signing' });
while (!stop) {
  await store.sign('a', 'prod').then(() => { signed += 1; }, (error) => { refused.push(error.code); });
  await new Promise((resolve) => setImmediate(resolve));
}
process.send({ t: 'summary', signed, refused }, () => process.disconnect());
`,
    );
    const child = spawn(process.execPath, [script], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env: {} });
    const next = inbox(child, 'the child', 30_000);
    let stop = false;
    let answered = 0;
    const neighbour = (async () => {
      for (let i = 0; !stop; i++) {
        expect(await pool.call('n/notifier_agent', 'add', [i, 1])).toBe(i + 1);
        answered += 1;
      }
    })();
    try {
      await next('signing');
      const undone: number[] = [];
      for (let move = 0; move < 300; move++) {
        const target = move % 2;
        await pool.snapshots.point('a', 'prod', target === 0 ? 'feb' : 'jan');
        // A sign that read the name before this point lands now, if it can.
        await new Promise((resolve) => setTimeout(resolve, move % 3));
        const pointer = JSON.parse(await readFile(join(root, 'a/snapshots/prod'), 'utf8')) as { digest: string };
        if (pointer.digest !== digests[target === 0 ? 1 : 0]) undone.push(move);
      }
      child.send({ t: 'stop' });
      const summary = await next('summary', 60_000);
      expect(undone).toEqual([]);
      expect(summary.signed as number).toBeGreaterThan(0);
      // A sign refuses only when the name kept moving under it (never NOT_FOUND or CORRUPT).
      for (const code of summary.refused as string[]) expect(code).toBe('ERR_SANDPOOL_SNAPSHOT_BUILD');
      const info = await pool.snapshots.verify('a', 'prod');
      expect(info).toMatchObject({ digest: digests[0], signed: true });
    } finally {
      stop = true;
      await neighbour;
      if (child.exitCode === null) child.kill('SIGKILL');
    }
    expect(answered).toBeGreaterThan(0);
    expect(invariants(pool)).toEqual([]);
  }, 240_000);
});
