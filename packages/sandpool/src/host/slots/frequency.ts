/**
 * TinyLFU's frequency estimate (Einziger, Friedman, Manes 2017): a count-min sketch of
 * 4-bit counters over every key asked for, resident or not, with every counter halved each
 * time `sampleSize` increments have been counted, so that popularity fades. It never
 * under-counts; collisions can only over-count a key, by little at this width.
 */
export class FrequencySketch {
  private readonly counters: Uint8Array;
  private readonly mask: number;
  private readonly sampleSize: number;
  private additions = 0;

  /** Sized for `capacity` resident keys, as Caffeine sizes its sketch to the cache's maximum. */
  constructor(capacity: number) {
    const width = 2 ** Math.ceil(Math.log2(Math.max(64, capacity * 16)));
    this.counters = new Uint8Array(width * DEPTH);
    this.mask = width - 1;
    this.sampleSize = Math.max(64, capacity * 10);
  }

  increment(hash: number): void {
    let grew = false;
    for (let row = 0; row < DEPTH; row++) {
      const at = this.index(hash, row);
      if ((this.counters[at] as number) < MAX_COUNT) {
        this.counters[at] = (this.counters[at] as number) + 1;
        grew = true;
      }
    }
    if (grew && ++this.additions >= this.sampleSize) this.age();
  }

  estimate(hash: number): number {
    let least = MAX_COUNT;
    for (let row = 0; row < DEPTH; row++) least = Math.min(least, this.counters[this.index(hash, row)] as number);
    return least;
  }

  private index(hash: number, row: number): number {
    // Double hashing: row i probes h1 + i·h2, h2 odd so the probes differ.
    const h2 = (Math.imul(hash, 0x9e3779b1) >>> 15) | 1;
    return row * (this.mask + 1) + ((hash + row * h2) & this.mask);
  }

  private age(): void {
    for (let at = 0; at < this.counters.length; at++) this.counters[at] = (this.counters[at] as number) >>> 1;
    this.additions = Math.floor(this.additions / 2);
  }
}

const DEPTH = 4;
const MAX_COUNT = 15;

/** FNV-1a over a key's text: the sketch's hash, computed once per cell. */
export function keyHash(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193);
  return hash >>> 0;
}
