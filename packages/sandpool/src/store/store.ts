import { randomBytes } from 'node:crypto';
import {
  chmod,
  constants,
  copyFile,
  lstat,
  mkdir,
  readdir,
  realpath,
  rename,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises';
import { join, resolve, sep } from 'node:path';
import { z } from 'zod';
import { isSandpoolError, SandpoolError } from '../errors.js';
import { issuesOf } from '../issues.js';
import { SnapshotNameSchema, SwarmSchema } from '../key.js';
import { liveDir, REMOVING_PREFIX, snapshotDir, snapshotsDir, swarmDir, TEMP_PREFIX } from './layout.js';
import {
  hashTree,
  MANIFEST_NAME,
  type Manifest,
  manifestDigest,
  readManifest,
  serializeManifest,
  verifyAgainst,
} from './manifest.js';

export interface SnapshotInfo {
  readonly swarm: string;
  readonly name: string;
  /** ISO 8601, from the manifest. */
  readonly createdAt: string;
  /** Number of files, the manifest excluded. */
  readonly files: number;
  /** Total bytes of those files. */
  readonly bytes: number;
  /** sha256 hex of the manifest file. */
  readonly digest: string;
}

const StoreOptionsSchema = z.strictObject({
  root: z
    .string()
    .min(1)
    .refine((root) => !root.includes('\0'), 'root must not contain a NUL byte'),
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

  constructor(options: SnapshotStoreOptions) {
    const parsed = StoreOptionsSchema.safeParse(options);
    if (!parsed.success) {
      const issues = issuesOf(parsed.error);
      const fields = [...new Set(issues.map((issue) => issue.path.join('.') || '(options)'))].join(', ');
      throw new SandpoolError('ERR_SANDPOOL_INVALID_OPTIONS', `invalid snapshot store options: ${fields}`, { issues });
    }
    // Resolved once so a later chdir cannot move the store.
    this.root = resolve(parsed.data.root);
  }

  async create(swarm: string, name: string): Promise<SnapshotInfo> {
    checkArgs(SnapshotArgs, { swarm, name });
    const live = await this.liveReal(swarm);
    const parent = snapshotsDir(this.root, swarm);
    await mkdir(parent, { recursive: true });
    await sweepLeftovers(parent);
    const temp = join(parent, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
    const target = snapshotDir(this.root, swarm, name);
    let published = false;
    try {
      await mkdir(temp);
      await copyLive(live, live, temp, '');
      // Hash the copy, not live/: the manifest must describe exactly what was frozen,
      // even if live/ changes while we copy.
      const files = await hashTree(temp);
      const manifest: Manifest = { version: 1, swarm, name, createdAt: new Date().toISOString(), files };
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
          return await this.sameOrExists(swarm, name, files);
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
      names = await readdir(snapshotsDir(this.root, swarm));
    } catch (error) {
      if (!isMissingError(error)) throw error;
      // A swarm with a folder but no snapshots yet is a valid, empty swarm.
      if (await exists(swarmDir(this.root, swarm))) return [];
      throw new SandpoolError('ERR_SANDPOOL_SWARM_NOT_FOUND', `swarm ${swarm} does not exist`);
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
      if (isMissingError(error)) throw notFound(swarm, name);
      throw error;
    }
    await rm(doomed, { recursive: true, force: true });
  }

  async verify(swarm: string, name: string): Promise<SnapshotInfo> {
    checkArgs(SnapshotArgs, { swarm, name });
    const { info, manifest } = await this.read(swarm, name);
    await verifyAgainst(snapshotDir(this.root, swarm, name), manifest);
    return info;
  }

  private async liveReal(swarm: string): Promise<string> {
    try {
      const real = await realpath(liveDir(this.root, swarm));
      if ((await stat(real)).isDirectory()) return real;
    } catch (error) {
      if (!isMissingError(error)) throw error;
    }
    throw new SandpoolError('ERR_SANDPOOL_SWARM_NOT_FOUND', `swarm ${swarm} has no live folder`);
  }

  private async read(swarm: string, name: string): Promise<{ info: SnapshotInfo; manifest: Manifest }> {
    const dir = snapshotDir(this.root, swarm, name);
    if (!(await exists(dir))) throw notFound(swarm, name);
    try {
      const { manifest, text } = await readManifest(dir);
      return { info: infoOf(swarm, name, manifest, text), manifest };
    } catch (error) {
      // A concurrent remove renames the folder away: that is NOT_FOUND, not corruption.
      if (isSandpoolError(error, 'ERR_SANDPOOL_SNAPSHOT_CORRUPT') && !(await exists(dir))) throw notFound(swarm, name);
      throw error;
    }
  }

  /** Same file set and digests as the holder of the name: resolve to it, so retries and other nodes agree. */
  private async sameOrExists(swarm: string, name: string, files: Manifest['files']): Promise<SnapshotInfo> {
    let existing: { info: SnapshotInfo; manifest: Manifest };
    try {
      existing = await this.read(swarm, name);
    } catch (error) {
      if (isSandpoolError(error, 'ERR_SANDPOOL_SNAPSHOT_NOT_FOUND')) throw error;
      throw taken(swarm, name, error);
    }
    if (sameFiles(existing.manifest.files, files)) return existing.info;
    throw taken(swarm, name);
  }
}

function checkArgs(schema: z.ZodType, args: Record<string, unknown>): void {
  const parsed = schema.safeParse(args);
  if (parsed.success) return;
  const issues = issuesOf(parsed.error);
  const fields = [...new Set(issues.map((issue) => issue.path.join('.')))].join(', ');
  throw new SandpoolError('ERR_SANDPOOL_INVALID_KEY', `invalid snapshot arguments: ${fields}`, { issues });
}

/**
 * Copies `live/` file by file, read-only. Symlinks are never copied as links: a link whose
 * real target is a regular file inside live/ is copied as that file's contents; a link that
 * escapes live/, dangles, or points at a folder (which could loop) is refused, as is any
 * FIFO, socket or device. Refusal rejects the whole create, the same rule as a module whose
 * real path leaves its folder (ERR_SANDPOOL_MODULE_NOT_FOUND). The live folder is written by
 * the operator; these checks stop accidents and escapes, not a concurrent attacker.
 */
async function copyLive(liveRoot: string, from: string, to: string, rel: string): Promise<void> {
  for (const entry of await readdir(from, { withFileTypes: true })) {
    const path = rel === '' ? entry.name : `${rel}/${entry.name}`;
    // The manifest name is reserved; a stray one in live/ would be overwritten anyway.
    if (path === MANIFEST_NAME) continue;
    const source = join(from, entry.name);
    const dest = join(to, entry.name);
    if (entry.isDirectory()) {
      await mkdir(dest);
      await copyLive(liveRoot, source, dest, path);
    } else if (entry.isFile()) {
      await freeze(source, dest);
    } else if (entry.isSymbolicLink()) {
      await freeze(await linkTarget(liveRoot, source, path), dest);
    } else {
      throw refused(path, 'is not a regular file, folder or symlink');
    }
  }
}

async function linkTarget(liveRoot: string, source: string, path: string): Promise<string> {
  let real: string;
  try {
    real = await realpath(source);
  } catch (cause) {
    throw refused(path, 'is a dangling symlink', cause);
  }
  if (!real.startsWith(liveRoot + sep)) throw refused(path, 'is a symlink that leaves the live folder');
  if (!(await stat(real)).isFile()) throw refused(path, 'is a symlink to something other than a regular file');
  return real;
}

async function freeze(source: string, dest: string): Promise<void> {
  await copyFile(source, dest, constants.COPYFILE_EXCL);
  await chmod(dest, FROZEN_FILE);
}

function sameFiles(a: Manifest['files'], b: Manifest['files']): boolean {
  const keys = Object.keys(a);
  if (keys.length !== Object.keys(b).length) return false;
  return keys.every((path) => {
    const x = a[path];
    const y = Object.hasOwn(b, path) ? b[path] : undefined;
    return x !== undefined && y !== undefined && x.sha256 === y.sha256 && x.bytes === y.bytes;
  });
}

function infoOf(swarm: string, name: string, manifest: Manifest, text: string): SnapshotInfo {
  const entries = Object.values(manifest.files);
  return {
    swarm,
    name,
    createdAt: manifest.createdAt,
    files: entries.length,
    bytes: entries.reduce((sum, file) => sum + file.bytes, 0),
    digest: manifestDigest(text),
  };
}

function notFound(swarm: string, name: string): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_SNAPSHOT_NOT_FOUND', `snapshot ${name} of swarm ${swarm} does not exist`);
}

function taken(swarm: string, name: string, cause?: unknown): SandpoolError {
  const message = `snapshot ${name} of swarm ${swarm} already exists with different content`;
  return new SandpoolError('ERR_SANDPOOL_SNAPSHOT_EXISTS', message, cause === undefined ? {} : { cause });
}

function refused(path: string, why: string, cause?: unknown): SandpoolError {
  const message = `cannot snapshot live/${path}: it ${why}`;
  return new SandpoolError('ERR_SANDPOOL_MODULE_NOT_FOUND', message, cause === undefined ? {} : { cause });
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

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (error) {
    if (isMissingError(error)) return false;
    throw error;
  }
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
