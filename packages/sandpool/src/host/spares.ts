import type { AgentWorker, Isolation } from './agent-worker.js';
import { probeRaise, reniceProcess } from './cpu.js';

/** A spare process boots at the lowest priority: its start must not slow the keys that are busy. */
const BOOT_NICE = 19;

/**
 * Blank booted workers (no tenant code), each with the promise of its exit: threads, or
 * child processes when every key runs in one (`isolation: 'process'`). A spare process
 * boots at nice 19 where its priority can be raised back when a key takes it (root, or
 * CAP_SYS_NICE); elsewhere it boots at normal priority. A spare thread's kernel id is
 * known only once it runs, after most of its boot, so threads boot at normal priority.
 */
export class Spares {
  private readonly threads = new Map<AgentWorker, Promise<void>>();
  private closed = false;
  /** Whether a spare process's priority can be raised back here, probed on the first one. */
  private raisable: boolean | null = null;

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
      // No pid (a spawn that failed) must never reach setpriority: 0 there means the host.
      const pid = thread.isolation === 'process' ? thread.threadId : 0;
      if (pid > 0) {
        this.raisable ??= probeRaise(pid);
        if (this.raisable) reniceProcess(pid, BOOT_NICE);
      }
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
      // Raised back before its key's code runs; one that cannot be raised serves no key.
      if (thread.isolation === 'process' && thread.threadId > 0 && !reniceProcess(thread.threadId, 0)) {
        thread.terminate('closed');
        return null;
      }
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
