import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { EvictReason, ExitReason, Pool, SpawnReason } from 'sandpool';
import type { CallKind } from './call-input.js';
import type { ServerErrorCode } from './status.js';

export interface ServerMetrics {
  /** A registry of the server's own: several servers in one process (tests) must not collide. */
  readonly registry: Registry;
  /** One finished call: `outcome` is `ok` or the error code; latency only when the key was valid. */
  observeCall(outcome: 'ok' | ServerErrorCode, kind: CallKind | null, seconds: number): void;
}

const SPAWN_REASONS: readonly SpawnReason[] = ['cold', 'spare'];
const EVICT_REASONS: readonly EvictReason[] = ['lru', 'idle', 'reload', 'removed', 'closed'];
const CRASH_REASONS: readonly ExitReason[] = ['crash', 'exit', 'oom', 'killed'];
// From a warm in-process call (~0.1 ms) up to the default call timeout (30 s).
const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export function createMetrics(pool: Pool, nodeName: string): ServerMetrics {
  const registry = new Registry();
  registry.setDefaultLabels({ node: nodeName });
  // Process metrics and nodejs_eventloop_lag_*: the event-loop delay that every call on this node shares.
  collectDefaultMetrics({ register: registry });

  const calls = new Counter({
    name: 'sandpool_calls_total',
    help: 'Calls answered, by outcome: ok or the error code.',
    labelNames: ['outcome'],
    registers: [registry],
  });
  const latency = new Histogram({
    name: 'sandpool_call_duration_seconds',
    help: 'Time from a valid call request to its answer, by live or snapshot key.',
    labelNames: ['kind'],
    buckets: LATENCY_BUCKETS,
    registers: [registry],
  });
  statsGauge(
    registry,
    'sandpool_workers_alive',
    'Keyed worker threads alive, draining ones included.',
    () => pool.stats().workers,
  );
  statsGauge(registry, 'sandpool_workers_busy', 'Keyed workers running at least one call.', () => pool.stats().busy);
  statsGauge(
    registry,
    'sandpool_workers_spare',
    'Blank workers booted for the next new key.',
    () => pool.stats().spares,
  );
  statsGauge(
    registry,
    'sandpool_queue_depth',
    'Calls waiting for a worker slot or for their worker to start.',
    () => pool.stats().queued,
  );

  const spawns = eventCounter(
    registry,
    'sandpool_spawns_total',
    'Workers that took a key, by cold or spare.',
    SPAWN_REASONS,
  );
  const evictions = eventCounter(
    registry,
    'sandpool_evictions_total',
    'Workers the pool retired, by reason.',
    EVICT_REASONS,
  );
  const crashes = eventCounter(
    registry,
    'sandpool_crashes_total',
    'Keyed workers that died, by reason.',
    CRASH_REASONS,
  );
  pool.on('spawn', ({ reason }) => spawns.inc({ reason }));
  pool.on('evict', ({ reason }) => evictions.inc({ reason }));
  pool.on('exit', ({ reason }) => {
    // `exit` also fires for retired workers; those are counted as evictions already.
    if ((CRASH_REASONS as readonly string[]).includes(reason)) crashes.inc({ reason });
  });

  return {
    registry,
    observeCall(outcome, kind, seconds) {
      calls.inc({ outcome });
      if (kind !== null) latency.observe({ kind }, seconds);
    },
  };
}

/** A gauge read from `pool.stats()` at scrape time, so it is never stale and costs nothing between scrapes. */
function statsGauge(registry: Registry, name: string, help: string, read: () => number): void {
  new Gauge({
    name,
    help,
    registers: [registry],
    collect() {
      this.set(read());
    },
  });
}

/** A counter with every known reason at 0 from the start, so dashboards see the series before the first event. */
function eventCounter(registry: Registry, name: string, help: string, reasons: readonly string[]): Counter<'reason'> {
  const counter = new Counter({ name, help, labelNames: ['reason'], registers: [registry] });
  for (const reason of reasons) counter.inc({ reason }, 0);
  return counter;
}
