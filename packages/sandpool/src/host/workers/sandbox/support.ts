import { spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { RUNTIME_DIRS } from '../permissions.js';
import { usernsFilter } from './seccomp.js';
import { bwrapArgs, entriesFor, type ViewEntry } from './view.js';

/**
 * How a cell is kept from making a user namespace (where a tenant could map itself root and
 * reach kernel code written for root): bubblewrap's `--disable-userns` (it needs a user
 * namespace of the cell's own, so not for a root host, whose cells drop to the swarm's uid),
 * else a seccomp filter (seccomp.ts).
 */
export type UsernsGuard = 'disabled' | 'seccomp';

/** What this host offers a sandbox, probed once per process (see hostSupport). */
export interface HostSupport {
  /** Root may change a child's uid and mount. */
  readonly root: boolean;
  /** A bubblewrap that made every namespace here and ran Node inside, or why none did. */
  readonly bwrap:
    | { readonly path: string; readonly userns: UsernsGuard | { readonly problem: string } }
    | { readonly problem: string };
  /** What every cell sees of the host: the Node binary and its libraries, sandpool's runtime. */
  readonly runtime: readonly ViewEntry[];
}

/** A probe of bubblewrap that has not answered in this long has failed. */
const PROBE_TIMEOUT_MS = 10_000;

let probed: HostSupport | null = null;

/**
 * Probed on the first pool that may run a process key, synchronously (createPool is), and
 * kept: bubblewrap is run once with the namespaces and binds every cell gets, running
 * `node --version` inside, so "available" means "works here", not "installed".
 */
export function hostSupport(): HostSupport {
  if (probed !== null) return probed;
  const root = process.getuid?.() === 0;
  let runtime: ViewEntry[] = [];
  let bwrap: HostSupport['bwrap'];
  try {
    runtime = runtimeEntries();
    bwrap = probeBwrap(root, runtime);
  } catch (error) {
    bwrap = { problem: (error as Error).message };
  }
  probed = { root, bwrap, runtime };
  return probed;
}

/**
 * The arguments that make a cell's namespaces and its fixed parts: no network but loopback,
 * its own pids, ipc and uts, a /proc of its own, a minimal /dev, a bounded /tmp, dying with
 * the host. bubblewrap's own init is pid 1 there: it keeps the parent-death signal that Node's
 * drop to another uid clears, and when it dies every task of the cell dies with it (it also
 * reaps what a granted child process orphans). As root, every capability is dropped but the
 * two the runtime needs to drop to the swarm's uid (after which it has none); elsewhere
 * bubblewrap runs in a user namespace and the cell keeps the host's uid.
 */
export function namespaceArgs(
  root: boolean,
  tmpBytes: number,
  userns: UsernsGuard | null,
  seccompFd: number,
): string[] {
  return [
    ...(userns === 'disabled' ? ['--unshare-user', '--disable-userns'] : []),
    ...(userns === 'seccomp' ? ['--seccomp', String(seccompFd)] : []),
    '--die-with-parent',
    '--new-session',
    '--unshare-pid',
    '--unshare-net',
    '--unshare-ipc',
    '--unshare-uts',
    '--unshare-cgroup-try',
    '--hostname',
    'sandpool',
    '--proc',
    '/proc',
    '--dev',
    '/dev',
    // Every uid may write its /tmp, as on the host; nobody's files outlive the cell.
    '--perms',
    '1777',
    '--size',
    String(tmpBytes),
    '--tmpfs',
    '/tmp',
    ...(root ? ['--cap-drop', 'ALL', '--cap-add', 'CAP_SETUID', '--cap-add', 'CAP_SETGID'] : []),
  ];
}

/** The folders `namespaceArgs` makes: nothing else may be made over them. */
export const NAMESPACE_DIRS: readonly string[] = ['/', '/proc', '/dev', '/tmp'];

function probeBwrap(root: boolean, runtime: readonly ViewEntry[]): HostSupport['bwrap'] {
  const path = findExecutable('bwrap');
  if (path === null) return { problem: 'bubblewrap (bwrap) is not installed' };
  const guard = usernsGuard(path, root);
  if (guard !== null) {
    const problem = probeCell(path, root, runtime, guard);
    if (problem === null) return { path, userns: guard };
    const without = probeCell(path, root, runtime, null);
    if (without !== null) return { problem: without };
    return {
      path,
      userns: { problem: `${guard === 'seccomp' ? 'a seccomp filter' : '--disable-userns'}: ${problem}` },
    };
  }
  const problem = probeCell(path, root, runtime, null);
  if (problem !== null) return { problem };
  return {
    path,
    userns: { problem: `this bubblewrap has no --disable-userns and ${process.arch} no seccomp filter here` },
  };
}

/** The guard this host can give: bubblewrap's own flag (when not root, and its --help lists it), else seccomp. */
function usernsGuard(bwrap: string, root: boolean): UsernsGuard | null {
  if (!root) {
    const help = spawnSync(bwrap, ['--help'], { encoding: 'utf8', timeout: PROBE_TIMEOUT_MS, env: {} });
    if (`${help.stdout}${help.stderr}`.includes('--disable-userns')) return 'disabled';
  }
  return usernsFilter() === null ? null : 'seccomp';
}

/** Runs `node --version` in a cell as every cell is made; null when it answered, else bubblewrap's complaint. */
function probeCell(
  path: string,
  root: boolean,
  runtime: readonly ViewEntry[],
  guard: UsernsGuard | null,
): string | null {
  const args = [
    // The probe hands bubblewrap its filter on stdin.
    ...namespaceArgs(root, 2 ** 20, guard, 0),
    ...bwrapArgs(runtime, new Set(NAMESPACE_DIRS)),
    '--',
    process.execPath,
    '--version',
  ];
  const input = guard === 'seccomp' ? (usernsFilter() ?? undefined) : undefined;
  const probe = spawnSync(path, args, { encoding: 'utf8', timeout: PROBE_TIMEOUT_MS, env: {}, input });
  if (probe.status === 0 && probe.stdout.trim() === process.version) return null;
  const said = (probe.stderr || probe.error?.message || `exit ${probe.status}`).trim().split('\n')[0];
  return `bubblewrap cannot make a cell here: ${said}`;
}

/**
 * The Node binary and the libraries it loads (as `ldd` lists them, each with the links that
 * lead to it), the loader's cache, and sandpool's worker runtime.
 */
function runtimeEntries(): ViewEntry[] {
  const entries = entriesFor(process.execPath);
  const ldd = spawnSync('ldd', [process.execPath], { encoding: 'utf8', timeout: PROBE_TIMEOUT_MS });
  if (ldd.status !== 0) throw new Error('ldd cannot list the libraries of the Node binary');
  for (const [, library] of ldd.stdout.matchAll(/(\/\S+) \(0x[0-9a-f]+\)/g)) {
    if (library !== undefined) entries.push(...entriesFor(library));
  }
  if (existsSync('/etc/ld.so.cache')) entries.push(...entriesFor('/etc/ld.so.cache'));
  for (const dir of RUNTIME_DIRS) if (!dir.startsWith('/proc/')) entries.push(...entriesFor(dir));
  return entries;
}

export function findExecutable(name: string): string | null {
  const dirs = (process.env.PATH ?? '').split(delimiter).concat(['/usr/bin', '/bin', '/usr/sbin', '/sbin']);
  for (const dir of dirs) {
    const path = join(dir, name);
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {
      // Not here.
    }
  }
  return null;
}
