/**
 * What a strict thread agent cannot reach (DESIGN.md, "Strict containment (threads)"): each
 * attack runs with a neighbour key answering, on every Node line; a feature a line lacks is
 * asserted absent there, never skipped in silence.
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { url as inspectorUrl } from 'node:inspector';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { Worker } from 'node:worker_threads';
import type { Pool, PoolOptions } from 'sandpool';
import { describe, expect, it } from 'vitest';
import type { Call } from '../packages/sandpool/dist/host/cells/call.js';
import { Channel, type ChannelOwner } from '../packages/sandpool/dist/host/cells/channel.js';
import { startAccepting } from '../packages/sandpool/dist/host/workers/denials.js';
import { AgentThread } from '../packages/sandpool/dist/host/workers/thread.js';
import type { Outcome as CallOutcome } from '../packages/sandpool/dist/protocol/messages.js';
import { serializeMoving } from '../packages/sandpool/dist/protocol/transfer-codec.js';
import { code, rejection, thrownSync } from './support/errors.js';
import { eventually, installCleanup, invariants, openPool } from './support/pool.js';
import { counterAgent, makeRoot, writeFiles } from './support/root.js';
import { hostLayers } from './support/sandbox.js';

installCleanup();

const execFileAsync = promisify(execFile);
const NEIGHBOUR = 'n/notifier_agent';
const SANDPOOL = pathToFileURL(join(import.meta.dirname, '../packages/sandpool/dist/index.js')).href;

/** In this test process's environment only: no agent may ever return it. */
const SECRET = `host-secret-${process.pid}-${Date.now()}`;
process.env.SANDPOOL_TEST_SECRET = SECRET;

/** What the agent reports: the value it got, or the code (and message) of what it threw. */
type Outcome = { got: unknown } | { code: string; message: string };

/** The builtins strict denies, by id, and what an agent would do with each once loaded. */
const BUILTINS = {
  sqlite: "(m, path) => { const db = new m.DatabaseSync(path); db.exec('create table t(a)'); return 'opened'; }",
  ffi: "(m) => Object.keys(m.dlopen('libc.so.6', { getpid: { result: 'i32', parameters: [] } }))",
  inspector: '(m) => { const session = new m.Session(); session.connectToMainThread(); return "connected"; }',
  'inspector/promises':
    '(m) => { const session = new m.Session(); session.connectToMainThread(); return "connected"; }',
  wasi: "(m) => typeof new m.WASI({ version: 'preview1' })",
  trace_events: "(m) => { m.createTracing({ categories: ['v8'] }).enable(); return 'tracing'; }",
} as const;
type Builtin = keyof typeof BUILTINS;
const BARE: readonly Builtin[] = ['inspector', 'inspector/promises', 'wasi', 'trace_events'];

/** Whether this Node has the builtin at all (asked in this process, which runs without flags). */
function exists(id: Builtin): boolean {
  try {
    return process.getBuiltinModule(`node:${id}`) !== undefined;
  } catch {
    return true; // it exists, and refuses to load here (trace_events in a worker)
  }
}

/** Whether a worker thread of this Node starts with `flag` (where it does, strict passes it). */
function workerAccepts(flag: string): boolean {
  if (!process.allowedNodeEnvironmentFlags.has(flag)) return false;
  try {
    void new Worker('', { eval: true, execArgv: [flag] }).terminate();
    return true;
  } catch {
    return false;
  }
}

