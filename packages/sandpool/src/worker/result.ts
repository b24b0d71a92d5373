/**
 * The worker's side of a non-primitive result: bounded, then serialized into bytes the
 * coordinator can size before it deserializes anything.
 */
import { serialize } from 'node:v8';
import { LIMITS } from '../protocol/messages.js';
import { exceedsSize } from '../protocol/size.js';
import { serializeMoving } from '../protocol/transfer-codec.js';

export type Serialized = { ok: true; bytes: ArrayBuffer } | { ok: false; reason: string; cause?: unknown };

/** Counted first (see exceedsSize), before any of it is allocated. */
export function serializeResult(value: unknown, moved?: readonly ArrayBuffer[]): Serialized {
  if (exceedsSize(value, LIMITS.resultBytes)) {
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
