import { isPlainObject } from '../../protocol/check-kit.js';

/**
 * A deep copy of plain objects and arrays, frozen; functions and other objects (an
 * AbortSignal, a class instance) are kept as they are. What a caller reads of a pool's
 * options can then neither be changed nor change what the pool does.
 */
export function frozenCopy<T>(value: T): T {
  if (Array.isArray(value)) return Object.freeze(value.map(frozenCopy)) as T;
  if (!isPlainObject(value)) return value;
  const copy: Record<string, unknown> = {};
  for (const [name, field] of Object.entries(value)) copy[name] = frozenCopy(field);
  return Object.freeze(copy) as T;
}
