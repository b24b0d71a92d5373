import { realpathSync, statSync } from 'node:fs';
import { dirname, join, sep } from 'node:path';
import {
  isSandpoolError,
  moduleLoad,
  moduleNotFound,
  type SandpoolError,
  snapshotCorrupt,
  snapshotNotFound,
} from '../../errors.js';
import type { ResolvedKey } from '../../key.js';
import { artifactDir } from '../../store/layout.js';
import type { LiveSource, LiveStem } from '../../store/live.js';
import { type ArtifactManifest, BUNDLES_DIR, type ManifestV2, snapshotDigest } from '../../store/manifest.js';
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
  /**
   * Whether the folder is an artifact: the store made it, of copies and bundles, never a link,
   * and froze it. A folder of the tenant's making (a snapshot folder made before artifacts) is
   * walked for links that leave it at each start; an artifact needs no walk.
   */
  readonly artifact: boolean;
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
  /** A live key's stem in the artifact its swarm runs from now, built off this thread (see SnapshotStore's helper). */
  readonly live: LiveSource;
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
      return { ...bundleOf(key, ref.artifact.dir, dirname(ref.artifact.dir), ref.artifact.manifest), artifact: true };
    const realFolder = realpathOrNull(ref.dir);
    if (realFolder === null) throw snapshotNotFound(key.swarm, key.snapshot, key.text);
    if (realRoot === null || !realFolder.startsWith(realRoot + sep)) {
      // A swarm folder linked to somewhere else would let a key read outside the root.
      throw notFound(key, 'its folder resolves outside the root');
    }
    if (ref.manifest.version === 2) return bundleOf(key, realFolder, dirname(dirname(realFolder)), ref.manifest);
    return fileIn(key, ref.dir, realFolder, snapshotDigest(ref.manifest, ref.text));
  }
  const built = await liveStem(key, options.live);
  if (built.failure !== null) throw moduleLoad(built.failure, key.text);
  if (built.sha256 === null) throw notFound(key, `no ${key.stem}.mjs, .js, .cjs, .mts, .ts or .cts in live/`);
  // Where the helper built it, and the digest of the stem's bundle: no manifest is read on this
  // thread at a start (one may take megabytes to parse); the worker checks the bundle's bytes.
  const dir = realpathOrNull(artifactDir(root, key.swarm, built.digest));
  if (dir === null) {
    throw snapshotCorrupt(`live content ${built.digest.slice(0, 12)} is missing from the artifact store`, key.text);
  }
  // The cache folder linked elsewhere would let a key read outside the root.
  if (realRoot === null || !dir.startsWith(realRoot + sep)) {
    throw snapshotCorrupt('live content resolves outside the root', key.text);
  }
  return {
    file: join(dir, BUNDLES_DIR, `${key.stem}.mjs`),
    folder: dir,
    swarmFolder: dirname(dir),
    verifyDir: dir,
    sha256: built.sha256,
    bytes: built.bytes,
    digest: built.digest,
    artifact: true,
  };
}

/**
 * A live folder the build refuses whole (a link, hard link, FIFO or device that leaves it,
 * more than maxSnapshotBytes) holds nothing that may run: MODULE_NOT_FOUND, with the build's
 * reason (its place in the swarm, no host path), as for a swarm with no live folder. A stem
 * that fails to bundle is the stem's MODULE_LOAD (see locateModule).
 */
async function liveStem(key: ResolvedKey, live: LiveSource): Promise<LiveStem> {
  try {
    return await live(key.swarm, key.stem);
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
    artifact: false,
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
    return {
      file: real,
      folder: realFolder,
      swarmFolder,
      verifyDir: realFolder,
      sha256: null,
      bytes: null,
      digest,
      artifact: false,
    };
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
