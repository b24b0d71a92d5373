import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * What the files below `dir` look like now: path, mtime and size of each. Two stamps that
 * differ mean a write happened between them. Size catches the write that lands in the same
 * coarse clock tick as the truncation before it. Errors give a stamp that matches nothing.
 */
export async function stampFiles(dir: string): Promise<string> {
  try {
    const entries = await readdir(dir, { withFileTypes: true, recursive: true });
    const files = entries.filter((entry) => entry.isFile()).map((entry) => join(entry.parentPath, entry.name));
    const stamps = await Promise.all(
      files.map(async (file) => {
        const info = await stat(file);
        return `${file}\0${info.mtimeMs}\0${info.size}`;
      }),
    );
    return stamps.sort().join('\n');
  } catch {
    return `unreadable ${Math.random()}`;
  }
}
