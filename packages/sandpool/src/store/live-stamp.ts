/**
 * Whether a live key's last artifact still holds what its folder holds, without building it
 * again: a stamp of live/'s entries and of every input the last build read from a package
 * folder, by metadata alone (nothing is opened, so a FIFO cannot hold it up). Two stamps
 * that differ mean something was written, moved or linked in between.
 */
import { createHash } from 'node:crypto';
import type { BigIntStats, Dirent } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { isInside } from './confine.js';

/** Entries of live/ stamped at most: past it no stamp is taken, and every start builds (and a build refuses it by its bytes). */
const MAX_ENTRIES = 100_000;

/**
 * live/'s entries (its node_modules folders by their own entry, not their contents): path,
 * type, inode, size, mtime and ctime of each. Null when live/ is past MAX_ENTRIES or cannot
 * be read.
 */
export async function treeStamp(liveReal: string): Promise<string | null> {
  const hash = createHash('sha256');
  let count = 0;
  const walk = async (dir: string, rel: string): Promise<boolean> => {
    const entries: Dirent[] = await readdir(dir, { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const entry of entries) {
      if (++count > MAX_ENTRIES) return false;
      const path = join(dir, entry.name);
      const shown = rel === '' ? entry.name : `${rel}/${entry.name}`;
      hash.update(`${shown}\0${stampOf(await lstat(path, { bigint: true }))}\n`);
      if (entry.isDirectory() && entry.name !== 'node_modules' && !(await walk(path, shown))) return false;
    }
    return true;
  };
  try {
    return (await walk(liveReal, '')) ? hash.digest('hex') : null;
  } catch {
    return null;
  }
}

/**
 * The inputs a build read outside live/'s own files (packages: the swarm's node_modules and
 * the operator's), each with the folders above it up to its package folder: a file rewritten,
 * or a link on the way re-pointed (which rewrites its folder), changes it.
 */
export async function inputsStamp(read: readonly string[], anchors: readonly string[]): Promise<string | null> {
  const hash = createHash('sha256');
  const seen = new Set<string>();
  try {
    for (const path of [...read].sort()) {
      hash.update(`${path}\0${stampOf(await lstat(path, { bigint: true }))}\n`);
      const anchor = anchors.find((folder) => isInside(folder, path));
      if (anchor === undefined) continue;
      for (let dir = dirname(path); dir !== anchor && isInside(anchor, dir); dir = dirname(dir)) {
        if (seen.has(dir)) break;
        seen.add(dir);
        hash.update(`${dir}\0${stampOf(await lstat(dir, { bigint: true }))}\n`);
      }
    }
    return hash.digest('hex');
  } catch {
    // Gone or unreadable: it has changed.
    return null;
  }
}

function stampOf(info: BigIntStats): string {
  return `${info.mode}:${info.ino}:${info.size}:${info.mtimeNs}:${info.ctimeNs}`;
}
