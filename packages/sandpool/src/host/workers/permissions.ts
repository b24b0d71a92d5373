import { existsSync, readdirSync, realpathSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { moduleNotFound, type SandpoolError, unusableOptions } from '../../errors.js';
import type { ResolvedKey } from '../../key.js';
import type { Deniable } from '../../protocol/messages.js';
import type { Isolation, PermissionGrant, PermissionPolicy, PermissionsOption, SandboxLayers } from '../../types.js';
import { askForKey } from '../policy/ask.js';
import { denialsFor, removalFlags, WIDENABLE_BUILTINS } from './denials.js';

/** Entries of a tenant's folders looked at for links that leave them, at most, per spawn. */
const MAX_SCAN = 100_000;

const FLAGS = process.allowedNodeEnvironmentFlags;
/** `--permission` from 22.13 and 24; `--experimental-permission` before. Detected, not read off a version. */
const ENABLE = FLAGS.has('--permission') ? '--permission' : '--experimental-permission';

/** The folders the worker runtime itself loads from: sandpool's build, and the packages it may load there. */
export const RUNTIME_DIRS: readonly string[] = (() => {
  const dist = realpathSync(fileURLToPath(new URL('../..', import.meta.url)));
  // The worker reads its own thread id there (worker/entry.ts); never grant /proc/thread-self
  // itself, which holds the host's environ.
  const dirs = [dist, '/proc/thread-self/stat'];
  try {
    // amaro explains syntax errors in the worker (worker/syntax.ts): its real folder, and the
    // link in sandpool's node_modules the worker resolves it through.
    const real = realpathSync(packageRoot(createRequire(import.meta.url).resolve('amaro')));
    dirs.push(real, join(dirname(dist), 'node_modules', 'amaro'));
  } catch {
    // Not installed: syntax errors are explained without it.
  }
  return dirs;
})();

export interface KeyFolders {
  /** Real path of the key's folder: its artifact, or a snapshot folder made before artifacts. */
  readonly folder: string;
  /** Real path of the folder above it whose contents are the tenant's to make, links included (an old snapshot's swarm). */
  readonly swarm: string;
  /**
   * Whether the module is one self-contained bundle (an artifact, or a snapshot folder made
   * after bundling): it imports nothing from package folders, so none is granted.
   */
  readonly bundled: boolean;
}

/** The policy in force for a key: the option, or what its function returns (checked). */
export function policyFor(option: PermissionsOption, key: ResolvedKey): PermissionPolicy {
  if (typeof option !== 'function') return option;
  const policy = askForKey('permissions', option, key);
  if (policy === 'strict' || policy === 'none' || isGrant(policy)) return policy;
  throw unusableOptions(`permissions(${key.text}) returned no valid policy`, { key: key.text });
}

/**
 * The worker's execArgv for a policy. Under a host that itself runs with the permission model,
 * a worker never gets a right the host lacks, whatever the policy.
 */
export function permissionArgs(policy: PermissionPolicy, folders: KeyFolders, key: ResolvedKey): string[] {
  const hostLimited = process.permission !== undefined;
  if (policy === 'none' && !hostLimited) return [];
  const grant: PermissionGrant = policy === 'none' ? hostGrant() : policy === 'strict' ? {} : policy;
  if (policy !== 'none')
    refuseLinksLeaving(folders.folder, folders.folder, key, "the key's", new Set(['node_modules']));
  const reads =
    policy === 'none'
      ? (grant.fsRead ?? [])
      : [
          folders.folder,
          ...RUNTIME_DIRS,
          ...(folders.bundled ? [] : modulePaths(folders.folder, folders.swarm, key)),
          ...(grant.fsRead ?? []),
        ];
  const writes = grant.fsWrite ?? [];
  const args = [ENABLE];
  for (const path of unique(reads)) if (hostAllows('fs.read', path)) args.push(`--allow-fs-read=${path}`);
  for (const path of unique(writes)) if (hostAllows('fs.write', path)) args.push(`--allow-fs-write=${path}`);
  if (grant.childProcess === true && hostAllows('child')) args.push('--allow-child-process');
  if (grant.worker === true && hostAllows('worker')) args.push('--allow-worker');
  if (grant.addons === true && FLAGS.has('--allow-addons') && hostAllows('addon')) args.push('--allow-addons');
  if (grant.wasi === true && FLAGS.has('--allow-wasi') && hostAllows('wasi')) args.push('--allow-wasi');
  if (grant.net === true && NET_DENIABLE && hostAllows('net')) args.push('--allow-net');
  if (grant.builtins?.includes('ffi') === true && FLAGS.has('--allow-ffi') && hostAllows('ffi'))
    args.push('--allow-ffi');
  if (policy !== 'none') args.push(...removalFlags(denialsFor(grant)));
  // One warning per worker would flood the host's stderr.
  if (FLAGS.has('--disable-warning')) args.push('--disable-warning=ExperimentalWarning');
  return args;
}

/**
 * A thread's flags as its Worker gets them. Node grants a process under the permission model
 * reads of its entry script; a worker thread has none on its command line, so on Node 24 and
 * 26 the empty path is granted, which resolves to the host's working directory, recursively
 * (measured: a host started in `/` gave every strict thread the whole file system). A worker
 * with an eval string gets no such grant; it still runs its own file, and `process._eval` is
 * all an agent sees of the flag. Process keys have their entry on their command line.
 */
export function threadArgs(execArgv: readonly string[]): string[] {
  return underPermissionModel(execArgv) ? [...execArgv, NO_ENTRY_GRANT] : [...execArgv];
}

const NO_ENTRY_GRANT = '--eval=0';

/** Whether this Node's permission model holds the network (`--allow-net`, 25+): before it, a thread's network is open. */
const NET_DENIABLE = FLAGS.has('--allow-net');

/**
 * `network: 'enforce'`: refuses (INVALID_OPTIONS) a pool where a key could run strict with the
 * network open: a thread under a Node that cannot take it away, or a process key whose cell
 * has no network namespace of its own (`cells`: the sandbox's layers; null for a pool of threads).
 */
export function refuseUnenforceableNetwork(
  options: {
    readonly network: 'enforce' | 'best-effort';
    readonly permissions: PermissionsOption;
    readonly isolation: unknown;
  },
  cells: SandboxLayers | null,
): void {
  if (options.network !== 'enforce' || NET_DENIABLE) return;
  const { permissions } = options;
  if (permissions === 'none' || (typeof permissions === 'object' && permissions.net === true)) return;
  if (options.isolation !== 'process') {
    throw unusableOptions(
      `network: 'enforce' cannot deny a thread agent the network on Node ${process.version}: its permission model has ` +
        "no --allow-net (Node 25+); run the keys with isolation: 'process', or grant net, or use network: 'best-effort'",
    );
  }
  if (cells?.network !== 'host') return;
  const why = cells.missing.find(({ layer }) => layer === 'namespaces')?.reason ?? 'no namespaces';
  throw unusableOptions(
    `network: 'enforce' cannot deny a process agent the network on Node ${process.version}: its cell has no ` +
      `network namespace here (${why}); give the host bubblewrap, or grant net, or use network: 'best-effort'`,
  );
}

/**
 * What the worker denies its agent before loading it (worker/lockdown.ts); null under
 * `'none'`. A child process has descriptors of its own: only a thread is denied the
 * process's (`fs.fd`).
 */
export function denialsOf(policy: PermissionPolicy, isolation: Isolation): Deniable[] | null {
  if (policy === 'none') return null;
  const deny = denialsFor(policy === 'strict' ? {} : policy);
  return isolation === 'thread' ? deny : deny.filter((name) => name !== 'fs.fd');
}

/** Whether flags made by permissionArgs put the worker under the permission model. */
export function underPermissionModel(execArgv: readonly string[]): boolean {
  return execArgv.includes(ENABLE);
}

/**
 * What in a policy hands a tenant a way out of the sandbox, for the pool's warning: children
 * and nested workers get no permission model, and the builtins a grant may widen ignore it.
 */
export function sandboxEnds(policy: PermissionPolicy): string | null {
  if (typeof policy !== 'object') return null;
  const ways = [
    ...(policy.childProcess === true ? ['childProcess'] : []),
    ...(policy.worker === true ? ['worker'] : []),
    ...(policy.builtins ?? []).map((name) => `builtins ${name}`),
  ];
  return ways.length === 0 ? null : `permissions grant ${ways.join(', ')}: what they run is outside the sandbox`;
}

function hostAllows(scope: string, path?: string): boolean {
  const permission = process.permission as { has(scope: string, reference?: string): boolean } | undefined;
  if (permission === undefined) return true;
  return path === undefined ? permission.has(scope) : permission.has(scope, path);
}

/** The host's own grants, read from its flags: what `'none'` passes on under a limited host. */
function hostGrant(): PermissionGrant {
  const flags = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)];
  const values = (name: string): string[] =>
    flags.filter((flag) => flag.startsWith(`${name}=`)).flatMap((flag) => flag.slice(name.length + 1).split(','));
  return {
    fsRead: values('--allow-fs-read'),
    fsWrite: values('--allow-fs-write'),
    childProcess: flags.includes('--allow-child-process'),
    worker: flags.includes('--allow-worker'),
    addons: flags.includes('--allow-addons'),
    wasi: flags.includes('--allow-wasi'),
  };
}

