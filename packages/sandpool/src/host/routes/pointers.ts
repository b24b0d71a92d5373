import { lstatSync } from 'node:fs';
import type { ResolvedKey } from '../../key.js';
import { generationFile, snapshotDir } from '../../store/layout.js';
import { readSnapshotName, type SnapshotRef } from '../../store/names.js';

/**
 * What each snapshot name the pool serves points to, read again only when its pointer file or
 * the store's record of its generation changed: two lstats per look. A name moved (by this
 * process or another sharing the store) replaces the pointer by a rename, which changes its
 * inode and ctime, and then its record: a pointer read between the two (an older one put back
 * there) is judged again once the record has moved on.
 */
export class PointerBook {
  private readonly seen = new Map<string, { readonly stamp: string; readonly ref: SnapshotRef }>();

  constructor(
    private readonly root: string,
    private readonly secret: string | undefined,
  ) {}

  /** What the key's name points to now; throws SNAPSHOT_NOT_FOUND or SNAPSHOT_CORRUPT as the store reads it. */
  resolve(key: ResolvedKey): SnapshotRef {
    const name = key.snapshot as string;
    const id = `${key.swarm}@${name}`;
    // Stamped before the read: a move between the two is seen at the next look.
    const stamp = `${stampOf(snapshotDir(this.root, key.swarm, name))}/${stampOf(generationFile(this.root, key.swarm, name))}`;
    const held = this.seen.get(id);
    if (held !== undefined && held.stamp === stamp) return held.ref;
    this.seen.delete(id);
    const ref = readSnapshotName(this.root, key.swarm, name, this.secret, key.text);
    this.seen.set(id, { stamp, ref });
    return ref;
  }

  /** Keeps only the names in `used` (`swarm@name`): a name no route serves costs nothing. */
  keepOnly(used: ReadonlySet<string>): void {
    for (const id of this.seen.keys()) if (!used.has(id)) this.seen.delete(id);
  }
}

function stampOf(path: string): string {
  const info = lstatSync(path, { bigint: true, throwIfNoEntry: false });
  if (info === undefined) return 'missing';
  return `${info.ino}:${info.ctimeNs}:${info.mtimeNs}:${info.size}`;
}
