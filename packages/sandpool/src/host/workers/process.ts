import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { Readable, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import type { ResolvedKey } from '../../key.js';
import { encodeFrame, FROM_CHILD_FD, FrameReader } from '../../protocol/frames.js';
import { MUST_DROP, type ToWorker } from '../../protocol/messages.js';
import type { KeyStats } from '../../types.js';
import { AgentWorker, type ThreadSettings } from './agent-worker.js';
import type { MemoryReading } from './memory-probe.js';
import { reniceProcess } from './priority.js';
import type { Cage, CellCpu } from './sandbox/cage.js';
import type { Sandbox } from './sandbox/sandbox.js';
import type { KeyAccess } from './sandbox/view.js';

/** The runtime a child starts: the same entry as a worker thread's. */
const WORKER_ENTRY = fileURLToPath(new URL('../../worker/bundle.js', import.meta.url));
/** What V8 prints before it aborts on a heap it cannot grow: that abort is the child's `oom`. */
const HEAP_OOM = /JavaScript heap out of memory|Fatal JavaScript invalid size error/;

export interface ProcessSettings {
  /** The OS sandbox its children run in (namespaces, uid, cgroup, rlimits: see sandbox/). */
  readonly sandbox: Sandbox;
  /** V8's own heap limit in the child: past it V8 aborts the child alone. */
  readonly heapMb: number;
  /** The kernel's memory bound of its cell where its key's budgets are its own (its policy's); null: the pool's. */
  readonly memoryBytes: number | null;
}

/**
 * A key's agent in a child process of its own (isolation 'process'), in its Cage: its own
 * address space, fd table, libuv pool and signals, and where the host offers them its own
 * namespaces, its swarm's uid and a cgroup, under the same permission flags as a thread. It
 * speaks the same protocol over private pipes in sandpool's own frames (protocol/frames.ts:
 * v8-serialized, so values copy as structured clone does; nothing is transferred, no handle
 * can pass, and a frame's length is checked before it is read). Its stdout and stderr are pipes the host labels line by
 * line, so even a raw write to fd 1 or `process._rawDebug` reaches the host's output as this
 * key's. Stopped with SIGKILL. Messages wait until its cage is ready, and a load until its
 * key's folders and uid are in place.
 */
export class AgentProcess extends AgentWorker {
  readonly isolation = 'process' as const;
  readonly threadId = null;
  /** The pid of the child the pool spawned (bubblewrap's, where the cell has namespaces): what events carry. */
  readonly pid: number = 0;
  private readonly child: ChildProcess | null = null;
  /** Its ends of the channel (what the child reads, what it writes); null once it has ended or broken the protocol. */
  private channel: { readonly toChild: Writable; readonly fromChild: Readable } | null = null;
  private readonly cage: Cage | null = null;
  /** Messages held while a gate (the cage starting, the key entering) is open. */
  private held: ToWorker[] = [];
  private gates = 0;
  private user: readonly [number, number] | null = null;
  private referenced = true;
  private outOfMemory = false;
  /** Its end of the channel holds this tick's frames (see post). */
  private corked = false;

  constructor(settings: ThreadSettings, execArgv: readonly string[], child: ProcessSettings, access: KeyAccess | null) {
    super(settings);
    try {
      this.cage = child.sandbox.cage(access, child.memoryBytes);
      // The child starts as the host's user, so Node and sandpool's runtime load wherever they
      // are installed (a 0700 checkout, say); the entry drops to its swarm's user before any agent code.
      const node = {
        flags: [...execArgv, `--max-old-space-size=${child.heapMb}`],
        entry: WORKER_ENTRY,
        args: this.cage.dropsPrivileges ? [MUST_DROP] : [],
      };
      this.child = this.cage.spawn(node, { ...settings.env });
    } catch (error) {
      this.failure = error as Error;
      setImmediate(() => this.ended('crash'));
      return;
    }
    const { child: spawned, cage } = this;
    this.pid = spawned.pid ?? 0;
    this.gate(cage.started(spawned));
    const stdio = spawned.stdio as readonly unknown[];
    this.openChannel(stdio[0] as Writable, stdio[FROM_CHILD_FD] as Readable);
    const { stdout, stderr } = spawned;
    stdout?.setEncoding('utf8');
    stderr?.setEncoding('utf8');
    stdout?.on('data', (text: string) => this.lines.stdout.push(text));
    stderr?.on('data', (text: string) => {
      if (!this.outOfMemory && HEAP_OOM.test(text)) this.outOfMemory = true;
      this.lines.stderr.push(text);
    });
    spawned.on('error', (error: Error) => {
      this.failure ??= error;
    });
    // After its pipes have closed too: its last lines are in. A child that could not be
    // spawned (EAGAIN under RLIMIT_NPROC, say) emits `close` too.
    spawned.on('close', (code: number | null) => {
      if (cage.oomKilled()) this.outOfMemory = true;
      if (this.outOfMemory) this.failure ??= new Error('the process ran out of memory');
      const end = this.outOfMemory ? 'oom' : code === 0 && this.failure === null ? 'exit' : 'crash';
      // Its cgroup and binds are gone before its end is told: a closed pool leaves nothing behind.
      void cage.release().finally(() => this.ended(end));
    });
  }

  /**
   * Reads the child's frames as they come; the first that breaks the protocol (a length past
   * the bound, bytes that do not deserialize) ends it, and nothing more of it is read.
   */
  private openChannel(toChild: Writable, fromChild: Readable): void {
    this.channel = { toChild, fromChild };
    const reader = new FrameReader((message) => this.receive(message));
    fromChild.on('data', (chunk: Buffer) => {
      if (this.channel === null) return;
      try {
        reader.push(chunk);
      } catch (error) {
        this.closeChannel();
        this.violate(`its channel failed: ${(error as Error).message}`);
      }
    });
    // A child that ends mid-write: its close settles every call.
    for (const end of [toChild, fromChild]) {
      end.on('error', () => this.closeChannel());
      end.on('close', () => this.closeChannel());
    }
  }

  private closeChannel(): void {
    const channel = this.channel;
    this.channel = null;
    channel?.toChild.destroy();
    channel?.fromChild.destroy();
  }

  /** Its Node's pid on the host (under bubblewrap's init, in a cell): whose CPU and memory are read. */
  get nodePid(): number {
    return this.cage?.pid || this.pid;
  }

  /** Its key has come: a spare's folders are bound in and the uid taken before its load goes. */
  override assign(key: ResolvedKey, access: KeyAccess | null): void {
    if (this.cage === null) return;
    this.gate(
      this.cage.enter(access ?? { swarm: key.swarm, entries: [] }).then((user) => {
        this.user = user === null ? null : [user.uid, user.gid];
      }),
    );
  }

  post(message: ToWorker): void {
    // The channel would copy a view of shared memory without a word: refused, as postMessage refuses what it cannot clone.
    if (message.t === 'calls' && message.shared === true) {
      throw Object.assign(new Error('memory cannot be shared with a process key'), { name: 'DataCloneError' });
    }
    if (this.gates > 0) {
      this.held.push(message);
      return;
    }
    if (this.channel === null) return; // it is exiting: its close settles every call
    const { toChild } = this.channel;
    if (!this.corked) {
      // What the rest of this tick posts leaves with it, in one write: one wake-up of the child.
      this.corked = true;
      toChild.cork();
      process.nextTick(this.uncork);
    }
    toChild.write(encodeFrame(message.t === 'load' && this.user !== null ? { ...message, user: this.user } : message));
  }

  private readonly uncork = (): void => {
    this.corked = false;
    this.channel?.toChild.uncork();
  };

  setReferenced(referenced: boolean): void {
    if (referenced === this.referenced || this.child === null) return;
    this.referenced = referenced;
    const handles = [this.child, this.channel?.toChild, this.channel?.fromChild, this.child.stdout, this.child.stderr];
    for (const handle of handles) {
      if (referenced) (handle as { ref?: () => void } | null | undefined)?.ref?.();
      else (handle as { unref?: () => void } | null | undefined)?.unref?.();
    }
  }

  /**
   * Its memory, read by the host (the child cannot fake it): its cgroup's count (page cache
   * and /tmp included) where it has one, else its resident memory from /proc. One figure for
   * heap, external memory and the runtime together, given as `heap`.
   */
  async readMemory(): Promise<MemoryReading> {
    const counted = this.cage?.memoryBytes() ?? null;
    if (counted !== null) return { heap: counted, external: 0 };
    const status = readFileSync(`/proc/${this.nodePid}/status`, 'latin1');
    const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
    return { heap: kb * 1024, external: 0 };
  }

  /** The memory its cgroup bounds its cell to, null without one. */
  override cgroupBounds(): KeyStats['cgroup'] {
    return this.cage?.bounds() ?? null;
  }

  /** Where its cell's CPU is counted (its every task's), null without a cgroup that counts it: see Cage.cpuUsage. */
  cpuUsage(): CellCpu | null {
    return this.cage?.cpuUsage() ?? null;
  }

  /** Its CPU weight among the cells where it has a cgroup (renicing its threads would only order them among themselves), else each thread's nice. */
  override prioritize(nice: number): boolean {
    // No pid (a spawn that failed) must never reach setpriority: 0 there means the host.
    const pid = this.nodePid;
    return this.cage?.prioritize(nice) ?? (pid > 0 && reniceProcess(pid, nice));
  }

  protected kill(): void {
    // A process cannot be asked to stop as a thread can; SIGKILL cannot be ignored. In a cell,
    // bubblewrap's init dies with it, and with the init every task of the cell.
    this.child?.kill('SIGKILL');
    this.cage?.kill();
  }

  /** Holds messages until `opening` settles; a cage that fails ends the child with that error. */
  private gate(opening: Promise<void>): void {
    this.gates += 1;
    opening.then(
      () => {
        this.gates -= 1;
        if (this.gates > 0) return;
        for (const message of this.held.splice(0)) this.post(message);
      },
      (error: unknown) => {
        this.failure ??= error instanceof Error ? error : new Error(String(error));
        this.kill();
      },
    );
  }
}
