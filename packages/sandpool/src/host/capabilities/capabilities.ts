/**
 * Host capabilities: functions of the host that agents call as `sandpool.host.<name>()`.
 * They travel on the pool's own checked protocol and are looked up with `Object.hasOwn` in a
 * null-prototype table, so a worker naming `__proto__`, `constructor` or `toString` reaches
 * nothing. They run on the coordinator's thread: a CPU-heavy one delays every key.
 */
import type { AsyncResource } from 'node:async_hooks';
import { deserialize, serialize } from 'node:v8';
import { fetchAborted, unusableOptions } from '../../errors.js';
import type { ResolvedKey } from '../../key.js';
import { hostTableProblem } from '../../options.js';
import {
  HOST_NOT_FOUND,
  type HostCall,
  type HostCancel,
  type HostDone,
  type HostPull,
  IO_LIMITS,
} from '../../protocol/agent-io.js';
import { isPrimitive } from '../../protocol/clone.js';
import type { RemoteError } from '../../protocol/messages.js';
import { exceedsSize } from '../../protocol/size.js';
import type { FetchOption, FetchPolicy, HostCapability, HostContext, HostOption } from '../../types.js';
import { askForKey } from '../policy/ask.js';
import type { CallObservation, HostTrace } from '../telemetry/observation.js';
import type { AgentWorker } from '../workers/agent-worker.js';
import { HostBudget } from './budget.js';
import { fetchCapability, fetchPolicyFor } from './fetch-capability.js';
import { HostBodies, HostStream } from './host-bodies.js';
import { failure, hostError } from './host-error.js';
import type { KeyQuota } from './quotas.js';

type Table = Readonly<Record<string, HostCapability>>;

/** The agent call a host call was made under: its signal is the capability's `ctx.signal`. */
export interface CallingCall {
  hostSignal(): AbortSignal;
  /** The caller's `context`, serialized; null for none. */
  readonly context: Uint8Array | null;
  /** The caller's async context, which the capability runs in. */
  readonly scope: AsyncResource | null;
  /** Its span and record, when it is observed: a host call is a child span, and counts in the record. */
  readonly observed: CallObservation | null;
}
type Invoke = (ctx: HostContext, ...args: unknown[]) => unknown;

/** Names listed in a HOST_NOT_FOUND message at most. */
const LISTED = 20;

const tables = new WeakMap<object, Table>();

/** Whether any key of a pool with these options can have a capability (a call then keeps its caller's async context). */
export function mayHaveCapabilities(options: {
  readonly host: HostOption;
  readonly fetch?: FetchOption | undefined;
}): boolean {
  return typeof options.host === 'function' || Object.keys(options.host).length > 0 || options.fetch !== undefined;
}

/**
 * The host calls of a key about to start: its capabilities (the `host` option's or its
 * policy's, and the built-in `fetch` when the key has a fetch policy: `ownFetch`, its
 * policy's, where given). Throws INVALID_OPTIONS, which fails that key's calls: a bad per-key
 * answer, or a `fetch` declared both ways.
 */
export function hostCallsFor(
  host: HostOption,
  fetch: FetchOption | undefined,
  ownFetch: FetchPolicy | null | undefined,
  key: ResolvedKey,
  quota: KeyQuota,
): HostCalls {
  const table = capabilitiesFor(host, key);
  const policy = fetchPolicyFor(fetch, key, ownFetch);
  if (policy === null) return new HostCalls(table, key, quota);
  if (Object.hasOwn(table, 'fetch')) {
    const message = `${key.text}: host declares a fetch capability and the fetch option gives the key one too`;
    throw unusableOptions(message, { key: key.text, issues: [{ path: ['host', 'fetch'], message }] });
  }
  const builtIn = fetchCapability(policy);
  const withFetch = Object.freeze(Object.assign(Object.create(null), table, { fetch: builtIn.capability })) as Table;
  return new HostCalls(withFetch, key, quota, builtIn.close);
}

/** The `host` option's capabilities for a key; throws INVALID_OPTIONS, which fails that key's calls. */
function capabilitiesFor(option: HostOption, key: ResolvedKey): Table {
  if (typeof option !== 'function') {
    let table = tables.get(option);
    if (table === undefined) {
      table = buildTable(option, key.text);
      tables.set(option, table);
    }
    return table;
  }
  return buildTable(askForKey('host', option, key), key.text);
}

function buildTable(declared: unknown, key: string): Table {
  const problem = hostTableProblem(declared);
  if (problem !== null) {
    throw unusableOptions(`${key}: host ${problem}`, { key, issues: [{ path: ['host'], message: `host ${problem}` }] });
  }
  const table = Object.create(null) as Record<string, HostCapability>;
  for (const [name, fn] of Object.entries(declared as Record<string, HostCapability>)) {
    Object.defineProperty(table, name, { value: fn, enumerable: true });
  }
  return Object.freeze(table);
}

