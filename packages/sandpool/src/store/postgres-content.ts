/**
 * Artifacts as rows of the fleet's database: uploaded whole in the transaction that names
 * them, marked used when named or unnamed, and collected once no name has pointed to them for
 * the grace the local store keeps (UNUSED_ARTIFACT_MS, counted on the database's clock so
 * nodes with skewed clocks agree). Every function runs inside a transaction its caller holds.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type pg from 'pg';
import { snapshotBuild, snapshotCorrupt } from '../errors.js';
import type { BuiltArtifact } from './artifact.js';
import { serializeManifest } from './manifest.js';
import { readRegularFile } from './safe-read.js';

/** Artifacts one collection removes at most: the rest go with the next, so no transaction runs long. */
const COLLECT_BATCH = 32;
/** A claim that lost a race to a concurrent upload of the same content looks again, this many times. */
const CLAIM_ATTEMPTS = 3;

/**
 * Makes the artifact's row present and marked used now, and holds its row lock until the
 * caller's transaction ends, so no collection can take it before the name that uses it is
 * written. Its files are uploaded only when this call inserted the row, each checked against
 * the manifest first (see uploadedBytes).
 */
export async function claimArtifact(client: pg.ClientBase, artifact: BuiltArtifact): Promise<void> {
  const { swarm, digest } = artifact.manifest;
  for (let attempt = 1; attempt <= CLAIM_ATTEMPTS; attempt++) {
    // There already (uploaded whole by an earlier transaction): locked and marked, nothing to send.
    if (await markUsed(client, swarm, [digest])) return;
    const added = await client.query(
      'INSERT INTO sandpool_artifacts (swarm, digest, manifest) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING',
      [swarm, digest, serializeManifest(artifact.manifest)],
    );
    // Zero rows: another transaction inserted it and has committed since (an insert waits for
    // it); the next update finds its row.
    if (added.rowCount !== 1) continue;
    for (const path of Object.keys(artifact.manifest.files)) {
      const bytes = await uploadedBytes(artifact, path);
      await client.query('INSERT INTO sandpool_artifact_files (swarm, digest, path, bytes) VALUES ($1, $2, $3, $4)', [
        swarm,
        digest,
        path,
        bytes,
      ]);
    }
    return;
  }
  throw snapshotBuild(
    `artifact ${digest.slice(0, 12)} of swarm ${swarm} kept being uploaded and collected meanwhile; try again`,
  );
}

/**
 * One file of a local artifact as the database may take it: a regular file (no link followed)
 * whose size and sha256 are the manifest's. The database's copy of a digest is uploaded once
 * and every later create of it only claims it, so bytes damaged or rewritten on one node's
 * disk (its build reuses whatever folder holds the digest) would be every node's copy, refused
 * by each download's check, for as long as a name used it. Such a copy is CORRUPT here instead,
 * and nothing of it is sent.
 */
async function uploadedBytes({ manifest, dir }: BuiltArtifact, path: string): Promise<Buffer> {
  const want = manifest.files[path];
  const refused = (cause?: unknown) =>
    snapshotCorrupt(
      `artifact ${manifest.digest.slice(0, 12)} of swarm ${manifest.swarm} does not match its manifest on this node (file ${path}); not uploaded`,
      undefined,
      cause,
    );
  let bytes: Buffer;
  try {
    bytes = await readRegularFile(join(dir, ...path.split('/')), { maxBytes: want?.bytes ?? 0 });
  } catch (cause) {
    throw refused(cause);
  }
  if (
    want === undefined ||
    bytes.length !== want.bytes ||
    createHash('sha256').update(bytes).digest('hex') !== want.sha256
  ) {
    throw refused();
  }
  return bytes;
}

/**
 * Marks content as just named or just unnamed (its grace starts again), locking the rows in
 * digest order, the order every writer locks them in. True when every digest has a row.
 */
export async function markUsed(client: pg.ClientBase, swarm: string, digests: readonly string[]): Promise<boolean> {
  const wanted = [...new Set(digests)].sort();
  const marked = await client.query(
    `WITH locked AS (SELECT digest FROM sandpool_artifacts WHERE swarm = $1 AND digest = ANY($2::text[])
       ORDER BY digest FOR NO KEY UPDATE)
     UPDATE sandpool_artifacts a SET used_at = now() FROM locked WHERE a.swarm = $1 AND a.digest = locked.digest`,
    [swarm, wanted],
  );
  return marked.rowCount === wanted.length;
}

/**
 * Removes the swarm's artifacts (rows and files) that no name points to and that were neither
 * uploaded, named nor unnamed within `graceMs`. Rows another transaction holds (a create
 * claiming the content, a name being pointed at it) are skipped, never waited for; the rest
 * are locked, then checked again on a fresh snapshot, so a name that took the content after
 * the first look keeps it. Returns the digests removed.
 */
export async function collectUnused(client: pg.ClientBase, swarm: string, graceMs: number): Promise<string[]> {
  const unused = `a.swarm = $1 AND a.used_at < now() - $2::double precision * interval '1 millisecond'
    AND NOT EXISTS (SELECT 1 FROM sandpool_pointers p WHERE p.swarm = a.swarm AND p.digest = a.digest)`;
  const candidates = await client.query(
    `SELECT a.digest FROM sandpool_artifacts a WHERE ${unused} ORDER BY a.digest LIMIT ${COLLECT_BATCH}
     FOR UPDATE SKIP LOCKED`,
    [swarm, graceMs],
  );
  if (candidates.rowCount === 0) return [];
  // Read committed: this statement sees names committed since the first look. None can be
  // written now that uses a locked row (its foreign-key check waits for this transaction).
  const removed = await client.query(
    `DELETE FROM sandpool_artifacts a WHERE ${unused} AND a.digest = ANY($3::text[]) RETURNING a.digest`,
    [swarm, graceMs, candidates.rows.map((row: { digest: string }) => row.digest)],
  );
  return removed.rows.map((row: { digest: string }) => row.digest);
}
