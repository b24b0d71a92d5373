// What a node says of its store: /healthz, /readyz, /metrics and `sandpool serve`'s log show
// whether its PostgreSQL database is connected or lost, and a node that lost it keeps serving.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { startServe } from './support/packed.js';
import { counterAgent, makeRoot } from './support/root.js';
import { installServerCleanup, openServer, request } from './support/server.js';

installServerCleanup();

const URL_ENV = process.env.SANDPOOL_TEST_POSTGRES;
if (URL_ENV === undefined && process.env.CI === 'true') {
  throw new Error('SANDPOOL_TEST_POSTGRES is not set: under CI=true the PostgreSQL store tests must run');
}
const BIN = fileURLToPath(new URL('../packages/cli/dist/bin.js', import.meta.url));
/** A closed port: every connection fails at once, as when the database is down. */
const UNREACHABLE = 'postgres://sandpool:hunter2-secret@127.0.0.1:1/sandpool';
const HEADERS = { authorization: 'Bearer t' };

type Server = ReturnType<typeof openServer>;

async function storeOf(server: Server, route: '/healthz' | '/readyz'): Promise<{ status: number; store: unknown }> {
  const reply = await request(server, 'GET', route, undefined, HEADERS);
  return { status: reply.status, store: reply.body.store };
}

function sampleOf(text: string, name: string): number | undefined {
  const line = text.split('\n').find((candidate) => candidate.startsWith(`${name}{`));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

async function scrape(server: Server): Promise<string> {
  return (await server.app.inject({ method: 'GET', url: '/metrics', headers: HEADERS })).body;
}

async function until(check: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const started = Date.now();
  while (!(await check())) {
    if (Date.now() - started > timeoutMs) throw new Error('condition not reached in time');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function withApp(url: string, app: string): string {
  return `${url}${url.includes('?') ? '&' : '?'}application_name=${app}`;
}

/** Cuts every connection of one node, found by the application name its URL carries. */
async function cut(url: string, app: string): Promise<void> {
  const admin = new pg.Client({ connectionString: url });
  await admin.connect();
  try {
    await admin.query(
      'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1',
      [app],
    );
  } finally {
    await admin.end();
  }
}

describe('a node without a database', () => {
  it('has no store to report', async () => {
    const server = openServer({ root: await makeRoot(), token: 't' });
    expect(await storeOf(server, '/healthz')).toEqual({ status: 200, store: null });
    expect(await storeOf(server, '/readyz')).toEqual({ status: 200, store: null });
    expect(await scrape(server)).not.toContain('sandpool_store_');
  });
});

describe('a node that cannot reach its database', () => {
  it('stays ready and serves, says it lost the store, and counts the outage once', async () => {
    const server = openServer({
      root: await makeRoot(await counterAgent('n')),
      token: 't',
      store: { postgres: UNREACHABLE },
    });
    let reported = 0;
    server.pool.on('store', ({ state }) => {
      if (state === 'lost') reported += 1;
    });
    // Several failed reconnections: one outage.
    await until(async () => reported >= 3);
    const health = await storeOf(server, '/healthz');
    expect(health).toMatchObject({ status: 200, store: { state: 'lost' } });
    expect(Date.parse((health.store as { since: string }).since)).not.toBeNaN();
    expect(await storeOf(server, '/readyz')).toMatchObject({ status: 200, store: { state: 'lost' } });
    const text = await scrape(server);
    expect(sampleOf(text, 'sandpool_store_connected')).toBe(0);
    expect(sampleOf(text, 'sandpool_store_lost_total')).toBe(1);
    expect(text).not.toContain('hunter2');
    const call = await request(server, 'POST', '/v1/call/n/notifier_agent', { fn: 'add', args: [2, 3] }, HEADERS);
    expect(call).toMatchObject({ status: 200, body: { result: 5 } });
  });
});

describe.skipIf(URL_ENV === undefined)('a node on a PostgreSQL store', () => {
  it('says connected, then lost when its connections are cut, then connected again', async () => {
    const app = `sandpool-test-store-state-${process.pid}`;
    const server = openServer({
      root: await makeRoot(await counterAgent('n')),
      token: 't',
      store: { postgres: withApp(URL_ENV as string, app) },
    });
    await until(async () => ((await storeOf(server, '/healthz')).store as { state: string }).state === 'connected');
    const first = (await storeOf(server, '/readyz')).store as { state: string; since: string };
    expect(first.state).toBe('connected');
    let text = await scrape(server);
    expect(sampleOf(text, 'sandpool_store_connected')).toBe(1);
    expect(sampleOf(text, 'sandpool_store_lost_total')).toBe(0);

    await cut(URL_ENV as string, app);
    await until(async () => sampleOf(await scrape(server), 'sandpool_store_lost_total') === 1);
    await until(async () => ((await storeOf(server, '/healthz')).store as { state: string }).state === 'connected');
    const again = (await storeOf(server, '/healthz')).store as { since: string };
    expect(Date.parse(again.since)).toBeGreaterThan(Date.parse(first.since));
    text = await scrape(server);
    expect(sampleOf(text, 'sandpool_store_connected')).toBe(1);
    const call = await request(server, 'POST', '/v1/call/n/notifier_agent', { fn: 'add', args: [2, 3] }, HEADERS);
    expect(call).toMatchObject({ status: 200, body: { result: 5 } });
  });

  it('sandpool serve logs each change of its store: connected, lost, connected again', async () => {
    const app = `sandpool-test-serve-log-${process.pid}`;
    const dir = await mkdtemp(join(tmpdir(), 'sandpool-store-log-'));
    try {
      const root = await makeRoot(await counterAgent('n'));
      const config = join(dir, 'sandpool.config.mjs');
      const options = { pool: { root, store: { postgres: withApp(URL_ENV as string, app) } }, server: {} };
      await writeFile(config, `export default ${JSON.stringify(options)};\n`);
      const node = await startServe(BIN, ['--config', config, '--port', '0'], dir);
      let stdout = '';
      try {
        const state = async (): Promise<string | undefined> => {
          const body = (await (await fetch(`${node.url}/healthz`)).json()) as { store: { state: string } | null };
          return body.store?.state;
        };
        await until(async () => (await state()) === 'connected');
        await cut(URL_ENV as string, app);
        const metric = async (): Promise<number | undefined> =>
          sampleOf(await (await fetch(`${node.url}/metrics`)).text(), 'sandpool_store_lost_total');
        await until(async () => (await metric()) === 1);
        await until(async () => (await state()) === 'connected');
      } finally {
        ({ stdout } = await node.stop());
      }
      const lines = stdout.split('\n').filter((line) => line.includes("store's database"));
      expect(lines).toEqual([
        "sandpool serve: the store's database is connected",
        "sandpool serve: lost the store's database: serving the snapshots this node mirrored, reconnecting",
        "sandpool serve: the store's database is connected",
      ]);
      expect(stdout).not.toContain('fleet-test-pw');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
