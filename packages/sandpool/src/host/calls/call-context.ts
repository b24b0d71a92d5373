/**
 * What a call carries for the capabilities it reaches: the caller's `context` (a copy made
 * when the call is made, so a caller that changes its object afterwards changes nothing the
 * capabilities see) and the caller's async context (its AsyncLocalStorage stores), in which
 * each capability runs. Without the latter a capability runs in the async context of the
 * worker's port, which is that of whichever call started the worker: concurrent
 * conversations would all read the first one's store.
 */
import { AsyncResource } from 'node:async_hooks';
import { serialize } from 'node:v8';
import { contextTooLarge, dataClone } from '../../errors.js';
import { exceedsSize } from '../../protocol/size.js';

/** Serialized bytes of a call's `context` at most. */
export const CONTEXT_BYTES = 64 * 1024;

/** The caller's `context` as bytes (each capability call gets its own copy), or null for none. Throws the refusal. */
export function copyContext(context: unknown, key: string): Uint8Array | null {
  if (context === undefined) return null;
  // Sized before it is serialized: a sparse array serializes to a few bytes, and a capability would walk every slot.
  if (exceedsSize(context, CONTEXT_BYTES)) throw contextTooLarge(key, CONTEXT_BYTES);
  let bytes: Buffer;
  try {
    bytes = serialize(context);
  } catch (error) {
    throw dataClone(key, 'the call’s context cannot be cloned', error);
  }
  if (bytes.byteLength > CONTEXT_BYTES) throw contextTooLarge(key, CONTEXT_BYTES);
  return bytes;
}

/**
 * The async context of the code making a call, for its capabilities to run in; null when no
 * capability can run (a pool without any), so such pools allocate nothing per call for it.
 */
export function callerScope(capabilities: boolean): AsyncResource | null {
  return capabilities ? new AsyncResource('sandpool.call') : null;
}
