/** The coordinator's checks on the agent-side messages (see agent-io.ts), in the style of checks.ts. */
import { IO_LIMITS } from './agent-io.js';
import { bad, type Checked, isCallId, isCount } from './check-kit.js';
import { isInline } from './clone.js';
import { type FromWorker, LIMITS } from './messages.js';

export function checkChunk(raw: Record<string, unknown>): Checked {
  if (!isCallId(raw.id)) return bad('a chunk with a malformed call id');
  const { value, bytes } = raw;
  if (bytes === null) {
    if (!isInline(value, LIMITS.inlineString)) return bad('an object or long string chunk outside serialized bytes');
  } else if (!(bytes instanceof ArrayBuffer) || value !== undefined) {
    return bad('a malformed chunk');
  } else if (bytes.byteLength > LIMITS.resultBytes) {
    return bad(`a chunk of ${bytes.byteLength} bytes, past the limit its runtime keeps`);
  } else if (raw.moved !== undefined && !checkMoved(raw.moved, bytes.byteLength)) {
    return bad('a chunk with a malformed list of moved buffers');
  }
  return { ok: true, message: raw as unknown as FromWorker };
}

export function checkHostCall(raw: Record<string, unknown>): Checked {
  if (!isCallId(raw.id) || !isCallId(raw.call)) return bad('a host call with a malformed id');
  const { name, args } = raw;
  if (typeof name !== 'string' || name.length === 0 || name.length > IO_LIMITS.hostName) {
    return bad('a host call with a malformed name');
  }
  if (!(args instanceof ArrayBuffer) || args.byteLength > IO_LIMITS.hostArgsBytes) {
    return bad('host call arguments past the limit its runtime keeps');
  }
  return { ok: true, message: raw as unknown as FromWorker };
}

/** Credit for a host call's body: at most the window the runtime keeps (more is checked against what was sent, where it is known). */
export function checkHostPull(raw: Record<string, unknown>): Checked {
  if (!isCallId(raw.id)) return bad('a body pull with a malformed id');
  if (!isCount(raw.n) || raw.n === 0 || raw.n > IO_LIMITS.hostBodyWindow) return bad('a body pull past its window');
  return { ok: true, message: { t: 'host-pull', id: raw.id, n: raw.n } };
}

export function checkHostCancel(raw: Record<string, unknown>): Checked {
  if (!isCallId(raw.id)) return bad('a host cancel with a malformed id');
  return { ok: true, message: { t: 'host-cancel', id: raw.id } };
}

/** Shared buffers are not copied: only their number is bounded. */
export function checkShared(shared: unknown): boolean {
  if (!Array.isArray(shared) || shared.length > IO_LIMITS.transfers) return false;
  for (let i = 0; i < shared.length; i += 1) if (!(shared[i] instanceof SharedArrayBuffer)) return false;
  return true;
}

/** Moved buffers count toward the result's size like bytes written inline. */
export function checkMoved(moved: unknown, inline: number): boolean {
  if (!Array.isArray(moved) || moved.length > IO_LIMITS.transfers) return false;
  let total = inline;
  for (const buffer of moved) {
    if (!(buffer instanceof ArrayBuffer)) return false;
    total += buffer.byteLength;
  }
  return total <= LIMITS.resultBytes;
}
