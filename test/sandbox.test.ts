import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { chmod, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createPool, type Pool, type PoolOptions, type SandboxLayers } from 'sandpool';
import { describe, expect, it } from 'vitest';
import { SwarmIds } from '../packages/sandpool/dist/host/workers/sandbox/uids.js';
import { cgroupDirOf, cgroupFileOf, poolGroupsOfThisProcess } from './support/cgroup.js';
import { rejection } from './support/errors.js';
import { PROCESS_NEIGHBOUR, withNeighbours } from './support/neighbours.js';
import { agentProcesses, eventually, installCleanup, invariants, openPool } from './support/pool.js';
import { counterAgent, fixture, makeRoot } from './support/root.js';
import { hostLayers, ON_CI } from './support/sandbox.js';
import { installServerCleanup, openServer, request } from './support/server.js';

installCleanup();
installServerCleanup();

const ATTACKER = 'x/cellmate';
/** sandpool's build, for a host run in a process of its own. */
const DIST = fileURLToPath(new URL('../packages/sandpool/dist/', import.meta.url));
const root = process.getuid?.() === 0;
const layers = hostLayers();
const caged = layers.namespaces;

/** Swarms x (the attacker) and m in processes, n in threads; x runs with no permission model, so only the OS sandbox holds it. */
async function tenants(): Promise<string> {
  const dir = await makeRoot({
    'x/live/cellmate.mjs': await fixture('cellmate.mjs'),
    'b/live/secret.txt': 'b only',
    ...(await counterAgent('n')),
    ...(await counterAgent('m')),
  });
  await chmod(dir, 0o755);
  return dir;
}

/**
 * The attacks' pool. Its neighbours keep more keys busy than there are cores, so fairness
 * would demote a heavy attack; a demoted cell's CPU weight ranks it below every task of the
 * machine, and on a machine loaded with other work (load 40-60 here) that starved a fork bomb
 * or a WebAssembly call past a minute: the time the attack took would measure the machine's
 * load, not the sandbox. Demotion by cgroup weight is process-isolation.test.ts's.
 */
function tenantPool(dir: string, options: Partial<PoolOptions> = {}): Pool {
  return openPool({
    root: dir,
    isolation: (key) => (key.swarm === 'n' ? 'thread' : 'process'),
    permissions: (key) => (key.swarm === 'x' ? 'none' : 'strict'),
    fairness: false,
    ...options,
  });
}

/** The process neighbour's child, as the host sees it (the pid its spawn event carried). */
async function processNeighbourPid(pool: Pool): Promise<number> {
  const spawned = new Promise<number>((resolve) =>
    pool.on('spawn', (event) => event.key === PROCESS_NEIGHBOUR && resolve(event.pid)),
  );
  expect(await pool.call(PROCESS_NEIGHBOUR, 'add', [1, 1])).toBe(2);
  return spawned;
}

