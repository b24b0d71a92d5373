/**
 * How a worker gets its agent's module namespace from a load request: verifying a snapshot
 * first, then importing. Kept apart from the call runtime so the ways of loading (snapshots,
 * TypeScript) change here alone. No zod here: it would cost every worker megabytes.
 */
import { pathToFileURL } from 'node:url';
import type { LoadFailureCode, LoadRequest } from '../protocol/messages.js';

/** A load failure with the code the caller will see. */
export class LoadFailure extends Error {
  constructor(
    readonly code: LoadFailureCode,
    readonly failure: unknown,
  ) {
    super('load failed');
  }
}

// Loaded on first use (most workers never verify a snapshot nor meet a syntax error), once:
// each later use takes the namespace, with no new resolution of the file.
let verifier: Promise<typeof import('./verified.js')> | null = null;
let syntax: Promise<typeof import('./syntax.js')> | null = null;
const verifierModule = () => (verifier ??= import('./verified.js'));
const syntaxModule = () => (syntax ??= import('./syntax.js'));

/**
 * Loads now what loadAgent may import for this request: a child about to drop its uid may
 * not read it then. Only what the request needs: the verifier brings node:crypto and
 * node:module, 4-5 MB of a child's RSS that a live key never uses.
 */
export async function preloadFor(request: LoadRequest): Promise<void> {
  await Promise.all([request.verifyDir === null ? null : verifierModule(), syntaxModule()]);
}

/** Loads the verifier now, in a spare that will verify its key's bundle: while it waits, not once its key has come. */
export function preloadVerifier(): void {
  verifierModule().catch(() => {
    // loadAgent awaits the same promise at the load, and fails loudly there.
  });
}

/**
 * Loads the syntax locator now, in a child that will drop its uid: at boot, so a spare has it
 * before its key comes (its load then waits for nothing it could have done while idle).
 */
export function preloadSyntax(): void {
  syntaxModule().catch(() => {
    // preloadFor awaits the same promise at the load, and fails loudly there.
  });
}

export async function loadAgent(request: LoadRequest): Promise<Record<string, unknown>> {
  if (request.verifyDir !== null) {
    let bundle: Awaited<ReturnType<typeof import('./verified.js').verifySnapshot>>;
    try {
      bundle = await (await verifierModule()).verifySnapshot(request);
    } catch (error) {
      throw new LoadFailure('ERR_SANDPOOL_SNAPSHOT_CORRUPT', error);
    }
    if (bundle !== null) {
      try {
        return await (await verifierModule()).importVerified(bundle);
      } catch (error) {
        throw new LoadFailure('ERR_SANDPOOL_MODULE_LOAD', await describeLoadError(error, request.file));
      }
    }
  }
  try {
    return (await import(pathToFileURL(request.file).href)) as Record<string, unknown>;
  } catch (error) {
    throw new LoadFailure('ERR_SANDPOOL_MODULE_LOAD', await describeLoadError(error, request.file));
  }
}

/**
 * A SyntaxError from import() names neither the file nor the line: V8 keeps them in the
 * stack's first line only for some errors. Recompiling the source (as a module) finds where.
 */
async function describeLoadError(error: unknown, file: string): Promise<unknown> {
  if (!(error instanceof SyntaxError)) return error;
  try {
    return (await (await syntaxModule()).locateSyntaxError(error, file)) ?? error;
  } catch {
    return error;
  }
}
