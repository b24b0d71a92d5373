// A fleet on one PostgreSQL store and no shared folder: two pools in two processes, each with
// its own root. A snapshot made on one node serves on the other; a move on one drains the old
// content on the other within a measured bound; a tampered cached file is refused; a lost
// connection leaves cached keys serving, and the node reconnects and sees a later move.
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, lstatSync, openSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { chmod, type FileHandle, open, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import pg from 'pg';
import { SnapshotStore } from 'sandpool';
import { afterEach, describe, expect, it } from 'vitest';
import { locateArtifact } from '../packages/sandpool/dist/store/artifact.js';
import { contentDigest, serializeManifest } from '../packages/sandpool/dist/store/manifest.js';
import { claimArtifact, collectUnused } from '../packages/sandpool/dist/store/postgres-content.js';
import { inbox, percentile } from './support/child.js';
import { withNeighbour } from './support/neighbours.js';
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

/** The tables as a release before content collection made them: a node must work on them as they are. */
const EARLIER_TABLES = `
CREATE TABLE sandpool_artifacts (
  swarm text NOT NULL, digest text NOT NULL, manifest text NOT NULL, PRIMARY KEY (swarm, digest));
CREATE TABLE sandpool_artifact_files (
  swarm text NOT NULL, digest text NOT NULL, path text NOT NULL, bytes bytea NOT NULL,
  PRIMARY KEY (swarm, digest, path), FOREIGN KEY (swarm, digest) REFERENCES sandpool_artifacts ON DELETE CASCADE);
CREATE TABLE sandpool_pointers (
  swarm text NOT NULL, name text NOT NULL, digest text NOT NULL, pointer text NOT NULL,
  PRIMARY KEY (swarm, name), FOREIGN KEY (swarm, digest) REFERENCES sandpool_artifacts);`;

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

/**
 * The process holding this machine's end of a TCP connection whose local port is `port`: the
 * socket's inode from /proc/net/tcp, then the process with a descriptor on it.
 */
function socketOwner(port: number): number | null {
  const inodes = ['/proc/net/tcp', '/proc/net/tcp6'].flatMap((table) =>
    readFileSync(table, 'utf8')
      .split('\n')
      .slice(1)
      .map((line) => line.trim().split(/\s+/))
      .filter((fields) => fields.length > 9 && Number.parseInt(fields[1]?.split(':')[1] ?? '', 16) === port)
      .map((fields) => `socket:[${fields[9]}]`),
  );
  for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue; // ended meanwhile
    }
    for (const fd of fds) {
      try {
        if (inodes.includes(readlinkSync(`/proc/${pid}/fd/${fd}`))) return Number(pid);
      } catch {
        // closed meanwhile
      }
    }
  }
  return null;
}

/**
 * The processes whose connections (by application name) last ran a query starting with `sql`
 * (and, given `waitingOn`, wait on it now): the coordinator, or another's command line.
 */
async function processesThatRan(admin: pg.Client, app: string, sql: string, waitingOn?: string): Promise<string[]> {
  const result = await admin.query(
    `SELECT client_port FROM pg_stat_activity WHERE application_name = $1 AND query LIKE $2
     AND ($3::text IS NULL OR wait_event_type = $3)`,
    [app, `${sql}%`, waitingOn ?? null],
  );
  return result.rows.map(({ client_port: port }: { client_port: number }) => {
    const pid = socketOwner(port);
    if (pid === null) return 'gone';
    return pid === process.pid ? 'coordinator' : readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  });
}

/**
 * A schema of this test's own on the database (its tables made there by the first pool), and
 * the URL that selects it; `drop` removes it once the test's pools are closed.
 */
async function privateSchema(base: string): Promise<{ url: string; drop: () => Promise<void> }> {
  const schema = runSwarm('sandpool_test_');
  const url = new URL(base);
  url.searchParams.set('options', `-c search_path=${schema}`);
  const admin = new pg.Client({ connectionString: base });
  await admin.connect();
  try {
    await admin.query(`CREATE SCHEMA ${schema}`);
  } finally {
    await admin.end();
  }
  return {
    url: url.href,
    drop: async () => {
      const dropper = new pg.Client({ connectionString: base });
      await dropper.connect();
      try {
        await dropper.query(`DROP SCHEMA ${schema} CASCADE`);
      } finally {
        await dropper.end();
      }
    },
  };
}

/**
 * Moves `name` to the content `from` names, as another node's move does, inside the caller's
 * transaction: the name's generation one up, its row (unsigned) at that generation, and
 * NOTIFY at commit. Returns the pointer written.
 */
