import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync, rmdirSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { alive } from './alive.js';
import { Binder } from './binder.js';
import { findExecutable } from './support.js';
import type { ViewEntry } from './view.js';

/** The stage's folder of cells becomes a mount of its own, shared: what is bound in it propagates into the cells. */
const SHARE = 'mount --bind "$1" "$1" && mount --make-private "$1" && mount --make-shared "$1"';
/** A read-only, private view of a pool's root: a bind of a folder in it is read-only from its first instant. */
const MIRROR = 'mount --bind "$1" "$2" && mount -o remount,bind,ro,nosuid,nodev "$2" && mount --make-private "$2"';
const SWEEP = 'for target; do umount -R -l "$target" 2>/dev/null; done; true';

let opened: Stage | string | null = null;

/** This process's stage, made (and a crashed host's leftovers removed) on first use; a string says why there is none. */
export function openStage(): Stage | string {
  opened ??= makeStage();
  return opened;
}

/**
 * Where a spare cell's view of the pool root comes from. A spare boots before its key is
 * known, with an empty folder of this stage bound where the pool's root is; when a key takes
 * it, the key's folders are bound into that folder on the host, from the pool's read-only
 * mirror of its root (one `mount` each, read-only before anyone sees it), and mount
 * propagation (the stage is a shared mount; each cell's copy receives) makes them appear in
 * the cell at their real paths. Needs root; one stage per host process, under /run, its binds
 * made by one shell while a pool uses it (see Binder).
 */
export class Stage {
  private made = 0;
  private readonly mirrors = new Map<string, { dir: string; users: number }>();
  private readonly binder = new Binder();

  constructor(private readonly base: string) {}

  /** A folder for one spare cell, bound at the pool's root in it; empty until `enter`. */
  cell(mirror: string, root: string): StagedCell {
    const dir = join(this.base, 'cells', String(++this.made));
    makeFolder(dir);
    return new StagedCell(dir, mirror, root, this.binder);
  }

  /** The read-only mirror of a pool's root (shared by the pools on one root), until `unmirror`. */
  mirror(root: string): string {
    const known = this.mirrors.get(root);
    if (known !== undefined) {
      known.users += 1;
      return known.dir;
    }
    const dir = join(this.base, 'mirrors', String(++this.made));
    makeFolder(dir);
    const made = spawnSync('sh', ['-c', MIRROR, 'sandpool-stage', root, dir], { encoding: 'utf8' });
    if (made.status !== 0) throw new Error(`cannot mirror ${root} read-only: ${made.stderr.trim()}`);
    this.mirrors.set(root, { dir, users: 1 });
    return dir;
  }

  async unmirror(root: string): Promise<void> {
    const known = this.mirrors.get(root);
    if (known === undefined || --known.users > 0) return;
    this.mirrors.delete(root);
    const unbound = this.binder.unbind(known.dir);
    // No pool uses the stage now: its shell ends once this is done.
    if (this.mirrors.size === 0) this.binder.close();
    await unbound;
  }
}

export class StagedCell {
  private readonly mounted: string[] = [];
  private readonly made: string[] = [];

  constructor(
    /** What the cell sees at the pool's root. */
    readonly dir: string,
    private readonly mirror: string,
    private readonly root: string,
    private readonly binder: Binder,
  ) {
    this.made.push(dir);
  }

  /** Makes `entries` (all under the pool's root) appear in the cell, at their paths, read-only. */
  async enter(entries: readonly ViewEntry[]): Promise<void> {
    for (const entry of [...entries].sort((a, b) => (a.path < b.path ? -1 : 1))) {
      const staged = join(this.dir, relative(this.root, entry.path));
      this.makeFolders(dirname(staged));
      if (entry.kind === 'link') {
        symlinkSync(entry.target, staged);
        continue;
      }
      this.makeFolders(staged);
      this.mounted.push(staged);
      await this.binder.bind(join(this.mirror, relative(this.root, entry.source)), staged);
    }
  }

  /** Unbinds what `enter` bound (lazily: a dying cell may still hold a file) and removes the folders it made. */
  async close(): Promise<void> {
    await Promise.all(this.mounted.reverse().map((path) => this.binder.unbind(path).catch(() => {})));
    for (const dir of this.made.reverse()) {
      try {
        rmdirSync(dir);
      } catch {
        // Never recursive: a folder still holding a mount keeps the tenant's files in it.
      }
    }
  }

  private makeFolders(dir: string): void {
    const missing: string[] = [];
    for (let at = dir; !existsSync(at); at = dirname(at)) missing.unshift(at);
    for (const folder of missing) {
      makeFolder(folder);
      this.made.push(folder);
    }
  }
}

function makeStage(): Stage | string {
  if (process.getuid?.() !== 0) return 'spare process keys need root, to bind a key’s folder into a booted cell';
  if (findExecutable('mount') === null || findExecutable('umount') === null) return 'mount is not installed';
  const base = existsSync('/run') ? '/run/sandpool' : join(tmpdir(), 'sandpool-stage');
  try {
    makeFolder(base);
    sweep(base);
    const own = join(base, String(process.pid));
    for (const dir of [own, join(own, 'cells'), join(own, 'mirrors')]) makeFolder(dir);
    const shared = spawnSync('sh', ['-c', SHARE, 'sandpool-stage', join(own, 'cells')], { encoding: 'utf8' });
    if (shared.status !== 0) return `cannot make the stage's shared mount: ${shared.stderr.trim()}`;
    process.once('exit', () => unstage(own));
    return new Stage(own);
  } catch (error) {
    return `cannot make the stage under ${base}: ${(error as Error).message}`;
  }
}

/** Unmounts and removes the stages of hosts that ended without doing it. */
function sweep(base: string): void {
  for (const name of readdirSync(base)) {
    if (/^\d+$/.test(name) && Number(name) !== process.pid && !alive(Number(name))) unstage(join(base, name));
  }
}

function unstage(own: string): void {
  spawnSync('sh', ['-c', SWEEP, 'sandpool-stage', join(own, 'cells'), join(own, 'mirrors')]);
  removeEmpty(own);
}

/** Removes a tree of empty folders, bottom up; anything else (a mount still there) stays. */
function removeEmpty(dir: string): void {
  try {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (entry.isDirectory()) removeEmpty(join(dir, entry.name));
    }
    rmdirSync(dir);
  } catch {
    // Not empty, or gone.
  }
}

function makeFolder(dir: string): void {
  mkdirSync(dir, { recursive: true });
  // The cell's uid walks through it; a host umask must not narrow it.
  chmodSync(dir, 0o755);
}
