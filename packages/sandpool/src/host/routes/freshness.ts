import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** Files stamped at most: a live folder past this is stamped by its first entries (and its count). */
const MAX_FILES = 5_000;
/** How long the files must stay unchanged before a reload loads them. */
export const STABLE_MS = 100;
/** Stamps taken at most while waiting for writes to stop, before loading what is there. */
const MAX_WAITS = 20;

/**
 * What the files below `dir` look like now: path, mtime and size of each. Two stamps that
 * differ mean a write happened between them. Size catches the write that lands in the same
 * coarse clock tick as the truncation before it. Errors give a stamp that matches nothing.
 * Synchronous on purpose: metadata calls are quick, and the coordinator's own file work must
 * not queue in the libuv pool behind a tenant's async jobs.
 */
export function stampFiles(dir: string): string {
  try {
    const entries = readdirSync(dir, { withFileTypes: true, recursive: true });
    const stamps: string[] = [`${entries.length}`];
    for (const entry of entries) {
      if (!entry.isFile()) continue;
      if (stamps.length > MAX_FILES) break;
      const file = join(entry.parentPath, entry.name);
      const info = statSync(file, { throwIfNoEntry: false });
      stamps.push(info === undefined ? `${file}\0gone` : `${file}\0${info.mtimeMs}\0${info.size}`);
    }
    return stamps.sort().join('\n');
  } catch {
    return `unreadable ${Math.random()}`;
  }
}

/**
 * Waits until the files have stayed unchanged for STABLE_MS (chokidar's `awaitWriteFinish`,
 * for a folder): a reload must not load a file caught half-written by an in-place write.
 * Returns the stamp it settled on, for the check after the load.
 */
export async function settledStamp(dir: string): Promise<string> {
  let before = stampFiles(dir);
  for (let wait = 0; wait < MAX_WAITS; wait++) {
    await sleep(STABLE_MS);
    const now = stampFiles(dir);
    if (now === before) return now;
    before = now;
  }
  return before;
}
