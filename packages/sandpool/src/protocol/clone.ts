/** Values structured clone copies by value: nothing a later mutation could reach. */
export function isPrimitive(value: unknown): boolean {
  return (typeof value !== 'object' && typeof value !== 'function') || value === null;
}

/** A result or chunk that travels inline: a primitive, and a string no longer than `maxString`. */
export function isInline(value: unknown, maxString: number): boolean {
  return isPrimitive(value) && (typeof value !== 'string' || value.length <= maxString);
}

/**
 * The arguments as they are now, for a call that must wait before it is posted: a caller
 * may reuse its objects as soon as `call()` returns. Throws DataCloneError like postMessage.
 */
export function copyArgs(args: unknown[]): unknown[] {
  return args.every(isPrimitive) ? args.slice() : structuredClone(args);
}

/**
 * Like copyArgs, moving `transfer`'s buffers into the copy now (the caller's are detached at
 * once); the copy's own buffers come back with it, cloned together so they are the same objects.
 */
export function moveArgs(args: unknown[], transfer: ArrayBuffer[]): { args: unknown[]; transfer: ArrayBuffer[] } {
  return structuredClone({ args, transfer }, { transfer });
}
