/**
 * A token bucket: `rate` tokens a second, up to `burst` at once, refilled continuously. A
 * take of one token succeeds while one is left; a charge may leave the bucket in debt (bytes
 * counted after they moved), paid back before the next take succeeds.
 */
export class TokenBucket {
  private tokens: number;
  private refilledAt: number;

  constructor(
    private rate: number,
    private burst: number,
    private readonly now: () => number = performance.now.bind(performance),
  ) {
    this.tokens = burst;
    this.refilledAt = now();
  }

  /** Takes one token; false when there is none to take. */
  take(): boolean {
    this.refill();
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /** Whether tokens are left (none, or a debt, refuses what the bucket bounds). */
  get available(): boolean {
    this.refill();
    return this.tokens > 0;
  }

  /** Counts `n` tokens used, debt allowed. */
  charge(n: number): void {
    this.refill();
    this.tokens -= n;
  }

  /** Milliseconds until a token is left; 0 when one is. */
  waitMs(): number {
    this.refill();
    return this.tokens > 0 ? 0 : Math.ceil(((1 - this.tokens) / this.rate) * 1000);
  }

  /** New limits, from now on: what is left carries over, never above the new burst. */
  reset(rate: number, burst: number): void {
    this.refill();
    this.rate = rate;
    this.burst = burst;
    this.tokens = Math.min(this.tokens, burst);
  }

  private refill(): void {
    const now = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.refilledAt) / 1000) * this.rate);
    this.refilledAt = now;
  }
}
