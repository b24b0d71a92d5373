import { notJson } from './errors.js';

/**
 * The most JSON one result or chunk may take. Results are structured clones of up to 256 MB,
 * and JSON can be far larger than the clone (a sparse array of length 2e7 is a few bytes
 * cloned, 100 MB of `null,` written, and took JSON.stringify 19 to 33 s): a bounded walk
 * measures first, so the server never starts writing what it would not finish.
 */
export const MAX_JSON_BYTES = 64 * 2 ** 20;

/**
 * A result or chunk as JSON, as `sandpool call` writes it: undefined becomes null and a
 * bigint its decimal text. One too large, or with a cycle, is DATA_CLONE.
 */
export function toJson(value: unknown, what: 'the result' | 'a chunk', key?: string): string {
  if (jsonExceeds(value ?? null, MAX_JSON_BYTES)) {
    throw notJson(what, key, new RangeError(`its JSON would take more than ${MAX_JSON_BYTES} bytes`));
  }
  try {
    return JSON.stringify(value ?? null, (_name, item: unknown) => (typeof item === 'bigint' ? item.toString() : item));
  } catch (cause) {
    throw notJson(what, key, cause);
  }
}

/**
 * Whether JSON.stringify would write more than `limit` bytes, counted per reference as
 * JSON writes it (so a cycle, too, runs past the limit), every array slot counted, holes
 * included, before the slots are read.
 */
function jsonExceeds(root: unknown, limit: number): boolean {
  let total = 0;
  const stack: unknown[] = [root];
  while (stack.length > 0) {
    const value = stack.pop();
    if (typeof value === 'string') total += value.length + 2;
    else if (typeof value !== 'object' || value === null) total += 24;
    else if (ArrayBuffer.isView(value)) total += value.byteLength * 8 + 2;
    else if (Array.isArray(value)) {
      total += value.length * 5 + 2;
      if (total > limit) return true;
      for (const item of value) stack.push(item);
    } else {
      total += 2;
      for (const name of Object.keys(value)) {
        total += name.length + 4;
        if (total > limit) return true;
        stack.push((value as Record<string, unknown>)[name]);
      }
    }
    if (total > limit) return true;
  }
  return false;
}
