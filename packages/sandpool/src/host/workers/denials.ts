/**
 * What `'strict'` denies beyond Node's permission model (DESIGN.md, "Strict containment
 * (threads)"): the list a worker applies before its agent loads (worker/lockdown.ts), and the
 * flags that remove a denied builtin from the worker altogether where this Node has one.
 */
import { Worker } from 'node:worker_threads';
import { DENIABLE, type Deniable } from '../../protocol/messages.js';
import type { WidenableBuiltin } from '../../types.js';

/** Builtins a grant may give back (`permissions.builtins`); the rest of DENIABLE only `'none'` lifts. */
export const WIDENABLE_BUILTINS: readonly WidenableBuiltin[] = ['sqlite', 'ffi'];

/** What a grant may widen; see PermissionGrant. */
export interface Widening {
  readonly builtins?: readonly WidenableBuiltin[] | undefined;
  readonly wasi?: boolean | undefined;
}

/** Flags that remove a builtin from a worker, where a worker of this Node accepts them. */
const REMOVED_BY: Partial<Record<Deniable, string>> = {
  'node:sqlite': '--no-experimental-sqlite',
  'node:ffi': '--no-experimental-ffi',
};
const REMOVAL_FLAGS: ReadonlySet<string> = new Set(Object.values(REMOVED_BY));

/** Removal flags a worker thread of this Node refused: never passed to one again. */
const refused = new Set<string>();

/** The denials of a strict key, less what its grant gives back. */
export function denialsFor(widening: Widening): Deniable[] {
  const given = new Set<Deniable>((widening.builtins ?? []).map((name) => `node:${name}` as const));
  if (widening.wasi === true) given.add('node:wasi');
  return DENIABLE.filter((name) => !given.has(name));
}

/** The flags that remove what `deny` holds from the worker, where this Node has them. */
export function removalFlags(deny: readonly Deniable[]): string[] {
  const flags: string[] = [];
  for (const name of deny) {
    const flag = REMOVED_BY[name];
    if (flag !== undefined && process.allowedNodeEnvironmentFlags.has(flag) && !refused.has(flag)) flags.push(flag);
  }
  return flags;
}

/**
 * Starts a worker thread with `execArgv`. `allowedNodeEnvironmentFlags` lists what the command
 * line takes, and a worker refuses some of those (ERR_WORKER_INVALID_EXEC_ARGV): then each
 * removal flag is tried alone on a blank worker, those refused are dropped for good, and the
 * start is made again. Trying them at every start, or before the first, would cost a thread's
 * boot where every flag is taken, as on Node 24 and 26.
 */
export function startAccepting<T>(execArgv: readonly string[], start: (execArgv: string[]) => T): T {
  try {
    return start([...execArgv]);
  } catch (error) {
    const removal = execArgv.filter((flag) => REMOVAL_FLAGS.has(flag));
    if ((error as { code?: unknown }).code !== 'ERR_WORKER_INVALID_EXEC_ARGV' || removal.length === 0) throw error;
    for (const flag of removal) if (!blankWorkerAccepts(flag)) refused.add(flag);
    return start(execArgv.filter((flag) => !refused.has(flag)));
  }
}

function blankWorkerAccepts(flag: string): boolean {
  try {
    const worker = new Worker('', { eval: true, execArgv: [flag], env: {} });
    worker.unref();
    void worker.terminate();
    return true;
  } catch {
    return false;
  }
}