/** An agent whose `attempt(name, ...args)` runs one attack and answers what it got, or what it threw. */
const ATTACKER = `
import { createRequire } from 'node:module';
import * as processModule from 'node:process';
import * as v8 from 'node:v8';
import * as workerThreads from 'node:worker_threads';
const require = createRequire(import.meta.url);
const use = { ${Object.entries(BUILTINS)
  .map(([id, fn]) => `${JSON.stringify(id)}: ${fn}`)
  .join(', ')} };

export async function attempt(name, ...args) {
  try {
    return { got: await attacks[name](...args) };
  } catch (error) {
    return { code: error.code ?? error.name, message: String(error.message) };
  }
}

// Loads named at run time, where the build that makes the key's artifact cannot see them.
const dynamicImport = new Function('specifier', ['return import', '(specifier)'].join(''));
const requireNamed = require;

const load = {
  import: (id) => dynamicImport('node:' + id),
  bare: (id) => dynamicImport(id),
  // The unbundled copy of a module beside this one in the artifact, which imports it statically.
  static: async (id) => (await dynamicImport(new URL('./static-' + id.replace('/', '-') + '.mjs', import.meta.url).href)).default,
  require: (id) => requireNamed('node:' + id),
  getBuiltinModule: (id) => process.getBuiltinModule('node:' + id),
  moduleLoad: (id) => require('node:module')._load('node:' + id),
  hookedImport: (id) => {
    require('node:module').registerHooks({
      resolve: (specifier, context, next) =>
        specifier === 'evil:' + id ? { url: 'node:' + id, format: 'builtin', shortCircuit: true } : next(specifier, context),
    });
    return dynamicImport('evil:' + id);
  },
  hookedRequire: (id) => {
    require('node:module').registerHooks({
      resolve: (specifier, context, next) =>
        specifier === 'evil:' + id ? { url: 'node:' + id, format: 'builtin', shortCircuit: true } : next(specifier, context),
    });
    return requireNamed('evil:' + id);
  },
};

const attacks = {
  builtin: async (route, id, ...args) => {
    const m = await load[route](id);
    if (m === undefined) return 'absent';
    return use[id](m, ...args);
  },
  read: async (path) => (await import('node:fs')).readFileSync(path, 'utf8'),
  report: () => JSON.stringify(process.report.getReport()),
  reportNamed: () => JSON.stringify(processModule.report.getReport()),
  reportWrite: () => process.report.writeReport(),
  reportSettings: () => { process.report.directory = '/tmp'; return process.report.directory; },
  commandLine: () => ({ argv: process.argv, execArgv: process.execArgv, named: [processModule.argv, processModule.execArgv] }),
  env: () => JSON.stringify(process.env),
  homedir: async () => (await import('node:os')).homedir(),
  natives: () => { v8.setFlagsFromString('--allow-natives-syntax'); return new Function('return %IsBeingInterpreted()')(); },
  nativesRequire: () => require('node:v8').setFlagsFromString('--allow-natives-syntax'),
  heapSnapshotNearLimit: () => v8.setHeapSnapshotNearHeapLimit(1),
  signal: (signal) => process.kill(process.pid, signal),
  signalNamed: (signal) => processModule.kill(process.pid, signal),
  rawSignal: () => process._kill(process.pid, 10),
  debugProcess: () => process._debugProcess(process.ppid),
  killParent: () => process.kill(process.ppid, 'SIGKILL'),
  priority: async (tid) => (await import('node:os')).setPriority(tid, 19),
  broadcast: () => { const channel = new BroadcastChannel('tenants'); channel.close(); return 'made'; },
  broadcastModule: () => { const channel = new workerThreads.BroadcastChannel('tenants'); channel.close(); return 'made'; },
  broadcastPrototype: () => new (Object.getPrototypeOf(BroadcastChannel))('tenants'),
  threadMessage: (tid) => workerThreads.postMessageToThread(tid, 'hello', 1000),
  locks: () => (globalThis.navigator === undefined ? 'absent' : navigator.locks.request('tenants', () => 'held')),
  locksQuery: () => (globalThis.navigator === undefined ? 'absent' : navigator.locks.query()),
  hooks: () => typeof require('node:module').registerHooks,
  register: () => require('node:module').register('data:text/javascript,export function resolve(s, c, n) { return n(s, c); }'),
  binding: () => Object.keys(process.binding('fs')).length,
  loadEnvFile: (path) => { process.loadEnvFile(path); return JSON.stringify(process.env); },
  connect: async (port) => {
    const net = await import('node:net');
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1', () => {
        socket.destroy();
        resolve('connected');
      });
      socket.on('error', reject);
    });
  },
  lookup: async () => (await (await import('node:dns')).promises.lookup('localhost')).address,
  openAsBlob: async (path) => (await (await import('node:fs')).openAsBlob(path)).text(),
  // Every descriptor of the process, by number: what could be read, written or closed.
  // own: a file beside this module, read from the key's artifact.
  foreignFds: async (name) => {
    const own = new URL(name, import.meta.url);
    const fs = await import('node:fs');
    const reached = [];
    for (let fd = 0; fd < 256; fd++) {
      for (const [api, act] of [
        ['fstatSync', () => fs.fstatSync(fd)],
        ['readSync', () => fs.readSync(fd, Buffer.alloc(64), 0, 64, 0)],
        ['readFileSync', () => fs.readFileSync(fd, 'latin1')],
        ['writeSync', () => fs.writeSync(fd, '')],
        ['closeSync', () => fs.closeSync(fd)],
      ]) {
        try {
          act();
          reached.push(api + ' ' + fd);
        } catch (error) {
          if (error.code !== 'ERR_ACCESS_DENIED') reached.push(api + ' ' + fd + ' ' + error.code);
        }
      }
    }
    // Its own descriptors still work, open to close.
    const fd = fs.openSync(own, 'r');
    const text = fs.readFileSync(fd, 'utf8');
    fs.closeSync(fd);
    const streamed = await new Promise((resolve, reject) => {
      let data = '';
      fs.createReadStream(own, { encoding: 'utf8' }).on('data', (chunk) => (data += chunk)).on('end', () => resolve(data)).on('error', reject);
    });
    return { reached, text, streamed };
  },
};
`;

