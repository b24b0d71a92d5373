import { SandpoolError } from '../errors.js';
import type { ResolvedKey } from '../key.js';
import type { ResolvedPoolOptions } from '../options.js';
import type { Isolation } from './agent-worker.js';
import { askForKey } from './key-option.js';

/** Where a key's agent runs, from the `isolation` option; a function's answer is checked. */
export function isolationFor(option: ResolvedPoolOptions['isolation'], key: ResolvedKey): Isolation {
  if (typeof option !== 'function') return option;
  const chosen = askForKey('isolation', option, key);
  if (chosen === 'thread' || chosen === 'process') return chosen;
  throw new SandpoolError(
    'ERR_SANDPOOL_INVALID_OPTIONS',
    `isolation(${key.text}) returned neither thread nor process`,
    {
      key: key.text,
    },
  );
}
