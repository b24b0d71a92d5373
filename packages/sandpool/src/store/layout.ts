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

/** A snapshot name: a small read-only pointer file to an artifact (or, made before artifacts, a whole folder). */
export function snapshotDir(root: string, swarm: string, name: string): string {
  return join(root, swarm, 'snapshots', name);
}

/**
 * Work folders inside `snapshots/` start with a dot, which no valid snapshot name can,
 * so a half-written or half-removed snapshot is never reachable by name.
 */
export const TEMP_PREFIX = '.tmp-';
export const REMOVING_PREFIX = '.rm-';
/** `.lock-<name>`: held while a name's pointer is moved, so moves of one name never interleave. */
export const LOCK_PREFIX = '.lock-';

/**
 * Coordinator-owned caches under the root: a dot name, which no swarm name can take. Shared by
 * the coordinator and workers, so both derive the same folders without a message field.
 */
export const CACHE_DIR = '.sandpool-cache';

/** One swarm's artifacts: coordinator-owned, so nothing in the tenant's folder can reach or replace them. */
export function artifactsDir(root: string, swarm: string): string {
  return join(root, CACHE_DIR, 'artifacts', swarm);
}

/** One immutable artifact, named by its content digest: `.sandpool-manifest.json`, its files and bundles. */
export function artifactDir(root: string, swarm: string, digest: string): string {
  return join(root, CACHE_DIR, 'artifacts', swarm, digest);
}

/**
 * Where strict spare threads find their key's folder where the host has no tmpfs: a folder per
 * pool, named by its owner (see leftovers.ts), holding each spare's folder, empty until its key
 * comes, then a link to that key's folder.
 */
export function sparesDir(root: string): string {
  return join(root, CACHE_DIR, 'spares');
}

/** What each swarm's last live build made and read (`<swarm>.json`), so the next process may reuse it. */
export function liveRecordsDir(root: string): string {
  return join(root, CACHE_DIR, 'live');
}

/**
 * The digest a swarm's live keys run from now (`<swarm>.digest`, its last live build's): every
 * sweep keeps it, however long ago a key last started from it.
 */
export function liveDigestFile(root: string, swarm: string): string {
  return join(liveRecordsDir(root), `${swarm}.digest`);
}

/**
 * The highest generation the store gave each name of a swarm (see generations.ts): in the
 * store's own folder, which a tenant who can write `<swarm>/snapshots/` cannot.
 */
export function generationsDir(root: string, swarm: string): string {
  return join(root, CACHE_DIR, 'generations', swarm);
}

/** One name's record: the highest generation the store gave it. */
export function generationFile(root: string, swarm: string, name: string): string {
  return join(generationsDir(root, swarm), name);
}