/** One module per builtin that imports it statically: the named-import route. */
function staticImporters(): Record<string, string> {
  const files: Record<string, string> = {};
  for (const id of Object.keys(BUILTINS)) {
    files[`a/live/static-${id.replace('/', '-')}.mjs`] = `import * as m from 'node:${id}';\nexport default m;\n`;
  }
  return files;
}

async function tenants(extra: Record<string, string> = {}): Promise<string> {
  return makeRoot({
    'a/live/attacker.mjs': ATTACKER,
    ...staticImporters(),
    'b/live/.env': 'B_TOKEN=swarm-b-only',
    ...(await counterAgent('n')),
    ...extra,
  });
}

/** Runs an attack with the neighbour answering at the same time; checks the neighbour's answers. */
async function attack(pool: Pool, name: string, ...args: unknown[]): Promise<Outcome> {
  const [outcome, sum] = await Promise.all([
    pool.call('a/attacker', 'attempt', [name, ...args]) as Promise<Outcome>,
    pool.call(NEIGHBOUR, 'add', [2, 3]),
  ]);
  expect(sum).toBe(5);
  expect(JSON.stringify(outcome)).not.toContain(SECRET);
  return outcome;
}

/** The neighbour answers right; the pool holds together. */
async function neighbourAnswers(pool: Pool): Promise<void> {
  expect(await pool.call(NEIGHBOUR, 'add', [2, 3])).toBe(5);
  expect(invariants(pool)).toEqual([]);
}

describe('file descriptors', () => {
  it('a strict agent reaches no descriptor it did not open: none read, written or closed; its own work', async () => {
    const root = await tenants({ 'a/live/own.txt': 'mine' });
    // A descriptor the host holds open on a secret, as a server holds its logs and sockets.
    const { openSync, closeSync, readFileSync } = await import('node:fs');
    await writeFiles(root, { 'host-secret.txt': SECRET });
    const held = openSync(join(root, 'host-secret.txt'), 'r+');
    try {
      const pool = openPool({ root });
      const outcome = await attack(pool, 'foreignFds', './own.txt');
      expect(outcome).toEqual({ got: { reached: [], text: 'mine', streamed: 'mine' } });
      // The host's descriptor is open and untouched.
      expect(readFileSync(held, 'utf8')).toBe(SECRET);
      await neighbourAnswers(pool);
    } finally {
      closeSync(held);
    }
  });
});

function denied(outcome: Outcome): void {
  expect(outcome).toEqual({ code: 'ERR_ACCESS_DENIED', message: expect.any(String) });
}

/** Runs `body` (with `pool` open) in a host process of its own, started in `cwd`; returns what it prints. */
async function inHost(
  root: string,
  cwd: string,
  body: string,
  options: Partial<PoolOptions> = {},
  env: Record<string, string> = {},
): Promise<unknown> {
  const script = join(root, 'host.mjs');
  await writeFile(
    script,
    `import { createPool } from ${JSON.stringify(SANDPOOL)};
    const pool = createPool({ root: ${JSON.stringify(root)}, spareWorkers: 0, ...${JSON.stringify(options)} });
    const out = await (async () => { ${body} })();
    await pool.close();
    process.stdout.write(JSON.stringify(out));`,
  );
  const { stdout } = await execFileAsync(process.execPath, [script], {
    cwd,
    env: { PATH: process.env.PATH ?? '', ...env },
  });
  return JSON.parse(stdout);
}

