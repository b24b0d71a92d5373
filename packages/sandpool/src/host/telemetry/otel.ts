/**
 * OpenTelemetry through `@opentelemetry/api` only, and only where the application has it:
 * the API is an optional peer dependency, and no SDK is ever loaded here. Which provider
 * (if any) the application registered is the API's global, shared by every copy of the API
 * in the process, so the copy found here sees the application's registration.
 */
import { createRequire } from 'node:module';
import type * as Api from '@opentelemetry/api';

export type OtelApi = typeof Api;
export type Span = Api.Span;
export type Context = Api.Context;
export type Tracer = Api.Tracer;

/** How long a look at the registered provider holds: a provider registered meanwhile is seen this much later at most. */
const RECHECK_MS = 1;

/** The API as the application installed it, or null without it; loaded synchronously, once. */
export function loadOtelApi(): OtelApi | null {
  try {
    // The CommonJS build: createPool is synchronous, and the registry it reads is global.
    return createRequire(import.meta.url)('@opentelemetry/api') as OtelApi;
  } catch {
    return null;
  }
}

interface Delegating {
  getDelegate(): Api.TracerProvider;
}

/**
 * The tracer of the provider the application registered, or null when it registered none:
 * then a call costs one comparison. The provider is looked up at most once a millisecond,
 * with the clock reading each call makes anyway.
 */
export class Tracing {
  /** What an API's proxy delegates to while nothing is registered. */
  private readonly none: Api.TracerProvider;
  private provider: Api.TracerProvider | null = null;
  private tracer: Tracer | null = null;
  private checkedUntil = Number.NEGATIVE_INFINITY;

  constructor(readonly api: OtelApi) {
    this.none = new api.ProxyTracerProvider().getDelegate();
  }

  /** The tracer at `now` (performance.now()), or null when no provider is registered. */
  at(now: number): Tracer | null {
    if (now < this.checkedUntil) return this.tracer;
    this.checkedUntil = now + RECHECK_MS;
    const global = this.api.trace.getTracerProvider();
    // The global is an API copy's proxy (not necessarily this copy's class): what it delegates to is the provider.
    const provider =
      typeof (global as Partial<Delegating>).getDelegate === 'function'
        ? (global as unknown as Delegating).getDelegate()
        : global;
    if (provider === this.none) {
      this.provider = null;
      this.tracer = null;
    } else if (provider !== this.provider) {
      this.provider = provider;
      this.tracer = provider.getTracer('sandpool');
    }
    return this.tracer;
  }
}
