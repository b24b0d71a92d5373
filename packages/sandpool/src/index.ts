export {
  type ExitReason,
  isSandpoolError,
  SandpoolError,
  type SandpoolErrorCode,
  type SandpoolIssue,
} from './errors.js';
export { createPool, Pool } from './host/pool/pool.js';
export { type AgentKey, AgentKeySchema, formatKey, parseKey } from './key.js';
export {
  type CallOptions,
  type InvalidateSelector,
  type KeyPolicy,
  KeyPolicySchema,
  type OutputListener,
  type PoolOptions,
  PoolOptionsSchema,
  type Quotas,
  type StreamOptions,
} from './options.js';
export { type SnapshotInfo, SnapshotStore } from './store/store.js';
export { SnapshotInfoSchema } from './store/store-helper.js';
export type {
  CallRecord,
  DemoteReason,
  EvictReason,
  FetchOption,
  FetchPolicy,
  FetchSecret,
  HostCapabilities,
  HostCapability,
  HostContext,
  HostOption,
  HostUsage,
  InvalidateReport,
  Isolation,
  KeyStats,
  PermissionGrant,
  PermissionPolicy,
  PoolEvent,
  PoolEvents,
  PoolStats,
  ReloadFailedEvent,
  Remote,
  SandboxLayers,
  SpawnReason,
  StoreEvent,
} from './types.js';
