/**
 * The worker's side of a non-primitive result: bounded, then serialized into bytes the
 * coordinator can size before it deserializes anything.
 */
import { serialize } from 'node:v8';
import { LIMITS } from '../protocol/messages.js';
import { serializeMoving } from '../protocol/transfer-codec.js';

export type Serialized =
  | { ok: true; bytes: ArrayBuffer; shared?: SharedArrayBuffer[] }
  | { ok: false; reason: string; cause?: unknown };

/**
 * V8 writes a string once per reference (objects once per identity), so a result holding
 * one 50 MB string a thousand times serializes to 50 GB. The walk counts what serialization
 * would write and stops past the limit, before any of it is allocated. A SharedArrayBuffer
 * (or a view of one) goes only in the result of a call made with `{ shared: true }` (`share`).
 */
export function serializeResult(value: unknown, moved?: readonly ArrayBuffer[], share = false): Serialized {
  const walked = walk(value, LIMITS.resultBytes);
  if (walked === 'too large') {
    return { ok: false, reason: `the result would serialize to more than ${LIMITS.resultBytes / 2 ** 20} MB` };
  }
  if (walked !== 'fits' && !share) {
    return {
      ok: false,
      reason:
        'the result holds a SharedArrayBuffer: memory shared with the caller goes only to a call made with { shared: true }',
    };
  }
  if (walked === 'bare shared') {
    // Node's deserializer cannot take one back (on 20, 24 and 26 alike); a view of it can travel.
    return {
      ok: false,
      reason: 'a bare SharedArrayBuffer cannot be returned: return a view of it (new Int32Array(buffer), say)',
    };
  }
  if (moved !== undefined || walked === 'shared') {
    // Moved buffers are counted by the walk above as if written inline: the limit is the same.
    try {
      const { bytes, shared } = serializeMoving(value, moved ?? [], share);
      return shared.length === 0 ? { ok: true, bytes } : { ok: true, bytes, shared };
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

/**
 * What serialization would meet: more than `limit` bytes, a SharedArrayBuffer itself, a view of
 * one, or none of these.
 */
function walk(root: unknown, limit: number): 'too large' | 'bare shared' | 'shared' | 'fits' {
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
        // A view of shared memory is referred to, never written.
        if (value.buffer instanceof SharedArrayBuffer) shared = true;
        else total += value.byteLength;
      } else if (value instanceof ArrayBuffer) total += value.byteLength;
      else if (value instanceof SharedArrayBuffer) bare = true;
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
    if (total > limit) return 'too large';
  }
  return bare ? 'bare shared' : shared ? 'shared' : 'fits';
}
