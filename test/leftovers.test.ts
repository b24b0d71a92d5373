import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { childProcesses, eventually, installCleanup, invariants, openPool } from './support/pool.js';
import { counterAgent, makeRoot, writeFiles } from './support/root.js';
import { ON_CI } from './support/sandbox.js';

installCleanup();

const TWO_HOURS_AGO = new Date(Date.now() - 2 * 60 * 60 * 1000);
/** A work folder's name: `<prefix><pid>.<machine>.<random>`. */
const OWNED = /^\.tmp-([0-9]+)\.([0-9a-f]{12})\.[0-9a-f]{16}$/;

const spawned: ChildProcess[] = [];
const outside: string[] = [];

afterEach(async () => {
  for (const child of spawned.splice(0)) child.kill('SIGKILL');
  for (const dir of outside.splice(0)) await rm(dir, { recursive: true, force: true });
});

function helpers(): number[] {
  return childProcesses().filter((pid) => readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes('helper-entry'));
}

/** A process that lives until the test ends it: another process's build, as the store sees it. */
async function otherProcess(): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1 << 30)'], { stdio: 'ignore' });
  spawned.push(child);
  await new Promise((resolve) => child.once('spawn', resolve));
  return child;
}

const owned = (prefix: string, pid: number, machine: string): string =>
  `${prefix}${pid}.${machine}.${randomBytes(8).toString('hex')}`;

/**
 * The owner token the store's own code makes in a new process (`command` runs it, e.g. under
 * unshare), with that process's host name: what a build there would name its work by.
 */
function tokenFrom(command: readonly string[] = []): { machine: string; host: string } {
  const leftovers = pathToFileURL(join(import.meta.dirname, '../packages/sandpool/dist/store/leftovers.js')).href;
  const script = `import { ownerToken } from ${JSON.stringify(leftovers)}; import { hostname } from 'node:os'; console.log(JSON.stringify({ token: ownerToken(), host: hostname() }));`;
  const argv = [...command, process.execPath, '--input-type=module', '-e', script];
  const { token, host } = JSON.parse(execFileSync(argv[0] as string, argv.slice(1), { encoding: 'utf8' })) as {
    token: string;
    host: string;
  };
  return { machine: token.split('.')[1] as string, host };
}

