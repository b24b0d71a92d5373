/**
 * Strict containment in the worker, applied when the load arrives and before the agent is
 * imported: what the coordinator denies (LoadRequest.deny, see DENIABLE) is replaced by
 * functions that throw ERR_ACCESS_DENIED, whichever way the agent reaches it, and the host's
 * command line leaves `process`. Where Node removes a builtin by a flag
 * (`--no-experimental-sqlite`), the coordinator passes it and this is only the clear error;
 * where it does not, this is the wall. No zod here.
 */
import type * as NodeModule from 'node:module';
import type { Deniable } from '../protocol/messages.js';

type Exports = Record<PropertyKey, unknown>;
type Resolve = (
  specifier: string,
  context: unknown,
  next: (specifier: string, context?: unknown) => unknown,
) => unknown;
type RegisterHooks = (hooks: { resolve?: Resolve; load?: unknown }) => unknown;

// Taken when this file loads, before any agent code: the lockdown replaces them.
const getBuiltin = process.getBuiltinModule as (id: string) => unknown;
const nodeModule = getBuiltin('node:module') as typeof NodeModule & Exports;
const { isBuiltin, syncBuiltinESMExports } = nodeModule;
const registerHooks = nodeModule.registerHooks as RegisterHooks | undefined;
const os = getBuiltin('node:os') as typeof import('node:os');
const { userInfo } = os;

/** The builtin ids (what follows `node:`) each denial covers. */
const BUILTINS: Partial<Record<Deniable, readonly string[]>> = {
  'node:sqlite': ['sqlite'],
  'node:ffi': ['ffi'],
  'node:inspector': ['inspector', 'inspector/promises'],
  'node:wasi': ['wasi'],
  'node:trace_events': ['trace_events'],
};

/** Single functions a denial replaces: [denial, builtin id, export]. */
const FUNCTIONS: readonly (readonly [Deniable, string, string])[] = [
  ['process.kill', 'process', 'kill'],
  ['process.kill', 'process', '_kill'],
  // A child process's: it opens another process's inspector (SIGUSR1), the host's included.
  ['process.kill', 'process', '_debugProcess'],
  ['v8.setFlagsFromString', 'v8', 'setFlagsFromString'],
  ['v8.setHeapSnapshotNearHeapLimit', 'v8', 'setHeapSnapshotNearHeapLimit'],
  ['os.setPriority', 'os', 'setPriority'],
  ['postMessageToThread', 'worker_threads', 'postMessageToThread'],
  ['BroadcastChannel', 'worker_threads', 'BroadcastChannel'],
];

/** What an agent's `process.argv[1]` reads: a name in brackets, as Node gives an eval worker. */
const AGENT_ARGV1 = '[sandpool agent]';

/**
 * Takes the host's command line out of `process` (a thread's argv names sandpool's files, its
 * execArgv the folders it may read) and its HOME out of `os.homedir()`, then denies the agent
 * each of `deny`.
 */
export function lockDown(deny: readonly Deniable[]): void {
  process.argv = [process.execPath, AGENT_ARGV1];
  process.execArgv = process.execArgv.filter((flag) => !flag.includes('='));
  // libuv reads HOME from the process's own environment, not the worker's `env`: as Node
  // does, but from the environment the agent was given.
  os.homedir = function homedir(): string {
    return process.env.HOME ?? userInfo().homedir;
  };
  // Nothing denied (`'none'`, whose agent may read process.report anyway): no sync, which
  // costs a spare's load half a millisecond.
  if (deny.length === 0) return;
  const denied = new Set(deny);
  const builtins = new Map<string, Deniable>();
  for (const name of denied) for (const id of BUILTINS[name] ?? []) builtins.set(id, name);
  if (builtins.size > 0) denyBuiltins(builtins);
  if (denied.has('process.report')) lock(process, 'report', deniedReport());
  for (const [name, id, key] of FUNCTIONS) {
    const target = getBuiltin(id) as Exports;
    if (denied.has(name) && key in target) lock(target, key, denier(`${id}.${key}`, name));
  }
  if (denied.has('BroadcastChannel') && 'BroadcastChannel' in globalThis) {
    lock(globalThis, 'BroadcastChannel', denier('BroadcastChannel', 'BroadcastChannel'));
  }
  if (denied.has('navigator.locks')) denyLocks();
  if (denied.has('fs.fd')) denyForeignFds();
  // ESM named imports of a builtin (`import { kill } from 'node:process'`) are copies: they
  // see the replacements only once synced.
  syncBuiltinESMExports();
}

