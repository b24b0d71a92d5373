import { build, type Histogram } from 'hdr-histogram-js';

/**
 * Latencies in nanoseconds inside, milliseconds or microseconds outside. Nanoseconds keep
 * three significant digits for 20 µs round trips as well as for 100 ms queueing stalls.
 */
export class Latency {
  private readonly histogram: Histogram = build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: 600e9,
    numberOfSignificantValueDigits: 3,
    useWebAssembly: false,
  });
  private sumNs = 0;

  recordMs(ms: number): void {
    const ns = Math.max(1, Math.round(ms * 1e6));
    this.histogram.recordValue(ns);
    this.sumNs += ns;
  }

  get count(): number {
    return this.histogram.totalCount;
  }

  percentileMs(percentile: number): number {
    return this.count === 0 ? Number.NaN : this.histogram.getValueAtPercentile(percentile) / 1e6;
  }

  get meanMs(): number {
    return this.count === 0 ? Number.NaN : this.sumNs / this.count / 1e6;
  }

  get maxMs(): number {
    return this.count === 0 ? Number.NaN : this.histogram.maxValue / 1e6;
  }

  summaryMs(): LatencySummary {
    return {
      count: this.count,
      mean: round(this.meanMs),
      p50: round(this.percentileMs(50)),
      p90: round(this.percentileMs(90)),
      p99: round(this.percentileMs(99)),
      p999: round(this.percentileMs(99.9)),
      max: round(this.maxMs),
    };
  }

  reset(): void {
    this.histogram.reset();
    this.sumNs = 0;
  }
}

/** Milliseconds, four significant digits: enough for a results file, small in a diff. */
export type LatencySummary = {
  count: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
};

export function round(value: number, digits = 4): number {
  if (!Number.isFinite(value) || value === 0) return value;
  return Number(value.toPrecision(digits));
}
