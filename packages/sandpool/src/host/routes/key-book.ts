import type { KeyStats } from '../../types.js';

/** Latencies kept per key: enough for a p99 that moves with the load, bounded per key. */
const LATENCY_WINDOW = 256;
/** Keys whose totals are kept at most: the first seen are forgotten first. */
const MAX_KEYS = 10_000;

export interface KeyTotals {
  calls: number;
  errors: number;
  cpuMs: number;
  /** Output characters dropped (see KeyStats.outputDropped). */
  outputDropped: number;
  latencies: Float64Array;
  next: number;
}

/**
 * Totals per key, counted where a call settles and where CPU is sampled; they outlive the
 * key's routes and workers, bounded to MAX_KEYS keys.
 */
export class KeyBook {
  private readonly totals = new Map<string, KeyTotals>();

  settled(totals: KeyTotals, failed: boolean, ms: number): void {
    totals.calls += 1;
    if (failed) totals.errors += 1;
    totals.latencies[totals.next % LATENCY_WINDOW] = ms;
    totals.next += 1;
  }

  cpu(key: string, ms: number): void {
    this.of(key).cpuMs += ms;
  }

  outputDropped(key: string, chars: number): void {
    this.of(key).outputDropped += chars;
  }

  keys(): IterableIterator<string> {
    return this.totals.keys();
  }

  read(key: string): Pick<KeyStats, 'calls' | 'errors' | 'cpuMs' | 'latency' | 'outputDropped'> {
    const totals = this.totals.get(key);
    if (totals === undefined) return { calls: 0, errors: 0, cpuMs: 0, latency: null, outputDropped: 0 };
    const count = Math.min(totals.next, LATENCY_WINDOW);
    let latency: KeyStats['latency'] = null;
    if (count > 0) {
      const sorted = totals.latencies.slice(0, count).sort();
      const at = (q: number): number => round(sorted[Math.min(count - 1, Math.floor(q * count))] as number);
      latency = { p50: at(0.5), p99: at(0.99), max: round(sorted[count - 1] as number) };
    }
    const { calls, errors, outputDropped } = totals;
    return { calls, errors, cpuMs: round(totals.cpuMs), latency, outputDropped };
  }

  of(key: string): KeyTotals {
    const known = this.totals.get(key);
    if (known !== undefined) return known;
    const totals: KeyTotals = {
      calls: 0,
      errors: 0,
      cpuMs: 0,
      outputDropped: 0,
      latencies: new Float64Array(LATENCY_WINDOW),
      next: 0,
    };
    this.totals.set(key, totals);
    if (this.totals.size > MAX_KEYS) {
      // Reordering on every call would cost the hot path more than an early-seen key is worth.
      const oldest = this.totals.keys().next().value;
      if (oldest !== undefined) this.totals.delete(oldest);
    }
    return totals;
  }
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
