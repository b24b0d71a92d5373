import { Counter, collectDefaultMetrics, Gauge, Registry } from 'prom-client';
import type { DemoteReason, EvictReason, ExitReason, Pool, SpawnReason } from 'sandpool';
import { OneLabelCounter, OneLabelHistogram } from './one-label-metrics.js';
import type { ServerErrorCode } from './status.js';
import type { StoreReport } from './store-state.js';
import { SwarmLabels } from './swarm-labels.js';

export interface ServerMetrics {
  /** A registry of the server's own: several servers in one process (tests) must not collide. */
  readonly registry: Registry;
  /**
   * A request refused before it reached the pool (a bad body, a token that does not reach the
   * swarm): node-wide only, with no swarm, so a caller cannot put a tenant's name on a series.
   * Calls that reach the pool are counted from its `call` records.
   */
  observeRefused(code: ServerErrorCode): void;
}

/**
 * Records over each closed set of reasons, so a reason the library adds fails the build
 * here until it is listed (and pre-set at 0 for dashboards).
 */
const SPAWN_REASONS = reasons<SpawnReason>({ cold: true, spare: true });
const EVICT_REASONS = reasons<EvictReason>({
  lru: true,
  idle: true,
  reload: true,
  removed: true,
  closed: true,
  cpu: true,
});
const EXIT_REASONS = reasons<ExitReason>({
  crash: true,
  exit: true,
  oom: true,
  killed: true,
  protocol: true,
  cpu: true,
});
const DEMOTE_REASONS = reasons<DemoteReason>({ 'cpu-share': true, 'background-cpu': true });
// From a warm in-process call (~0.1 ms) up to the default call timeout (30 s).
const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
/** Fewer buckets per swarm: each one is a series per labelled swarm. */
const SWARM_LATENCY_BUCKETS = [0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10];

/**
 * The exposition text cut down to the per-swarm series of `swarms`, with their HELP and TYPE
 * lines: what a token scoped to those swarms may read. Node-wide series are left out, since
 * they sum every tenant's calls.
 */
export function swarmSeries(text: string, swarms: readonly string[]): string {
  const labels = new Set(swarms.map((swarm) => `swarm="${swarm}"`));
  const kept: string[] = [];
  let family: string[] = [];
  let keepFamily = false;
  const flush = (): void => {
    if (keepFamily) kept.push(...family);
    family = [];
    keepFamily = false;
  };
  for (const line of text.split('\n')) {
    if (line.startsWith('# HELP ')) {
      flush();
      family.push(line);
      continue;
    }
    if (line.startsWith('#') || line === '') {
      family.push(line);
      continue;
    }
    const swarm = /\bswarm="[^"]*"/.exec(line)?.[0];
    if (swarm !== undefined && labels.has(swarm)) {
      family.push(line);
      keepFamily = true;
    }
  }
  flush();
  return kept.length === 0 ? '' : `${kept.join('\n')}\n`;
}

export function createMetrics(
  pool: Pool,
  nodeName: string,
  swarmLabelLimit: number,
  store: StoreReport,
): ServerMetrics {
  const registry = new Registry();
  registry.setDefaultLabels({ node: nodeName });
  // Process metrics and nodejs_eventloop_lag_*: the event-loop delay that every call on this node shares.
  collectDefaultMetrics({ register: registry });

  const calls = new OneLabelCounter(
    'sandpool_calls_total',
    'Calls the pool answered, by outcome (ok or the error code), and requests refused before they reached it, by code.',
    'outcome',
    registry,
  );
  const latency = new OneLabelHistogram(
    'sandpool_call_duration_seconds',
    'Time from call() to its answer in the pool, by live or snapshot key.',
    'kind',
    LATENCY_BUCKETS,
    registry,
  );
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

  statsGauge(
    registry,
    'sandpool_workers_stuck',
    'Threads terminate() could not stop: they hold no slot, and end on their own or with the process.',
    () => pool.stats().stuck,
  );
  new Counter({
    name: 'sandpool_output_dropped_total',
    help: 'Characters of worker output dropped because the writer lagged or a worker outran its window.',
    registers: [registry],
    collect() {
      this.reset();
      this.inc(pool.stats().outputDropped);
    },
  });

  if (store.status !== null) storeMetrics(registry, store);

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
    'Keyed workers that died or that the pool killed, by reason.',
    EXIT_REASONS,
  );
  const exits = eventCounter(
    registry,
    'sandpool_exits_total',
    'Keyed workers that ended: retired by the pool, or died (by reason).',
    ['retired', ...EXIT_REASONS],
  );
  const demotions = eventCounter(
    registry,
    'sandpool_demotions_total',
    'Workers fairness lowered in CPU priority, by reason.',
    DEMOTE_REASONS,
  );
  pool.on('spawn', ({ reason }) => spawns.inc({ reason }));
  pool.on('evict', ({ reason }) => evictions.inc({ reason }));
  pool.on('demote', ({ reason }) => demotions.inc({ reason }));
  pool.on('exit', ({ reason }) => {
    exits.inc({ reason });
    if (reason !== 'retired') crashes.inc({ reason });
  });

  const perSwarm = swarmMetrics(registry, pool, swarmLabelLimit);
  // Every call the pool answers, the HTTP routes' and those the embedding service makes itself.
  pool.on('call', ({ swarm, snapshot, durationMs, code }) => {
    const seconds = durationMs / 1000;
    calls.inc(code ?? 'ok');
    latency.observe(snapshot === null ? 'live' : 'snapshot', seconds);
    perSwarm.observe(swarm, code !== undefined, seconds);
  });
  return {
    registry,
    observeRefused(code) {
      calls.inc(code);
    },
  };
}

