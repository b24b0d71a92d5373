import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type CallRecord, createPool, type HostContext, type Pool, type PoolEvent } from 'sandpool';
import {
  ASSISTANT,
  asGreetResult,
  asNotifyResult,
  asOrdersResult,
  type NotifyResult,
  STEM,
  USERS,
  writeAssistant,
  writeGeneration,
} from './demo-agents.js';
import { type Io, printLine } from './io.js';
import { formatTable } from './table.js';

const KEYS = [`a1b2@jan/${STEM}`, `a1b2@jun/${STEM}`, `a1b2/${STEM}`, `c3d4@jan/${STEM}`, `c3d4/${STEM}`] as const;

/** Repeats show that each key keeps its own counter, even two copies of one file. */
const CALL_ORDER = [KEYS[0], KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[0], KEYS[2], KEYS[0]];

const LRU_MAX_WORKERS = 3;

export async function runDemo(io: Io): Promise<void> {
  const out = (line = ''): void => printLine(io.writeOut, line);
  const root = await mkdtemp(join(tmpdir(), 'sandpool-demo-'));
  try {
    out(`agents under ${root} (removed at the end)`);
    await buildSwarms(root, out);
    out();
    await showIsolation(root, out);
    out();
    await showEviction(root, out);
    out();
    await showPlatform(root, io, out);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

async function buildSwarms(root: string, out: (line: string) => void): Promise<void> {
  // Only the store is needed here; spareWorkers 0 so this pool never boots a thread.
  const pool = createPool({ root, spareWorkers: 0 });
  try {
    await writeGeneration(root, { swarm: 'a1b2', version: 'v1', format: "'[a1b2 v1] ' + msg" });
    await pool.snapshots.create('a1b2', 'jan');
    await writeGeneration(root, { swarm: 'a1b2', version: 'v2', format: "'A1B2 V2: ' + msg.toUpperCase()" });
    await pool.snapshots.create('a1b2', 'jun');
    await writeGeneration(root, { swarm: 'a1b2', version: 'v3', format: "msg + ' <- a1b2 v3'" });
    await writeGeneration(root, { swarm: 'c3d4', version: 'v1', format: "'{c3d4 v1} ' + msg" });
    await pool.snapshots.create('c3d4', 'jan');
    await writeGeneration(root, { swarm: 'c3d4', version: 'v2', format: "'{c3d4 v2} ' + msg + '!'" });
  } finally {
    await pool.close();
  }
  out('a1b2: live v1 -> snapshot jan, live v2 -> snapshot jun, live v3');
  out('c3d4: live v1 -> snapshot jan, live v2   (each swarm has its own notifier_agent.mjs + format.mjs)');
}

async function showIsolation(root: string, out: (line: string) => void): Promise<void> {
  out('one pool, one worker per key: separate module maps, helpers and counters');
  const pool = createPool({ root });
  const rows: string[][] = [];
  try {
    for (const key of CALL_ORDER) {
      const result = await notify(pool, key);
      rows.push([key, result.text, String(result.count), result.helper, String(result.threadId)]);
    }
  } finally {
    await pool.close();
  }
  out(
    formatTable(
      [
        { header: 'key' },
        { header: 'answer' },
        { header: 'counter', align: 'right' },
        { header: 'helper version' },
        { header: 'thread', align: 'right' },
      ],
      rows,
    ),
  );
}

async function showEviction(root: string, out: (line: string) => void): Promise<void> {
  out(`LRU eviction with maxWorkers ${LRU_MAX_WORKERS}: the five keys in turn, then the first again`);
  // No spares, so every spawn is a cold start and the thread count is the keyed workers alone.
  const pool = createPool({ root, maxWorkers: LRU_MAX_WORKERS, spareWorkers: 0 });
  const rows: string[][] = [];
  const onSpawn = (event: PoolEvent<string>): void => void rows.push(eventRow('spawn', event));
  const onEvict = (event: PoolEvent<string>): void => void rows.push(eventRow('evict', event));
  pool.on('spawn', onSpawn);
  pool.on('evict', onEvict);
  try {
    // The first key again comes back on a fresh worker: eviction dropped its module and counter.
    for (const key of [...KEYS, KEYS[0]]) {
      const result = await notify(pool, key);
      rows.push(['call', key, `counter ${result.count}`, String(result.threadId)]);
    }
    out(
      formatTable(
        [{ header: 'event' }, { header: 'key' }, { header: 'detail' }, { header: 'thread', align: 'right' }],
        rows,
      ),
    );
    const stats = Object.entries(pool.stats())
      // The demo's keys run in threads: there is no sandbox of process keys to show.
      .filter(([name]) => name !== 'sandbox')
      .map(([name, value]) => `${name} ${typeof value === 'number' ? value : byReason(value)}`)
      .join(', ');
    out(`stats: ${stats}`);
  } finally {
    // The closing evictions are not part of the LRU story.
    pool.off('spawn', onSpawn);
    pool.off('evict', onEvict);
    await pool.close();
  }
}

const PLATFORM_SWARM = 'e5f6';
const QUESTION = 'what is a key?';
/** Where cloud machines answer with their credentials: never on an allowlist. */
const METADATA = 'http://169.254.169.254/latest/meta-data/';

async function showPlatform(root: string, io: Io, out: (line?: string) => void): Promise<void> {
  await writeAssistant(root, PLATFORM_SWARM);
  const key = `${PLATFORM_SWARM}/${ASSISTANT}`;
  const looked: string[] = [];
  // A secret of the host's, made fresh: the agent uses it without ever holding it.
  const token = randomBytes(12).toString('hex');
  const api = await ordersApi(token);
  const pool = createPool({
    root,
    fetch: {
      [PLATFORM_SWARM]: {
        allow: [api.origin],
        secrets: { [api.origin]: { headers: { authorization: `Bearer ${token}` } } },
      },
    },
    host: {
      // Runs on the host: the agent asks, the host decides what it may see.
      lookupUser: (ctx: HostContext, id: number) => {
        looked.push(`lookupUser(${id}) from ${ctx.key}`);
        const user = USERS[id];
        if (user === undefined) throw new Error(`no user ${id}`);
        return user;
      },
    },
  });
  const records: CallRecord[] = [];
  pool.on('call', (record) => records.push(record));
  try {
    out(`a streamed answer: pool.stream('${key}', 'answer', ['${QUESTION}'])`);
    io.writeOut('  ');
    let tokens = 0;
    for await (const token of pool.stream<string>(key, 'answer', [QUESTION], { timeoutMs: 5_000 })) {
      io.writeOut(`${tokens === 0 ? '' : ' '}${token}`);
      tokens += 1;
    }
    out(`   (${tokens} tokens, each printed as it arrived)`);
    out();
    out(`a host capability: ${key} calls sandpool.host.lookupUser(id); the host holds the users`);
    const rows: string[][] = [];
    for (const id of [7, 9]) {
      const result = asGreetResult(await pool.call(key, 'greet', [id], { timeoutMs: 5_000 }));
      if (result.key !== key) throw new Error(`greet answered from ${result.key}, not ${key}`);
      rows.push([`greet(${id})`, looked.shift() ?? '-', result.text]);
    }
    out(formatTable([{ header: 'call' }, { header: 'host saw' }, { header: 'answer' }], rows));
    out();
    out(`egress under a policy: ${key} may fetch ${api.origin} only; the host adds the API's token`);
    const orders = asOrdersResult(await pool.call(key, 'orders', [api.origin], { timeoutMs: 5_000 }));
    const seen = JSON.stringify(orders).includes(token) ? 'yes' : 'no';
    const refused = await pool.call(key, 'probe', [METADATA], { timeoutMs: 5_000 });
    out(
      formatTable(
        [{ header: 'call' }, { header: 'answer' }],
        [
          [`orders(${api.origin})`, `${orders.status}: ${orders.orders.join(', ')} (token seen by the agent: ${seen})`],
          [`probe(${METADATA})`, String(refused)],
        ],
      ),
    );
    out();
    out("what each call did (pool.on('call')): the record a platform logs and bills from");
    out(
      formatTable(
        [
          { header: 'fn' },
          { header: 'outcome' },
          { header: 'ms', align: 'right' },
          { header: 'cpu ms', align: 'right' },
          { header: 'capabilities' },
        ],
        records.map((record) => [
          record.fn,
          record.code ?? record.outcome,
          record.durationMs.toFixed(1),
          record.cpuMs.toFixed(2),
          Object.entries(record.host)
            .map(([name, count]) => `${name} ${count}`)
            .join(', ') || '-',
        ]),
      ),
    );
  } finally {
    await pool.close();
    await api.close();
  }
}

/** An HTTP API on 127.0.0.1 that answers only requests carrying its token. */
async function ordersApi(token: string): Promise<{ origin: string; close(): Promise<void> }> {
  const server: Server = createServer((request, response) => {
    const authorized = request.headers.authorization === `Bearer ${token}`;
    response.writeHead(authorized ? 200 : 401, { 'content-type': 'application/json' });
    response.end(JSON.stringify(authorized ? { orders: ['#1041 tea', '#1042 books'] } : { error: 'no token' }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  return {
    origin: `http://127.0.0.1:${port}`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

async function notify(pool: Pool, key: string): Promise<NotifyResult> {
  return asNotifyResult(await pool.call(key, 'notify', ['hello'], { timeoutMs: 5_000 }));
}

/** A count by reason, its non-zero entries only: `lru 2`, or `none`. */
function byReason(counts: Record<string, number>): string {
  const entries = Object.entries(counts).filter(([, count]) => count > 0);
  return entries.length === 0 ? 'none' : `(${entries.map(([reason, count]) => `${reason} ${count}`).join(', ')})`;
}

function eventRow(name: string, event: PoolEvent<string>): string[] {
  return [name, event.key, event.reason, String(event.threadId)];
}