/** Whether this machine can play another host: a mount namespace of its own, with a boot id bound over the kernel's. */
function canPlayAnotherHost(): boolean {
  try {
    execFileSync('unshare', ['-rm', 'true'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

async function folder(path: string, old = false): Promise<void> {
  await mkdir(path, { recursive: true });
  await writeFile(join(path, 'part.mjs'), 'export {};\n');
  if (old) await utimes(path, TWO_HOURS_AGO, TWO_HOURS_AGO);
}

describe('leftovers of interrupted builds', () => {
  it("a restart removes a killed create's work folder and only what no live build can own", async () => {
    const files = await counterAgent('s');
    // Enough files that the copy is still under way when the test sees its work folder.
    for (let i = 0; i < 600; i++) files[`s/live/data/${i}.txt`] = 'x'.repeat(4096);
    const root = await makeRoot({ ...files, ...(await counterAgent('n')) });
    const snapshots = join(root, 's', 'snapshots');
    // Where a create builds the content before it names it.
    const building = join(root, '.sandpool-cache', 'artifacts', 's');

    const first = openPool({ root });
    await first.snapshots.create('n', 'jan');
    const creating = first.snapshots.create('s', 'jan').catch((error: unknown) => error);
    await eventually(() => existsSync(building) && readdirSync(building).some((name) => OWNED.test(name)), 20_000);
    const [helper] = helpers();
    process.kill(helper as number, 'SIGKILL');
    expect(await creating).toBeInstanceOf(Error);
    await first.close();
    const killed = readdirSync(building).filter((name) => OWNED.test(name));
    expect(killed).toHaveLength(1);
    const [, pid, machine] = OWNED.exec(killed[0] as string) as unknown as [string, string, string];
    // The work folder names its owner: the helper that was killed.
    expect(Number(pid)).toBe(helper);

    const builder = await otherProcess();
    const keep: string[] = [];
    const gone: string[] = [];
    const add = async (list: string[], path: string, old = false): Promise<void> => {
      await folder(path, old);
      list.push(path);
    };
    await mkdir(snapshots, { recursive: true });
    // A build running in another process on this machine, however old its folder looks.
    const other = join(snapshots, owned('.tmp-', builder.pid as number, machine));
    const removing = join(snapshots, owned('.rm-', builder.pid as number, machine));
    await add(keep, other, true);
    await add(keep, removing, true);
    // Another machine's: only age tells.
    await add(keep, join(snapshots, owned('.tmp-', 42, '0'.repeat(12))));
    await add(gone, join(snapshots, owned('.rm-', 42, '0'.repeat(12))), true);
    // An older release's, named by no owner.
    await add(keep, join(snapshots, '.tmp-cafe'));
    await add(gone, join(snapshots, '.rm-deadbeef'), true);
    // A work file (a pointer being written) whose owner died goes like a folder.
    const file = join(snapshots, owned('.tmp-', helper as number, machine));
    await writeFile(file, 'a pointer half published');
    gone.push(file);
    // Not work folders: another dot folder, a tenant's live folder, a swarm folder that is a link.
    await add(keep, join(snapshots, '.other'), true);
    await add(keep, join(root, 'n', 'live', owned('.tmp-', helper as number, machine)), true);
    const elsewhere = await mkdtemp(join(tmpdir(), 'sandpool-elsewhere-'));
    outside.push(elsewhere);
    await symlink(elsewhere, join(root, 'linked'));
    await add(keep, join(elsewhere, 'snapshots', owned('.tmp-', helper as number, machine)), true);

    const restarted = openPool({ root });
    expect(await restarted.call('n@jan/notifier_agent', 'add', [2, 3])).toBe(5);
    expect(await restarted.call('n/notifier_agent', 'add', [1, 1])).toBe(2);
    expect(invariants(restarted)).toEqual([]);
    await restarted.close();
    expect(existsSync(join(building, killed[0] as string))).toBe(false);
    for (const path of gone) expect(existsSync(path), path).toBe(false);
    for (const path of keep) expect(existsSync(path), path).toBe(true);
    expect(readdirSync(join(root, 'n', 'snapshots'))).toEqual(['jan']);

    // Once that other process has ended, its folders are leftovers too.
    builder.kill('SIGKILL');
    await new Promise((resolve) => builder.once('exit', resolve));
    await openPool({ root }).close();
    expect(existsSync(other)).toBe(false);
    expect(existsSync(removing)).toBe(false);
    for (const path of keep) if (path !== other && path !== removing) expect(existsSync(path), path).toBe(true);
  });

  it('removes a leftover whose build froze its folders before it died', async () => {
    const root = await makeRoot(await counterAgent('n'));
    // An older release's work folder (no owner in its name): only its age tells.
    const frozen = join(root, '.sandpool-cache', 'artifacts', 'n', '.tmp-cafe');
    await folder(join(frozen, 'bundles'));
    await chmod(join(frozen, 'bundles'), 0o555);
    await chmod(frozen, 0o555);
    await utimes(frozen, TWO_HOURS_AGO, TWO_HOURS_AGO);
    const pool = openPool({ root });
    const answers = await Promise.all(
      Array.from({ length: 20 }, (_, i) => pool.call('n/notifier_agent', 'add', [i, 1])),
    );
    expect(answers).toEqual(answers.map((_, i) => i + 1));
    expect(invariants(pool)).toEqual([]);
    await pool.close();
    // Only the live key's own artifact is left: no work folder.
    expect(readdirSync(join(root, '.sandpool-cache', 'artifacts', 'n')).filter((name) => name.startsWith('.'))).toEqual(
      [],
    );
  });

  it('a restart removes the pointer files and name locks a kill -9 left, and the content they named then goes', async () => {
    const root = await makeRoot(await counterAgent('n'));
    const snapshots = join(root, 'n', 'snapshots');
    // This machine as the store names it: a dead pid here is judged at once.
    const { machine } = tokenFrom();
    const dead = await otherProcess();
    dead.kill('SIGKILL');
    await new Promise((resolve) => dead.once('exit', resolve));
    const deadPid = dead.pid as number;

    const first = openPool({ root });
    const { digest } = await first.snapshots.create('n', 'jan');
    // What a kill -9 leaves mid-create, mid-point or mid-sign (the pointer written beside its
    // place, or a lock held), and mid-remove (the pointer renamed away): each still names jan's content.
    const leftovers = [
      join(snapshots, owned('.tmp-', deadPid, machine)),
      join(snapshots, owned('.rm-', deadPid, machine)),
    ];
    for (const path of leftovers) await copyFile(join(snapshots, 'jan'), path);
    // A lock held by a live process stays.
    const held = join(snapshots, '.lock-feb');
    await writeFile(held, `${process.pid}.${machine}.${randomBytes(8).toString('hex')}`);
    // A dead holder's lock is taken over by the next move of its name...
    const lock = join(snapshots, '.lock-jan');
    const deadLock = `${deadPid}.${machine}.${randomBytes(8).toString('hex')}`;
    await writeFile(lock, deadLock);
    await first.snapshots.remove('n', 'jan');
    await first.close();
    expect(existsSync(lock)).toBe(false);
    // ...and a restart removes one whose name never moves again.
    await writeFile(lock, deadLock);
    const content = join(root, '.sandpool-cache', 'artifacts', 'n', digest);
    // Past its grace: only the leftovers keep it.
    await utimes(content, TWO_HOURS_AGO, TWO_HOURS_AGO);

    // Other live content than jan's: the live key's artifact must not be what keeps jan's content.
    await writeFiles(root, { 'n/live/notifier_agent.mjs': 'export const add = (a, b) => a + b;\n' });
    const restarted = openPool({ root });
    expect(await restarted.call('n/notifier_agent', 'add', [2, 3])).toBe(5);
    expect(invariants(restarted)).toEqual([]);
    await restarted.close();
    for (const path of [...leftovers, lock]) expect(existsSync(path), path).toBe(false);
    expect(existsSync(held)).toBe(true);

    // The next sweep of unused content (a name leaving other content) takes jan's.
    const after = openPool({ root });
    await writeFiles(root, { 'n/live/notifier_agent.mjs': 'export const add = (a, b) => a + b + 0;\n' });
    const mar = await after.snapshots.create('n', 'mar');
    await after.snapshots.remove('n', 'mar');
    await after.close();
    expect(existsSync(content)).toBe(false);
    expect(existsSync(join(root, '.sandpool-cache', 'artifacts', 'n', mar.digest))).toBe(true);
  });
  it.runIf(ON_CI || canPlayAnotherHost())(
    "never sweeps a live build of another host that shares the store and the host name, and still sweeps this host's dead ones",
    async () => {
      const root = await makeRoot({ ...(await counterAgent('n')), ...(await counterAgent('s')) });
      // Another host of the same name, cloned from the same image: only its kernel's boot differs.
      const fakeBoot = join(root, 'boot_id');
      await writeFile(fakeBoot, `${randomBytes(4).toString('hex')}-1111-2222-3333-${randomBytes(6).toString('hex')}\n`);
      const here = tokenFrom();
      const there = tokenFrom([
        'unshare',
        '-rm',
        'sh',
        '-c',
        'mount --bind "$0" /proc/sys/kernel/random/boot_id && exec "$@"',
        fakeBoot,
      ]);
      expect(there.host).toBe(here.host);
      expect(there.host).toBe(hostname());
      expect(there.machine).not.toBe(here.machine);
      // A pid that is free here: on that host it is a build still running.
      const dead = await otherProcess();
      dead.kill('SIGKILL');
      await new Promise((resolve) => dead.once('exit', resolve));
      const pid = dead.pid as number;

      const snapshots = join(root, 's', 'snapshots');
      const artifacts = join(root, '.sandpool-cache', 'artifacts', 's');
      const theirs = [
        join(snapshots, owned('.tmp-', pid, there.machine)),
        join(snapshots, owned('.rm-', pid, there.machine)),
        join(artifacts, owned('.tmp-', pid, there.machine)),
      ];
      const mine = [
        join(snapshots, owned('.tmp-', pid, here.machine)),
        join(artifacts, owned('.tmp-', pid, here.machine)),
      ];
      for (const path of [...theirs, ...mine]) await folder(path);
      // Their lock on a name they are moving, and one this host's dead process left.
      const theirLock = join(snapshots, '.lock-prod');
      await writeFile(theirLock, `${pid}.${there.machine}.${randomBytes(8).toString('hex')}`);
      const myLock = join(snapshots, '.lock-jan');
      await writeFile(myLock, `${pid}.${here.machine}.${randomBytes(8).toString('hex')}`);

      // The sweeps of a start and of a create run while a neighbour answers.
      const pool = openPool({ root });
      let stop = false;
      const answers: unknown[] = [];
      const neighbour = (async () => {
        for (let i = 0; !stop; i++) answers.push(await pool.call('n/notifier_agent', 'add', [i, 1]));
      })();
      try {
        await pool.snapshots.create('s', 'jan');
        expect(await pool.call('s@jan/notifier_agent', 'add', [2, 3])).toBe(5);
      } finally {
        stop = true;
        await neighbour;
      }
      expect(answers.length).toBeGreaterThan(0);
      expect(answers).toEqual(answers.map((_, i) => i + 1));
      expect(invariants(pool)).toEqual([]);
      await pool.close();
      for (const path of [...theirs, theirLock]) expect(existsSync(path), path).toBe(true);
      for (const path of [...mine, myLock]) expect(existsSync(path), path).toBe(false);
    },
  );
});
