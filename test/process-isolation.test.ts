import { pbkdf2Sync } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { chmod, mkdir, open, readdir, readFile, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import type { Pool } from 'sandpool';
import { describe, expect, it } from 'vitest';
import { cpuWeightOf } from './support/cgroup.js';
import { code, rejection } from './support/errors.js';
import { THREAD_NEIGHBOUR as NEIGHBOUR, withNeighbour } from './support/neighbours.js';
import { agentProcesses, eventually, installCleanup, invariants, openPool } from './support/pool.js';
import { counterAgent, fixture, makeRoot } from './support/root.js';
import { hostLayers } from './support/sandbox.js';

installCleanup();

/** pbkdf2 jobs (20,000 sha512 rounds each) one CPU test runs on the child's pool: about 0.3 s of CPU. */
const HASHES = 40;
const ESCAPEE = 'x/escapee';
const root = process.getuid?.() === 0;
const layers = hostLayers();

/** A root the children's uid may read: makeRoot's temp folder is 0700, as mkdtemp makes it. */
async function tenants(): Promise<string> {
  const dir = await makeRoot({
    'x/live/escapee.mjs': await fixture('escapee.mjs'),
    'x/live/hog.mjs': await fixture('hog.mjs'),
    'x/live/intruder.mjs': await fixture('intruder.mjs'),
    'b/live/secret.txt': 'b only',
    ...(await counterAgent('n')),
  });
  await chmod(dir, 0o755);
  return dir;
}

/** Swarm x in child processes, everyone else in threads: an untrusted tenant beside trusted ones. */
function mixedPool(rootDir: string, options: Partial<Parameters<typeof openPool>[0]> = {}): Pool {
  return openPool({ root: rootDir, isolation: (key) => (key.swarm === 'x' ? 'process' : 'thread'), ...options });
}

/**
 * Runs `attack` while the thread-isolated neighbour is called in a loop, every answer
 * checked; it must keep answering, right, and once more after the attack settled.
 */
describe("isolation: 'process'", () => {
  it.runIf(root)('refuses, with what to change, a key whose files the children’s uid cannot read', async () => {
    const dir = await tenants();
    // Without namespaces the child walks the host's folders: a 0700 root hides the key.
    await chmod(dir, 0o700);
    const bare = mixedPool(dir, { sandbox: 'off' });
    const refused = await rejection(bare.call(ESCAPEE, 'add', [1, 1]));
    expect(refused.code).toBe('ERR_SANDPOOL_MODULE_LOAD');
    expect(refused.message).toMatch(/uid \d+ .* cannot enter .*mode 700.*processUser/);
    expect(await bare.call(NEIGHBOUR, 'add', [1, 2])).toBe(3);
    expect(await mixedPool(dir, { sandbox: 'off', processUser: 'host' }).call(ESCAPEE, 'add', [1, 1])).toBe(2);
    // In a cell the folders above the key's are the cell's own: only the key's folder counts.
    if (layers.namespaces) expect(await mixedPool(dir).call(ESCAPEE, 'add', [1, 1])).toBe(2);
    // The tenant's own folder's mode no longer matters: the key runs from its artifact, which the store makes readable.
    await chmod(join(dir, 'x/live'), 0o700);
    expect(await mixedPool(dir, { processUser: 'host' }).call(ESCAPEE, 'add', [1, 1])).toBe(2);
    if (layers.namespaces) expect(await mixedPool(dir).call(ESCAPEE, 'add', [1, 1])).toBe(2);
  });

  it('serves the same API from a child process, another uid when the host is root', async () => {
    const pool = mixedPool(await tenants());
    const spawned: number[] = [];
    pool.on('spawn', (event) => spawned.push(event.pid));
    const who = await pool.call<{ pid: number; ppid: number; uid: number; key: string }>(ESCAPEE, 'whoami');
    expect(who.key).toBe(ESCAPEE);
    expect(who.pid).not.toBe(process.pid);
    // Events carry the pid of the child the pool spawned (bubblewrap's, where it makes a cell).
    expect(spawned).toEqual(agentProcesses());
    if (layers.namespaces) expect(who).toMatchObject({ pid: 2, ppid: 1 });
    else expect(who).toMatchObject({ pid: spawned[0], ppid: process.pid });
    if (root) {
      // Its swarm's own uid, from the default sandbox.uidRange.
      expect(who.uid).toBeGreaterThanOrEqual(200_000);
      expect(who.uid).toBeLessThanOrEqual(265_535);
      // It started as root and dropped before any agent code: there is no way back.
      expect(await pool.call(ESCAPEE, 'regainRoot')).toBe('EPERM');
    }
    expect(await pool.remote<{ add(a: number, b: number): Promise<number> }>(ESCAPEE).add(2, 3)).toBe(5);
    expect(await code(pool.call(ESCAPEE, 'missing'))).toBe('ERR_SANDPOOL_EXPORT_NOT_FOUND');
    expect(pool.keyStats().find((stats) => stats.key === ESCAPEE)).toMatchObject({ state: 'ready', workers: 1 });
    expect(await pool.call(NEIGHBOUR, 'add', [1, 2])).toBe(3);
    expect(agentProcesses()).toHaveLength(1);
  });

  it('streams, host capabilities, reload and snapshots work as for a thread', async () => {
    const dir = await tenants();
    const pool = mixedPool(dir, { host: { greet: (ctx, name) => `hello ${String(name)} from ${ctx.key}` } });
    const chunks: unknown[] = [];
    for await (const chunk of pool.stream(ESCAPEE, 'countTo', [3])) chunks.push(chunk);
    expect(chunks).toEqual([1, 2, 3]);
    expect(await pool.call(ESCAPEE, 'askHost', ['x'])).toBe(`hello x from ${ESCAPEE}`);
    await pool.snapshots.create('x', 'jan');
    const file = join(dir, 'x/live/escapee.mjs');
    await writeFile(file, (await readFile(file, 'utf8')).replace("'v1'", "'v2'"));
    expect(await pool.invalidate({ swarm: 'x' })).toMatchObject({ failed: [] });
    expect(await pool.call(ESCAPEE, 'version')).toBe('v2');
    expect(await pool.call('x@jan/escapee', 'version')).toBe('v1');
    expect(await pool.call(NEIGHBOUR, 'add', [1, 2])).toBe(3);
    expect(invariants(pool)).toEqual([]);
  });

  it('inherits none of the host’s descriptors', async () => {
    const dir = await tenants();
    const held = await open(join(dir, 'b/live/secret.txt'), 'r');
    try {
      const pool = mixedPool(dir);
      const inodes = await pool.call<number[]>(ESCAPEE, 'openInodes');
      expect(inodes.length).toBeGreaterThan(3);
      expect(inodes).not.toContain((await held.stat()).ino);
    } finally {
      await held.close();
    }
  });

  // Strict denies process.kill (strict-containment.test.ts): these two run what the process
  // boundary holds once it is allowed.
  it('a signal the agent sends to its own process ends only that key, which respawns', async () => {
    // Every call here answers in moments; only the stopped process's call needs the limit.
    const pool = mixedPool(await tenants(), { callTimeoutMs: 5_000, abortGraceMs: 100, permissions: 'none' });
    for (const name of ['SIGTERM', 'SIGKILL']) {
      const ended = await withNeighbour(pool, () => rejection(pool.call(ESCAPEE, 'signal', ['self', name])));
      expect(ended).toMatchObject({ code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'crash' });
      expect(await pool.call(ESCAPEE, 'add', [1, 1])).toBe(2);
    }
    // A stopped process answers nothing: its call times out and SIGKILL ends it.
    const stopped = await withNeighbour(pool, () => rejection(pool.call(ESCAPEE, 'signal', ['self', 'SIGSTOP'])));
    expect(stopped.code).toBe('ERR_SANDPOOL_TIMEOUT');
    await eventually(() => agentProcesses().length === 0);
    expect(await pool.call(ESCAPEE, 'add', [2, 2])).toBe(4);
  });

  it.runIf(root)('cannot signal the host: it runs as another uid', async () => {
    const pool = mixedPool(await tenants(), { permissions: 'none' });
    for (const name of ['SIGKILL', 'SIGSTOP', 'SIGTERM']) {
      const refused = await withNeighbour(pool, () => rejection(pool.call(ESCAPEE, 'signal', ['parent', name])));
      expect(refused.code).toBe('ERR_SANDPOOL_AGENT_ERROR');
      expect((refused.cause as { code?: string }).code).toBe('EPERM');
    }
  });

  it('a descriptor flood stays in its own fd table, bounded by its rlimit, and dies with it', async () => {
    const dir = await tenants();
    // 'none': it ends its own process by a signal, which strict denies.
    const pool = mixedPool(dir, { processLimits: { openFiles: 256 }, permissions: 'none' });
    const flood = await withNeighbour(pool, () => pool.call<{ opened: number; code: string }>(ESCAPEE, 'exhaustFds'));
    expect(flood.code).toBe('EMFILE');
    expect(flood.opened).toBeLessThan(256);
    // The host's own file work and a new key are untouched while the flood is held.
    expect(await readdir(dir)).toContain('x');
    expect(await pool.call('n/notifier_agent', 'add', [2, 2])).toBe(4);
    await rejection(pool.call(ESCAPEE, 'signal', ['self', 'SIGKILL']));
    expect(await pool.call(ESCAPEE, 'add', [1, 2])).toBe(3);
  });

  it('raw writes to fds 1 and 2 and process._rawDebug reach the host labelled with the key', async () => {
    const lines: [string, string][] = [];
    const pool = mixedPool(await tenants(), { onOutput: (key, _stream, line) => lines.push([key, line]) });
    const forged = '[n/notifier_agent] a line in the neighbour’s name';
    expect(await withNeighbour(pool, () => pool.call(ESCAPEE, 'forge', [forged]))).toBe(true);
    await eventually(() => lines.filter(([, line]) => line.includes('neighbour')).length >= 3);
    for (const [key, line] of lines.filter(([, text]) => text.includes('neighbour'))) {
      expect(key).toBe(ESCAPEE);
      expect(line).toContain('neighbour');
    }
  });

  it('heap patterns that abort a thread-isolated host end only the child, with oom', { timeout: 240_000 }, async () => {
    const pool = mixedPool(await tenants(), {
      resourceLimits: { maxOldGenerationSizeMb: 64 },
      onOutput: () => {}, // V8's report of the abort, on the child's stderr
    });
    // bigArray is the one Node 20 cannot contain in a thread (see memory.test.ts).
    for (const fn of ['growMap', 'pushObjects', 'bigArray']) {
      const ended = await withNeighbour(pool, () => rejection(pool.call('x/hog', fn, [], { timeoutMs: 120_000 })));
      expect([fn, ended.code, ended.reason]).toEqual([fn, 'ERR_SANDPOOL_WORKER_EXITED', 'oom']);
      expect(await pool.call('x/hog', 'add', [1, 1])).toBe(2);
    }
  });

  it('resident memory past both budgets ends the child with oom', { timeout: 240_000 }, async () => {
    const pool = mixedPool(await tenants(), { resourceLimits: { maxOldGenerationSizeMb: 64 }, maxExternalMb: 64 });
    const ended = await withNeighbour(pool, () => rejection(pool.call(ESCAPEE, 'touchBuffers', [2_000])));
    expect(ended).toMatchObject({ code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'oom' });
  });

  it('a spin past its timeout is SIGKILLed; cpuTimeoutMs counts the child’s CPU', async () => {
    const pool = mixedPool(await tenants(), { abortGraceMs: 50 });
    const timedOut = await withNeighbour(pool, () => rejection(pool.call(ESCAPEE, 'spin', [], { timeoutMs: 200 })));
    expect(timedOut.code).toBe('ERR_SANDPOOL_TIMEOUT');
    await eventually(() => agentProcesses().length === 0);
    const cpuPool = mixedPool(await tenants(), { cpuTimeoutMs: 200 });
    const overran = await withNeighbour(cpuPool, () => rejection(cpuPool.call(ESCAPEE, 'spin', [], { timeoutMs: 0 })));
    expect(overran).toMatchObject({ code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'cpu' });
  });

  it('counts the CPU of every thread of the child, libuv’s pool included', async () => {
    const pool = mixedPool(await tenants());
    // Fixed work, timed here first: on a loaded machine a clock-bound loop would do less.
    const start = process.cpuUsage();
    for (let i = 0; i < 5; i++) pbkdf2Sync('p', 's', 20_000, 64, 'sha512');
    const used = process.cpuUsage(start);
    const expectedMs = ((used.user + used.system) / 1000) * (HASHES / 5);
    expect(await withNeighbour(pool, () => pool.call(ESCAPEE, 'hashTimes', [HASHES]))).toBe('hashed');
    // All of it ran on the child's pool threads; its main thread only waited. CPU is read on
    // samples: the last of it shows on the next one.
    const cpuMs = () => pool.keyStats().find((entry) => entry.key === ESCAPEE)?.cpuMs ?? 0;
    await eventually(() => cpuMs() > expectedMs / 2);
  });

  // Demoted, it gets what CPU nice 19 gets: on a loaded machine too little for the second
  // window that evicts it. That window is judged in cpu-governor.test.ts, on scripted CPU.
  // Without a cgroup each of its threads is reniced; a demoted cell's weight is the next test's.
  it.runIf(root)('a child burning CPU on its pool threads with no call running is demoted whole', async () => {
    const pool = mixedPool(await tenants(), { sandbox: 'off' });
    const niceOnDemote: number[][] = [];
    const demoted = new Promise((resolve) =>
      pool.on('demote', ({ key, reason }) => {
        niceOnDemote.push(agentProcesses().flatMap(threadNices));
        if (key === ESCAPEE) resolve(reason);
      }),
    );
    const reason = await withNeighbour(pool, async () => {
      expect(await pool.call(ESCAPEE, 'hashInBackground')).toBe('hashing');
      return demoted;
    });
    expect(reason).toBe('background-cpu');
    expect(niceOnDemote).toHaveLength(1);
    expect(new Set(niceOnDemote[0])).toEqual(new Set([19]));
  });

  it.runIf(root && layers.cgroups !== null)(
    'in a cgroup, a child burning CPU with no call running is demoted by its cell’s CPU weight',
    async () => {
      const pool = mixedPool(await tenants());
      // Renicing would only order the cell's own threads among themselves: its cgroup's weight is what counts.
      const weightOnDemote = new Promise<(number | null)[]>((resolve) =>
        pool.on('demote', ({ key }) => key === ESCAPEE && resolve(agentProcesses().map(cpuWeightOf))),
      );
      const weights = await withNeighbour(pool, async () => {
        expect(await pool.call(ESCAPEE, 'hashInBackground')).toBe('hashing');
        return weightOnDemote;
      });
      // A demoted cell starved by other work on the machine may burn too little to be evicted
      // within a test's bound: eviction is judged in cpu-governor.test.ts, on scripted CPU.
      expect(weights).toEqual([lowest(layers.cgroups)]);
    },
  );

  it('heavy calls on more busy child processes than cores are demoted, and raised back once idle', async () => {
    const dir = await tenants();
    const crowd = Array.from({ length: availableParallelism() + 1 }, (_, i) => `x/burner${i}`);
    const source = await fixture('escapee.mjs');
    for (const key of crowd) await writeFile(join(dir, `x/live/${key.slice(2)}.mjs`), source);
    // The release flag sits where the keys may read: they run from their artifacts, not from live/.
    const signals = join(dir, 'signals');
    await mkdir(signals);
    // Without the cell: a grant under /tmp names the cell's own /tmp (the sandbox's CPU weight has its own test).
    const pool = mixedPool(dir, { sandbox: 'off', permissions: { fsRead: [signals] } });
    const demoted: string[] = [];
    pool.on('demote', ({ key, reason }) => demoted.push(`${key} ${reason}`));
    // Started first, so the spins overlap whatever a cold start takes; they spin until told.
    for (const key of crowd) expect(await pool.call(key, 'add', [1, 1])).toBe(2);
    const release = join(signals, 'release');
    const spins = await withNeighbour(pool, async () => {
      const running = crowd.map((key) => pool.call(key, 'spinUntil', [release]));
      await eventually(() => demoted.length > 0);
      await writeFile(release, '');
      return Promise.all(running);
    });
    expect(spins).toEqual(crowd.map(() => 'done'));
    expect(demoted.every((entry) => entry.startsWith('x/burner') && entry.endsWith(' cpu-share'))).toBe(true);
    await eventually(() => pool.keyStats().every((entry) => !entry.demoted));
  });

  it('runs under the strict permission model: no other swarm, environ, child process, worker, inspector or addon', async () => {
    const dir = await tenants();
    const pool = mixedPool(dir, { env: { TENANT: 'x' } });
    const tries = {
      read: [join(dir, 'b/live/secret.txt')],
      spawn: [],
      nestedWorker: [],
    };
    for (const [fn, args] of Object.entries(tries)) {
      expect([fn, await pool.call('x/intruder', fn, args)]).toEqual([fn, 'ERR_ACCESS_DENIED']);
    }
    expect(await pool.call('x/intruder', 'addon')).toBe('ERR_DLOPEN_DISABLED');
    expect(await pool.call(ESCAPEE, 'inspectSelf')).toBe('ERR_ACCESS_DENIED');
    expect(await pool.call('x/intruder', 'readOwn', ['./escapee.mjs'])).toBe('allowed');
    // It runs from its artifact: the tenant's raw folder is not in its view.
    expect(await pool.call('x/intruder', 'read', [join(dir, 'x/live/escapee.mjs')])).toBe('ERR_ACCESS_DENIED');
    expect(await pool.call(ESCAPEE, 'environ')).toBe('ERR_ACCESS_DENIED');
    expect(await pool.call(NEIGHBOUR, 'add', [1, 2])).toBe(3);
  });

  it("keeps spare processes when every key runs in one (with permissions 'none', as for threads)", async () => {
    const dir = await tenants();
    const pool = openPool({ root: dir, isolation: 'process', permissions: 'none', spareWorkers: 1 });
    await eventually(() => pool.stats().spares === 1 && agentProcesses().length === 1);
    const reasons: string[] = [];
    pool.on('spawn', (event) => reasons.push(event.reason));
    expect(await pool.call(ESCAPEE, 'add', [1, 2])).toBe(3);
    expect(reasons).toEqual(['spare']);
    // The spare is refilled with another child, and the key's process is the one that was spare.
    await eventually(() => pool.stats().spares === 1 && agentProcesses().length === 2);
    expect(await pool.call(NEIGHBOUR, 'add', [1, 2])).toBe(3);
    expect(reasons).toEqual(['spare', 'spare']);
  });

  it.runIf(root)('boots a spare process at nice 19 and raises it to 0 when a key takes it', async () => {
    const pool = openPool({
      root: await tenants(),
      isolation: 'process',
      permissions: 'none',
      spareWorkers: 1,
      sandbox: 'off',
    });
    await eventually(() => pool.stats().spares === 1 && agentProcesses().length === 1);
    const [spare] = agentProcesses();
    // Its threads started after the renice inherit it; the ones V8 started before get it too.
    // Until the renice, all of them are at 0: a set of one nice is not enough.
    await eventually(() => {
      const nices = new Set(threadNices(spare as number));
      return nices.size === 1 && nices.has(19);
    });
    expect(await pool.call(ESCAPEE, 'whoami')).toMatchObject({ pid: spare });
    expect(new Set(threadNices(spare as number))).toEqual(new Set([0]));
    expect(invariants(pool)).toEqual([]);
  });

  it.runIf(root && layers.cgroups !== null)(
    'in a cgroup, a spare boots at the CPU weight of nice 19, raised when a key takes it',
    async () => {
      const pool = openPool({ root: await tenants(), isolation: 'process', permissions: 'none', spareWorkers: 1 });
      const cgroups = layers.cgroups;
      await eventually(() => pool.stats().spares === 1 && agentProcesses().length === 1);
      const [spare] = agentProcesses() as [number];
      // Moved into its cell off the host's event loop: in its cgroup shortly after its spawn.
      await eventually(() => cpuWeightOf(spare) !== null);
      expect(cpuWeightOf(spare)).toBe(lowest(cgroups));
      await pool.call(ESCAPEE, 'add', [1, 1]);
      expect(cpuWeightOf(spare)).toBe(cgroups === 'v1' ? 1024 : 100);
      expect(invariants(pool)).toEqual([]);
    },
  );

  it('bad isolation input is refused with INVALID_OPTIONS and starts nothing', async () => {
    const dir = await tenants();
    expect(() => openPool({ root: dir, isolation: 'vm' as 'thread' })).toThrow(
      expect.objectContaining({ code: 'ERR_SANDPOOL_INVALID_OPTIONS' }),
    );
    const throwing = openPool({
      root: dir,
      isolation: () => {
        throw new Error('no answer');
      },
    });
    expect(await code(throwing.call(ESCAPEE, 'add', [1, 1]))).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
    const wrong = openPool({ root: dir, isolation: () => 'vm' as 'thread' });
    expect(await code(wrong.call(ESCAPEE, 'add', [1, 1]))).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
    expect(throwing.stats().spawned + wrong.stats().spawned).toBe(0);
  });

  it('close() ends every child, also a stopped one', async () => {
    // 'none': it stops its own process by a signal, which strict denies.
    const pool = mixedPool(await tenants(), { closeTimeoutMs: 200, permissions: 'none' });
    expect(await pool.call(ESCAPEE, 'add', [1, 1])).toBe(2);
    void pool.call(ESCAPEE, 'signal', ['self', 'SIGSTOP']).catch(() => {});
    await new Promise((resolve) => setTimeout(resolve, 50));
    await pool.close();
    await eventually(() => agentProcesses().length === 0);
  });
});

/** What nice 19 becomes in a cgroup: the kernel's weight for it as cpu.shares (v1) or cpu.weight (v2); nice itself without one. */
function lowest(cgroups: 'v1' | 'v2' | null): number {
  return cgroups === null ? 19 : cgroups === 'v1' ? 15 : 1;
}

/** The nice value of each thread of a process (field 19 of /proc/<pid>/task/<tid>/stat). */
function threadNices(pid: number): number[] {
  return readdirSync(`/proc/${pid}/task`).map((tid) => {
    const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'latin1');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
  });
}