async function moveByHand(client: pg.Client, swarm: string, name: string, from: string): Promise<string> {
  const source = await client.query('SELECT digest, pointer FROM sandpool_pointers WHERE swarm = $1 AND name = $2', [
    swarm,
    from,
  ]);
  const bumped = await client.query(
    'UPDATE sandpool_generations SET generation = generation + 1 WHERE swarm = $1 AND name = $2 RETURNING generation',
    [swarm, name],
  );
  const generation = Number(bumped.rows[0].generation);
  const pointer = `${JSON.stringify({ ...JSON.parse(source.rows[0].pointer as string), name, generation }, null, 2)}\n`;
  await client.query('UPDATE sandpool_pointers SET digest = $3, pointer = $4 WHERE swarm = $1 AND name = $2', [
    swarm,
    name,
    source.rows[0].digest,
    pointer,
  ]);
  await client.query('SELECT pg_notify($1, $2)', ['sandpool_pointers', `${swarm}/${name}`]);
  return pointer;
}

/**
 * Content of empty files at `paths` and a new name on it, written straight into the database
 * as a node would write them (whole, hashed, the name at generation 1), and NOTIFY. A row no
 * build makes, for what a node does with it. Returns its digest.
 */
async function emptyFilesByHand(admin: pg.Client, swarm: string, name: string, paths: string[]): Promise<string> {
  const empty = { sha256: createHash('sha256').digest('hex'), bytes: 0 };
  const files = Object.fromEntries(paths.map((path) => [path, empty]));
  const digest = contentDigest(files, {});
  const pointer = { sandpool: 'snapshot-pointer', version: 2, swarm, name, generation: 1, digest };
  await admin.query('BEGIN');
  await admin.query('INSERT INTO sandpool_artifacts (swarm, digest, manifest) VALUES ($1, $2, $3)', [
    swarm,
    digest,
    serializeManifest({ version: 3, swarm, digest, files, stems: {} }),
  ]);
  await admin.query(
    `INSERT INTO sandpool_artifact_files (swarm, digest, path, bytes)
     SELECT $1, $2, path, '' FROM unnest($3::text[]) AS path`,
    [swarm, digest, paths],
  );
  await admin.query('INSERT INTO sandpool_generations (swarm, name, generation) VALUES ($1, $2, 1)', [swarm, name]);
  await admin.query('INSERT INTO sandpool_pointers (swarm, name, digest, pointer) VALUES ($1, $2, $3, $4)', [
    swarm,
    name,
    digest,
    `${JSON.stringify({ ...pointer, createdAt: new Date().toISOString() }, null, 2)}\n`,
  ]);
  await admin.query('SELECT pg_notify($1, $2)', ['sandpool_pointers', `${swarm}/${name}`]);
  await admin.query('COMMIT');
  return digest;
}

/** A swarm of this run only: the database outlives the test, and other runs may share it. */
function runSwarm(prefix: string): string {
  return `${prefix}${randomBytes(4).toString('hex')}`;
}

/** The swarm's artifacts as the database holds them, by digest. */
async function contentRows(admin: pg.Client, swarm: string): Promise<string[]> {
  const result = await admin.query('SELECT digest FROM sandpool_artifacts WHERE swarm = $1 ORDER BY digest', [swarm]);
  return result.rows.map((row: { digest: string }) => row.digest);
}

async function fileRows(admin: pg.Client, swarm: string, digest: string): Promise<number> {
  const result = await admin.query(
    'SELECT count(*)::int AS n FROM sandpool_artifact_files WHERE swarm = $1 AND digest = $2',
    [swarm, digest],
  );
  return result.rows[0].n as number;
}

/** Every artifact of the swarm in the database last used `minutes` ago: what 10 minutes of waiting would do. */
async function ageRows(admin: pg.Client, swarm: string, minutes: number): Promise<void> {
  await admin.query(`UPDATE sandpool_artifacts SET used_at = now() - $2 * interval '1 minute' WHERE swarm = $1`, [
    swarm,
    minutes,
  ]);
}

/** A node's copies of the swarm's artifacts, by digest. */
async function copiesOn(root: string, swarm: string): Promise<string[]> {
  const names = await readdir(join(root, '.sandpool-cache/artifacts', swarm)).catch(() => [] as string[]);
  return names.filter((name) => /^[0-9a-f]{64}$/.test(name)).sort();
}

/** Every copy on a node last used two hours ago, as store.test.ts ages local content. */
async function ageCopies(root: string, swarm: string): Promise<void> {
  const twoHoursAgo = new Date(Date.now() - 2 * 60 * 60 * 1000);
  for (const digest of await copiesOn(root, swarm)) {
    await utimes(join(root, '.sandpool-cache/artifacts', swarm, digest), twoHoursAgo, twoHoursAgo);
  }
}

