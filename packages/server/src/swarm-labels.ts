/**
 * The label a swarm's series carry when the swarm has no place of its own. A swarm name
 * starts with a letter or digit, so no swarm can be called this.
 */
export const OTHER_SWARMS = '_other';

/** Swarms outside the labelled set tracked for the next ranking at most: a flood of names costs no more. */
const MAX_CANDIDATES = 1_000;
/** An incumbent counts double when ranked: a newcomer must be clearly busier to take its place. */
const INCUMBENT_WEIGHT = 2;

/**
 * Which swarms get a label of their own on per-swarm series: at most `capacity`, chosen
 * at each scrape as the most active since the previous one (CPU ms plus calls), the rest
 * summed under OTHER_SWARMS. A swarm that loses its place has its series removed, so each
 * series stays monotonic and the scrape stays bounded however many swarms callers name.
 */
export class SwarmLabels {
  private readonly labelled = new Set<string>();
  private activity = new Map<string, number>();

  constructor(
    private readonly capacity: number,
    /** Told of each swarm that lost its place, to remove its series. */
    private readonly dropped: (swarm: string) => void,
  ) {}

  /** The label for a swarm's next increment; a swarm is given a place while places are free. */
  labelFor(swarm: string): string {
    if (this.labelled.has(swarm)) return swarm;
    if (this.labelled.size < this.capacity) {
      this.labelled.add(swarm);
      return swarm;
    }
    return OTHER_SWARMS;
  }

  /** Counts toward the swarm's rank at the next scrape. */
  active(swarm: string, amount: number): void {
    const known = this.activity.get(swarm);
    if (known !== undefined) this.activity.set(swarm, known + amount);
    else if (this.labelled.has(swarm) || this.activity.size < this.capacity + MAX_CANDIDATES) {
      this.activity.set(swarm, amount);
    }
  }

  /** At a scrape: the busiest since the last one keep or take the places; activity starts again. */
  rerank(): void {
    const score = (swarm: string): number =>
      (this.activity.get(swarm) ?? 0) * (this.labelled.has(swarm) ? INCUMBENT_WEIGHT : 1);
    const ranked = [...new Set([...this.labelled, ...this.activity.keys()])].sort((a, b) => {
      const difference = score(b) - score(a);
      if (difference !== 0) return difference;
      // Ties keep the incumbents, then go by name so a rank never depends on map order.
      const incumbency = Number(this.labelled.has(b)) - Number(this.labelled.has(a));
      return incumbency !== 0 ? incumbency : a < b ? -1 : a > b ? 1 : 0;
    });
    const keep = new Set(ranked.slice(0, this.capacity));
    for (const swarm of [...this.labelled]) {
      if (keep.has(swarm)) continue;
      this.labelled.delete(swarm);
      this.dropped(swarm);
    }
    for (const swarm of keep) this.labelled.add(swarm);
    this.activity = new Map();
  }
}
