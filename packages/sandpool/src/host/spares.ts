import type { AgentWorker, Isolation } from './agent-worker.js';

/**
 * Blank booted workers (no tenant code), each with the promise of its exit: threads, or
 * child processes when every key runs in one (`isolation: 'process'`).
 */
export class Spares {
  private readonly threads = new Map<AgentWorker, Promise<void>>();
  private closed = false;

  constructor(
    private readonly target: number,
    readonly isolation: Isolation,
    /** Boots a blank worker; a spare boots before its key is known, so with no per-key flags. */
    private readonly boot: () => AgentWorker,
  ) {}

  get size(): number {
    return this.threads.size;
  }

  fill(): void {
    while (!this.closed && this.threads.size < this.target) {
      const thread = this.boot();
      thread.setReferenced(false);
      this.threads.set(
        thread,
        new Promise((resolve) => {
          thread.owner = {
            // A spare has no key and sends nothing the pool needs; anything it sends is ignored.
            onMessage: () => {},
            onEnd: () => {
              this.threads.delete(thread);
              resolve();
            },
          };
        }),
      );
    }
  }

  /** The oldest spare, the most likely to have finished booting; refilled on a later tick. */
  take(): AgentWorker | null {
    for (const thread of this.threads.keys()) {
      this.threads.delete(thread);
      setImmediate(() => this.fill());
      return thread;
    }
    return null;
  }

  close(): Promise<void> {
    this.closed = true;
    const ended = [...this.threads.values()];
    for (const thread of this.threads.keys()) thread.terminate('closed');
    return Promise.all(ended).then(() => undefined);
  }
}
