// Path helpers for the embedded store. No zod here: worker threads load this module.
// Callers validate swarm and snapshot names first; these helpers only join.
import { join } from 'node:path';

export function swarmDir(root: string, swarm: string): string {
  return join(root, swarm);
}

export function liveDir(root: string, swarm: string): string {
  return join(root, swarm, 'live');
}

export function snapshotsDir(root: string, swarm: string): string {
  return join(root, swarm, 'snapshots');
}

export function snapshotDir(root: string, swarm: string, name: string): string {
  return join(root, swarm, 'snapshots', name);
}

/**
 * Work folders inside `snapshots/` start with a dot, which no valid snapshot name can,
 * so a half-written or half-removed snapshot is never reachable by name.
 */
export const TEMP_PREFIX = '.tmp-';
export const REMOVING_PREFIX = '.rm-';

/**
 * Coordinator-owned caches under the root: a dot name, which no swarm name can take. Shared by
 * the coordinator and workers, so both derive the same folders without a message field.
 */
export const CACHE_DIR = '.sandpool-cache';

/** Type-stripped copies of one swarm's live TypeScript, for Nodes that cannot strip in the worker. */
export function transpileCacheDir(root: string, swarm: string): string {
  return join(root, CACHE_DIR, 'ts', swarm);
}
