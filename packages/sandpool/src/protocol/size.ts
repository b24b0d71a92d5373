/**
 * What a value would cost to write out, bounded: both sides check a value with it before
 * anything else walks it (the worker before it serializes a result, the coordinator before
 * a capability sees its arguments). Shared by both sides; no dependencies.
 */

/** What serialization would meet: more than the limit, a SharedArrayBuffer itself, a view of one, or none of these. */
export type Measured = 'too large' | 'bare shared' | 'shared' | 'fits';

/**
 * Whether `root` would take more than `limit` bytes to serialize, stopping as soon as it
 * would. V8 writes a string once per reference (objects once per identity), so a value
 * holding one 50 MB string a thousand times serializes to 50 GB: strings count per
 * reference. An array counts every slot, holes included: a sparse array of length 2^32−1
 * serializes to a few bytes, but whatever walks it later (a spread, JSON.stringify) walks
 * every slot.
 */
export function exceedsSize(root: unknown, limit: number): boolean {
  return measure(root, limit) === 'too large';
}

/** As exceedsSize, and whether the value holds shared memory (a view of a SharedArrayBuffer is referred to, never written). */
export function measure(root: unknown, limit: number): Measured {
  let shared = false;
  let bare = false;
  let total = 0;
  const seen = new Set<object>();
  const stack: unknown[] = [root];
  while (stack.length > 0) {
    const value = stack.pop();
    if (typeof value === 'string') total += value.length + 5;
    else if (typeof value !== 'object' || value === null) total += 9;
    else if (!seen.has(value)) {
      seen.add(value);
      total += 4;
      if (ArrayBuffer.isView(value)) {
        if (value.buffer instanceof SharedArrayBuffer) shared = true;
        else total += value.byteLength;
      } else if (value instanceof ArrayBuffer) total += value.byteLength;
      else if (value instanceof SharedArrayBuffer) bare = true;
      else if (value instanceof Map) for (const [k, v] of value) stack.push(k, v);
      else if (value instanceof Set) for (const v of value) stack.push(v);
      else {
        // Read before anything is walked: a length past the limit is refused unwalked.
        if (Array.isArray(value)) total += value.length;
        if (total > limit) return 'too large';
        for (const name of Object.keys(value)) {
          total += name.length + 2;
          if (total > limit) return 'too large';
          stack.push((value as Record<string, unknown>)[name]);
        }
        if (value instanceof Error) stack.push(value.message, value.stack);
      }
    }
    if (total > limit) return 'too large';
  }
  return bare ? 'bare shared' : shared ? 'shared' : 'fits';
}
