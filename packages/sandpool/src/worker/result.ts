/**
 * The worker's side of a non-primitive result: bounded, then serialized into bytes the
 * coordinator can size before it deserializes anything.
 */
import { serialize } from 'node:v8';
import { LIMITS } from '../protocol/messages.js';
import { serializeMoving } from '../protocol/transfer-codec.js';

export type Serialized = { ok: true; bytes: ArrayBuffer } | { ok: false; reason: string; cause?: unknown };

/**
 * V8 writes a string once per reference (objects once per identity), so a result holding
 * one 50 MB string a thousand times serializes to 50 GB. The walk counts what serialization
 * would write and stops past the limit, before any of it is allocated.
 */
export function serializeResult(value: unknown, moved?: readonly ArrayBuffer[]): Serialized {
  if (exceeds(value, LIMITS.resultBytes)) {
    return { ok: false, reason: `the result would serialize to more than ${LIMITS.resultBytes / 2 ** 20} MB` };
  }
  if (moved !== undefined) {
    // Moved buffers are counted by the walk above as if written inline: the limit is the same.
    try {
      return { ok: true, bytes: serializeMoving(value, moved) };
    } catch (cause) {
      return { ok: false, reason: 'the result cannot be cloned', cause };
    }
  }
  let buffer: Buffer;
  try {
    buffer = serialize(value);
  } catch (cause) {
    return { ok: false, reason: 'the result cannot be cloned', cause };
  }
  const whole = buffer.byteOffset === 0 && buffer.byteLength === buffer.buffer.byteLength;
  const bytes = whole ? buffer.buffer : buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength);
  // A Buffer's memory may be a SharedArrayBuffer only when made so by hand; serialize never does.
  return { ok: true, bytes: bytes as ArrayBuffer };
}

function exceeds(root: unknown, limit: number): boolean {
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
        for (const name of Object.keys(value)) {
          total += name.length + 2;
          stack.push((value as Record<string, unknown>)[name]);
        }
        if (value instanceof Error) stack.push(value.message, value.stack);
      }
    }
    if (total > limit) return true;
  }
  return false;
}