/** A host call past its admission: its own signal's controller (a cancel from the agent aborts it) and what its end undoes. */
interface Running {
  readonly controller: AbortController;
  stop(): void;
}

/** Admitted and waiting for the budget, or run: its place is held either way. */
const HELD: Running = { controller: new AbortController(), stop: () => {} };

/**
 * The host calls of one worker in flight, and the bodies that follow some answers (`fetch`).
 * Their count is bounded (the runtime refuses more itself, so excess here is a forgery);
 * each one's `ctx.signal` fires when its agent call ends or the agent cancels it, and then
 * the worker is answered at once, whatever the capability still does.
 */
export class HostCalls {
  private readonly inFlight = new Map<number, Running>();
  /** Host calls that arrived while the worker's share of the coordinator was spent, in order. */
  private readonly held: HostCall[] = [];
  private resumeTimer: NodeJS.Timeout | undefined = undefined;
  /** The runtime numbers host calls upwards: an id at or below the last is a forgery. */
  private lastId = 0;
  private bodies: HostBodies | null = null;
  private closed = false;

  constructor(
    private readonly table: Table,
    private readonly key: ResolvedKey,
    /** The key's quotas and usage, which outlive this worker. */
    private readonly quota: KeyQuota,
    /** Lets go what the key's capabilities hold (its fetcher's connections) when its worker ends. */
    private readonly release: () => Promise<void> = () => Promise.resolve(),
    private readonly budget: HostBudget = new HostBudget(),
  ) {}

  handle(message: HostCall, callFor: (id: number) => CallingCall | undefined, thread: AgentWorker): void {
    const { id } = message;
    if (id <= this.lastId) return thread.violate(`host call ${id} made twice, or out of order`);
    this.lastId = id;
    if (this.inFlight.size + (this.bodies?.size ?? 0) >= IO_LIMITS.hostCalls) {
      return thread.violate('more host calls than its runtime allows');
    }
    if (thread.terminating) return;
    this.inFlight.set(id, HELD);
    if (this.held.length === 0 && this.budget.take(message.args.byteLength)) {
      this.timed(() => this.run(message, callFor, thread));
      return;
    }
    this.held.push(message);
    this.resumeLater(callFor, thread);
  }

  /** The agent wants `n` more chunks of a body. */
  pull(message: HostPull, thread: AgentWorker): void {
    if (message.id > this.lastId) return thread.violate(`credit for host call ${message.id}, which was never made`);
    this.bodies?.pull(message.id, message.n);
  }

  /** The agent gave up on a host call (its answer is no longer wanted) or on its body. */
  cancel(message: HostCancel, thread: AgentWorker): void {
    const { id } = message;
    if (id > this.lastId) return thread.violate(`a cancel of host call ${id}, which was never made`);
    const running = this.inFlight.get(id);
    if (running !== undefined && running !== HELD) {
      running.controller.abort(fetchAborted());
      return;
    }
    this.bodies?.cancel(id);
  }

  /** The worker is gone: bodies end, and what the capabilities hold is let go. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.bodies?.closeAll();
    clearTimeout(this.resumeTimer);
    void this.release().catch(() => {});
  }

  /** Runs held host calls as the budget refills; the call that made one may have ended meanwhile. */
  private resumeLater(callFor: (id: number) => CallingCall | undefined, thread: AgentWorker): void {
    const next = this.held[0];
    if (next === undefined || this.resumeTimer !== undefined) return;
    this.resumeTimer = setTimeout(() => {
      this.resumeTimer = undefined;
      if (thread.terminating) return;
      for (let head = this.held[0]; head !== undefined; head = this.held[0]) {
        if (!this.budget.take(head.args.byteLength)) break;
        this.held.shift();
        this.timed(() => this.run(head, callFor, thread));
      }
      this.resumeLater(callFor, thread);
    }, this.budget.waitFor(next.args.byteLength));
    this.resumeTimer.unref();
  }

  /** Charges the coordinator's time `work` takes to the worker's budget. */
  private timed(work: () => void): void {
    const started = performance.now();
    try {
      work();
    } finally {
      this.budget.spend(performance.now() - started);
    }
  }

