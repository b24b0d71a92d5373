import { randomBytes } from 'node:crypto';
import { lstatSync, readdirSync } from 'node:fs';
import { link, mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import {
  invalidArguments,
  invalidOptions,
  isSandpoolError,
  snapshotBuild,
  snapshotCorrupt,
  snapshotExists,
  snapshotNotFound,
  swarmNotFound,
  unusableOptions,
} from '../errors.js';
import { issuesOf } from '../issues.js';
import { SnapshotNameSchema, SwarmSchema } from '../key.js';
import {
  type BuiltArtifact,
  buildArtifact,
  DEFAULT_MAX_SNAPSHOT_BYTES,
  isMissingError,
  isTakenError,
  locateArtifact,
  sweepUnused,
  touchArtifact,
  verifyArtifact,
} from './artifact.js';
import { recordedGeneration, recordGeneration } from './generations.js';
import { REMOVING_PREFIX, snapshotDir, snapshotsDir, swarmDir, TEMP_PREFIX } from './layout.js';
import { removeTree, sweepWorkFolders, workFolderName } from './leftovers.js';
import {
  type ArtifactManifest,
  MANIFEST_NAME,
  type Manifest,
  type ManifestV2,
  serializeManifest,
  signManifest,
  snapshotDigest,
  verifyAgainst,
} from './manifest.js';
import { withNameLock } from './name-lock.js';
import { namedDigests, readSnapshotName, type SnapshotRef } from './names.js';
import { checkPointer, type Pointer, readPointer, serializePointer, signPointer } from './pointer.js';
import { addingName, admitName, withinSwarmBytes } from './quota.js';

export interface SnapshotInfo {
  readonly swarm: string;
  readonly name: string;
  /** ISO 8601: when the name was given its content (create, or point). */
  readonly createdAt: string;
  /** Number of files, the manifest excluded. */
  readonly files: number;
  /** Total bytes of those files. */
  readonly bytes: number;
  /**
   * sha256 hex of the content (files and bundles), never of the name or date: two snapshots
   * of the same code have the same digest. For snapshots made before bundling, the manifest's hash.
   */
  readonly digest: string;
  /** Whether the name's pointer (or an older snapshot's manifest) carries an HMAC (see `snapshotSecret`). */
  readonly signed: boolean;
  /** Stems runnable from this snapshot, each from its own bundle; empty for older snapshots. */
  readonly stems: readonly string[];
}

/** Default bound on one swarm's snapshot names. */
const DEFAULT_MAX_SNAPSHOTS_PER_SWARM = 1_000;
/** Default bound on one swarm's snapshot content on disk: sixteen creates at the default maxSnapshotBytes. */
const DEFAULT_MAX_SNAPSHOT_BYTES_PER_SWARM = 4 * 1024 * 1024 * 1024;

const bytes = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);

/** The store's bounds, as the store and the pool's options both take them. */
export const SnapshotBoundsShape = {
  /** Bytes one create may read and write; over it, ERR_SANDPOOL_SNAPSHOT_BUILD. */
  maxSnapshotBytes: bytes.default(DEFAULT_MAX_SNAPSHOT_BYTES),
  /** Names one swarm may have; a new one past it is ERR_SANDPOOL_QUOTA. */
  maxSnapshotsPerSwarm: z.number().int().positive().max(1_000_000).default(DEFAULT_MAX_SNAPSHOTS_PER_SWARM),
  /**
   * Bytes of content one swarm's snapshots may hold on disk, shared content once and content
   * no name uses until it is removed; a create past it is ERR_SANDPOOL_SNAPSHOT_BUILD.
   */
  maxSnapshotBytesPerSwarm: bytes.default(DEFAULT_MAX_SNAPSHOT_BYTES_PER_SWARM),
};

export const SnapshotSecretSchema = z
  .string()
  .min(16, 'snapshotSecret must be at least 16 characters')
  .max(4096)
  .optional();

