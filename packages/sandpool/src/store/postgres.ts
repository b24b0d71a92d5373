/**
 * The PostgreSQL store of a fleet: artifacts by (swarm, digest) and pointers (swarm, name) in
 * one database, mirrored onto each node's own root. The mirror writes what the file system
 * store would have written (the artifact under `.sandpool-cache/artifacts/`, every file
 * rehashed first; the pointer by a rename), so admission, workers and grants read local files
 * as they do without a database, and a move pushed by NOTIFY reaches the pool by the same
 * pointer check as a move on a shared disk. The database is never awaited when a call is admitted.
 */
import { lstatSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { isSandpoolError, snapshotBuild, snapshotCorrupt, snapshotExists } from '../errors.js';
import { SnapshotNameSchema, SwarmSchema } from '../key.js';
import { locateArtifact, sweepUnused, touchArtifact, UNUSED_ARTIFACT_MS } from './artifact.js';
import { recordedGeneration, recordGeneration } from './generations.js';
import { artifactDir, REMOVING_PREFIX, snapshotDir, snapshotsDir, TEMP_PREFIX } from './layout.js';
import { workFolderName } from './leftovers.js';
import { namedDigests, pointedDigest } from './names.js';
import { checkPointerPlace, readPointer } from './pointer.js';
import { claimArtifact, collectUnused, markUsed } from './postgres-content.js';
import { openDatabase, query, transaction } from './postgres-db.js';
import type { ResolvedPostgresStore } from './postgres-options.js';
import { downloadArtifact, uploadArtifact } from './postgres-transfer.js';
import type { StoreHelper } from './store-helper.js';

const CHANNEL = 'sandpool_pointers';
const POINTER_BYTES = 4096;
const BACKOFF_FIRST_MS = 100;
const BACKOFF_MAX_MS = 5_000;
const SCHEMA = `
CREATE TABLE IF NOT EXISTS sandpool_artifacts (
  swarm text NOT NULL, digest text NOT NULL, manifest text NOT NULL, used_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (swarm, digest));
CREATE TABLE IF NOT EXISTS sandpool_artifact_files (
  swarm text NOT NULL, digest text NOT NULL, path text NOT NULL, bytes bytea NOT NULL,
  PRIMARY KEY (swarm, digest, path), FOREIGN KEY (swarm, digest) REFERENCES sandpool_artifacts ON DELETE CASCADE);
CREATE TABLE IF NOT EXISTS sandpool_pointers (
  swarm text NOT NULL, name text NOT NULL, digest text NOT NULL, pointer text NOT NULL,
  PRIMARY KEY (swarm, name), FOREIGN KEY (swarm, digest) REFERENCES sandpool_artifacts);
CREATE TABLE IF NOT EXISTS sandpool_generations (
  swarm text NOT NULL, name text NOT NULL, generation bigint NOT NULL, PRIMARY KEY (swarm, name));
-- Tables made before content was collected gain what collection needs. Looked up first: an
-- ALTER or CREATE INDEX would lock the table against every node's writes on each start.
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_attribute
      WHERE attrelid = 'sandpool_artifacts'::regclass AND attname = 'used_at' AND NOT attisdropped) THEN
    -- Content already there starts its grace now.
    ALTER TABLE sandpool_artifacts ADD COLUMN IF NOT EXISTS used_at timestamptz NOT NULL DEFAULT now();
  END IF;
  IF to_regclass('sandpool_pointers_by_digest') IS NULL THEN
    CREATE INDEX IF NOT EXISTS sandpool_pointers_by_digest ON sandpool_pointers (swarm, digest);
  END IF;
END $$;`;

/** A name's row as a write leaves it. */
interface NameRow {
  readonly swarm: string;
  readonly name: string;
  readonly digest: string;
  readonly pointer: string;
}

/** The advisory lock key the nodes making the tables take in turn ("sandpool" in ASCII). */
const SCHEMA_LOCK = 0x73616e64706f6f6cn.toString();

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
  /** Runs uploads and downloads off the coordinator's thread, while it is available. */
  readonly helper: StoreHelper;
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
  /** Downloads in flight, by `swarm/digest`: a second name of the same content waits for the first's. */
  readonly #fetching = new Map<string, Promise<void>>();
  /** Sweeps of this node's unused copies still running: close() waits for them. */
  readonly #sweeps = new Set<Promise<void>>();
  #schema: Promise<void> | null = null;

  constructor(options: MirrorOptions) {
    this.#options = options;
    // Kept open while idle: a new connection's SCRAM handshake runs PBKDF2 in libuv's pool, and
    // the first read after a quiet spell, a move's, would wait behind whatever queues there.
    this.#pool = openDatabase(options.store.postgres, { max: 4, idleMs: 0 });
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

  /**
   * The tables, made once per database (a failed attempt is tried again on the next use). Two
   * nodes making them at once would race in PostgreSQL's catalog (CREATE TABLE IF NOT EXISTS
   * is not safe against itself: 23505 on pg_type), so each takes a lock held to its commit.
   */
  #tables(): Promise<void> {
    this.#schema ??= transaction(this.#pool, async (client) => {
      await client.query('SELECT pg_advisory_xact_lock($1)', [SCHEMA_LOCK]);
      await client.query(SCHEMA);
    }).then(
      () => {},
      (error: unknown) => {
        this.#schema = null;
        throw error;
      },
    );
    return this.#schema;
  }

  /**
   * Takes to the database what a create (`target` null) or point just wrote under this root,
   * in one transaction, then NOTIFY; a create's content is uploaded first (by the helper, in a
   * transaction of its own), and claimed again by the one that names it. A create takes the
   * name only if it is free or already this content's (EXISTS otherwise); a point only if
   * `target` still names that content (a sign is a point of the name at itself). Either takes
   * it only if its generation is above the database's (the local store counted on from the
   * database's, synced just before), so no two nodes give a name one generation. When the
   * database refuses or cannot be reached, the local name is put back as the database has it
   * (or at the next recheck) and the error is thrown: nothing changed. Content a point moved
   * the name off starts its grace; after a create or such a point, what is past it is collected.
   */
  async #publish(swarm: string, name: string, target: string | null): Promise<void> {
    const root = this.#options.root;
    const { pointer, text } = readPointer(snapshotDir(root, swarm, name));
    const artifact = locateArtifact(root, swarm, pointer.digest);
    let unnamed: string | null = null;
    let uploaded = false;
    try {
      await this.#tables();
      if (target === null) {
        await this.#transfer('upload', swarm, artifact.digest);
        uploaded = true;
      }
      unnamed = await transaction(this.#pool, async (client) => {
        // The name's generation first, as every writer of it takes it: then its content.
        const held = await lockGeneration(client, swarm, name);
        const row = { swarm, name, digest: artifact.digest, pointer: text };
        const movedMeanwhile = (): void => {
          if (pointer.generation > held) return;
          throw snapshotBuild(`snapshot ${name} of swarm ${swarm} was moved by another node meanwhile; try again`);
        };
        let before: string | null = null;
        if (target === null) {
          // Uploaded by now: marked used and locked until the name holds it.
          await claimArtifact(client, artifact);
          if (await heldByContent(client, row)) return null;
          movedMeanwhile();
        } else {
          // The name's own move first: a sign (a point at itself) whose name moved is to be tried again.
          movedMeanwhile();
          before = await moveFrom(client, row, target);
        }
        await writeName(client, row, pointer.generation);
        return before === artifact.digest ? null : before;
      });
    } catch (error) {
      await this.#undo(swarm, name, text);
      // Uploaded for a name the database then refused: unnamed, and collected as any other.
      if (uploaded) await this.#collect(swarm);
      throw error;
    }
    await this.#syncNow(swarm, name);
    // Every create collects too, not only moves off content: content whose naming failed (a
    // name taken meanwhile by another node's create, a node ended between the two
    // transactions) is named by nothing, and a swarm that only ever creates would keep it
    // in the database for good, however its quotas bound each node's disk.
    if (uploaded || unnamed !== null) await this.#collect(swarm);
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
      if (now === text) this.#unlink(swarm, path);
    }
  }

  /**
   * Drops the name everywhere. Its generation goes one up and stays, so no node takes its last
   * pointer back, and a name made again counts on from it. Its content stays for the names
   * still using it; unnamed, its grace starts, and content unnamed past its grace is collected.
   */
  async remove(swarm: string, name: string): Promise<void> {
    await this.ready();
    const unnamed = await transaction(this.#pool, async (client) => {
      const held = await lockGeneration(client, swarm, name);
      const gone = await client.query('DELETE FROM sandpool_pointers WHERE swarm = $1 AND name = $2 RETURNING digest', [
        swarm,
        name,
      ]);
      const digest = (gone.rows[0]?.digest as string | undefined) ?? null;
      if (digest !== null) {
        await client.query('UPDATE sandpool_generations SET generation = $3 WHERE swarm = $1 AND name = $2', [
          swarm,
          name,
          held + 1,
        ]);
        await markUsed(client, swarm, [digest]);
      }
      await notify(client, swarm, name);
      return digest;
    });
    if (unnamed !== null) await this.#collect(swarm);
  }

  /**
   * The swarm's content no name has used for UNUSED_ARTIFACT_MS leaves the database. Best
   * effort, as the local sweep: what fails now goes with the next name moved off content.
   */
  async #collect(swarm: string): Promise<void> {
    await transaction(this.#pool, (client) => collectUnused(client, swarm, UNUSED_ARTIFACT_MS)).catch(() => {});
  }

  /** Makes the local pointer of one name what the database says (fetching its artifact first). */
  sync(swarm: string, name: string): Promise<void> {
    return this.#inTurn(swarm, name, () => this.#syncNow(swarm, name));
  }

  /**
   * A create (`target` null) or point of this node (a sign is a point of the name at itself):
   * `local` writes under the root as the file system store does, then `publish` takes it to
   * the database. In the name's turn, so no sync of the name lands between the local write and
   * its publication.
   */
  async write<T>(swarm: string, name: string, target: string | null, local: () => Promise<T>): Promise<T> {
    // Outside the name's turn: the first full sync takes every name's turn in its own.
    await this.ready();
    return this.#inTurn(swarm, name, async () => {
      // The target as the database names it now (the move is taken only if it still does),
      // and the name: two names, read at once.
      const moved = target !== null && target !== name ? this.sync(swarm, target) : null;
      await Promise.all([moved, this.#syncNow(swarm, name)]);
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
    const result = await query(this.#pool, NAME_ROW, [swarm, name]);
    await this.#apply(swarm, name, result.rows[0] as Row);
  }

  /** Every pointer read again: what a lost notification, or a reconnection, needs. */
  async syncAll(): Promise<void> {
    await this.#tables();
    const result = await query(this.#pool, ALL_ROWS);
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
    await Promise.allSettled([listener?.end(), this.#pool.end(), ...this.#sweeps]);
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

  /** Writes (or removes) the local pointer; an artifact not cached yet is fetched and verified first. */
  /**
   * Writes (or removes) the local pointer; an artifact not cached yet is fetched and verified
   * first. The local record of the name's generation becomes the database's: in a fleet the
   * database decides a name's generations, and a pointer it never took (a local write it
   * refused) is not one to keep counting from. The pointer and its record are written, checked
   * and renamed in with synchronous calls, as admission reads them: a few operations on files
   * of a few hundred bytes, which must not queue in libuv's pool behind tenants' jobs or the
   * module loads of workers starting (a move starts many).
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
    const before = pointedDigest(root, swarm, name);
    if (row.pointer === null) {
      // The record first, as a remove writes it: no pointer put back once the name is gone passes.
      if (generation > 0) recordGeneration(root, swarm, name, generation);
      if (lstatSync(path, { throwIfNoEntry: false })?.isFile() === true) this.#unlink(swarm, path);
      // A name the database never had is not watched; one it removed is, by its generation.
      if (row.generation === null) this.#applied.delete(id);
      else this.#applied.set(id, stateOf(row));
      if (before !== null) this.#unnamedHere(swarm, before);
      return;
    }
    if (row.pointer.length > POINTER_BYTES) throw snapshotCorrupt(`the database's pointer for ${id} is too large`);
    const parent = snapshotsDir(root, swarm);
    mkdirSync(parent, { recursive: true });
    const temp = join(parent, workFolderName(TEMP_PREFIX));
    try {
      writeFileSync(temp, row.pointer, { flag: 'wx', mode: 0o444 });
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
      if (down) recordGeneration(root, swarm, name, generation);
      renameSync(temp, path);
      if (!down) recordGeneration(root, swarm, name, generation);
      if (before !== null && before !== pointer.digest) this.#unnamedHere(swarm, before);
      if (refused !== null) throw refused;
      this.#applied.set(id, stateOf(row));
    } finally {
      rmSync(temp, { force: true });
    }
  }

  /**
   * This node's copy of content its names moved off: kept for UNUSED_ARTIFACT_MS from now,
   * as the local store keeps it, and the swarm's copies unused past that removed. Best effort,
   * and outside the name's turn: a sweep waits in libuv's pool, and the name's next move must not.
   */
  #unnamedHere(swarm: string, digest: string): void {
    const root = this.#options.root;
    const sweep = touchArtifact(root, swarm, digest)
      .then(() => sweepUnused(root, swarm, () => namedDigests(root, swarm)))
      .catch(() => {
        // What stays goes with the next sweep.
      });
    this.#sweeps.add(sweep);
    void sweep.then(() => this.#sweeps.delete(sweep));
  }

  /** A pointer file renamed out of its name first, so no reader sees it half removed. */
  #unlink(swarm: string, path: string): void {
    const doomed = join(snapshotsDir(this.#options.root, swarm), workFolderName(REMOVING_PREFIX));
    try {
      renameSync(path, doomed);
    } catch {
      return; // gone already
    }
    rmSync(doomed, { force: true });
  }

  /** The artifact on local disk: kept if there and whole, else fetched and verified (see downloadArtifact). */
  async #cache(swarm: string, digest: string): Promise<void> {
    const root = this.#options.root;
    try {
      locateArtifact(root, swarm, digest);
      return;
    } catch (error) {
      if (lstatSync(artifactDir(root, swarm, digest), { throwIfNoEntry: false }) !== undefined) throw error;
    }
    // One download per content: a move to new content usually arrives while the NOTIFY of
    // the snapshot that made it is still fetching it, and joins that fetch.
    const id = `${swarm}/${digest}`;
    let fetching = this.#fetching.get(id);
    if (fetching === undefined) {
      fetching = this.#transfer('download', swarm, digest).finally(() => this.#fetching.delete(id));
      this.#fetching.set(id, fetching);
    }
    await fetching;
  }

  /**
   * An upload or download in the snapshot helper process, off the coordinator's thread; here
   * only in a host that may not start processes, or once the pool is closing.
   */
  async #transfer(op: 'upload' | 'download', swarm: string, digest: string): Promise<void> {
    const { helper, root, store, maxBytes } = this.#options;
    if (helper.available) {
      await helper.transfer(op, swarm, digest, store.postgres);
    } else if (op === 'upload') {
      await uploadArtifact(this.#pool, root, swarm, digest);
    } else {
      await downloadArtifact(this.#pool, root, swarm, digest, maxBytes);
    }
  }
}

/**
 * Holds the name's generation row for the transaction (made at 0 if the name has none): every
 * writer of a name takes it first, so their moves count one after another.
 */
async function lockGeneration(client: pg.ClientBase, swarm: string, name: string): Promise<number> {
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

/** A create's name already held: true if by this content (nothing moves), EXISTS if by other content. */
async function heldByContent(client: pg.ClientBase, row: NameRow): Promise<boolean> {
  const holder = await client.query('SELECT digest FROM sandpool_pointers WHERE swarm = $1 AND name = $2', [
    row.swarm,
    row.name,
  ]);
  if (holder.rows[0] === undefined) return false;
  if (holder.rows[0].digest !== row.digest) throw snapshotExists(row.swarm, row.name);
  return true;
}

/**
 * A point: taken only if `target` still names the content. Both contents are marked (the one
 * named, and the one the name moves off, whose grace starts now); returns the latter, or null.
 */
async function moveFrom(client: pg.ClientBase, row: NameRow, target: string): Promise<string | null> {
  const { swarm, name, digest } = row;
  const named = await client.query('SELECT digest FROM sandpool_pointers WHERE swarm = $1 AND name = $2 FOR SHARE', [
    swarm,
    target,
  ]);
  if (named.rows[0]?.digest !== digest) {
    throw snapshotCorrupt(`snapshot ${target} of swarm ${swarm} moved while ${name} was pointed at it; try again`);
  }
  const held = await client.query('SELECT digest FROM sandpool_pointers WHERE swarm = $1 AND name = $2', [swarm, name]);
  const before = (held.rows[0]?.digest as string | undefined) ?? null;
  // Named by the target, so its row is there (the foreign key): marked, not uploaded.
  await markUsed(client, swarm, before === null ? [digest] : [digest, before]);
  return before;
}

/** The name's pointer and generation written, and every node told when the transaction commits. */
async function writeName(client: pg.ClientBase, row: NameRow, generation: number): Promise<void> {
  const { swarm, name, digest, pointer } = row;
  await client.query(
    `INSERT INTO sandpool_pointers (swarm, name, digest, pointer) VALUES ($1, $2, $3, $4)
     ON CONFLICT (swarm, name) DO UPDATE SET digest = EXCLUDED.digest, pointer = EXCLUDED.pointer`,
    [swarm, name, digest, pointer],
  );
  await client.query('UPDATE sandpool_generations SET generation = $3 WHERE swarm = $1 AND name = $2', [
    swarm,
    name,
    generation,
  ]);
  await notify(client, swarm, name);
}

/** Every node's listener hears of the name when the transaction commits. */
async function notify(client: pg.ClientBase, swarm: string, name: string): Promise<void> {
  await client.query('SELECT pg_notify($1, $2)', [CHANNEL, `${swarm}/${name}`]);
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
