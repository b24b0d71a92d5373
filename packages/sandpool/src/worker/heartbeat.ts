import type { MemoryBeat } from '../protocol/messages.js';

/** Growth (bytes) an idle worker keeps to itself: below it, a beat posts nothing and the beat stops. */
const QUIET_BYTES = 2 ** 20;

/**
 * The coordinator's view of this worker's memory where it cannot read it itself: a beat every
 * `busyMs` while calls come or run, every `idleMs` once a beat finds none came since the last
 * and none runs, as the coordinator's own probe reads busy and idle workers. A spin stops the
 * beat, which the coordinator watches for. Beating fast while idle cost every idle worker a
 * wake-up and a message 50 times a second: 300 idle workers kept 1.5 cores busy. Calls only
 * set a flag: a beat per message would cost the call path a syscall and a message.
 *
 * An idle beat that finds the memory where it was stops the beat: an idle worker then wakes
 * for nothing of its own. Memory grows only while code runs, and the coordinator sees the
 * thread run (its CPU, read off the worker) and asks for a beat (`requested`); a beat every
 * 2 s had kept 300 idle workers at 14 times the CPU of 300 bare ones on Node 20.
 */
export class Heartbeat {
  private timer: NodeJS.Timeout;
  /** The timer is armed: an idle beat that found nothing stops it, a call or a request starts it again. */
  private armed = true;
  /**
   * The delay its timer was made with. A beat at the same rate re-arms that timer: a new
   * Timeout per beat (an async resource each, on Node 20) was a third of the beat's cost, and
   * with calls spread over many keys every busy worker beats 50 times a second.
   */
  private timerMs: number;
  private fast = true;
  /** Calls came since the last beat (sync ones finish before any beat could see them run). */
  private called = false;
  private posted: MemoryBeat | null = null;

  constructor(
    private readonly post: (beat: MemoryBeat) => void,
    private readonly read: () => { heapUsed: number; arrayBuffers: number },
    private readonly busy: () => boolean,
    private readonly busyMs: number,
    private readonly idleMs: number,
  ) {
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

  /**
   * The coordinator saw this idle thread run and asks where its memory is: a beat now, posted
   * whatever it finds. No timer: if the thread goes on running, the coordinator asks again.
   */
  requested(): void {
    this.report();
  }

  private readonly beat = (): void => {
    // Scheduled first: a read that throws (memoryUsage with no fd left) must not end the beat.
    const wasFast = this.fast;
    this.fast = this.called || this.busy();
    this.called = false;
    const quiet = !this.fast && !wasFast;
    this.schedule(this.fast ? this.busyMs : this.idleMs);
    // The coordinator waits for no unrequested beat from an idle worker, so an idle one that
    // has not grown says nothing and stops beating until a call or a request.
    if (this.report(quiet) === null) {
      clearTimeout(this.timer);
      this.armed = false;
    }
  };

  /** Reads and posts the memory; `quiet`: only when it moved QUIET_BYTES since the last post. */
  private report(quiet = false): MemoryBeat | null {
    const usage = this.read();
    const beat: MemoryBeat = { t: 'memory', heap: usage.heapUsed, external: usage.arrayBuffers };
    const last = this.posted;
    if (quiet && last !== null && beat.heap - last.heap < QUIET_BYTES && beat.external - last.external < QUIET_BYTES)
      return null;
    this.posted = beat;
    this.post(beat);
    return beat;
  }

  private schedule(ms: number): void {
    if (ms === this.timerMs && this.armed) {
      this.timer.refresh();
      return;
    }
    clearTimeout(this.timer);
    this.armed = true;
    this.timerMs = ms;
    this.timer = setTimeout(this.beat, ms).unref();
  }
}