/** The error every denial throws: it names the API and how a swarm gets it back, never a path. */
export function accessDenied(api: string, name: Deniable): Error {
  const error = new Error(`${api} is denied to agents under permissions 'strict'; ${widening(name)}`);
  return Object.assign(error, { code: 'ERR_ACCESS_DENIED' });
}

function widening(name: Deniable): string {
  switch (name) {
    case 'node:sqlite':
      return "permissions: { builtins: ['sqlite'] } allows it for a swarm";
    case 'node:ffi':
      return "permissions: { builtins: ['ffi'] } allows it for a swarm";
    case 'node:wasi':
      return 'permissions: { wasi: true } allows it for a swarm';
    case 'fs.fd':
      return "a file descriptor this agent did not open is another tenant's or the host's; only permissions: 'none' lifts it";
    default:
      return "only permissions: 'none' lifts it";
  }
}

/** A plain function, not a subclass: no prototype chain leads from it back to what it replaces. */
function denier(api: string, name: Deniable): () => never {
  return function denied(): never {
    throw accessDenied(api, name);
  };
}

function lock(target: object, key: PropertyKey, value: unknown): void {
  const enumerable = Object.getOwnPropertyDescriptor(target, key)?.enumerable ?? true;
  Object.defineProperty(target, key, { value, enumerable, writable: false, configurable: false });
}

/**
 * Denied builtins, by every way an agent reaches one. The exports of each that exists in this
 * thread are replaced, so `import`, `require`, `process.getBuiltinModule` and `Module._load`
 * all hand over denials; where Node has in-thread hooks (22.15+, 24) an import or require of
 * one fails at once, and hooks the agent registers cannot resolve to one.
 */
function denyBuiltins(builtins: ReadonlyMap<string, Deniable>): void {
  const refuse = (specifier: unknown): void => {
    const id = builtinId(specifier);
    const name = id === null ? undefined : builtins.get(id);
    if (name !== undefined) throw accessDenied(`node:${id}`, name);
  };
  // All loaded before any is changed: one builtin may build on another as it loads
  // (inspector/promises on inspector's Session).
  const targets: [object, string, Deniable][] = [];
  for (const [id, name] of builtins) {
    let target: unknown;
    try {
      target = getBuiltin(`node:${id}`);
    } catch {
      continue; // unavailable in this thread (trace_events in a worker)
    }
    // Not an object: removed by its flag, or not in this Node.
    if (typeof target === 'object' && target !== null) targets.push([target, id, name]);
  }
  for (const [target, id, name] of targets) {
    for (const key of Object.getOwnPropertyNames(target)) lock(target, key, denier(`node:${id}`, name));
  }
  lock(process, 'getBuiltinModule', function getBuiltinModule(id: string): unknown {
    refuse(id);
    return getBuiltin(id);
  });
  if (registerHooks === undefined) return;
  registerHooks({
    resolve: (specifier, context, next) => {
      refuse(specifier);
      return checked(next(specifier, context), refuse);
    },
  });
  // Hooks registered later run first: one of the agent's could answer `node:sqlite` without
  // asking ours. What it answers is checked on its way out.
  lock(nodeModule, 'registerHooks', (hooks: unknown) => registerHooks(guarded(hooks, refuse) as never));
}

