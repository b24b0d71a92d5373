/**
 * Each swarm's bounds on what its snapshots keep: how many names (`maxSnapshotsPerSwarm`) and
 * how many bytes of content (`maxSnapshotBytesPerSwarm`). Both are counted from the disk each
 * time they are checked, never from a tally kept beside it that a crash or another process
 * could leave wrong; content two names share is one folder, and counts once.
 */
import { type Dirent, lstatSync, readdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { snapshotBuild, snapshotQuota } from '../errors.js';
import { SnapshotNameSchema } from '../key.js';
import { ENTRY_BYTES, filesCost, sweepUnused, UNUSED_ARTIFACT_MS } from './artifact.js';
import { artifactDir, artifactsDir, snapshotsDir } from './layout.js';
import { type ArtifactManifest, readManifest } from './manifest.js';
import { withSwarmLock } from './name-lock.js';
import { namedDigests } from './names.js';

const DIGEST = /^[0-9a-f]{64}$/;

/** The swarm's names: every entry of `snapshots/` a name may be (pointers, and folders made before artifacts). */
function namesOf(root: string, swarm: string): number {
  let entries: string[];
  try {
    entries = readdirSync(snapshotsDir(root, swarm));
  } catch {
    return 0;
  }
  return entries.filter((name) => SnapshotNameSchema.safeParse(name).success).length;
}

/**
 * Refuses a name the swarm does not have yet when it has `max` already (ERR_SANDPOOL_QUOTA,
 * nothing changed). Alone, an early refusal; addingName asks again under the swarm's lock.
 */
export function admitName(root: string, swarm: string, name: string, max: number): void {
  if (lstatSync(join(snapshotsDir(root, swarm), name), { throwIfNoEntry: false }) !== undefined) return;
  if (namesOf(root, swarm) >= max) throw snapshotQuota(swarm, max);
}

/** Runs `add` (which makes a new name) holding the swarm's lock, once the name is admitted. */
export function addingName<T>(
  root: string,
  swarm: string,
  name: string,
  max: number,
  add: () => Promise<T>,
): Promise<T> {
  return withSwarmLock(snapshotsDir(root, swarm), async () => {
    admitName(root, swarm, name, max);
    return add();
  });
}

/**
 * What an artifact holds on disk, as maxSnapshotBytes counts a build: its files' bytes, and
 * for each file 256 bytes more plus its path (its inode and manifest entry), and the manifest.
 */
function artifactCost(manifest: ArtifactManifest, manifestBytes: number): number {
  return manifestBytes + filesCost(manifest.files);
}

/** Cost of each artifact folder by its name and inode: content never changes under its digest. */
const known = new Map<string, Map<string, number>>();

/**
 * Every byte of the swarm's content folder but `except` (the build asking): each artifact as
 * its manifest counts it, and anything else there (another process's build, a folder being
 * removed) by a walk. Content no name uses counts until it is removed: it is on the disk.
 */
function bytesOf(root: string, swarm: string, except: string): number {
  const parent = artifactsDir(root, swarm);
  let entries: Dirent[];
  try {
    entries = readdirSync(parent, { withFileTypes: true });
  } catch {
    return 0;
  }
  const before = known.get(parent) ?? new Map<string, number>();
  const now = new Map<string, number>();
  let total = 0;
  for (const entry of entries) {
    if (entry.name === except) continue;
    const path = join(parent, entry.name);
    const info = lstatSync(path, { throwIfNoEntry: false });
    if (info === undefined) continue;
    const id = `${entry.name}:${info.ino}`;
    const artifact = DIGEST.test(entry.name) && info.isDirectory();
    const cost = artifact ? (before.get(id) ?? manifestCost(path)) : walk(path, entry.name);
    if (artifact) now.set(id, cost);
    total += cost;
  }
  known.set(parent, now);
  return total;
}

function manifestCost(dir: string): number {
  try {
    const { manifest, text } = readManifest(dir);
    if (manifest.version === 3) return artifactCost(manifest, Buffer.byteLength(text));
  } catch {
    // Not an artifact as the store writes them: what it holds is counted all the same.
  }
  return walk(dir, '');
}

/** Bytes of a file, or of every file under a folder, each entry 256 bytes more plus its path. */
function walk(path: string, rel: string): number {
  const info = lstatSync(path, { throwIfNoEntry: false });
  if (info === undefined) return 0;
  let cost = ENTRY_BYTES + Buffer.byteLength(rel) + (info.isFile() ? info.size : 0);
  if (!info.isDirectory()) return cost;
  let names: string[];
  try {
    names = readdirSync(path);
  } catch {
    return cost;
  }
  for (const name of names) cost += walk(join(path, name), rel === '' ? name : `${rel}/${name}`);
  return cost;
}

/**
 * Runs `publish` (the rename of a finished build into place) only if the swarm's content, with
 * it, stays within `max` bytes; otherwise ERR_SANDPOOL_SNAPSHOT_BUILD, and nothing is added.
 * Content unnamed past its grace is removed first (it would go at the next move anyway); the
 * count and the rename hold the swarm's lock, so two builds never both take the last room.
 * Content already there under the same digest costs nothing more.
 */
export async function withinSwarmBytes(
  root: string,
  swarm: string,
  max: number,
  build: { manifest: ArtifactManifest; temp: string; manifestBytes: number },
  publish: () => Promise<void>,
): Promise<void> {
  await sweepUnused(root, swarm, () => namedDigests(root, swarm));
  await withSwarmLock(artifactsDir(root, swarm), async () => {
    const there = lstatSync(artifactDir(root, swarm, build.manifest.digest), { throwIfNoEntry: false }) !== undefined;
    const adding = there ? 0 : artifactCost(build.manifest, build.manifestBytes);
    const used = bytesOf(root, swarm, basename(build.temp));
    if (used + adding > max) {
      throw snapshotBuild(
        `swarm ${swarm}'s snapshots would hold ${used + adding} bytes, more than maxSnapshotBytesPerSwarm (${max}): ` +
          `${used} there already, ${adding} new; remove names it no longer needs (content no name uses is removed ` +
          `${UNUSED_ARTIFACT_MS / 60_000} minutes after its last name left it)`,
      );
    }
    await publish();
  });
}
