/**
 * Whether a live key's last artifact still holds what its folder holds, without building it
 * again: a stamp of live/'s entries and of everything else the last build looked at (see
 * InputProbe), by metadata alone (nothing is opened, so a FIFO cannot hold it up). Two stamps
 * that differ mean something was written, moved or linked in between.
 */
import { createHash } from 'node:crypto';
import type { BigIntStats, Dirent } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import { isBuiltin } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { snapshotBuild } from '../errors.js';
import { isInside } from './confine.js';

/**
 * Entries of live/ stamped at most, and so built at most: past it no stamp could be taken, and
 * every start would copy the whole folder again (a minute for 100,000 empty files, on a loaded
 * machine, in the helper every swarm's builds share).
 */
const MAX_ENTRIES = 100_000;

/**
 * live/'s entries (its node_modules folders by their own entry, not their contents): path,
 * type, inode, size, mtime and ctime of each. Null when live/ cannot be read; past MAX_ENTRIES
 * the folder is refused (SNAPSHOT_BUILD), before anything of it is copied.
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
  let whole: boolean;
  try {
    whole = await walk(liveReal, '');
  } catch {
    return null;
  }
  if (!whole) {
    throw snapshotBuild(
      `cannot build live/: it holds over ${MAX_ENTRIES} entries (files and folders, node_modules aside), more than a live key's reuse is stamped by`,
    );
  }
  return hash.digest('hex');
}

/**
 * What a build looked at besides live/'s own entries, each stamped before it was looked at:
 * the files its bundles read, the folders above each up to its anchor (the swarm's folder or a
 * package folder) with the package.json in each, and every place resolving an import looked
 * in, found or not (an import's folder, each `node_modules` up to `/`, the package there). A
 * file rewritten in place, a package.json's `main`, `exports` or `imports` changed, a link
 * re-pointed, a nearer package or a file beside a folder added, a package installed that an
 * import failed to find: each changes one of them. Stamped before the read or the resolution,
 * so a write while the build goes on differs from what was recorded, and the next look builds.
 */
export class InputProbe {
  readonly #stamps = new Map<string, string>();
  #unreadable = false;

  constructor(
    /** Real paths of the swarm's folder and the package folders (see BuildInputs). */
    private readonly anchors: readonly string[],
  ) {}

  /** Before `file` is read: it, and each folder from its own up to its anchor with their package.json. */
  async beforeRead(file: string): Promise<void> {
    await this.note(file);
    await this.folders(dirname(file));
  }

  /** Before `specifier` is resolved from `dir`: every place the resolution looks in. */
  async beforeResolve(dir: string, specifier: string): Promise<void> {
    if (isBuiltin(specifier)) return;
    if (RELATIVE.test(specifier)) {
      const target = resolve(dir, specifier);
      await this.note(target);
      await this.note(join(target, 'package.json'));
      await this.folders(dirname(target));
      return;
    }
    const name = packageName(specifier);
    if (name === null) return;
    for (let at = dir; ; at = dirname(at)) {
      const modules = join(at, 'node_modules');
      await this.note(modules);
      await this.note(join(modules, name));
      await this.note(join(modules, name, 'package.json'));
      if (dirname(at) === at) return;
    }
  }

  /** The paths stamped, for the next look to stamp again (see inputsStamp). */
  paths(): string[] {
    return [...this.#stamps.keys()].sort();
  }

  /** What they were when the build looked; null when one could not be stamped (the build is not reused). */
  stamp(): string | null {
    return this.#unreadable ? null : hashOf(this.#stamps);
  }

  /** `dir` and each folder above it up to its anchor, with the package.json in each; nothing outside them. */
  private async folders(dir: string): Promise<void> {
    const anchor = this.anchors.find((folder) => dir === folder || isInside(folder, dir));
    if (anchor === undefined) return;
    for (let at = dir; ; at = dirname(at)) {
      await this.note(at);
      await this.note(join(at, 'package.json'));
      if (at === anchor) return;
    }
  }

  private async note(path: string): Promise<void> {
    if (this.#stamps.has(path)) return;
    const stamp = await pathStamp(path);
    if (stamp === null) this.#unreadable = true;
    else if (!this.#stamps.has(path)) this.#stamps.set(path, stamp);
  }
}

/** The stamp of the paths a build's probe recorded, as they are now; null when one cannot be stamped. */
export async function inputsStamp(paths: readonly string[]): Promise<string | null> {
  const stamps = new Map<string, string>();
  for (const path of paths) {
    const stamp = await pathStamp(path);
    if (stamp === null) return null;
    stamps.set(path, stamp);
  }
  return hashOf(stamps);
}

const RELATIVE = /^\.\.?(\/|$)/;

/** `pkg` of `pkg/sub`, `@scope/pkg` of `@scope/pkg/sub`; null for what names no package (`#imports`). */
function packageName(specifier: string): string | null {
  const parts = specifier.split('/');
  const name = specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
  return name === undefined || name === '' || name.startsWith('#') || name.includes('..') ? null : name;
}

/** One path's metadata, or that it is not there (an absence that ends changes the stamp too); null if unreadable. */
async function pathStamp(path: string): Promise<string | null> {
  try {
    return stampOf(await lstat(path, { bigint: true }));
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    return code === 'ENOENT' || code === 'ENOTDIR' ? 'absent' : null;
  }
}

function hashOf(stamps: ReadonlyMap<string, string>): string {
  const hash = createHash('sha256');
  for (const path of [...stamps.keys()].sort()) hash.update(`${path}\0${stamps.get(path)}\n`);
  return hash.digest('hex');
}

function stampOf(info: BigIntStats): string {
  return `${info.mode}:${info.ino}:${info.size}:${info.mtimeNs}:${info.ctimeNs}`;
}
