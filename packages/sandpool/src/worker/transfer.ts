/**
 * `sandpool.transfer(value, [buffer…])`: marks a result (or a streamed chunk) whose buffers
 * move to the host instead of being copied. A WeakMap, so a marked value the agent never
 * returns costs nothing once it is dropped.
 */
import { IO_LIMITS } from '../protocol/agent-io.js';

const marks = new WeakMap<object, ArrayBuffer[]>();

export function markTransfer<T>(value: T, buffers: readonly ArrayBuffer[]): T {
  if ((typeof value !== 'object' && typeof value !== 'function') || value === null) {
    throw new TypeError('sandpool.transfer() marks an object: a primitive is copied anyway');
  }
  if (!Array.isArray(buffers) || buffers.length > IO_LIMITS.transfers) {
    throw new TypeError(`sandpool.transfer() takes an array of at most ${IO_LIMITS.transfers} ArrayBuffers`);
  }
  const list = [...new Set(buffers)];
  for (const buffer of list) {
    if (!(buffer instanceof ArrayBuffer)) throw new TypeError('sandpool.transfer() moves ArrayBuffers only');
  }
  marks.set(value, list);
  return value;
}

/** The buffers to move with this value, once: a value returned twice is copied the second time. */
export function takeTransfer(value: unknown): ArrayBuffer[] | undefined {
  if ((typeof value !== 'object' && typeof value !== 'function') || value === null) return undefined;
  const list = marks.get(value);
  if (list !== undefined) marks.delete(value);
  return list;
}
