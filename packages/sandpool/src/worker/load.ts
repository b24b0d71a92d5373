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

export async function loadAgent(request: LoadRequest): Promise<Record<string, unknown>> {
  if (request.verifyDir !== null) {
    try {
      // Loaded on first use: most workers never verify a snapshot.
      const { verifyTree } = await import('../store/manifest.js');
      await verifyTree(request.verifyDir, request.key);
    } catch (error) {
      throw new LoadFailure('ERR_SANDPOOL_SNAPSHOT_CORRUPT', error);
    }
  }
  try {
    return (await import(pathToFileURL(request.file).href)) as Record<string, unknown>;
  } catch (error) {
    throw new LoadFailure('ERR_SANDPOOL_MODULE_LOAD', error);
  }
}
