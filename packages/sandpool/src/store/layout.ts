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
