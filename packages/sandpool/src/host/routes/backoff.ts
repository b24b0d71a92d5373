import type { SandpoolError } from '../../errors.js';

const FIRST_MS = 100;
const MAX_MS = 30_000;
/** Deaths under calls in a row before a key backs off; a single death just respawns. */
const DEATHS_BEFORE_BACKOFF = 3;

interface Entry {
  deaths: number;
  level: number;
  until: number;
  error: SandpoolError | null;
}

/**
 * Crash-loop protection per key: after a failed start (or repeated deaths) calls fail fast
 * with the error that caused it, for 100 ms doubling to 30 s. A success or `invalidate` resets it.
 */
export class Backoff {
  private readonly entries = new Map<string, Entry>();

  /** The error to fail fast with, or null when the key may start a worker. */
  blocked(key: string, now: number): SandpoolError | null {
    const entry = this.entries.get(key);
    if (entry === undefined || entry.error === null || now >= entry.until) return null;
    return entry.error;
  }

  loadFailed(key: string, error: SandpoolError, now: number): void {
    this.open(this.entry(key), error, now);
  }

  died(key: string, error: SandpoolError, now: number): void {
    const entry = this.entry(key);
    entry.deaths += 1;
    if (entry.deaths >= DEATHS_BEFORE_BACKOFF) this.open(entry, error, now);
  }

  reset(key: string): void {
    this.entries.delete(key);
  }

  resetWhere(matches: (key: string) => boolean): void {
    for (const key of this.entries.keys()) if (matches(key)) this.entries.delete(key);
  }

  /** False in the common case, so the hot path can skip the lookups. */
  get active(): boolean {
    return this.entries.size > 0;
  }

  private open(entry: Entry, error: SandpoolError, now: number): void {
    entry.level += 1;
    entry.until = now + Math.min(FIRST_MS * 2 ** (entry.level - 1), MAX_MS);
    entry.error = error;
  }

  private entry(key: string): Entry {
    let entry = this.entries.get(key);
    if (entry === undefined) {
      entry = { deaths: 0, level: 0, until: 0, error: null };
      this.entries.set(key, entry);
    }
    return entry;
  }
}
