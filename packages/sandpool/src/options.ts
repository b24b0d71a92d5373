import { z } from 'zod';
import { invalidOptions } from './errors.js';
import { issuesOf } from './issues.js';
import { type AgentKey, SnapshotNameSchema, StemSchema, SwarmSchema } from './key.js';
import { IO_LIMITS } from './protocol/agent-io.js';
import { PostgresStoreSchema } from './store/postgres-options.js';
import { SnapshotBoundsShape, SnapshotSecretSchema } from './store/store.js';
import type {
  FetchOption,
  FetchPolicy,
  HostCapabilities,
  HostOption,
  Isolation,
  PermissionPolicy,
  WidenableBuiltin,
} from './types.js';

/** setTimeout's ceiling. */
const MAX_MS = 2_147_483_647;
const ms = z.number().int().nonnegative().max(MAX_MS);

const ResourceLimitsSchema = z.strictObject({
  maxOldGenerationSizeMb: z.number().positive().optional(),
  maxYoungGenerationSizeMb: z.number().positive().optional(),
  codeRangeSizeMb: z.number().positive().optional(),
  stackSizeMb: z.number().positive().optional(),
});

export type OutputStream = 'stdout' | 'stderr';
export type OutputListener = (key: string, stream: OutputStream, text: string) => void;

const AbsolutePaths = z.array(
  z
    .string()
    .startsWith('/', 'paths must be absolute')
    .refine((path) => !path.includes('\0')),
);

const PermissionGrantSchema = z.strictObject({
  fsRead: AbsolutePaths.optional(),
  fsWrite: AbsolutePaths.optional(),
  childProcess: z.boolean().optional(),
  worker: z.boolean().optional(),
  addons: z.boolean().optional(),
  wasi: z.boolean().optional(),
  /** Builtins strict denies that the grant gives back: `sqlite`, `ffi` (see the README). */
  builtins: z.array(z.enum(['sqlite', 'ffi'] as const satisfies readonly WidenableBuiltin[])).optional(),
  /** The network, where Node's permission model holds it (Node 25+); before it, it is open anyway. */
  net: z.boolean().optional(),
});

const SandboxModeSchema = z.enum(['auto', 'require', 'off']);
/** The highest uid or gid Linux gives out ((uid_t)-1 means "unchanged"). */
const MAX_ID = 2 ** 32 - 2;
/** Swarms' uids and gids by default: above the ranges distributions hand out, 65,536 of them. */
const DEFAULT_UID_RANGE: [number, number] = [200_000, 265_535];

/** Why a value cannot be a table of host capabilities, or null when it can. */
export function hostTableProblem(value: unknown): string | null {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return 'must be an object of functions';
  for (const [name, fn] of Object.entries(value)) {
    if (name.length === 0 || name.length > IO_LIMITS.hostName) {
      return `names must be 1 to ${IO_LIMITS.hostName} characters`;
    }
    if (typeof fn !== 'function') return `.${name} must be a function`;
  }
  return null;
}

/** A key's permission policy as given (not a function): strict, none, or a widening of strict. */
const PermissionPolicySchema = z.union([z.literal('strict'), z.literal('none'), PermissionGrantSchema]);
const IsolationSchema = z.union([z.literal('thread'), z.literal('process')]);
const MaxExternalMb = z.number().positive().max(1_048_576);
const Env = z.record(z.string(), z.string());

/** Whether a value can be the `host` option (the schema's check; the table is built per spawn). */
function isHostOption(value: unknown): value is HostOption {
  return typeof value === 'function' || hostTableProblem(value) === null;
}

/** Whether a value can be the `fetch` option: a function, or an object of policies by swarm (each checked at createPool). */
function isFetchOption(value: unknown): value is FetchOption {
  if (typeof value === 'function') return true;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  return Object.entries(value).every(
    ([swarm, policy]) => SwarmSchema.safeParse(swarm).success && typeof policy === 'object' && policy !== null,
  );
}

const perSecond = z.number().positive().max(1_000_000);
const burst = z.number().int().positive().max(1_000_000);

/** A rate with a burst: `perSecond` on average, up to `burst` at once (default: one second's worth, at least 1). */
const RateSchema = z.strictObject({ perSecond, burst: burst.optional() });

