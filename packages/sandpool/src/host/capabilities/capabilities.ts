/**
 * Host capabilities: functions of the host that agents call as `sandpool.host.<name>()`.
 * They travel on the pool's own checked protocol and are looked up with `Object.hasOwn` in a
 * null-prototype table, so a worker naming `__proto__`, `constructor` or `toString` reaches
 * nothing. They run on the coordinator's thread: a CPU-heavy one delays every key.
 */
import type { AsyncResource } from 'node:async_hooks';
import { deserialize, serialize } from 'node:v8';
import { unusableOptions } from '../../errors.js';
import type { ResolvedKey } from '../../key.js';
import { hostTableProblem } from '../../options.js';
import { HOST_NOT_FOUND, type HostCall, type HostDone, IO_LIMITS } from '../../protocol/agent-io.js';
import { isPrimitive } from '../../protocol/clone.js';
import type { RemoteError } from '../../protocol/messages.js';
import { toRemoteError } from '../../protocol/remote-error.js';
import { exceedsSize } from '../../protocol/size.js';
import type { HostCapability, HostContext, HostOption } from '../../types.js';
import { askForKey } from '../policy/ask.js';
import type { AgentWorker } from '../workers/agent-worker.js';
import { HostBudget } from './budget.js';

type Table = Readonly<Record<string, HostCapability>>;

/** The agent call a host call was made under: its signal is the capability's `ctx.signal`. */
export interface CallingCall {
  hostSignal(): AbortSignal;
  /** The caller's `context`, serialized; null for none. */
  readonly context: Uint8Array | null;
  /** The caller's async context, which the capability runs in. */
  readonly scope: AsyncResource | null;
}
type Invoke = (ctx: HostContext, ...args: unknown[]) => unknown;

/** Names listed in a HOST_NOT_FOUND message at most. */
const LISTED = 20;

const tables = new WeakMap<object, Table>();

/** Whether any key of a pool with these options can have a capability (a call then keeps its caller's async context). */
export function mayHaveCapabilities(options: { readonly host: HostOption }): boolean {
  return typeof options.host === 'function' || Object.keys(options.host).length > 0;
}

/** The capabilities of a key about to start; throws INVALID_OPTIONS, which fails that key's calls. */
export function capabilitiesFor(option: HostOption, key: ResolvedKey): Table {
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

/**
 * The host calls of one worker in flight. Their count is bounded (the runtime refuses more
 * itself, so excess here is a forgery); each one's `ctx.signal` is its agent call's, and when
 * that call ends the worker is answered at once, whatever the capability still does.
 */
export class HostCalls {
  private readonly inFlight = new Map<number, () => void>();
  /** Host calls that arrived while the worker's share of the coordinator was spent, in order. */
  private readonly held: HostCall[] = [];
  private resumeTimer: NodeJS.Timeout | undefined = undefined;

  constructor(
    private readonly table: Table,
    private readonly key: ResolvedKey,
    private readonly budget: HostBudget = new HostBudget(),
  ) {}

  handle(message: HostCall, callFor: (id: number) => CallingCall | undefined, thread: AgentWorker): void {
    const { id } = message;
    if (this.inFlight.has(id)) return thread.violate(`host call ${id} made twice`);
    if (this.inFlight.size >= IO_LIMITS.hostCalls) return thread.violate('more host calls than its runtime allows');
    if (thread.terminating) return;
    this.inFlight.set(id, () => {});
    if (this.held.length === 0 && this.budget.take(message.args.byteLength)) {
      this.timed(() => this.run(message, callFor, thread));
      return;
    }
    this.held.push(message);
    this.resumeLater(callFor, thread);
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
    const answer = (done: HostDone): void => {
      const stop = this.inFlight.get(id);
      if (stop === undefined) return;
      this.inFlight.delete(id);
      stop();
      if (!thread.terminating) thread.post(done);
    };
    if (call === undefined) {
      const error = failure('ERR_SANDPOOL_ABORTED', `sandpool.host.${name}(): the agent call that made it has ended`);
      return answer({ t: 'host-done', id, ok: false, error });
    }
    if (!Object.hasOwn(this.table, name)) return answer({ t: 'host-done', id, ok: false, error: this.notFound(name) });
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
    const signal = call.hostSignal();
    const ended = (): void => {
      const error = failure('ERR_SANDPOOL_ABORTED', `sandpool.host.${name}(): the agent call that made it has ended`);
      answer({ t: 'host-done', id, ok: false, error });
    };
    signal.addEventListener('abort', ended, { once: true });
    this.inFlight.set(id, () => signal.removeEventListener('abort', ended));
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
      result = call.scope === null ? fn(ctx, ...args) : call.scope.runInAsyncScope(fn, undefined, ctx, ...args);
    } catch (error) {
      return answer({ t: 'host-done', id, ok: false, error: hostError(error) });
    }
    void Promise.resolve(result).then(
      (value) => this.timed(() => answer(encode(id, value))),
      (error: unknown) => answer({ t: 'host-done', id, ok: false, error: hostError(error) }),
    );
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

function encode(id: number, value: unknown): HostDone {
  if (isPrimitive(value)) return { t: 'host-done', id, ok: true, value, bytes: null };
  try {
    const buffer = serialize(value);
    const bytes = buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength) as ArrayBuffer;
    return { t: 'host-done', id, ok: true, value: undefined, bytes };
  } catch (error) {
    return {
      t: 'host-done',
      id,
      ok: false,
      error: failure('ERR_SANDPOOL_DATA_CLONE', `the capability's result cannot be cloned: ${String(error)}`),
    };
  }
}

/** The capability's error as the agent sees it: name, message and code, never the host's stack (it names host paths). */
function hostError(thrown: unknown): RemoteError {
  const { stack: _stack, ...error } = toRemoteError(thrown);
  return error;
}

function failure(code: string, message: string): RemoteError {
  return { name: 'Error', message, code };
}
