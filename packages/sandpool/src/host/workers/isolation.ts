import { statSync } from 'node:fs';
import { dirname } from 'node:path';
import { moduleLoad, unusableOptions } from '../../errors.js';
import type { ResolvedKey } from '../../key.js';
import type { ResolvedPoolOptions } from '../../options.js';
import type { Isolation } from '../../types.js';
import { askForKey } from '../policy/ask.js';

/** Where a key's agent runs, from the `isolation` option; a function's answer is checked. */
export function isolationFor(option: ResolvedPoolOptions['isolation'], key: ResolvedKey): Isolation {
  if (typeof option !== 'function') return option;
  const chosen = askForKey('isolation', option, key);
  if (chosen === 'thread' || chosen === 'process') return chosen;
  throw unusableOptions(`isolation(${key.text}) returned neither thread nor process`, { key: key.text });
}

/**
 * A child running as another uid reads the agent's files with that uid's rights, and a
 * folder made with mkdtemp (mode 0700) hides them: the load would fail as "module not found".
 * Checked here from the mode bits, up to `top` (else `/`), so the error says what to change.
 */
export function checkReadableBy(
  user: { readonly uid: number; readonly gid: number },
  file: string,
  key: ResolvedKey,
  top: string | null,
): void {
  const may = (path: string, bits: number): boolean => {
    const stat = statSync(path);
    if (stat.uid === user.uid) return (stat.mode & (bits << 6)) !== 0;
    if (stat.gid === user.gid) return (stat.mode & (bits << 3)) !== 0;
    return (stat.mode & bits) !== 0;
  };
  const refuse = (path: string, what: string): never => {
    const mode = (statSync(path).mode & 0o777).toString(8).padStart(3, '0');
    throw moduleLoad(
      `${key.text} runs as uid ${user.uid} (isolation 'process'), which cannot ${what} ${path} (mode ${mode}): widen its mode, or set processUser`,
      key.text,
    );
  };
  if (!may(file, 0o4)) refuse(file, 'read');
  for (let dir = dirname(file); ; dir = dirname(dir)) {
    if (!may(dir, 0o1)) refuse(dir, 'enter');
    if (dir === top || dir === dirname(dir)) break;
  }
}
