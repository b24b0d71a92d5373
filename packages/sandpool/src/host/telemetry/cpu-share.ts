/**
 * The CPU of one worker's calls, for the calls someone observes. The worker's CPU is read
 * (its thread's, from the kernel, through the CPU governor's open file) only when replies
 * arrive, and shared evenly among the calls running since the reading before: `share` is
 * the CPU one running call has had since the worker started, and a call's CPU is its growth
 * from the call's start to its end. Calls of one worker that run together each get their
 * part, never the whole, so the calls' CPU adds up to the worker's.
 */
export class CpuShare {
  /** Nanoseconds per running call, summed since the worker started. */
  private share = 0;
  /** The worker's CPU (ns) at the last reading; NaN when none holds (not read yet, or readings lapsed). */
  private at = Number.NaN;
  /** Set while a batch of replies settles: the reading made for it holds for each of them. */
  private fresh = false;

  constructor(
    /** The worker's CPU in nanoseconds now, or NaN where it cannot be read. */
    private readonly read: () => number,
  ) {}

  /**
   * A call starts on the worker, beside `running` others: its share counts from here. An idle
   * worker is read first, so the CPU it used between calls is no call's.
   */
  start(running: number): number {
    if (running === 0 || Number.isNaN(this.at)) this.at = this.read();
    return this.share;
  }

  /** Replies arrive while `running` calls run: the CPU since the last reading is theirs, evenly. */
  replies(running: number): void {
    this.advance(running);
    this.fresh = true;
  }

  /** The replies have settled their calls. */
  settled(): void {
    this.fresh = false;
  }

  /** Nobody observes the worker's calls now: the next observed one starts from a new reading. */
  lapse(): void {
    this.at = Number.NaN;
  }

  /** The share now, for a call ending among `running` (itself included); read unless a reply just was. */
  now(running: number): number {
    if (!this.fresh) this.advance(running);
    return this.share;
  }

  private advance(running: number): void {
    if (Number.isNaN(this.at)) return;
    const now = this.read();
    if (Number.isNaN(now)) return;
    if (running > 0 && now > this.at) this.share += (now - this.at) / running;
    this.at = now;
  }
}
