import { randomBytes } from 'node:crypto';
import { type Dirent, lstatSync, readdirSync } from 'node:fs';
import { chmod, lstat, mkdir, readdir, realpath, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import {
  invalidArguments,
  invalidOptions,
  isSandpoolError,
  type SandpoolError,
  snapshotBuild,
  snapshotCorrupt,
  snapshotExists,
  snapshotNotFound,
  swarmNotFound,
  unusableOptions,
} from '../errors.js';
import { issuesOf } from '../issues.js';
import { SnapshotNameSchema, SwarmSchema } from '../key.js';
import { bundleStem } from './bundle.js';
import { buildInputs, isInside, placeOf, readInput } from './confine.js';
import { liveDir, REMOVING_PREFIX, snapshotDir, snapshotsDir, swarmDir, TEMP_PREFIX } from './layout.js';
import {
  BUNDLES_DIR,
  checkPlace,
  checkSignature,
  contentDigest,
  hashTree,
  MANIFEST_NAME,
  type Manifest,
  type ManifestV2,
  readManifest,
  serializeManifest,
  signManifest,
  snapshotDigest,
  verifyAgainst,
} from './manifest.js';
import { UnsafeFileError } from './safe-read.js';

export interface SnapshotInfo {
  readonly swarm: string;
  readonly name: string;
  /** ISO 8601, from the manifest. */
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
  /** Whether the manifest carries an HMAC (see `snapshotSecret`). */
  readonly signed: boolean;
  /** Stems runnable from this snapshot, each from its own bundle; empty for older snapshots. */
  readonly stems: readonly string[];
}

/** Default bound on the bytes one create reads and writes (copies, bundle inputs and bundles). */
export const DEFAULT_MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024;

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
  /** Bytes one create may read and write; over it, ERR_SANDPOOL_SNAPSHOT_BUILD. */
  maxSnapshotBytes: z.number().int().positive().max(Number.MAX_SAFE_INTEGER).default(DEFAULT_MAX_SNAPSHOT_BYTES),
});
export type SnapshotStoreOptions = z.input<typeof StoreOptionsSchema>;

const SwarmArgs = z.strictObject({ swarm: SwarmSchema });
const SnapshotArgs = z.strictObject({ swarm: SwarmSchema, name: SnapshotNameSchema });

const FROZEN_FILE = 0o444;
/**
 * Work folders older than this were left by a crash mid-create or mid-remove. Younger ones
 * may belong to a create still running, here or on another node sharing the root.
 */
const LEFTOVER_AGE_MS = 60 * 60 * 1000;
const CREATE_ATTEMPTS = 3;

/**
 * The embedded snapshot store: `<root>/<swarm>/snapshots/<name>/`, each a read-only copy
 * of `live/` plus a manifest. Snapshots appear and disappear by one `rename`, so readers on
 * this or another node see a whole snapshot or none.
 */
export class SnapshotStore {
  readonly root: string;
  readonly #secret: string | undefined;
  readonly #maxBytes: number;

  constructor(options: SnapshotStoreOptions) {
    const parsed = StoreOptionsSchema.safeParse(options);
    if (!parsed.success) {
      throw invalidOptions('snapshot store options', issuesOf(parsed.error));
    }
    // Resolved once so a later chdir cannot move the store.
    this.root = resolve(parsed.data.root);
    this.#secret = parsed.data.snapshotSecret;
    this.#maxBytes = parsed.data.maxSnapshotBytes;
  }

