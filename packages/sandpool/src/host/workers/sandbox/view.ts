import { existsSync, lstatSync, readlinkSync, realpathSync } from 'node:fs';
import { dirname, join, resolve, sep } from 'node:path';
import { linkTargets } from '../permissions.js';

/**
 * One piece of a cell's file system: a host path bound at `path` (read-only unless `write`),
 * or a link at `path` made as the host has it. Binds are of real paths, so a link in a
 * tenant's folder is bound as a link, never followed to what it names on the host.
 */
export type ViewEntry =
  | { readonly kind: 'bind'; readonly source: string; readonly path: string; readonly write: boolean }
  | { readonly kind: 'link'; readonly path: string; readonly target: string };

/** What a key's cell must see and whom it runs as: its swarm, and its folders as binds. */
export interface KeyAccess {
  readonly swarm: string;
  /** Empty without namespaces: the child then sees the host's file system, under its permission flags. */
  readonly entries: readonly ViewEntry[];
}

/** Link hops followed when resolving a path (the kernel's own limit is 40). */
const MAX_HOPS = 40;

/**
 * What a path's resolution goes through: each link met on the way (recreated, so the
 * same name resolves in the cell), then a bind of the real file or folder at its real path.
 * Throws when the path does not exist.
 */
export function entriesFor(path: string, write = false): ViewEntry[] {
  const entries: ViewEntry[] = [];
  let hops = 0;
  const walk = (absolute: string): string => {
    let real: string = sep;
    const parts = absolute.split(sep).filter((part) => part !== '');
    for (const [index, part] of parts.entries()) {
      const next = join(real, part);
      if (!lstatSync(next).isSymbolicLink()) {
        real = next;
        continue;
      }
      if (++hops > MAX_HOPS) throw new Error(`${path}: too many links`);
      const target = readlinkSync(next);
      entries.push({ kind: 'link', path: next, target });
      real = walk(join(resolve(real, target), ...parts.slice(index + 1)));
      return real;
    }
    return real;
  };
  const real = walk(resolve(path));
  entries.push({ kind: 'bind', source: real, path: real, write });
  return entries;
}

/**
 * The folders a package import may resolve into, for a cell: every `node_modules` from `from`
 * up to `/`. Inside `tenantTop` (the swarm's own folder) a `node_modules` is bound only where
 * it is a real folder, and its links are never followed: a tenant's link to `/` stays a link
 * to the cell's own root. Above it (the operator's), links are followed as the host resolves
 * them, pnpm's `.pnpm` included.
 */
export function moduleEntries(from: string, tenantTop: string | null): ViewEntry[] {
  const entries: ViewEntry[] = [];
  for (let dir = from; ; dir = dirname(dir)) {
    const modules = join(dir, 'node_modules');
    if (tenantTop !== null && within(dir, tenantTop)) {
      if (isRealFolder(modules)) entries.push({ kind: 'bind', source: modules, path: modules, write: false });
    } else if (existsSync(modules)) {
      entries.push(...entriesFor(modules));
      const real = realpathSync(modules);
      for (const target of linkTargets(real)) if (!within(target, real)) entries.push(...entriesFor(target));
    }
    if (dirname(dir) === dir) return entries;
  }
}

/**
 * bubblewrap's arguments for these entries, in an order that makes each parent before its
 * children: folders bubblewrap would make on the way are made 0755 (it makes them 0700, which
 * the cell's uid could not enter), and an entry already inside a read-only bind is left out.
 */
export function bwrapArgs(entries: readonly ViewEntry[], made: Set<string> = new Set([sep])): string[] {
  const args: string[] = [];
  const bound: string[] = [];
  const sorted = [...new Map(entries.map((entry) => [entry.path, entry])).values()].sort((a, b) =>
    a.path < b.path ? -1 : a.path > b.path ? 1 : 0,
  );
  for (const entry of sorted) {
    const writable = entry.kind === 'bind' && entry.write;
    if (!writable && bound.some((folder) => within(entry.path, folder))) continue;
    for (let parent = dirname(entry.path), missing: string[] = []; ; parent = dirname(parent)) {
      if (made.has(parent) || bound.some((folder) => within(parent, folder))) {
        for (const dir of missing.reverse()) {
          args.push('--dir', dir);
          made.add(dir);
        }
        break;
      }
      missing.push(parent);
    }
    if (entry.kind === 'link') {
      args.push('--symlink', entry.target, entry.path);
    } else {
      args.push(entry.write ? '--bind' : '--ro-bind', entry.source, entry.path);
      bound.push(entry.path);
    }
    made.add(entry.path);
  }
  return args;
}

/** Whether `path` is `folder` or inside it. */
export function within(path: string, folder: string): boolean {
  return path === folder || path.startsWith(folder === sep ? sep : folder + sep);
}

function isRealFolder(path: string): boolean {
  try {
    return lstatSync(path).isDirectory();
  } catch {
    return false;
  }
}
