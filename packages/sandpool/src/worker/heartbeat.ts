import type { MemoryBeat } from '../protocol/messages.js';

/** Growth (bytes) an idle worker keeps to itself: below it, a beat posts nothing and the next comes later. */
const QUIET_BYTES = 2 ** 20;
/** The longest an idle worker goes between beats while its memory stays put. */
const QUIET_MS = 2_000;

/**
 * The coordinator's view of this worker's memory where it cannot read it itself: a beat every
 * `busyMs` while calls come or run, every `idleMs` once a beat finds none came since the last
 * and none runs, as the coordinator's own probe reads busy and idle workers. A spin stops the
 * beat, which the coordinator watches for. Beating fast while idle cost every idle worker a
 * wake-up and a message 50 times a second: 300 idle workers kept 1.5 cores busy. Calls only
 * set a flag: a beat per message would cost the call path a syscall and a message.
 */
export class Heartbeat {
  private timer: NodeJS.Timeout;
  /**
   * The delay its timer was made with. A beat at the same rate re-arms that timer: a new
   * Timeout per beat (an async resource each, on Node 20) was a third of the beat's cost, and
   * with calls spread over many keys every busy worker beats 50 times a second.
   */
  private timerMs: number;
  private fast = true;
  /** Calls came since the last beat (sync ones finish before any beat could see them run). */
  private called = false;
  /** The wait before the next idle beat: doubles while the memory stays within QUIET_BYTES. */
  private idleWait: number;
  private posted: MemoryBeat | null = null;

  constructor(
    private readonly post: (beat: MemoryBeat) => void,
    private readonly read: () => { heapUsed: number; arrayBuffers: number },
    private readonly busy: () => boolean,
    private readonly busyMs: number,
    private readonly idleMs: number,
  ) {
    this.idleWait = idleMs;
    this.timerMs = busyMs;
    this.timer = setTimeout(this.beat, busyMs).unref();
  }

  /** Calls arrived: a slow beat is brought forward to the busy rate. */
  quicken(): void {
    this.called = true;
    if (this.fast) return;
    this.fast = true;
    this.schedule(this.busyMs);
  }

  private readonly beat = (): void => {
    // Scheduled first: a read that throws (memoryUsage with no fd left) must not end the beat.
    const wasFast = this.fast;
    this.fast = this.called || this.busy();
    this.called = false;
    const quiet = !this.fast && !wasFast;
    if (!quiet) this.idleWait = this.idleMs;
    this.schedule(this.fast ? this.busyMs : this.idleWait);
    const usage = this.read();
    const beat: MemoryBeat = { t: 'memory', heap: usage.heapUsed, external: usage.arrayBuffers };
    // The coordinator waits for no beat from an idle worker, so an idle one that has not grown
    // says nothing and beats less often: 300 idle workers beating 4 times a second cost a core's tenth.
    const last = this.posted;
    if (quiet && last !== null && beat.heap - last.heap < QUIET_BYTES && beat.external - last.external < QUIET_BYTES) {
      this.idleWait = Math.min(this.idleWait * 2, QUIET_MS);
      return;
    }
    this.idleWait = this.idleMs;
    this.posted = beat;
    this.post(beat);
  };

  private schedule(ms: number): void {
    if (ms === this.timerMs) {
      this.timer.refresh();
      return;
    }
    clearTimeout(this.timer);
    this.timerMs = ms;
    this.timer = setTimeout(this.beat, ms).unref();
  }
}
