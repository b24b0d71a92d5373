/**
 * Artifacts: the immutable, content-addressed folders keys run from,
 * `<root>/.sandpool-cache/artifacts/<swarm>/<digest>/` (files, bundles, manifest), made
 * read-only once built. Names (pointers) live elsewhere; this module only builds, finds,
 * verifies and collects content.
 */
import { type Dirent, lstatSync, realpathSync } from 'node:fs';
import { chmod, lstat, mkdir, readdir, realpath, rename, stat, utimes, writeFile } from 'node:fs/promises';
import { join, sep } from 'node:path';
import { isSandpoolError, type SandpoolError, snapshotBuild, snapshotCorrupt, swarmNotFound } from '../errors.js';
import { bundleStem, type StemBundle } from './bundle.js';
import { checkBundlerReads } from './bundler-reads.js';
import { buildInputs, isInside, placeOf, readInput } from './confine.js';
import { artifactDir, artifactsDir, liveDir, REMOVING_PREFIX, TEMP_PREFIX } from './layout.js';
import { removeTree, sweepWorkFolders, workFolderName } from './leftovers.js';
import { InputProbe } from './live-stamp.js';
import {
  type ArtifactManifest,
  BUNDLES_DIR,
  contentDigest,
  hashTree,
  MANIFEST_NAME,
  readManifest,
  serializeManifest,
  verifyAgainst,
} from './manifest.js';
import { UnsafeFileError } from './safe-read.js';

/** Default bound on the bytes one build reads and writes (copies, bundle inputs and bundles). */
export const DEFAULT_MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024;

const FROZEN_FILE = 0o444;
const FROZEN_DIR = 0o555;
/**
 * How long content no name points to is kept (from when it was built, or last named or
 * unnamed): a pool elsewhere that admitted a call just before a name moved may still be
 * starting its worker from it.
 */
export const UNUSED_ARTIFACT_MS = 10 * 60 * 1000;
const DIGEST = /^[0-9a-f]{64}$/;
/**
 * What one file or folder of live/ costs beyond its bytes: its inode, and its entry in the
 * manifest the coordinator parses when a name resolves. Without it, many empty files cost
 * nothing against maxSnapshotBytes yet fill the disk's inodes and swell the manifest.
 */
export const ENTRY_BYTES = 256;

/**
 * What a build counts against maxSnapshotBytes for these files at least: their bytes, and for
 * each its entry (ENTRY_BYTES plus its path). A build counts its folders and what its bundles
 * read too, so any artifact a build made fits its maxSnapshotBytes by this count.
 */
export function filesCost(files: ArtifactManifest['files']): number {
  let cost = 0;
  for (const [path, file] of Object.entries(files)) cost += file.bytes + ENTRY_BYTES + Buffer.byteLength(path);
  return cost;
}

export interface BuiltArtifact {
  /** Its content digest, which is also its folder's name. */
  readonly digest: string;
  readonly manifest: ArtifactManifest;
  /** `<root>/.sandpool-cache/artifacts/<swarm>/<digest>`. */
  readonly dir: string;
}

/** What a build made, and what it learnt on the way. */
export interface Build extends BuiltArtifact {
  /**
   * Stems whose bundle failed, with why (a live build only: a snapshot fails whole). A live
   * swarm's one broken file must not stop its other stems.
   */
  readonly failures: Readonly<Record<string, string>>;
  /** A live build's: what its bundles looked at, stamped before they looked (see InputProbe); null for a snapshot. */
  readonly probe: InputProbe | null;
}

/** A finished build, about to be renamed into place. */
export interface FinishedBuild {
  readonly manifest: ArtifactManifest;
  /** Its work folder. */
  readonly temp: string;
  /** Bytes of its manifest file. */
  readonly manifestBytes: number;
}

export interface BuildOptions {
  /** Bytes the build may read and write; over it, ERR_SANDPOOL_SNAPSHOT_BUILD. */
  readonly maxBytes: number;
  /** A snapshot, which fails whole on any stem; or a live key's artifact, which records a stem's failure. */
  readonly making: 'snapshot' | 'live';
  /**
   * Runs `publish` (the rename into place) if the build may be added, or throws: the store
   * checks its swarm's bounds here. Without it, the build is published.
   */
  readonly admit?: (build: FinishedBuild, publish: () => Promise<void>) => Promise<void>;
}

