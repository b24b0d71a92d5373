/**
 * What a value would cost to write out, bounded: both sides check a value with it before
 * anything else walks it (the worker before it serializes a result, the coordinator before
 * a capability sees its arguments). Shared by both sides; no dependencies.
 */

/**
 * Whether `root` would take more than `limit` bytes to serialize, stopping as soon as it
 * would. V8 writes a string once per reference (objects once per identity), so a value
 * holding one 50 MB string a thousand times serializes to 50 GB: strings count per
 * reference. An array counts every slot, holes included: a sparse array of length 2^32−1
 * serializes to a few bytes, but whatever walks it later (a spread, JSON.stringify) walks
 * every slot.
 */
export function exceedsSize(root: unknown, limit: number): boolean {
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
      if (ArrayBuffer.isView(value)) total += value.byteLength;
      else if (value instanceof ArrayBuffer) total += value.byteLength;
      else if (value instanceof Map) for (const [k, v] of value) stack.push(k, v);
      else if (value instanceof Set) for (const v of value) stack.push(v);
      else {
        // Read before anything is walked: a length past the limit is refused unwalked.
        if (Array.isArray(value)) total += value.length;
        if (total > limit) return true;
        for (const name of Object.keys(value)) {
          total += name.length + 2;
          if (total > limit) return true;
          stack.push((value as Record<string, unknown>)[name]);
        }
        if (value instanceof Error) stack.push(value.message, value.stack);
      }
    }
    if (total > limit) return true;
  }
  return false;
}
