import type { Isolation } from '../../types.js';
import type { AgentWorker } from '../workers/agent-worker.js';
import type { SpareDemand } from './spare-demand.js';

/** A spare process boots at the lowest priority: its start must not slow the keys that are busy. */
const BOOT_NICE = 19;
/** How often spares above what the miss rate asks for are ended. */
const TRIM_MS = 5_000;

/**
 * Booted workers with no tenant code and no key yet (blank, or strict with a folder of their
 * own: see Launcher.spareKind), each with the promise of its exit: threads, or child
 * processes when every key runs in one (`isolation: 'process'`). As many as `demand`
 * asks for: refilled when one is taken, trimmed while the misses fade. A spare process
 * boots at nice 19 (the CPU weight of nice 19 where it has a cgroup) where its priority can
 * be raised back when a key takes it (root, CAP_SYS_NICE, or a cgroup); elsewhere it boots at
 * normal priority. A spare thread's kernel id is known only once it runs, after most of its
 * boot, so threads boot at normal priority.
 */
export class Spares {
  private readonly threads = new Map<AgentWorker, Promise<void>>();
  /** Spares trimmed and not yet gone: no key may take one, and close() waits for them. */
  private readonly ending = new Set<Promise<void>>();
  private closed = false;
  /** Whether a spare process's priority can be raised back here, probed on the first one. */
  private raisable: boolean | null = null;
  private readonly trimTimer: NodeJS.Timeout | null;

  constructor(
    private readonly demand: SpareDemand,
    readonly isolation: Isolation,
    /** Boots a spare, before its key is known, so with no per-key flags; null: none can be made now. */
    private readonly boot: () => AgentWorker | null,
  ) {
    // With a ceiling of one the count never changes: nothing to trim.
    this.trimTimer = demand.ceiling > 1 ? setInterval(() => this.trim(), TRIM_MS).unref() : null;
  }

  get size(): number {
    return this.threads.size;
  }

  fill(): void {
    const target = this.demand.target();
    while (!this.closed && this.threads.size < target) {
      const thread = this.boot();
      if (thread === null) return;
      thread.setReferenced(false);
      if (thread.isolation === 'process') {
        this.raisable ??= thread.prioritize(1) && thread.prioritize(0);
        if (this.raisable) thread.prioritize(BOOT_NICE);
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

  /**
   * The oldest spare, the most likely to have finished booting. Every call counts as a miss
   * that wanted one, found or not. Found, it is replaced once its key has started (`refill`):
   * a boot beside that start would compete with it for the cores, and on a host process for
   * its event loop (a child's spawn, its cgroup's making). Not found, the spares are refilled
   * on a later tick.
   */
  take(): AgentWorker | null {
    this.demand.missed();
    for (const thread of this.threads.keys()) {
      this.threads.delete(thread);
      // Raised back before its key's code runs; one that cannot be raised serves no key.
      if (thread.isolation === 'process' && !thread.prioritize(0)) {
        thread.terminate({ retired: 'closed' });
        break;
      }
      return thread;
    }
    this.refill();
    return null;
  }

  /** Boots what is missing on a later tick: after what this one sends has left. */
  refill(): void {
    setImmediate(() => this.fill());
  }

  /** A cold start of this kind took this long: what a spare's boot is expected to take. */
  booted(ms: number): void {
    this.demand.booted(ms);
  }

  /** Ends the newest spares above what the miss rate asks for now; they are no longer takeable. */
  trim(): void {
    const extra = this.threads.size - this.demand.target();
    if (extra <= 0) return;
    for (const [thread, ended] of [...this.threads].slice(-extra)) {
      this.threads.delete(thread);
      this.ending.add(ended);
      void ended.then(() => this.ending.delete(ended));
      thread.terminate({ retired: 'closed' });
    }
  }

  close(): Promise<void> {
    this.closed = true;
    if (this.trimTimer !== null) clearInterval(this.trimTimer);
    const ended = [...this.threads.values(), ...this.ending];
    for (const thread of this.threads.keys()) thread.terminate({ retired: 'closed' });
    return Promise.all(ended).then(() => undefined);
  }
}