/**
 * Builds an artifact from a swarm's live/ folder: a copy of its own files (node_modules left
 * out) plus one bundle per stem holding everything it imports. Content already there under
 * the same digest is reused (and left as it was). Runs off the coordinator's thread (the
 * snapshot helper, or a pool that may not start one).
 */
export async function buildArtifact(root: string, swarm: string, options: BuildOptions): Promise<Build> {
  const live = await liveReal(root, swarm);
  const inputs = await buildInputs(await realpath(root), swarm);
  if (placeOf(inputs, live) !== 'swarm')
    throw snapshotBuild("cannot snapshot live/: it leads out of the swarm's folder");
  const parent = artifactsDir(root, swarm);
  await mkdir(parent, { recursive: true });
  await sweepWorkFolders(parent);
  const temp = join(parent, workFolderName(TEMP_PREFIX));
  let published = false;
  try {
    await mkdir(temp);
    const budget = { left: options.maxBytes };
    await copyLive(live, temp, '', budget, options);
    await checkBundlerReads(inputs, options.making);
    const stems = await findStems(live);
    const stemPaths: Record<string, string> = {};
    const failures: Record<string, string> = {};
    const probe = options.making === 'live' ? new InputProbe([inputs.swarmReal, ...inputs.packages]) : null;
    if (stems.length > 0) await mkdir(join(temp, BUNDLES_DIR));
    for (const [stem, file] of stems) {
      let bundle: StemBundle;
      try {
        bundle = await bundleStem(file, {
          liveReal: live,
          inputs,
          budget,
          making: options.making,
          ...(probe === null ? {} : { probe }),
        });
      } catch (error) {
        if (options.making === 'snapshot' || !isSandpoolError(error, 'ERR_SANDPOOL_SNAPSHOT_BUILD')) throw error;
        failures[stem] = error.message;
        continue;
      }
      const size = bundle.code.length + bundle.map.length;
      if (size > budget.left) throw tooLarge(options.maxBytes);
      budget.left -= size;
      const rel = `${BUNDLES_DIR}/${stem}.mjs`;
      await writeFile(join(temp, BUNDLES_DIR, `${stem}.mjs`), bundle.code, { flag: 'wx', mode: FROZEN_FILE });
      // In the manifest like every file, so in the digest: a trace is part of what a key runs.
      await writeFile(join(temp, BUNDLES_DIR, `${stem}.mjs.map`), bundle.map, { flag: 'wx', mode: FROZEN_FILE });
      stemPaths[stem] = rel;
    }
    // Hash the copy, not live/: the manifest must describe exactly what was frozen,
    // even if live/ changes while we copy.
    const files = await hashTree(temp);
    const manifest: ArtifactManifest = {
      version: 3,
      swarm,
      digest: contentDigest(files, stemPaths),
      files,
      stems: stemPaths,
    };
    const manifestText = serializeManifest(manifest);
    await writeFile(join(temp, MANIFEST_NAME), manifestText, { flag: 'wx', mode: FROZEN_FILE });
    await chmod(join(temp, MANIFEST_NAME), FROZEN_FILE);
    await freezeFolders(temp);
    const dir = artifactDir(root, swarm, manifest.digest);
    const publish = async (): Promise<void> => {
      try {
        await rename(temp, dir);
        published = true;
      } catch (error) {
        // Same digest, same content: the one there stays.
        if (!isTakenError(error)) throw error;
      }
    };
    const admit = options.admit ?? ((_build: FinishedBuild, go: () => Promise<void>) => go());
    await admit({ manifest, temp, manifestBytes: Buffer.byteLength(manifestText) }, publish);
    return { digest: manifest.digest, manifest, dir, failures, probe };
  } finally {
    if (!published) await removeTree(temp);
  }
}

/**
 * The artifact `digest` of `swarm`, its manifest checked to be that swarm's and that digest's
 * (a folder copied from another swarm, or renamed, is CORRUPT; a missing one is CORRUPT too:
 * a name points to it). Synchronous and small: it runs when a key resolves. Files are not
 * rehashed here; see verifyArtifact, and the worker checks its bundle's bytes.
 */