/**
 * Every `node_modules` on the resolution path from the folder up to `/`, and the real
 * folders their top-level links point to (pnpm's layout links into `.pnpm`, or further).
 */
function modulePaths(folder: string, swarm: string, key: ResolvedKey): string[] {
  const paths: string[] = [];
  for (let dir = folder; ; dir = dirname(dir)) {
    const modules = join(dir, 'node_modules');
    if (existsSync(modules)) {
      const real = realpathSync(modules);
      if (inside(dir, swarm)) {
        // The tenant's own: granted, links and all, only if nothing in it leads out of the
        // swarm's folder (a link `node_modules/x -> /` would grant the whole file system).
        if (!inside(real, swarm)) throw leaves(key, modules.slice(swarm.length + 1), "the swarm's");
        refuseLinksLeaving(real, swarm, key, "the swarm's", new Set());
        paths.push(real);
      } else {
        paths.push(real);
        for (const target of linkTargets(real)) if (!target.startsWith(real + sep)) paths.push(target);
      }
    }
    if (dirname(dir) === dir) return paths;
  }
}

function inside(path: string, folder: string): boolean {
  return path === folder || path.startsWith(folder + sep);
}

function leaves(key: ResolvedKey, shown: string, whose: string): SandpoolError {
  return moduleNotFound(`${key.text}: ${shown} is a link that leaves ${whose} folder`, key.text);
}