describe('the host’s files and secrets', () => {
  it('a thread reads nothing of the host’s working directory (Node 24 and 26 granted it to every strict thread)', async () => {
    const root = await tenants();
    const cwd = join(root, 'host-cwd');
    await writeFiles(cwd, { '.env': 'SECRET=host' });
    const out = await inHost(
      root,
      cwd,
      `return [await pool.call('a/attacker', 'attempt', ['read', ${JSON.stringify(join(cwd, '.env'))}]),
        await pool.call('n/notifier_agent', 'add', [2, 3])];`,
    );
    expect(out).toEqual([{ code: 'ERR_ACCESS_DENIED', message: expect.any(String) }, 5]);
  });

  it('os.homedir() is the env option’s HOME, else the user’s, never the host’s HOME (libuv reads the process’s own)', async () => {
    const root = await tenants();
    const out = await inHost(
      root,
      root,
      `const given = createPool({ root: ${JSON.stringify(root)}, spareWorkers: 0, env: { HOME: '/given' } });
      const answers = [await pool.call('a/attacker', 'attempt', ['homedir']), await given.call('a/attacker', 'attempt', ['homedir'])];
      await given.close();
      return answers;`,
      {},
      { HOME: `/${SECRET}` },
    );
    expect(JSON.stringify(out)).not.toContain(SECRET);
    expect(out).toEqual([{ got: expect.any(String) }, { got: '/given' }]);
  });

  it('process.report, by every way to it, answers nothing; its settings cannot be changed', async () => {
    const pool = openPool({ root: await tenants() });
    for (const name of ['report', 'reportNamed', 'reportWrite', 'reportSettings']) {
      const outcome = await attack(pool, name);
      denied(outcome);
      expect((outcome as { message: string }).message).toMatch(/^process\.report\.\w+ is denied .*permissions: 'none'/);
    }
    await neighbourAnswers(pool);
  });

  it('argv and execArgv name no host path; the environment is the env option', async () => {
    const root = await tenants();
    const pool = openPool({ root });
    const outcome = (await attack(pool, 'commandLine')) as { got: { argv: string[]; execArgv: string[] } };
    expect(outcome.got.argv).toEqual([process.execPath, '[sandpool agent]']);
    expect(outcome.got).toEqual({ ...outcome.got, named: [outcome.got.argv, outcome.got.execArgv] });
    for (const flag of outcome.got.execArgv) expect(flag).not.toContain('/');
    expect(JSON.stringify(outcome)).not.toContain(root);
    expect(JSON.stringify(outcome)).not.toContain('sandpool/dist');
    expect(await attack(pool, 'env')).toEqual({ got: '{}' });
    await neighbourAnswers(pool);
  });

  it('what the permission model already holds stays held: process.binding, module.register, another swarm’s .env', async () => {
    const root = await tenants();
    const pool = openPool({ root });
    denied(await attack(pool, 'binding'));
    denied(await attack(pool, 'register'));
    denied(await attack(pool, 'loadEnvFile', join(root, 'b/live/.env')));
    denied(await attack(pool, 'openAsBlob', join(root, 'b/live/.env')));
    denied(await attack(pool, 'read', join(root, 'b/live/.env')));
    await neighbourAnswers(pool);
  });
});

