// Snapshot manifests. No zod here: every snapshot worker verifies its tree with this
// module before the agent is imported, and zod costs megabytes per worker.
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { constants } from 'node:fs';
import { open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { isSandpoolError, snapshotCorrupt } from '../errors.js';
import { readRegularFileSync } from './safe-read.js';

export const MANIFEST_NAME = '.sandpool-manifest.json';

export interface FileDigest {
  sha256: string;
  bytes: number;
}

export interface ManifestV1 {
  version: 1;
  swarm: string;
  name: string;
  createdAt: string;
  /** Keyed by posix path relative to the snapshot folder; the manifest itself is not listed. */
  files: Record<string, FileDigest>;
}

/**
 * A self-contained snapshot: each stem runs from one bundle listed in `stems`, which the
 * worker reads once, checks against `files`, and imports from memory.
 */
export interface ManifestV2 {
  version: 2;
  swarm: string;
  name: string;
  createdAt: string;
  /** sha256 over `files` and `stems` only: equal content, equal digest, whatever the name or date. */
  digest: string;
  files: Record<string, FileDigest>;
  /** Stem to the posix path of its bundle, which `files` lists. */
  stems: Record<string, string>;
  /** HMAC-SHA256 of the signing text under the pool's `snapshotSecret`; absent when unsigned. */
  hmac?: string;
}

/**
 * An artifact's manifest: content only. It names its swarm (an artifact is read for that swarm
 * alone) but no snapshot name or date: those are the pointer's, which any number of names share.
 */
export interface ArtifactManifest {
  version: 3;
  swarm: string;
  /** contentDigest of `files` and `stems`, and the name of the artifact's folder. */
  digest: string;
  files: Record<string, FileDigest>;
  stems: Record<string, string>;
}

/** A snapshot folder made before artifacts: content, name and date in one manifest. */
export type LegacyManifest = ManifestV1 | ManifestV2;

export type Manifest = LegacyManifest | ArtifactManifest;

/** Where bundles live inside a snapshot; a dot name, so no stem or live/ file can take it. */
export const BUNDLES_DIR = '.sandpool-bundles';

/**
 * A bundle's last line starts with this and ends with its source map's sha256; the map sits
 * beside it as `<stem>.mjs.map`. A comment no tool reads: Node's own source maps stay off.
 */
export const SOURCE_MAP_LINE = '//# sandpool-source-map sha256=';

// O_NOFOLLOW: a file swapped for a link after the directory walk must not be read through.
// O_NONBLOCK: one swapped for a FIFO must not block the read; the fstat then refuses it.
const READ_FLAGS = constants.O_RDONLY | (constants.O_NOFOLLOW ?? 0) | (constants.O_NONBLOCK ?? 0);
/** A manifest is small; a larger one was not written by create. */
export const MAX_MANIFEST_BYTES = 64 * 1024 * 1024;
const HASH_CONCURRENCY = 8;
const CHUNK = 64 * 1024;
const SHA256_HEX = /^[0-9a-f]{64}$/;

/**
 * Digests every regular file below `dir`, sorted by path. A snapshot never holds symlinks
 * (create copies the contents of in-tree links), so a link, FIFO or device found here means
 * the tree was tampered with: it is refused as CORRUPT rather than followed, and nothing
 * outside the folder is ever read.
 */
export async function hashTree(dir: string): Promise<Manifest['files']> {
  const paths: string[] = [];
  await walk(dir, '', paths);
  // Code-unit order, not locale order: the manifest must be byte-identical on every node.
  paths.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const digests = await mapLimit(paths, HASH_CONCURRENCY, (rel) => hashFile(join(dir, ...rel.split('/')), rel));
  // fromEntries defines own properties, so a file named `__proto__` stays an ordinary entry.
  return Object.fromEntries(paths.map((rel, i) => [rel, digests[i] as FileDigest]));
}

async function walk(dir: string, rel: string, out: string[]): Promise<void> {
  const entries = await readdir(dir, { withFileTypes: true });
  for (const entry of entries) {
    const path = rel === '' ? entry.name : `${rel}/${entry.name}`;
    if (path === MANIFEST_NAME) continue;
    if (entry.isDirectory()) await walk(join(dir, entry.name), path, out);
    else if (entry.isFile()) out.push(path);
    else throw snapshotCorrupt(`snapshot holds ${path}, which is not a regular file or folder`);
  }
}

async function hashFile(path: string, rel: string): Promise<FileDigest> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(path, READ_FLAGS);
  } catch (cause) {
    throw snapshotCorrupt(`snapshot file ${rel} cannot be read`, undefined, cause);
  }
  try {
    if (!(await handle.stat()).isFile()) throw snapshotCorrupt(`snapshot file ${rel} is not a regular file`);
    const hash = createHash('sha256');
    const buffer = Buffer.allocUnsafe(CHUNK);
    let bytes = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, 0, CHUNK, null);
      if (bytesRead === 0) break;
      hash.update(buffer.subarray(0, bytesRead));
      bytes += bytesRead;
    }
    return { sha256: hash.digest('hex'), bytes };
  } finally {
    await handle.close();
  }
}