/** The real paths the top-level links of a `node_modules` folder point to (`@scope` folders looked into). */
export function linkTargets(modules: string): string[] {
  const targets: string[] = [];
  const visit = (dir: string, depth: number): void => {
    let entries: import('node:fs').Dirent[];
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const entry of entries) {
      const path = join(dir, entry.name);
      if (entry.isSymbolicLink()) {
        try {
          targets.push(realpathSync(path));
        } catch {
          // A dangling link grants nothing.
        }
      } else if (depth === 0 && entry.isDirectory() && entry.name.startsWith('@')) {
        visit(path, 1);
      }
    }
  };
  visit(modules, 0);
  return targets;
}

/**
 * The permission model follows links: a link inside the key's folder that leads out of it
 * would grant whatever it points to. Such a folder is refused at spawn, as at snapshot time.
 */
function refuseLinksLeaving(
  start: string,
  boundary: string,
  key: ResolvedKey,
  whose: string,
  skip: ReadonlySet<string>,
): void {
  let seen = 0;
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (++seen > MAX_SCAN) {
        throw moduleNotFound(`${key.text}: its folder holds over ${MAX_SCAN} entries`, key.text);
      }
      const path = join(dir, entry.name);
      // The key's own node_modules is checked with the swarm's folder as its bound (modulePaths).
      if (skip.has(entry.name) && dir === start) continue;
      if (entry.isDirectory()) walk(path);
      else if (entry.isSymbolicLink()) {
        let real: string;
        try {
          real = realpathSync(path);
        } catch {
          continue; // dangling: grants nothing
        }
        if (!inside(real, boundary)) throw leaves(key, path.slice(boundary.length + 1), whose);
      }
    }
  };
  walk(start);
}

function packageRoot(entry: string): string {
  for (let dir = dirname(entry); dirname(dir) !== dir; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json')) && dirname(dir).endsWith('node_modules')) return dir;
  }
  return dirname(entry);
}

function unique(paths: readonly string[]): string[] {
  return [...new Set(paths)];
}

function isGrant(value: unknown): value is PermissionGrant {
  if (typeof value !== 'object' || value === null) return false;
  const grant = value as Record<string, unknown>;
  const paths = (list: unknown): boolean =>
    list === undefined ||
    (Array.isArray(list) && list.every((path) => typeof path === 'string' && path.startsWith('/')));
  const flag = (bit: unknown): boolean => bit === undefined || typeof bit === 'boolean';
  return (
    Object.keys(grant).every((name) =>
      ['fsRead', 'fsWrite', 'childProcess', 'worker', 'addons', 'wasi', 'builtins', 'net'].includes(name),
    ) &&
    paths(grant.fsRead) &&
    paths(grant.fsWrite) &&
    flag(grant.childProcess) &&
    flag(grant.worker) &&
    flag(grant.addons) &&
    flag(grant.wasi) &&
    flag(grant.net) &&
    (grant.builtins === undefined ||
      (Array.isArray(grant.builtins) &&
        grant.builtins.every((name) => (WIDENABLE_BUILTINS as readonly unknown[]).includes(name))))
  );
}