const StoreOptionsSchema = z.strictObject({
  root: z
    .string()
    .min(1)
    .refine((root) => !root.includes('\0'), 'root must not contain a NUL byte'),
  /** Key for manifest HMACs: with it, unsigned or badly signed snapshots are CORRUPT. */
  snapshotSecret: SnapshotSecretSchema,
  ...SnapshotBoundsShape,
});
export type SnapshotStoreOptions = z.input<typeof StoreOptionsSchema>;

const SwarmArgs = z.strictObject({ swarm: SwarmSchema });
const SnapshotArgs = z.strictObject({ swarm: SwarmSchema, name: SnapshotNameSchema });

const PointArgs = z.strictObject({ swarm: SwarmSchema, name: SnapshotNameSchema, target: SnapshotNameSchema });

const FROZEN_FILE = 0o444;
const CREATE_ATTEMPTS = 3;

/**
 * The embedded snapshot store. A snapshot's content is an immutable artifact,
 * `<root>/.sandpool-cache/artifacts/<swarm>/<digest>/`, and its name a small read-only pointer
 * `<root>/<swarm>/snapshots/<name>` to that digest. A name appears, moves or goes by one
 * link or rename, so readers on this or another node see one pointer or none. Snapshot
 * folders made before artifacts stay readable (get, list, verify, sign, remove and calls).
 */
export class SnapshotStore {
  readonly root: string;
  readonly #secret: string | undefined;
  readonly #maxBytes: number;
  readonly #maxNames: number;
  readonly #maxSwarmBytes: number;
  readonly #building = new Map<string, Promise<void>>();

  constructor(options: SnapshotStoreOptions) {
    const parsed = StoreOptionsSchema.safeParse(options);
    if (!parsed.success) {
      throw invalidOptions('snapshot store options', issuesOf(parsed.error));
    }
    // Resolved once so a later chdir cannot move the store.
    this.root = resolve(parsed.data.root);
    this.#secret = parsed.data.snapshotSecret;
    this.#maxBytes = parsed.data.maxSnapshotBytes;
    this.#maxNames = parsed.data.maxSnapshotsPerSwarm;
    this.#maxSwarmBytes = parsed.data.maxSnapshotBytesPerSwarm;
  }

