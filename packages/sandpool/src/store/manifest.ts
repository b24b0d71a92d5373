// Snapshot manifests. No zod here: every snapshot worker verifies its tree with this
// module before the agent is imported, and zod costs megabytes per worker.
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { SandpoolError } from '../errors.js';

export const MANIFEST_NAME = '.sandpool-manifest.json';

export interface FileDigest {
  sha256: string;
  bytes: number;
}

export interface Manifest {
  version: 1;
  swarm: string;
  name: string;
  createdAt: string;
  /** Keyed by posix path relative to the snapshot folder; the manifest itself is not listed. */
  files: Record<string, FileDigest>;
}

// O_NOFOLLOW: a file swapped for a link after the directory walk must not be read through.
const READ_FLAGS = constants.O_RDONLY | (constants.O_NOFOLLOW ?? 0);
const HASH_CONCURRENCY = 8;
const CHUNK = 64 * 1024;
const SHA256_HEX = /^[0-9a-f]{64}$/;

function corrupt(message: string, key?: string, cause?: unknown): SandpoolError {
  const details: { key?: string; cause?: unknown } = {};
  if (key !== undefined) details.key = key;
  if (cause !== undefined) details.cause = cause;
  return new SandpoolError('ERR_SANDPOOL_SNAPSHOT_CORRUPT', message, details);
}

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
    else throw corrupt(`snapshot holds ${path}, which is not a regular file or folder`);
  }
}

async function hashFile(path: string, rel: string): Promise<FileDigest> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(path, READ_FLAGS);
  } catch (cause) {
    throw corrupt(`snapshot file ${rel} cannot be read`, undefined, cause);
  }
  try {
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
    throw corrupt('snapshot manifest is not valid JSON', key, cause);
  }
  if (
    !isRecord(value) ||
    value.version !== 1 ||
    typeof value.swarm !== 'string' ||
    typeof value.name !== 'string' ||
    typeof value.createdAt !== 'string' ||
    Number.isNaN(Date.parse(value.createdAt)) ||
    !isRecord(value.files)
  ) {
    throw corrupt('snapshot manifest has an unexpected shape', key);
  }
  const files: [string, FileDigest][] = [];
  for (const [path, entry] of Object.entries(value.files)) {
    if (
      !isRecord(entry) ||
      typeof entry.sha256 !== 'string' ||
      !SHA256_HEX.test(entry.sha256) ||
      typeof entry.bytes !== 'number' ||
      !Number.isSafeInteger(entry.bytes) ||
      entry.bytes < 0
    ) {
      throw corrupt(`snapshot manifest entry ${JSON.stringify(path)} is malformed`, key);
    }
    files.push([path, { sha256: entry.sha256, bytes: entry.bytes }]);
  }
  return {
    version: 1,
    swarm: value.swarm,
    name: value.name,
    createdAt: value.createdAt,
    files: Object.fromEntries(files),
  };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Reads and parses `<dir>/.sandpool-manifest.json`; missing or unreadable is CORRUPT. */
export async function readManifest(dir: string, key?: string): Promise<{ manifest: Manifest; text: string }> {
  let text: string;
  try {
    const handle = await open(join(dir, MANIFEST_NAME), READ_FLAGS);
    try {
      text = await handle.readFile('utf8');
    } finally {
      await handle.close();
    }
  } catch (cause) {
    throw corrupt('snapshot manifest is missing or unreadable', key, cause);
  }
  return { manifest: parseManifest(text, key), text };
}

/** Rehashes `dir` and rejects CORRUPT if any file changed, was added or was removed. */
export async function verifyAgainst(dir: string, manifest: Manifest, key?: string): Promise<void> {
  const actual = await hashTree(dir).catch((cause: unknown) => {
    if (cause instanceof SandpoolError) throw key === undefined ? cause : corrupt(cause.message, key, cause);
    throw corrupt('snapshot folder cannot be read', key, cause);
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
  throw corrupt(`snapshot does not match its manifest (${summary})`, key);
}

/** What a snapshot worker runs before importing anything from its folder. */
export async function verifyTree(dir: string, key?: string): Promise<Manifest> {
  const { manifest } = await readManifest(dir, key);
  await verifyAgainst(dir, manifest, key);
  return manifest;
}
