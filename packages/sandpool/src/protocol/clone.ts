/** Values structured clone copies by value: nothing a later mutation could reach. */
export function isPrimitive(value: unknown): boolean {
  return (typeof value !== 'object' && typeof value !== 'function') || value === null;
}

/** A result or chunk that travels inline: a primitive, and a string no longer than `maxString`. */
export function isInline(value: unknown, maxString: number): boolean {
  return isPrimitive(value) && (typeof value !== 'string' || value.length <= maxString);
}

/**
 * Whether structured clone would share memory rather than copy it: a SharedArrayBuffer, a view
 * of one, or a shared WebAssembly.Memory anywhere in `args`. Arguments that are all primitives
 * cost one pass over the list. Like structured clone, the walk reads own enumerable properties
 * (getters included).
 */
/**
 * Arrays up to this length are walked by index; longer ones by Object.values, which costs what
 * an array holds rather than its length: a sparse one (a length of 2³²−1 from some tenant's
 * result, say) costs its few elements.
 */
const INDEXED_WALK = 65_536;

/** `WebAssembly.Memory`, which Node's types leave out: a shared one is shared by structured clone. */
const WasmMemory = (
  globalThis as unknown as { WebAssembly: { Memory: abstract new (...args: never[]) => { buffer: ArrayBufferLike } } }
).WebAssembly.Memory;

/**
 * Whether structured clone would share memory rather than copy it: a SharedArrayBuffer, a view
 * of one, or a shared WebAssembly.Memory anywhere in `args`. Arguments that are all primitives
 * cost one pass over the list. Like structured clone, the walk reads own enumerable properties
 * (getters included).
 */
export function holdsSharedMemory(args: readonly unknown[]): boolean {
  const stack: object[] = [];
  pushObjects(stack, args, args.length);
  if (stack.length === 0) return false;
  const seen = new Set<object>();
  for (let value = stack.pop(); value !== undefined; value = stack.pop()) {
    if (seen.has(value)) continue;
    seen.add(value);
    if (value instanceof SharedArrayBuffer) return true;
    if (ArrayBuffer.isView(value) || value instanceof WasmMemory) {
      if ((value as { buffer: unknown }).buffer instanceof SharedArrayBuffer) return true;
    } else if (Array.isArray(value)) {
      if (value.length <= INDEXED_WALK) pushObjects(stack, value, value.length);
      else pushObjects(stack, Object.values(value), Number.POSITIVE_INFINITY);
    } else if (value instanceof Map) {
      for (const [key, entry] of value) pushObjects(stack, [key, entry], 2);
    } else if (value instanceof Set) {
      for (const entry of value) pushObjects(stack, [entry], 1);
    } else if (!(value instanceof ArrayBuffer)) {
      const values = Object.values(value);
      pushObjects(stack, values, values.length);
      if (value instanceof Error) pushObjects(stack, [value.cause], 1);
    }
  }
  return false;
}

/** Pushes the objects among `values[0..length)`; a bound past the end stops at the end. */
function pushObjects(stack: object[], values: readonly unknown[], length: number): void {
  const end = Math.min(length, values.length);
  for (let i = 0; i < end; i += 1) {
    const value = values[i];
    if (typeof value === 'object' && value !== null) stack.push(value);
  }
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
