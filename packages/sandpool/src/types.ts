/**
 * Every public type that is not derived from a schema (those are in options.ts), in one
 * module that imports nothing but other types: the parts of the library import from here,
 * never from each other, for what callers see.
 */
import type { ExitReason, SandpoolError, SandpoolErrorCode } from './errors.js';
import type { AgentKey } from './key.js';

/** Where a key's agent runs: a worker thread of this process, or a child process of its own. */
export type Isolation = 'thread' | 'process';

/**
 * Why the pool retired a worker (the `evict` event): to make room (`lru`), idle too long
 * (`idle`), burning CPU with no call or a demoted priority it could not get back (`cpu`),
 * replaced by new code (`reload`), its snapshot removed (`removed`), or the pool closing (`closed`).
 */
export type EvictReason = 'lru' | 'idle' | 'cpu' | 'reload' | 'removed' | 'closed';

/** How a keyed worker took its key: booted for it, or a blank spare. */
export type SpawnReason = 'cold' | 'spare';

/** Why fairness lowered a worker's CPU priority. */
export type DemoteReason = 'cpu-share' | 'background-cpu';

export interface PoolEvent<Reason extends string> {
  /** The key in text form. */
  key: string;
  reason: Reason;
  /** The worker thread's id for a thread key; null for a process key. */
  threadId: number | null;
  /** The process that runs the agent: this process for a thread key, the child for a process key (0 if it never started). */
  pid: number;
}

export interface ReloadFailedEvent extends PoolEvent<'load-failed'> {
  error: SandpoolError;
}

export interface PoolEvents {
  spawn: [PoolEvent<SpawnReason>];
  /** The pool retired a worker: it ends once its calls are done. */
  evict: [PoolEvent<EvictReason>];
  /**
   * A keyed worker is gone, once per worker: `retired` after an `evict`, otherwise why it
   * died (an ExitReason: it crashed or exited, or the pool killed it for a limit or the protocol).
   */
  exit: [PoolEvent<ExitReason | 'retired'>];
  'reload-failed': [ReloadFailedEvent];
  /** fairness lowered a worker's CPU priority: a heavy call while busy keys outnumber cores, or CPU burned with no call. */
  demote: [PoolEvent<DemoteReason>];
  /** A call settled, or was refused for a valid key: once per call, for logs and billing. */
  call: [CallRecord];
  /** Once, just after createPool, when keys may run in processes: the sandbox layers they get here. */
  sandbox: [SandboxLayers];
  /**
   * With `store: { postgres }`: the database was lost (cached snapshots keep serving; the pool
   * reconnects with backoff) or is connected again (every name is read again).
   */
  store: [StoreEvent];
}

export interface StoreEvent {
  state: 'lost' | 'connected';
}

/** What one call did (the `call` event): made when it settles, or when it is refused for a valid key. */
export interface CallRecord {
  /** The key in text form, and its parts. */
  key: string;
  swarm: string;
  snapshot: string | null;
  stem: string;
  fn: string;
  /** From `call()` (or a stream's first `next()`) to its settlement, in ms; 0 for a call refused at once. */
  durationMs: number;
  /**
   * CPU its worker used while it ran, in ms: the worker's thread (a process key's whole
   * process, in 10 ms ticks), shared evenly among the calls it ran at once, so the calls of a
   * worker add up to its CPU. 0 for a call that never reached a worker.
   */
  cpuMs: number;
  outcome: 'ok' | 'error';
  /** A failed call's code. */
  code?: SandpoolErrorCode;
  /** The capability calls it made, by name, counting those that ran (not those a quota refused). */
  host: Record<string, number>;
}