/** One capability's quota per key: calls, like a call rate, and bytes moved (arguments, results, bodies) a second. */
const HostQuotaSchema = z
  .strictObject({
    perSecond: perSecond.optional(),
    burst: burst.optional(),
    bytesPerSecond: z.number().positive().max(Number.MAX_SAFE_INTEGER).optional(),
  })
  .refine((quota) => quota.perSecond !== undefined || quota.bytesPerSecond !== undefined, {
    message: 'a host quota names perSecond, bytesPerSecond or both',
  })
  .refine((quota) => quota.burst === undefined || quota.perSecond !== undefined, {
    message: 'burst goes with perSecond',
    path: ['burst'],
  });

/** Limits per key: its calls, and its calls of each capability (by name). */
export const QuotasSchema = z.strictObject({
  calls: RateSchema.optional(),
  host: z.record(z.string().min(1).max(IO_LIMITS.hostName), HostQuotaSchema).optional(),
});
export type Quotas = z.input<typeof QuotasSchema>;
export type ResolvedQuotas = z.output<typeof QuotasSchema>;

/** A worker's heap budget unless resourceLimits names one. */
const DEFAULT_HEAP_MB = 256;

export const PoolOptionsSchema = z.strictObject({
  /** Folder holding `<swarm>/live/` and `<swarm>/snapshots/`. */
  root: z.string().min(1),
  /** Keyed worker threads alive at most (draining and exiting ones included). */
  maxWorkers: z.number().int().positive().max(10_000).default(64),
  /** The most blank workers kept booted for new keys (how many follows the misses: spare-demand.ts); on top of maxWorkers. */
  spareWorkers: z.number().int().nonnegative().max(64).default(1),
  /** An idle worker is evicted after this long; 0 turns it off. */
  idleTimeoutMs: ms.default(60_000),
  /** Default per-call timeout, counted from the moment the call reaches its worker; 0 = none. */
  callTimeoutMs: ms.default(30_000),
  /** A module still loading after this long fails with ERR_SANDPOOL_MODULE_LOAD. */
  loadTimeoutMs: ms.positive().default(10_000),
  /** Calls of one key waiting and running at most. */
  maxPendingPerKey: z.number().int().positive().default(1024),
  /** Calls waiting for a worker slot at most, across all keys. */
  maxWaiting: z.number().int().nonnegative().default(10_000),
  /** V8 heap caps per worker; a partial object merges over the default. */
  resourceLimits: ResourceLimitsSchema.default({}).transform((limits) => ({
    ...limits,
    maxOldGenerationSizeMb: limits.maxOldGenerationSizeMb ?? DEFAULT_HEAP_MB,
  })),
  /**
   * ArrayBuffers and other memory outside the JS heap, per worker: past it the worker ends
   * with \`oom\`. Enforced by the coordinator, as is the heap cap (see the README for Node 20).
   */
  maxExternalMb: MaxExternalMb.default(256),
  /** The whole environment agents see: the host's is never passed on. */
  env: Env.default({}),
  /** Reload live workers when files under their swarm's `live/` change. */
  watch: z.boolean().default(false),
  /** How long `close()` lets running calls finish. */
  closeTimeoutMs: ms.default(10_000),
  /**
   * After a timeout or an abort fires the agent's `sandpool.signal`, how long the call has
   * to settle before its worker is terminated (and its other calls fail with `killed`).
   */
  abortGraceMs: ms.max(1_000).default(250),
  /** Longest a call waits for a worker slot and for its worker to start; 0 = no limit. */
  queueTimeoutMs: ms.default(30_000),
  /** Key for authenticated snapshot manifests (HMAC-SHA256): unsigned or badly signed snapshots are CORRUPT. */
  snapshotSecret: SnapshotSecretSchema,
  /** Bytes one snapshot create may read and write; names and bytes of content one swarm's snapshots may hold. */
  ...SnapshotBoundsShape,
  /**
   * Where snapshots and their names are kept: omitted, under `root` alone; `{ postgres: url }`,
   * in a PostgreSQL database every node of a fleet shares, mirrored onto each node's `root`.
   */
  store: PostgresStoreSchema.optional(),
  /**
   * Node's permission model per worker: `'strict'` (reads of the key's folder, the packages
   * its imports resolve to and sandpool's runtime; no writes, child processes, nested
   * workers, addons, inspector or WASI), a widening of strict, `'none'`, or a function of the key.
   */
  permissions: z
    .union([
      PermissionPolicySchema,
      z.custom<(key: Readonly<AgentKey>) => PermissionPolicy>(
        (value) => typeof value === 'function',
        'permissions must be strict, none, a grant or a function',
      ),
    ])
    .default('strict'),
  /**
   * `'enforce'`: createPool refuses a pool where a key could run strict (no `net` grant) with
   * the network open on a Node whose permission model cannot deny it (before 25): a thread key,
   * or a process key whose cell has no network namespace. `'best-effort'`: such keys have the
   * network (the README says so).
   */
  network: z.enum(['enforce', 'best-effort']).default('best-effort'),
  /** CPU time one call may use, counted on its worker's thread; past it the worker ends with \`cpu\`. 0 = off. */
  cpuTimeoutMs: ms.default(0),
  /**
   * When busy keys outnumber cores, lower the CPU priority of threads running heavy calls, so
   * quiet keys keep their latency; demote, then evict, a worker burning CPU with no call.
   */
  fairness: z.boolean().default(true),
  /**
   * Which idle worker makes room at maxWorkers: the least recently used (`'lru'`), or the
   * one whose key was asked for least often lately (`'tinylfu'`: TinyLFU's aging sketch,
   * least recently used among equals), which keeps popular keys warm through one-off keys.
   */
  eviction: z.enum(['lru', 'tinylfu']).default('lru'),
  /**
   * A memory budget for the workers, in MB: a new worker starts only while the heap and
   * external memory read from the workers alive, plus an estimate for the new one (their
   * mean), fit under it; otherwise idle workers make room, as at maxWorkers, which stays a
   * cap on their number. One worker always runs, whatever its size.
   */
  maxMemoryMb: z.number().int().positive().max(16_777_216).optional(),
  /** A tenant's (swarm's) share of the slots; defaults to maxWorkers. */
  maxWorkersPerSwarm: z.number().int().positive().max(10_000).optional(),
  /**
   * Capabilities agents may call as `sandpool.host.<name>(...args)`, or a function of the key
   * returning them (called once per spawn). They run on this thread: a CPU-heavy one delays every key.
   */
  host: z
    .custom<HostOption>(isHostOption, 'host must be an object of functions, or a function of the key returning one')
    .default({}),
  /**
   * The built-in `sandpool.host.fetch`: a policy per swarm (`{ [swarm]: { allow, secrets, … } }`)
   * or a function of the key returning one (or null); off for keys without one.
   */
  fetch: z
    .custom<FetchOption>(isFetchOption, 'fetch must be an object of policies by swarm, or a function of the key')
    .optional(),
  /**
   * Limits per key (each key has its own): `calls` (`{ perSecond, burst }`, refused at the call)
   * and `host` by capability name (`{ perSecond, burst, bytesPerSecond }`, refused in the agent),
   * both with ERR_SANDPOOL_QUOTA.
   */
  quotas: QuotasSchema.optional(),
  /**
   * Where each key's agent runs: a worker thread of this process (`'thread'`, cheap), or a
   * child process of its own (`'process'`: its own address space, fds, signals and libuv
   * pool, in the OS sandbox of `sandbox`, rlimits); or a function of the key.
   */
  isolation: z
    .union([
      IsolationSchema,
      z.custom<(key: Readonly<AgentKey>) => Isolation>(
        (value) => typeof value === 'function',
        'isolation must be thread, process or a function of the key',
      ),
    ])
    .default('thread'),
  /**
   * Whom process-isolated agents run as when the host is root: `'swarm'` (default), a uid and
   * gid of each swarm's own from `sandbox.uidRange`; one `{ uid, gid }` for every swarm; or
   * `'host'` to keep the host's. Ignored when the host is not root: it cannot change them.
   */
  processUser: z
    .union([
      z.literal('swarm'),
      z.literal('host'),
      z.strictObject({ uid: z.number().int().nonnegative(), gid: z.number().int().nonnegative() }),
    ])
    .default('swarm'),
  /** rlimits of each process-isolated agent (applied with prlimit where the host has it). */
  processLimits: z
    .strictObject({
      openFiles: z.number().int().min(64).max(1_048_576).default(1024),
      processes: z.number().int().min(64).max(4_194_304).default(8192),
    })
    .default({ openFiles: 1024, processes: 8192 }),
  /**
   * Every per-tenant setting in one function of the key, called once per spawn: what it
   * returns (checked with KeyPolicySchema) overrides the options above for that key.
   */
  policy: z
    .custom<(key: Readonly<AgentKey>) => KeyPolicy>(
      (value) => typeof value === 'function',
      'policy must be a function of the key',
    )
    .optional(),
  /**
   * Spans for calls (`sandpool.call`, and `sandpool.host <name>` for capability calls) when
   * the application has `@opentelemetry/api` and registered a tracer provider; false: none,
   * whatever is registered. Without a provider a call costs nothing for it either way.
   */
  tracing: z.boolean().default(true),
  /**
   * The OS sandbox around process-isolated agents (see the README's security stance):
   * `'auto'` uses the layers this host offers and reports them (`stats().sandbox`, the
   * `sandbox` event), `'require'` refuses to create a pool that would go without one, `'off'`
   * uses none (the child then runs on the host's file system and network). As an object:
   * `mode`, the `uidRange` swarms' uids come from, `pids` a cell may hold, `tmpMb` of its /tmp,
   * and the CPU of the pool's cells together (their parent cgroup's): `cpuWeight` among the
   * host's other cgroups (1-10000, cgroup v2's scale, where a nice-0 thread weighs 100; by
   * default 100 per cell alive, as many threads would), `cpuMax` in cores (none by default).
   */
  sandbox: z
    .union([
      SandboxModeSchema,
      z.strictObject({
        mode: SandboxModeSchema.default('auto'),
        uidRange: z
          .tuple([z.number().int().min(1).max(MAX_ID), z.number().int().min(1).max(MAX_ID)])
          .refine(([low, high]) => low <= high, 'uidRange is [lowest, highest]')
          .default(DEFAULT_UID_RANGE),
        pids: z.number().int().min(16).max(4_194_304).default(64),
        tmpMb: z.number().int().min(1).max(1_048_576).default(64),
        cpuWeight: z.number().int().min(1).max(10_000).optional(),
        // The kernel takes no less than a millisecond of CPU per 100 ms period.
        cpuMax: z.number().min(0.01).max(4_096).optional(),
      }),
    ])
    .default('auto')
    .transform((sandbox) =>
      typeof sandbox === 'string' ? { mode: sandbox, uidRange: DEFAULT_UID_RANGE, pids: 64, tmpMb: 64 } : sandbox,
    ),
  /** Receives worker output; by default it goes to the host's streams prefixed with the key. */
  onOutput: z.custom<OutputListener>((value) => typeof value === 'function', 'onOutput must be a function').optional(),
});

