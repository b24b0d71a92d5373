import type { ThreadSettings } from './agent-worker.js';
import { AgentThread } from './thread.js';
import { typeScriptExecArgv } from './typescript.js';

/** Blank booted workers (no tenant code), each with the promise of its exit. */
export class Spares {
  private readonly threads = new Map<AgentThread, Promise<void>>();
  private closed = false;

  constructor(
    private readonly target: number,
    private readonly settings: ThreadSettings,
  ) {}

  get size(): number {
    return this.threads.size;
  }

  fill(): void {
    while (!this.closed && this.threads.size < this.target) {
      // A spare boots before its key is known: only keys that need no per-key flags can take one.
      const thread = new AgentThread(this.settings, typeScriptExecArgv());
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
  take(): AgentThread | null {
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
