import type { SandpoolError } from '../../errors.js';
import type { ResolvedKey } from '../../key.js';
import type { CallRecord } from '../../types.js';
import type { Context, OtelApi, Span, Tracer } from './otel.js';

/** Where observed calls end up: the pool's `call` event. */
export interface RecordSink {
  /** Whether anyone listens for records now. */
  readonly recording: boolean;
  record(record: CallRecord): void;
}

/** What an observation reads of its call when it ends. */
export interface ObservedCall {
  /** performance.now() when call() accepted it. */
  readonly acceptedAt: number;
  /** Where it was held last: the cell that ran it (or would have). */
  readonly site: {
    /** The CPU share of its worker's calls now (see CpuShare), NaN when it never had a worker. */
    cpuShare(): number;
    /** The digest of the snapshot its worker loaded; null for live code or no worker. */
    readonly digest: string | null;
  } | null;
}

/** A host call's span: the capability runs inside it, so its own spans are the host call's children. */
export class HostTrace {
  constructor(
    private readonly api: OtelApi,
    private readonly span: Span,
  ) {}

  run(fn: (...args: unknown[]) => unknown, args: readonly unknown[]): unknown {
    const { context, trace } = this.api;
    return context.with(trace.setSpan(context.active(), this.span), fn, undefined, ...args);
  }

  end(error: { message: string; code?: string | number } | null): void {
    if (error !== null) {
      this.span.setStatus({ code: this.api.SpanStatusCode.ERROR, message: error.message });
      if (error.code !== undefined) this.span.setAttribute('error.type', String(error.code));
    }
    this.span.end();
  }
}

/**
 * One call someone observes: a tracer provider is registered (it has a span), or the pool has
 * `call` listeners (it ends in a record), or both. Calls nobody observes have none, and cost
 * nothing here.
 */
export class CallObservation {
  /** Its worker's CPU share when it started on it (see CpuShare); NaN until it does. */
  cpuFrom = Number.NaN;
  /** The W3C traceparent of its span, which the agent sees as `sandpool.traceparent`; null without a span. */
  readonly traceparent: string | null;
  private host: Record<string, number> | null = null;

  constructor(
    private readonly sink: RecordSink,
    readonly key: ResolvedKey,
    readonly fn: string,
    private readonly api: OtelApi | null,
    private readonly tracer: Tracer | null,
    private readonly span: Span | null,
  ) {
    this.traceparent = api === null || span === null ? null : traceparentOf(api, span);
  }

  /** Starts the call's span under the caller's active context. */
  static start(
    sink: RecordSink,
    key: ResolvedKey,
    fn: string,
    api: OtelApi | null,
    tracer: Tracer | null,
  ): CallObservation {
    const span = api === null || tracer === null ? null : startCallSpan(api, tracer, key, fn);
    return new CallObservation(sink, key, fn, api, tracer, span);
  }

  /** A host call made under this call: its span (a child of the call's), or null when the call has none. */
  hostCall(name: string): HostTrace | null {
    const { api, tracer, span } = this;
    if (api === null || tracer === null || span === null) return null;
    const parent: Context = api.trace.setSpan(api.context.active(), span);
    const child = tracer.startSpan(`sandpool.host ${name}`, { attributes: { 'sandpool.capability': name } }, parent);
    return new HostTrace(api, child);
  }

  /** A capability ran for this call (it was found and within the key's quota). */
  usedHost(name: string): void {
    this.host ??= Object.create(null) as Record<string, number>;
    this.host[name] = (this.host[name] ?? 0) + 1;
  }

  /** The call settled (`error` null: it succeeded): its span ends, and its record goes out. */
  end(call: ObservedCall, error: SandpoolError | null): void {
    const durationMs = performance.now() - call.acceptedAt;
    const site = call.site;
    const cpuNs = Number.isNaN(this.cpuFrom) || site === null ? 0 : site.cpuShare() - this.cpuFrom;
    const cpuMs = Number.isFinite(cpuNs) && cpuNs > 0 ? cpuNs / 1e6 : 0;
    this.finish(error, durationMs, cpuMs, site?.digest ?? null);
  }

  /** A call refused before it held anything: a span and a record of no time and no CPU. */
  refused(error: SandpoolError): void {
    this.finish(error, 0, 0, null);
  }

  private finish(error: SandpoolError | null, durationMs: number, cpuMs: number, digest: string | null): void {
    const { span, api } = this;
    if (span !== null && api !== null) {
      span.setAttribute('sandpool.outcome', error === null ? 'ok' : 'error');
      span.setAttribute('sandpool.cpu_ms', round(cpuMs));
      if (digest !== null) span.setAttribute('sandpool.digest', digest);
      if (error !== null) {
        span.setAttribute('error.type', error.code);
        span.setStatus({ code: api.SpanStatusCode.ERROR, message: error.message });
      }
      span.end();
    }
    if (!this.sink.recording) return;
    const { key, fn } = this;
    const record: CallRecord = {
      key: key.text,
      swarm: key.swarm,
      snapshot: key.snapshot,
      stem: key.stem,
      fn,
      durationMs: round(durationMs),
      cpuMs: round(cpuMs),
      outcome: error === null ? 'ok' : 'error',
      host: this.host === null ? {} : { ...this.host },
    };
    if (error !== null) record.code = error.code;
    this.sink.record(record);
  }
}

function startCallSpan(api: OtelApi, tracer: Tracer, key: ResolvedKey, fn: string): Span {
  const attributes: Record<string, string> = {
    'sandpool.swarm': key.swarm,
    'sandpool.stem': key.stem,
    'sandpool.function': fn,
  };
  if (key.snapshot !== null) attributes['sandpool.snapshot'] = key.snapshot;
  return tracer.startSpan('sandpool.call', { kind: api.SpanKind.INTERNAL, attributes }, api.context.active());
}

/** `00-<trace id>-<span id>-<flags>` (W3C Trace Context); null for a span with no valid context. */
function traceparentOf(api: OtelApi, span: Span): string | null {
  const spanContext = span.spanContext();
  if (!api.trace.isSpanContextValid(spanContext)) return null;
  const { traceId, spanId, traceFlags } = spanContext;
  return `00-${traceId}-${spanId}-${(traceFlags & 0xff).toString(16).padStart(2, '0')}`;
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