/**
 * What `policy(key)` may return: the per-tenant options, each checked with the pool option's
 * own schema, each optional (absent: the pool's). `resourceLimits` merges over the pool's; a
 * `fetch` policy is the key's own (null: none), checked when its capabilities are made.
 */
export const KeyPolicySchema = z.strictObject({
  resourceLimits: ResourceLimitsSchema.optional(),
  maxExternalMb: MaxExternalMb.optional(),
  cpuTimeoutMs: ms.optional(),
  env: Env.optional(),
  quotas: QuotasSchema.optional(),
  permissions: PermissionPolicySchema.optional(),
  isolation: IsolationSchema.optional(),
  host: z
    .custom<HostCapabilities>((value) => hostTableProblem(value) === null, 'host must be an object of functions')
    .optional(),
  fetch: z
    .custom<FetchPolicy | null>(
      (value) => value === null || (typeof value === 'object' && !Array.isArray(value)),
      'fetch must be a policy or null',
    )
    .optional(),
});
export type KeyPolicy = z.input<typeof KeyPolicySchema>;
export type ResolvedKeyPolicy = z.output<typeof KeyPolicySchema>;

export type PoolOptions = z.input<typeof PoolOptionsSchema>;
export type ResolvedPoolOptions = z.output<typeof PoolOptionsSchema>;

