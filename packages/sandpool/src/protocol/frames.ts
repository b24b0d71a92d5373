/**
 * The channel of a process key: sandpool's own frames on two private pipes (the child reads
 * its fd TO_CHILD_FD and writes its fd FROM_CHILD_FD), each a 4-byte big-endian length and
 * that many bytes of one message: JSON where JSON carries it exactly (see jsonExact), else
 * v8.serialize, told apart by their first byte. Node's
 * 'ipc' channel buffers a frame of whatever length the child announces before anything can
 * look at it; here the length is checked against FRAME_LIMIT before a byte of the frame is
 * kept. Shared by both ends; no dependencies.
 */
import { DefaultDeserializer, DefaultSerializer } from 'node:v8';
import { LIMITS } from './messages.js';

/**
 * The child's descriptors for its channel. The host's frames come on its stdin: from fds past
 * 2, Node 26's permission model refuses a stream (it reads them as network access). Its own
 * go out on the first descriptor past stdio, written synchronously (that pipe blocks: a
 * host behind on reading holds the child back, never the other way round).
 */
export const TO_CHILD_FD = 0;
export const FROM_CHILD_FD = 3;

/** The largest frame either side takes: a result at its limit, and room for the message around it. */
export const FRAME_LIMIT = LIMITS.resultBytes + 1024 * 1024;

const HEADER = 4;
const BLANK_HEADER = Buffer.alloc(HEADER);

/** What every JSON frame starts with (a message is an object); v8.serialize's bytes start with its version tag, 0xff. */
const JSON_START = 0x7b;
/**
 * Characters of strings one JSON frame carries at most: JSON writes a control character as six
 * bytes, so a long string goes as v8.serialize, which never takes more than two per character.
 */
const JSON_STRING_CHARS = 64 * 1024;

/** One message as a frame, in one buffer (one write). */
export function encodeFrame(message: unknown): Buffer {
  return jsonExact(message) ? jsonFrame(message) : v8Frame(message);
}

/**
 * Whether JSON gives back exactly this message: an object literal whose fields are primitives
 * JSON keeps (strings, booleans, null, finite numbers other than -0) or dense arrays of them,
 * strings included up to JSON_STRING_CHARS. Most messages are that (a batch of calls with
 * primitive arguments, their primitive results), and JSON costs each end a fraction of a
 * serializer object's making and a buffer's: 0.5 µs to encode and 0.4 to decode such a batch
 * where v8.serialize took 4 and 1.8, each way of each round trip. Anything else (undefined,
 * NaN, a bigint, an object in an array) goes as v8.serialize, as every message did.
 */
function jsonExact(message: unknown): message is object {
  if (typeof message !== 'object' || message === null || Object.getPrototypeOf(message) !== Object.prototype) {
    return false;
  }
  let chars = 0;
  const keeps = (value: unknown): boolean => {
    switch (typeof value) {
      case 'string':
        chars += value.length;
        return chars <= JSON_STRING_CHARS;
      case 'number':
        return Number.isFinite(value) && !Object.is(value, -0);
      case 'boolean':
        return true;
      default:
        return value === null;
    }
  };
  for (const key of Object.keys(message)) {
    chars += key.length;
    const value = (message as Record<string, unknown>)[key];
    if (Array.isArray(value)) {
      for (let i = 0; i < value.length; i++) if (!(i in value) || !keeps(value[i])) return false;
    } else if (!keeps(value)) {
      return false;
    }
  }
  return true;
}

function jsonFrame(message: object): Buffer {
  const text = JSON.stringify(message);
  const length = Buffer.byteLength(text);
  const frame = Buffer.allocUnsafe(HEADER + length);
  frame.writeUInt32BE(length, 0);
  frame.write(text, HEADER);
  return frame;
}

/** Serialized after a blank header, its length then written over it. */
function v8Frame(message: unknown): Buffer {
  const serializer = new DefaultSerializer();
  serializer.writeRawBytes(BLANK_HEADER);
  serializer.writeHeader();
  serializer.writeValue(message);
  const frame = serializer.releaseBuffer();
  frame.writeUInt32BE(frame.length - HEADER, 0);
  return frame;
}

/** A frame past FRAME_LIMIT, or bytes that are no serialized value: the writer is breaking the protocol. */
export class FrameError extends Error {}

/**
 * Turns the bytes read from a channel into messages. What it holds is at most the frame being
 * read (whose length was checked first) and the rest of the last chunk read.
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** The length of the frame being read; -1 while its header is not all in. */
  private needed = -1;

  constructor(private readonly onMessage: (message: unknown) => void) {}

  /** Throws FrameError at the first frame that breaks the protocol; nothing after it is read. */
  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    for (;;) {
      if (this.needed < 0) {
        if (this.buffered < HEADER) return;
        const length = this.take(HEADER).readUInt32BE(0);
        if (length > FRAME_LIMIT) {
          this.chunks = [];
          throw new FrameError(`it announced a frame of ${length} bytes, past the bound of ${FRAME_LIMIT}`);
        }
        this.needed = length;
      }
      if (this.buffered < this.needed) return;
      const body = this.take(this.needed);
      this.needed = -1;
      this.onMessage(decode(body));
    }
  }

  /** The next `bytes` bytes, out of the chunks (copied only when they span more than one). */
  private take(bytes: number): Buffer {
    this.buffered -= bytes;
    const first = this.chunks[0] as Buffer;
    if (first.length >= bytes) {
      if (first.length === bytes) this.chunks.shift();
      else this.chunks[0] = first.subarray(bytes);
      return first.subarray(0, bytes);
    }
    const joined = Buffer.allocUnsafe(bytes);
    let at = 0;
    while (at < bytes) {
      const chunk = this.chunks[0] as Buffer;
      const part = Math.min(chunk.length, bytes - at);
      chunk.copy(joined, at, 0, part);
      at += part;
      if (part === chunk.length) this.chunks.shift();
      else this.chunks[0] = chunk.subarray(part);
    }
    return joined;
  }
}

function decode(body: Buffer): unknown {
  try {
    if (body[0] === JSON_START) return JSON.parse(body.toString('utf8'));
    const deserializer = new DefaultDeserializer(body);
    deserializer.readHeader();
    return deserializer.readValue();
  } catch (error) {
    throw new FrameError(`a frame that does not deserialize: ${(error as Error).message}`);
  }
}
