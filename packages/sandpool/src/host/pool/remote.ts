import { inspect } from 'node:util';
import type { AgentKey } from '../../key.js';
import type { CallOptions } from '../../options.js';
import type { Remote } from '../../types.js';

type Submit = (key: AgentKey | string, fn: string, args: readonly unknown[], options?: CallOptions) => Promise<unknown>;

/**
 * Names the proxy answers itself, never as agent calls: `then` (so `await` does not call the
 * agent), `toJSON`, `toString` and `valueOf` (so logging and string conversion never make a
 * call whose rejection nobody handles). Agents exporting these are called with `pool.call`.
 */
const RESERVED: ReadonlySet<PropertyKey> = new Set(['then', 'toJSON', 'toString', 'valueOf', 'constructor']);

/** A typed proxy over `call`: every export of the agent becomes `(...args) => Promise`, with `call`'s errors. */
export function remoteProxy<T>(submit: Submit, key: AgentKey | string, options: CallOptions | undefined): Remote<T> {
  const label = `[sandpool remote ${typeof key === 'string' ? key : JSON.stringify(key)}]`;
  const target = Object.create(null) as Record<PropertyKey, unknown>;
  // util.inspect looks at the target of a proxy, not through it: this is what it shows.
  target[inspect.custom] = () => label;
  const functions = new Map<string, (...args: unknown[]) => Promise<unknown>>();
  return new Proxy(target, {
    get: (_target, property) => {
      if (property === 'toString') return () => label;
      if (typeof property !== 'string' || RESERVED.has(property)) return undefined;
      let fn = functions.get(property);
      if (fn === undefined) {
        fn = (...args: unknown[]) => submit(key, property, args, options);
        functions.set(property, fn);
      }
      return fn;
    },
    has: () => false,
    ownKeys: () => [],
    set: () => false,
    defineProperty: () => false,
    deleteProperty: () => false,
  }) as unknown as Remote<T>;
}
