import { realpath, stat } from 'node:fs/promises';
import { join, sep } from 'node:path';
import { SandpoolError } from '../errors.js';
import type { ResolvedKey } from '../key.js';
import { liveDir, snapshotDir } from '../store/layout.js';

export interface ModuleLocation {
  /** Real path of the agent module, inside its key's folder. */
  readonly file: string;
  /** The snapshot folder to verify before loading; null for live code. */
  readonly verifyDir: string | null;
}

const EXTENSIONS = ['.mjs', '.js', '.cjs'] as const;

/** Finds `<stem>.mjs|.js|.cjs` for a key; its real path must stay inside the key's folder. */
export async function locateModule(root: string, key: ResolvedKey): Promise<ModuleLocation> {
  const folder = key.snapshot === null ? liveDir(root, key.swarm) : snapshotDir(root, key.swarm, key.snapshot);
  const realFolder = await realpathOrNull(folder);
  const realRoot = await realpathOrNull(root);
  if (realFolder !== null && (realRoot === null || !realFolder.startsWith(realRoot + sep))) {
    // A swarm folder linked to somewhere else would let a key read outside the root.
    throw notFound(key, 'its folder resolves outside the root');
  }
  if (realFolder === null) {
    if (key.snapshot !== null) {
      throw new SandpoolError(
        'ERR_SANDPOOL_SNAPSHOT_NOT_FOUND',
        `snapshot ${key.swarm}@${key.snapshot} does not exist`,
        {
          key: key.text,
        },
      );
    }
    throw notFound(key, `swarm ${key.swarm} has no live folder`);
  }
  for (const extension of EXTENSIONS) {
    const real = await realpathOrNull(join(folder, key.stem + extension));
    if (real === null) continue;
    if (!real.startsWith(realFolder + sep)) {
      throw notFound(key, `${key.stem}${extension} resolves outside its folder`);
    }
    if ((await stat(real)).isFile()) {
      return { file: real, verifyDir: key.snapshot === null ? null : realFolder };
    }
  }
  throw notFound(key, `no ${key.stem}.mjs, .js or .cjs`);
}

function notFound(key: ResolvedKey, detail: string): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_MODULE_NOT_FOUND', `agent ${key.text} not found: ${detail}`, {
    key: key.text,
  });
}

async function realpathOrNull(path: string): Promise<string | null> {
  try {
    return await realpath(path);
  } catch (error) {
    if (isMissing(error)) return null;
    throw error;
  }
}

function isMissing(error: unknown): boolean {
  const code = (error as { code?: unknown }).code;
  return code === 'ENOENT' || code === 'ENOTDIR' || code === 'ELOOP';
}