/** The layers of the OS sandbox around process keys, as `stats().sandbox` and the `sandbox` event report them. */
export interface SandboxLayers {
  /** Mount, pid, network, ipc and uts namespaces of its own per cell (bubblewrap). */
  namespaces: boolean;
  /** Each swarm's children run as a uid and gid of its own, from `sandbox.uidRange`. */
  uidPerSwarm: boolean;
  /** A cgroup per cell (memory, pids, CPU weight), and of which version; null: none. */
  cgroups: 'v1' | 'v2' | null;
  /** What a cell can connect to: its own loopback only, or the host's network. */
  network: 'loopback' | 'host';
  /** What keeps a cell from making user namespaces: bubblewrap's `--disable-userns`, or a seccomp filter; null: nothing. */
  userns: 'disabled' | 'seccomp' | null;
  /** The layers `'auto'` goes without here, each with why (empty with `'require'`, which refuses to). */
  missing: { layer: 'namespaces' | 'uidPerSwarm' | 'cgroups' | 'userns'; reason: string }[];
}

export interface PoolStats {
  /** Keyed workers alive, draining and exiting ones included: what maxWorkers bounds. */
  workers: number;
  /** Threads terminate() could not stop (native code, a blocking syscall): they hold no slot, and `exit` fires when they end. */
  stuck: number;
  /** Blank workers booted for the next new key. */
  spares: number;
  /** Keyed workers running at least one call. */
  busy: number;
  /** Keyed workers ready with no call running. */
  idle: number;
  /** Calls waiting for a worker slot or for their worker to start. */
  queued: number;
  /**
   * Keys whose code is being found or built before they wait for a slot (a live key's
   * artifact, see the README's "On disk"). A slot that frees goes to the first key waiting
   * for one: a key still building takes its turn by arrival once built.
   */
  preparing: number;
  /** Characters of worker output dropped because the host's writer lagged or a worker outran its window. */
  outputDropped: number;
  /** Workers that took a key, since the pool started (`spawn` events). */
  spawned: number;
  /** Workers the pool retired, by why (`evict` events); they end once their calls are done. */
  retired: Record<EvictReason, number>;
  /** Workers that died, or that the pool killed, by reason (`exit` events other than `retired`). */
  died: Record<ExitReason, number>;
  /**
   * CPU (ms, since the pool started) of this process's threads no key owns: the libuv pool
   * (async crypto, zlib, dns and file work, the keys' included, which nothing attributes to a
   * key), V8's platform threads (garbage collection and compilation for every isolate), and
   * the rest. Read from Linux's /proc at most once a second; Node 20 names no thread, so there
   * all of it is `otherMs`.
   */
  unattributedCpu: { libuvMs: number; v8Ms: number; otherMs: number };
  /** The OS sandbox layers process keys get on this host; null when no key runs in a process. */
  sandbox: SandboxLayers | null;
}

/** What `pool.keyStats()` says of one key: the per-tenant view of who uses what. */
export interface KeyStats {
  key: string;
  swarm: string;
  snapshot: string | null;
  stem: string;
  /** Phase of the worker serving it, or null when it has none now. */
  state: string | null;
  /** How the worker serving it runs, or null when it has none now. */
  isolation: Isolation | null;
  /**
   * A process key whose cell has a cgroup (null otherwise): the memory the kernel bounds the
   * cell to (page cache and `/tmp` included). Its memory as that cgroup counts it now is
   * `heapBytes` (`externalBytes` is 0), and its CPU as it counts it `cpuMs`.
   */
  cgroup: { memoryMaxBytes: number } | null;
  /** Its keyed workers alive (two during a reload). */
  workers: number;
  /** CPU time its workers used, also between calls, since the pool started (ms). */
  cpuMs: number;
  /** Heap and external bytes of its serving worker at the last reading; null when not read. */
  heapBytes: number | null;
  externalBytes: number | null;
  /** Calls settled, and how many of them failed. */
  calls: number;
  errors: number;
  /** Calls running on a worker now, and waiting for a slot or a start. */
  inFlight: number;
  queued: number;
  /** Its worker runs at a lowered CPU priority now. */
  demoted: boolean;
  /** Latency of its last 256 calls, from call() to settlement (ms). */
  latency: { p50: number; p99: number; max: number } | null;
  /** Calls refused by its `quotas.calls`. */
  quotaRefused: number;
  /** Output characters it printed that never reached the host's output: past its 1 MB window, its output budget, or a full host stream. */
  outputDropped: number;
  /** Its use of each capability, by name. */
  host: Record<string, HostUsage>;
}

