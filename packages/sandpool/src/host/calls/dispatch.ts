import { aborted, type SandpoolError } from '../../errors.js';
import type { AgentKey, ResolvedKey } from '../../key.js';
import type { CallOptions } from '../../options.js';
import type { SnapshotRef } from '../../store/names.js';
import type { Quotas } from '../capabilities/quotas.js';
import { Call, type StreamSink } from '../cells/call.js';
import type { Backoff } from '../routes/backoff.js';
import type { PointerBook } from '../routes/pointers.js';
import type { Route } from '../routes/route.js';
import type { RouteTable } from '../routes/table.js';
import type { Telemetry } from '../telemetry/telemetry.js';
import { type AdmissionState, type AdmittedCall, admit } from './admission.js';
import { callerScope } from './call-context.js';

export interface DispatchLimits {
  readonly maxPendingPerKey: number;
  readonly maxWaiting: number;
  readonly callTimeoutMs: number;
}

/**
 * The way of a call: admitted (every refusal before it holds anything), made into a Call
 * that carries its own completion, and handed to its key's route. From there its worker's
 * reply, a timeout or a death settles it directly; nothing comes back through here.
 */
export class Dispatch implements AdmissionState {
  /** `swarm@snapshot` of snapshots being removed: their keys fail at once rather than start a worker. */
  readonly removing = new Set<string>();

  constructor(
    private readonly table: RouteTable,
    readonly backoff: Backoff,
    private readonly limits: DispatchLimits,
    /** Calls waiting for a slot, across keys (the census's set). */
    private readonly slotWaiters: ReadonlySet<Call>,
    private readonly isClosed: () => boolean,
    /** Whether any key may have capabilities: only then does a call keep its caller's async context. */
    private readonly capabilities: boolean,
    readonly quotas: Quotas,
    private readonly telemetry: Telemetry,
    private readonly pointers: PointerBook,
  ) {}

  /**
   * Never throws synchronously: every refusal is a rejected promise. `deliver` makes the
   * value what the caller gets, as part of the call (see Call.deliver).
   */
  submit(
    key: AgentKey | string,
    fn: string,
    args: readonly unknown[],
    options?: CallOptions,
    deliver?: (value: unknown) => unknown,
  ): Promise<unknown> {
    try {
      const admitted = admit(this, key, fn, args, options);
      return new Promise((resolve, reject) => {
        this.enter(admitted, resolve, reject, null, deliver ?? null);
      });
    } catch (error) {
      this.telemetry.refused(key, fn, error);
      return Promise.reject(error);
    }
  }

  /** A stream call (see pool/streams.ts): admitted like a call, with no timeout unless given. Throws its refusal. */
  openStream(
    key: AgentKey | string,
    fn: string,
    args: readonly unknown[],
    options: CallOptions,
    sink: StreamSink,
    resolve: (value: unknown) => void,
    reject: (error: Error) => void,
  ): Call {
    let admitted: AdmittedCall;
    try {
      admitted = admit(this, key, fn, args, { timeoutMs: 0, ...options });
    } catch (error) {
      this.telemetry.refused(key, fn, error);
      throw error;
    }
    return this.enter(admitted, resolve, reject, sink, null);
  }

  /** A call refused before admission (a stream's options): recorded as a refusal in admission is. */
  refuse(key: AgentKey | string, fn: string, error: SandpoolError): void {
    this.telemetry.refused(key, fn, error);
  }

  private enter(
    admitted: AdmittedCall,
    resolve: (value: unknown) => void,
    reject: (error: Error) => void,
    sink: StreamSink | null,
    deliver: ((value: unknown) => unknown) | null,
  ): Call {
    const route = admitted.route ?? this.table.open(admitted.key, admitted.snapshot);
    const call = new Call(route, admitted.fn, admitted.args, admitted.timeoutMs, admitted.signal, resolve, reject);
    if (admitted.transfer !== undefined) call.transfer = admitted.transfer;
    call.shared = admitted.shared;
    call.stream = sink;
    call.deliver = deliver;
    call.context = admitted.context;
    call.scope = callerScope(this.capabilities);
    call.observed = this.telemetry.begin(route.key, admitted.fn, call.acceptedAt);
    const key = route.key.text;
    if (admitted.signal !== undefined) call.listen(admitted.signal, (): SandpoolError => aborted(key));
    route.accept(call);
    return call;
  }

  // ---- what admission reads ------------------------------------------------------------------

  get closed(): boolean {
    return this.isClosed();
  }

  get maxPendingPerKey(): number {
    return this.limits.maxPendingPerKey;
  }

  get maxWaiting(): number {
    return this.limits.maxWaiting;
  }

  get callTimeoutMs(): number {
    return this.limits.callTimeoutMs;
  }

  get waitingForSlot(): number {
    return this.slotWaiters.size;
  }

  route(key: ResolvedKey): Route | undefined {
    return this.table.get(key);
  }

  resolveSnapshot(key: ResolvedKey): SnapshotRef {
    return this.pointers.resolve(key);
  }
}
