import { realpathSync } from 'node:fs';
import { dirname } from 'node:path';
import { pathToFileURL } from 'node:url';
import { RUNTIME_DIRS } from '../workers/permissions.js';

/** Rewrites a text a caller will read so that it names no folder of the host's. */
export type Redact = (text: string) => string;

/**
 * What an agent's errors say goes to whoever called it, often an HTTP client: a module's
 * path under the pool's root, sandpool's install folder in a stack. They are rewritten as
 * `<root>/a1b2/live/agent.mjs` and `<sandpool>/dist/…`, the labels the server's own scrub
 * uses, as paths and as file: URLs, longest first so a folder inside another is taken whole.
 */
export function hostPaths(root: string): Redact {
  const folders = new Map<string, string>();
  const add = (folder: string, as: string): void => {
    for (const form of [folder, safeRealpath(folder)]) {
      folders.set(pathToFileURL(form).href, as);
      folders.set(form, as);
    }
  };
  add(root, '<root>');
  const dist = RUNTIME_DIRS[0];
  if (dist !== undefined) add(dirname(dist), '<sandpool>');
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
    return folder;
  }
}