describe.skipIf(URL_ENV === undefined)('the PostgreSQL store, two nodes and no shared folder', () => {
  it('serves on B what A made, follows A’s moves within the bound, refuses tampered content, and outlives a lost connection', async () => {
    const url = URL_ENV as string;
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    try {
      await admin.query(DROP_TABLES);
      await admin.query(EARLIER_TABLES);
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

  it('makes its tables once when several nodes start together on an empty database', async () => {
    const url = URL_ENV as string;
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    try {
      await admin.query(DROP_TABLES);
      const nodes = await Promise.all(
        [1, 2, 3].map(async (version) =>
          openPool({
            root: await makeRoot({ 'a/live/notifier_agent.mjs': agent(version) }),
            store: { postgres: withApp(url, 'sandpool-test-tables'), recheckMs: 1000 },
          }),
        ),
      );
      // Each node makes its own swarm's snapshot at the same moment, each its first query.
      const made = await Promise.allSettled(nodes.map((pool, i) => pool.snapshots.create('a', `v${i + 1}`)));
      expect(made.map((outcome) => (outcome.status === 'fulfilled' ? 'made' : outcome.reason))).toEqual([
        'made',
        'made',
        'made',
      ]);
      for (const pool of nodes) expect(invariants(pool)).toEqual([]);
      await Promise.all(nodes.map((pool) => pool.close()));
    } finally {
      await admin.end();
    }
  });

  it('collects content no name has used for 10 minutes from the database and from every node, never content a name uses', async () => {
    const url = URL_ENV as string;
    const swarm = runSwarm('gc');
    const key = (name: string): string => `${swarm}@${name}/notifier_agent`;
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    try {
      const rootA = await makeRoot();
      const rootB = await makeRoot(await counterAgent('n'));
      const poolA = openPool({ root: rootA, store: { postgres: url } });
      const poolB = openPool({ root: rootB, store: { postgres: url } });
      const made = async (version: number, name: string): Promise<string> => {
        await writeFiles(rootA, { [`${swarm}/live/notifier_agent.mjs`]: agent(version) });
        return (await poolA.snapshots.create(swarm, name)).digest;
      };
      const [x1, x2, x3, x4] = [await made(1, 'v1'), await made(2, 'v2'), await made(3, 'v3'), await made(4, 'v4')];
      await poolA.snapshots.point(swarm, 'prod', 'v1');
      const sorted = (...digests: string[]): string[] => [...digests].sort();
      expect(await contentRows(admin, swarm)).toEqual(sorted(x1, x2, x3, x4));

      // Used long ago, then unnamed (x1 by a remove, x4 by a point moving its last name off):
      // the grace starts at the unnaming, so both stay through the collections that follow.
      await poolA.snapshots.point(swarm, 'prod', 'v2');
      await ageRows(admin, swarm, 11);
      await poolA.snapshots.remove(swarm, 'v1');
      await poolA.snapshots.point(swarm, 'v4', 'v2');
      expect(await contentRows(admin, swarm)).toEqual(sorted(x1, x2, x3, x4));
      // Unnamed 9 minutes ago: still within the grace when the next name is removed.
      await ageRows(admin, swarm, 9);
      await poolA.snapshots.remove(swarm, 'v4');
      expect(await contentRows(admin, swarm)).toEqual(sorted(x1, x2, x3, x4));

      // Past the grace: the next unnaming collects x1 and x4 (rows and files), never x2 (named
      // by prod and v2, though as old) nor x3 (unnamed, then created again under another name).
      await poolA.snapshots.remove(swarm, 'v3');
      await ageRows(admin, swarm, 11);
      expect(await made(3, 'back')).toBe(x3);
      await poolA.snapshots.remove(swarm, 'v2');
      expect(await contentRows(admin, swarm)).toEqual(sorted(x2, x3));
      expect(await fileRows(admin, swarm, x1)).toBe(0);
      expect(await fileRows(admin, swarm, x4)).toBe(0);
      expect(await fileRows(admin, swarm, x2)).toBeGreaterThan(0);

      // Node B mirrored every name; once its names are as the database's, its copies unused for
      // 10 minutes go with the next name it sees move off content, as the local store's do.
      await until(async () => (await readdir(join(rootB, swarm, 'snapshots'))).sort().join() === 'back,prod');
      await expect(poolB.call(key('prod'), 'version')).resolves.toBe(2);
      expect(await copiesOn(rootB, swarm)).toEqual(sorted(x1, x2, x3, x4));
      for (const root of [rootA, rootB]) await ageCopies(root, swarm);
      await poolA.snapshots.point(swarm, 'prod', 'back');
      await until(async () => (await poolB.call(key('prod'), 'version')) === 3);
      await until(async () => (await copiesOn(rootB, swarm)).join() === sorted(x2, x3).join());
      expect(await copiesOn(rootA, swarm)).toEqual(sorted(x2, x3));
      expect(await contentRows(admin, swarm)).toEqual(sorted(x2, x3));
      await expect(poolB.call(key('back'), 'version')).resolves.toBe(3);
      await expect(poolB.call('n/notifier_agent', 'add', [2, 3])).resolves.toBe(5);
      expect(invariants(poolA)).toEqual([]);
      expect(invariants(poolB)).toEqual([]);
    } finally {
      await admin.end();
    }
  });

  it('collects nothing another node is taking: a create claiming the content, or a name being pointed at it', async () => {
    const url = URL_ENV as string;
    const swarm = runSwarm('race');
    const root = await makeRoot();
    const pool = openPool({ root, store: { postgres: url } });
    const digests: string[] = [];
    for (const version of [1, 2, 3]) {
      await writeFiles(root, { [`${swarm}/live/notifier_agent.mjs`]: agent(version) });
      digests.push((await pool.snapshots.create(swarm, `v${version}`)).digest);
      await pool.snapshots.remove(swarm, `v${version}`);
    }
    await pool.close();
    const [claimed, pointed, free] = digests as [string, string, string];
    const [admin, taker] = [new pg.Client({ connectionString: url }), new pg.Client({ connectionString: url })];
    await Promise.all([admin.connect(), taker.connect()]);
    try {
      // All three unnamed, and past any grace.
      await ageRows(admin, swarm, 60);
      const pointerOf = (name: string, digest: string): unknown[] => [swarm, name, digest, `{"name":"${name}"}`];
      // Another node, mid-transaction: a create claiming one content, a name pointed at another.
      await taker.query('BEGIN');
      await claimArtifact(taker, locateArtifact(root, swarm, claimed));
      await taker.query('INSERT INTO sandpool_pointers (swarm, name, digest, pointer) VALUES ($1, $2, $3, $4)', [
        ...pointerOf('taken', pointed),
      ]);
      // A collection meanwhile skips what the taker holds, without waiting for it.
      await admin.query('BEGIN');
      const removed = await Promise.race([
        collectUnused(admin, swarm, 0),
        new Promise<never>((_, reject) =>
          setTimeout(() => reject(new Error('the collection waited for the taker')), 30_000).unref(),
        ),
      ]);
      await admin.query('COMMIT');
      expect(removed).toEqual([free]);
      await taker.query('INSERT INTO sandpool_pointers (swarm, name, digest, pointer) VALUES ($1, $2, $3, $4)', [
        ...pointerOf('created', claimed),
      ]);
      await taker.query('COMMIT');
      expect(await contentRows(admin, swarm)).toEqual([claimed, pointed].sort());
      const files = Object.keys(locateArtifact(root, swarm, claimed).manifest.files).length;
      expect(await fileRows(admin, swarm, claimed)).toBe(files);
      expect(await fileRows(admin, swarm, free)).toBe(0);
      // Named now: a later collection leaves both.
      await admin.query('BEGIN');
      expect(await collectUnused(admin, swarm, 0)).toEqual([]);
      await admin.query('COMMIT');
    } finally {
      // The taker first: its connection's end ends its transaction, which a stuck collection waits for.
      await taker.end();
      await admin.query('DELETE FROM sandpool_pointers WHERE swarm = $1', [swarm]).catch(() => {});
      await admin.end();
    }
  });

  it('signs a name in the database: every node follows the signed pointer, and a move made meanwhile is never undone', async () => {
    const url = URL_ENV as string;
    const swarm = runSwarm('sign');
    const secret = 'fleet-signing-secret-0123456789';
    const key = `${swarm}@prod/notifier_agent`;
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    try {
      // Made by a node without the secret: unsigned rows.
      const rootMaker = await makeRoot();
      const maker = openPool({ root: rootMaker, store: { postgres: url } });
      for (const version of [1, 2]) {
        await writeFiles(rootMaker, { [`${swarm}/live/notifier_agent.mjs`]: agent(version) });
        await maker.snapshots.create(swarm, `v${version}`);
      }
      await maker.snapshots.point(swarm, 'prod', 'v1');
      const rootA = await makeRoot();
      const rootB = await makeRoot(await counterAgent('n'));
      const signer = openPool({
        root: rootA,
        snapshotSecret: secret,
        store: { postgres: withApp(url, 'sandpool-test-signer') },
      });
      const follower = openPool({ root: rootB, snapshotSecret: secret, store: { postgres: url } });
      const callB = (): Promise<unknown> =>
        follower.call(key, 'version').catch((error: { code?: string }) => error.code ?? String(error));
      await until(async () => (await callB()) === 'ERR_SANDPOOL_SNAPSHOT_CORRUPT');

      // Signed on A: the row is signed, and B, which refused the unsigned pointer, serves it.
      await expect(signer.snapshots.sign(swarm, 'prod')).resolves.toMatchObject({ name: 'prod', signed: true });
      const row = await admin.query('SELECT pointer FROM sandpool_pointers WHERE swarm = $1 AND name = $2', [
        swarm,
        'prod',
      ]);
      expect(JSON.parse(row.rows[0].pointer as string)).toHaveProperty('hmac');
      await until(async () => (await callB()) === 1);

      // Another node moves v1 while A signs it: held open in a transaction until A's write waits
      // on it, then committed. A's sign must fail and leave the move as it was made.
      await admin.query('BEGIN');
      const movedPointer = await moveByHand(admin, swarm, 'v1', 'v2');
      const signing = signer.snapshots.sign(swarm, 'v1').then(
        () => null,
        (error: { code?: string }) => error.code,
      );
      await until(async () => {
        const waiting = await new pg.Client({ connectionString: url });
        await waiting.connect();
        try {
          const result = await waiting.query(
            `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'sandpool-test-signer' AND wait_event_type = 'Lock'`,
          );
          return (result.rows[0].n as number) > 0;
        } finally {
          await waiting.end();
        }
      });
      await admin.query('COMMIT');
      expect(await signing).toBe('ERR_SANDPOOL_SNAPSHOT_BUILD');
      const after = await admin.query('SELECT pointer FROM sandpool_pointers WHERE swarm = $1 AND name = $2', [
        swarm,
        'v1',
      ]);
      expect(after.rows[0].pointer).toBe(movedPointer);
      // A's own copy of the name is the database's again (unsigned: under A's secret, refused).
      await until(async () => (await readFile(join(rootA, swarm, 'snapshots', 'v1'), 'utf8')) === movedPointer);
      await expect(follower.call('n/notifier_agent', 'add', [2, 3])).resolves.toBe(5);
      for (const pool of [maker, signer, follower]) expect(invariants(pool)).toEqual([]);
    } finally {
      await admin.query('ROLLBACK').catch(() => {});
      await admin.end();
    }
  });

  it('uploads and downloads artifacts in the snapshot helper process, never on the coordinator', async () => {
    const url = URL_ENV as string;
    const swarm = runSwarm('xfer');
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    try {
      const apps = { a: `sandpool-test-xfer-a-${process.pid}`, b: `sandpool-test-xfer-b-${process.pid}` };
      const live = {
        [`${swarm}/live/notifier_agent.mjs`]: agent(1),
        [`${swarm}/live/data.json`]: JSON.stringify({ padding: 'x'.repeat(200_000) }),
      };
      // The content's digest, from a store of its own: the test takes its row first, so the
      // upload waits, mid-transaction, where it can be seen.
      const { digest } = await new SnapshotStore({ root: await makeRoot(live) }).create(swarm, 'probe');
      await admin.query('BEGIN');
      await admin.query(`INSERT INTO sandpool_artifacts (swarm, digest, manifest) VALUES ($1, $2, '{}')`, [
        swarm,
        digest,
      ]);
      const rootA = await makeRoot(live);
      const poolA = openPool({ root: rootA, store: { postgres: withApp(url, apps.a) } });
      const creating = poolA.snapshots.create(swarm, 'v1');
      const waiting = new pg.Client({ connectionString: url });
      await waiting.connect();
      let uploaders: string[] = [];
      try {
        await until(async () => {
          uploaders = await processesThatRan(waiting, apps.a, 'INSERT INTO sandpool_artifacts', 'Lock');
          return uploaders.length > 0;
        });
      } finally {
        await waiting.end();
      }
      await admin.query('ROLLBACK');
      expect((await creating).digest).toBe(digest);

      const rootB = await makeRoot();
      const poolB = openPool({ root: rootB, store: { postgres: withApp(url, apps.b) } });
      await until(async () => (await copiesOn(rootB, swarm)).includes(digest));
      await expect(poolB.call(`${swarm}@v1/notifier_agent`, 'version')).resolves.toBe(1);
      // Each connection's last query, traced to the process holding it (pg keeps idle ones 10 s).
      const downloaders = await processesThatRan(admin, apps.b, 'SELECT f.path, f.bytes FROM sandpool_artifact_files');
      expect(downloaders.length).toBeGreaterThan(0);
      for (const owner of [...uploaders, ...downloaders]) expect(owner).toMatch(/store\/helper-entry\.js/);
    } finally {
      await admin.query('ROLLBACK').catch(() => {});
      await admin.end();
    }
  });

  it("moves a name on a node whose libuv pool is full: the pointer and its generation's record land without waiting for it", async () => {
    const url = URL_ENV as string;
    const swarm = runSwarm('pool');
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    const fifos: string[] = [];
    const release = (): void => {
      // A writer's open completes the reader's blocked one: each pool thread is free again.
      for (const fifo of fifos.splice(0)) closeSync(openSync(fifo, 'w'));
    };
    try {
      const root = await makeRoot({ ...(await counterAgent('n')), [`${swarm}/live/notifier_agent.mjs`]: agent(1) });
      const pool = openPool({ root, store: { postgres: url } });
      await pool.snapshots.create(swarm, 'v1');
      await writeFiles(root, { [`${swarm}/live/notifier_agent.mjs`]: agent(2) });
      await pool.snapshots.create(swarm, 'v2');
      await pool.snapshots.point(swarm, 'prod', 'v1');
      await expect(pool.call(`${swarm}@prod/notifier_agent`, 'version')).resolves.toBe(1);

      // Every thread of libuv's pool held by an open() of a FIFO no one writes: a tenant's
      // async jobs, or workers' module loads, that do not end soon.
      const threads = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
      const opened: Promise<FileHandle>[] = [];
      for (let i = 0; i < threads; i++) {
        const fifo = join(root, `fifo-${i}`);
        expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
        fifos.push(fifo);
        opened.push(open(fifo, 'r'));
      }
      const probe = stat(root).then(() => 'ran');
      const pending = new Promise((resolve) => setTimeout(() => resolve('pending'), 500));
      expect(await Promise.race([probe, pending])).toBe('pending');

      // Another node moves prod to v2's content.
      await admin.query('BEGIN');
      const moved = await moveByHand(admin, swarm, 'prod', 'v2');
      await admin.query('COMMIT');
      // The pointer lands, and the record of its generation beside it.
      await until(async () => readFileSync(join(root, swarm, 'snapshots', 'prod'), 'utf8') === moved, 20_000);
      const record = join(root, '.sandpool-cache', 'generations', swarm, 'prod');
      const generation = (JSON.parse(moved) as { generation: number }).generation;
      await until(async () => readFileSync(record, 'utf8') === `${generation}\n`, 20_000);

      release();
      await Promise.all(opened.map(async (handle) => (await handle).close()));
      expect(await probe).toBe('ran');
      await until(async () => (await pool.call(`${swarm}@prod/notifier_agent`, 'version')) === 2);
      await expect(pool.call('n/notifier_agent', 'add', [2, 3])).resolves.toBe(5);
      expect(invariants(pool)).toEqual([]);
    } finally {
      release();
      await admin.end();
    }
  });

  it('downloads new content once on a node, however many of its names arrive at once', async () => {
    const swarm = runSwarm('once');
    const app = `sandpool-test-once-${process.pid}`;
    // A schema of its own: a new node mirrors all the database holds, and the lock below must
    // hold back only this test's download.
    const { url, drop } = await privateSchema(URL_ENV as string);
    const [admin, namer] = [new pg.Client({ connectionString: url }), new pg.Client({ connectionString: url })];
    await Promise.all([admin.connect(), namer.connect()]);
    try {
      // Content in the database that no name holds yet (within its grace).
      const maker = openPool({
        root: await makeRoot({ [`${swarm}/live/notifier_agent.mjs`]: agent(2) }),
        store: { postgres: url },
      });
      const { digest } = await maker.snapshots.create(swarm, 'made');
      const made = await admin.query(`SELECT pointer FROM sandpool_pointers WHERE swarm = $1 AND name = 'made'`, [
        swarm,
      ]);
      await maker.snapshots.remove(swarm, 'made');
      const root = await makeRoot(await counterAgent('n'));
      const node = openPool({ root, store: { postgres: withApp(url, app) } });
      await expect(node.call('n/notifier_agent', 'add', [2, 3])).resolves.toBe(5);

      // Its files cannot be read for now; two names of it arrive on the node at once.
      await admin.query('BEGIN');
      await admin.query('LOCK TABLE sandpool_artifact_files IN ACCESS EXCLUSIVE MODE');
      await namer.query('BEGIN');
      for (const name of ['p1', 'p2']) {
        // Each a new name's first move, as another node's create writes it.
        const pointer = `${JSON.stringify({ ...JSON.parse(made.rows[0].pointer as string), name, generation: 1 }, null, 2)}\n`;
        await namer.query('INSERT INTO sandpool_generations (swarm, name, generation) VALUES ($1, $2, 1)', [
          swarm,
          name,
        ]);
        await namer.query('INSERT INTO sandpool_pointers (swarm, name, digest, pointer) VALUES ($1, $2, $3, $4)', [
          swarm,
          name,
          digest,
          pointer,
        ]);
        await namer.query('SELECT pg_notify($1, $2)', ['sandpool_pointers', `${swarm}/${name}`]);
      }
      await namer.query('COMMIT');
      // Both names wait for their content (each has its pointer written beside its place).
      const staged = async (): Promise<number> =>
        (await readdir(join(root, swarm, 'snapshots')).catch(() => [] as string[])).filter((f) => f.startsWith('.tmp-'))
          .length;
      const waiting = async (): Promise<number> =>
        (
          await namer.query(
            `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'
             AND query LIKE 'SELECT f.path, f.bytes FROM sandpool_artifact_files%'`,
            [app],
          )
        ).rows[0].n as number;
      await until(async () => (await staged()) === 2 && (await waiting()) >= 1);
      // A second download would be waiting on the lock within moments: none comes.
      let most = 0;
      const lookUntil = Date.now() + 3_000;
      while (Date.now() < lookUntil) {
        most = Math.max(most, await waiting());
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      expect(most).toBe(1);
      await admin.query('COMMIT');
      await until(async () => (await copiesOn(root, swarm)).includes(digest));
      for (const name of ['p1', 'p2']) {
        await until(
          async () => (await node.call(`${swarm}@${name}/notifier_agent`, 'version').catch(() => null)) === 2,
        );
      }
      expect(invariants(node)).toEqual([]);
      await Promise.all([maker.close(), node.close()]);
    } finally {
      await admin.query('ROLLBACK').catch(() => {});
      await Promise.all([admin.end(), namer.end()]);
      await drop();
    }
  });

  it("uploads no node's damaged copy: content rewritten on one node's disk never becomes every node's", async () => {
    const url = URL_ENV as string;
    const swarm = runSwarm('dmg');
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    try {
      const rootA = await makeRoot({ [`${swarm}/live/notifier_agent.mjs`]: agent(1) });
      const poolA = openPool({ root: rootA, store: { postgres: url } });
      const poolB = openPool({ root: await makeRoot(await counterAgent('n')), store: { postgres: url } });
      const onB = (): Promise<unknown> =>
        poolB.call(`${swarm}@v1/notifier_agent`, 'version').catch((error: { code?: string }) => error.code);
      await withNeighbour(poolB, async () => {
        // The live key builds its artifact on A (a live build is never uploaded); then its
        // bundle is rewritten on A's disk, same length, manifest left as it was.
        await expect(poolA.call(`${swarm}/notifier_agent`, 'version')).resolves.toBe(1);
        const [digest] = await copiesOn(rootA, swarm);
        const dir = join(rootA, '.sandpool-cache/artifacts', swarm, digest as string);
        const bundle = join(dir, '.sandpool-bundles/notifier_agent.mjs');
        const text = await readFile(bundle, 'utf8');
        expect(text).toMatch(/=> 1;/);
        await chmod(join(dir, '.sandpool-bundles'), 0o755);
        await chmod(bundle, 0o644);
        await writeFile(bundle, text.replace(/=> 1;/, '=> 6;'));

        // A create of the same content reuses the folder there: its upload checks every file.
        await expect(poolA.snapshots.create(swarm, 'v1')).rejects.toMatchObject({
          code: 'ERR_SANDPOOL_SNAPSHOT_CORRUPT',
          message: expect.stringMatching(/does not match its manifest on this node/),
        });
        expect(await contentRows(admin, swarm)).toEqual([]);
        expect(await onB()).toBe('ERR_SANDPOOL_SNAPSHOT_NOT_FOUND');

        // A's disk repaired (the damaged copy removed): its next create builds and uploads the
        // content whole, and B, which never held the damaged bytes, serves it.
        await chmod(dir, 0o755);
        await rm(dir, { recursive: true });
        await expect(poolA.snapshots.create(swarm, 'v1')).resolves.toMatchObject({ digest });
        expect(await contentRows(admin, swarm)).toEqual([digest]);
        await until(async () => (await onB()) === 1);
      });
      expect(invariants(poolA)).toEqual([]);
      await Promise.all([poolA.close(), poolB.close()]);
    } finally {
      await admin.end();
    }
  });

  it("collects content whose naming failed with the swarm's next create: creates racing on two nodes cannot fill the database", async () => {
    const url = URL_ENV as string;
    const swarm = runSwarm('fill');
    const app = `sandpool-test-fill-${process.pid}`;
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    try {
      // Two nodes whose live/ differ (a deploy reached one of them first).
      const rootA = await makeRoot({ [`${swarm}/live/notifier_agent.mjs`]: agent(1) });
      const rootB = await makeRoot({ ...(await counterAgent('n')), [`${swarm}/live/notifier_agent.mjs`]: agent(2) });
      const poolA = openPool({ root: rootA, store: { postgres: withApp(url, app) } });
      const poolB = openPool({ root: rootB, store: { postgres: withApp(url, app) } });
      await withNeighbour(poolB, async () => {
        // Both create `x` at once: each uploads its content, then one takes the name and the
        // other is refused. The name's generation row, held here until both wait on it, makes
        // the race certain.
        await admin.query('BEGIN');
        await admin.query('INSERT INTO sandpool_generations (swarm, name, generation) VALUES ($1, $2, 0)', [
          swarm,
          'x',
        ]);
        const outcome = (pool: typeof poolA): Promise<string> =>
          pool.snapshots.create(swarm, 'x').then(
            (info) => info.digest,
            (error: { code?: string }) => error.code ?? String(error),
          );
        const creates = [outcome(poolA), outcome(poolB)];
        await until(async () => {
          const result = await admin.query(
            `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'`,
            [app],
          );
          return result.rows[0].n === 2;
        });
        await admin.query('ROLLBACK');
        const outcomes = await Promise.all(creates);
        expect(outcomes.filter((got) => got === 'ERR_SANDPOOL_SNAPSHOT_EXISTS')).toHaveLength(1);
        const named = outcomes.find((got) => got !== 'ERR_SANDPOOL_SNAPSHOT_EXISTS') as string;
        const rows = await contentRows(admin, swarm);
        expect(rows).toHaveLength(2);
        const orphan = rows.find((digest) => digest !== named) as string;

        // Past its grace, the swarm's next create (a new name, on the node whose content was
        // named: the other's would name the orphan) collects it, and only it.
        await ageRows(admin, swarm, 11);
        const winner = outcomes[0] === named ? poolA : poolB;
        expect((await winner.snapshots.create(swarm, 'y')).digest).toBe(named);
        expect(await contentRows(admin, swarm)).toEqual([named]);
        expect(await fileRows(admin, swarm, orphan)).toBe(0);
        await until(async () => (await poolB.call(`${swarm}@x/notifier_agent`, 'version').catch(() => null)) !== null);
      });
      expect(invariants(poolA)).toEqual([]);
      await Promise.all([poolA.close(), poolB.close()]);
    } finally {
      await admin.query('ROLLBACK').catch(() => {});
      await admin.end();
    }
  });

  it('refuses content from the database that no build here would make: many empty files count as a build counts them', async () => {
    const url = URL_ENV as string;
    const swarm = runSwarm('inodes');
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    try {
      const root = await makeRoot(await counterAgent('n'));
      const pool = openPool({ root, maxSnapshotBytes: 1024 * 1024, store: { postgres: url } });
      await withNeighbour(pool, async () => {
        // A row no build under this bound makes: 5,000 empty files (0 bytes of content, 1.3 MB
        // as a build counts them), whole and hashed, and a name on it, as a node would write it.
        const paths = Array.from({ length: 5_000 }, (_, i) => `f/${i}`);
        await emptyFilesByHand(admin, swarm, 'many', paths);
        // The name lands once its content was fetched or refused: refused, and nothing of it written.
        await until(
          async () => lstatSync(join(root, swarm, 'snapshots/many'), { throwIfNoEntry: false }) !== undefined,
        );
        expect(await readdir(join(root, '.sandpool-cache/artifacts', swarm)).catch(() => [])).toEqual([]);
        await expect(pool.call(`${swarm}@many/notifier_agent`, 'version')).rejects.toMatchObject({
          code: 'ERR_SANDPOOL_SNAPSHOT_CORRUPT',
        });
      });
      await pool.close();
    } finally {
      await admin.query('ROLLBACK').catch(() => {});
      await admin.query('DELETE FROM sandpool_pointers WHERE swarm = $1', [swarm]).catch(() => {});
      await admin.end();
    }
  });

  it('moves a name off its old content on a node even when the new content’s manifest holds a file that is also a folder', async () => {
    const url = URL_ENV as string;
    const swarm = runSwarm('clash');
    const key = `${swarm}@prod/notifier_agent`;
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    try {
      const maker = openPool({
        root: await makeRoot({ [`${swarm}/live/notifier_agent.mjs`]: agent(1) }),
        store: { postgres: url },
      });
      await maker.snapshots.create(swarm, 'prod');
      const root = await makeRoot(await counterAgent('n'));
      const pool = openPool({ root, store: { postgres: url } });
      await withNeighbour(pool, async () => {
        await until(async () => (await pool.call(key, 'version').catch(() => null)) === 1);
        // `a` and `a/b` both files: no build makes it, and no node can write it. Then prod moved there.
        await emptyFilesByHand(admin, swarm, 'clash', ['a', 'a/b']);
        await admin.query('BEGIN');
        const moved = await moveByHand(admin, swarm, 'prod', 'clash');
        await admin.query('COMMIT');
        // The name moves on this node all the same: its old content serves no more.
        await until(async () => (await readFile(join(root, swarm, 'snapshots/prod'), 'utf8')) === moved);
        await expect(pool.call(key, 'version')).rejects.toMatchObject({ code: 'ERR_SANDPOOL_SNAPSHOT_CORRUPT' });
      });
      await Promise.all([maker.close(), pool.close()]);
    } finally {
      await admin.query('ROLLBACK').catch(() => {});
      // No name left on what no node can fetch: every later node would try again and again.
      await admin.query('DELETE FROM sandpool_pointers WHERE swarm = $1', [swarm]).catch(() => {});
      await admin.end();
    }
  });

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
