import {
  aborted,
  badFunctionName,
  closed,
  queueFull,
  quotaExceeded,
  sharedMemoryRefused,
  snapshotRemoved,
  unusableOptions,
} from '../../errors.js';
import { type AgentKey, type ResolvedKey, resolveKey } from '../../key.js';
import { type CallOptions, parseCallOptions } from '../../options.js';
import { holdsSharedMemory } from '../../protocol/clone.js';
import { digestOf, type SnapshotRef } from '../../store/names.js';
import type { Quotas } from '../capabilities/quotas.js';
import type { Backoff } from '../routes/backoff.js';
import type { Route } from '../routes/route.js';
import { copyContext } from './call-context.js';

/** Longest function name a call may carry: names are cached in the worker. */
const MAX_FN_NAME = 1024;

/** The state a call is admitted against; every count here is derived from the books. */
export interface AdmissionState {
  readonly closed: boolean;
  readonly backoff: Backoff;
  /** `swarm@snapshot` of snapshots being removed. */
  readonly removing: ReadonlySet<string>;
  readonly maxPendingPerKey: number;
  readonly maxWaiting: number;
  readonly callTimeoutMs: number;
  /** The key's route, if it has one. */
  route(key: ResolvedKey): Route | undefined;
  /** What a snapshot key's name points to now (a cached read, redone when its pointer changed); throws NOT_FOUND or CORRUPT. */
  resolveSnapshot(key: ResolvedKey): SnapshotRef;
  /** Calls waiting for a worker slot, across all keys. */
  readonly waitingForSlot: number;
  /** Each key's quotas: a call over its key's is refused, last, so a call refused otherwise takes no token. */
  readonly quotas: Quotas;
}

export interface AdmittedCall {
  readonly key: ResolvedKey;
  readonly fn: string;
  readonly args: unknown[];
  readonly timeoutMs: number;
  readonly signal: AbortSignal | undefined;
  readonly transfer: ArrayBuffer[] | undefined;
  /** A SharedArrayBuffer may be shared with the key, in the arguments and the result. */
  readonly shared: boolean;
  /** The caller's `context`, copied as bytes; null for none. */
  readonly context: Uint8Array | null;
  /** Undefined for a key the pool holds nothing for yet, or whose route serves content its name no longer points to. */
  readonly route: Route | undefined;
  /** What a snapshot key's name pointed to when the call was admitted: it runs that content or newer. Null for live. */
  readonly snapshot: SnapshotRef | null;
}

/**
 * Every check a call passes before it holds anything: input first, then the gates (closed,
 * back-off, a snapshot being removed, the key's and the pool's queue bounds, its quota). Throws the
 * SandpoolError the caller sees; a refused call changes nothing.
 */
export function admit(
  state: AdmissionState,
  keyInput: AgentKey | string,
  fn: string,
  args: readonly unknown[],
  options: CallOptions | undefined,
): AdmittedCall {
  if (state.closed) throw closed();
  const key = resolveKey(keyInput);
  if (typeof fn !== 'string' || fn === '' || fn.length > MAX_FN_NAME) {
    throw badFunctionName(key.text, MAX_FN_NAME);
  }
  if (!Array.isArray(args)) {
    throw unusableOptions('args must be an array', { key: key.text });
  }
  const { timeoutMs, signal, transfer, shared, context } = parseCallOptions(options);
  if (!shared && holdsSharedMemory(args)) {
    throw sharedMemoryRefused(key.text, fn, 'arguments');
  }
  const copied = context === undefined ? null : copyContext(context, key.text);
  if (signal?.aborted) throw aborted(key.text);
  if (state.backoff.active) {
    const blocked = state.backoff.blocked(key.text, Date.now());
    if (blocked !== null) throw blocked;
  }
  if (state.removing.size > 0 && key.snapshot !== null && state.removing.has(`${key.swarm}@${key.snapshot}`)) {
    throw snapshotRemoved(key.text, key.swarm, key.snapshot);
  }
  // The name is read here, at admission: the call runs the content it points to now, never older.
  const snapshot = key.snapshot === null ? null : state.resolveSnapshot(key);
  const held = state.route(key);
  const route = held === undefined || snapshot === null || held.digest === digestOf(snapshot) ? held : undefined;
  const pending = route?.pending ?? 0;
  if (pending >= state.maxPendingPerKey) throw queueFull(key.text, `${pending} calls pending`);
  const serving = route?.serving ?? null;
  const needsSlot = serving === null || serving.thread === null;
  if (needsSlot && state.waitingForSlot >= state.maxWaiting) {
    throw queueFull(key.text, `${state.waitingForSlot} calls wait for a worker`);
  }
  if (state.quotas.calls && !state.quotas.admitCall(key.text)) throw quotaExceeded(key.text);
  return {
    key,
    fn,
    args: args as unknown[],
    timeoutMs: timeoutMs ?? state.callTimeoutMs,
    signal,
    transfer,
    shared,
    context: copied,
    route,
    snapshot,
  };
}