describe('builtins the permission model does not hold', () => {
  const routes = ['import', 'static', 'require', 'getBuiltinModule', 'moduleLoad', 'hookedImport', 'hookedRequire'];

  it.each(Object.keys(BUILTINS) as Builtin[])('node:%s is denied whichever way it is reached', async (id) => {
    const root = await tenants();
    const pool = openPool({ root });
    const hooks = (await attack(pool, 'hooks')) as { got: string };
    const db = join(root, 'b/live/stolen.db');
    for (const route of [...routes, ...(BARE.includes(id) ? ['bare'] : [])]) {
      const outcome = await attack(pool, 'builtin', route, id, db);
      const where = `${route} ${JSON.stringify(outcome)}`;
      expect(outcome, where).not.toHaveProperty('got');
      const { code } = outcome as { code: string };
      if (route.startsWith('hooked') && hooks.got !== 'function') {
        // No in-thread hooks on this Node (20): nothing to short-circuit.
        expect(code, where).toBe('TypeError');
      } else if (!exists(id)) {
        // Not in this Node at all: refused, or not found.
        expect(['ERR_ACCESS_DENIED', 'ERR_UNKNOWN_BUILTIN_MODULE'], where).toContain(code);
      } else if (id === 'trace_events') {
        // Unavailable in any worker thread, denied or not.
        expect(['ERR_ACCESS_DENIED', 'ERR_TRACE_EVENTS_UNAVAILABLE'], where).toContain(code);
      } else {
        expect(code, where).toBe('ERR_ACCESS_DENIED');
      }
    }
    expect(existsSync(db)).toBe(false);
    // Where a worker takes the flag that removes the builtin, that flag is the wall.
    const flag = `--no-experimental-${id}`;
    const { got } = (await attack(pool, 'commandLine')) as { got: { execArgv: string[] } };
    expect(got.execArgv.includes(flag), flag).toBe(workerAccepts(flag));
    await neighbourAnswers(pool);
  });

  it('drops a removal flag a worker refuses, tried on a blank worker only when a start fails', () => {
    const flag = '--no-experimental-sqlite';
    const refusing = (flags: string[]): string[] => {
      if (flags.includes(flag)) throw Object.assign(new Error('refused'), { code: 'ERR_WORKER_INVALID_EXEC_ARGV' });
      return flags;
    };
    if (workerAccepts(flag)) {
      // The flag is not what failed the start: the failure stands.
      expect(() => startAccepting(['--permission', flag], refusing)).toThrow('refused');
    } else {
      expect(startAccepting(['--permission', flag], refusing)).toEqual(['--permission']);
    }
    const other = Object.assign(new Error('other'), { code: 'ERR_WORKER_INIT_FAILED' });
    expect(() =>
      startAccepting([flag], () => {
        throw other;
      }),
    ).toThrow(other);
  });

  it('a worker loads no agent under a denial list it cannot read', async () => {
    const root = await tenants();
    const thread = new AgentThread({ env: {}, resourceLimits: {}, output: () => {}, onOutputDropped: () => {} }, []);
    let onEnd = (): void => {};
    const ended = new Promise<void>((resolve) => {
      onEnd = resolve;
    });
    const message = new Promise((onMessage) => {
      thread.owner = { onMessage, onEnd };
    });
    thread.post({
      t: 'load',
      key: 'a/attacker',
      file: join(root, 'a/live/attacker.mjs'),
      verifyDir: null,
      deny: ['node:sqlite', 'node:everything'] as never,
    });
    expect(await message).toMatchObject({ t: 'load-failed', error: { message: 'a malformed denial list' } });
    thread.terminate({ retired: 'closed' });
    await ended;
  });

  it('says which builtin is denied and how a swarm gets it back', async () => {
    const pool = openPool({ root: await tenants() });
    const sqlite = (await attack(pool, 'builtin', 'getBuiltinModule', 'sqlite', '/nonexistent')) as { message: string };
    expect(sqlite.message).toBe(
      "node:sqlite is denied to agents under permissions 'strict'; permissions: { builtins: ['sqlite'] } allows it for a swarm",
    );
    const inspector = (await attack(pool, 'builtin', 'getBuiltinModule', 'inspector')) as { message: string };
    expect(inspector.message).toMatch(/^node:inspector is denied .*only permissions: 'none' lifts it$/);
    await neighbourAnswers(pool);
  });

  it('BroadcastChannel carries nothing between keys, from the global, the module or a prototype', async () => {
    const pool = openPool({ root: await tenants() });
    denied(await attack(pool, 'broadcast'));
    denied(await attack(pool, 'broadcastModule'));
    expect(await attack(pool, 'broadcastPrototype')).toMatchObject({ code: 'TypeError' });
    await neighbourAnswers(pool);
  });

  it('no message reaches another thread by its id, and no Web Lock is shared', async () => {
    const pool = openPool({ root: await tenants() });
    const { threadId } = (await pool.call(NEIGHBOUR, 'notify', ['x'])) as { threadId: number };
    denied(await attack(pool, 'threadMessage', threadId));
    denied(await attack(pool, 'threadMessage', 0));
    const webLocks = 'locks' in (await import('node:worker_threads')) || 'navigator' in globalThis;
    for (const name of ['locks', 'locksQuery']) {
      if (webLocks) denied(await attack(pool, name));
      else expect(await attack(pool, name)).toEqual({ got: 'absent' });
    }
    await neighbourAnswers(pool);
  });
});

describe('widening', () => {
  it("builtins: ['sqlite'] gives one swarm node:sqlite (asserted absent where Node has none); another stays denied", async () => {
    const root = await tenants({ 'c/live/attacker.mjs': ATTACKER });
    const data = join(root, 'a-data');
    await writeFiles(data, { '.keep': '' });
    const pool = openPool({
      root,
      permissions: (key) => (key.swarm === 'a' ? { fsRead: [data], fsWrite: [data], builtins: ['sqlite'] } : 'strict'),
    });
    const opened = await attack(pool, 'builtin', 'getBuiltinModule', 'sqlite', join(data, 'a.db'));
    if (exists('sqlite')) {
      expect(opened).toEqual({ got: 'opened' });
      expect(existsSync(join(data, 'a.db'))).toBe(true);
    } else {
      expect(opened).toEqual({ got: 'absent' });
    }
    const other = (await pool.call('c/attacker', 'attempt', [
      'builtin',
      'import',
      'sqlite',
      join(data, 'c.db'),
    ])) as Outcome;
    expect(other).toMatchObject({ code: exists('sqlite') ? 'ERR_ACCESS_DENIED' : 'ERR_UNKNOWN_BUILTIN_MODULE' });
    expect(existsSync(join(data, 'c.db'))).toBe(false);
    await neighbourAnswers(pool);
  });

  it('a grant that widens builtins warns that the sandbox ends there', async () => {
    const warnings: string[] = [];
    const listener = (warning: Error & { code?: string }) => warnings.push(`${warning.code}: ${warning.message}`);
    process.on('warning', listener);
    try {
      openPool({ root: await tenants(), permissions: { builtins: ['sqlite'] } });
      await new Promise((resolve) => setImmediate(resolve));
      expect(warnings).toContain(
        'SANDPOOL_SANDBOX_ENDED: permissions grant builtins sqlite: what they run is outside the sandbox',
      );
    } finally {
      process.off('warning', listener);
    }
  });

  it('refuses builtins it cannot widen', () => {
    for (const builtins of [['inspector'], ['process.report'], ['sqlite', 'v8']]) {
      expect(() => openPool({ root: '/nonexistent', permissions: { builtins } as never })).toThrow(
        expect.objectContaining({ code: 'ERR_SANDPOOL_INVALID_OPTIONS' }),
      );
    }
  });
});

