import { realpathSync, statSync } from 'node:fs';
import { dirname, join, sep } from 'node:path';
import { moduleNotFound, type SandpoolError, snapshotNotFound } from '../../errors.js';
import type { ResolvedKey } from '../../key.js';
import { liveDir } from '../../store/layout.js';
import { type ArtifactManifest, type ManifestV2, snapshotDigest } from '../../store/manifest.js';
import { readSnapshotName, type SnapshotRef } from '../../store/names.js';
import { typeScriptInWorker } from './typescript.js';

export interface ModuleLocation {
  /** Real path of the module the worker imports: the agent, its stripped copy, or a snapshot bundle. */
  readonly file: string;
  /** Real path of the key's folder: live/, the snapshot's artifact, or a snapshot folder made before artifacts. */
  readonly folder: string;
  /**
   * Real path of the folder whose contents (links included) are the tenant's to make: the
   * swarm's folder for live/ and old snapshot folders; for an artifact, its swarm's artifact
   * folder, which only the store writes.
   */
  readonly swarmFolder: string;
  /** The snapshot folder to verify before loading; null for live code. */
  readonly verifyDir: string | null;
  /** sha256 of a snapshot bundle, from the manifest checked here (LoadRequest.sha256); null for live code. */
  readonly sha256: string | null;
  /** Its size in bytes, from the same manifest (LoadRequest.bytes); null where sha256 is. */
  readonly bytes: number | null;
  /** Folders the worker must read beyond its key's folder (type-stripped copies); see readPathsFor. */
  readonly extraReadDirs: readonly string[];
  /** The snapshot's digest (SnapshotInfo.digest); null for live code. */
  readonly digest: string | null;
}

export interface LocateOptions {
  /** With it, a snapshot's manifest must carry a valid HMAC (SNAPSHOT_CORRUPT otherwise). */
  readonly snapshotSecret?: string | undefined;
  /** What a snapshot key's name resolved to when its route opened: the route serves that digest only. */
  readonly snapshot?: SnapshotRef | null;
}

export const EXTENSIONS = ['.mjs', '.js', '.cjs', '.mts', '.ts', '.cts'] as const;
const TYPESCRIPT = new Set<string>(['.mts', '.ts', '.cts']);

/**
 * Finds `<stem>.<ext>` for a key, with synchronous file calls (only Node 20's TypeScript
 * strip is asynchronous) (first of .mjs, .js, .cjs, .mts, .ts, .cts wins); its real
 * path must stay inside the key's folder. A self-contained snapshot answers from its manifest
 * instead: the stem's bundle, with the digest the worker must find.
 */
export async function locateModule(
  root: string,
  key: ResolvedKey,
  options: LocateOptions = {},
): Promise<ModuleLocation> {
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
    return fileIn(key, ref.dir, realFolder, realRoot, snapshotDigest(ref.manifest, ref.text));
  }
  const folder = liveDir(root, key.swarm);
  const realFolder = realpathOrNull(folder);
  if (realFolder !== null && (realRoot === null || !realFolder.startsWith(realRoot + sep))) {
    throw notFound(key, 'its folder resolves outside the root');
  }
  if (realFolder === null) throw notFound(key, `swarm ${key.swarm} has no live folder`);
  return fileIn(key, folder, realFolder, realRoot as string, null);
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
    extraReadDirs: [],
    digest: manifest.digest,
  };
}

/** `<stem>.<ext>` in live/ or in a snapshot made before bundling; its real path must stay in the folder. */
async function fileIn(
  key: ResolvedKey,
  folder: string,
  realFolder: string,
  realRoot: string,
  digest: string | null,
): Promise<ModuleLocation> {
  // live/, or snapshots/<name>/, right under the swarm's folder.
  const swarmFolder = key.snapshot === null ? dirname(realFolder) : dirname(dirname(realFolder));
  for (const extension of EXTENSIONS) {
    const real = realpathOrNull(join(folder, key.stem + extension));
    if (real === null) continue;
    if (!real.startsWith(realFolder + sep)) {
      throw notFound(key, `${key.stem}${extension} resolves outside its folder`);
    }
    if (!statSync(real).isFile()) continue;
    if (key.snapshot === null && TYPESCRIPT.has(extension) && !typeScriptInWorker()) {
      // Loaded on first use: only Nodes without type stripping (20) need it.
      const { stripLiveTree } = await import('./transpile.js');
      const stripped = await stripLiveTree(realRoot, key.swarm, realFolder, real);
      return {
        file: stripped.file,
        folder: realFolder,
        swarmFolder,
        verifyDir: null,
        sha256: null,
        bytes: null,
        extraReadDirs: [stripped.dir],
        digest,
      };
    }
    return {
      file: real,
      folder: realFolder,
      swarmFolder,
      verifyDir: key.snapshot === null ? null : realFolder,
      sha256: null,
      bytes: null,
      extraReadDirs: [],
      digest,
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
