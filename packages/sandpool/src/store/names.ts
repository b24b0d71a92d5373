// What a snapshot name means now: the artifact its pointer names, or (made before artifacts)
// the folder it is. No zod here; synchronous, small reads: it runs when a call is admitted.
import { lstatSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { isSandpoolError, snapshotCorrupt, snapshotNotFound } from '../errors.js';
import { type BuiltArtifact, locateArtifact } from './artifact.js';
import { checkGeneration, recordedGeneration } from './generations.js';
import { liveDigestFile, snapshotDir, snapshotsDir } from './layout.js';
import { checkPlace, checkSignature, type LegacyManifest, readManifest, snapshotDigest } from './manifest.js';
import { checkPointer, checkPointerPlace, type Pointer, readPointer } from './pointer.js';
import { readRegularFileSync } from './safe-read.js';

export type SnapshotRef =
  | { readonly kind: 'pointer'; readonly pointer: Pointer; readonly artifact: BuiltArtifact }
  | { readonly kind: 'folder'; readonly dir: string; readonly manifest: LegacyManifest; readonly text: string };

/** The content digest a name resolved to (SnapshotInfo.digest). */
export function digestOf(ref: SnapshotRef): string {
  return ref.kind === 'pointer' ? ref.pointer.digest : snapshotDigest(ref.manifest, ref.text);
}

/** A pointer that moved or went while it was read is read again, this many times at most. */
const ATTEMPTS = 3;

/**
 * Reads `<root>/<swarm>/snapshots/<name>`: NOT_FOUND when there is none; CORRUPT when it is
 * not what the store wrote there (another place's pointer or manifest, a bad or missing
 * signature under `secret`, content missing or not its swarm's, a pointer older than the
 * name's last move). A name moved or removed while it was read is read again, or is NOT_FOUND.
 */
export function readSnapshotName(
  root: string,
  swarm: string,
  name: string,
  secret: string | undefined,
  key?: string,
): SnapshotRef {
  const path = snapshotDir(root, swarm, name);
  for (let attempt = 1; ; attempt++) {
    const info = lstatSync(path, { throwIfNoEntry: false });
    if (info === undefined) throw snapshotNotFound(swarm, name, key);
    let seen: string | null = null;
    try {
      if (info.isDirectory()) return readFolder(path, swarm, name, secret, key);
      if (!info.isFile()) throw snapshotCorrupt(`snapshot ${name} is neither a pointer nor a snapshot folder`, key);
      // The record before the pointer: a move writes its pointer first, so a pointer read after
      // its record is never older than it unless it was put back.
      const recorded = recordedGeneration(root, swarm, name, key);
      const { pointer, text } = readPointer(path, key);
      seen = text;
      // Its place first: a pointer copied from elsewhere is named as such, whatever it points to.
      checkPointerPlace(pointer, { swarm, name }, key);
      const artifact = locateArtifact(root, swarm, pointer.digest, key);
      checkPointer(pointer, artifact.manifest, secret, { swarm, name }, key);
      checkGeneration(pointer, recorded, key);
      return { kind: 'pointer', pointer, artifact };
    } catch (error) {
      if (!isSandpoolError(error, 'ERR_SANDPOOL_SNAPSHOT_CORRUPT')) throw error;
      // A concurrent remove or point: that is NOT_FOUND, or the new pointer; not corruption.
      if (lstatSync(path, { throwIfNoEntry: false }) === undefined) throw snapshotNotFound(swarm, name, key);
      if (attempt >= ATTEMPTS || seen === null || !changed(path, seen)) throw error;
    }
  }
}

function changed(path: string, seen: string): boolean {
  try {
    return readPointer(path).text !== seen;
  } catch {
    return true;
  }
}

function readFolder(
  dir: string,
  swarm: string,
  name: string,
  secret: string | undefined,
  key: string | undefined,
): SnapshotRef {
  const { manifest, text } = readManifest(dir, key);
  if (manifest.version === 3) throw snapshotCorrupt(`snapshot ${name} is an artifact in place of a snapshot`, key);
  checkPlace(manifest, { swarm, name }, key);
  checkSignature(manifest, secret, { swarm, name }, key);
  return { kind: 'folder', dir, manifest, text };
}

/**
 * The digests the swarm's names point to now, read without checks (a damaged pointer's
 * content is kept), and the one its live keys run from: what a sweep of unused artifacts must
 * leave. A live key's artifact is touched only when a key starts from it, and a worker serves
 * on from it for as long as it is called; swept after 10 minutes, its files beside the module
 * (read by path, or imported at run time) were gone under it.
 */
export function namedDigests(root: string, swarm: string): Set<string> {
  const digests = new Set<string>();
  const live = liveDigest(root, swarm);
  if (live !== null) digests.add(live);
  let names: string[];
  try {
    names = readdirSync(snapshotsDir(root, swarm));
  } catch {
    return digests;
  }
  for (const name of names) {
    try {
      digests.add(readPointer(join(snapshotsDir(root, swarm), name)).pointer.digest);
    } catch {
      // A folder, a work file, or not a pointer: it names no artifact.
    }
  }
  return digests;
}

/** The swarm's live digest as its last live build recorded it (see liveDigestFile); null for none. */
function liveDigest(root: string, swarm: string): string | null {
  try {
    const text = readRegularFileSync(liveDigestFile(root, swarm), { maxBytes: 64 }).toString('latin1');
    return /^[0-9a-f]{64}$/.test(text) ? text : null;
  } catch {
    return null;
  }
}

/** The digest a name's pointer holds now, unchecked; null for none (or a folder made before artifacts). */
export function pointedDigest(root: string, swarm: string, name: string): string | null {
  return pointedPointer(root, swarm, name)?.digest ?? null;
}

export function pointedPointer(root: string, swarm: string, name: string): Pointer | null {
  try {
    return readPointer(snapshotDir(root, swarm, name)).pointer;
  } catch {
    return null;
  }
}
