export {
  type ExitReason,
  isSandpoolError,
  SandpoolError,
  type SandpoolErrorCode,
  type SandpoolIssue,
} from './errors.js';
export { type AgentKey, AgentKeySchema, formatKey, parseKey } from './key.js';
export { type CallOptions, type OutputListener, type PoolOptions, PoolOptionsSchema } from './options.js';
export {
  createPool,
  type EvictReason,
  type InvalidateSelector,
  Pool,
  type PoolEvent,
  type PoolEvents,
  type PoolStats,
  type ReloadFailedEvent,
  type Remote,
  type SpawnReason,
} from './pool.js';
export { type SnapshotInfo, SnapshotStore } from './store.js';