/** The builtin a specifier or URL names (`node:x`, or a bare `x` that is a builtin), or null. */
function builtinId(specifier: unknown): string | null {
  if (typeof specifier !== 'string') return null;
  if (specifier.startsWith('node:')) return specifier.slice(5).split(/[?#]/, 1)[0] ?? null;
  return isBuiltin(specifier) ? specifier : null;
}

function guarded(hooks: unknown, refuse: (url: unknown) => void): unknown {
  if (typeof hooks !== 'object' || hooks === null) return hooks; // Node refuses it itself
  const { resolve, load } = hooks as { resolve?: unknown; load?: unknown };
  if (typeof resolve !== 'function') return { resolve, load };
  const wrapped: Resolve = (specifier, context, next) =>
    checked((resolve as Resolve)(specifier, context, next), refuse);
  return { resolve: wrapped, load };
}

/** A resolve result, copied so a getter cannot answer one URL to this check and another to Node. */
function checked(result: unknown, refuse: (url: unknown) => void): unknown {
  if (typeof result !== 'object' || result === null) return result;
  const copy = { ...result } as { url?: unknown };
  refuse(copy.url);
  return copy;
}

/**
 * `process.report` is the whole process's report: the host's environment and command line.
 * The object stays (libraries test for it) and each of its members throws.
 */
function deniedReport(): object {
  const report = Object.create(null) as Exports;
  const original = process.report as unknown as object;
  for (const key of Object.getOwnPropertyNames(original)) {
    const deny = denier(`process.report.${key}`, 'process.report');
    const descriptor = Object.getOwnPropertyDescriptor(original, key);
    if (typeof descriptor?.value === 'function') Object.defineProperty(report, key, { value: deny });
    else Object.defineProperty(report, key, { get: deny, set: deny });
  }
  return Object.freeze(report);
}

/** fs functions whose first argument is a file descriptor. */
const FD_FIRST = [
  'close',
  'closeSync',
  'fchmod',
  'fchmodSync',
  'fchown',
  'fchownSync',
  'fdatasync',
  'fdatasyncSync',
  'fstat',
  'fstatSync',
  'fsync',
  'fsyncSync',
  'ftruncate',
  'ftruncateSync',
  'futimes',
  'futimesSync',
  'read',
  'readSync',
  'readv',
  'readvSync',
  'write',
  'writeSync',
  'writev',
  'writevSync',
] as const;
/** fs functions whose first argument may be a file descriptor instead of a path. */
const FD_OR_PATH = ['readFile', 'readFileSync', 'writeFile', 'writeFileSync', 'appendFile', 'appendFileSync'] as const;

/**
 * Threads share the process's descriptor table, and fs calls on a descriptor skip the
 * permission model: an agent could read and write the files and sockets the host and other
 * keys hold open, or close them under libuv (which aborts the process). In a strict worker
 * an fs call takes only a descriptor this worker opened through fs; 0, 1 and 2 included,
 * which are the process's own (an agent prints through `console` and `process.stdout`).
 */
function denyForeignFds(): void {
  const fs = getBuiltin('node:fs') as Exports;
  const own = new Set<number>();
  const refuse = (fd: unknown, api: string): void => {
    if (typeof fd === 'number' && !own.has(fd)) throw accessDenied(`fs.${api}(${fd})`, 'fs.fd');
  };
  const original = (name: string) => fs[name] as (...args: unknown[]) => unknown;
  const openSync = original('openSync');
  lock(fs, 'openSync', function openSync_(...args: unknown[]): unknown {
    const fd = openSync(...args);
    if (typeof fd === 'number') own.add(fd);
    return fd;
  });
  const open = original('open');
  lock(fs, 'open', function open_(...args: unknown[]): unknown {
    const done = args.at(-1);
    if (typeof done !== 'function') return open(...args); // Node throws its own error
    return open(...args.slice(0, -1), (error: unknown, fd: unknown) => {
      if (error === null && typeof fd === 'number') own.add(fd);
      (done as (error: unknown, fd: unknown) => void)(error, fd);
    });
  });
  for (const name of FD_FIRST) {
    const call = original(name);
    if (typeof call !== 'function') continue;
    const closes = name === 'close' || name === 'closeSync';
    lock(fs, name, function fdCall(...args: unknown[]): unknown {
      refuse(args[0], name);
      // Forgotten before the close: once closed, the number may be the host's next.
      if (closes) own.delete(args[0] as number);
      return call(...args);
    });
  }
  for (const name of FD_OR_PATH) {
    const call = original(name);
    lock(fs, name, function fdOrPath(...args: unknown[]): unknown {
      refuse(args[0], name);
      return call(...args);
    });
  }
  for (const name of ['createReadStream', 'createWriteStream']) {
    const make = original(name);
    lock(fs, name, function stream(path: unknown, options: unknown): unknown {
      if (typeof options === 'object' && options !== null) refuse((options as { fd?: unknown }).fd, name);
      return make(path, options);
    });
  }
}

/**
 * Web Locks are held process-wide: a lock name is a channel between threads, and a lock held
 * by one key stalls another that asks for it. Every LockManager (`navigator.locks`,
 * `worker_threads.locks`) shares the prototype.
 */
function denyLocks(): void {
  const locks = (globalThis as { navigator?: { locks?: object } }).navigator?.locks;
  if (locks === undefined) return;
  const prototype = Object.getPrototypeOf(locks) as object;
  for (const key of ['request', 'query']) lock(prototype, key, denier(`navigator.locks.${key}`, 'navigator.locks'));
}
