// A fleet on one PostgreSQL store and no shared folder: two pools in two processes, each with
// its own root. A snapshot made on one node serves on the other; a move on one drains the old
// content on the other within a measured bound; a tampered cached file is refused; a lost
// connection leaves cached keys serving, and the node reconnects and sees a later move.
import { spawn } from 'node:child_process';
import { lstatSync } from 'node:fs';
import { chmod, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { inbox, percentile } from './support/child.js';
import { installCleanup, invariants, openPool } from './support/pool.js';
import { counterAgent, makeRoot, removeRoots, writeFiles } from './support/root.js';

installCleanup();
afterEach(removeRoots);

const URL_ENV = process.env.SANDPOOL_TEST_POSTGRES;
if (URL_ENV === undefined && process.env.CI === 'true') {
  throw new Error('SANDPOOL_TEST_POSTGRES is not set: under CI=true the PostgreSQL store tests must run');
}
const KEY = 'a@prod/notifier_agent';
const MOVES = 12;
const NODE_B = 'sandpool-test-node-b';
const DROP_TABLES =
  'DROP TABLE IF EXISTS sandpool_pointers, sandpool_generations, sandpool_artifact_files, sandpool_artifacts';

const agent = (version: number): string => `export const version = () => ${version};`;

function withApp(url: string, app: string): string {
  return `${url}${url.includes('?') ? '&' : '?'}application_name=${app}`;
}

/** Node B: its own root, the neighbour answering throughout, `a@<name>` called when told. */
function childScript(root: string, url: string): string {
  const sandpool = pathToFileURL(join(import.meta.dirname, '../packages/sandpool/dist/index.js')).href;
  return `
import { createPool } from ${JSON.stringify(sandpool)};
const pool = createPool({ root: ${JSON.stringify(root)}, spareWorkers: 0, idleTimeoutMs: 0, loadTimeoutMs: 60_000,
  store: { postgres: ${JSON.stringify(url)}, recheckMs: 1000 } });
const states = [];
pool.on('store', ({ state }) => states.push(state));
let stop = false, answered = 0;
const wrong = [];
const neighbour = (async () => {
  for (let i = 0; !stop; i++) {
    const value = await pool.call('n/notifier_agent', 'add', [i, 1]).catch((error) => error.code);
    if (value === i + 1) answered += 1; else wrong.push(value);
    await new Promise((done) => setTimeout(done, 2));
  }
})();
const outcome = (promise) => promise.then((value) => ({ value }), (error) => ({ error: error.code, message: error.message }));
process.on('message', async (message) => {
  if (message.t === 'await') {
    // Calls until the name answers the version wanted: how long a move took to reach this node.
    const started = Date.now();
    for (;;) {
      const got = await outcome(pool.call(message.key, 'version'));
      if (got.value === message.version) break;
      if (Date.now() - started > 60_000) { process.send({ t: 'awaited', got }); return; }
      await new Promise((done) => setTimeout(done, 2));
    }
    process.send({ t: 'awaited', at: Date.now() });
  } else if (message.t === 'call') {
    process.send({ t: 'called', ...(await outcome(pool.call(message.key, 'version'))) });
  } else if (message.t === 'states') {
    process.send({ t: 'states', states });
  } else if (message.t === 'stop') {
    stop = true;
    await neighbour;
    const violations = pool[Symbol.for('sandpool.invariants')]();
    await pool.close();
    process.send({ t: 'summary', answered, wrong, violations, states }, () => process.disconnect());
  }
});
`;
}

async function connections(admin: pg.Client, app: string): Promise<number> {
  const result = await admin.query(
    'SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE $1',
    [`${app}%`],
  );
  return result.rows[0].n as number;
}

async function until(check: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const started = Date.now();
  while (!(await check())) {
    if (Date.now() - started > timeoutMs) throw new Error('condition not reached in time');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe.skipIf(URL_ENV === undefined)('the PostgreSQL store, two nodes and no shared folder', () => {
  it('serves on B what A made, follows A’s moves within the bound, refuses tampered content, and outlives a lost connection', async () => {
    const url = URL_ENV as string;
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    try {
      await admin.query(DROP_TABLES);
      const rootA = await makeRoot({ 'a/live/notifier_agent.mjs': agent(0) });
      const rootB = await makeRoot(await counterAgent('n'));
      const poolA = openPool({ root: rootA, store: { postgres: withApp(url, 'sandpool-test-node-a') } });
      for (let version = 0; version <= 2; version++) {
        await writeFiles(rootA, { 'a/live/notifier_agent.mjs': agent(version) });
        await poolA.snapshots.create('a', `v${version}`);
      }
      await poolA.snapshots.point('a', 'prod', 'v0');
      // Content altered in the database (one byte of its bundle, same length): no node may run it.
      await writeFiles(rootA, { 'a/live/notifier_agent.mjs': agent(9) });
      const altered = await poolA.snapshots.create('a', 'altered');
      const flipped = await admin.query(
        `UPDATE sandpool_artifact_files SET bytes = set_byte(bytes, 0, get_byte(bytes, 0) # 1)
         WHERE swarm = 'a' AND digest = $1 AND path LIKE '%notifier_agent.mjs'`,
        [altered.digest],
      );
      expect(flipped.rowCount).toBeGreaterThan(0);
      // A row under a name no store writes, aimed out of the snapshots folder: no node follows it.
      await admin.query(
        `INSERT INTO sandpool_pointers (swarm, name, digest, pointer) SELECT swarm, '../escape', digest, replace(pointer, '"name": "v0"', '"name": "../escape"') FROM sandpool_pointers WHERE name = 'v0'`,
      );

      const script = join(rootB, 'node-b.mjs');
      await writeFile(script, childScript(rootB, withApp(url, NODE_B)));
      const child = spawn(process.execPath, [script], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env: {} });
      const next = inbox(child, 'node B', 60_000);
      try {
        // Made on A, served on B: fetched from the database, verified, cached under B's root.
        child.send({ t: 'await', key: KEY, version: 0 });
        expect(await next('awaited')).toHaveProperty('at');
        await until(async () => (await readdir(join(rootB, 'a/snapshots'))).includes('altered'));
        child.send({ t: 'call', key: 'a@altered/notifier_agent' });
        const refused = await next('called');
        expect(refused).toMatchObject({ error: 'ERR_SANDPOOL_SNAPSHOT_CORRUPT' });
        expect(refused.message).toMatch(/missing from the artifact store/);
        expect(await readdir(join(rootB, '.sandpool-cache/artifacts/a'))).not.toContain(altered.digest);

        const bounds: number[] = [];
        for (let move = 1; move <= MOVES; move++) {
          const version = move % 2 === 1 ? 1 : 2;
          await poolA.snapshots.point('a', 'prod', `v${version}`);
          const movedAt = Date.now();
          child.send({ t: 'await', key: KEY, version });
          const awaited = await next('awaited');
          expect(awaited).toHaveProperty('at');
          bounds.push((awaited.at as number) - movedAt);
        }
        const p50 = percentile(bounds, 50);
        const p99 = percentile(bounds, 99);
        console.log(`pointer move across nodes (PostgreSQL NOTIFY): p50 ${p50} ms, p99 ${p99} ms over ${MOVES} moves`);
        expect(p99).toBeLessThan(10_000);

        // A cached file changed on B's disk: its worker refuses to load it.
        await writeFiles(rootA, { 'a/live/notifier_agent.mjs': agent(7) });
        const made = await poolA.snapshots.create('a', 'canary');
        const cached = join(rootB, '.sandpool-cache/artifacts/a', made.digest);
        await until(async () => (await readdir(cached).catch(() => [])).length > 0);
        const bundle = join(cached, '.sandpool-bundles/notifier_agent.mjs');
        await chmod(cached, 0o755);
        await chmod(join(cached, '.sandpool-bundles'), 0o755);
        await chmod(bundle, 0o644);
        await writeFile(bundle, 'export const version = () => "tampered";');
        child.send({ t: 'call', key: 'a@canary/notifier_agent' });
        expect(await next('called')).toMatchObject({ error: 'ERR_SANDPOOL_SNAPSHOT_CORRUPT' });
        // Removed on A: the name goes on B too.
        await poolA.snapshots.remove('a', 'v0');
        await until(async () => {
          child.send({ t: 'call', key: 'a@v0/notifier_agent' });
          return (await next('called')).error === 'ERR_SANDPOOL_SNAPSHOT_NOT_FOUND';
        });

        // B's connections killed again and again: it keeps serving what it has cached.
        const stopKilling = Date.now() + 1_500;
        while (Date.now() < stopKilling) {
          await admin.query(
            'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1',
            [NODE_B],
          );
          child.send({ t: 'call', key: KEY });
          expect(await next('called')).toEqual({ t: 'called', value: 2 });
        }
        // Reconnected, it sees a move made after.
        await until(async () => {
          child.send({ t: 'states' });
          return ((await next('states')).states as string[]).at(-1) === 'connected';
        });
        await poolA.snapshots.point('a', 'prod', 'v1');
        const movedAt = Date.now();
        child.send({ t: 'await', key: KEY, version: 1 });
        expect(await next('awaited')).toHaveProperty('at');
        console.log(`a move seen after reconnection in ${Date.now() - movedAt} ms`);

        expect(lstatSync(join(rootB, 'a/escape'), { throwIfNoEntry: false })).toBeUndefined();
        child.send({ t: 'stop' });
        const summary = await next('summary');
        expect(summary.wrong).toEqual([]);
        expect(summary.answered as number).toBeGreaterThan(0);
        expect(summary.violations).toEqual([]);
        expect(summary.states).toContain('lost');
        expect((summary.states as string[]).at(-1)).toBe('connected');
      } finally {
        if (child.exitCode === null) child.kill('SIGKILL');
      }
      expect(invariants(poolA)).toEqual([]);
      await poolA.close();
      // Nothing left connected: both nodes closed every connection.
      await until(async () => (await connections(admin, 'sandpool-test-node')) === 0);
    } finally {
      await admin.end();
    }
  }, 240_000);

  it("keeps each name's generation in the database: an old pointer put back on a node is refused, and a name made again counts on", async () => {
    const url = URL_ENV as string;
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    try {
      await admin.query(DROP_TABLES);
      const secret = 'a secret of sixteen characters or more';
      const rootA = await makeRoot({ ...(await counterAgent('n')), 'r/live/notifier_agent.mjs': agent(1) });
      const rootB = await makeRoot(await counterAgent('n'));
      const store = { postgres: withApp(url, 'sandpool-test-replay'), recheckMs: 1000 };
      const nodeA = openPool({ root: rootA, store, snapshotSecret: secret });
      const nodeB = openPool({ root: rootB, store, snapshotSecret: secret });
      const prodOn = (pool: typeof nodeA): Promise<unknown> =>
        pool.call('r@prod/notifier_agent', 'version').catch((error: { code?: string }) => error.code);
      const answers = (pool: typeof nodeA, want: unknown) => until(async () => (await prodOn(pool)) === want);
      const generation = async (): Promise<{ recorded: number; pointer: number | null }> => {
        const row = await admin.query(
          `SELECT g.generation, p.pointer FROM sandpool_generations g
           LEFT JOIN sandpool_pointers p USING (swarm, name) WHERE swarm = 'r' AND name = 'prod'`,
        );
        const text = row.rows[0]?.pointer as string | null;
        return {
          recorded: Number(row.rows[0]?.generation),
          pointer: text === null ? null : (JSON.parse(text) as { generation: number }).generation,
        };
      };
      await nodeA.snapshots.create('r', 'jan');
      await writeFiles(rootA, { 'r/live/notifier_agent.mjs': agent(2) });
      await nodeA.snapshots.create('r', 'jun');
      await nodeA.snapshots.point('r', 'prod', 'jan');
      await answers(nodeB, 1);
      const pointerB = join(rootB, 'r/snapshots/prod');
      const janProd = await readFile(pointerB);
      await nodeA.snapshots.point('r', 'prod', 'jun');
      await answers(nodeB, 2);
      const junProd = await readFile(pointerB);
      // The row and the name's generation agree, and every node has the database's pointer.
      const moved = await generation();
      expect(moved).toEqual({ recorded: 2, pointer: 2 });

      let stop = false;
      const wrong: unknown[] = [];
      const loops = [nodeA, nodeB].map(async (pool) => {
        for (let i = 0; !stop; i++) {
          const value = await pool.call('n/notifier_agent', 'add', [i, 1]).catch((error: unknown) => error);
          if (value !== i + 1) wrong.push(value);
          await new Promise((resolve) => setTimeout(resolve, 2));
        }
      });
      try {
        const putBack = async (bytes: Buffer): Promise<void> => {
          await rm(pointerB, { force: true });
          await writeFile(pointerB, bytes);
        };
        // Node B's mirrored name rolled back by hand: refused, though the database never moved.
        await putBack(janProd);
        expect(await prodOn(nodeB)).toBe('ERR_SANDPOOL_SNAPSHOT_CORRUPT');
        expect(await prodOn(nodeA)).toBe(2);
        // Removed on A: the generation goes up and stays; B's last pointer put back stays refused.
        await nodeA.snapshots.remove('r', 'prod');
        expect(await generation()).toEqual({ recorded: 3, pointer: null });
        await answers(nodeB, 'ERR_SANDPOOL_SNAPSHOT_NOT_FOUND');
        await putBack(junProd);
        expect(await prodOn(nodeB)).toBe('ERR_SANDPOOL_SNAPSHOT_CORRUPT');
        // Made again (on B this time), it counts on from the removal, and no old pointer passes.
        await rm(pointerB);
        await nodeB.snapshots.point('r', 'prod', 'jan');
        expect(await generation()).toEqual({ recorded: 4, pointer: 4 });
        await answers(nodeA, 1);
        expect(await prodOn(nodeB)).toBe(1);
        for (const old of [janProd, junProd]) {
          await putBack(old);
          expect(await prodOn(nodeB)).toBe('ERR_SANDPOOL_SNAPSHOT_CORRUPT');
        }
        await nodeB.snapshots.point('r', 'prod', 'jan');
        // Both nodes moving the name at once: no two moves get one generation; one that lost
        // the race is refused (try again), and every node ends on the database's pointer.
        let taken = 0;
        for (let round = 0; round < 10; round++) {
          const outcomes = await Promise.all(
            [nodeA.snapshots.point('r', 'prod', 'jun'), nodeB.snapshots.point('r', 'prod', 'jan')].map((move) =>
              move.then(
                () => 'taken',
                (error: { code?: string }) => error.code,
              ),
            ),
          );
          for (const outcome of outcomes) expect(['taken', 'ERR_SANDPOOL_SNAPSHOT_BUILD']).toContain(outcome);
          taken += outcomes.filter((outcome) => outcome === 'taken').length;
        }
        console.log(`concurrent moves of one name from two nodes: ${taken} of 20 taken, the rest refused`);
        const last = await generation();
        expect(last).toEqual({ recorded: 5 + taken, pointer: 5 + taken });
        const want = (await admin.query(`SELECT pointer FROM sandpool_pointers WHERE swarm = 'r' AND name = 'prod'`))
          .rows[0]?.pointer as string;
        for (const root of [rootA, rootB]) {
          await until(async () => (await readFile(join(root, 'r/snapshots/prod'), 'utf8')) === want);
        }
        const version = JSON.parse(want).digest === (await nodeA.snapshots.get('r', 'jan')).digest ? 1 : 2;
        await answers(nodeA, version);
        await answers(nodeB, version);
        // A sign is a move too: taken in the database, at the next generation, by every node.
        await nodeA.snapshots.sign('r', 'prod');
        expect(await generation()).toEqual({ recorded: 6 + taken, pointer: 6 + taken });
        const signed = (await admin.query(`SELECT pointer FROM sandpool_pointers WHERE swarm = 'r' AND name = 'prod'`))
          .rows[0]?.pointer as string;
        await until(async () => (await readFile(join(rootB, 'r/snapshots/prod'), 'utf8')) === signed);
        await answers(nodeB, version);
      } finally {
        stop = true;
        await Promise.all(loops);
      }
      expect(wrong).toEqual([]);
      expect(invariants(nodeA)).toEqual([]);
      expect(invariants(nodeB)).toEqual([]);
      await Promise.all([nodeA.close(), nodeB.close()]);
    } finally {
      await admin.end();
    }
  }, 180_000);

  it('refuses writes while the database cannot be reached, changes nothing, and keeps serving', async () => {
    // A closed port: every connection fails at once.
    const url = 'postgres://sandpool:hunter2-secret@127.0.0.1:1/sandpool';
    const root = await makeRoot({ ...(await counterAgent('n')), 'a/live/notifier_agent.mjs': agent(1) });
    const pool = openPool({ root, store: { postgres: url } });
    const states: string[] = [];
    pool.on('store', ({ state }) => states.push(state));
    for (const attempt of [() => pool.snapshots.create('a', 'v1'), () => pool.snapshots.point('a', 'prod', 'v1')]) {
      const error = await attempt().then(
        () => null,
        (caught: unknown) => caught,
      );
      expect(error).toMatchObject({ code: 'ERR_SANDPOOL_SNAPSHOT_BUILD' });
      expect(JSON.stringify(error, Object.getOwnPropertyNames(error))).not.toContain('hunter2');
      await expect(pool.call('n/notifier_agent', 'add', [2, 3])).resolves.toBe(5);
    }
    await expect(pool.snapshots.get('a', 'v1')).rejects.toMatchObject({ code: 'ERR_SANDPOOL_SNAPSHOT_NOT_FOUND' });
    await until(async () => states.includes('lost'));
    expect(invariants(pool)).toEqual([]);
  });

  it('refuses a malformed store option without showing the connection string', async () => {
    const { createPool } = await import('sandpool');
    const secret = 'mysql://user:hunter2-secret@db.example/x';
    let caught: unknown;
    try {
      createPool({ root: await makeRoot(), store: { postgres: secret } });
    } catch (error) {
      caught = error;
    }
    expect(caught).toMatchObject({ code: 'ERR_SANDPOOL_INVALID_OPTIONS' });
    expect(JSON.stringify(caught, Object.getOwnPropertyNames(caught))).not.toContain('hunter2');
    expect(String((caught as Error).message)).not.toContain('hunter2');
  });
});
