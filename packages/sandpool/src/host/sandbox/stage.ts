import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync, rmdirSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { alive } from './cgroups.js';
import { findExecutable } from './support.js';
import type { ViewEntry } from './view.js';

/**
 * Binds `$1` read-only on the private hold `$2` (so it is read-only before anyone sees it: a
 * remount does not propagate), then moves it into the shared stage at `$3`, from where it
 * propagates into the cell; per triple.
 */
const MOUNT = `set -e
while [ "$#" -ge 3 ]; do
  mount --bind "$1" "$2"
  mount -o remount,bind,ro,nosuid,nodev "$2"
  mount --move "$2" "$3"
  shift 3
done`;
const UNMOUNT = 'for target; do umount -l "$target" 2>/dev/null || true; done';
const SETUP = `set -e
mount --bind "$1" "$1"; mount --make-private "$1"; mount --make-shared "$1"
mount --bind "$2" "$2"; mount --make-private "$2"`;
const SWEEP = 'for target; do umount -R -l "$target" 2>/dev/null || true; done';

let opened: Stage | string | null = null;

/** This process's stage, made (and a crashed host's leftovers removed) on first use; a string says why there is none. */
export function openStage(): Stage | string {
  opened ??= makeStage();
  return opened;
}

/**
 * Where a spare cell's view of the pool root comes from. A spare boots before its key is
 * known, with an empty folder of this stage bound where the pool's root is; when a key takes
 * it, the key's folders are bound into that folder on the host, and mount propagation (the
 * stage is a shared mount; the cell's copy receives) makes them appear in the cell, at their
 * real paths, read-only. Needs root (mounting); one stage per host process, under /run.
 */
export class Stage {
  private cells = 0;

  constructor(
    private readonly shared: string,
    private readonly hold: string,
  ) {}

  /** A folder for one spare cell, bound at the pool's root in it; empty until `enter`. */
  cell(): StagedCell {
    const n = ++this.cells;
    const dir = join(this.shared, String(n));
    makeFolder(dir);
    return new StagedCell(dir, join(this.hold, String(n)));
  }
}

export class StagedCell {
  private readonly mounted: string[] = [];
  private readonly made: string[] = [];

  constructor(
    /** What the cell sees at the pool's root. */
    readonly dir: string,
    private readonly hold: string,
  ) {
    this.made.push(dir);
  }

  /** Makes `entries` (all under `root`) appear in the cell, at their paths. */
  async enter(entries: readonly ViewEntry[], root: string): Promise<void> {
    const triples: string[] = [];
    for (const entry of [...entries].sort((a, b) => (a.path < b.path ? -1 : 1))) {
      const staged = join(this.dir, relative(root, entry.path));
      this.makeFolders(dirname(staged));
      if (entry.kind === 'link') {
        symlinkSync(entry.target, staged);
        continue;
      }
      this.makeFolders(staged);
      const hold = `${this.hold}-${this.mounted.length}`;
      this.makeFolders(hold);
      triples.push(entry.source, hold, staged);
      this.mounted.push(staged);
    }
    if (triples.length > 0) await run(MOUNT, triples);
  }

  /** Unbinds what `enter` bound (lazily: a dying cell may still hold a file) and removes the folders it made. */
  async close(): Promise<void> {
    if (this.mounted.length > 0) await run(UNMOUNT, this.mounted.reverse());
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
    const shared = join(own, 'cells');
    const hold = join(own, 'hold');
    for (const dir of [own, shared, hold]) makeFolder(dir);
    const setup = spawnSync('sh', ['-c', SETUP, 'sandpool-stage', shared, hold], { encoding: 'utf8' });
    if (setup.status !== 0) return `cannot make the stage's shared mount: ${setup.stderr.trim()}`;
    process.once('exit', () => {
      spawnSync('sh', ['-c', SWEEP, 'sandpool-stage', shared, hold]);
      removeEmpty(own);
    });
    return new Stage(shared, hold);
  } catch (error) {
    return `cannot make the stage under ${base}: ${(error as Error).message}`;
  }
}

/** Unmounts and removes the stages of hosts that ended without doing it. */
function sweep(base: string): void {
  for (const name of readdirSync(base)) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid || alive(Number(name))) continue;
    const own = join(base, name);
    spawnSync('sh', ['-c', SWEEP, 'sandpool-stage', join(own, 'cells'), join(own, 'hold')]);
    removeEmpty(own);
  }
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

function run(script: string, args: readonly string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('sh', ['-c', script, 'sandpool-stage', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let said = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (text: string) => {
      said += text;
    });
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve();
      else reject(new Error(`cannot bind a key’s folder into its cell: ${said.trim() || `exit ${code}`}`));
    });
  });
}
