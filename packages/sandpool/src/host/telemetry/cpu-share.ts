/**
 * The CPU of one worker's calls, for the calls someone observes. The worker's CPU is read
 * (its thread's, from the kernel, through the CPU governor's open file) only when replies
 * arrive, and shared evenly among the calls running since the reading before: `share` is
 * the CPU one running call has had since the worker started, and a call's CPU is its growth
 * from the call's start to its end. Calls of one worker that run together each get their
 * part, never the whole, so the calls' CPU adds up to the worker's.
 *
 * A reading costs a system call (some 2 µs of the main thread's time), so one serves as long
 * as it can: every reply of a batch shares it, so do batches that follow it closely while
 * calls go on running (see replies), and a call that starts on a worker idle since a reading
 * at most REUSE_MS old starts from that one (a caller answering a reply with its next call,
 * in the same tick, costs one reading per call, not two; what the worker ran in that gap
 * counts as the call's).
 */
export class CpuShare {
  /** Nanoseconds per running call, summed since the worker started. */
  private share = 0;
  /** The worker's CPU (ns) at the last reading; NaN when none holds (not read yet, or readings lapsed). */
  private at = Number.NaN;
  /** Set while a batch of replies settles: the reading made for it holds for each of them. */
  private fresh = false;
  /** performance.now() at the last reading. */
  private readAt = Number.NEGATIVE_INFINITY;

  constructor(
    /** The worker's CPU in nanoseconds now, or NaN where it cannot be read. */
    private readonly read: () => number,
    /** performance.now(), or a test's clock. */
    private readonly clock: () => number = () => performance.now(),
  ) {}

  /**
   * A call starts on the worker at `now` (performance.now()), beside `running` others: its
   * share counts from here. An idle worker is read first, unless its last reading is recent,
   * so the CPU it used between calls is no call's.
   */
  start(running: number, now: number): number {
    if (Number.isNaN(this.at) || (running === 0 && now - this.readAt > REUSE_MS)) {
      this.at = this.read();
      this.readAt = now;
    }
    return this.share;
  }

  /**
   * `settling` replies arrive while `running` calls run: the CPU since the last reading is
   * theirs, evenly. While calls go on running after these (a pipelined caller's replies come
   * in batches some 10 to 40 µs apart), a reading at most BATCH_MS old serves these too: the
   * CPU since then goes to the calls running at the next reading, which a call that ends the
   * worker's run always makes.
   */
  replies(running: number, settling: number): void {
    if (running <= settling || this.clock() - this.readAt > BATCH_MS) this.advance(running);
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
    const ns = this.read();
    if (Number.isNaN(ns)) return;
    if (running > 0 && ns > this.at) this.share += (ns - this.at) / running;
    this.at = ns;
    this.readAt = this.clock();
  }
}

/** How old a reading a call starting on an idle worker may start from: the worker's CPU in that gap is the call's. */
const REUSE_MS = 1;
/** How old a reading replies may share while calls go on running: the CPU in it moves among calls running together. */
const BATCH_MS = 0.1;
