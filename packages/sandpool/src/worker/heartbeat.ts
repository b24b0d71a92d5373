import type { MemoryBeat } from '../protocol/messages.js';

/**
 * The coordinator's view of this worker's memory where it cannot read it itself: a beat every
 * `busyMs` while calls run, every `idleMs` while none does, as the coordinator's own probe
 * reads busy and idle workers. A spin stops the beat, which the coordinator watches for. Beating
 * fast while idle would cost every idle worker a wake-up and a message 50 times a second:
 * 300 idle workers kept 1.5 cores busy.
 */
export class Heartbeat {
  private timer: NodeJS.Timeout | null = null;
  private fast = true;

  constructor(
    private readonly post: (beat: MemoryBeat) => void,
    private readonly read: () => { heapUsed: number; arrayBuffers: number },
    private readonly busy: () => boolean,
    private readonly busyMs: number,
    private readonly idleMs: number,
  ) {
    this.schedule();
  }

  /** Calls arrived: an idle worker beats now, then at the busy rate. */
  quicken(): void {
    if (this.fast || this.timer === null) return;
    clearTimeout(this.timer);
    this.beat();
  }

  private readonly beat = (): void => {
    const usage = this.read();
    this.post({ t: 'memory', heap: usage.heapUsed, external: usage.arrayBuffers });
    this.schedule();
  };

  private schedule(): void {
    this.fast = this.busy();
    this.timer = setTimeout(this.beat, this.fast ? this.busyMs : this.idleMs);
    this.timer.unref();
  }
}