  /**
   * Freezes live/ into an artifact (see buildArtifact) and names it. Same content under the
   * same name resolves to that snapshot; a name held by other content is EXISTS.
   */
  async create(swarm: string, name: string): Promise<SnapshotInfo> {
    checkArgs(SnapshotArgs, { swarm, name });
    // A name the swarm has no room for is refused before anything is built.
    admitName(this.root, swarm, name, this.#maxNames);
    const artifact = await this.build(swarm);
    const parent = snapshotsDir(this.root, swarm);
    await mkdir(parent, { recursive: true });
    await sweepWorkFolders(parent);
    for (let attempt = 1; ; attempt++) {
      // Under the name's lock, as every move: its generation follows the last the store gave it.
      const made = await withNameLock(parent, name, async () => {
        const pointer = this.pointerTo(
          swarm,
          name,
          artifact.digest,
          artifact.manifest,
          this.nextGeneration(swarm, name),
        );
        return (await this.publish(pointer, 'new')) ? pointer : null;
      });
      if (made !== null) return infoOfPointer(made, artifact.manifest);
      try {
        return await this.sameOrExists(swarm, name, artifact.digest);
      } catch (error) {
        // The holder of the name was removed between our link and our read: try again.
        if (!isSandpoolError(error, 'ERR_SANDPOOL_SNAPSHOT_NOT_FOUND') || attempt >= CREATE_ATTEMPTS) throw error;
      }
    }
  }

  /**
   * Points `name` at the content `target` names now, in one rename (a deploy or a rollback:
   * `point('a1', 'prod', 'jun')`); `name` is made if it does not exist. With a secret, the
   * target must verify and the new pointer is signed. Content no name uses any more is
   * removed later (see UNUSED_ARTIFACT_MS).
   */
  async point(swarm: string, name: string, target: string): Promise<SnapshotInfo> {
    checkArgs(PointArgs, { swarm, name, target });
    const ref = this.read(swarm, target);
    if (ref.kind === 'folder') {
      throw unusableOptions(
        `snapshot ${target} of swarm ${swarm} was made before artifacts; create it again to point names at it`,
      );
    }
    const { digest, manifest } = ref.artifact;
    if (!(await touchArtifact(this.root, swarm, digest))) {
      throw snapshotCorrupt(`snapshot ${target} lost its content while ${name} was pointed at it`);
    }
    const { pointer, before } = await withNameLock(snapshotsDir(this.root, swarm), name, async () => {
      const held = pointedDigest(this.root, swarm, name);
      const next = this.pointerTo(swarm, name, digest, manifest, this.nextGeneration(swarm, name));
      await this.publish(next, 'replace');
      return { pointer: next, before: held };
    });
    if (before !== null && before !== digest) await this.unnamed(swarm, before);
    return infoOfPointer(pointer, manifest);
  }

  async list(swarm: string): Promise<SnapshotInfo[]> {
    checkSwarmArgs(swarm);
    let names: string[];
    try {
      names = readdirSync(snapshotsDir(this.root, swarm));
    } catch (error) {
      if (!isMissingError(error)) throw error;
      // A swarm with a folder but no snapshots yet is a valid, empty swarm.
      if (exists(swarmDir(this.root, swarm))) return [];
      throw swarmNotFound(swarm);
    }
    const infos: SnapshotInfo[] = [];
    for (const name of names) {
      // Work files start with a dot and never pass the name schema.
      if (!SnapshotNameSchema.safeParse(name).success) continue;
      try {
        infos.push(infoOf(swarm, name, this.read(swarm, name)));
      } catch (error) {
        // Removed while we listed: it is simply no longer there.
        if (!isSandpoolError(error, 'ERR_SANDPOOL_SNAPSHOT_NOT_FOUND')) throw error;
      }
    }
    return infos.sort((a, b) =>
      a.createdAt !== b.createdAt ? (a.createdAt < b.createdAt ? -1 : 1) : a.name < b.name ? -1 : 1,
    );
  }

  async get(swarm: string, name: string): Promise<SnapshotInfo> {
    checkArgs(SnapshotArgs, { swarm, name });
    return infoOf(swarm, name, this.read(swarm, name));
  }

  /** Removes the name; its content goes later if no other name points to it (see UNUSED_ARTIFACT_MS). */
  async remove(swarm: string, name: string): Promise<void> {
    checkArgs(SnapshotArgs, { swarm, name });
    const parent = snapshotsDir(this.root, swarm);
    const doomed = join(parent, workFolderName(REMOVING_PREFIX));
    let digest: string | null;
    try {
      digest = await withNameLock(parent, name, async () => {
        const held = pointedDigest(this.root, swarm, name);
        const there = lstatSync(snapshotDir(this.root, swarm, name), { throwIfNoEntry: false }) !== undefined;
        // A removal is a move too, recorded before the pointer goes: the last pointer, put back
        // the moment the name is gone, is already older than the record.
        if (there) await recordGeneration(this.root, swarm, name, this.nextGeneration(swarm, name));
        // One rename hides it whole; the slow recursive delete of an old folder happens out of sight.
        await rename(snapshotDir(this.root, swarm, name), doomed);
        return held;
      });
    } catch (error) {
      // No name, or no snapshots folder to lock it in.
      if (isMissingError(error)) throw snapshotNotFound(swarm, name);
      throw error;
    }
    await removeTree(doomed);
    if (digest !== null) await this.unnamed(swarm, digest);
  }

  /** Rehashes every file against the manifest (and checks the signature when a secret is set). */
  async verify(swarm: string, name: string): Promise<SnapshotInfo> {
    checkArgs(SnapshotArgs, { swarm, name });
    const ref = this.read(swarm, name);
    if (ref.kind === 'pointer') await verifyArtifact(this.root, swarm, ref.pointer.digest);
    else await verifyAgainst(ref.dir, ref.manifest);
    return infoOf(swarm, name, ref);
  }

  /**
   * Signs a snapshot made before `snapshotSecret` was set, after verifying every file against
   * its manifest: the signature vouches for the content as it is now, so run it only on a
   * snapshot you trust. Snapshots made before bundling cannot be signed; create them again.
   */
  async sign(swarm: string, name: string): Promise<SnapshotInfo> {
    checkArgs(SnapshotArgs, { swarm, name });
    const secret = this.#secret;
    if (secret === undefined) {
      throw unusableOptions('sign() needs the store to have a snapshotSecret');
    }
    for (let attempt = 1; ; attempt++) {
      const ref = readSnapshotName(this.root, swarm, name, undefined);
      if (ref.kind === 'folder') return await this.signFolder(swarm, name, ref, secret);
      const { manifest } = await verifyArtifact(this.root, swarm, ref.pointer.digest);
      // Replaced only if the name still holds what was verified: a point meanwhile is never undone.
      const signed = await withNameLock(snapshotsDir(this.root, swarm), name, async () => {
        if (!samePointing(pointedPointer(this.root, swarm, name), ref.pointer)) return null;
        const generation = this.nextGeneration(swarm, name);
        const pointer = this.pointerTo(swarm, name, ref.pointer.digest, manifest, generation, ref.pointer.createdAt);
        await this.publish(pointer, 'replace');
        return pointer;
      });
      if (signed !== null) return infoOfPointer(signed, manifest);
      if (attempt >= CREATE_ATTEMPTS) {
        throw snapshotBuild(`snapshot ${name} of swarm ${swarm} kept moving while it was signed; try again`);
      }
    }
  }

  private async signFolder(
    swarm: string,
    name: string,
    ref: Extract<SnapshotRef, { kind: 'folder' }>,
    secret: string,
  ): Promise<SnapshotInfo> {
    const { manifest, dir } = ref;
    if (manifest.version !== 2) {
      throw snapshotCorrupt(
        `snapshot ${name} of swarm ${swarm} predates self-contained snapshots and cannot be signed; create it again`,
      );
    }
    await verifyAgainst(dir, manifest);
    const signed: ManifestV2 = { ...manifest, hmac: signManifest(manifest, secret) };
    const text = serializeManifest(signed);
    // Written beside and renamed over: a reader sees the old manifest or the new one, whole.
    const next = join(dir, `${MANIFEST_NAME}${TEMP_PREFIX}${randomBytes(4).toString('hex')}`);
    try {
      await writeFile(next, text, { flag: 'wx', mode: FROZEN_FILE });
      await rename(next, join(dir, MANIFEST_NAME));
    } finally {
      await rm(next, { force: true });
    }
    return infoOf(swarm, name, { kind: 'folder', dir, manifest: signed, text });
  }

  private read(swarm: string, name: string): SnapshotRef {
    return readSnapshotName(this.root, swarm, name, this.#secret);
  }

  /**
   * One swarm's builds run one at a time: each may hold maxSnapshotBytes on disk and in memory,
   * and a burst of creates (a tenant's retries, or a loop over the API) must not multiply that.
   */
  private async build(swarm: string): Promise<BuiltArtifact> {
    const mine = (this.#building.get(swarm) ?? Promise.resolve()).then(() => this.buildOne(swarm));
    const settled = mine.then(
      () => undefined,
      () => undefined,
    );
    this.#building.set(swarm, settled);
    try {
      return await mine;
    } finally {
      if (this.#building.get(swarm) === settled) this.#building.delete(swarm);
    }
  }

  private async buildOne(swarm: string): Promise<BuiltArtifact> {
    for (let attempt = 1; ; attempt++) {
      const artifact = await buildArtifact(this.root, swarm, {
        maxBytes: this.#maxBytes,
        making: 'snapshot',
        admit: (build, publish) => withinSwarmBytes(this.root, swarm, this.#maxSwarmBytes, build, publish),
      });
      if (await touchArtifact(this.root, swarm, artifact.digest)) return artifact;
      if (attempt >= CREATE_ATTEMPTS) throw snapshotBuild('the content was removed as fast as it was built; try again');
    }
  }

  private pointerTo(
    swarm: string,
    name: string,
    digest: string,
    manifest: ArtifactManifest,
    generation: number,
    createdAt = new Date().toISOString(),
  ): Pointer {
    const pointer: Pointer = { sandpool: 'snapshot-pointer', version: 2, swarm, name, generation, digest, createdAt };
    const secret = this.#secret;
    return secret === undefined ? pointer : { ...pointer, hmac: signPointer(pointer, manifest, secret) };
  }

  /**
   * The generation a name's next move takes, asked holding its lock: one more than the store's
   * record, or than the pointer in place if it is signed under this store's secret (a crash
   * between a move's pointer and its record leaves the record one behind). An unsigned
   * pointer's generation is whoever wrote it's say, not the store's, and is not taken.
   */
  private nextGeneration(swarm: string, name: string): number {
    let held = 0;
    const pointer = this.#secret === undefined ? null : pointedPointer(this.root, swarm, name);
    if (pointer !== null) {
      try {
        const { manifest } = locateArtifact(this.root, swarm, pointer.digest);
        checkPointer(pointer, manifest, this.#secret, { swarm, name });
        held = pointer.generation;
      } catch {
        // Not a pointer this store signed: its generation counts for nothing.
      }
    }
    const next = Math.max(recordedGeneration(this.root, swarm, name), held) + 1;
    if (!Number.isSafeInteger(next)) throw snapshotCorrupt(`snapshot ${name} of swarm ${swarm} has no generation left`);
    return next;
  }

  /**
   * Gives the name its pointer (see place). A name the swarm does not have yet must fit under
   * maxSnapshotsPerSwarm (QUOTA otherwise, nothing written), counted and added under the
   * swarm's lock. Called holding the name's lock.
   */
  private async publish(pointer: Pointer, how: 'new' | 'replace'): Promise<boolean> {
    const { swarm, name } = pointer;
    await mkdir(snapshotsDir(this.root, swarm), { recursive: true });
    if (lstatSync(snapshotDir(this.root, swarm, name), { throwIfNoEntry: false }) === undefined) {
      return addingName(this.root, swarm, name, this.#maxNames, () => this.place(pointer, how));
    }
    return this.place(pointer, how);
  }

  /**
   * Writes the pointer beside its place, read-only, then links it there (`new`: false if the
   * name is taken) or renames it over what is there (`replace`), then records its generation
   * (see generations.ts). Either way a reader sees the old pointer or the new one, whole.
   */
  private async place(pointer: Pointer, how: 'new' | 'replace'): Promise<boolean> {
    const parent = snapshotsDir(this.root, pointer.swarm);
    const temp = join(parent, workFolderName(TEMP_PREFIX));
    const target = snapshotDir(this.root, pointer.swarm, pointer.name);
    await writeFile(temp, serializePointer(pointer), { flag: 'wx', mode: FROZEN_FILE });
    try {
      if (how === 'replace') {
        try {
          await rename(temp, target);
        } catch (error) {
          if (!isTakenError(error) && errnoCode(error) !== 'EISDIR') throw error;
          // A folder made before artifacts holds the name: it is removed, not replaced.
          throw snapshotExists(pointer.swarm, pointer.name, error);
        }
      } else {
        try {
          await link(temp, target);
        } catch (error) {
          if (isTakenError(error)) return false;
          throw error;
        }
      }
    } finally {
      await rm(temp, { force: true });
    }
    await recordGeneration(this.root, pointer.swarm, pointer.name, pointer.generation);
    return true;
  }

  /** A name left `digest`: its grace starts now, and content no name uses past its grace goes. */
  private async unnamed(swarm: string, digest: string): Promise<void> {
    await touchArtifact(this.root, swarm, digest);
    await sweepUnused(this.root, swarm, () => namedDigests(this.root, swarm));
  }

  /** Same content digest as the holder of the name: resolve to it, so retries and other nodes agree. */
  private async sameOrExists(swarm: string, name: string, digest: string): Promise<SnapshotInfo> {
    let existing: SnapshotInfo;
    try {
      existing = infoOf(swarm, name, this.read(swarm, name));
    } catch (error) {
      if (isSandpoolError(error, 'ERR_SANDPOOL_SNAPSHOT_NOT_FOUND')) throw error;
      throw snapshotExists(swarm, name, error);
    }
    if (existing.digest === digest) return existing;
    throw snapshotExists(swarm, name);
  }
}

/** The arguments every per-snapshot operation checks first (INVALID_KEY, nothing touched). */
export function checkSwarmArgs(swarm: string): void {
  checkArgs(SwarmArgs, { swarm });
}

export function checkSnapshotArgs(swarm: string, name: string): void {
  checkArgs(SnapshotArgs, { swarm, name });
}

/** The arguments of point (INVALID_KEY, nothing touched). */
export function checkPointArgs(swarm: string, name: string, target: string): void {
  checkArgs(PointArgs, { swarm, name, target });
}

function checkArgs(schema: z.ZodType, args: Record<string, unknown>): void {
  const parsed = schema.safeParse(args);
  if (parsed.success) return;
  throw invalidArguments('snapshot arguments', issuesOf(parsed.error));
}

function infoOf(swarm: string, name: string, ref: SnapshotRef): SnapshotInfo {
  if (ref.kind === 'pointer') return infoOfPointer(ref.pointer, ref.artifact.manifest);
  const { manifest, text } = ref;
  return {
    ...sizeOf(manifest),
    swarm,
    name,
    createdAt: manifest.createdAt,
    digest: snapshotDigest(manifest, text),
    signed: manifest.version === 2 && manifest.hmac !== undefined,
    stems: manifest.version === 2 ? Object.keys(manifest.stems).sort() : [],
  };
}

function infoOfPointer(pointer: Pointer, manifest: ArtifactManifest): SnapshotInfo {
  return {
    ...sizeOf(manifest),
    swarm: pointer.swarm,
    name: pointer.name,
    createdAt: pointer.createdAt,
    digest: pointer.digest,
    signed: pointer.hmac !== undefined,
    stems: Object.keys(manifest.stems).sort(),
  };
}

function sizeOf(manifest: Manifest): { files: number; bytes: number } {
  const entries = Object.values(manifest.files);
  return { files: entries.length, bytes: entries.reduce((sum, file) => sum + file.bytes, 0) };
}

/** The digest a name's pointer holds now, unchecked; null for none (or a folder made before artifacts). */
function pointedDigest(root: string, swarm: string, name: string): string | null {
  return pointedPointer(root, swarm, name)?.digest ?? null;
}

function pointedPointer(root: string, swarm: string, name: string): Pointer | null {
  try {
    return readPointer(snapshotDir(root, swarm, name)).pointer;
  } catch {
    return null;
  }
}

/** The same move of the name (a point to the same content made later is another one). */
function samePointing(now: Pointer | null, read: Pointer): boolean {
  return (
    now !== null && now.digest === read.digest && now.generation === read.generation && now.createdAt === read.createdAt
  );
}

function errnoCode(error: unknown): unknown {
  return typeof error === 'object' && error !== null && 'code' in error ? error.code : undefined;
}

/**
 * Synchronous, as is every metadata read of list() and get(): they run on the coordinator's
 * thread, and an async call would wait in libuv's pool behind tenants' jobs.
 */
function exists(path: string): boolean {
  return lstatSync(path, { throwIfNoEntry: false }) !== undefined;
}
