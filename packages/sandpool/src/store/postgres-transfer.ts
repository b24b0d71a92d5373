/**
 * An artifact's bytes between a node's root and the fleet's database: the upload of a create,
 * and the download of content a name moved to. Run in the snapshot helper process where it
 * can be: pg decodes every bytea as hex text and each file is rehashed, all on one thread, so
 * in the coordinator a 25 MB file stalled every key's calls for about 230 ms.
 */
import { createHash } from 'node:crypto';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type pg from 'pg';
import { snapshotCorrupt } from '../errors.js';
import { filesCost, freezeFolders, locateArtifact } from './artifact.js';
import { artifactDir, artifactsDir, TEMP_PREFIX } from './layout.js';
import { removeTree, workFolderName } from './leftovers.js';
import {
  type ArtifactManifest,
  MANIFEST_NAME,
  MAX_MANIFEST_BYTES,
  parseManifest,
  serializeManifest,
} from './manifest.js';
import { claimArtifact } from './postgres-content.js';
import { query, transaction } from './postgres-db.js';

/** Bytes of files one download query asks for at most (pg holds them, and their hex text, at once). */
const BATCH_BYTES = 4 * 1024 * 1024;

/**
 * Uploads an artifact built under `root` (its row, manifest and files), or marks it used if the
 * database has it, in a transaction of its own. The create that follows names it in another,
 * which claims it again first; content whose naming fails stays unnamed, and is collected.
 */
export async function uploadArtifact(db: pg.Pool, root: string, swarm: string, digest: string): Promise<void> {
  const artifact = locateArtifact(root, swarm, digest);
  await transaction(db, (client) => claimArtifact(client, artifact));
}

/**
 * Fetches an artifact the root lacks into a work folder, each file's size and sha256 checked
 * against the manifest, then renames it into the cache: a reader sees all of it or none.
 * Anything that does not match is ERR_SANDPOOL_SNAPSHOT_CORRUPT and is never cached.
 */
export async function downloadArtifact(
  db: pg.Pool,
  root: string,
  swarm: string,
  digest: string,
  maxBytes: number,
): Promise<void> {
  // Its size first: a manifest no node's reader would take is not parsed (nor sent) either.
  const found = await query(
    db,
    `SELECT CASE WHEN octet_length(manifest) <= $3 THEN manifest END AS manifest FROM sandpool_artifacts
     WHERE swarm = $1 AND digest = $2`,
    [swarm, digest, MAX_MANIFEST_BYTES],
  );
  if (found.rows[0] === undefined)
    throw snapshotCorrupt(`artifact ${digest.slice(0, 12)} of swarm ${swarm} is not in the database`);
  const text = found.rows[0].manifest as string | null;
  if (text === null) throw snapshotCorrupt(`the database's artifact ${digest.slice(0, 12)} has an oversized manifest`);
  const manifest = parseManifest(text);
  if (manifest.version !== 3 || manifest.swarm !== swarm || manifest.digest !== digest) {
    throw snapshotCorrupt(`the database's artifact ${digest.slice(0, 12)} holds another swarm's or digest's manifest`);
  }
  // Counted as a build counts it, each file's entry too: else a manifest of many empty files,
  // which no build here would make, filled this node's inodes for nothing against the bound.
  if (filesCost(manifest.files) > maxBytes) {
    throw snapshotCorrupt(`the database's artifact ${digest.slice(0, 12)} is larger than maxSnapshotBytes`);
  }
  checkPaths(Object.keys(manifest.files));
  const parent = artifactsDir(root, swarm);
  await mkdir(parent, { recursive: true });
  const temp = join(parent, workFolderName(TEMP_PREFIX));
  let published = false;
  try {
    await mkdir(temp);
    await downloadFiles(db, swarm, manifest, temp);
    await writeFile(join(temp, MANIFEST_NAME), serializeManifest(manifest), { flag: 'wx', mode: 0o444 });
    await freezeFolders(temp);
    try {
      await rename(temp, artifactDir(root, swarm, digest));
      published = true;
    } catch {
      // Fetched meanwhile by another sync: that copy serves.
    }
  } finally {
    if (!published) await removeTree(temp);
  }
}

/**
 * The files fetched a batch at a time (one query each: an artifact of many small files would
 * otherwise take a round trip per file), each batch at most BATCH_BYTES in memory unless one
 * file is larger alone. Only rows of the size the manifest gives are sent; each file's hash is
 * checked before it is written.
 */
async function downloadFiles(db: pg.Pool, swarm: string, manifest: ArtifactManifest, into: string): Promise<void> {
  for (const batch of batches(manifest)) {
    const result = await query(
      db,
      `SELECT f.path, f.bytes FROM sandpool_artifact_files f
       JOIN unnest($3::text[], $4::bigint[]) AS wanted(path, size) ON f.path = wanted.path AND length(f.bytes) = wanted.size
       WHERE f.swarm = $1 AND f.digest = $2`,
      [swarm, manifest.digest, batch, batch.map((path) => manifest.files[path]?.bytes)],
    );
    const got = new Map(result.rows.map((row: { path: string; bytes: Buffer }) => [row.path, row.bytes]));
    for (const path of batch) {
      const bytes = got.get(path);
      if (bytes === undefined || createHash('sha256').update(bytes).digest('hex') !== manifest.files[path]?.sha256) {
        throw snapshotCorrupt(`artifact ${manifest.digest.slice(0, 12)} file ${path} does not match its manifest`);
      }
      const segments = path.split('/');
      await mkdir(join(into, ...segments.slice(0, -1)), { recursive: true });
      await writeFile(join(into, ...segments), bytes, { flag: 'wx', mode: 0o444 });
    }
  }
}

/** The manifest's paths in batches of at most BATCH_BYTES together (a larger file alone). */
function batches(manifest: ArtifactManifest): string[][] {
  const all: string[][] = [];
  let batch: string[] = [];
  let bytes = 0;
  for (const [path, file] of Object.entries(manifest.files)) {
    if (batch.length > 0 && bytes + file.bytes > BATCH_BYTES) {
      all.push(batch);
      batch = [];
      bytes = 0;
    }
    batch.push(path);
    bytes += file.bytes;
  }
  if (batch.length > 0) all.push(batch);
  return all;
}

/**
 * A manifest's paths from the database: relative, plain segments of at most 255 bytes (a file
 * name's bound), never the manifest's own name, and no file also a folder on another's path.
 * What no build makes is CORRUPT here, before a byte is written: writing it could only fail
 * with the file system's own error, which is no refusal of the content, and the name stayed on
 * its old content on this node (while every other node moved), fetched again at each recheck.
 */
function checkPaths(paths: readonly string[]): void {
  const files = new Set(paths);
  for (const path of paths) {
    const segments = path.split('/');
    const unsafe =
      path === MANIFEST_NAME ||
      path.includes('\0') ||
      segments.some(
        (segment) => segment === '' || segment === '.' || segment === '..' || Buffer.byteLength(segment) > 255,
      ) ||
      segments.some((_, i) => i > 0 && files.has(segments.slice(0, i).join('/')));
    if (unsafe) {
      throw snapshotCorrupt(`the database's manifest lists an unsafe path ${JSON.stringify(path.slice(0, 200))}`);
    }
  }
}
