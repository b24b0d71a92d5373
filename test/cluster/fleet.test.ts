// A fleet with no shared folder: three `sandpool serve --config` nodes, each with its own root,
// on one PostgreSQL store, behind HAProxy, then behind nginx. Code reaches the fleet only through the HTTP API:
// a deploy, a snapshot and a channel move through one node, calls through the balancer. The
// database is read only to assert, and to cut the nodes' connections.
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { pack } from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { percentile } from '../support/child.js';
import { countBy, sleep, waitUntilServing } from './calls.js';
import { findHaproxy, startHaproxy, writeConfig as writeHaproxyConfig } from './haproxy.js';
import { findNginx, startNginx, writeConfig as writeNginxConfig } from './nginx.js';
import { freePort, type ServeNode, type Started, startConfiguredNode, stop } from './processes.js';

const POSTGRES = process.env.SANDPOOL_TEST_POSTGRES;
const inCi = process.env.CI === 'true' || process.env.CI === '1';

/** A balancer in front of the three nodes: its binary, how it starts, and the signal that stops it gracefully. */
interface Balancer {
  readonly name: string;
  readonly binary: string | null;
  readonly stopSignal: NodeJS.Signals;
  start(binary: string, dir: string, port: number, nodes: readonly ServeNode[]): Promise<Started>;
}

const BALANCERS: readonly Balancer[] = [
  {
    name: 'haproxy',
    binary: findHaproxy(),
    stopSignal: 'SIGTERM',
    start: async (binary, dir, port, nodes) =>
      startHaproxy(
        binary,
        await writeHaproxyConfig(
          dir,
          port,
          nodes.map(({ name, port }) => ({ name, port })),
        ),
      ),
  },
  {
    name: 'nginx',
    binary: findNginx(),
    stopSignal: 'SIGQUIT',
    start: async (binary, dir, port, nodes) =>
      startNginx(
        binary,
        dir,
        await writeNginxConfig(
          dir,
          port,
          nodes.map((node) => node.port),
        ),
      ),
  },
];

/** Swarm and connection names of this run only: the database outlives it, and other runs may share it. */
const RUN = randomBytes(4).toString('hex');
/** Enough stems that the hash gives each of the three nodes some (all on two nodes: about 1 in 50,000). */
const STEMS = Array.from({ length: 24 }, (_, i) => `s${String(i).padStart(2, '0')}`);
/** Moves measured: the first five to new content (fetched by every node), then five rollbacks. */
const NEW_VERSIONS = 5;
/** How long a node may take to answer a move, a stop or a reconnection: a failure bound, not a figure. */
const BOUND_MS = 60_000;

interface Reply {
  status: number;
  node: string | null;
  body: Record<string, unknown>;
}

async function request(url: string, method: string, body?: unknown, type = 'application/json'): Promise<Reply> {
  const response = await fetch(url, {
    method,
    ...(body === undefined
      ? {}
      : { headers: { 'content-type': type }, body: body instanceof Buffer ? body : JSON.stringify(body) }),
    signal: AbortSignal.timeout(30_000),
  });
  const text = await response.text();
  return {
    status: response.status,
    node: response.headers.get('x-sandpool-node'),
    body: text === '' ? {} : (JSON.parse(text) as Record<string, unknown>),
  };
}

/** A call as a client makes it: an answer, or the error it met (fetch's own failure as status 0). */
async function call(base: string, key: string, fn: string, args: unknown[]): Promise<Reply> {
  try {
    return await request(`${base}/v1/call/${key}`, 'POST', { fn, args });
  } catch (error) {
    // fetch says only "fetch failed"; what failed is its cause (ECONNRESET, UND_ERR_SOCKET…).
    const cause = error instanceof Error && error.cause instanceof Error ? error.cause : null;
    const code = (cause as { code?: unknown } | null)?.code;
    return { status: 0, node: null, body: { code: String(error), cause: `${String(code)}: ${cause?.message}` } };
  }
}

/** The version a `version` call answered, or null for anything else. */
function versionOf(reply: Reply): string | null {
  const result = reply.body.result as { v?: unknown } | undefined;
  return reply.status === 200 && typeof result?.v === 'string' ? result.v : null;
}