/** The per-swarm cap in force: maxWorkersPerSwarm, never above maxWorkers. */
export function swarmCap(options: ResolvedPoolOptions): number {
  return Math.min(options.maxWorkersPerSwarm ?? options.maxWorkers, options.maxWorkers);
}

export function parsePoolOptions(options: unknown): ResolvedPoolOptions {
  const parsed = PoolOptionsSchema.safeParse(options);
  if (parsed.success) return parsed.data;
  throw invalidOptions('pool options', issuesOf(parsed.error));
}

export const CallOptionsSchema = z.strictObject({
  timeoutMs: ms.optional(),
  signal: z.custom<AbortSignal>((value) => value instanceof AbortSignal, 'signal must be an AbortSignal').optional(),
  /** ArrayBuffers of the arguments to move to the worker rather than copy: the caller's are detached. */
  transfer: z.array(z.instanceof(ArrayBuffer, { message: 'transfer lists ArrayBuffers' })).optional(),
  /**
   * Lets a SharedArrayBuffer in the arguments or the result be shared (memory the caller and
   * that key both see, thread keys only) rather than refused with DATA_CLONE.
   */
  shared: z.boolean().optional(),
  /**
   * What the caller wants its capabilities to know (a conversation, a user): structured-cloneable,
   * at most 64 KB serialized, copied when the call is made; capabilities get it as
   * `ctx.context`. The agent never sees it.
   */
  context: z.unknown().optional(),
});

