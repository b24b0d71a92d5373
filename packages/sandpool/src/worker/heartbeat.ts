import type { MemoryBeat } from '../protocol/messages.js';

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
  private fast = true;
  /** Calls came since the last beat (sync ones finish before any beat could see them run). */
  private called = false;

  constructor(
    private readonly post: (beat: MemoryBeat) => void,
    private readonly read: () => { heapUsed: number; arrayBuffers: number },
    private readonly busy: () => boolean,
    private readonly busyMs: number,
    private readonly idleMs: number,
  ) {
    this.timer = this.schedule(busyMs);
  }

  /** Calls arrived: a slow beat is brought forward to the busy rate. */
  quicken(): void {
    this.called = true;
    if (this.fast) return;
    this.fast = true;
    clearTimeout(this.timer);
    this.timer = this.schedule(this.busyMs);
  }

  private readonly beat = (): void => {
    // Scheduled first: a read that throws (memoryUsage with no fd left) must not end the beat.
    this.fast = this.called || this.busy();
    this.called = false;
    this.timer = this.schedule(this.fast ? this.busyMs : this.idleMs);
    const usage = this.read();
    this.post({ t: 'memory', heap: usage.heapUsed, external: usage.arrayBuffers });
  };

  private schedule(ms: number): NodeJS.Timeout {
    return setTimeout(this.beat, ms).unref();
  }
}
