import { MessageChannel, type MessagePort, Worker } from 'node:worker_threads';
import type { Deniable, ToWorker, WorkerBoot } from '../../protocol/messages.js';
import { AgentWorker, type ThreadSettings } from './agent-worker.js';
import { startAccepting } from './denials.js';
import type { MemoryProbe, MemoryReading } from './memory-probe.js';
import { threadArgs } from './permissions.js';
import type { SpareFolder } from './spare-folders.js';

/** worker/entry.ts and what it imports at start, as one file (scripts/bundle-worker.js). */
const ENTRY = new URL('../../worker/bundle.js', import.meta.url);

/** What a strict spare boots with beyond its flags (see Launcher.bootSpare). */
export interface StrictSpare {
  /** Its own folder, which its flags grant and its key's folder is shown at; it goes with the thread. */
  readonly folder: SpareFolder;
  /** What it denies agent code, applied while it waits for its key (its key's must be the same). */
  readonly deny: readonly Deniable[];
}

/**
 * A key's agent in a worker thread, talking over a private MessageChannel handed to it
 * before agent code runs (the worker closes `parentPort`).
 */
export class AgentThread extends AgentWorker {
  readonly isolation = 'thread' as const;
  readonly threadId: number;
  readonly pid = process.pid;
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private referenced = true;
  private readonly folder: SpareFolder | null;

  constructor(
    settings: ThreadSettings,
    /** Node flags for this worker: its permission model, type stripping. */
    execArgv: readonly string[],
    spare: StrictSpare | null = null,
  ) {
    super(settings);
    this.folder = spare?.folder ?? null;
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    this.worker = startAccepting(
      threadArgs(execArgv),
      (flags) =>
        new Worker(ENTRY, {
          execArgv: flags,
          env: { ...settings.env },
          resourceLimits: settings.resourceLimits,
          workerData: {
            port: port2,
            ...(spare === null ? {} : { verifies: true, deny: [...spare.deny] }),
          } satisfies WorkerBoot,
          transferList: [port2],
        }),
    );
    this.threadId = this.worker.threadId;
    port1.on('message', (raw: unknown) => this.receive(raw));
    port1.on('messageerror', () => this.violate('a message that cannot be deserialized'));
    // The worker's own ref/unref decides whether the host stays alive, not this port.
    port1.unref();
    this.worker.on('error', (error: Error) => {
      this.failure ??= error;
    });
    this.worker.on('exit', () => {
      this.port.close();
      this.folder?.release();
      const code = (this.failure as { code?: unknown } | null)?.code;
      this.ended(this.failure === null ? 'exit' : code === 'ERR_WORKER_OUT_OF_MEMORY' ? 'oom' : 'crash');
    });
  }

  override seeFolder(folder: string): string {
    if (this.folder === null) return folder;
    this.folder.show(folder);
    return this.folder.path;
  }

  post(message: ToWorker, transfer?: ArrayBuffer[]): void {
    this.port.postMessage(message, transfer);
  }

  setReferenced(referenced: boolean): void {
    if (referenced === this.referenced) return;
    this.referenced = referenced;
    if (referenced) this.worker.ref();
    else this.worker.unref();
  }

  /** See memory-probe.ts: the worker's own isolate answers, also while agent code spins. */
  readMemory(probe: MemoryProbe): Promise<MemoryReading> {
    return probe.read(this.worker);
  }

  protected kill(): void {
    void this.worker.terminate();
  }
}