/** Whether this Node's permission model holds the network (`--allow-net`, Node 25+). */
const NET_DENIABLE = process.allowedNodeEnvironmentFlags.has('--allow-net');

describe('the network', () => {
  it(`strict ${NET_DENIABLE ? 'denies' : 'cannot deny (asserted open: no --allow-net here)'} a thread the network; net: true gives it to one swarm`, async () => {
    let connections = 0;
    const server = createServer((socket) => {
      connections += 1;
      socket.destroy();
    }).listen(0, '127.0.0.1');
    await once(server, 'listening');
    try {
      const { port } = server.address() as { port: number };
      const pool = openPool({
        root: await tenants({ 'c/live/attacker.mjs': ATTACKER }),
        permissions: (key) => (key.swarm === 'c' ? { net: true } : 'strict'),
      });
      const strict = await attack(pool, 'connect', port);
      const lookup = await attack(pool, 'lookup');
      if (NET_DENIABLE) {
        denied(strict);
        denied(lookup);
      } else {
        expect(strict).toEqual({ got: 'connected' });
        expect(lookup).toMatchObject({ got: expect.any(String) });
      }
      expect(await pool.call('c/attacker', 'attempt', ['connect', port])).toEqual({ got: 'connected' });
      // The server hears of a connection a little after the client does.
      await eventually(() => connections >= (NET_DENIABLE ? 1 : 2));
      expect(connections).toBe(NET_DENIABLE ? 1 : 2);
      await neighbourAnswers(pool);
    } finally {
      server.close();
    }
  });

  it(`network: 'enforce' ${NET_DENIABLE ? 'accepts strict threads here' : 'refuses strict threads here'}; processes in cells, 'none' and net grants always pass`, () => {
    const root = '/nonexistent';
    const strictThreads = () => openPool({ root, network: 'enforce' });
    if (NET_DENIABLE) {
      expect(strictThreads().options.network).toBe('enforce');
    } else {
      expect(thrownSync(strictThreads).code).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
      expect(() => strictThreads()).toThrow(`on Node ${process.version}`);
      for (const unsure of [{ permissions: () => 'none' as const }, { isolation: () => 'process' as const }]) {
        expect(thrownSync(() => openPool({ root, network: 'enforce', ...unsure })).code).toBe(
          'ERR_SANDPOOL_INVALID_OPTIONS',
        );
      }
    }
    for (const enforceable of [
      ...(hostLayers().namespaces ? [{ isolation: 'process' as const }] : []),
      { isolation: 'process' as const, sandbox: 'off' as const, permissions: { net: true } },
      { permissions: 'none' as const },
      { permissions: { net: true } },
    ]) {
      expect(openPool({ root, network: 'enforce', ...enforceable }).options.network).toBe('enforce');
    }
    expect(openPool({ root }).options.network).toBe('best-effort');
  });

  it("network: 'enforce' refuses process keys whose cells have no network namespace where Node cannot deny it", () => {
    const root = '/nonexistent';
    const uncaged = () => openPool({ root, network: 'enforce', isolation: 'process', sandbox: 'off', spareWorkers: 0 });
    if (NET_DENIABLE) {
      // Node's permission model denies a strict child the network itself.
      expect(uncaged().options.network).toBe('enforce');
      return;
    }
    expect(thrownSync(uncaged).code).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
    expect(uncaged).toThrow(/cannot deny a process agent the network .*no network namespace here \(sandbox is 'off'\)/);
  });
});

