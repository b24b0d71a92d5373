import { realpathSync, statSync } from 'node:fs';
import { dirname, join, sep } from 'node:path';
import { isSandpoolError, moduleLoad, moduleNotFound, type SandpoolError, snapshotNotFound } from '../../errors.js';
import type { ResolvedKey } from '../../key.js';
import { locateArtifact } from '../../store/artifact.js';
import type { LiveArtifact } from '../../store/live.js';
import { type ArtifactManifest, type ManifestV2, snapshotDigest } from '../../store/manifest.js';
import { readSnapshotName, type SnapshotRef } from '../../store/names.js';

export interface ModuleLocation {
  /** Real path of the module the worker imports: the stem's bundle, or a file of a snapshot folder made before bundling. */
  readonly file: string;
  /** Real path of the key's folder: its artifact, or a snapshot folder made before artifacts. */
  readonly folder: string;
  /**
   * Real path of the folder whose contents (links included) are the tenant's to make: for an
   * artifact, its swarm's artifact folder, which only the store writes; the swarm's folder
   * for an old snapshot folder.
   */
  readonly swarmFolder: string;
  /** The folder to verify before loading. */
  readonly verifyDir: string;
  /** sha256 of the bundle, from the manifest checked here (LoadRequest.sha256); null for an old snapshot folder. */
  readonly sha256: string | null;
  /** Its size in bytes, from the same manifest (LoadRequest.bytes); null where sha256 is. */
  readonly bytes: number | null;
  /** The content's digest (SnapshotInfo.digest; a live key's artifact's). */
  readonly digest: string;
}

export interface LocateOptions {
  /** With it, a snapshot's manifest must carry a valid HMAC (SNAPSHOT_CORRUPT otherwise). */
  readonly snapshotSecret?: string | undefined;
  /** What a snapshot key's name resolved to when its route opened: the route serves that digest only. */
  readonly snapshot?: SnapshotRef | null;
  /** The artifact a swarm's live keys run from now, built off this thread (see SnapshotStore.live). */
  readonly live: (swarm: string) => Promise<LiveArtifact>;
}

export const EXTENSIONS = ['.mjs', '.js', '.cjs', '.mts', '.ts', '.cts'] as const;

/**
 * Where a key's module is: the stem's bundle in its artifact (a live key's, built from live/
 * when it changed; a snapshot name's, from its pointer), with the digest the worker must
 * find. A snapshot folder made before artifacts answers from its own files.
 */
export async function locateModule(root: string, key: ResolvedKey, options: LocateOptions): Promise<ModuleLocation> {
  const realRoot = realpathOrNull(root);
  if (key.snapshot !== null) {
    const ref = options.snapshot ?? readSnapshotName(root, key.swarm, key.snapshot, options.snapshotSecret, key.text);
    if (ref.kind === 'pointer')
      return bundleOf(key, ref.artifact.dir, dirname(ref.artifact.dir), ref.artifact.manifest);
    const realFolder = realpathOrNull(ref.dir);
    if (realFolder === null) throw snapshotNotFound(key.swarm, key.snapshot, key.text);
    if (realRoot === null || !realFolder.startsWith(realRoot + sep)) {
      // A swarm folder linked to somewhere else would let a key read outside the root.
      throw notFound(key, 'its folder resolves outside the root');
    }
    if (ref.manifest.version === 2) return bundleOf(key, realFolder, dirname(dirname(realFolder)), ref.manifest);
    return fileIn(key, ref.dir, realFolder, snapshotDigest(ref.manifest, ref.text));
  }
  const built = await liveArtifact(key, options.live);
  const failure = Object.hasOwn(built.failures, key.stem) ? built.failures[key.stem] : undefined;
  if (failure !== undefined) throw moduleLoad(failure, key.text);
  const artifact = locateArtifact(root, key.swarm, built.digest, key.text);
  if (!Object.hasOwn(artifact.manifest.stems, key.stem)) {
    throw notFound(key, `no ${key.stem}.mjs, .js, .cjs, .mts, .ts or .cts in live/`);
  }
  return bundleOf(key, artifact.dir, dirname(artifact.dir), artifact.manifest);
}

