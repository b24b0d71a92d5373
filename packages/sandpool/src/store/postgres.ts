/**
 * The PostgreSQL store of a fleet: artifacts by (swarm, digest) and pointers (swarm, name) in
 * one database, mirrored onto each node's own root. The mirror writes what the file system
 * store would have written (the artifact under `.sandpool-cache/artifacts/`, every file
 * rehashed first; the pointer by a rename), so admission, workers and grants read local files
 * as they do without a database, and a move pushed by NOTIFY reaches the pool by the same
 * pointer check as a move on a shared disk. The database is never awaited when a call is admitted.
 */
import { createHash } from 'node:crypto';
import { lstatSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { isSandpoolError, type SandpoolError, snapshotBuild, snapshotCorrupt, snapshotExists } from '../errors.js';
import { SnapshotNameSchema, SwarmSchema } from '../key.js';
import { type BuiltArtifact, freezeFolders, locateArtifact } from './artifact.js';
import { recordedGeneration, recordGeneration } from './generations.js';
import { artifactDir, artifactsDir, REMOVING_PREFIX, snapshotDir, snapshotsDir, TEMP_PREFIX } from './layout.js';
import { removeTree, workFolderName } from './leftovers.js';
import { type ArtifactManifest, MANIFEST_NAME, parseManifest, serializeManifest } from './manifest.js';
import { checkPointerPlace, readPointer } from './pointer.js';
import type { ResolvedPostgresStore } from './postgres-options.js';

const CHANNEL = 'sandpool_pointers';
const POINTER_BYTES = 4096;
const BACKOFF_FIRST_MS = 100;
const BACKOFF_MAX_MS = 5_000;
const SCHEMA = `
CREATE TABLE IF NOT EXISTS sandpool_artifacts (
  swarm text NOT NULL, digest text NOT NULL, manifest text NOT NULL, PRIMARY KEY (swarm, digest));
CREATE TABLE IF NOT EXISTS sandpool_artifact_files (
  swarm text NOT NULL, digest text NOT NULL, path text NOT NULL, bytes bytea NOT NULL,
  PRIMARY KEY (swarm, digest, path), FOREIGN KEY (swarm, digest) REFERENCES sandpool_artifacts ON DELETE CASCADE);
CREATE TABLE IF NOT EXISTS sandpool_pointers (
  swarm text NOT NULL, name text NOT NULL, digest text NOT NULL, pointer text NOT NULL,
  PRIMARY KEY (swarm, name), FOREIGN KEY (swarm, digest) REFERENCES sandpool_artifacts);
CREATE TABLE IF NOT EXISTS sandpool_generations (
  swarm text NOT NULL, name text NOT NULL, generation bigint NOT NULL, PRIMARY KEY (swarm, name));`;

/**
 * A name as the database has it: its pointer (null once removed) and the highest generation
 * it was given (kept after a remove; null for a name the database never moved since it had
 * generations). pg gives a bigint as text.
 */
interface Row {
  readonly swarm: string;
  readonly name: string;
  readonly pointer: string | null;
  readonly generation: string | number | null;
}

/** One name's pointer and generation, in one statement. */
const NAME_ROW = `SELECT $1::text AS swarm, $2::text AS name,
  (SELECT pointer FROM sandpool_pointers WHERE swarm = $1 AND name = $2) AS pointer,
  (SELECT generation FROM sandpool_generations WHERE swarm = $1 AND name = $2) AS generation`;
/** Every name the database has a pointer or a generation of. */
const ALL_ROWS = `SELECT swarm, name, p.pointer, g.generation
  FROM sandpool_pointers p FULL JOIN sandpool_generations g USING (swarm, name)`;

export interface MirrorOptions {
  readonly root: string;
  readonly store: ResolvedPostgresStore;
  /** What one artifact may hold (maxSnapshotBytes): a larger one from the database is refused. */
  readonly maxBytes: number;
  /** Told (without the connection string) when the database is lost or back. */
  readonly onState?: (state: 'lost' | 'connected') => void;
}

/**
 * One node's link to the database: a listening connection (reconnected with backoff), a
 * small query pool, and the local copy of every pointer it has seen.
 */
export class PostgresMirror {
  readonly #options: MirrorOptions;
  readonly #pool: pg.Pool;
  #listener: pg.Client | null = null;
  #closed = false;
  #backoffMs = BACKOFF_FIRST_MS;
  #retry: NodeJS.Timeout | null = null;
  readonly #recheck: NodeJS.Timeout;
  /** `swarm/name` → the generation and pointer text written locally: what a recheck compares with. */
  readonly #applied = new Map<string, string>();
  /** One sync per name at a time, in order; a sync asked for while one runs runs after it. */
  readonly #syncing = new Map<string, Promise<void>>();
  #ready: Promise<void> | null = null;
  #schema: Promise<void> | null = null;

  constructor(options: MirrorOptions) {
    this.#options = options;
    this.#pool = new pg.Pool({ connectionString: options.store.postgres, max: 4, idleTimeoutMillis: 10_000 });
    // An idle client's lost connection: the next query reconnects.
    this.#pool.on('error', () => {});
    this.#recheck = setInterval(() => void this.syncAll().catch(() => {}), options.store.recheckMs);
    this.#recheck.unref();
    this.#listen();
  }

  /** Resolves once the schema exists and the first full sync is done (or rejects when the database cannot be reached). */
  ready(): Promise<void> {
    this.#ready ??= this.#tables()
      .then(() => this.syncAll())
      .catch((error: unknown) => {
        // Tried again by the next write, or when the listener connects.
        this.#ready = null;
        throw error;
      });
    return this.#ready;
  }

  /** The tables, made once per database (a failed attempt is tried again on the next use). */
  #tables(): Promise<void> {
    this.#schema ??= this.#query(SCHEMA).then(
      () => {},
      (error: unknown) => {
        this.#schema = null;
        throw error;
      },
    );
    return this.#schema;
  }

  /**
   * Takes to the database what create (`target` null) or point just wrote under this root, in
   * one transaction with the content's upload, then NOTIFY. A create takes the name only if it
   * is free or already this content's (EXISTS otherwise); a point only if `target` still names
   * that content. Either takes it only if its generation is above the database's (the local
   * store counted on from the database's, synced just before), so no two nodes give a name
   * one generation. When the database refuses or cannot be reached, the local name is put back
   * as the database has it (or at the next recheck) and the error is thrown: nothing changed.
   */
  async #publish(swarm: string, name: string, target: string | null): Promise<void> {
    const root = this.#options.root;
    const { pointer, text } = readPointer(snapshotDir(root, swarm, name));
    const artifact = locateArtifact(root, swarm, pointer.digest);
    try {
      await this.#tables();
      await this.#transaction(async (client) => {
        await this.#upload(client, artifact);
        const held = await lockGeneration(client, swarm, name);
        if (target === null) {
          const row = await client.query('SELECT digest FROM sandpool_pointers WHERE swarm = $1 AND name = $2', [
            swarm,
            name,
          ]);
          if (row.rows[0] !== undefined) {
            // Already this content's: nothing moves.
            if (row.rows[0].digest !== artifact.digest) throw snapshotExists(swarm, name);
            return;
          }
        } else {
          const row = await client.query(
            'SELECT digest FROM sandpool_pointers WHERE swarm = $1 AND name = $2 FOR SHARE',
            [swarm, target],
          );
          if (row.rows[0]?.digest !== artifact.digest) {
            throw snapshotCorrupt(
              `snapshot ${target} of swarm ${swarm} moved while ${name} was pointed at it; try again`,
            );
          }
        }
        if (pointer.generation <= held) {
          throw snapshotBuild(`snapshot ${name} of swarm ${swarm} was moved by another node meanwhile; try again`);
        }
        await client.query(
          `INSERT INTO sandpool_pointers (swarm, name, digest, pointer) VALUES ($1, $2, $3, $4)
           ON CONFLICT (swarm, name) DO UPDATE SET digest = EXCLUDED.digest, pointer = EXCLUDED.pointer`,
          [swarm, name, artifact.digest, text],
        );
        await client.query('UPDATE sandpool_generations SET generation = $3 WHERE swarm = $1 AND name = $2', [
          swarm,
          name,
          pointer.generation,
        ]);
        await client.query('SELECT pg_notify($1, $2)', [CHANNEL, `${swarm}/${name}`]);
      });
    } catch (error) {
      await this.#undo(swarm, name, text);
      throw error;
    }
    await this.#syncNow(swarm, name);
  }

  /** A local write the database did not take: made what the database says, or (unreachable) hidden until it says. */
  async #undo(swarm: string, name: string, text: string): Promise<void> {
    this.#applied.delete(`${swarm}/${name}`);
    try {
      await this.#syncNow(swarm, name);
    } catch {
      const path = snapshotDir(this.#options.root, swarm, name);
      let now: string | null = null;
      try {
        now = readPointer(path).text;
      } catch {
        // Gone or unreadable: nothing of ours to hide.
      }
      if (now === text) await this.#unlink(swarm, path);
    }
  }

  /**
   * Drops the name everywhere (its content stays in the database for names still using it). Its
   * generation goes one up and stays, so no node takes its last pointer back, and a name made
   * again counts on from it.
   */
  async remove(swarm: string, name: string): Promise<void> {
    await this.ready();
    await this.#transaction(async (client) => {
      const held = await lockGeneration(client, swarm, name);
      const gone = await client.query('DELETE FROM sandpool_pointers WHERE swarm = $1 AND name = $2', [swarm, name]);
      if (gone.rowCount === 1) {
        await client.query('UPDATE sandpool_generations SET generation = $3 WHERE swarm = $1 AND name = $2', [
          swarm,
          name,
          held + 1,
        ]);
      }
      await client.query('SELECT pg_notify($1, $2)', [CHANNEL, `${swarm}/${name}`]);
    });
  }

  /** Makes the local pointer of one name what the database says (fetching its artifact first). */
  sync(swarm: string, name: string): Promise<void> {
    return this.#inTurn(swarm, name, () => this.#syncNow(swarm, name));
  }

  /**
   * A create (`target` null) or point of this node: `local` writes under the root as the file
   * system store does, then `publish` takes it to the database. In the name's turn, so no sync
   * of the name lands between the local write and its publication.
   */
  async write<T>(swarm: string, name: string, target: string | null, local: () => Promise<T>): Promise<T> {
    // Outside the name's turn: the first full sync takes every name's turn in its own.
    await this.ready();
    return this.#inTurn(swarm, name, async () => {
      // The target as the database names it now; the move is taken only if it still does.
      if (target !== null && target !== name) await this.sync(swarm, target);
      await this.#syncNow(swarm, name);
      const value = await local();
      await this.#publish(swarm, name, target);
      return value;
    });
  }

  /** One sync or write per name at a time, in the order asked. */
  #inTurn<T>(swarm: string, name: string, body: () => Promise<T>): Promise<T> {
    const id = `${swarm}/${name}`;
    const before = this.#syncing.get(id) ?? Promise.resolve();
    const run = before.catch(() => {}).then(body);
    const settled = run.then(
      () => {},
      () => {},
    );
    this.#syncing.set(id, settled);
    void settled.then(() => {
      if (this.#syncing.get(id) === settled) this.#syncing.delete(id);
    });
    return run;
  }

  async #syncNow(swarm: string, name: string): Promise<void> {
    await this.#tables();
    const result = await this.#query(NAME_ROW, [swarm, name]);
    await this.#apply(swarm, name, result.rows[0] as Row);
  }

  /** Every pointer read again: what a lost notification, or a reconnection, needs. */
  async syncAll(): Promise<void> {
    await this.#tables();
    const result = await this.#query(ALL_ROWS);
    const rows = result.rows as Row[];
    const seen = new Set(rows.map((row) => `${row.swarm}/${row.name}`));
    for (const row of rows) {
      if (this.#applied.get(`${row.swarm}/${row.name}`) !== stateOf(row))
        await this.sync(row.swarm, row.name).catch(() => {});
    }
    for (const id of [...this.#applied.keys()]) {
      if (seen.has(id)) continue;
      const at = id.indexOf('/');
      await this.sync(id.slice(0, at), id.slice(at + 1)).catch(() => {});
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#recheck);
    if (this.#retry !== null) clearTimeout(this.#retry);
    const listener = this.#listener;
    this.#listener = null;
    await Promise.allSettled([...this.#syncing.values()]);
    await Promise.allSettled([listener?.end(), this.#pool.end()]);
  }

  #listen(): void {
    if (this.#closed) return;
    const client = new pg.Client({ connectionString: this.#options.store.postgres });
    this.#listener = client;
    let lost = false;
    const onLost = (): void => {
      if (lost) return;
      lost = true;
      if (this.#listener === client) this.#listener = null;
      void client.end().catch(() => {});
      if (this.#closed) return;
      this.#options.onState?.('lost');
      this.#retry = setTimeout(() => this.#listen(), this.#backoffMs);
      this.#retry.unref();
      this.#backoffMs = Math.min(this.#backoffMs * 2, BACKOFF_MAX_MS);
    };
    client.on('error', onLost);
    client.on('end', onLost);
    client.on('notification', (message) => {
      const payload = message.payload ?? '';
      const at = payload.indexOf('/');
      const swarm = payload.slice(0, at);
      const name = payload.slice(at + 1);
      if (at < 0 || !SwarmSchema.safeParse(swarm).success || !SnapshotNameSchema.safeParse(name).success) return;
      void this.sync(swarm, name).catch(() => {});
    });
    client
      .connect()
      .then(() => client.query(`LISTEN ${CHANNEL}`))
      .then(async () => {
        if (lost || this.#closed) return;
        this.#backoffMs = BACKOFF_FIRST_MS;
        // Moves made while we did not listen: read everything once.
        this.#ready = null;
        await this.ready();
        this.#options.onState?.('connected');
      })
      .catch(onLost);
  }

  async #query(text: string, values?: unknown[]): Promise<pg.QueryResult> {
    try {
      return await this.#pool.query(text, values);
    } catch (error) {
      throw unreachable('a query failed', error);
    }
  }

  async #transaction<T>(body: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.#pool.connect();
    } catch (error) {
      throw unreachable('no connection', error);
    }
    try {
      await client.query('BEGIN');
      const value = await body(client);
      await client.query('COMMIT');
      return value;
    } catch (error) {
      await client.query('ROLLBACK').catch(() => {});
      if (isSandpoolError(error)) throw error;
      throw unreachable('a transaction failed; nothing changed', error);
    } finally {
      client.release();
    }
  }

  async #upload(client: pg.PoolClient, artifact: BuiltArtifact): Promise<void> {
    const { swarm, digest } = artifact.manifest;
    const added = await client.query(
      'INSERT INTO sandpool_artifacts (swarm, digest, manifest) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING',
      [swarm, digest, serializeManifest(artifact.manifest)],
    );
    if (added.rowCount !== 1) return;
    for (const path of Object.keys(artifact.manifest.files)) {
      const bytes = await readFile(join(artifact.dir, ...path.split('/')));
      await client.query('INSERT INTO sandpool_artifact_files (swarm, digest, path, bytes) VALUES ($1, $2, $3, $4)', [
        swarm,
        digest,
        path,
        bytes,
      ]);
    }
  }

  /**
   * Writes (or removes) the local pointer; an artifact not cached yet is fetched and verified
   * first. The local record of the name's generation becomes the database's: in a fleet the
   * database decides a name's generations, and a pointer it never took (a local write it
   * refused) is not one to keep counting from.
   */
  async #apply(swarm: string, name: string, row: Row): Promise<void> {
    // Names from the database become paths under the root: only valid ones do.
    if (!SwarmSchema.safeParse(swarm).success || !SnapshotNameSchema.safeParse(name).success) {
      throw snapshotCorrupt('the database holds a pointer under an invalid swarm or snapshot name');
    }
    const id = `${swarm}/${name}`;
    const root = this.#options.root;
    const path = snapshotDir(root, swarm, name);
    const generation = generationOf(row, id);
    if (row.pointer === null) {
      // The record first, as a remove writes it: no pointer put back once the name is gone passes.
      if (generation > 0) await recordGeneration(root, swarm, name, generation);
      if (lstatSync(path, { throwIfNoEntry: false })?.isFile() === true) await this.#unlink(swarm, path);
      // A name the database never had is not watched; one it removed is, by its generation.
      if (row.generation === null) this.#applied.delete(id);
      else this.#applied.set(id, stateOf(row));
      return;
    }
    if (row.pointer.length > POINTER_BYTES) throw snapshotCorrupt(`the database's pointer for ${id} is too large`);
    const parent = snapshotsDir(this.#options.root, swarm);
    await mkdir(parent, { recursive: true });
    const temp = join(parent, workFolderName(TEMP_PREFIX));
    try {
      await writeFile(temp, row.pointer, { flag: 'wx', mode: 0o444 });
      // Checked as a reader will check it, before it can be read under its name.
      const { pointer } = readPointer(temp);
      checkPointerPlace(pointer, { swarm, name });
      if (pointer.generation !== generation) {
        throw snapshotCorrupt(`the database's pointer for ${id} is not at the name's generation`);
      }
      let refused: unknown = null;
      try {
        await this.#cache(swarm, pointer.digest);
      } catch (error) {
        // Content that does not verify: the name moves all the same (its old content must not
        // serve on), and its calls are CORRUPT as for a missing artifact until a recheck fetches it whole.
        if (!isSandpoolError(error, 'ERR_SANDPOOL_SNAPSHOT_CORRUPT')) throw error;
        refused = error;
      }
      // Pointer first, then its record, as the file system store writes them; a record going
      // down (the database refused a local write) first, so no reader sees it above the pointer.
      const down = generation < recordedOrAbove(root, swarm, name);
      if (down) await recordGeneration(root, swarm, name, generation);
      await rename(temp, path);
      if (!down) await recordGeneration(root, swarm, name, generation);
      if (refused !== null) throw refused;
      this.#applied.set(id, stateOf(row));
    } finally {
      await rm(temp, { force: true });
    }
  }

  /** A pointer file renamed out of its name first, so no reader sees it half removed. */
  async #unlink(swarm: string, path: string): Promise<void> {
    const doomed = join(snapshotsDir(this.#options.root, swarm), workFolderName(REMOVING_PREFIX));
    await rename(path, doomed).catch(() => {});
    await rm(doomed, { force: true });
  }

  /** The artifact on local disk: kept if there and whole, else fetched, every file rehashed, then renamed in. */
  async #cache(swarm: string, digest: string): Promise<void> {
    const root = this.#options.root;
    try {
      locateArtifact(root, swarm, digest);
      return;
    } catch (error) {
      if (lstatSync(artifactDir(root, swarm, digest), { throwIfNoEntry: false }) !== undefined) throw error;
    }
    const found = await this.#query('SELECT manifest FROM sandpool_artifacts WHERE swarm = $1 AND digest = $2', [
      swarm,
      digest,
    ]);
    const text = found.rows[0]?.manifest as string | undefined;
    if (text === undefined)
      throw snapshotCorrupt(`artifact ${digest.slice(0, 12)} of swarm ${swarm} is not in the database`);
    const manifest = parseManifest(text);
    if (manifest.version !== 3 || manifest.swarm !== swarm || manifest.digest !== digest) {
      throw snapshotCorrupt(
        `the database's artifact ${digest.slice(0, 12)} holds another swarm's or digest's manifest`,
      );
    }
    const total = Object.values(manifest.files).reduce((sum, file) => sum + file.bytes, 0);
    if (total > this.#options.maxBytes) {
      throw snapshotCorrupt(`the database's artifact ${digest.slice(0, 12)} is larger than maxSnapshotBytes`);
    }
    for (const path of Object.keys(manifest.files)) checkPath(path);
    const parent = artifactsDir(root, swarm);
    await mkdir(parent, { recursive: true });
    const temp = join(parent, workFolderName(TEMP_PREFIX));
    let published = false;
    try {
      await mkdir(temp);
      await this.#download(swarm, manifest, temp);
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

  /** Each file fetched alone (one at a time in memory), its size and hash checked before it is written. */
  async #download(swarm: string, manifest: ArtifactManifest, into: string): Promise<void> {
    for (const [path, expected] of Object.entries(manifest.files)) {
      const result = await this.#query(
        'SELECT bytes FROM sandpool_artifact_files WHERE swarm = $1 AND digest = $2 AND path = $3 AND length(bytes) = $4',
        [swarm, manifest.digest, path, expected.bytes],
      );
      const bytes = result.rows[0]?.bytes as Buffer | undefined;
      if (bytes === undefined || createHash('sha256').update(bytes).digest('hex') !== expected.sha256) {
        throw snapshotCorrupt(`artifact ${manifest.digest.slice(0, 12)} file ${path} does not match its manifest`);
      }
      const segments = path.split('/');
      await mkdir(join(into, ...segments.slice(0, -1)), { recursive: true });
      await writeFile(join(into, ...segments), bytes, { flag: 'wx', mode: 0o444 });
    }
  }
}

/**
 * Holds the name's generation row for the transaction (made at 0 if the name has none): every
 * writer of a name takes it first, so their moves count one after another.
 */
async function lockGeneration(client: pg.PoolClient, swarm: string, name: string): Promise<number> {
  await client.query(
    'INSERT INTO sandpool_generations (swarm, name, generation) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING',
    [swarm, name],
  );
  const held = await client.query(
    'SELECT generation FROM sandpool_generations WHERE swarm = $1 AND name = $2 FOR UPDATE',
    [swarm, name],
  );
  return generationOf({ swarm, name, pointer: null, generation: held.rows[0]?.generation ?? null }, `${swarm}/${name}`);
}

function generationOf(row: Row, id: string): number {
  const generation = row.generation === null ? 0 : Number(row.generation);
  if (!Number.isSafeInteger(generation) || generation < 0) {
    throw snapshotCorrupt(`the database's generation for ${id} is malformed`);
  }
  return generation;
}

/** What a recheck compares with what it applied last. */
function stateOf(row: Row): string {
  return `${row.generation ?? 'none'}\n${row.pointer ?? ''}`;
}

/** The local record, or (unreadable) above anything: the database's value then replaces it first. */
function recordedOrAbove(root: string, swarm: string, name: string): number {
  try {
    return recordedGeneration(root, swarm, name);
  } catch {
    return Number.POSITIVE_INFINITY;
  }
}

/** A manifest path from the database: relative, plain segments, never the manifest's own name. */
function checkPath(path: string): void {
  const segments = path.split('/');
  if (
    path === MANIFEST_NAME ||
    path.includes('\0') ||
    segments.some((segment) => segment === '' || segment === '.' || segment === '..')
  ) {
    throw snapshotCorrupt(`the database's manifest lists an unsafe path ${JSON.stringify(path.slice(0, 200))}`);
  }
}

/**
 * The database could not be used. What pg said is kept only as its SQLSTATE or errno code:
 * its messages may name the host or user of the connection string.
 */
function unreachable(what: string, error: unknown): SandpoolError {
  const code =
    typeof error === 'object' && error !== null && 'code' in error && typeof error.code === 'string'
      ? ` (${error.code.slice(0, 32)})`
      : '';
  return snapshotBuild(`the snapshot store's database cannot be used: ${what}${code}`);
}
