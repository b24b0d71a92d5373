import { lstatSync, mkdirSync, readdirSync, renameSync, rmdirSync, rmSync, symlinkSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { sparesDir } from '../../store/layout.js';
import { ownerGone, ownerToken } from '../../store/leftovers.js';

/** Where tmpfs is on Linux: a folder there costs microseconds to make or remove. */
const TMPFS = '/dev/shm';
/** This process's folders of strict spares on tmpfs, each pool's in it (`<token>`: see leftovers.ts). */
const TMPFS_PREFIX = 'sandpool-spares-';
export const TMPFS_SPARES = join(TMPFS, `${TMPFS_PREFIX}${ownerToken()}`);

/**
 * The folders strict spare threads read their key's folder through. A spare boots before its
 * key is known and Node's permission flags are fixed at boot, so they cannot name its key's
 * folder: a strict spare is granted a link of its own instead, to an empty folder until a key
 * takes the spare, then to its key's folder. The permission model checks the path asked
 * for, with `..` resolved by name, and the kernel follows the link: the worker reads its key's
 * folder by its own link's path, and nothing else (`..` out of the link names the folder
 * of spares' folders, which it is not granted). The link must be the granted path itself:
 * one inside it would let `link/../x` pass the check by name and reach the key folder's
 * neighbours. It is a link from the start, swapped by one rename: Node grants what is under a
 * path only if that path is a folder when the worker's permissions are made, as it boots, and
 * a folder removed to make way for a link (a spare taken while it still booted, under load)
 * left its worker the path alone (ERR_ACCESS_DENIED on its bundle).
 *
 * The folder and its link are made while a key waits for its start: on tmpfs (`/dev/shm`,
 * this process's own folder there) where there is one, since on a journaled disk under load
 * each took 0.2–3 ms; else under the pool root's `.sandpool-cache/spares/`. Each folder of
 * spares' folders is named by its owner (`<pid>.<machine>.<random>`), so each pool that makes
 * one removes those of ended processes on this machine. Synchronous calls: the coordinator's own small
 * file work never waits in the libuv pool behind a tenant's jobs.
 */
export class SpareFolders {
  /** This pool's folder of spares' folders, made on first use. */
  private base: string | null = null;
  private made = 0;

  constructor(private readonly root: string) {}

  /** A new link to an empty folder, for one spare; throws where none can be made. */
  make(): SpareFolder {
    this.base ??= this.open();
    const path = join(this.base, String(++this.made));
    const empty = `${path}${EMPTY_SUFFIX}`;
    mkdirSync(empty, { mode: 0o700 });
    try {
      symlinkSync(empty, path, 'dir');
    } catch (error) {
      rmdirSync(empty);
      throw error;
    }
    return new SpareFolder(path, empty);
  }

  /** The pool has closed and its workers have ended: their folders go (a stuck thread's link with them). */
  close(): void {
    if (this.base !== null) rmSync(this.base, { recursive: true, force: true });
  }

  private open(): string {
    let parent: string;
    try {
      sweep(TMPFS, TMPFS_PREFIX);
      parent = ownTmpfsFolder();
    } catch {
      // No tmpfs here (not Linux, a container without /dev/shm, a host denied it): the root.
      parent = sparesDir(this.root);
      mkdirSync(parent, { recursive: true, mode: 0o700 });
      sweep(parent, '');
    }
    const base = join(parent, ownerToken());
    mkdirSync(base, { mode: 0o700 });
    return base;
  }
}

let tmpfsFolder: string | null = null;

/**
 * This process's folder on tmpfs (mode 0700, a name no one can guess and that must be new:
 * in a folder every user may write, one made by another would be theirs to fill with links),
 * made once; removed when it exits.
 */
function ownTmpfsFolder(): string {
  if (tmpfsFolder !== null) return tmpfsFolder;
  mkdirSync(TMPFS_SPARES, { mode: 0o700 });
  const made = lstatSync(TMPFS_SPARES);
  if (!made.isDirectory() || made.uid !== process.getuid?.()) throw new Error(`${TMPFS_SPARES} is not this process's`);
  process.once('exit', () => rmSync(TMPFS_SPARES, { recursive: true, force: true }));
  tmpfsFolder = TMPFS_SPARES;
  return tmpfsFolder;
}

/** The empty folder a spare's link shows until a key takes it, beside the link. */
const EMPTY_SUFFIX = '.empty';
/** A link's next target is made under this name beside it, then renamed over it. */
const NEXT_SUFFIX = '.next';

/** One spare's folder: a link to an empty folder, then (once) to its key's folder, then gone with its worker. */
export class SpareFolder {
  private state: 'empty' | 'shown' | 'gone' = 'empty';

  constructor(
    readonly path: string,
    private readonly empty: string,
  ) {}

  /**
   * Its key's folder (a real path), shown at this folder's path from now on: the link is
   * replaced in one rename, so the path is a folder at every moment. Once: a spare's folder
   * never shows a second key's. Throws when it cannot.
   */
  show(target: string): void {
    if (this.state !== 'empty') throw new Error(`a spare's folder that is ${this.state} shows no key`);
    this.state = 'shown';
    const next = `${this.path}${NEXT_SUFFIX}`;
    symlinkSync(target, next, 'dir');
    try {
      renameSync(next, this.path);
    } catch (error) {
      unlinkSync(next);
      throw error;
    }
    // The empty folder stays until the worker ends: a lookup that read the old link just
    // before the rename must still find a folder there.
  }

  /** Its worker has ended. Best effort: what stays goes with its process's folder. */
  release(): void {
    if (this.state === 'gone') return;
    this.state = 'gone';
    tryRemove(() => unlinkSync(this.path));
    tryRemove(() => rmdirSync(this.empty));
  }
}

function tryRemove(remove: () => void): void {
  try {
    remove();
  } catch {
    // Gone already (its process's folder was removed), or not as made: left as it is.
  }
}

/**
 * Removes the folders of spares' folders (`<prefix><token>`) whose process has ended on this
 * machine, when this user's: their links and empty folders, never what a link points to.
 * Another machine's are its own to remove.
 */
function sweep(parent: string, prefix: string): void {
  const uid = process.getuid?.();
  for (const name of readdirSync(parent)) {
    if (!name.startsWith(prefix) || ownerGone(name.slice(prefix.length)) !== true) continue;
    const path = join(parent, name);
    try {
      const info = lstatSync(path);
      if (info.isDirectory() && info.uid === uid) rmSync(path, { recursive: true, force: true });
    } catch {
      // Gone already, or not ours to remove.
    }
  }
}
