import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { DROP_TO, type ToWorker } from '../../protocol/messages.js';
import { AgentWorker, type ThreadSettings } from './agent-worker.js';
import type { MemoryReading } from './memory-probe.js';

/** The runtime a child starts: the same entry as a worker thread's. */
const WORKER_ENTRY = fileURLToPath(new URL('../../worker/bundle.js', import.meta.url));
/** util-linux's prlimit sets the child's rlimits before it execs Node; Node has no setrlimit. */
const PRLIMIT = ['/usr/bin/prlimit', '/bin/prlimit'].find((path) => existsSync(path)) ?? null;
/** What V8 prints before it aborts on a heap it cannot grow: that abort is the child's `oom`. */
const HEAP_OOM = /JavaScript heap out of memory|Fatal JavaScript invalid size error/;

export interface ProcessSettings {
  /** The uid and gid the child runs as; null keeps the host's (a host that is not root cannot change them). */
  readonly user: { readonly uid: number; readonly gid: number } | null;
  /** V8's own heap limit in the child: past it V8 aborts the child alone. */
  readonly heapMb: number;
  readonly limits: ProcessLimits;
}

/** rlimits of a child, applied with prlimit where it exists (see `limitsApplied`). */
export interface ProcessLimits {
  /** RLIMIT_NOFILE: descriptors it may hold open. */
  readonly openFiles: number;
  /** RLIMIT_NPROC: processes and threads of its uid (shared by every child of that uid). */
  readonly processes: number;
  /** RLIMIT_AS, in MB: its address space (V8 reserves far more than it uses). */
  readonly addressSpaceMb: number;
}

/** Whether this host can apply ProcessLimits: without prlimit the children run unlimited. */
export const limitsApplied = PRLIMIT !== null;

/**
 * A key's agent in a child process of its own (isolation 'process'): its own address space,
 * fd table, libuv pool and signals, under the same permission flags as a thread, another uid
 * when the host is root, and rlimits. It speaks the same protocol over its IPC channel
 * (v8-serialized, so values copy as structured clone does; nothing is transferred). Its
 * stdout and stderr are pipes the host labels line by line, so even a raw write to fd 1 or
 * `process._rawDebug` reaches the host's output as this key's. Stopped with SIGKILL.
 */
export class AgentProcess extends AgentWorker {
  readonly isolation = 'process' as const;
  readonly threadId = null;
  readonly pid: number;
  private readonly child: ChildProcess;
  private referenced = true;
  private outOfMemory = false;

  constructor(settings: ThreadSettings, execArgv: readonly string[], child: ProcessSettings) {
    super(settings);
    // The child starts as the host's user, so Node and sandpool's runtime load wherever they
    // are installed (a 0700 checkout, say); the entry drops to `user` before any agent code.
    const user = child.user === null ? [] : [`${DROP_TO}${child.user.uid}:${child.user.gid}`];
    const node = [...execArgv, `--max-old-space-size=${child.heapMb}`, WORKER_ENTRY, ...user];
    const { openFiles, processes, addressSpaceMb } = child.limits;
    const limited = [
      `--nofile=${openFiles}:${openFiles}`,
      `--nproc=${processes}:${processes}`,
      `--as=${addressSpaceMb * 2 ** 20}:${addressSpaceMb * 2 ** 20}`,
      '--',
      process.execPath,
      ...node,
    ];
    this.child = spawn(PRLIMIT ?? process.execPath, PRLIMIT === null ? node : limited, {
      // Nothing else is inherited: Node opens every other descriptor close-on-exec.
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      serialization: 'advanced',
      env: { ...settings.env },
    });
    this.pid = this.child.pid ?? 0;
    this.child.on('message', (raw: unknown) => this.receive(raw));
    const { stdout, stderr } = this.child;
    stdout?.setEncoding('utf8');
    stderr?.setEncoding('utf8');
    stdout?.on('data', (text: string) => this.lines.stdout.push(text));
    stderr?.on('data', (text: string) => {
      if (!this.outOfMemory && HEAP_OOM.test(text)) this.outOfMemory = true;
      this.lines.stderr.push(text);
    });
    this.child.on('error', (error: Error) => {
      this.failure ??= error;
    });
    // After its pipes have closed too: its last lines are in.
    this.child.on('close', (code: number | null) => {
      if (this.outOfMemory) this.failure ??= new Error('the process ran out of heap');
      this.ended(this.outOfMemory ? 'oom' : code === 0 && this.failure === null ? 'exit' : 'crash');
    });
    // A child that could not be spawned (EAGAIN under RLIMIT_NPROC, say) emits `close` too.
  }

  post(message: ToWorker): void {
    if (!this.child.connected) return; // it is exiting: its close settles every call
    // The channel would copy a view of shared memory without a word: refused, as postMessage refuses what it cannot clone.
    if (message.t === 'calls' && message.shared === true) {
      throw Object.assign(new Error('memory cannot be shared with a process key'), { name: 'DataCloneError' });
    }
    this.child.send(message);
  }

  setReferenced(referenced: boolean): void {
    if (referenced === this.referenced) return;
    this.referenced = referenced;
    const handles = [this.child, this.child.channel, this.child.stdout, this.child.stderr];
    for (const handle of handles) {
      if (referenced) (handle as { ref?: () => void } | null | undefined)?.ref?.();
      else (handle as { unref?: () => void } | null | undefined)?.unref?.();
    }
  }

  /**
   * Its resident memory, read from /proc by the host (the child cannot fake it): one figure
   * for heap, external memory and the runtime together, given as `heap`.
   */
  async readMemory(): Promise<MemoryReading> {
    const status = readFileSync(`/proc/${this.pid}/status`, 'latin1');
    const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
    return { heap: kb * 1024, external: 0 };
  }

  protected kill(): void {
    // A process cannot be asked to stop as a thread can; SIGKILL cannot be ignored.
    this.child.kill('SIGKILL');
  }
}