async function tar(files: Readonly<Record<string, string>>): Promise<Buffer> {
  const archive = pack();
  const chunks: Buffer[] = [];
  // Read as it is written: the packer waits for its reader once it holds a few chunks.
  const read = (async () => {
    for await (const chunk of archive) chunks.push(chunk as Buffer);
  })();
  for (const [name, text] of Object.entries(files)) {
    await new Promise<void>((resolve, reject) =>
      archive.entry({ name, type: 'file', mode: 0o644 }, text, (error) => (error ? reject(error) : resolve())),
    );
  }
  archive.finalize();
  await read;
  return Buffer.concat(chunks);
}

const appFiles = (version: string): Record<string, string> =>
  Object.fromEntries(
    STEMS.map((stem) => [`${stem}.mjs`, `export const version = () => ({ v: '${version}', pid: process.pid });\n`]),
  );

/** Polls `check` until it holds (at most BOUND_MS): the pace of the poll is no assertion. */
async function until(what: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + BOUND_MS;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${BOUND_MS} ms`);
    await sleep(5);
  }
}

for (const balancer of BALANCERS) {
  const missing = [
    POSTGRES === undefined ? 'SANDPOOL_TEST_POSTGRES' : null,
    balancer.binary === null ? balancer.name : null,
  ]
    .filter((what) => what !== null)
    .join(' and ');
  if (missing !== '' && !inCi)
    console.warn(`fleet test behind ${balancer.name} skipped: no ${missing} (.ci/run provides both)`);
  const APP = `fleet${balancer.name}${RUN}`;
  const NEIGHBOUR = `neighbour${balancer.name}${RUN}`;
  /** Each node's connections carry its name, so the test can find (and cut) exactly them. */
  const APPLICATION = `sandpool-fleet-${balancer.name}-${RUN}`;

  describe.skipIf(missing !== '' && !inCi)(
    `a fleet: three nodes, one PostgreSQL store, no shared folder, ${balancer.name}`,
    () => {
      const nodes: ServeNode[] = [];
      let front: Started | null = null;
      let admin: pg.Client | null = null;
      let base = '';
      let work = '';

      beforeAll(async () => {
        if (missing !== '') throw new Error(`no ${missing}: CI must provide both before pnpm test:cluster`);
        work = await mkdtemp(join(tmpdir(), 'sandpool-fleet-'));
        admin = new pg.Client({ connectionString: POSTGRES });
        await admin.connect();
        const url = new URL(POSTGRES as string);
        for (const name of ['n1', 'n2', 'n3']) {
          const dir = join(work, name);
          await mkdir(join(dir, 'root'), { recursive: true });
          url.searchParams.set('application_name', `${APPLICATION}-${name}`);
          const config = join(dir, 'sandpool.config.mjs');
          // No recheck within the test (10 min): every move must reach the nodes by NOTIFY, or
          // after a reconnection by the full read that follows it.
          const store = { postgres: url.href, recheckMs: 600_000 };
          // A worker's start may take over 10 s (the default loadTimeoutMs) at load 30, as the
          // unit tests' pools allow for: a minute bounds a hang.
          const options = {
            pool: { root: join(dir, 'root'), maxWorkers: 64, loadTimeoutMs: 60_000, store },
            server: {},
          };
          await writeFile(config, `export default ${JSON.stringify(options)};\n`);
          nodes.push(await startConfiguredNode(config, name));
        }
        const dir = join(work, balancer.name);
        await mkdir(dir);
        const port = await freePort();
        front = await balancer.start(balancer.binary as string, dir, port, nodes);
        base = `http://127.0.0.1:${port}`;
        await waitUntilServing(base, front);
      });

      afterAll(async () => {
        if (front !== null) await stop(front, balancer.stopSignal);
        const exits = await Promise.all(nodes.map((node) => stop(node, 'SIGTERM')));
        if (work !== '') await rm(work, { recursive: true, force: true });
        // Nothing left: every process this file started has exited, and no node holds a connection.
        for (const proc of [...nodes, ...(front === null ? [] : [front])]) {
          expect(proc.child.exitCode !== null || proc.child.signalCode !== null).toBe(true);
        }
        expect(exits.every((exit) => exit.code === 0 || exit.signal !== null)).toBe(true);
        if (admin !== null) {
          const left = await admin.query(
            'SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name LIKE $1',
            [`${APPLICATION}-%`],
          );
          await admin.end();
          expect(left.rows[0].n).toBe(0);
        }
      });

      it('deploys through one node, follows every channel move on every node, outlives a stopped node and cut database connections', async () => {
        const [n1, n2] = nodes as [ServeNode, ServeNode, ServeNode];
        const db = admin as pg.Client;

        // 1. Deploy and snapshot through n1 (the app) and n2 (the neighbour): the other nodes have
        //    neither the live files nor anything else on disk, only the database.
        const deploy = async (node: ServeNode, swarm: string, files: Record<string, string>): Promise<void> => {
          const reply = await request(
            `${node.url}/v1/swarms/${swarm}/live`,
            'PUT',
            await tar(files),
            'application/x-tar',
          );
          expect(reply, JSON.stringify(reply.body)).toMatchObject({ status: 200 });
        };
        const snapshot = async (node: ServeNode, swarm: string, name: string): Promise<void> => {
          const reply = await request(`${node.url}/v1/swarms/${swarm}/snapshots/${name}`, 'POST');
          expect(reply, JSON.stringify(reply.body)).toMatchObject({ status: 200 });
        };
        const point = async (node: ServeNode, target: string): Promise<Reply> =>
          request(`${node.url}/v1/swarms/${APP}/channels/prod`, 'PUT', { target });
        await deploy(n2, NEIGHBOUR, { 'counter.mjs': 'export const add = (a, b) => a + b;\n' });
        await snapshot(n2, NEIGHBOUR, 'stable');
        await deploy(n1, APP, appFiles('v1'));
        await snapshot(n1, APP, 'r1');
        expect(await point(n1, 'r1')).toMatchObject({ status: 200 });

        // The neighbour's key answers through the balancer the whole time; a node that is
        // stopping may refuse a call it is handed (503 ERR_SANDPOOL_CLOSED), nothing else may fail.
        const neighbourKey = `${NEIGHBOUR}@stable/counter`;
        let stopping: string | null = null;
        const neighbour = { answered: 0, refused: 0, wrong: [] as Reply[], homes: new Set<string>() };
        let running = true;
        const neighbourLoop = (async () => {
          for (let i = 0; running; i++) {
            const reply = await call(base, neighbourKey, 'add', [i, 1]);
            if (reply.status === 200 && reply.body.result === i + 1) {
              neighbour.answered += 1;
              neighbour.homes.add(reply.node ?? '');
            } else if (reply.status === 503 && reply.node === stopping && reply.body.code === 'ERR_SANDPOOL_CLOSED') {
              neighbour.refused += 1;
            } else neighbour.wrong.push(reply);
            await sleep(2);
          }
        })();

        // Every stem of app@prod through the balancer: the version each answered, and which nodes answered.
        const throughBalancer = async (): Promise<{
          versions: Set<string | null>;
          nodes: Set<string>;
          failed: string;
        }> => {
          const replies = await Promise.all(STEMS.map((stem) => call(base, `${APP}@prod/${stem}`, 'version', [])));
          return {
            versions: new Set(replies.map(versionOf)),
            nodes: new Set(replies.map((r) => r.node ?? '')),
            // What an answer other than a version was, for the failure message.
            failed: JSON.stringify(replies.filter((reply) => versionOf(reply) === null).slice(0, 3)),
          };
        };
        /**
         * Each live node, asked directly, until it answers `version`: ms from `since` to the last
         * one. Until the channel's first row reaches a node, the node has no such name (404).
         */
        const everyNodeAnswers = async (
          live: readonly ServeNode[],
          version: string,
          since: number,
          appearing = false,
        ): Promise<number> => {
          const failed: Reply[] = [];
          const times = await Promise.all(
            live.map(async (node) => {
              await until(`${node.name} answering ${version}`, async () => {
                const reply = await call(node.url, `${APP}@prod/${STEMS[0]}`, 'version', []);
                // Old or new content while the move lands, never an error.
                const absent = appearing && reply.body.code === 'ERR_SANDPOOL_SNAPSHOT_NOT_FOUND';
                if (versionOf(reply) === null && !absent) failed.push(reply);
                return versionOf(reply) === version;
              });
              return Date.now() - since;
            }),
          );
          expect(failed, JSON.stringify(failed.slice(0, 3))).toEqual([]);
          return Math.max(...times);
        };

        await everyNodeAnswers(nodes, 'v1', Date.now(), true);
        const first = await throughBalancer();
        expect([...first.versions], first.failed).toEqual(['v1']);
        expect([...first.nodes].sort()).toEqual(['n1', 'n2', 'n3']);

        // 2. Moves: new content deployed, snapshotted and pointed through n1, then rollbacks.
        const targets = [
          ...Array.from({ length: NEW_VERSIONS }, (_, i) => i + 2),
          ...Array.from({ length: NEW_VERSIONS }, (_, i) => NEW_VERSIONS - i),
        ];
        const moveMs: number[] = [];
        /**
         * Where each move's time went, from the same start: the PUT's transaction committed (its
         * NOTIFY heard here), the PUT answered, and the last node's mirror renamed the new pointer
         * in (the file's ctime); the rest is each node's new worker starting.
         */
        const phases = { committed: [] as number[], answered: [] as number[], mirrored: [] as number[] };
        let notifiedAt = 0;
        await db.query('LISTEN sandpool_pointers');
        db.on('notification', (message) => {
          if (message.payload === `${APP}/prod`) notifiedAt = Date.now();
        });
        /** When the node's mirror renamed its pointer of prod in. */
        const mirroredAt = async (node: ServeNode): Promise<number> =>
          (await lstat(join(work, node.name, 'root', APP, 'snapshots', 'prod'))).ctimeMs;
        const move = async (live: readonly ServeNode[], through: ServeNode, release: number): Promise<number> => {
          notifiedAt = 0;
          const started = Date.now();
          const reply = await point(through, `r${release}`);
          phases.answered.push(Date.now() - started);
          expect(reply, JSON.stringify(reply.body)).toMatchObject({ status: 200 });
          const took = await everyNodeAnswers(live, `v${release}`, started);
          phases.committed.push(notifiedAt - started);
          phases.mirrored.push(Math.round(Math.max(...(await Promise.all(live.map(mirroredAt)))) - started));
          const seen = await throughBalancer();
          expect([...seen.versions], seen.failed).toEqual([`v${release}`]);
          return took;
        };
        for (const [index, release] of targets.entries()) {
          if (index < NEW_VERSIONS) {
            await deploy(n1, APP, appFiles(`v${release}`));
            await snapshot(n1, APP, `r${release}`);
          }
          moveMs.push(await move(nodes, n1, release));
        }
        // Rows as the database holds them: the channel names the last rollback's content.
        const rows = await db.query(
          `SELECT p.digest = r.digest AS same FROM sandpool_pointers p JOIN sandpool_pointers r
         ON r.swarm = p.swarm AND r.name = 'r1' WHERE p.swarm = $1 AND p.name = 'prod'`,
          [APP],
        );
        expect(rows.rows).toEqual([{ same: true }]);

        // 3. Stop a node (not the neighbour's home, nor n1 that takes the deploys): calls through
        //    the balancer keep answering, from the two others.
        const neighbourHome = (await call(base, neighbourKey, 'add', [1, 1])).node;
        const victim = nodes.find((node) => node !== n1 && node.name !== neighbourHome) as ServeNode;
        const survivors = nodes.filter((node) => node !== victim);
        stopping = victim.name;
        const during: Reply[] = [];
        let stopped = false;
        const appLoop = (async () => {
          while (!stopped) {
            for (const stem of STEMS) during.push(await call(base, `${APP}@prod/${stem}`, 'version', []));
          }
        })();
        const exit = await stop(victim, 'SIGTERM');
        expect(exit).toEqual({ code: 0, signal: null });
        await until('every stem answering from the two others', async () => {
          const seen = await throughBalancer();
          return seen.versions.size === 1 && seen.versions.has('v1') && !seen.nodes.has(victim.name);
        });
        stopped = true;
        await appLoop;
        // Around the stop a call may fail only as one the stopping node refused or could not
        // answer: 503 CLOSED from it, the balancer's 502, or the client's connection the balancer
        // closed because the node closed the call's own (it cannot resend a call that may have run).
        const failedAround = during.filter((reply) => versionOf(reply) !== 'v1');
        for (const reply of failedAround) {
          const closed = reply.status === 0 && /^UND_ERR_SOCKET|^ECONNRESET/.test(String(reply.body.cause));
          if (!closed) {
            expect(reply.body.code, JSON.stringify(reply)).toMatch(/^ERR_SANDPOOL_(CLOSED|HTTP_UNREACHABLE)$/);
          }
        }

        // 4. Cut every node's database connections (pg_terminate_backend, not a restart of the
        //    cluster: other suites on this machine use the same server). The nodes keep serving
        //    what they mirrored, reconnect, and follow a later move.
        const listeners = async (): Promise<number[]> =>
          (
            await db.query(
              `SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1 AND query = 'LISTEN sandpool_pointers'`,
              [`${APPLICATION}-%`],
            )
          ).rows.map((row: { pid: number }) => row.pid);
        const before = await listeners();
        expect(before).toHaveLength(survivors.length);
        const cut = await db.query(
          'SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity WHERE application_name LIKE $1',
          [`${APPLICATION}-%`],
        );
        expect(cut.rows.length).toBeGreaterThanOrEqual(survivors.length);
        const cached = await throughBalancer();
        expect([...cached.versions], cached.failed).toEqual(['v1']);
        await until('every node listening again on a new connection', async () => {
          const now = await listeners();
          return now.length === survivors.length && now.every((pid) => !before.includes(pid));
        });
        const afterCut = await move(survivors, n1, NEW_VERSIONS + 1);
        moveMs.push(afterCut);
        // Each survivor said so: lost once, connected again, and its log has both.
        for (const node of survivors) {
          const health = (await request(`${node.url}/healthz`, 'GET')).body as { store: { state: string } };
          expect(health.store.state).toBe('connected');
          const metrics = await (await fetch(`${node.url}/metrics`)).text();
          expect(metrics).toMatch(/^sandpool_store_lost_total\{node="n\d"\} 1$/m);
          const log = node.output();
          expect(log.indexOf("lost the store's database")).toBeGreaterThan(-1);
          expect(log.lastIndexOf("the store's database is connected")).toBeGreaterThan(
            log.indexOf("lost the store's database"),
          );
        }

        running = false;
        await neighbourLoop;
        expect(neighbour.wrong, JSON.stringify(neighbour.wrong.slice(0, 3))).toEqual([]);
        expect(neighbour.answered).toBeGreaterThan(0);

        const measured = moveMs.slice(0, targets.length);
        const phase = (name: keyof typeof phases): string => {
          const values = phases[name].slice(0, targets.length);
          return `${name} p50 ${percentile(values, 50)} / p99 ${percentile(values, 99)} ms ${JSON.stringify(values)}`;
        };
        console.log(
          `fleet behind ${balancer.name}: ${measured.length} moves, from PUT channels/prod sent to n1 to every node answering the new ` +
            `content: p50 ${percentile(measured, 50)} ms, p99 ${percentile(measured, 99)} ms ` +
            `(new content ${JSON.stringify(measured.slice(0, NEW_VERSIONS))}, rollbacks ${JSON.stringify(measured.slice(NEW_VERSIONS))}); ` +
            `from the same start: ${phase('committed')}; PUT ${phase('answered')}; the pointer on every node's disk, ` +
            `${phase('mirrored')}; the rest each node's new worker starting; ` +
            `after cut connections: ${afterCut} ms; ${during.length} app calls around ${victim.name}'s stop, ` +
            `failed ${JSON.stringify(Object.fromEntries(countBy(failedAround, (r) => `${r.status} ${String(r.body.code)}`)))}; ` +
            `neighbour ${neighbour.answered} answered (from ${[...neighbour.homes].sort().join(', ')}), ${neighbour.refused} refused by the stopping node`,
        );
      }, 600_000);
    },
  );
}
