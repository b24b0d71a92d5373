import { unusableOptions } from '../../errors.js';
import type { AgentKey, ResolvedKey } from '../../key.js';

/**
 * Asks an option given as a function of the key (`permissions`, `host`, `isolation`) for
 * its answer, unchecked: the caller checks its shape. It sees a frozen plain key, and a
 * throw becomes that key's INVALID_OPTIONS.
 */
export function askForKey(name: string, option: (key: Readonly<AgentKey>) => unknown, key: ResolvedKey): unknown {
  try {
    return option(Object.freeze({ swarm: key.swarm, snapshot: key.snapshot, stem: key.stem }));
  } catch (cause) {
    throw unusableOptions(`${name}(${key.text}) threw`, { key: key.text, cause });
  }
}
