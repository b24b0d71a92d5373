/**
 * One worker's share of the coordinator's thread for its host calls: bytes of arguments per
 * second, and milliseconds of the coordinator's own work per second (decoding arguments,
 * the capability's synchronous part, encoding its result). Tokens refill continuously, up
 * to one second's worth; a host call that finds too few waits for them. A tenant can then
 * keep the coordinator busy for at most its share, however many calls it keeps in flight.
 */
export interface HostRate {
  readonly bytesPerSecond: number;
  readonly msPerSecond: number;
}

export const HOST_RATE: HostRate = {
  // Sixteen 1 MB argument lists a second: decoding them took 1-5 ms each here.
  bytesPerSecond: 16 * 2 ** 20,
  // A tenth of the coordinator's thread per key.
  msPerSecond: 100,
};

export class HostBudget {
  private bytes: number;
  private ms: number;
  private refilledAt: number;

  constructor(
    private readonly rate: HostRate = HOST_RATE,
    private readonly now: () => number = performance.now.bind(performance),
  ) {
    this.bytes = rate.bytesPerSecond;
    this.ms = rate.msPerSecond;
    this.refilledAt = now();
  }

  /** Takes `bytes` if there are enough, and time is left; false when the call must wait. */
  take(bytes: number): boolean {
    this.refill();
    // A call larger than a second's worth runs once the bucket is full, or it would never run.
    const need = Math.min(bytes, this.rate.bytesPerSecond);
    if (this.bytes < need || this.ms <= 0) return false;
    this.bytes -= need;
    return true;
  }

  /** Coordinator time a host call took; it may leave the budget in debt, paid back before the next call. */
  spend(ms: number): void {
    this.ms -= ms;
  }

  /** Milliseconds until a call of `bytes` could run. */
  waitFor(bytes: number): number {
    this.refill();
    const need = Math.min(bytes, this.rate.bytesPerSecond);
    const forBytes = ((need - this.bytes) / this.rate.bytesPerSecond) * 1000;
    const forTime = ((1 - this.ms) / this.rate.msPerSecond) * 1000;
    return Math.max(1, Math.ceil(Math.max(forBytes, forTime, 0)));
  }

  private refill(): void {
    const now = this.now();
    const seconds = (now - this.refilledAt) / 1000;
    this.refilledAt = now;
    this.bytes = Math.min(this.rate.bytesPerSecond, this.bytes + seconds * this.rate.bytesPerSecond);
    this.ms = Math.min(this.rate.msPerSecond, this.ms + seconds * this.rate.msPerSecond);
  }
}
