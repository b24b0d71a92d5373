/**
 * The worker's side of a non-primitive result: bounded, then serialized into bytes the
 * coordinator can size before it deserializes anything.
 */
import v8 from 'node:v8';
import { LIMITS } from '../protocol/messages.js';
import { measure } from '../protocol/size.js';
import { serializeMoving } from '../protocol/transfer-codec.js';

/**
 * Taken when the runtime loads, before any agent code: a named import of a builtin is a live
 * binding, and an agent that replaces `v8.serialize` and calls `syncBuiltinESMExports()`
 * would choose the bytes the coordinator receives, past every check made on the value.
 */
const { serialize } = v8;

export type Serialized =
  | { ok: true; bytes: ArrayBuffer; shared?: SharedArrayBuffer[] }
  | { ok: false; reason: string; cause?: unknown };

/**
 * Measured first (see protocol/size.ts), before any of it is allocated. A SharedArrayBuffer
 * (or a view of one) goes only in the result of a call made with `{ shared: true }` (`share`).
 */
export function serializeResult(value: unknown, moved?: readonly ArrayBuffer[], share = false): Serialized {
  const walked = measure(value, LIMITS.resultBytes);
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