describe('process-wide levers', () => {
  it('V8 flags stay the host’s: no natives syntax, in the agent or the host', async () => {
    const pool = openPool({ root: await tenants() });
    denied(await attack(pool, 'natives'));
    denied(await attack(pool, 'nativesRequire'));
    denied(await attack(pool, 'heapSnapshotNearLimit'));
    // V8's flags are the process's: had one call got through, this process would parse it too.
    expect(() => new Function('return %IsBeingInterpreted()')).toThrow(SyntaxError);
    await neighbourAnswers(pool);
  });

  it('no signal reaches the host: SIGUSR1 would open its inspector, SIGTERM end it', async () => {
    const pool = openPool({ root: await tenants() });
    for (const signal of ['SIGUSR1', 'SIGTERM']) {
      denied(await attack(pool, 'signal', signal));
      denied(await attack(pool, 'signalNamed', signal));
    }
    denied(await attack(pool, 'rawSignal'));
    expect(inspectorUrl()).toBeUndefined();
    await neighbourAnswers(pool);
  });

  it('no thread’s priority changes, the neighbour’s or its own', async () => {
    const pool = openPool({ root: await tenants() });
    const { threadId } = (await pool.call(NEIGHBOUR, 'notify', ['x'])) as { threadId: number };
    denied(await attack(pool, 'priority', threadId));
    denied(await attack(pool, 'priority', 0));
    await neighbourAnswers(pool);
  });

  it('a process key signals nothing either: not the host’s inspector, not the host', async () => {
    // The host's own uid, as when it does not run as root: its signals would reach the host.
    const pool = openPool({
      root: await tenants(),
      isolation: (key) => (key.swarm === 'a' ? 'process' : 'thread'),
      processUser: 'host',
    });
    denied(await attack(pool, 'debugProcess'));
    denied(await attack(pool, 'killParent'));
    denied(await attack(pool, 'report'));
    expect(inspectorUrl()).toBeUndefined();
    await neighbourAnswers(pool);
  });
});

/** An agent that keeps what it was given or made, so a later call shows whether memory is shared. */
const SHARER = `
let kept = null;
export function keep(view) {
  kept = view;
  Atomics.store(view, 0, 7);
  return Atomics.load(view, 1);
}
export function bump() {
  return Atomics.add(kept, 0, 1) + 1;
}
export function make() {
  kept = new Int32Array(new SharedArrayBuffer(8));
  return kept;
}
export function makeBare() {
  return { buffer: new SharedArrayBuffer(8) };
}
export function makeMixed() {
  const buffer = new SharedArrayBuffer(8);
  kept = new Int32Array(buffer);
  return { bytes: new Uint8Array(buffer, 4), plain: new Uint8Array([1, 2]) };
}
export function echo(value) {
  return value;
}
export async function* chunks() {
  yield new Int32Array(new SharedArrayBuffer(8));
}
`;

