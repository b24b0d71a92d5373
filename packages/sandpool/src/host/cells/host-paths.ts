import { realpathSync } from 'node:fs';
import { dirname } from 'node:path';
import { pathToFileURL } from 'node:url';
import { RUNTIME_DIRS } from '../workers/permissions.js';
import { TMPFS_SPARES } from '../workers/spare-folders.js';

/** Rewrites a text a caller will read so that it names no folder of the host's. */
export type Redact = (text: string) => string;

/** A folder of the host's and the label a caller reads in its place. */
export type HostPlace = readonly [label: string, path: string];

/**
 * What an agent's errors say goes to whoever called it, often an HTTP client: a module's
 * path under the pool's root, sandpool's install folder in a stack. They are rewritten as
 * `<root>/a1b2/live/agent.mjs` and `<sandpool>/dist/…`, with `more` places after them (the
 * server adds its working, temp and home folders), so a path reads the same from the
 * library and from the server; a strict spare's folder on tmpfs reads `<spares>/…`. Each place counts as given, by its real path and as a
 * file: URL; longest first, so a folder inside another is taken whole; where two places are
 * one folder, the first listed names it. A place of one character (a home of `/`) is no place.
 */
export function hostPaths(root: string, more: readonly HostPlace[] = []): Redact {
  const places: HostPlace[] = [['<root>', root]];
  const dist = RUNTIME_DIRS[0];
  if (dist !== undefined) places.push(['<sandpool>', dirname(dist)]);
  // Where strict spares read their key's folder (a link to it), in a module's path and stack.
  places.push(['<spares>', TMPFS_SPARES]);
  const folders = new Map<string, string>();
  for (const [label, path] of [...places, ...more]) {
    for (const form of new Set([path, safeRealpath(path)])) {
      const folder = form.replace(/\/+$/, '');
      if (folder.length <= 1) continue;
      for (const written of [folder, pathToFileURL(folder).href])
        if (!folders.has(written)) folders.set(written, label);
    }
  }
  const prefixes = [...folders].sort(([a], [b]) => b.length - a.length);
  return (text) => {
    let out = text;
    for (const [prefix, as] of prefixes) if (out.includes(prefix)) out = out.split(prefix).join(as);
    return out;
  };
}

function safeRealpath(folder: string): string {
  try {
    return realpathSync(folder);
  } catch {
    // A folder that does not exist yet has no other name.
    return folder;
  }
}