describe('the OS sandbox of process keys', () => {
  it('reports its layers in stats() and a sandbox event, and none for a pool of threads', async () => {
    const dir = await tenants();
    const pool = createPool({ root: dir, isolation: 'process', spareWorkers: 0 });
    const heard = await new Promise<SandboxLayers>((resolve) => pool.once('sandbox', resolve));
    expect(heard).toEqual(pool.stats().sandbox);
    expect(heard).toEqual(layers);
    expect(heard.network).toBe(heard.namespaces ? 'loopback' : 'host');
    for (const { layer } of heard.missing) expect(heard[layer]).toBeFalsy();
    await pool.close();
    const threads = openPool({ root: dir });
    expect(threads.stats().sandbox).toBeNull();
    const off = openPool({ root: dir, isolation: 'process', sandbox: 'off' }).stats().sandbox;
    expect(off).toMatchObject({ namespaces: false, cgroups: null, network: 'host' });
    expect(off?.missing.map(({ layer }) => layer)).toEqual(expect.arrayContaining(['namespaces', 'cgroups']));
  });

  it('/healthz says which layers process keys get, without the reasons for a missing one', async () => {
    const dir = await tenants();
    const server = openServer({ root: dir, isolation: 'process' });
    const { namespaces, uidPerSwarm, cgroups, network, userns } = layers;
    expect((await request(server, 'GET', '/healthz')).body).toEqual({
      status: 'ok',
      node: 'node-1',
      sandbox: { namespaces, uidPerSwarm, cgroups, network, userns },
      store: null,
    });
    expect((await request(openServer({ root: dir }), 'GET', '/healthz')).body.sandbox).toBeNull();
  });

  it("'require' refuses a pool that would go without a layer, naming it, and starts nothing", async () => {
    const dir = await tenants();
    const before = agentProcesses().length;
    const refuse = (options: Partial<PoolOptions>) => () =>
      createPool({ root: dir, isolation: 'process', sandbox: 'require', ...options });
    expect(refuse({ processUser: 'host' })).toThrow(
      expect.objectContaining({ code: 'ERR_SANDPOOL_INVALID_OPTIONS', message: expect.stringMatching(/uidPerSwarm/) }),
    );
    expect(refuse({ processUser: { uid: 65534, gid: 65534 } })).toThrow(/uidPerSwarm \(processUser names one user/);
    expect(() => createPool({ root: dir, isolation: 'process', sandbox: 'sometimes' as 'auto' })).toThrow(
      expect.objectContaining({ code: 'ERR_SANDPOOL_INVALID_OPTIONS' }),
    );
    // Refused after its sandbox was made where Node cannot deny a thread the network (before 25); made and closed elsewhere.
    const unsure = () => createPool({ root: dir, network: 'enforce', isolation: () => 'process' });
    await Promise.resolve()
      .then(() => unsure().close())
      .catch(() => undefined);
    expect(agentProcesses()).toHaveLength(before);
    // Nor a cgroup of a pool that never was: none of this process's is left.
    await eventually(() => poolGroupsOfThisProcess().length === 0);
    if (layers.missing.length === 0) {
      const pool = openPool({ root: dir, isolation: 'process', sandbox: 'require' });
      expect(await pool.call('m/notifier_agent', 'add', [2, 2])).toBe(4);
    } else {
      expect(refuse({})).toThrow(new RegExp(layers.missing.map(({ layer }) => layer).join('.*')));
    }
  });

  it.runIf(ON_CI)('has every layer on CI, where .ci/run installs bubblewrap', () => {
    expect(layers.missing).toEqual([]);
  });

  it.runIf(caged)('a pid scan finds only its own cell, and another tenant’s child cannot be signalled', async () => {
    const pool = tenantPool(await tenants());
    const victim = await processNeighbourPid(pool);
    const found = await withNeighbours(pool, async () => {
      // A new pid namespace numbers from 1: the first 4096 and the host's own pids are enough to look at.
      const pids = await pool.call<{ found: number[]; own: number[] }>(ATTACKER, 'scanPids', [
        4096,
        [process.pid, victim],
      ]);
      for (const name of ['SIGKILL', 'SIGSTOP']) {
        expect(await pool.call(ATTACKER, 'signal', [victim, name])).toBe('ESRCH');
        expect(await pool.call(ATTACKER, 'signal', [process.pid, name])).toBe('ESRCH');
      }
      return pids;
    });
    // bubblewrap's init (pid 1) and the agent's own Node (2) and its threads: nothing of the host or the neighbours.
    expect(found.own).toContain(2);
    expect(found.found).toEqual([1, ...found.own].sort((a, b) => a - b));
    expect(await pool.call(PROCESS_NEIGHBOUR, 'add', [2, 3])).toBe(5);
  });

  it.runIf(root)('without namespaces, its swarm’s own uid still keeps it from signalling another swarm', async () => {
    const pool = tenantPool(await tenants(), { sandbox: 'off' });
    const victim = await processNeighbourPid(pool);
    const me = await pool.call<{ uid: number; gid: number }>(ATTACKER, 'whoami');
    expect(me.uid).toBe(me.gid);
    expect(me.uid).toBeGreaterThanOrEqual(200_000);
    const refused = await withNeighbours(pool, async () => [
      await pool.call(ATTACKER, 'signal', [victim, 'SIGKILL']),
      await pool.call(ATTACKER, 'signal', [victim, 'SIGSTOP']),
      await pool.call(ATTACKER, 'signal', [process.pid, 'SIGKILL']),
    ]);
    expect(refused).toEqual(['EPERM', 'EPERM', 'EPERM']);
    expect(await pool.call(PROCESS_NEIGHBOUR, 'add', [2, 3])).toBe(5);
  });

  it.runIf(caged)(
    'reads nothing outside its binds; a node_modules link to / fails its build, in live/ or above it',
    async () => {
      const dir = await tenants();
      // A link out of the swarm's folder, in live/ or above it, fails the build of the swarm's
      // artifact: nothing of it runs, and nothing is bound through it.
      for (const link of ['x/live/node_modules', 'x/node_modules']) {
        await symlink('/', join(dir, link));
        const refused = await rejection(tenantPool(dir).call(ATTACKER, 'readFile', ['/etc/hostname']));
        expect(refused.code, link).toBe('ERR_SANDPOOL_MODULE_NOT_FOUND');
        await rm(join(dir, link));
      }
      const pool = tenantPool(dir);
      const secret = join(dir, 'b/live/secret.txt');
      const reads = await withNeighbours(pool, async () => ({
        direct: await pool.call(ATTACKER, 'readFile', [secret]),
        neighbourCode: await pool.call(ATTACKER, 'readFile', [join(dir, 'm/live/notifier_agent.mjs')]),
        hostEnviron: await pool.call(ATTACKER, 'readFile', ['/proc/self/environ']),
        rawOwnCode: await pool.call(ATTACKER, 'readFile', [join(dir, 'x/live/cellmate.mjs')]),
      }));
      expect(reads).toEqual({
        direct: 'ENOENT',
        neighbourCode: 'ENOENT',
        // Its own (the pool's `env`, empty here, and its Node's flags), never the host's; after the drop to its uid, not even that.
        hostEnviron: root ? 'EACCES' : expect.stringMatching(/^(NODE_OPTIONS=[^\0]*\0)?$/),
        // It runs from its artifact: not even its own raw folder is in its view.
        rawOwnCode: 'ENOENT',
      });
    },
  );

  it.runIf(caged)('cannot read another pid’s /proc: the host’s and its neighbours’ are not there', async () => {
    const pool = tenantPool(await tenants());
    const victim = await processNeighbourPid(pool);
    const reads = await withNeighbours(pool, async () => [
      await pool.call(ATTACKER, 'readFile', [`/proc/${process.pid}/environ`]),
      await pool.call(ATTACKER, 'readFile', [`/proc/${victim}/cmdline`]),
      await pool.call(ATTACKER, 'readFile', [`/proc/${process.pid}/root/etc/hostname`]),
      // Its cell's init runs as root: its uid may not read it.
      await pool.call(ATTACKER, 'readFile', ['/proc/1/environ']),
    ]);
    expect(reads).toEqual(['ENOENT', 'ENOENT', 'ENOENT', root ? 'EACCES' : expect.any(String)]);
  });

  it.runIf(caged)('reaches neither a loopback TCP service nor a Unix socket of the host', async () => {
    const servers: Server[] = [];
    const listen = (target: number | string): Promise<Server> =>
      new Promise((resolve) => {
        const server = createServer((socket) => socket.end('hello'));
        servers.push(server);
        server.listen(target, () => resolve(server));
      });
    const socketDir = await mkdtemp(join(tmpdir(), 'sandpool-sock-'));
    try {
      const tcp = await listen(0);
      const port = (tcp.address() as { port: number }).port;
      const unixPath = join(socketDir, 'host.sock');
      await listen(unixPath as unknown as number);
      const abstract = `\0sandpool-test-${process.pid}`;
      await listen(abstract as unknown as number);
      const pool = tenantPool(await tenants());
      const tries = await withNeighbours(pool, async () => [
        await pool.call(ATTACKER, 'connectTo', [{ host: '127.0.0.1', port }]),
        await pool.call(ATTACKER, 'connectTo', [{ path: unixPath }]),
        await pool.call(ATTACKER, 'connectTo', [{ path: abstract }]),
      ]);
      expect(tries).toEqual(['ECONNREFUSED', 'ENOENT', 'ECONNREFUSED']);
    } finally {
      for (const server of servers) server.close();
      await rm(socketDir, { recursive: true, force: true });
    }
  });

  it.runIf(layers.cgroups !== null)(
    'a fork bomb stops at its cell’s pids.max; the host still starts processes',
    { timeout: 60_000 },
    async () => {
      // A bound of 32 tasks (the default is 64) fills sooner on a loaded machine; its Node holds about a dozen.
      const pool = tenantPool(await tenants(), { callTimeoutMs: 60_000, sandbox: { pids: 32 } });
      const cell = await cellOf(pool);
      const bomb = await withNeighbours(pool, async () => {
        const result = await pool.call<{ spawned: number; code: string | null }>(ATTACKER, 'forkBomb', [200]);
        // While the bomb's children hold the cell full, the host (and a new key) still start processes.
        expect(spawnSync(process.execPath, ['-e', '0']).status).toBe(0);
        expect(Number(cgroupFileOf(cell, 'pids', 'pids.current'))).toBeLessThanOrEqual(32);
        return result;
      });
      expect(bomb.code).toBe('EAGAIN');
      expect(bomb.spawned).toBeLessThan(32);
      expect(cgroupFileOf(cell, 'pids', 'pids.max')).toBe('32');
      expect(Number(/max (\d+)/.exec(cgroupFileOf(cell, 'pids', 'pids.events') ?? '')?.[1])).toBeGreaterThan(0);
    },
  );

  it.runIf(caged)('a disk fill of /tmp stops at its bound, in its own /tmp, and hurts no one', async () => {
    const pool = tenantPool(await tenants(), { sandbox: { tmpMb: 16 } });
    const marker = `sandpool-fill-${process.pid}`;
    const fill = await withNeighbours(pool, () =>
      pool.call<{ bytes: number; code: string }>(ATTACKER, 'fillTmp', [marker]),
    );
    expect(fill.code).toBe('ENOSPC');
    expect(fill.bytes).toBeLessThanOrEqual(16 * 2 ** 20);
    expect(fill.bytes).toBeGreaterThan(8 * 2 ** 20);
    expect(existsSync(join('/tmp', `${marker}-0`))).toBe(false);
    // Another cell's /tmp is its own, empty.
    writeFileSync(join(tmpdir(), `${marker}-host`), 'host');
    try {
      expect(await pool.call(ATTACKER, 'readFile', [join('/tmp', `${marker}-host`)])).toBe('ENOENT');
    } finally {
      await rm(join(tmpdir(), `${marker}-host`), { force: true });
    }
  });

  // One test per mode: each starts three workers and a fetch, which on a loaded machine takes a while.
  it.each(['auto', 'off'] as const)(
    "WebAssembly works in a process key, and fetch on it (undici is WebAssembly on Node 20), sandbox '%s'",
    async (sandbox) => {
      const pool = tenantPool(await tenants(), { sandbox });
      const server = createServer((socket) => socket.end('HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n'));
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      try {
        const url = `http://127.0.0.1:${(server.address() as { port: number }).port}/`;
        const result = await withNeighbours(pool, () => pool.call(ATTACKER, 'wasmThenFetch', [url]));
        // In a cell the host's loopback is not its loopback: the fetch fails as a fetch does, the child lives.
        const fetched = sandbox === 'auto' && caged ? 'ECONNREFUSED' : '204';
        expect(result).toEqual({ bytes: 512 * 65_536, fetched });
        expect(await pool.call(ATTACKER, 'add', [1, 1])).toBe(2);
      } finally {
        server.close();
      }
    },
    40_000,
  );

  it.runIf(layers.cgroups !== null)(
    'a cell’s cgroup holds its memory bound, feeds keyStats(), and goes when the cell does',
    async () => {
      const pool = tenantPool(await tenants(), { resourceLimits: { maxOldGenerationSizeMb: 64 }, maxExternalMb: 32 });
      const cell = await cellOf(pool);
      const limit = cgroupFileOf(cell, 'memory', 'memory.max') ?? cgroupFileOf(cell, 'memory', 'memory.limit_in_bytes');
      // Heap and external budgets, the runtime's 96 MB, and 64 MB of room above the governor's line.
      expect(Number(limit)).toBe((64 + 32 + 96 + 64) * 2 ** 20);
      expect(cgroupFileOf(cell, 'pids', 'pids.max')).toBe('64');
      await eventually(() => (pool.keyStats().find((entry) => entry.key === ATTACKER)?.heapBytes ?? 0) > 0);
      expect(pool.keyStats().find((entry) => entry.key === ATTACKER)).toMatchObject({
        isolation: 'process',
        cgroup: { memoryMaxBytes: Number(limit) },
      });
      const membership = readFileSync(`/proc/${cell}/cgroup`, 'latin1');
      await pool.close();
      // Every sandpool cgroup the cell was in is gone.
      for (const line of membership.split('\n').filter((entry) => entry.includes('sandpool-'))) {
        expect(cgroupExists(line)).toBe(false);
      }
    },
  );

  it.runIf(layers.cgroups !== null)(
    'the CPU of a cell’s child processes counts toward its key while they run, not once they are reaped',
    { timeout: 120_000 },
    async () => {
      // No idle-burn limit: the key must live to be read.
      const pool = tenantPool(await tenants(), { cpuTimeoutMs: 0 });
      const cpuOf = (): number => pool.keyStats().find((entry) => entry.key === ATTACKER)?.cpuMs ?? 0;
      await withNeighbours(pool, async () => {
        expect(await pool.call(ATTACKER, 'burnInChild', [1_500])).toBe('started');
        // The child never ends while the cell lives: only the cell's cgroup counts it.
        await eventually(() => cpuOf() >= 1_000, 90_000);
      });
    },
  );

  it.runIf(layers.cgroups !== null)(
    "a pool's cells share one parent cgroup, with the pool's CPU weight and bound; it goes with the pool",
    async () => {
      const pool = tenantPool(await tenants(), { sandbox: { cpuWeight: 50, cpuMax: 1.5 } });
      const cells = [await cellOf(pool), await processNeighbourPid(pool)];
      const parentOf = (pid: number, controller: string): string => dirname(cgroupDirOf(pid, controller) ?? '/');
      const parent = parentOf(cells[0] as number, 'cpu');
      expect(basename(parent)).toMatch(/^sandpool-\d+-\d+$/);
      for (const controller of ['cpu', 'memory', 'pids']) {
        expect(cells.map((pid) => basename(parentOf(pid, controller)))).toEqual([basename(parent), basename(parent)]);
      }
      const read = (file: string): string => readFileSync(join(parent, file), 'latin1').trim();
      if (layers.cgroups === 'v2') {
        expect([read('cpu.weight'), read('cpu.max')]).toEqual(['50', '150000 100000']);
      } else {
        expect([read('cpu.shares'), read('cpu.cfs_quota_us'), read('cpu.cfs_period_us')]).toEqual([
          '512',
          '150000',
          '100000',
        ]);
      }
      // Another pool's cells have a parent of their own.
      const other = tenantPool(await tenants());
      expect(parentOf(await cellOf(other), 'cpu')).not.toBe(parent);
      await pool.close();
      expect(existsSync(parent)).toBe(false);
    },
  );

  it.runIf(layers.cgroups !== null)(
    "a pool's cells weigh together as many nice-0 threads as they are, unless sandbox.cpuWeight fixes it",
    async () => {
      const pool = tenantPool(await tenants());
      const parent = dirname(cgroupDirOf(await cellOf(pool), 'cpu') ?? '/');
      const file = layers.cgroups === 'v2' ? 'cpu.weight' : 'cpu.shares';
      const weight = (): number => Number(readFileSync(join(parent, file), 'latin1'));
      const one = layers.cgroups === 'v2' ? 100 : 1024;
      expect(weight()).toBe(one);
      await processNeighbourPid(pool);
      expect(weight()).toBe(2 * one);
      const exited = new Promise((resolve) => pool.on('exit', (event) => event.key === ATTACKER && resolve(event)));
      const { pid } = await pool.call<{ pid: number }>(ATTACKER, 'whoami');
      await pool.call(ATTACKER, 'signal', [pid, 'SIGKILL']).catch(() => {});
      await exited;
      await eventually(() => weight() === one);
      expect(await pool.call(PROCESS_NEIGHBOUR, 'add', [2, 3])).toBe(5);
      expect(invariants(pool)).toEqual([]);
    },
  );

  it.runIf(layers.cgroups !== null)(
    "a pool's cpuMax bounds its cells together: a cell burning CPU is throttled there, its neighbours answer",
    { timeout: 120_000 },
    async () => {
      // No idle-burn limit and no fairness: only the pool's bound holds the burn back.
      const pool = tenantPool(await tenants(), { sandbox: { cpuMax: 0.25 }, cpuTimeoutMs: 0 });
      const parent = dirname(cgroupDirOf(await cellOf(pool), 'cpu') ?? '/');
      const throttled = (): number =>
        Number(/^nr_throttled (\d+)$/m.exec(readFileSync(join(parent, 'cpu.stat'), 'latin1'))?.[1] ?? 0);
      const before = throttled();
      expect(await withNeighbours(pool, () => pool.call(ATTACKER, 'burn', [400]))).toBe('burnt');
      // 400 ms of CPU at a quarter of a core spans several 100 ms periods: each one it ran out of counts.
      expect(throttled()).toBeGreaterThan(before);
    },
  );

  // On CI the layers are required (see 'has every layer on CI'): there this runs, and fails without cgroups.
  it.runIf(layers.cgroups !== null || ON_CI)(
    "a process key's own budgets from policy bound its cell: over them it ends with oom, a neighbour on the pool's answers",
    { timeout: 120_000 },
    async () => {
      const dir = await tenants();
      // A second process key, on the pool's budgets.
      mkdirSync(join(dir, 'y/live'), { recursive: true });
      await writeFile(join(dir, 'y/live/cellmate.mjs'), await fixture('cellmate.mjs'));
      const pool = tenantPool(dir, {
        resourceLimits: { maxOldGenerationSizeMb: 128 },
        maxExternalMb: 384,
        policy: (key) =>
          key.swarm === 'x' ? { resourceLimits: { maxOldGenerationSizeMb: 32 }, maxExternalMb: 16 } : {},
      });
      const cell = await cellOf(pool);
      const spawned = new Promise<number>((resolve) =>
        pool.on('spawn', (event) => event.key === 'y/cellmate' && resolve(event.pid)),
      );
      expect(await pool.call('y/cellmate', 'add', [1, 1])).toBe(2);
      const roomy = await spawned;
      const bound = (pid: number): number =>
        Number(cgroupFileOf(pid, 'memory', 'memory.max') ?? cgroupFileOf(pid, 'memory', 'memory.limit_in_bytes'));
      // Each cell's bound is its own budgets, the runtime's 96 MB and 64 MB of room above the governor's line.
      expect(bound(cell)).toBe((32 + 16 + 96 + 64) * 2 ** 20);
      expect(bound(roomy)).toBe((128 + 384 + 96 + 64) * 2 ** 20);
      // 250 MB touched outside the heap: past the attacker's cell, well within the pool's budgets.
      const ended = await withNeighbours(pool, () => rejection(pool.call(ATTACKER, 'touchBuffers', [250])));
      expect(ended).toMatchObject({ code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'oom' });
      expect(await pool.call('y/cellmate', 'touchBuffers', [250])).toBe(250);
      // The attacker's key starts again, in a cell with the same bound.
      const again = new Promise<number>((resolve) =>
        pool.on('spawn', (event) => event.key === ATTACKER && resolve(event.pid)),
      );
      expect(await pool.call(ATTACKER, 'add', [2, 2])).toBe(4);
      expect(bound(await again)).toBe((32 + 16 + 96 + 64) * 2 ** 20);
      expect(invariants(pool)).toEqual([]);
    },
  );

  it.runIf(caged)('runs TypeScript and a snapshot in a cell, under a root only the host may enter', async () => {
    // makeRoot's folder is mkdtemp's 0700: in a cell the folders above the key's are the cell's own.
    const dir = await makeRoot({ 'x/live/typed.ts': 'export const add = (a: number, b: number): number => a + b;\n' });
    const pool = openPool({ root: dir, isolation: 'process' });
    expect(await pool.call('x/typed', 'add', [2, 3])).toBe(5);
    await pool.snapshots.create('x', 'jan');
    expect(await pool.call('x@jan/typed', 'add', [4, 5])).toBe(9);
    expect(invariants(pool)).toEqual([]);
  });

  it('a descriptor the host holds without close-on-exec reaches no cell', async () => {
    const dir = await makeRoot({
      'x/live/leak.mjs': `
        import { readdirSync, readlinkSync } from 'node:fs';
        /** What each of its descriptors is, past stdio. */
        export const openFds = () =>
          readdirSync('/proc/self/fd').filter((fd) => Number(fd) > 2).map((fd) => {
            try {
              return readlinkSync(\`/proc/self/fd/\${fd}\`);
            } catch (error) {
              return error.code;
            }
          });
      `,
      'b/live/secret.txt': 'b only',
      ...(await counterAgent('n')),
      ...(await counterAgent('m')),
    });
    await chmod(dir, 0o755);
    const secret = join(dir, 'b/live/secret.txt');
    // The host is a child holding the secret open as fd 30, as a shell's redirection leaves it: not close-on-exec (Node marks a low one such as 9 at its start, not 30).
    const hostScript = fileURLToPath(new URL('fixtures/leaky-host.mjs', import.meta.url));
    const host = spawnSync('bash', ['-c', 'exec 30<"$0"; exec "$@"', secret, process.execPath, hostScript, DIST, dir], {
      encoding: 'utf8',
      timeout: 120_000,
    });
    expect(host.status, host.stderr).toBe(0);
    const seen = JSON.parse(host.stdout) as { fds: string[]; wrong: unknown[]; answered: number; invariants: string[] };
    expect(seen.wrong).toEqual([]);
    expect(seen.answered).toBeGreaterThan(0);
    expect(seen.invariants).toEqual([]);
    expect(seen.fds.length).toBeGreaterThan(0);
    expect(seen.fds.some((target) => target.includes('secret'))).toBe(false);
  });

  it.runIf(caged)('finds no host path on its cell’s command lines: neither the root nor sandpool’s', async () => {
    const dir = await tenants();
    const pool = tenantPool(dir);
    const lines = await withNeighbours(pool, async () => [
      await pool.call<string>(ATTACKER, 'readFile', ['/proc/1/cmdline']),
      await pool.call<string>(ATTACKER, 'readFile', ['/proc/self/cmdline']),
    ]);
    for (const line of lines) {
      // Read, and what it holds: bubblewrap and Node by name, nothing of where things are on the host.
      expect(line).toMatch(/node\0bundle\.js\0/);
      for (const path of [dir, DIST, '/run/sandpool', join(DIST, 'worker')]) expect(line).not.toContain(path);
    }
  });

  it.runIf(caged)('cannot make a user namespace, even with child processes granted', async () => {
    expect(layers.userns).toBe(root ? 'seccomp' : 'disabled');
    const dir = await tenants();
    // A tenant may be granted any program: here util-linux's unshare (it needs only the libc every cell has).
    // An artifact holds no executable file; a grant under /tmp names the cell's own /tmp.
    const unshare = '/usr/bin/unshare';
    const pool = tenantPool(dir, {
      permissions: (key) => (key.swarm === 'x' ? { childProcess: true, fsRead: [unshare] } : 'strict'),
    });
    // The cell has no shell and no coreutils: the one program to run is its Node.
    const node = [process.execPath, '-e', '0'];
    const tries = await withNeighbours(pool, async () => [
      await pool.call(ATTACKER, 'run', [unshare, ['--user', ...node]]),
      await pool.call(ATTACKER, 'run', [unshare, ['--user', '--map-root-user', ...node]]),
      // The same program, asking for no namespace, runs.
      await pool.call(ATTACKER, 'run', [unshare, ['--fork', ...node]]),
    ]);
    expect(tries[0]).toMatchObject({ status: 1, said: expect.stringMatching(/Operation not permitted/) });
    expect(tries[1]).toMatchObject({ status: 1, said: expect.stringMatching(/Operation not permitted/) });
    expect(tries[2]).toMatchObject({ status: 0 });
  });

  it.runIf(root)('gives each swarm a uid of its own, the same one again, and two swarms never one', async () => {
    const dir = await tenants();
    const pool = tenantPool(dir);
    const x = await pool.call<{ uid: number }>(ATTACKER, 'whoami');
    await writeFile(join(dir, 'x/live/second.mjs'), await fixture('cellmate.mjs'));
    expect(await pool.call('x/second', 'whoami')).toMatchObject({ uid: x.uid });
    const again = tenantPool(dir);
    expect(await again.call(ATTACKER, 'whoami')).toMatchObject({ uid: x.uid });
    // Within a pool, a swarm whose uid another holds gets the next free one up.
    const ids = new SwarmIds([300_000, 300_002]);
    const [first, second, third] = ['a', 'b', 'c'].map((swarm) => ids.acquire(swarm).uid);
    expect(new Set([first, second, third]).size).toBe(3);
    expect(() => ids.acquire('d')).toThrow(/every uid of sandbox.uidRange/);
    ids.release('b');
    expect(ids.acquire('d').uid).toBe(second);
    expect(ids.acquire('a').uid).toBe(first);
  });
});

/** The pid of the attacker's child (the cell's outer bubblewrap, in its cgroup with the rest of it). */
async function cellOf(pool: Pool): Promise<number> {
  const spawned = new Promise<number>((resolve) =>
    pool.on('spawn', (event) => event.key === ATTACKER && resolve(event.pid)),
  );
  expect(await pool.call(ATTACKER, 'add', [1, 1])).toBe(2);
  return spawned;
}

/** Whether the cgroup named by a /proc/<pid>/cgroup line still exists. */
function cgroupExists(line: string): boolean {
  const [, controllers = '', path = ''] = /^\d+:([^:]*):(.*)$/.exec(line) ?? [];
  const mounts = readFileSync('/proc/self/mountinfo', 'latin1').split('\n');
  const mount = mounts.find((entry) => {
    const [, after = ''] = entry.split(' - ');
    const [type, , options = ''] = after.split(' ');
    return controllers === ''
      ? type === 'cgroup2'
      : type === 'cgroup' && options.split(',').includes(controllers.split(',')[0] as string);
  });
  const point = mount?.split(' ')[4];
  return point !== undefined && existsSync(join(point, path));
}
