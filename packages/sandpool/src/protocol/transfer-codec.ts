/**
 * `v8.serialize` with some ArrayBuffers moved rather than written into the bytes: the
 * serialized bytes refer to them by index and they travel in the message's transfer list.
 * For a call made with `{ shared: true }`, views of SharedArrayBuffers are referred to the same
 * way, their buffers travelling beside the bytes, shared (a bare SharedArrayBuffer cannot:
 * Node's deserializer takes none back). Both sides run this file in the same
 * Node binary, so the view table below matches.
 *
 * Node's own serializer writes every typed array's bytes inline (to keep a pooled Buffer's
 * neighbours out); this one does too, except for views over a buffer being moved.
 */
import { DefaultDeserializer, DefaultSerializer } from 'node:v8';

type ViewCtor = new (buffer: ArrayBuffer, byteOffset: number, length: number) => ArrayBufferView;

const VIEW_NAMES = [
  'Int8Array',
  'Uint8Array',
  'Uint8ClampedArray',
  'Int16Array',
  'Uint16Array',
  'Int32Array',
  'Uint32Array',
  'Float16Array',
  'Float32Array',
  'Float64Array',
  'BigInt64Array',
  'BigUint64Array',
  'DataView',
] as const;
const VIEWS: (ViewCtor | undefined)[] = VIEW_NAMES.map(
  (name) => (globalThis as unknown as Record<string, ViewCtor | undefined>)[name],
);
const VIEW_INDEX = new Map<string, number>(VIEW_NAMES.map((name, index) => [`[object ${name}]`, index]));
/** Index of Buffer, which must come back as a Buffer. */
const BUFFER = VIEW_NAMES.length;
/** Added to a view's type index when its memory is one of the moved buffers. */
const MOVED = 1000;
/** Added to a view's type index when its memory is one of the shared buffers. */
const SHARED = 2000;

class MovingSerializer extends DefaultSerializer {
  /** The SharedArrayBuffers of the views met so far, by index; null: views of one are copied, as v8.serialize does. */
  private readonly shared: Map<SharedArrayBuffer, number> | null;

  constructor(
    private readonly moved: Map<ArrayBuffer, number>,
    share: boolean,
  ) {
    super();
    this.shared = share ? new Map() : null;
    for (const [buffer, index] of moved) this.transferArrayBuffer(index, buffer);
  }

  sharedBuffers(): SharedArrayBuffer[] {
    return [...(this.shared?.keys() ?? [])];
  }

  _writeHostObject(view: NodeJS.TypedArray | DataView): void {
    const type = Buffer.isBuffer(view) ? BUFFER : VIEW_INDEX.get(Object.prototype.toString.call(view));
    if (type === undefined) throw new TypeError('an array buffer view of an unknown kind');
    if (this.shared !== null && view.buffer instanceof SharedArrayBuffer) {
      let shared = this.shared.get(view.buffer);
      if (shared === undefined) {
        shared = this.shared.size;
        this.shared.set(view.buffer, shared);
      }
      this.writeUint32(SHARED + type);
      this.writeUint32(shared);
      this.writeDouble(view.byteOffset);
      this.writeDouble(view.byteLength);
      return;
    }
    const index = this.moved.get(view.buffer as ArrayBuffer);
    if (index === undefined) {
      this.writeUint32(type);
      this.writeUint32(view.byteLength);
      this.writeRawBytes(new Uint8Array(view.buffer, view.byteOffset, view.byteLength));
      return;
    }
    this.writeUint32(MOVED + type);
    this.writeUint32(index);
    this.writeDouble(view.byteOffset);
    this.writeDouble(view.byteLength);
  }
}

class MovingDeserializer extends DefaultDeserializer {
  constructor(
    bytes: Uint8Array,
    private readonly moved: readonly ArrayBuffer[],
    private readonly shared: readonly SharedArrayBuffer[],
  ) {
    super(bytes);
    for (const [index, buffer] of moved.entries()) this.transferArrayBuffer(index, buffer);
  }

  _readHostObject(): unknown {
    const tag = this.readUint32();
    if (tag < MOVED) {
      const length = this.readUint32();
      const copy = new ArrayBuffer(length);
      new Uint8Array(copy).set(this.readRawBytes(length) as unknown as Uint8Array);
      return view(tag, copy, 0, length);
    }
    const sharing = tag >= SHARED;
    const buffer = (sharing ? this.shared : this.moved)[this.readUint32()];
    const byteOffset = this.readDouble();
    const byteLength = this.readDouble();
    if (buffer === undefined || byteOffset + byteLength > buffer.byteLength)
      throw new RangeError('a moved or shared view out of bounds');
    return view(tag - (sharing ? SHARED : MOVED), buffer, byteOffset, byteLength);
  }
}

function view(
  type: number,
  buffer: ArrayBuffer | SharedArrayBuffer,
  byteOffset: number,
  byteLength: number,
): ArrayBufferView {
  if (type === BUFFER) return Buffer.from(buffer, byteOffset, byteLength);
  const Ctor = VIEWS[type];
  if (Ctor === undefined) throw new TypeError('an array buffer view of an unknown kind');
  const size = (Ctor as unknown as { BYTES_PER_ELEMENT?: number }).BYTES_PER_ELEMENT ?? 1;
  if (byteOffset % size !== 0) {
    // Misaligned inside the moved buffer: only a copy can hold it.
    const copy = buffer.slice(byteOffset, byteOffset + byteLength);
    return new Ctor(copy as ArrayBuffer, 0, byteLength / size);
  }
  return new Ctor(buffer as ArrayBuffer, byteOffset, Ctor === (DataView as unknown) ? byteLength : byteLength / size);
}

/**
 * Serializes `value`; the buffers in `moved` are referred to, not written, and with `share`
 * so is the memory of every view of a SharedArrayBuffer (listed in `shared`). Throws like
 * v8.serialize.
 */
export function serializeMoving(
  value: unknown,
  moved: readonly ArrayBuffer[],
  share = false,
): { bytes: ArrayBuffer; shared: SharedArrayBuffer[] } {
  const serializer = new MovingSerializer(new Map(moved.map((buffer, index) => [buffer, index])), share);
  serializer.writeHeader();
  serializer.writeValue(value);
  const out = serializer.releaseBuffer();
  const bytes = out.buffer.slice(out.byteOffset, out.byteOffset + out.byteLength) as ArrayBuffer;
  return { bytes, shared: serializer.sharedBuffers() };
}

export function deserializeMoving(
  bytes: ArrayBuffer,
  moved: readonly ArrayBuffer[],
  shared: readonly SharedArrayBuffer[] = [],
): unknown {
  const deserializer = new MovingDeserializer(new Uint8Array(bytes), moved, shared);
  deserializer.readHeader();
  return deserializer.readValue();
}