export type CallOptions = z.input<typeof CallOptionsSchema>;

export interface ParsedCallOptions {
  /** undefined: the pool's `callTimeoutMs`. */
  timeoutMs: number | undefined;
  signal: AbortSignal | undefined;
  transfer: ArrayBuffer[] | undefined;
  shared: boolean;
  /** The caller's `context` as given (undefined: none); admission copies it. */
  context: unknown;
}

const NO_CALL_OPTIONS: ParsedCallOptions = {
  timeoutMs: undefined,
  signal: undefined,
  transfer: undefined,
  shared: false,
  context: undefined,
};

export function parseCallOptions(options: CallOptions | undefined): ParsedCallOptions {
  if (options === undefined) return NO_CALL_OPTIONS;
  // Most calls pass a well-formed object: the schema costs more than the RPC, so it only
  // runs to describe what is wrong.
  if (isWellFormed(options)) {
    return {
      timeoutMs: options.timeoutMs,
      signal: options.signal,
      transfer: undefined,
      shared: options.shared === true,
      context: options.context,
    };
  }
  const parsed = CallOptionsSchema.safeParse(options);
  if (!parsed.success) {
    throw invalidOptions('call options', issuesOf(parsed.error));
  }
  const { timeoutMs, signal, transfer, shared, context } = parsed.data;
  return {
    timeoutMs,
    signal,
    transfer: transfer === undefined || transfer.length === 0 ? undefined : transfer,
    shared: shared === true,
    context,
  };
}

function isWellFormed(options: CallOptions): boolean {
  if (typeof options !== 'object' || options === null) return false;
  for (const name in options) {
    if (name !== 'timeoutMs' && name !== 'signal' && name !== 'shared' && name !== 'context') return false;
  }
  const { timeoutMs, signal, shared } = options;
  return (
    (timeoutMs === undefined || (Number.isInteger(timeoutMs) && timeoutMs >= 0 && timeoutMs <= MAX_MS)) &&
    (signal === undefined || signal instanceof AbortSignal) &&
    (shared === undefined || typeof shared === 'boolean')
  );
}

export const StreamOptionsSchema = z.strictObject({
  signal: z.custom<AbortSignal>((value) => value instanceof AbortSignal, 'signal must be an AbortSignal').optional(),
  /** Chunks the worker may produce beyond what the consumer has taken. */
  highWaterMark: z.number().int().min(1).max(IO_LIMITS.highWaterMark).default(16),
  /** Longest a `next()` waits for its chunk (the first one's worker start included); 0 = no limit. */
  chunkTimeoutMs: ms.default(30_000),
  /** Bounds the whole stream, counted from its hand-off to the worker; none unless given. */
  timeoutMs: ms.optional(),
  /** As for a call: what its capabilities get as `ctx.context`. */
  context: z.unknown().optional(),
});
export type StreamOptions = z.input<typeof StreamOptionsSchema>;

export const InvalidateSelectorSchema = z.strictObject({
  swarm: SwarmSchema,
  snapshot: SnapshotNameSchema.nullable().optional(),
  stem: StemSchema.optional(),
});
export type InvalidateSelector = z.input<typeof InvalidateSelectorSchema>;