/** One capability's use by one key, since the pool started (`keyStats().host`). */
export interface HostUsage {
  /** Host calls made (refused ones not included). */
  calls: number;
  /** Host calls refused by the key's `quotas.host`. */
  refused: number;
  /** Bytes moved: arguments, results and bodies. */
  bytes: number;
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

/** What a capability learns about its caller. */
export interface HostContext {
  /** The calling key in text form, e.g. `a1b2@jan/notifier_agent`. */
  readonly key: string;
  readonly swarm: string;
  readonly snapshot: string | null;
  readonly stem: string;
  /** Aborted when the agent call that made this host call ends: settled, cancelled, timed out, or its worker gone. */
  readonly signal: AbortSignal;
  /** The `context` the caller gave `call()`, `stream()` or `remote()` (a copy of its own), or undefined. */
  readonly context: unknown;
}

/** `(ctx, ...args) => value | Promise<value>`; arguments and result are structured clones. */
export type HostCapability = (ctx: HostContext, ...args: never[]) => unknown;
export type HostCapabilities = Readonly<Record<string, HostCapability>>;
/** The `host` pool option: one set for every key, or a function of the key called once per spawn. */
export type HostOption = HostCapabilities | ((key: Readonly<AgentKey>) => HostCapabilities);

/** Headers the host adds to every request to one origin: the agent never sees them. */
export interface FetchSecret {
  readonly headers: Readonly<Record<string, string>>;
}

/**
 * Which origins a swarm's agents may reach with `sandpool.host.fetch`, with which secrets,
 * within which bounds (see the README, The `fetch` capability).
 */
export interface FetchPolicy {
  /** Origins that may be reached, e.g. `https://api.example.com` or `http://127.0.0.1:8080`. */
  readonly allow: readonly string[];
  /** By listed origin: headers the host adds to each request and redirect hop to it. */
  readonly secrets?: Readonly<Record<string, FetchSecret>> | undefined;
  /** Bytes of one request body at most (1 MiB). */
  readonly maxRequestBytes?: number | undefined;
  /** Bytes of one response body at most (10 MiB). */
  readonly maxResponseBytes?: number | undefined;
  /** The whole request, redirects and body included (30000). */
  readonly timeoutMs?: number | undefined;
  /** Redirects followed at most (5). */
  readonly maxRedirects?: number | undefined;
  /** Name resolution in place of `dns.lookup`, for tests; what it returns is checked like a DNS answer. */
  readonly lookup?: ((hostname: string) => Promise<readonly string[]>) | undefined;
}

/** The `fetch` pool option: a policy per swarm, or a function of the key (null or undefined: no fetch). */
export type FetchOption =
  | Readonly<Record<string, FetchPolicy>>
  | ((key: Readonly<AgentKey>) => FetchPolicy | null | undefined);

/** What a widening adds to `'strict'`: absolute paths, and the process rights strict denies. */
export interface PermissionGrant {
  fsRead?: readonly string[] | undefined;
  fsWrite?: readonly string[] | undefined;
  childProcess?: boolean | undefined;
  worker?: boolean | undefined;
  addons?: boolean | undefined;
  wasi?: boolean | undefined;
  /**
   * Builtins strict denies that this swarm may load. Neither is held by the permission model:
   * `sqlite` opens any file the host's user can, `ffi` runs native code.
   */
  builtins?: readonly WidenableBuiltin[] | undefined;
  /** Outbound and inbound network, where Node's permission model holds it (`--allow-net`, Node 25+). */
  net?: boolean | undefined;
}

/** Builtins a grant may give back (`permissions.builtins`). */
export type WidenableBuiltin = 'sqlite' | 'ffi';

/** `'strict'`: Node's permission model, reads of the key's own code only; `'none'`: only the host's own limits. */
export type PermissionPolicy = 'strict' | 'none' | PermissionGrant;
export type PermissionsOption = PermissionPolicy | ((key: Readonly<AgentKey>) => PermissionPolicy);
