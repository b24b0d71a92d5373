/**
 * Whether a worker can load TypeScript itself. Feature-detected, never read off a version:
 * Node 22.18+ and 24 strip types by default; 22.6-22.17 only behind a flag; 20 never. A key's
 * TypeScript is stripped when its artifact is built (store/bundle.ts), on every Node, under the
 * same rule; these flags keep a worker's own stripping the host's.
 */

function stripFlagGiven(): boolean {
  const given = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)];
  return given.includes('--experimental-strip-types') || given.includes('--experimental-transform-types');
}

/** True when this process strips types, so a worker given typeScriptExecArgv() does too. */
export function typeScriptInWorker(): boolean {
  const typescript = (process.features as { typescript?: unknown }).typescript;
  return typescript === 'strip' || typescript === 'transform';
}

/**
 * Flags a worker needs to strip types as this process does: empty where stripping is the
 * default; `--experimental-strip-types` where this process was given it (22.6-22.17), since
 * a worker started with an explicit execArgv does not inherit it. Transform mode is never
 * passed on: one rule, erasable syntax only, on every Node.
 */
export function typeScriptExecArgv(): string[] {
  return typeScriptInWorker() && stripFlagGiven() ? ['--experimental-strip-types'] : [];
}
