import { isSandpoolError } from '../../errors.js';
import { type AgentKey, type ResolvedKey, resolveKey } from '../../key.js';
import type { CallRecord } from '../../types.js';
import { CallObservation, type RecordSink } from './observation.js';
import { loadOtelApi, type OtelApi, Tracing } from './otel.js';

/**
 * A pool's telemetry: whether a call is observed is decided when it is made, by two things
 * the application controls, a registered OpenTelemetry tracer provider and `call` listeners
 * on the pool. With neither, a call gets no observation, and its way through the pool checks
 * one field for it.
 */
export class Telemetry implements RecordSink {
  /** Whether the last call made was observed: workers' CPU is read for the calls only then. */
  measuring = false;
  private readonly api: OtelApi | null;
  private readonly tracing: Tracing | null;

  constructor(
    /** The `tracing` option: false keeps spans off whatever provider is registered. */
    tracing: boolean,
    /** Whether the pool has `call` listeners now. */
    private readonly listens: () => boolean,
    private readonly emit: (record: CallRecord) => void,
  ) {
    this.api = tracing ? loadOtelApi() : null;
    this.tracing = this.api === null ? null : new Tracing(this.api);
  }

  get recording(): boolean {
    return this.listens();
  }

  /** A call accepted at `now` (performance.now()): its observation, or null when nobody observes it. */
  begin(key: ResolvedKey, fn: string, now: number): CallObservation | null {
    const tracer = this.tracing === null ? null : this.tracing.at(now);
    const measuring = tracer !== null || this.listens();
    this.measuring = measuring;
    return measuring ? CallObservation.start(this, key, fn, this.api, tracer) : null;
  }

  /** A call refused before it held anything: a span and a record, when it names a valid key. */
  refused(keyInput: AgentKey | string, fn: unknown, error: unknown): void {
    if (!isSandpoolError(error)) return;
    const tracer = this.tracing === null ? null : this.tracing.at(performance.now());
    if (tracer === null && !this.listens()) return;
    let key: ResolvedKey;
    try {
      key = resolveKey(keyInput);
    } catch {
      return; // a call naming no valid key is no key's
    }
    const name = typeof fn === 'string' ? fn : '';
    CallObservation.start(this, key, name, this.api, tracer).refused(error);
  }

  record(record: CallRecord): void {
    try {
      this.emit(record);
    } catch (error) {
      // A listener's throw is the application's, as from any event; it must not stop the call
      // settling (nor the calls settled after it in the same reply) on its way out.
      queueMicrotask(() => {
        throw error;
      });
    }
  }
}
