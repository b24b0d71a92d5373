/**
 * What `'strict'` denies beyond Node's permission model (DESIGN.md, "Strict containment
 * (threads)"): the list a worker applies before its agent loads (worker/lockdown.ts), and the
 * flags that remove a denied builtin from the worker altogether where this Node has one.
 */
import { Worker } from 'node:worker_threads';
import { DENIABLE, type Deniable } from '../protocol/messages.js';

/** Builtins a grant may give back (`permissions.builtins`); the rest of DENIABLE only `'none'` lifts. */
export const WIDENABLE_BUILTINS = ['sqlite', 'ffi'] as const;
export type WidenableBuiltin = (typeof WIDENABLE_BUILTINS)[number];

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
    if (flag !== undefined && workerAccepts(flag)) flags.push(flag);
  }
  return flags;
}

const accepted = new Map<string, boolean>();

/**
 * Whether a worker thread starts with `flag`: `allowedNodeEnvironmentFlags` lists what the
 * command line takes, and a worker refuses some of those (ERR_WORKER_INVALID_EXEC_ARGV).
 * Tried once per flag, with a blank worker that ends at once.
 */
function workerAccepts(flag: string): boolean {
  let answer = accepted.get(flag);
  if (answer !== undefined) return answer;
  answer = process.allowedNodeEnvironmentFlags.has(flag);
  if (answer) {
    try {
      const worker = new Worker('', { eval: true, execArgv: [flag], env: {} });
      worker.unref();
      void worker.terminate();
    } catch {
      answer = false;
    }
  }
  accepted.set(flag, answer);
  return answer;
}
