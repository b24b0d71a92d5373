import { MessageChannel, type MessagePort, Worker } from 'node:worker_threads';
import type { ExitReason } from '../errors.js';
import type { OutputListener } from '../options.js';
import { checkFromWorker } from '../protocol/checks.js';
import type { FromWorker, OutputChunk, ToWorker, WorkerBoot } from '../protocol/messages.js';
import type { MemoryProbe, MemoryReading } from './memory-probe.js';
import { LineSplitter } from './output.js';

const ENTRY = new URL('../worker/entry.js', import.meta.url);

/** Why a worker ended: the pool's own reason when it terminated it, else what the thread did. */
export type ThreadEnd = ExitReason | RetireReason;
/** `cpu`: it burned CPU with no call running, or its priority, lowered, could not be raised back. */
export type RetireReason = 'lru' | 'idle' | 'reload' | 'removed' | 'closed' | 'cpu';

export type WorkerMessage = Exclude<FromWorker, OutputChunk>;

export interface ThreadOwner {
  onMessage(message: WorkerMessage): void;
  onEnd(end: ThreadEnd, error: Error | null): void;
  /** The worker broke the protocol; the owner ends it (with `protocol`), or it ends itself. */
  onViolation?(): void;
}

export interface ThreadSettings {
  readonly env: Readonly<Record<string, string>>;
  readonly resourceLimits: NonNullable<ConstructorParameters<typeof Worker>[1]>['resourceLimits'];
  readonly output: OutputListener;
  /** Output characters lost: dropped by the worker while its window was full, or by a lagging writer. */
  readonly onOutputDropped: (chars: number) => void;
}

/**
 * One worker thread and its private channel. It is born blank (a spare, or about to load),
 * then owned by the cell of one key; it only ever serves that key. Everything the worker
 * sends is checked before its owner sees it; a message that fails ends the worker with
 * `protocol`. It records why it ended so every caller sees the same reason.
 */
export class AgentThread {
  readonly threadId: number;
  owner: ThreadOwner | null = null;
  label = '(spare)';
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private readonly lines: Record<OutputChunk['stream'], LineSplitter>;
  private terminatedFor: ThreadEnd | null = null;
  private failure: Error | null = null;
  private referenced = true;
  private unacknowledged = 0;

  constructor(
    private readonly settings: ThreadSettings,
    /** Node flags for this worker: its permission model, type stripping. */
    execArgv: readonly string[],
  ) {
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    this.worker = new Worker(ENTRY, {
      execArgv: [...execArgv],
      env: { ...settings.env },
      resourceLimits: settings.resourceLimits,
      workerData: { port: port2 } satisfies WorkerBoot,
      transferList: [port2],
    });
    this.threadId = this.worker.threadId;
    this.lines = {
      stdout: new LineSplitter('stdout', () => this.label, settings.output),
      stderr: new LineSplitter('stderr', () => this.label, settings.output),
    };
    port1.on('message', (raw: unknown) => this.receive(raw));
    port1.on('messageerror', () => this.violate('a message that cannot be deserialized'));
    // The worker's own ref/unref decides whether the host stays alive, not this port.
    port1.unref();
    this.worker.on('error', (error: Error) => {
      this.failure ??= error;
    });
    this.worker.on('exit', () => {
      this.port.close();
      this.lines.stdout.end();
      this.lines.stderr.end();
      this.owner?.onEnd(this.endReason(), this.failure);
    });
  }

  post(message: ToWorker, transfer?: ArrayBuffer[]): void {
    this.port.postMessage(message, transfer);
  }

  /** Busy workers keep the host alive; idle and spare ones never do. */
  setReferenced(referenced: boolean): void {
    if (referenced === this.referenced) return;
    this.referenced = referenced;
    if (referenced) this.worker.ref();
    else this.worker.unref();
  }

  /** The worker's memory, read without its cooperation (see memory-probe.ts). */
  readMemory(probe: MemoryProbe): Promise<MemoryReading> {
    return probe.read(this.worker);
  }

  /** Ends the worker for a reason of the coordinator's, with the error its calls carry as cause. */
  stop(reason: ThreadEnd, cause: Error): void {
    if (this.terminatedFor !== null) return;
    this.failure ??= cause;
    this.terminate(reason);
  }

  terminate(reason: ThreadEnd): void {
    this.terminatedFor ??= reason;
    void this.worker.terminate();
  }

  get terminating(): boolean {
    return this.terminatedFor !== null;
  }

  /** Ends the worker for a message the protocol does not allow; its calls fail with `protocol`. */
  violate(problem: string): void {
    if (this.terminatedFor !== null) return;
    this.failure ??= new Error(problem);
    this.owner?.onViolation?.();
    this.terminate('protocol');
  }

  private receive(raw: unknown): void {
    // A worker being terminated may still deliver what it sent: none of it is wanted now.
    if (this.terminatedFor !== null) return;
    const checked = checkFromWorker(raw);
    if (!checked.ok) return this.violate(checked.problem);
    const { message } = checked;
    if (message.t === 'out') return this.print(message);
    try {
      this.owner?.onMessage(message);
    } catch (error) {
      // Checked messages should never break a handler; if one does, only this worker pays.
      this.violate(error instanceof Error ? error.message : String(error));
    }
  }

  private print(chunk: OutputChunk): void {
    if (chunk.dropped > 0) this.settings.onOutputDropped(chunk.dropped);
    if (chunk.text !== '') this.lines[chunk.stream].push(chunk.text);
    // One acknowledgement per turn of the event loop, not per chunk.
    if (this.unacknowledged === 0) setImmediate(this.acknowledge);
    this.unacknowledged += chunk.text.length;
  }

  private readonly acknowledge = (): void => {
    const bytes = this.unacknowledged;
    this.unacknowledged = 0;
    if (bytes > 0 && this.terminatedFor === null) this.post({ t: 'out-ack', bytes });
  };

  private endReason(): ThreadEnd {
    if (this.terminatedFor !== null) return this.terminatedFor;
    if (this.failure !== null) {
      return (this.failure as { code?: unknown }).code === 'ERR_WORKER_OUT_OF_MEMORY' ? 'oom' : 'crash';
    }
    return 'exit';
  }
}
