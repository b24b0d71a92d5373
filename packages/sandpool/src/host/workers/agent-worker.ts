import type { Worker } from 'node:worker_threads';
import type { ExitReason } from '../../errors.js';
import type { ResolvedKey } from '../../key.js';
import type { OutputListener } from '../../options.js';
import { checkFromWorker } from '../../protocol/checks.js';
import type { FromWorker, OutputChunk, ToWorker } from '../../protocol/messages.js';
import type { EvictReason, Isolation, KeyStats } from '../../types.js';
import type { MemoryProbe, MemoryReading } from './memory-probe.js';
import { LineSplitter, OutputAllowance } from './output.js';
import type { KeyAccess } from './sandbox/view.js';

/** Why the pool retires a worker (the public EvictReason). */
export type RetireReason = EvictReason;
/**
 * How a worker ended: retired by the pool, or died (it crashed or exited, or the pool killed
 * it for a limit or the protocol). Tagged, because `cpu` names both a retirement (CPU burned
 * with no call) and a death (cpuTimeoutMs).
 */
export type ThreadEnd = { readonly retired: RetireReason } | { readonly died: ExitReason };

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
  /** Output characters of a key lost: dropped by the worker while its window was full, past its output budget, or by a lagging writer. */
  readonly onOutputDropped: (chars: number, key: string) => void;
}

/** What a worker's output is labelled with before it has a key. */
export const SPARE_LABEL = '(spare)';

/**
 * One worker, thread or process, born blank (a spare, or about to load), then owned by the
 * cell of one key; it only ever serves that key. Everything it sends is checked before its
 * owner sees it; a message that fails ends it with `protocol`. It records why it ended so
 * every caller sees the same reason. Subclasses own the transport and how it is stopped.
 */
export abstract class AgentWorker {
  abstract readonly isolation: Isolation;
  /** The worker thread's id; null for a child process. */
  abstract readonly threadId: number | null;
  /** The process the agent runs in: this one for a thread, the child's (0 if it could not be spawned). */
  abstract readonly pid: number;
  owner: ThreadOwner | null = null;
  label = SPARE_LABEL;
  protected readonly lines: Record<OutputChunk['stream'], LineSplitter>;
  protected terminatedFor: ThreadEnd | null = null;
  protected failure: Error | null = null;
  private unacknowledged = 0;

  constructor(protected readonly settings: ThreadSettings) {
    const allowance = new OutputAllowance();
    const label = (): string => this.label;
    this.lines = {
      stdout: new LineSplitter('stdout', label, settings.output, allowance, settings.onOutputDropped),
      stderr: new LineSplitter('stderr', label, settings.output, allowance, settings.onOutputDropped),
    };
  }

  /** Throws DataCloneError when the message cannot be copied, as postMessage does. */
  abstract post(message: ToWorker, transfer?: ArrayBuffer[]): void;

  /** Busy workers keep the host alive; idle and spare ones never do. */
  abstract setReferenced(referenced: boolean): void;

  /** The worker's memory, read without its cooperation. */
  abstract readMemory(probe: MemoryProbe): Promise<MemoryReading>;

  /** Stops the worker now, whatever it is running. */
  protected abstract kill(): void;

  /** Its key, just before the load: what a process's cage must show it and whom it runs as (a thread needs nothing). */
  assign(_key: ResolvedKey, _access: KeyAccess | null): void {}

  /**
   * Where this worker reads its key's folder (a real path): there, or for a strict spare at a
   * folder of its own, which shows it from now on (see SpareFolders). Throws when it cannot.
   */
  seeFolder(folder: string): string {
    return folder;
  }

  /** A child process's cgroup bound (see AgentProcess); a thread has none. */
  cgroupBounds(): KeyStats['cgroup'] {
    return null;
  }

  /** Sets the priority of a child process (see AgentProcess); a thread's is set by its TID. */
  prioritize(_nice: number): boolean {
    return false;
  }

  /** Ends the worker now, whatever it runs; the first reason (and `cause`, the error its calls carry) is the one kept. */
  terminate(end: ThreadEnd, cause: Error | null = null): void {
    if (this.terminatedFor === null && cause !== null) this.failure ??= cause;
    this.terminatedFor ??= end;
    this.kill();
  }

  get terminating(): boolean {
    return this.terminatedFor !== null;
  }

  /** Ends the worker for a message the protocol does not allow; its calls fail with `protocol`. */
  violate(problem: string): void {
    if (this.terminatedFor !== null) return;
    this.failure ??= new Error(problem);
    this.owner?.onViolation?.();
    this.terminate({ died: 'protocol' });
  }

  protected receive(raw: unknown): void {
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

  /** The worker is gone: its last output lines go out, then its owner hears why it ended. */
  protected ended(natural: ExitReason): void {
    this.lines.stdout.end();
    this.lines.stderr.end();
    this.owner?.onEnd(this.terminatedFor ?? { died: natural }, this.failure);
  }

  private print(chunk: OutputChunk): void {
    if (chunk.dropped > 0) this.settings.onOutputDropped(chunk.dropped, this.label);
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
}