export function locateArtifact(root: string, swarm: string, digest: string, key?: string): BuiltArtifact {
  if (!DIGEST.test(digest)) throw snapshotCorrupt('snapshot names a malformed digest', key);
  const dir = artifactDir(root, swarm, digest);
  const info = lstatSync(dir, { throwIfNoEntry: false });
  if (info === undefined || !info.isDirectory()) {
    throw snapshotCorrupt(`snapshot content ${digest.slice(0, 12)} is missing from the artifact store`, key);
  }
  const real = realpathSync.native(dir);
  const realRoot = realpathSync.native(root);
  // The cache folder linked elsewhere would let a key read outside the root.
  if (!real.startsWith(realRoot + sep)) throw snapshotCorrupt('snapshot content resolves outside the root', key);
  const { manifest } = readManifest(real, key);
  if (manifest.version !== 3 || manifest.swarm !== swarm || manifest.digest !== digest) {
    throw snapshotCorrupt(
      `artifact ${digest.slice(0, 12)} of swarm ${swarm} holds another swarm's or digest's manifest`,
      key,
    );
  }
  return { digest, manifest, dir: real };
}

/** locateArtifact, then every file rehashed against the manifest (CORRUPT on any difference). */
export async function verifyArtifact(
  root: string,
  swarm: string,
  digest: string,
  key?: string,
): Promise<BuiltArtifact> {
  const artifact = locateArtifact(root, swarm, digest, key);
  await verifyAgainst(artifact.dir, artifact.manifest, key);
  return artifact;
}

/**
 * Marks an artifact as just named or just unnamed, so a sweep keeps it for UNUSED_ARTIFACT_MS.
 * False when it is gone (a sweep took it): the caller builds it again.
 */
export async function touchArtifact(root: string, swarm: string, digest: string): Promise<boolean> {
  const now = new Date();
  try {
    await utimes(artifactDir(root, swarm, digest), now, now);
    return true;
  } catch (error) {
    if (isMissingError(error)) return false;
    throw error;
  }
}

/**
 * Removes a swarm's artifacts that no name points to and that were neither built, named nor
 * unnamed for UNUSED_ARTIFACT_MS. Each is renamed away first and checked again after: a create
 * that touched it meanwhile, or a name that took it, puts it back. Best effort.
 */
export async function sweepUnused(root: string, swarm: string, named: () => ReadonlySet<string>): Promise<void> {
  const parent = artifactsDir(root, swarm);
  let entries: string[];
  try {
    entries = await readdir(parent);
  } catch {
    return;
  }
  const unused = (digest: string, path: string): boolean => {
    const info = lstatSync(path, { throwIfNoEntry: false });
    return info !== undefined && Date.now() - info.mtimeMs > UNUSED_ARTIFACT_MS && !named().has(digest);
  };
  for (const digest of entries) {
    if (!DIGEST.test(digest) || !unused(digest, join(parent, digest))) continue;
    const doomed = join(parent, workFolderName(REMOVING_PREFIX));
    try {
      await rename(join(parent, digest), doomed);
    } catch {
      continue;
    }
    if (!unused(digest, doomed)) {
      try {
        await rename(doomed, join(parent, digest));
        continue;
      } catch {
        // Built again meanwhile: that copy serves, this one goes.
      }
    }
    await removeTree(doomed);
  }
}

/** Makes every folder of a finished artifact read-only, deepest first. */
export async function freezeFolders(dir: string): Promise<void> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) await freezeFolders(join(dir, entry.name));
  }
  await chmod(dir, FROZEN_DIR);
}

async function liveReal(root: string, swarm: string): Promise<string> {
  try {
    const real = await realpath(liveDir(root, swarm));
    if ((await stat(real)).isDirectory()) return real;
  } catch (error) {
    if (!isMissingError(error)) throw error;
  }
  throw swarmNotFound(swarm, 'has no live folder');
}

/**
 * Copies `live/` file by file, read-only; node_modules folders are left out (what the stems
 * use from them is in the bundles, and pnpm's links could not be copied anyway). Symlinks are
 * never copied as links: one whose real target is a regular file inside live/ is copied as
 * that file's contents; one that escapes live/, dangles (left out of a live key's artifact
 * instead), or points at a folder (which could loop) is refused, as is any FIFO, socket or
 * device (by its type, never opened). Each file is
 * read as confine.ts reads a build input: proven to sit in live/ with one name when its bytes
 * are read, so a file or folder swapped mid-copy is refused rather than followed or waited on.
 */
