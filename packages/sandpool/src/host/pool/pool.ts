import { EventEmitter } from 'node:events';
import { resolve as resolvePath } from 'node:path';
import type { AgentKey } from '../../key.js';
import {
  type CallOptions,
  type InvalidateSelector,
  type PoolOptions,
  parsePoolOptions,
  type ResolvedPoolOptions,
  type StreamOptions,
} from '../../options.js';
import { sweepStore } from '../../store/leftovers.js';
import type { PostgresMirror } from '../../store/postgres.js';
import type { SnapshotStore } from '../../store/store.js';
import { StoreHelper } from '../../store/store-helper.js';
import type { InvalidateReport, KeyStats, PoolEvents, PoolStats, Remote } from '../../types.js';
import type { Dispatch } from '../calls/dispatch.js';
import { checkFetchOption } from '../capabilities/fetch-capability.js';
import { PoolCore } from './core.js';
import { frozenCopy } from './frozen.js';
import { warnIfHeapCapOverridden } from './heap-warning.js';
import { remoteProxy } from './remote.js';
import { liveArtifacts, PoolSnapshotStore } from './snapshots.js';
import { PoolStream } from './streams.js';

/**
 * Test-only: the pool's invariants, checked from scratch (an empty list when all hold).
 * @internal
 */
export const INVARIANTS = Symbol.for('sandpool.invariants');

/**
 * sandpool/internal's way to the pool's calls: a symbol of this module's own, so only code
 * that imports it reaches them.
 * @internal
 */
export const DISPATCH = Symbol('sandpool.dispatch');

/**
 * The public face of a pool: every key `(swarm, snapshot, stem)` is routed to a worker
 * thread of its own, called over async RPC. The coordinator behind it is private.
 */
export class Pool extends EventEmitter<PoolEvents> implements AsyncDisposable {
  /** The options in force, defaults filled in: a frozen copy (changing the pool's options takes a new pool). */
  readonly options: Readonly<ResolvedPoolOptions>;
  /** The snapshot store under this pool's root; `remove` drains the snapshot's workers first. */
  readonly snapshots: SnapshotStore;
  readonly #core: PoolCore;
  readonly #storeHelper: StoreHelper;
  /** The fleet's database, mirrored onto the root; null when the root alone is the store. */
  readonly #mirror: Promise<PostgresMirror> | null;
  /** The leftovers of builds a crash interrupted, removed in the background from the start. */
  readonly #sweep: Promise<void>;

  constructor(options: PoolOptions) {
    super();
    const parsed = parsePoolOptions(options);
    this.options = frozenCopy(parsed);
    checkFetchOption(parsed.fetch);
    warnIfHeapCapOverridden(parsed.resourceLimits);
    const emit = this.emit.bind(this) as (event: keyof PoolEvents, ...args: unknown[]) => boolean;
    const { snapshotSecret, maxSnapshotBytes, maxSnapshotsPerSwarm, maxSnapshotBytesPerSwarm } = parsed;
    const storeOptions = {
      root: resolvePath(parsed.root),
      maxSnapshotBytes,
      maxSnapshotsPerSwarm,
      maxSnapshotBytesPerSwarm,
      ...(snapshotSecret === undefined ? {} : { snapshotSecret }),
    };
    this.#storeHelper = new StoreHelper(storeOptions);
    this.#core = new PoolCore(
      parsed,
      {
        emit: (event, ...args) => emit(event, ...args),
        listens: (event) => this.listenerCount(event) > 0,
      },
      liveArtifacts(this.#storeHelper),
    );
    const { store } = parsed;
    // Loaded only by a pool that names a database: the client stays off every other pool's load path.
    this.#mirror =
      store === undefined
        ? null
        : import('../../store/postgres.js').then(
            ({ PostgresMirror }) =>
              new PostgresMirror({
                root: this.#core.root,
                store,
                maxBytes: maxSnapshotBytes,
                onState: (state) => this.emit('store', { state }),
              }),
          );
    this.snapshots = new PoolSnapshotStore(
      storeOptions,
      this.#storeHelper,
      (swarm, name, removeFiles) => this.#core.removeSnapshot(swarm, name, removeFiles),
      this.#mirror,
    );
    this.#sweep = sweepStore(this.#core.root);
  }

  /** Calls `fn` of the key's agent; never throws synchronously. */
  call<T = unknown>(
    key: AgentKey | string,
    fn: string,
    args: readonly unknown[] = [],
    options?: CallOptions,
  ): Promise<T> {
    return this.#core.dispatch.submit(key, fn, args, options) as Promise<T>;
  }

  /**
   * Streams what `fn` returns: the chunks of an async iterable (an `async function*`) or a
   * ReadableStream, or a plain value once. Starts on the first `next()`, where every
   * refusal surfaces; `break` ends the generator in the worker and fires its signal.
   */
  stream<T = unknown>(
    key: AgentKey | string,
    fn: string,
    args: readonly unknown[] = [],
    options?: StreamOptions,
  ): AsyncIterableIterator<T, undefined> {
    return new PoolStream<T>(this.#core.dispatch, key, fn, args, options);
  }

  /**
   * A typed proxy: every export of the agent becomes `(...args) => Promise`, with the same
   * transport and errors as `call`. Not thenable; logging it never makes a call.
   */
  remote<T>(key: AgentKey | string, options?: CallOptions): Remote<T> {
    return remoteProxy<T>((...args) => this.#core.dispatch.submit(...args), key, options);
  }

  stats(): PoolStats {
    return this.#core.stats();
  }

  /** Per key: CPU ms, heap and external bytes, calls, errors, in flight, queued, demoted, latency. */
  keyStats(): KeyStats[] {
    return this.#core.keyStats();
  }

  /**
   * Reloads the matching workers blue-green (`snapshot` omitted means live); resolves once
   * the old ones are gone, listing the keys now on the new code and those whose new code
   * failed to load (their old workers keep serving).
   */
  invalidate(selector: InvalidateSelector): Promise<InvalidateReport> {
    return this.#core.invalidate(selector);
  }

  async close(): Promise<void> {
    await Promise.all([
      this.#core.close(),
      this.#storeHelper.close(),
      this.#sweep,
      this.#mirror?.then((m) => m.close()),
    ]);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** @internal Not part of the API: what the test suite checks after every step. */
  [INVARIANTS](): string[] {
    return this.#core.violations();
  }

  /** @internal */
  [DISPATCH](): Dispatch {
    return this.#core.dispatch;
  }
}

export function createPool(options: PoolOptions): Pool {
  return new Pool(options);
}
