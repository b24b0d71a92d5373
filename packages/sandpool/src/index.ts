export {
  type ExitReason,
  isSandpoolError,
  SandpoolError,
  type SandpoolErrorCode,
  type SandpoolIssue,
} from './errors.js';
export type { Isolation } from './host/agent-worker.js';
export type { HostCapabilities, HostCapability, HostContext, HostOption } from './host/capabilities.js';
export type { DemoteReason } from './host/cpu.js';
export type { KeyStats } from './host/key-stats.js';
export { createPool, Pool } from './host/pool.js';
export type {
  EvictReason,
  InvalidateReport,
  InvalidateSelector,
  PoolEvent,
  PoolEvents,
  PoolStats,
  ReloadFailedEvent,
  Remote,
  SpawnReason,
} from './host/pool-types.js';
export type { SandboxLayers } from './host/sandbox/sandbox.js';
export type { StreamOptions } from './host/streams.js';
export { type AgentKey, AgentKeySchema, formatKey, parseKey } from './key.js';
export { type CallOptions, type OutputListener, type PoolOptions, PoolOptionsSchema } from './options.js';
export { type SnapshotInfo, SnapshotStore } from './store/store.js';
