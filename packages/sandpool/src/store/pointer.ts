// Snapshot names. No zod here: the coordinator reads a pointer on its own thread when a key
// resolves, and the check must stay small.
import { createHmac, timingSafeEqual } from 'node:crypto';
import { snapshotCorrupt } from '../errors.js';
import type { ArtifactManifest, SnapshotPlace } from './manifest.js';
import { readRegularFileSync } from './safe-read.js';

/**
 * `<root>/<swarm>/snapshots/<name>`: a name for one artifact of its swarm. Small and
 * read-only; it is replaced whole (a rename), never edited, so a reader sees one pointer.
 */
export interface Pointer {
  readonly sandpool: 'snapshot-pointer';
  /** 2 since pointers carry a generation; a version 1 pointer (written before) reads as generation 0. */
  readonly version: 1 | 2;
  readonly swarm: string;
  readonly name: string;
  /**
   * Which move of the name this is, counted over its whole life on the store (creates, points,
   * signs and removes, each one more than the last): signed with the rest, and never lower than
   * the last the store gave the name (see generations.ts), so an older pointer put back is refused.
   */
  readonly generation: number;
  /** The artifact's content digest: `<root>/.sandpool-cache/artifacts/<swarm>/<digest>/`. */
  readonly digest: string;
  /** When the name was given this digest (create or point). */
  readonly createdAt: string;
  /** HMAC-SHA256 under `snapshotSecret` of its place, generation, date, digest and the artifact's file list. */
  readonly hmac?: string;
}

/** A pointer is a few hundred bytes; a larger file was not written by the store. */
const MAX_POINTER_BYTES = 4096;
const SHA256_HEX = /^[0-9a-f]{64}$/;

export function serializePointer(pointer: Pointer): string {
  return `${JSON.stringify(pointer, null, 2)}\n`;
}

/**
 * Reads a pointer file through one descriptor that follows no link and never blocks, bounded,
 * and checks its shape by hand; anything unexpected is CORRUPT. Synchronous: it runs on the
 * coordinator's thread when a call is admitted, and must not queue behind tenants' async jobs.
 */
export function readPointer(path: string, key?: string): { pointer: Pointer; text: string } {
  let text: string;
  try {
    text = readRegularFileSync(path, { maxBytes: MAX_POINTER_BYTES }).toString('utf8');
  } catch (cause) {
    throw snapshotCorrupt('snapshot pointer is unreadable', key, cause);
  }
  return { pointer: parsePointer(text, key), text };
}

/** A pointer's text as the store wrote it (a file's, or a database row's), checked by hand; CORRUPT otherwise. */
export function parsePointer(text: string, key?: string): Pointer {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    throw snapshotCorrupt('snapshot pointer is not valid JSON', key, cause);
  }
  const record = typeof value === 'object' && value !== null && !Array.isArray(value) ? value : null;
  const get = (field: string): unknown => (record === null ? undefined : (record as Record<string, unknown>)[field]);
  const hmac = get('hmac');
  const createdAt = get('createdAt');
  const version = get('version');
  const generation = get('generation');
  if (
    get('sandpool') !== 'snapshot-pointer' ||
    !(
      (version === 1 && generation === undefined) ||
      (version === 2 && Number.isSafeInteger(generation) && (generation as number) > 0)
    ) ||
    typeof get('swarm') !== 'string' ||
    typeof get('name') !== 'string' ||
    typeof get('digest') !== 'string' ||
    !SHA256_HEX.test(get('digest') as string) ||
    typeof createdAt !== 'string' ||
    Number.isNaN(Date.parse(createdAt)) ||
    (hmac !== undefined && (typeof hmac !== 'string' || !SHA256_HEX.test(hmac)))
  ) {
    throw snapshotCorrupt('snapshot pointer has an unexpected shape', key);
  }
  const pointer: Pointer = {
    sandpool: 'snapshot-pointer',
    version: version as 1 | 2,
    swarm: get('swarm') as string,
    name: get('name') as string,
    generation: version === 2 ? (generation as number) : 0,
    digest: get('digest') as string,
    createdAt,
  };
  return hmac === undefined ? pointer : { ...pointer, hmac: hmac as string };
}

/**
 * What the HMAC covers: where the pointer may lie (swarm and name), its generation, the date,
 * the digest, and the artifact's file list, so a signed pointer copied under another swarm or
 * name, to an artifact with the same digest but other files, or given another generation, is
 * refused. A version 1 pointer (no generation) keeps the text it was signed over.
 */
function signingText(pointer: Pointer, manifest: ArtifactManifest): string {
  const files = Object.keys(manifest.files).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const { swarm, name, createdAt, digest } = pointer;
  return JSON.stringify(
    pointer.version === 1
      ? ['sandpool-pointer', 1, swarm, name, createdAt, digest, files]
      : ['sandpool-pointer', 2, swarm, name, pointer.generation, createdAt, digest, files],
  );
}

export function signPointer(pointer: Pointer, manifest: ArtifactManifest, secret: string): string {
  return createHmac('sha256', secret).update(signingText(pointer, manifest)).digest('hex');
}

/** A pointer states the place it was written for: a copy under another swarm or name is not that snapshot. */
export function checkPointerPlace(pointer: Pointer, place: SnapshotPlace, key?: string): void {
  if (pointer.swarm !== place.swarm || pointer.name !== place.name) {
    throw snapshotCorrupt(
      `snapshot pointer was made for ${pointer.swarm}@${pointer.name}, not ${place.swarm}@${place.name}`,
      key,
    );
  }
}

/**
 * A pointer states the place it was written for, and must lie there; its artifact must be the
 * one it names, of the same swarm. With a secret, only a pointer signed under it passes.
 */
export function checkPointer(
  pointer: Pointer,
  manifest: ArtifactManifest,
  secret: string | undefined,
  place: SnapshotPlace,
  key?: string,
): void {
  checkPointerPlace(pointer, place, key);
  if (manifest.swarm !== place.swarm || manifest.digest !== pointer.digest) {
    throw snapshotCorrupt(`snapshot ${place.name} points to an artifact that is not its own`, key);
  }
  if (secret === undefined) return;
  if (pointer.hmac === undefined) {
    throw snapshotCorrupt(
      'snapshot is not signed, and snapshotSecret requires signed snapshots (verify and sign it first)',
      key,
    );
  }
  const want = Buffer.from(signPointer(pointer, manifest, secret), 'hex');
  const got = Buffer.from(pointer.hmac, 'hex');
  if (want.length !== got.length || !timingSafeEqual(want, got)) {
    throw snapshotCorrupt('snapshot pointer signature does not match (tampered, or signed under another secret)', key);
  }
}
