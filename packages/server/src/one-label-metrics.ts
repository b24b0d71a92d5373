import type { Metric, Registry } from 'prom-client';

/*
 * Counters and histograms over one label, in a prom-client registry, written out as
 * prom-client writes its own. Every call records three counters and two histograms, so they
 * must be cheap: prom-client hashes and checks the labels of each record, and its
 * `Histogram` keeps its buckets in an object keyed by the float bounds, so each observation
 * also turns two floats into property names (several µs a call on a busy Node 20, the
 * largest part of the HTTP path's metrics). Here a series is found by its label's value and
 * a bucket is an array slot; the work of a scrape is done at the scrape. The registry reads
 * a metric only through name, help, type, aggregator and get().
 */

interface Series {
  /** Observations per bucket, not cumulative; the last slot is above every bound. */
  readonly counts: number[];
  sum: number;
  count: number;
}

/** One line of the exposition, as prom-client's own metrics hand it to the registry. */
interface Sample {
  value: number;
  labels: Record<string, string | number>;
  sharedLabels?: Record<string, string>;
  metricName?: string;
}

/**
 * What both kinds share: a series per value of the one label, registered as prom-client
 * metrics are, and removed or reset by label value.
 */
abstract class OneLabelMetric<S, T extends 'counter' | 'histogram'> {
  abstract readonly type: T;
  readonly aggregator = 'sum';
  protected readonly series = new Map<string, S>();

  constructor(
    readonly name: string,
    readonly help: string,
    protected readonly label: string,
    registry: Registry,
  ) {
    registry.registerMetric(this as unknown as Metric);
  }

  /** The series of one label value goes (it starts again at 0 if it comes back). */
  remove(labelValue: string): void {
    this.series.delete(labelValue);
  }

  /** For the registry's resetMetrics(). */
  reset(): void {
    this.series.clear();
  }

  async get(): Promise<{ name: string; help: string; type: T; aggregator: 'sum'; values: Sample[] }> {
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values: this.samples() };
  }

  protected abstract samples(): Sample[];
}

/** A monotonic count per value of one label. */
export class OneLabelCounter extends OneLabelMetric<number, 'counter'> {
  readonly type = 'counter';

  inc(labelValue: string): void {
    this.series.set(labelValue, (this.series.get(labelValue) ?? 0) + 1);
  }

  protected samples(): Sample[] {
    return [...this.series].map(([labelValue, value]) => ({ value, labels: { [this.label]: labelValue } }));
  }
}

/** A histogram per value of one label. */
export class OneLabelHistogram extends OneLabelMetric<Series, 'histogram'> {
  readonly type = 'histogram';

  constructor(
    name: string,
    help: string,
    label: string,
    private readonly bounds: readonly number[],
    registry: Registry,
  ) {
    super(name, help, label, registry);
  }

  observe(labelValue: string, value: number): void {
    let series = this.series.get(labelValue);
    if (series === undefined) {
      series = { counts: new Array<number>(this.bounds.length + 1).fill(0), sum: 0, count: 0 };
      this.series.set(labelValue, series);
    }
    let bucket = 0;
    while (bucket < this.bounds.length && value > (this.bounds[bucket] ?? 0)) bucket += 1;
    series.counts[bucket] = (series.counts[bucket] ?? 0) + 1;
    series.sum += value;
    series.count += 1;
  }

  protected samples(): Sample[] {
    const values: Sample[] = [];
    const bucket = `${this.name}_bucket`;
    for (const [labelValue, { counts, sum, count }] of this.series) {
      const sharedLabels = { [this.label]: labelValue };
      let cumulative = 0;
      for (const [index, le] of this.bounds.entries()) {
        cumulative += counts[index] ?? 0;
        values.push({ value: cumulative, labels: { le }, sharedLabels, metricName: bucket });
      }
      values.push({ value: count, labels: { le: '+Inf' }, sharedLabels, metricName: bucket });
      values.push({ value: sum, labels: {}, sharedLabels, metricName: `${this.name}_sum` });
      values.push({ value: count, labels: {}, sharedLabels, metricName: `${this.name}_count` });
    }
    return values;
  }
}
