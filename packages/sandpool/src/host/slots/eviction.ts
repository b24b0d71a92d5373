import { FrequencySketch } from './frequency.js';

/** What an eviction policy knows of an idle worker it may choose. */
export interface Evictable {
  /** Its key's hash (frequency.ts keyHash). */
  readonly keyHash: number;
  /** Use clock tick of its last call: smaller is less recent. */
  readonly lastUsed: number;
}

/**
 * Which idle worker makes room: told of every use, it picks a victim among the candidates
 * the scheduler allows (idle, not a reload candidate).
 */
export interface EvictionPolicy {
  /** The key was just asked for. */
  touch(keyHash: number): void;
  victim<T extends Evictable>(candidates: Iterable<T>): T | null;
}

export type EvictionName = 'lru' | 'tinylfu';

/** The least recently used. */
export function lru(): EvictionPolicy {
  return {
    touch() {},
    victim(candidates) {
      return least(candidates, () => 0);
    },
  };
}

/**
 * TinyLFU: the one whose key was asked for least often lately (an aging count-min sketch of
 * every key asked for, resident or not), the least recently used among equals, so a key
 * asked for once does not push out one asked for every second. Without W-TinyLFU's window:
 * many calls run at once here, so dozens of new keys become idle between two evictions, and
 * a window of the newest few protected them as if recent.
 */
export function tinyLfu(capacity: number): EvictionPolicy {
  const sketch = new FrequencySketch(capacity);
  return {
    touch(keyHash) {
      sketch.increment(keyHash);
    },
    victim(candidates) {
      return least(candidates, (entry) => sketch.estimate(entry.keyHash));
    },
  };
}

export function evictionPolicy(name: EvictionName, capacity: number): EvictionPolicy {
  return name === 'tinylfu' ? tinyLfu(capacity) : lru();
}

/** The candidate with the smallest count, the least recently used among equals. */
function least<T extends Evictable>(candidates: Iterable<T>, count: (entry: T) => number): T | null {
  let victim: T | null = null;
  let victimCount = 0;
  for (const entry of candidates) {
    const entryCount = count(entry);
    if (
      victim === null ||
      entryCount < victimCount ||
      (entryCount === victimCount && entry.lastUsed < victim.lastUsed)
    ) {
      victim = entry;
      victimCount = entryCount;
    }
  }
  return victim;
}
