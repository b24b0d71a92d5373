import { realpathSync, statSync } from 'node:fs';
import { join, sep } from 'node:path';
import { moduleNotFound, type SandpoolError, snapshotNotFound } from '../../errors.js';
import type { ResolvedKey } from '../../key.js';
import { liveDir, snapshotDir } from '../../store/layout.js';
import { checkSignature, readManifest, snapshotDigest } from '../../store/manifest.js';
import { typeScriptInWorker } from './typescript.js';

export interface ModuleLocation {
  /** Real path of the module the worker imports: the agent, its stripped copy, or a snapshot bundle. */
  readonly file: string;
  /** Real path of the key's folder (live/ or the snapshot). */
  readonly folder: string;
  /** The snapshot folder to verify before loading; null for live code. */
  readonly verifyDir: string | null;
  /** sha256 of a snapshot bundle, from the manifest checked here (LoadRequest.sha256); null for live code. */
  readonly sha256: string | null;
  /** Folders the worker must read beyond its key's folder (type-stripped copies); see readPathsFor. */
  readonly extraReadDirs: readonly string[];
  /** The snapshot's digest (SnapshotInfo.digest); null for live code. */
  readonly digest: string | null;
}

export interface LocateOptions {
  /** With it, a snapshot's manifest must carry a valid HMAC (SNAPSHOT_CORRUPT otherwise). */
  readonly snapshotSecret?: string | undefined;
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
  const folder = key.snapshot === null ? liveDir(root, key.swarm) : snapshotDir(root, key.swarm, key.snapshot);
  const realFolder = realpathOrNull(folder);
  const realRoot = realpathOrNull(root);
  if (realFolder !== null && (realRoot === null || !realFolder.startsWith(realRoot + sep))) {
    // A swarm folder linked to somewhere else would let a key read outside the root.
    throw notFound(key, 'its folder resolves outside the root');
  }
  if (realFolder === null) {
    if (key.snapshot !== null) {
      throw snapshotNotFound(key.swarm, key.snapshot, key.text);
    }
    throw notFound(key, `swarm ${key.swarm} has no live folder`);
  }
  let digest: string | null = null;
  if (key.snapshot !== null) {
    const { manifest, text } = readManifest(realFolder, key.text);
    checkSignature(manifest, options.snapshotSecret, { swarm: key.swarm, name: key.snapshot }, key.text);
    digest = snapshotDigest(manifest, text);
    if (manifest.version === 2) {
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
        verifyDir: realFolder,
        sha256: entry.sha256,
        extraReadDirs: [],
        digest,
      };
    }
  }
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
      const stripped = await stripLiveTree(realRoot as string, key.swarm, realFolder, real);
      return {
        file: stripped.file,
        folder: realFolder,
        verifyDir: null,
        sha256: null,
        extraReadDirs: [stripped.dir],
        digest,
      };
    }
    return {
      file: real,
      folder: realFolder,
      verifyDir: key.snapshot === null ? null : realFolder,
      sha256: null,
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