/**
 * A live folder the build refuses whole (a link, hard link, FIFO or device that leaves it,
 * more than maxSnapshotBytes) holds nothing that may run: MODULE_NOT_FOUND, with the build's
 * reason (its place in the swarm, no host path), as for a swarm with no live folder. A stem
 * that fails to bundle is the stem's MODULE_LOAD (see locateModule).
 */
async function liveArtifact(key: ResolvedKey, live: LocateOptions['live']): Promise<LiveArtifact> {
  try {
    return await live(key.swarm);
  } catch (error) {
    if (isSandpoolError(error, 'ERR_SANDPOOL_SWARM_NOT_FOUND')) {
      throw notFound(key, `swarm ${key.swarm} has no live folder`);
    }
    if (isSandpoolError(error, 'ERR_SANDPOOL_SNAPSHOT_BUILD')) {
      throw moduleNotFound(`agent ${key.text} not found: ${error.message}`, key.text, error);
    }
    throw error;
  }
}

/** A self-contained snapshot answers from its manifest: the stem's bundle, with the digest the worker must find. */
function bundleOf(
  key: ResolvedKey,
  realFolder: string,
  swarmFolder: string,
  manifest: ManifestV2 | ArtifactManifest,
): ModuleLocation {
  const rel = Object.hasOwn(manifest.stems, key.stem) ? manifest.stems[key.stem] : undefined;
  const entry = rel !== undefined && Object.hasOwn(manifest.files, rel) ? manifest.files[rel] : undefined;
  if (rel === undefined || entry === undefined) {
    const stems = Object.keys(manifest.stems).sort();
    const have = stems.length === 0 ? 'it has no stems' : `its stems are ${stems.slice(0, 20).join(', ')}`;
    throw notFound(key, `snapshot ${key.snapshot} has no stem ${key.stem} (${have})`);
  }
  return {
    file: join(realFolder, ...rel.split('/')),
    folder: realFolder,
    swarmFolder,
    verifyDir: realFolder,
    sha256: entry.sha256,
    bytes: entry.bytes,
    digest: manifest.digest,
  };
}

/** `<stem>.<ext>` in a snapshot folder made before bundling; its real path must stay in the folder. */
function fileIn(key: ResolvedKey, folder: string, realFolder: string, digest: string): ModuleLocation {
  // snapshots/<name>/, right under the swarm's folder.
  const swarmFolder = dirname(dirname(realFolder));
  for (const extension of EXTENSIONS) {
    const real = realpathOrNull(join(folder, key.stem + extension));
    if (real === null) continue;
    if (!real.startsWith(realFolder + sep)) {
      throw notFound(key, `${key.stem}${extension} resolves outside its folder`);
    }
    if (!statSync(real).isFile()) continue;
    return { file: real, folder: realFolder, swarmFolder, verifyDir: realFolder, sha256: null, bytes: null, digest };
  }
  throw notFound(key, `no ${key.stem}.mjs, .js, .cjs, .mts, .ts or .cts`);
}

function notFound(key: ResolvedKey, detail: string): SandpoolError {
  return moduleNotFound(`agent ${key.text} not found: ${detail}`, key.text);
}

/** Synchronous: resolving a key must not queue in the libuv pool behind a tenant's async jobs. */
function realpathOrNull(path: string): string | null {
  try {
    return realpathSync.native(path);
  } catch (error) {
    if (isMissing(error)) return null;
    throw error;
  }
}

function isMissing(error: unknown): boolean {
  const code = (error as { code?: unknown }).code;
  return code === 'ENOENT' || code === 'ENOTDIR' || code === 'ELOOP';
}