async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array<R>(items.length);
  let next = 0;
  const run = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, run));
  return results;
}

/** sha256 hex of the manifest file's bytes: the snapshot's identity (SnapshotInfo.digest). */
export function manifestDigest(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

export function serializeManifest(manifest: Manifest): string {
  return `${JSON.stringify(manifest, null, 2)}\n`;
}

/** Checks the shape by hand (no zod in workers); anything unexpected is CORRUPT. */
export function parseManifest(text: string, key?: string): Manifest {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    throw snapshotCorrupt('snapshot manifest is not valid JSON', key, cause);
  }
  if (!isRecord(value) || (value.version !== 1 && value.version !== 2 && value.version !== 3)) {
    throw snapshotCorrupt('snapshot manifest has an unexpected shape', key);
  }
  if (typeof value.swarm !== 'string' || !isRecord(value.files)) {
    throw snapshotCorrupt('snapshot manifest has an unexpected shape', key);
  }
  const files = parseFiles(value.files, key);
  if (value.version === 3) {
    const { digest, stems } = parseContent(value, files, key);
    return { version: 3, swarm: value.swarm, digest, files, stems };
  }
  if (
    typeof value.name !== 'string' ||
    typeof value.createdAt !== 'string' ||
    Number.isNaN(Date.parse(value.createdAt))
  ) {
    throw snapshotCorrupt('snapshot manifest has an unexpected shape', key);
  }
  const common = { swarm: value.swarm, name: value.name, createdAt: value.createdAt, files };
  if (value.version === 1) return { version: 1, ...common };
  const manifest: ManifestV2 = { version: 2, ...common, ...parseContent(value, files, key) };
  if (value.hmac !== undefined) {
    if (typeof value.hmac !== 'string' || !SHA256_HEX.test(value.hmac)) {
      throw snapshotCorrupt('snapshot manifest signature is malformed', key);
    }
    manifest.hmac = value.hmac;
  }
  return manifest;
}

function parseFiles(raw: Record<string, unknown>, key: string | undefined): Manifest['files'] {
  const files: [string, FileDigest][] = [];
  for (const [path, entry] of Object.entries(raw)) {
    if (
      !isRecord(entry) ||
      typeof entry.sha256 !== 'string' ||
      !SHA256_HEX.test(entry.sha256) ||
      typeof entry.bytes !== 'number' ||
      !Number.isSafeInteger(entry.bytes) ||
      entry.bytes < 0
    ) {
      throw snapshotCorrupt(`snapshot manifest entry ${JSON.stringify(path)} is malformed`, key);
    }
    files.push([path, { sha256: entry.sha256, bytes: entry.bytes }]);
  }
  // fromEntries defines own properties, so a file named `__proto__` stays an ordinary entry.
  return Object.fromEntries(files);
}

/** The stems and the stated digest, which must be the content's: it is what a signature covers. */
function parseContent(
  value: Record<string, unknown>,
  files: Manifest['files'],
  key: string | undefined,
): { digest: string; stems: Record<string, string> } {
  if (!isRecord(value.stems) || typeof value.digest !== 'string' || !SHA256_HEX.test(value.digest)) {
    throw snapshotCorrupt('snapshot manifest has an unexpected shape', key);
  }
  const stems: [string, string][] = [];
  for (const [stem, path] of Object.entries(value.stems)) {
    if (typeof path !== 'string' || !Object.hasOwn(files, path)) {
      throw snapshotCorrupt(`snapshot manifest names a bundle for ${JSON.stringify(stem)} that it does not list`, key);
    }
    stems.push([stem, path]);
  }
  const parsed = Object.fromEntries(stems);
  if (contentDigest(files, parsed) !== value.digest) {
    throw snapshotCorrupt('snapshot manifest digest does not match its file list', key);
  }
  return { digest: value.digest, stems: parsed };
}

