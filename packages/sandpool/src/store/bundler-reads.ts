/**
 * What the bundler opens itself, never through the build's guarded reads (confine.ts): the
 * `package.json` of every folder its resolution looks in, and Yarn's PnP maps in the folders
 * above its working folder, each read whole, with no bound and no check of what it is (measured
 * with FIFOs; a `tsconfig.json` it does not read, as the build gives it one). In the tenant's
 * folders each must be a regular file of bounded size before a build starts, and no link may
 * lead the resolution out of them: a FIFO there held the build forever, and a link to
 * /dev/zero or a sparse file of gigabytes grew the bundler's process until the kernel ended it
 * (3 GB for 1 GiB; at 1.2 GiB the helper itself crashed on esbuild's reply), failing every
 * swarm's build in flight. A file swapped in while the build runs is not caught here: the
 * bundler's death is survived (see bundleStem), a hang ends with close().
 */
import type { Dirent } from 'node:fs';
import { lstat, readdir, realpath, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { type SandpoolError, snapshotBuild } from '../errors.js';
import { type BuildInputs, placeOf, shownPath } from './confine.js';

/** The files esbuild reads itself where it resolves. */
const BUNDLER_READS: ReadonlySet<string> = new Set(['package.json', '.pnp.js', '.pnp.cjs', '.pnp.data.json']);

/** Largest such file read: real ones are kilobytes (7.8 KB the largest package.json on this project's machines). */
export const MAX_BUNDLER_READ_BYTES = 1024 * 1024;

/** Entries of the swarm's folder looked at, at most: a node_modules is large, but not without bound. */
const MAX_ENTRIES = 1_000_000;

/**
 * Refuses (SNAPSHOT_BUILD, naming the file relative to the swarm) a swarm whose folder, its
 * snapshots aside, holds a file the bundler would read itself that is not a regular file within
 * MAX_BUNDLER_READ_BYTES, or a link that leads out of the swarm's folder and its package folders.
 */
export async function checkBundlerReads(inputs: BuildInputs, making: 'snapshot' | 'live'): Promise<void> {
  const refuse = (path: string, why: string): SandpoolError =>
    snapshotBuild(`cannot ${making === 'snapshot' ? 'snapshot' : 'build'} ${shownPath(inputs, path)}: it ${why}`);
  let seen = 0;
  const walk = async (dir: string, top: boolean): Promise<void> => {
    let entries: Dirent[];
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch {
      return; // Gone meanwhile: nothing there to read.
    }
    for (const entry of entries) {
      if (++seen > MAX_ENTRIES) throw refuse(inputs.swarmReal, `holds over ${MAX_ENTRIES} entries`);
      const path = join(dir, entry.name);
      if (entry.isDirectory()) {
        if (!(top && entry.name === 'snapshots')) await walk(path, false);
      } else if (entry.isSymbolicLink()) {
        const real = await realpath(path).catch(() => null);
        // Dangling: it leads nowhere the bundler could read.
        if (real === null) continue;
        if (placeOf(inputs, real) === null) {
          throw refuse(path, "is a symlink that leads outside the swarm's folder and its package folders");
        }
        if (BUNDLER_READS.has(entry.name)) checkSize(await stat(real).catch(() => null), path, refuse);
      } else if (BUNDLER_READS.has(entry.name)) {
        checkSize(await lstat(path).catch(() => null), path, refuse);
      }
    }
  };
  await walk(inputs.swarmReal, true);
}

function checkSize(
  info: { isFile(): boolean; size: number } | null,
  path: string,
  refuse: (path: string, why: string) => SandpoolError,
): void {
  // Gone meanwhile: nothing there to read.
  if (info === null) return;
  if (!info.isFile()) throw refuse(path, 'is not a regular file, and the bundler would read it whole');
  if (info.size > MAX_BUNDLER_READ_BYTES) {
    throw refuse(path, `holds ${info.size} bytes, over the ${MAX_BUNDLER_READ_BYTES} a bundler's own read may take`);
  }
}
