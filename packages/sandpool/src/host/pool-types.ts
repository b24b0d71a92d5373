import { z } from 'zod';
import type { ExitReason, SandpoolError } from '../errors.js';
import { SnapshotNameSchema, StemSchema, SwarmSchema } from '../key.js';
import type { RetireReason } from './agent-worker.js';
import type { DemoteReason } from './cpu.js';
import type { SandboxLayers } from './sandbox/sandbox.js';

export type SpawnReason = 'cold' | 'spare';
export type EvictReason = RetireReason;

export interface PoolEvent<Reason extends string> {
  /** The key in text form. */
  key: string;
  reason: Reason;
  threadId: number;
}

export interface ReloadFailedEvent extends PoolEvent<'load-failed'> {
  error: SandpoolError;
}

export interface PoolEvents {
  spawn: [PoolEvent<SpawnReason>];
  evict: [PoolEvent<EvictReason>];
  exit: [PoolEvent<EvictReason | ExitReason>];
  'reload-failed': [ReloadFailedEvent];
  /** fairness lowered a worker's CPU priority: a heavy call while busy keys outnumber cores, or CPU burned with no call. */
  demote: [PoolEvent<DemoteReason>];
  /** Once, just after createPool, when keys may run in processes: the sandbox layers they get here. */
  sandbox: [SandboxLayers];
}

export interface PoolStats {
  /** Keyed worker threads alive, draining and exiting ones included. */
  workers: number;
  /** Threads terminate() could not stop (native code, a blocking syscall): they hold no slot, and `exit` fires when they end. */
  stuck: number;
  /** Blank workers booted for the next new key. */
  spares: number;
  busy: number;
  idle: number;
  /** Times a worker took a key. */
  spawned: number;
  evicted: number;
  /** Exits for `crash`, `exit`, `oom`, `killed` or `protocol`. */
  crashed: number;
  /** Calls waiting for a worker slot or for their worker to start. */
  queued: number;
  /** Characters of worker output dropped because the host's writer lagged or a worker outran its window. */
  outputDropped: number;
  /** The OS sandbox layers process keys get on this host; null when no key runs in a process. */
  sandbox: SandboxLayers | null;
}

/** What `invalidate()` did: the keys now running the new code, and those whose new code failed to load. */
export interface InvalidateReport {
  reloaded: string[];
  failed: { key: string; error: SandpoolError }[];
}

/** `remote()`'s view of an agent module: every exported function, returning a promise. */
export type Remote<T> = {
  readonly [K in keyof T as T[K] extends (...args: never[]) => unknown ? K : never]: T[K] extends (
    ...args: infer A
  ) => infer R
    ? (...args: A) => Promise<Awaited<R>>
    : never;
};

export const InvalidateSelectorSchema = z.strictObject({
  swarm: SwarmSchema,
  snapshot: SnapshotNameSchema.nullable().optional(),
  stem: StemSchema.optional(),
});
export type InvalidateSelector = z.input<typeof InvalidateSelectorSchema>;