  /**
   * Freezes live/: a copy of the swarm's own files (node_modules left out) plus one bundle per
   * stem holding everything it imports, so the snapshot answers the same whatever later
   * happens to packages on disk. Same content under the same name resolves to that snapshot.
   */
  async create(swarm: string, name: string): Promise<SnapshotInfo> {
    checkArgs(SnapshotArgs, { swarm, name });
    const live = await this.liveReal(swarm);
    const inputs = await buildInputs(await realpath(this.root), swarm);
    if (placeOf(inputs, live) !== 'swarm')
      throw snapshotBuild("cannot snapshot live/: it leads out of the swarm's folder");
    const parent = snapshotsDir(this.root, swarm);
    await mkdir(parent, { recursive: true });
    await sweepLeftovers(parent);
    const temp = join(parent, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
    const target = snapshotDir(this.root, swarm, name);
    let published = false;
    try {
      await mkdir(temp);
      const budget = { left: this.#maxBytes };
      await copyLive(live, temp, '', budget, this.#maxBytes);
      const stems = await findStems(live);
      const stemPaths: Record<string, string> = {};
      if (stems.length > 0) await mkdir(join(temp, BUNDLES_DIR));
      for (const [stem, file] of stems) {
        const bundle = await bundleStem(file, { liveReal: live, inputs, budget });
        if (bundle.length > budget.left) throw tooLarge(this.#maxBytes);
        budget.left -= bundle.length;
        const rel = `${BUNDLES_DIR}/${stem}.mjs`;
        await writeFile(join(temp, BUNDLES_DIR, `${stem}.mjs`), bundle, { flag: 'wx', mode: FROZEN_FILE });
        stemPaths[stem] = rel;
      }
      // Hash the copy, not live/: the manifest must describe exactly what was frozen,
      // even if live/ changes while we copy.
      const files = await hashTree(temp);
      const manifest: ManifestV2 = {
        version: 2,
        swarm,
        name,
        createdAt: new Date().toISOString(),
        digest: contentDigest(files, stemPaths),
        files,
        stems: stemPaths,
      };
      if (this.#secret !== undefined) manifest.hmac = signManifest(manifest, this.#secret);
      const text = serializeManifest(manifest);
      await writeFile(join(temp, MANIFEST_NAME), text, { flag: 'wx', mode: FROZEN_FILE });
      await chmod(join(temp, MANIFEST_NAME), FROZEN_FILE);
      for (let attempt = 1; ; attempt++) {
        try {
          await rename(temp, target);
          published = true;
          return infoOf(swarm, name, manifest, text);
        } catch (error) {
          if (!isTakenError(error)) throw error;
        }
        try {
          return await this.sameOrExists(swarm, name, manifest.digest);
        } catch (error) {
          // The holder of the name was removed between our rename and our read: try again.
          if (!isSandpoolError(error, 'ERR_SANDPOOL_SNAPSHOT_NOT_FOUND') || attempt >= CREATE_ATTEMPTS) throw error;
        }
      }
    } finally {
      if (!published) await rm(temp, { recursive: true, force: true });
    }
  }

  async list(swarm: string): Promise<SnapshotInfo[]> {
    checkArgs(SwarmArgs, { swarm });
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
      // Temp and half-removed folders start with a dot and never pass the name schema.
      if (!SnapshotNameSchema.safeParse(name).success) continue;
      try {
        infos.push((await this.read(swarm, name)).info);
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
    return (await this.read(swarm, name)).info;
  }

  async remove(swarm: string, name: string): Promise<void> {
    checkArgs(SnapshotArgs, { swarm, name });
    const parent = snapshotsDir(this.root, swarm);
    const doomed = join(parent, `${REMOVING_PREFIX}${randomBytes(8).toString('hex')}`);
    try {
      // One rename hides it whole; the slow recursive delete happens out of sight.
      await rename(snapshotDir(this.root, swarm, name), doomed);
    } catch (error) {
      if (isMissingError(error)) throw snapshotNotFound(swarm, name);
      throw error;
    }
    await rm(doomed, { recursive: true, force: true });
  }

  /** Rehashes every file against the manifest (and checks its signature when a secret is set). */
  async verify(swarm: string, name: string): Promise<SnapshotInfo> {
    checkArgs(SnapshotArgs, { swarm, name });
    const { info, manifest } = await this.read(swarm, name);
    await verifyAgainst(snapshotDir(this.root, swarm, name), manifest);
    return info;
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
    const dir = snapshotDir(this.root, swarm, name);
    if (!exists(dir)) throw snapshotNotFound(swarm, name);
    const { manifest } = readManifest(dir);
    if (manifest.version !== 2) {
      throw snapshotCorrupt(
        `snapshot ${name} of swarm ${swarm} predates self-contained snapshots and cannot be signed; create it again`,
      );
    }
    checkPlace(manifest, { swarm, name });
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
    return infoOf(swarm, name, signed, text);
  }

  private async liveReal(swarm: string): Promise<string> {
    try {
      const real = await realpath(liveDir(this.root, swarm));
      if ((await stat(real)).isDirectory()) return real;
    } catch (error) {
      if (!isMissingError(error)) throw error;
    }
    throw swarmNotFound(swarm, 'has no live folder');
  }

  private async read(swarm: string, name: string): Promise<{ info: SnapshotInfo; manifest: Manifest }> {
    const dir = snapshotDir(this.root, swarm, name);
    if (!exists(dir)) throw snapshotNotFound(swarm, name);
    try {
      const { manifest, text } = readManifest(dir);
      checkSignature(manifest, this.#secret, { swarm, name });
      return { info: infoOf(swarm, name, manifest, text), manifest };
    } catch (error) {
      // A concurrent remove renames the folder away: that is NOT_FOUND, not corruption.
      if (isSandpoolError(error, 'ERR_SANDPOOL_SNAPSHOT_CORRUPT') && !exists(dir)) throw snapshotNotFound(swarm, name);
      throw error;
    }
  }

  /** Same content digest as the holder of the name: resolve to it, so retries and other nodes agree. */
  private async sameOrExists(swarm: string, name: string, digest: string): Promise<SnapshotInfo> {
    let existing: { info: SnapshotInfo; manifest: Manifest };
    try {
      existing = await this.read(swarm, name);
    } catch (error) {
      if (isSandpoolError(error, 'ERR_SANDPOOL_SNAPSHOT_NOT_FOUND')) throw error;
      throw snapshotExists(swarm, name, error);
    }
    if (existing.info.digest === digest) return existing.info;
    throw snapshotExists(swarm, name);
  }
}

/** The arguments every per-snapshot operation checks first (INVALID_KEY, nothing touched). */
export function checkSnapshotArgs(swarm: string, name: string): void {
  checkArgs(SnapshotArgs, { swarm, name });
}

function checkArgs(schema: z.ZodType, args: Record<string, unknown>): void {
  const parsed = schema.safeParse(args);
  if (parsed.success) return;
  throw invalidArguments('snapshot arguments', issuesOf(parsed.error));
}

/**
 * Copies `live/` file by file, read-only; node_modules folders are left out (what the stems
 * use from them is in the bundles, and pnpm's links could not be copied anyway). Symlinks are
 * never copied as links: one whose real target is a regular file inside live/ is copied as
 * that file's contents; one that escapes live/, dangles, or points at a folder (which could
 * loop) is refused, as is any FIFO, socket or device (by its type, never opened). Each file is
 * read as confine.ts reads a build input: proven to sit in live/ with one name when its bytes
 * are read, so a file or folder swapped mid-copy is refused rather than followed or waited on.
 */
async function copyLive(
  liveRoot: string,
  to: string,
  rel: string,
  budget: { left: number },
  maxBytes: number,
): Promise<void> {
  const from = rel === '' ? liveRoot : join(liveRoot, ...rel.split('/'));
  let entries: Dirent[];
  try {
    entries = await readdir(from, { withFileTypes: true });
  } catch (cause) {
    throw refusedBuild(rel === '' ? '' : rel, 'disappeared while the snapshot was being made', cause);
  }
  for (const entry of entries) {
    const path = rel === '' ? entry.name : `${rel}/${entry.name}`;
    // Reserved names: a stray one in live/ would be overwritten anyway.
    if (path === MANIFEST_NAME || path === BUNDLES_DIR) continue;
    const source = join(from, entry.name);
    const dest = join(to, entry.name);
    if (entry.isDirectory()) {
      if (entry.name === 'node_modules') continue;
      await mkdir(dest);
      await copyLive(liveRoot, dest, path, budget, maxBytes);
    } else if (entry.isFile()) {
      await freeze(liveRoot, source, dest, path, budget, maxBytes);
    } else if (entry.isSymbolicLink()) {
      await freeze(liveRoot, await linkTarget(liveRoot, source, path), dest, path, budget, maxBytes);
    } else {
      // Refused by its type alone: a FIFO is never opened.
      throw refusedBuild(path, 'is not a regular file, folder or symlink');
    }
  }
}

async function linkTarget(liveRoot: string, source: string, path: string): Promise<string> {
  let real: string;
  try {
    real = await realpath(source);
  } catch (cause) {
    throw refusedBuild(path, 'is a dangling symlink', cause);
  }
  if (!isInside(liveRoot, real)) throw refusedBuild(path, 'is a symlink that leaves the live folder');
  const target = await lstat(real).catch((cause: unknown) => {
    throw refusedBuild(path, 'disappeared while the snapshot was being made', cause);
  });
  if (!target.isFile()) throw refusedBuild(path, 'is a symlink to something other than a regular file');
  return real;
}

async function freeze(
  liveRoot: string,
  source: string,
  dest: string,
  path: string,
  budget: { left: number },
  maxBytes: number,
): Promise<void> {
  let bytes: Buffer;
  try {
    // Proven to sit in live/ when read: a folder on the way swapped for a link is caught.
    ({ bytes } = await readInput(source, (real) => (isInside(liveRoot, real) ? 'swarm' : null), budget.left));
  } catch (error) {
    if (!(error instanceof UnsafeFileError)) throw error;
    if (error.reason === 'too-large') throw tooLarge(maxBytes, error);
    throw refusedBuild(path, error.message, error);
  }
  budget.left -= bytes.length;
  await writeFile(dest, bytes, { flag: 'wx', mode: FROZEN_FILE });
  await chmod(dest, FROZEN_FILE);
}

const STEM_FILE = /^([A-Za-z0-9_][A-Za-z0-9_-]{0,127})(\.mjs|\.js|\.cjs|\.mts|\.ts|\.cts)$/;
const EXTENSION_ORDER = ['.mjs', '.js', '.cjs', '.mts', '.ts', '.cts'];

/** Every `<stem>.<ext>` at the top of live/ is a key's module; the first extension found wins, as at load. */
async function findStems(liveRoot: string): Promise<[string, string][]> {
  const chosen = new Map<string, { rank: number; file: string }>();
  for (const entry of await readdir(liveRoot, { withFileTypes: true })) {
    if (!entry.isFile() && !entry.isSymbolicLink()) continue;
    const match = STEM_FILE.exec(entry.name);
    if (match === null) continue;
    const [, stem, extension] = match as unknown as [string, string, string];
    const rank = EXTENSION_ORDER.indexOf(extension);
    const held = chosen.get(stem);
    if (held === undefined || rank < held.rank) chosen.set(stem, { rank, file: join(liveRoot, entry.name) });
  }
  return [...chosen.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([stem, { file }]) => [stem, file]);
}

function infoOf(swarm: string, name: string, manifest: Manifest, text: string): SnapshotInfo {
  const entries = Object.values(manifest.files);
  return {
    swarm,
    name,
    createdAt: manifest.createdAt,
    files: entries.length,
    bytes: entries.reduce((sum, file) => sum + file.bytes, 0),
    digest: snapshotDigest(manifest, text),
    signed: manifest.version === 2 && manifest.hmac !== undefined,
    stems: manifest.version === 2 ? Object.keys(manifest.stems).sort() : [],
  };
}

function tooLarge(maxBytes: number, cause?: unknown): SandpoolError {
  return snapshotBuild(
    `snapshot would take more than maxSnapshotBytes (${maxBytes} bytes, files and bundles together, sparse files at their full size)`,
    cause,
  );
}

function refusedBuild(path: string, why: string, cause?: unknown): SandpoolError {
  const message = `cannot snapshot live/${path}: it ${why}`;
  return snapshotBuild(message, cause);
}

function errnoCode(error: unknown): unknown {
  return typeof error === 'object' && error !== null && 'code' in error ? error.code : undefined;
}

function isMissingError(error: unknown): boolean {
  const code = errnoCode(error);
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/** rename(2) onto a non-empty folder fails with ENOTEMPTY (EEXIST on some systems); onto a file, ENOTDIR. */
function isTakenError(error: unknown): boolean {
  const code = errnoCode(error);
  return code === 'ENOTEMPTY' || code === 'EEXIST' || code === 'ENOTDIR';
}

/**
 * Synchronous, as is every metadata read of list() and get(): they run on the coordinator's
 * thread, and an async call would wait in libuv's pool behind tenants' jobs.
 */
function exists(path: string): boolean {
  return lstatSync(path, { throwIfNoEntry: false }) !== undefined;
}

/** Best effort: a sweep that fails leaves the folders for the next create. */
async function sweepLeftovers(parent: string): Promise<void> {
  try {
    const now = Date.now();
    for (const name of await readdir(parent)) {
      if (!name.startsWith(TEMP_PREFIX) && !name.startsWith(REMOVING_PREFIX)) continue;
      const path = join(parent, name);
      if (now - (await lstat(path)).mtimeMs > LEFTOVER_AGE_MS) await rm(path, { recursive: true, force: true });
    }
  } catch {
    // Nothing depends on it.
  }
}
