import { Session } from 'node:inspector';
import { Worker } from 'node:worker_threads';
import { MEMORY_USAGE_SYMBOL } from '../../protocol/messages.js';

interface HeapInfo {
  used_heap_size: number;
  external_memory: number;
}

export interface MemoryReading {
  /** V8 heap bytes in use. */
  heap: number;
  /** ArrayBuffer and other memory outside the heap. */
  external: number;
}

/** How the coordinator reads a worker's memory without the worker's cooperation. */
export interface MemoryProbe {
  readonly kind: 'heap-statistics' | 'inspector';
  read(worker: Worker): Promise<MemoryReading>;
}

/**
 * `worker.getHeapStatistics()` where Node has it (24, recent 22): it answers from the
 * worker's own isolate, also while agent code spins in a synchronous loop.
 */
const heapStatistics: MemoryProbe = {
  kind: 'heap-statistics',
  async read(worker) {
    // Typed by hand: @types/node 20 does not declare it.
    const stats = await (worker as unknown as { getHeapStatistics(): Promise<HeapInfo> }).getHeapStatistics();
    return { heap: stats.used_heap_size, external: stats.external_memory };
  },
};

/**
 * Node 20 has no getHeapStatistics on a Worker; the main thread's inspector reaches each
 * worker through the NodeWorker domain, and Runtime.getHeapUsage is served by an interrupt,
 * so it too answers during a spin. External memory comes from the worker's own
 * `process.memoryUsage()` as captured at boot: agent code cannot replace that function, but
 * the figure is degraded (see the README).
 */
class InspectorProbe implements MemoryProbe {
  readonly kind = 'inspector' as const;
  private readonly session = new Session();
  private readonly sessions = new Map<number, string>();
  private readonly attachWaiters = new Map<number, () => void>();
  private readonly replies = new Map<number, { resolve: (value: unknown) => void; reject: (error: Error) => void }>();
  private nextId = 0;
  /** The last external figure per thread, and the threads whose figure is being read. */
  private readonly external = new Map<number, number>();
  private readonly externalPending = new Set<number>();
  private readonly enabled: Promise<void>;

  constructor() {
    this.session.connect();
    this.session.on('NodeWorker.attachedToWorker', ({ params }) => {
      const threadId = Number(params.workerInfo.workerId);
      this.sessions.set(threadId, params.sessionId);
      this.attachWaiters.get(threadId)?.();
      this.attachWaiters.delete(threadId);
    });
    this.session.on('NodeWorker.detachedFromWorker', ({ params }) => {
      for (const [threadId, sessionId] of this.sessions)
        if (sessionId === params.sessionId) this.sessions.delete(threadId);
    });
    this.session.on('NodeWorker.receivedMessageFromWorker', ({ params }) => {
      const message = JSON.parse(params.message) as { id?: number; result?: unknown; error?: { message: string } };
      const waiter = message.id === undefined ? undefined : this.replies.get(message.id);
      if (waiter === undefined || message.id === undefined) return;
      this.replies.delete(message.id);
      if (message.error !== undefined) waiter.reject(new Error(message.error.message));
      else waiter.resolve(message.result);
    });
    this.enabled = new Promise((resolve, reject) => {
      this.session.post('NodeWorker.enable', { waitForDebuggerOnStart: false }, (error) =>
        error ? reject(error) : resolve(),
      );
    });
  }

  async read(worker: Worker): Promise<MemoryReading> {
    const sessionId = await this.attached(worker.threadId);
    // The heap figure is served by an interrupt, also mid-spin; evaluating JS for the external
    // figure may wait until the agent yields, so it never holds the heap check back.
    if (!this.externalPending.has(worker.threadId)) {
      this.externalPending.add(worker.threadId);
      (
        this.send(sessionId, 'Runtime.evaluate', {
          expression: `globalThis[Symbol.for(${JSON.stringify(MEMORY_USAGE_SYMBOL)})]?.().arrayBuffers ?? 0`,
          returnByValue: true,
        }) as Promise<{ result?: { value?: unknown } }>
      )
        .then(({ result }) => {
          if (typeof result?.value === 'number') this.external.set(worker.threadId, result.value);
        })
        .catch(() => {})
        .finally(() => this.externalPending.delete(worker.threadId));
    }
    const usage = (await this.send(sessionId, 'Runtime.getHeapUsage', {})) as { usedSize: number };
    return { heap: usage.usedSize, external: this.external.get(worker.threadId) ?? 0 };
  }

  private async attached(threadId: number): Promise<string> {
    await this.enabled;
    const known = this.sessions.get(threadId);
    if (known !== undefined) return known;
    await new Promise<void>((resolve) => this.attachWaiters.set(threadId, resolve));
    return this.sessions.get(threadId) as string;
  }

  private send(sessionId: string, method: string, params: object): Promise<unknown> {
    const id = ++this.nextId;
    return new Promise((resolve, reject) => {
      this.replies.set(id, { resolve, reject });
      this.session.post('NodeWorker.sendMessageToWorker', {
        sessionId,
        message: JSON.stringify({ id, method, params }),
      });
    });
  }
}

let probe: MemoryProbe | null | undefined;

/**
 * The probe this Node offers, feature-detected once; null where neither works (a host under
 * the permission model without the inspector): then only V8's own limit bounds a worker.
 */
export function memoryProbe(): MemoryProbe | null {
  if (probe !== undefined) return probe;
  if (typeof (Worker.prototype as { getHeapStatistics?: unknown }).getHeapStatistics === 'function') {
    probe = heapStatistics;
    return probe;
  }
  try {
    probe = new InspectorProbe();
  } catch {
    probe = null;
  }
  return probe;
}
