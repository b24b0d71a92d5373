/**
 * TypeScript agents on Nodes that cannot strip types in a worker (20): the coordinator strips
 * the swarm's live/ tree into a content-addressed folder the worker may read, and the worker
 * imports from there. No loader hooks: `module.register` is refused under the permission model.
 *
 * Layout: `<root>/.sandpool-cache/ts/<swarm>/<digest>/` mirrors live/ (node_modules left out):
 * `x.ts` becomes `x.ts.js` (`.mts` `.mts.mjs`, `.cts` `.cts.cjs`, so module types hold), with
 * relative `.ts` specifiers rewritten to match; other files are copied. Links named
 * `node_modules` at each level point at the real ones, so packages resolve exactly as live.
 * Stripping keeps every line and column, so errors point where the source has them. The
 * digest covers every file, so a second start with the same files does no work.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, realpath, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join, sep } from 'node:path';
import { moduleNotFound } from '../../errors.js';
import { transpileCacheDir } from '../../store/layout.js';
import { stripTypeScript } from '../../typescript/strip.js';

const RENAMED: Readonly<Record<string, string>> = { '.ts': '.ts.js', '.mts': '.mts.mjs', '.cts': '.cts.cjs' };
const TS_FILE = /\.(?:m|c)?ts$/;
const DECLARATION = /\.d\.(?:m|c)?ts$/;
/** Relative specifiers of TypeScript files in import/export/require, after stripping. */
const TS_SPECIFIER = /(\bfrom\s*|\bimport\s*\(?\s*|\brequire\s*\(\s*)(['"])(\.{1,2}\/[^'"\n]*?\.(?:m|c)?ts)\2/g;

interface Entry {
  rel: string;
  kind: 'file' | 'node_modules';
  bytes?: Buffer;
}

export interface StrippedTree {
  /** The folder the worker must be allowed to read. */
  readonly dir: string;
  /** The stripped copy of the entry file. */
  readonly file: string;
}

export function strippedName(rel: string): string {
  const match = /\.(?:m|c)?ts$/.exec(rel);
  if (match === null || DECLARATION.test(rel)) return rel;
  return rel.slice(0, match.index) + (RENAMED[match[0]] as string);
}

export async function stripLiveTree(
  rootReal: string,
  swarm: string,
  liveReal: string,
  entry: string,
): Promise<StrippedTree> {
  const entries: Entry[] = [];
  await collect(liveReal, liveReal, '', entries);
  const hash = createHash('sha256');
  for (const item of entries) {
    hash.update(`${item.kind}\0${item.rel}\0`);
    if (item.bytes !== undefined) hash.update(createHash('sha256').update(item.bytes).digest());
  }
  const base = transpileCacheDir(rootReal, swarm);
  const dir = join(base, hash.digest('hex').slice(0, 32));
  const entryRel = entry
    .slice(liveReal.length + 1)
    .split('\\')
    .join('/');
  const file = join(dir, ...strippedName(entryRel).split('/'));
  if (await exists(dir)) return { dir, file };
  await mkdir(base, { recursive: true });
  await linkOnce(join(base, 'node_modules'), join(rootReal, swarm, 'node_modules'));
  const temp = join(base, `.tmp-${randomBytes(6).toString('hex')}`);
  try {
    await mkdir(temp);
    for (const item of entries) {
      const target = join(temp, ...strippedName(item.rel).split('/'));
      await mkdir(join(target, '..'), { recursive: true });
      if (item.kind === 'node_modules') {
        await symlink(join(liveReal, ...item.rel.split('/')), target, 'dir');
      } else if (TS_FILE.test(item.rel) && !DECLARATION.test(item.rel)) {
        const stripped = await stripTypeScript((item.bytes as Buffer).toString('utf8'), `live/${item.rel}`);
        await writeFile(target, rewriteSpecifiers(stripped));
      } else {
        await writeFile(target, item.bytes as Buffer);
      }
    }
    try {
      await rename(temp, dir);
    } catch (error) {
      // Another start stripped the same content first: theirs is as good as ours.
      if (!(await exists(dir))) throw error;
    }
  } finally {
    await rm(temp, { recursive: true, force: true });
  }
  return { dir, file };
}

function rewriteSpecifiers(code: string): string {
  return code.replace(TS_SPECIFIER, (_all, lead: string, quote: string, specifier: string) => {
    return `${lead}${quote}${strippedName(specifier)}${quote}`;
  });
}

async function collect(live: string, dir: string, rel: string, out: Entry[]): Promise<void> {
  const names = (await readdir(dir, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1));
  for (const dirent of names) {
    const path = rel === '' ? dirent.name : `${rel}/${dirent.name}`;
    const full = join(dir, dirent.name);
    if (dirent.name === 'node_modules') {
      out.push({ rel: path, kind: 'node_modules' });
    } else if (dirent.isDirectory()) {
      await collect(live, full, path, out);
    } else if (dirent.isFile()) {
      out.push({ rel: path, kind: 'file', bytes: await readFile(full) });
    } else if (dirent.isSymbolicLink()) {
      // Read where it leads only inside live/: copied, a link to /proc/self/environ would put
      // the host's environment in the cache (the key is refused later, the copy would stay).
      const real = await realpath(full).catch(() => null);
      if (real === null) continue; // dangling
      if (real !== live && !real.startsWith(live + sep)) {
        throw moduleNotFound(`live/${path} is a link that leaves the key's folder`);
      }
      if ((await stat(real)).isFile()) out.push({ rel: path, kind: 'file', bytes: await readFile(real) });
    }
  }
}

async function linkOnce(link: string, target: string): Promise<void> {
  if (!(await exists(target))) return;
  try {
    await symlink(target, link, 'dir');
  } catch (error) {
    if ((error as { code?: unknown }).code !== 'EEXIST') throw error;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
