import { Worker } from 'node:worker_threads';
import type { ExitReason } from '../errors.js';
import type { ResolvedPoolOptions } from '../options.js';
import type { FromWorker, OutputChunk, ToWorker } from '../protocol/messages.js';
import { LineSplitter, writeLabelled } from './output.js';

const ENTRY = new URL('../worker/entry.js', import.meta.url);

/** Why a worker ended: the pool's own reason when it terminated it, else what the thread did. */
export type ThreadEnd = ExitReason | RetireReason;
export type RetireReason = 'lru' | 'idle' | 'reload' | 'removed' | 'closed';

export interface ThreadOwner {
  onMessage(message: Exclude<FromWorker, OutputChunk>): void;
  onEnd(end: ThreadEnd, error: Error | null): void;
}

/**
 * One worker thread. It is born blank (a spare, or about to load), then owned by the cell of
 * one key; it only ever serves that key. It records why it ended so every caller sees the same reason.
 */
export class AgentThread {
  readonly worker: Worker;
  readonly threadId: number;
  owner: ThreadOwner | null = null;
  label = '(spare)';
  private terminatedFor: ThreadEnd | null = null;
  private failure: Error | null = null;
  private referenced = true;

  constructor(options: ResolvedPoolOptions) {
    this.worker = new Worker(ENTRY, {
      execArgv: [],
      env: { ...options.env },
      resourceLimits: options.resourceLimits,
      workerData: null,
    });
    this.threadId = this.worker.threadId;
    const listener = options.onOutput ?? writeLabelled;
    const output = {
      stdout: new LineSplitter('stdout', () => this.label, listener),
      stderr: new LineSplitter('stderr', () => this.label, listener),
    };
    this.worker.on('message', (message: FromWorker) => {
      try {
        if (message.t === 'out') output[message.stream].push(message.text);
        else this.owner?.onMessage(message);
      } catch (error) {
        // Agent code can post to its parent port too: a message that breaks the handler
        // ends that worker, never the host.
        this.failure ??= error instanceof Error ? error : new Error(String(error));
        this.terminate('crash');
      }
    });
    this.worker.on('error', (error: Error) => {
      this.failure ??= error;
    });
    this.worker.on('exit', () => {
      output.stdout.end();
      output.stderr.end();
      this.owner?.onEnd(this.endReason(), this.failure);
    });
  }

  // Named through Worker itself: @types/node 26 dropped TransferListItem, and this type is in the published .d.ts.
  post(message: ToWorker, transfer?: Parameters<Worker['postMessage']>[1]): void {
    this.worker.postMessage(message, transfer);
  }

  /** Busy workers keep the host alive; idle and spare ones never do. */
  setReferenced(referenced: boolean): void {
    if (referenced === this.referenced) return;
    this.referenced = referenced;
    if (referenced) this.worker.ref();
    else this.worker.unref();
  }

  terminate(reason: ThreadEnd): void {
    this.terminatedFor ??= reason;
    void this.worker.terminate();
  }

  get terminating(): boolean {
    return this.terminatedFor !== null;
  }

  private endReason(): ThreadEnd {
    if (this.failure !== null) {
      return (this.failure as { code?: unknown }).code === 'ERR_WORKER_OUT_OF_MEMORY' ? 'oom' : 'crash';
    }
    return this.terminatedFor ?? 'exit';
  }
}