/** Code-unit order, not locale order: the same bytes on every node. */
function byCodeUnit(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The snapshot's identity: its files and stems, never its name, date or signature. */
export function contentDigest(files: Manifest['files'], stems: Record<string, string>): string {
  const fileList = Object.keys(files)
    .sort(byCodeUnit)
    .map((path) => {
      const entry = files[path] as FileDigest;
      return [path, entry.sha256, entry.bytes];
    });
  const stemList = Object.keys(stems)
    .sort(byCodeUnit)
    .map((stem) => [stem, stems[stem]]);
  return createHash('sha256')
    .update(JSON.stringify(['sandpool-snapshot', 2, fileList, stemList]))
    .digest('hex');
}

/**
 * What the HMAC covers. The digest pins every file; swarm and name stop a signed manifest
 * from being replayed under another snapshot or swarm.
 */
function signingText(manifest: ManifestV2): string {
  return JSON.stringify(['sandpool-manifest', 2, manifest.swarm, manifest.name, manifest.createdAt, manifest.digest]);
}

export function signManifest(manifest: ManifestV2, secret: string): string {
  return createHmac('sha256', secret).update(signingText(manifest)).digest('hex');
}

/** Where a snapshot lies: its swarm and name, read from its folder, never from its manifest. */
export interface SnapshotPlace {
  swarm: string;
  name: string;
}

/**
 * With a secret, only a manifest signed under it passes: rewriting files and manifest together
 * is then caught, and so is an unsigned (older or forged) snapshot. The signature covers the
 * swarm and name the manifest states, which must be where it lies: a signed snapshot copied
 * under another swarm or name is refused, its manifest edited to match or not.
 */
export function checkSignature(
  manifest: LegacyManifest,
  secret: string | undefined,
  place: SnapshotPlace,
  key?: string,
): void {
  if (secret === undefined) return;
  checkPlace(manifest, place, key);
  if (manifest.version !== 2 || manifest.hmac === undefined) {
    throw snapshotCorrupt(
      'snapshot is not signed, and snapshotSecret requires signed snapshots (verify and sign it first)',
      key,
    );
  }
  const want = Buffer.from(signManifest(manifest, secret), 'hex');
  const got = Buffer.from(manifest.hmac, 'hex');
  if (want.length !== got.length || !timingSafeEqual(want, got)) {
    throw snapshotCorrupt('snapshot manifest signature does not match (tampered, or signed under another secret)', key);
  }
}

/** A manifest states the swarm and name it was made for; a copy elsewhere is not that snapshot. */
export function checkPlace(manifest: LegacyManifest, place: SnapshotPlace, key?: string): void {
  if (manifest.swarm !== place.swarm || manifest.name !== place.name) {
    throw snapshotCorrupt(
      `snapshot manifest was made for ${manifest.swarm}@${manifest.name}, not ${place.swarm}@${place.name}`,
      key,
    );
  }
}

/** The manifest's expected identity of a snapshot: the content digest, or for v1 the manifest bytes' hash. */
export function snapshotDigest(manifest: Manifest, text: string): string {
  return manifest.version === 1 ? manifestDigest(text) : manifest.digest;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Reads and parses `<dir>/.sandpool-manifest.json`; missing or unreadable is CORRUPT.
 * Synchronous: the file is small, and neither the coordinator (resolving a key) nor a
 * worker (verifying before import) may queue in the libuv pool behind a tenant's jobs.
 */
export function readManifest(dir: string, key?: string): { manifest: Manifest; text: string } {
  let text: string;
  try {
    text = readRegularFileSync(join(dir, MANIFEST_NAME), { maxBytes: MAX_MANIFEST_BYTES }).toString('utf8');
  } catch (cause) {
    throw snapshotCorrupt('snapshot manifest is missing or unreadable', key, cause);
  }
  return { manifest: parseManifest(text, key), text };
}

/** Rehashes `dir` and rejects CORRUPT if any file changed, was added or was removed. */
export async function verifyAgainst(dir: string, manifest: Manifest, key?: string): Promise<void> {
  const actual = await hashTree(dir).catch((cause: unknown) => {
    if (isSandpoolError(cause)) throw key === undefined ? cause : snapshotCorrupt(cause.message, key, cause);
    throw snapshotCorrupt('snapshot folder cannot be read', key, cause);
  });
  const expected = manifest.files;
  const changed: string[] = [];
  const added: string[] = [];
  for (const [path, digest] of Object.entries(actual)) {
    const want = Object.hasOwn(expected, path) ? expected[path] : undefined;
    if (want === undefined) added.push(path);
    else if (want.sha256 !== digest.sha256 || want.bytes !== digest.bytes) changed.push(path);
  }
  const removed = Object.keys(expected).filter((path) => !Object.hasOwn(actual, path));
  if (changed.length + added.length + removed.length === 0) return;
  const parts = [
    ['changed', changed],
    ['added', added],
    ['removed', removed],
  ] as const;
  const summary = parts
    .filter(([, paths]) => paths.length > 0)
    .map(([label, paths]) => `${label}: ${paths.slice(0, 5).join(', ')}${paths.length > 5 ? ', …' : ''}`)
    .join('; ');
  throw snapshotCorrupt(`snapshot does not match its manifest (${summary})`, key);
}

/** What a snapshot worker runs before importing anything from its folder. */
export async function verifyTree(dir: string, key?: string): Promise<Manifest> {
  const { manifest } = readManifest(dir, key);
  await verifyAgainst(dir, manifest, key);
  return manifest;
}