async function copyLive(
  liveRoot: string,
  to: string,
  rel: string,
  budget: { left: number },
  options: BuildOptions,
): Promise<void> {
  const { maxBytes, making } = options;
  const from = rel === '' ? liveRoot : join(liveRoot, ...rel.split('/'));
  let entries: Dirent[];
  try {
    entries = await readdir(from, { withFileTypes: true });
  } catch (cause) {
    throw refusedBuild(making, rel === '' ? '' : rel, 'disappeared while it was being read', cause);
  }
  for (const entry of entries) {
    const path = rel === '' ? entry.name : `${rel}/${entry.name}`;
    // Reserved names: a stray one in live/ would be overwritten anyway.
    if (path === MANIFEST_NAME || path === BUNDLES_DIR) continue;
    const cost = ENTRY_BYTES + Buffer.byteLength(path);
    if (cost > budget.left) throw tooLarge(maxBytes);
    budget.left -= cost;
    const source = join(from, entry.name);
    const dest = join(to, entry.name);
    if (entry.isDirectory()) {
      if (entry.name === 'node_modules') continue;
      await mkdir(dest);
      await copyLive(liveRoot, dest, path, budget, options);
    } else if (entry.isFile()) {
      await freeze(liveRoot, source, dest, path, budget, options);
    } else if (entry.isSymbolicLink()) {
      const target = await linkTarget(liveRoot, source, path, making);
      if (target !== null) await freeze(liveRoot, target, dest, path, budget, options);
    } else {
      // Refused by its type alone: a FIFO is never opened.
      throw refusedBuild(making, path, 'is not a regular file, folder or symlink');
    }
  }
}

async function linkTarget(
  liveRoot: string,
  source: string,
  path: string,
  making: BuildOptions['making'],
): Promise<string | null> {
  let real: string;
  try {
    real = await realpath(source);
  } catch (cause) {
    // A live folder being edited has them (an editor's lock file is one): it leads nowhere, so it is left out.
    if (making === 'live' && isMissingError(cause)) return null;
    throw refusedBuild(making, path, 'is a dangling symlink', cause);
  }
  if (!isInside(liveRoot, real)) throw refusedBuild(making, path, 'is a symlink that leaves the live folder');
  const target = await lstat(real).catch((cause: unknown) => {
    throw refusedBuild(making, path, 'disappeared while it was being read', cause);
  });
  if (!target.isFile()) throw refusedBuild(making, path, 'is a symlink to something other than a regular file');
  return real;
}

async function freeze(
  liveRoot: string,
  source: string,
  dest: string,
  path: string,
  budget: { left: number },
  { maxBytes, making }: BuildOptions,
): Promise<void> {
  let bytes: Buffer;
  try {
    // Proven to sit in live/ when read: a folder on the way swapped for a link is caught.
    ({ bytes } = await readInput(source, (real) => (isInside(liveRoot, real) ? 'swarm' : null), budget.left));
  } catch (error) {
    if (!(error instanceof UnsafeFileError)) throw error;
    if (error.reason === 'too-large') throw tooLarge(maxBytes, error);
    throw refusedBuild(making, path, error.message, error);
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

function tooLarge(maxBytes: number, cause?: unknown): SandpoolError {
  return snapshotBuild(
    `snapshot would take more than maxSnapshotBytes (${maxBytes} bytes, files and bundles together, sparse files at their full size)`,
    cause,
  );
}

function refusedBuild(making: BuildOptions['making'], path: string, why: string, cause?: unknown): SandpoolError {
  return snapshotBuild(`cannot ${making === 'snapshot' ? 'snapshot' : 'build'} live/${path}: it ${why}`, cause);
}

function errnoCode(error: unknown): unknown {
  return typeof error === 'object' && error !== null && 'code' in error ? error.code : undefined;
}

export function isMissingError(error: unknown): boolean {
  const code = errnoCode(error);
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/** rename(2) onto a non-empty folder fails with ENOTEMPTY (EEXIST on some systems); onto a file, ENOTDIR. */
export function isTakenError(error: unknown): boolean {
  const code = errnoCode(error);
  return code === 'ENOTEMPTY' || code === 'EEXIST' || code === 'ENOTDIR';
}