  private run(message: HostCall, callFor: (id: number) => CallingCall | undefined, thread: AgentWorker): void {
    const { id, name } = message;
    const call = callFor(message.call);
    if (thread.terminating) return;
    let trace: HostTrace | null = null;
    const answer = (done: HostDone): void => {
      const running = this.inFlight.get(id);
      if (running === undefined) return;
      this.inFlight.delete(id);
      running.stop();
      trace?.end(done.ok ? null : done.error);
      if (!thread.terminating) thread.post(done);
    };
    if (call === undefined) {
      const error = failure('ERR_SANDPOOL_ABORTED', `sandpool.host.${name}(): the agent call that made it has ended`);
      return answer({ t: 'host-done', id, ok: false, error });
    }
    trace = call.observed === null ? null : call.observed.hostCall(name);
    if (!Object.hasOwn(this.table, name)) return answer({ t: 'host-done', id, ok: false, error: this.notFound(name) });
    if (!this.quota.takeHost(name, message.args.byteLength)) {
      const error = failure('ERR_SANDPOOL_QUOTA', `sandpool.host.${name}(): over the key's quota (quotas.host)`);
      return answer({ t: 'host-done', id, ok: false, error });
    }
    call.observed?.usedHost(name);
    let args: unknown;
    try {
      args = deserialize(new Uint8Array(message.args));
    } catch (error) {
      const failed = failure(
        'ERR_SANDPOOL_DATA_CLONE',
        `the arguments cannot be rebuilt in the host: ${String(error)}`,
      );
      return answer({ t: 'host-done', id, ok: false, error: failed });
    }
    // The runtime sizes them as this does before it sends them: past the bound is a forgery,
    // refused before a capability (or a spread) walks a sparse array's every slot.
    if (!Array.isArray(args)) return thread.violate('host call arguments that are not an array');
    if (exceedsSize(args, IO_LIMITS.hostArgsBytes)) return thread.violate('host call arguments past their bound');
    // The capability's signal fires when the agent call ends (its own signal) or the agent cancels this host call.
    const controller = new AbortController();
    const signal = AbortSignal.any([call.hostSignal(), controller.signal]);
    const ended = (): void => {
      const error = failure('ERR_SANDPOOL_ABORTED', `sandpool.host.${name}(): the agent call that made it has ended`);
      answer({ t: 'host-done', id, ok: false, error });
    };
    signal.addEventListener('abort', ended, { once: true });
    this.inFlight.set(id, { controller, stop: () => signal.removeEventListener('abort', ended) });
    const { key } = this;
    const fn = this.table[name] as unknown as Invoke;
    let result: unknown;
    try {
      const ctx: HostContext = Object.freeze({
        key: key.text,
        swarm: key.swarm,
        snapshot: key.snapshot,
        stem: key.stem,
        signal,
        // A copy per host call: what one capability does to it, the next does not see.
        context: call.context === null ? undefined : deserialize(call.context),
      });
      // Within its span, where it has one: the capability's own spans are the host call's children.
      const invoke: Invoke = trace === null ? fn : (...all) => (trace as HostTrace).run(fn as never, all);
      result = call.scope === null ? invoke(ctx, ...args) : call.scope.runInAsyncScope(invoke, undefined, ctx, ...args);
    } catch (error) {
      return answer({ t: 'host-done', id, ok: false, error: hostError(error) });
    }
    void Promise.resolve(result).then(
      (value) =>
        this.timed(() => {
          if (!(value instanceof HostStream)) return answer(this.encode(id, name, value));
          // The body is held before its head leaves: the worker's first pull may follow at once.
          if (!this.inFlight.has(id)) return letGo(value.body);
          this.bodiesOf(thread).start(id, value.body, signal, (bytes) => this.quota.moved(name, bytes));
          answer(this.encode(id, name, value.head, true));
        }),
      (error: unknown) => answer({ t: 'host-done', id, ok: false, error: hostError(error) }),
    );
  }

  private bodiesOf(thread: AgentWorker): HostBodies {
    this.bodies ??= new HostBodies(thread, () =>
      failure('ERR_SANDPOOL_ABORTED', 'the agent call that read this body has ended'),
    );
    return this.bodies;
  }

  /** A capability's result as its answer, its bytes counted toward the key's use of `name`. */
  private encode(id: number, name: string, value: unknown, body = false): HostDone {
    const done = encode(id, value, body);
    if (done.ok) {
      const bytes = done.bytes?.byteLength ?? (typeof done.value === 'string' ? done.value.length : 0);
      this.quota.moved(name, bytes);
    }
    return done;
  }

  private notFound(name: string): RemoteError {
    const names = Object.keys(this.table);
    const listed = names.slice(0, LISTED).join(', ');
    const more = names.length > LISTED ? `, and ${names.length - LISTED} more` : '';
    return failure(
      HOST_NOT_FOUND,
      `no host capability ${JSON.stringify(name)}; ` +
        (names.length === 0 ? 'the pool declares none' : `the pool declares: ${listed}${more}`),
    );
  }
}

/** A body nobody will read: its source (a connection) is let go now. */
function letGo(body: AsyncIterable<Uint8Array>): void {
  void body[Symbol.asyncIterator]()
    .return?.()
    ?.catch(() => {});
}

function encode(id: number, value: unknown, body = false): HostDone {
  const more = body ? { body: true as const } : {};
  if (isPrimitive(value)) return { t: 'host-done', id, ok: true, value, bytes: null, ...more };
  try {
    const buffer = serialize(value);
    const bytes = buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength) as ArrayBuffer;
    return { t: 'host-done', id, ok: true, value: undefined, bytes, ...more };
  } catch (error) {
    return {
      t: 'host-done',
      id,
      ok: false,
      error: failure('ERR_SANDPOOL_DATA_CLONE', `the capability's result cannot be cloned: ${String(error)}`),
    };
  }
}
