/** A peak further back than this counts half as much: a burst raises the count, quiet lowers it. */
const HALF_LIFE_MS = 10_000;
/** How much one new cold start moves the boot-time estimate. */
const BOOT_WEIGHT = 0.2;
/** The window before any cold start was measured: about a worker's boot on a quiet machine. */
const FIRST_BOOT_MS = 100;
/**
 * A cold start counts for at most this: it runs to the agent loaded, and a tenant whose
 * top-level code takes seconds must not hold the pool at its ceiling of spares.
 */
const MAX_BOOT_SAMPLE_MS = 1_000;

/**
 * How many spares to keep booted: as many as the misses that came within one boot time of
 * each other lately, so a burst finds them booted when it comes again; at least one (from the
 * start, or from the first miss), so the next new key is fast; at most `spareWorkers`. The peak fades with a half-life of 10 s. A boot
 * time is the pool's own cold starts, averaged: on a loaded machine starts are slower, a
 * window holds more misses, and more spares are kept. A steady rate counts too: r misses a
 * second with boots of b seconds put about r·b of them in every window (Little's law).
 */
export class SpareDemand {
  /** When the latest misses came, oldest first, those older than a boot dropped: the newest `ceiling` at most. */
  private readonly window: number[] = [];
  private peak = 0;
  private peakAt: number;
  private bootMs: number | null = null;
  /** Whether one spare is kept now, whatever the misses: from the start, or from the first miss. */
  private keepsOne: boolean;

  constructor(
    readonly ceiling: number,
    private readonly clock: () => number = () => performance.now(),
    /** `'first-miss'`: no spare until a key could take one (a pool whose keys may never fit one boots none). */
    keepOneFrom: 'start' | 'first-miss' = 'start',
  ) {
    this.peakAt = clock();
    this.keepsOne = keepOneFrom === 'start';
  }

  /** A key that could take a spare needed a worker, whether or not one was there. */
  missed(): void {
    this.keepsOne = true;
    const now = this.clock();
    const span = this.bootMs ?? FIRST_BOOT_MS;
    this.window.push(now);
    if (this.window.length > this.ceiling) this.window.shift();
    while (this.window.length > 0 && now - (this.window[0] as number) > span) this.window.shift();
    this.peak = Math.max(this.decayedPeak(now), this.window.length);
    this.peakAt = now;
  }

  /** A cold start took this long, from its worker's spawn to its agent loaded. */
  booted(ms: number): void {
    if (!Number.isFinite(ms) || ms < 0) return;
    const sample = Math.min(ms, MAX_BOOT_SAMPLE_MS);
    this.bootMs = this.bootMs === null ? sample : this.bootMs + (sample - this.bootMs) * BOOT_WEIGHT;
  }

  target(): number {
    if (this.ceiling === 0 || !this.keepsOne) return 0;
    return Math.min(this.ceiling, Math.max(1, Math.ceil(this.decayedPeak(this.clock()))));
  }

  private decayedPeak(now: number): number {
    return this.peak * 2 ** (-(now - this.peakAt) / HALF_LIFE_MS);
  }
}
