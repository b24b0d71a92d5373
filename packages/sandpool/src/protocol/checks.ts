/**
 * The coordinator's checks on everything a worker sends. Hand-written and cheap (no zod: the
 * protocol file is shared with workers, and these run on every reply): shapes, closed code
 * sets, dense arrays of bounded length, bounded text. A message that fails is a forgery or a
 * broken runtime; the caller ends that worker with reason `protocol`.
 */
import {
  checkChunk,
  checkHostCall,
  checkHostCancel,
  checkHostPull,
  checkMoved,
  checkShared,
} from './agent-io-checks.js';
import { bad, type Checked, isCallId, isCount, isDense, isPlainObject, isText } from './check-kit.js';
import { isInline } from './clone.js';
import {
  AGENT_CODE,
  CALL_FAILURES,
  DENIABLE,
  type Deniable,
  type FromWorker,
  LIMITS,
  LOAD_FAILURES,
  type OutputChunk,
  type RemoteError,
} from './messages.js';

const CALL_CODES: ReadonlySet<unknown> = new Set(CALL_FAILURES);
const LOAD_CODES: ReadonlySet<unknown> = new Set(LOAD_FAILURES);

export function checkFromWorker(raw: unknown): Checked {
  if (!isPlainObject(raw)) return bad('a message that is not a plain object');
  switch (raw.t) {
    case 'done':
      return checkDone(raw);
    case 'result':
      return checkResult(raw);
    case 'out':
      return checkOutput(raw);
    case 'chunk':
      return checkChunk(raw);
    case 'host':
      return checkHostCall(raw);
    case 'host-pull':
      return checkHostPull(raw);
    case 'host-cancel':
      return checkHostCancel(raw);
    case 'ready':
      if (!isCount(raw.tid)) return bad('a ready message with a malformed thread id');
      return { ok: true, message: { t: 'ready', tid: raw.tid } };
    case 'memory':
      if (!isCount(raw.heap) || !isCount(raw.external)) return bad('malformed memory figures');
      return { ok: true, message: { t: 'memory', heap: raw.heap, external: raw.external } };
    case 'load-failed':
      if (!LOAD_CODES.has(raw.code)) return bad('a load failure with a code outside the closed set');
      if (!isRemoteError(raw.error)) return bad('a malformed load error');
      return { ok: true, message: raw as unknown as FromWorker };
    default:
      return bad('a message of unknown type');
  }
}

function checkDone(raw: Record<string, unknown>): Checked {
  const { ok, err } = raw;
  if (!isDense(ok, LIMITS.replyBatch * 2) || ok.length % 2 !== 0) return bad('a malformed ok list');
  if (!isDense(err, LIMITS.replyBatch * 3) || err.length % 3 !== 0) return bad('a malformed error list');
  for (let i = 0; i < ok.length; i += 2) {
    if (!isCallId(ok[i])) return bad('a reply with a malformed call id');
    if (!isInline(ok[i + 1], LIMITS.inlineString))
      return bad('an object or long string result outside a serialized result');
  }
  for (let i = 0; i < err.length; i += 3) {
    if (!isCallId(err[i])) return bad('a reply with a malformed call id');
    if (!CALL_CODES.has(err[i + 1])) return bad('a call failure with a code outside the closed set');
    if (!isRemoteError(err[i + 2])) return bad('a malformed call error');
  }
  return { ok: true, message: raw as unknown as FromWorker };
}

function checkResult(raw: Record<string, unknown>): Checked {
  if (!isCallId(raw.id)) return bad('a result with a malformed call id');
  // The size is checked before anything is deserialized: only the byte count is read here.
  if (!(raw.bytes instanceof ArrayBuffer)) return bad('a serialized result without its bytes');
  if (raw.moved !== undefined && !checkMoved(raw.moved, raw.bytes.byteLength))
    return bad('a malformed list of moved buffers');
  if (raw.shared !== undefined && !checkShared(raw.shared)) return bad('a malformed list of shared buffers');
  return { ok: true, message: raw as unknown as FromWorker };
}

function checkOutput(raw: Record<string, unknown>): Checked {
  if (raw.stream !== 'stdout' && raw.stream !== 'stderr') return bad('output on an unknown stream');
  if (typeof raw.text !== 'string' || raw.text.length > LIMITS.outputChunk) return bad('an output chunk too large');
  if (!isCount(raw.dropped)) return bad('a malformed dropped-output count');
  return { ok: true, message: raw as unknown as OutputChunk };
}

const DENIABLE_NAMES: ReadonlySet<unknown> = new Set(DENIABLE);

/**
 * The worker's check on the denial list of its load (it comes from the coordinator, but a
 * worker never runs an agent under a lockdown it cannot read: it fails the load instead).
 */
export function isDenialList(value: unknown): value is Deniable[] {
  if (!isDense(value, DENIABLE.length)) return false;
  // A loop, not every(): every() skips the holes of a sparse array.
  for (let i = 0; i < value.length; i += 1) if (!DENIABLE_NAMES.has(value[i])) return false;
  return true;
}

export function isRemoteError(value: unknown): value is RemoteError {
  if (!isPlainObject(value)) return false;
  const { name, message, stack, code } = value;
  return (
    isText(name, LIMITS.errorName) &&
    isText(message, LIMITS.errorMessage) &&
    (stack === undefined || isText(stack, LIMITS.errorStack)) &&
    (code === undefined ||
      (typeof code === 'number' && Number.isFinite(code)) ||
      (typeof code === 'string' && AGENT_CODE.test(code)))
  );
}