describe('SharedArrayBuffer', () => {
  const KEY = 's/sharer';
  const shared = () => new Int32Array(new SharedArrayBuffer(8));

  it('in the arguments, is refused unless the call passes { shared: true }; then only caller and key share it', async () => {
    const pool = openPool({ root: await tenants({ 's/live/sharer.mjs': SHARER }) });
    const sab = new SharedArrayBuffer(8);
    const memory = new (
      globalThis as unknown as { WebAssembly: { Memory: new (d: object) => object } }
    ).WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
    for (const args of [[shared()], [sab], [{ deep: [new Map([['k', new Set([sab])]])] }], [memory]]) {
      const refused = await rejection(pool.call(KEY, 'echo', args));
      expect(refused.code).toBe('ERR_SANDPOOL_DATA_CLONE');
      expect(refused.message).toContain('{ shared: true }');
    }
    // A copy is not refused: a plain buffer, and arrays of numbers.
    expect(await pool.call(KEY, 'echo', [new Uint8Array([1]), [1, 2, 3]])).toEqual(new Uint8Array([1]));
    const view = shared();
    Atomics.store(view, 1, 5);
    expect(await pool.call(KEY, 'keep', [view], { shared: true })).toBe(5);
    expect(Atomics.load(view, 0)).toBe(7);
    expect(await pool.call(KEY, 'bump')).toBe(8);
    expect(Atomics.load(view, 0)).toBe(8);
    await neighbourAnswers(pool);
  });

  it('in a result, is refused unless the call passed { shared: true }; then the caller holds the key’s memory', async () => {
    const pool = openPool({ root: await tenants({ 's/live/sharer.mjs': SHARER }) });
    for (const fn of ['make', 'makeMixed', 'makeBare']) {
      const refused = await rejection(pool.call(KEY, fn));
      expect(refused.code).toBe('ERR_SANDPOOL_DATA_CLONE');
      expect((refused.cause as { message: string }).message).toContain('{ shared: true }');
    }
    const view = (await pool.call(KEY, 'make', [], { shared: true })) as Int32Array;
    expect(view.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(await pool.call(KEY, 'bump')).toBe(1);
    expect(Atomics.load(view, 0)).toBe(1);
    const mixed = (await pool.call(KEY, 'makeMixed', [], { shared: true })) as { bytes: Uint8Array; plain: Uint8Array };
    expect(mixed.bytes.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect([mixed.bytes.byteOffset, mixed.bytes.byteLength]).toEqual([4, 4]);
    expect(mixed.plain).toEqual(new Uint8Array([1, 2]));
    await pool.call(KEY, 'bump');
    expect(new Int32Array(mixed.bytes.buffer)[0]).toBe(1);
    // Node's deserializer takes no bare SharedArrayBuffer back: refused with what to return instead.
    const bare = await rejection(pool.call(KEY, 'makeBare', [], { shared: true }));
    expect([bare.code, (bare.cause as { message: string }).message]).toEqual([
      'ERR_SANDPOOL_DATA_CLONE',
      expect.stringContaining('return a view of it'),
    ]);
    // remote() passes the option on.
    const remote = pool.remote<{ make(): Promise<Int32Array> }>(KEY, { shared: true });
    expect((await remote.make()).buffer).toBeInstanceOf(SharedArrayBuffer);
    await neighbourAnswers(pool);
  });

  it('never crosses a stream, nor a process key', async () => {
    const pool = openPool({
      root: await tenants({ 's/live/sharer.mjs': SHARER, 'p/live/sharer.mjs': SHARER }),
      isolation: (key) => (key.swarm === 'p' ? 'process' : 'thread'),
      processUser: 'host',
    });
    await expect(pool.stream(KEY, 'echo', [shared()]).next()).rejects.toMatchObject({
      code: 'ERR_SANDPOOL_DATA_CLONE',
    });
    await expect(pool.stream(KEY, 'chunks').next()).rejects.toMatchObject({ code: 'ERR_SANDPOOL_DATA_CLONE' });
    expect(await code(pool.call('p/sharer', 'keep', [shared()], { shared: true }))).toBe('ERR_SANDPOOL_DATA_CLONE');
    expect(await code(pool.call('p/sharer', 'make', [], { shared: true }))).toBe('ERR_SANDPOOL_DATA_CLONE');
    expect(await pool.call('p/sharer', 'echo', [1])).toBe(1);
    await neighbourAnswers(pool);
  });

  it('a worker that sends shared memory for a call that did not allow it is ended; one allowed gets the same memory', () => {
    const violations: string[] = [];
    const settled: CallOutcome[] = [];
    const thread = {
      setReferenced() {},
      post() {},
      terminating: false,
      violate: (problem: string) => violations.push(problem),
    } as unknown as AgentThread;
    const owner: ChannelOwner = {
      engaged: () => {},
      cancelIgnored: () => {},
      drained: () => {},
      cpuNs: () => Number.NaN,
    };
    const channel = new Channel(thread, owner, 250, { measuring: false }, (text) => text);
    const call = (sharing: boolean) =>
      ({
        id: 0,
        fn: 'f',
        args: [],
        timeoutMs: 0,
        stream: null,
        transfer: null,
        shared: sharing,
        observed: null,
        keyText: 'p/sharer',
        stopWaiting() {},
        settle(error: { code: string } | null, value?: unknown) {
          settled.push(error === null ? { ok: true, value } : ({ ok: false, code: error.code } as CallOutcome));
          return true;
        },
      }) as unknown as Call;
    const memory = new SharedArrayBuffer(8);
    const { bytes, shared: buffers } = serializeMoving({ view: new Int32Array(memory) }, [], true);
    const allowed = call(true);
    channel.post(allowed);
    channel.receive({ t: 'result', id: allowed.id, bytes: bytes.slice(0), shared: buffers });
    const value = (settled[0] as { value: { view: Int32Array } }).value.view;
    value[0] = 3;
    expect(new Int32Array(memory)[0]).toBe(3);
    const refused = call(false);
    channel.post(refused);
    channel.receive({ t: 'result', id: refused.id, bytes, shared: buffers });
    expect(violations).toEqual([
      expect.stringMatching(/shared memory in the result of call \d+, which did not allow it/),
    ]);
    expect(settled).toHaveLength(1);
  });
});