/**
 * Calls, errors, latency and CPU by swarm, with the label set bounded by SwarmLabels.
 * CPU comes from `pool.keyStats()` at scrape time, as the growth of each key's total
 * since the previous scrape, so CPU burned between calls counts too.
 */
function swarmMetrics(
  registry: Registry,
  pool: Pool,
  limit: number,
): { observe(swarm: string, failed: boolean, seconds: number): void } {
  const cpuByKey = new Map<string, number>();
  const which = `the ${limit} most active swarms by name, the rest as _other`;
  // Registered first: prom-client collects in registration order, so the ranking below is
  // settled before the other per-swarm series are read.
  const cpu = new Counter({
    name: 'sandpool_swarm_cpu_seconds_total',
    help: `CPU time of the swarm's workers, in calls and between them; ${which}.`,
    labelNames: ['swarm'],
    registers: [registry],
    collect() {
      const seen = new Map<string, number>();
      const grownBySwarm = new Map<string, number>();
      for (const { key, swarm, cpuMs } of pool.keyStats()) {
        const before = cpuByKey.get(key);
        // A total that went down belongs to a key the pool forgot and met again.
        const grown = before === undefined || cpuMs < before ? cpuMs : cpuMs - before;
        seen.set(key, cpuMs);
        if (grown > 0) grownBySwarm.set(swarm, (grownBySwarm.get(swarm) ?? 0) + grown);
      }
      cpuByKey.clear();
      for (const [key, cpuMs] of seen) cpuByKey.set(key, cpuMs);
      for (const [swarm, grown] of grownBySwarm) labels.active(swarm, grown);
      // Ranked on what happened since the last scrape, before this CPU is counted, so it
      // lands on a series the ranking keeps.
      labels.rerank();
      for (const [swarm, grown] of grownBySwarm) this.inc({ swarm: labels.labelFor(swarm) }, grown / 1000);
    },
  });
  const calls = new OneLabelCounter(
    'sandpool_swarm_calls_total',
    `Calls answered for the swarm; ${which}.`,
    'swarm',
    registry,
  );
  const errors = new OneLabelCounter(
    'sandpool_swarm_errors_total',
    `Calls for the swarm that failed; ${which}.`,
    'swarm',
    registry,
  );
  const latency = new OneLabelHistogram(
    'sandpool_swarm_call_duration_seconds',
    `Time from call() to its answer in the pool; ${which}.`,
    'swarm',
    SWARM_LATENCY_BUCKETS,
    registry,
  );
  const labels = new SwarmLabels(limit, (swarm) => {
    cpu.remove({ swarm });
    for (const metric of [calls, errors, latency]) metric.remove(swarm);
  });
  return {
    observe(swarm, failed, seconds) {
      labels.active(swarm, 1);
      const label = labels.labelFor(swarm);
      calls.inc(label);
      if (failed) errors.inc(label);
      latency.observe(label, seconds);
    },
  };
}

/** Only for a pool with a database: a node without one has no store to lose. */
function storeMetrics(registry: Registry, store: StoreReport): void {
  statsGauge(
    registry,
    'sandpool_store_connected',
    "1 while the node is connected to the store's database, 0 while connecting or lost (it serves what it mirrored).",
    () => (store.status?.state === 'connected' ? 1 : 0),
  );
  new Counter({
    name: 'sandpool_store_lost_total',
    help: "Times the node lost the store's database (an outage once, however many reconnections it took).",
    registers: [registry],
    collect() {
      this.reset();
      this.inc(store.losses);
    },
  });
}

function reasons<Reason extends string>(all: Record<Reason, true>): readonly Reason[] {
  return Object.keys(all) as Reason[];
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
