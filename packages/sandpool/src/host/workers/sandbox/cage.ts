import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { basename, dirname } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { usernsFilter } from './seccomp.js';
import type { StagedCell } from './stage.js';
import { findExecutable, NAMESPACE_DIRS, namespaceArgs, type UsernsGuard } from './support.js';
import type { SwarmIds, SwarmUser } from './uids.js';
import { bwrapArgs, type KeyAccess, type ViewEntry, within } from './view.js';

/** util-linux's prlimit sets the child's rlimits before it execs on; Node has no setrlimit. */
const PRLIMIT = findExecutable('prlimit');
/**
 * A descriptor the host holds without close-on-exec (one it inherited, or a native addon's)
 * would reach the child, and bubblewrap passes every one on to the command it runs: bash,
 * between prlimit and bubblewrap, closes every descriptor past the protocol's ($0) and execs
 * the rest. Neither Node, libuv nor bubblewrap has a way to do that. POSIX mode and no rc
 * files: bash would otherwise run `BASH_ENV` (the key's env is the child's), and `~/.bashrc`
 * when its stdin is a socket, as the channel is (its guess that sshd started it).
 */
const BASH = findExecutable('bash');
// biome-ignore lint/suspicious/noTemplateCurlyInString: a shell's parameter expansion, not a template
const CLOSE_FDS = 'for fd in /proc/self/fd/*; do fd=${fd##*/}; [ "$fd" -gt "$0" ] && exec {fd}>&-; done; exec "$@"';
/** The child's last descriptor of the protocol without bubblewrap's two: stdio, then the channel's (protocol/frames.ts). */
const LAST_PROTOCOL_FD = 3;
/** bubblewrap's descriptors in the child's stdio: it writes its child's pid on one, and waits on the other. */
const INFO_FD = 4;
const BLOCK_FD = 5;
/**
 * Where bubblewrap reads its options (`--args`): on its command line they would be the cell's
 * /proc/1/cmdline (its init is a fork of it), naming the pool's root and every bind.
 */
const ARGS_FD = 6;
/** Where bubblewrap reads the cell's seccomp filter from (support.ts's UsernsGuard). */
const SECCOMP_FD = 7;
/** bubblewrap's report of its child, as `--info-fd` writes it. */
const CHILD_PID = /"child-pid":\s*(\d+)/;

/** A file where the kernel counts a cell's CPU: nanoseconds alone (v1's cpuacct.usage), or v2's cpu.stat (usage_usec). */
export interface CellCpu {
  readonly path: string;
  readonly format: 'ns' | 'cpu.stat';
}

/** A cell's cgroup, as its cage uses it (made by governors/cgroups.ts). */
export interface CageGroup {
  /** Where its CPU is counted, every task's; null where the host does not count it. */
  cpuUsage(): CellCpu | null;
  /** Moves a process (every thread of it) into the cell; what it starts from then on is born there. */
  attach(pid: number): Promise<void>;
  /** Bytes the cell's tasks hold now, page cache and /tmp included; null when unreadable. */
  memoryBytes(): number | null;
  /** Sets the cell's CPU weight to match a nice value; false when the kernel refused. */
  prioritize(nice: number): boolean;
  /** Whether the kernel's OOM killer ended a task of the cell. */
  oomKilled(): boolean;
  /** SIGKILL to every task in the cell. */
  kill(): void;
  /** Ends every task still in the cell, then removes it. */
  remove(): Promise<void>;
}

/** The CPU of a pool's cells together, as `sandbox.cpuWeight` and `sandbox.cpuMax` set it; null: the kernel's default. */
export interface PoolCpu {
  /** Among the host's other cgroups, on cgroup v2's scale (1-10000, 100 the default). */
  readonly weight: number | null;
  /** Cores the pool's cells may use together. */
  readonly maxCores: number | null;
}

/** A pool's cgroup, where its cells' are made (governors/cgroups.ts). */
export interface CageGroups {
  readonly version: 'v1' | 'v2';
  /** A cgroup for one cell, limits set, empty until `attach`. Throws when the kernel refuses. */
  create(limits: { readonly memoryBytes: number; readonly pids: number }): CageGroup;
  /** The pool is closed and its cells' cgroups are gone: its own goes. */
  remove(): Promise<void>;
}

/** What a Cage is made of: the pool's sandbox, resolved (see Sandbox.cage). */
export interface CageParts {
  /** bubblewrap's path; null: no namespaces. */
  readonly bwrap: string | null;
  /** How the cell is kept from making user namespaces; null: it is not. */
  readonly userns: UsernsGuard | null;
  readonly root: boolean;
  readonly rootReal: string;
  /** The Node binary, its libraries, sandpool's runtime. */
  readonly runtime: readonly ViewEntry[];
  /** A spare's packages above the pool's root. */
  readonly pool: readonly ViewEntry[];
  /** A spare's folder standing for the pool's root; null for a cell that knows its key. */
  readonly stage: StagedCell | null;
  readonly ids: SwarmIds | null;
  readonly fixedUser: SwarmUser | null;
  readonly groups: CageGroups | null;
  /** What the kernel holds the cell's memory to: its cgroup's bound, else RLIMIT_DATA. */
  readonly memoryBytes: number;
  readonly tmpMb: number;
  readonly pids: number;
  readonly limits: { readonly openFiles: number; readonly processes: number };
}

/** What Node is started with: its flags, the entry module, the entry's arguments. */
export interface NodeCommand {
  readonly flags: readonly string[];
  readonly entry: string;
  readonly args: readonly string[];
}

/** How to start a child in its cage: the program, its arguments, and how many descriptors past the channel's it needs. */
interface CageCommand {
  readonly file: string;
  readonly args: readonly string[];
  readonly extraFds: number;
}

/**
 * One child's OS sandbox, from its spawn to its end: the command that starts Node in it
 * (rlimits with prlimit, namespaces and binds with bubblewrap), its cgroup (which it enters
 * before Node runs: bubblewrap waits on BLOCK_FD until the host has moved it there), its
 * swarm's uid, and for a spare, its key's folders bound in when the key comes. Everything it
 * holds is given back at `release`.
 */
export class Cage {
  private readonly group: CageGroup | null;
  private swarm: string | null = null;
  private nodePid = 0;
  /** bubblewrap's init, pid 1 of the cell's namespace, seen from the host. */
  private initPid = 0;
  private released = false;
  private killed = false;
  /** The child the host spawned (prlimit, then bubblewrap), leader of the cell's process group. */
  private spawned: ChildProcess | null = null;
  /** bubblewrap's options, NUL-separated, for ARGS_FD (see command). */
  private argsData = '';

  constructor(
    private readonly parts: CageParts,
    private readonly access: KeyAccess | null,
  ) {
    this.group = parts.groups?.create({ memoryBytes: parts.memoryBytes, pids: parts.pids }) ?? null;
  }

  /** Whether Node must drop to a user sent with its load (see MUST_DROP). */
  get dropsPrivileges(): boolean {
    return this.parts.ids !== null || this.parts.fixedUser !== null;
  }

  /**
   * Node's pid on the host: the child's own, or in a cell the one child of bubblewrap's init
   * (found once it has started; 0 until then).
   */
  get pid(): number {
    if (this.nodePid === 0 && this.initPid > 0) {
      try {
        this.nodePid =
          Number(readFileSync(`/proc/${this.initPid}/task/${this.initPid}/children`, 'latin1').split(' ')[0]) || 0;
      } catch {
        // Ended, or not started yet.
      }
    }
    return this.nodePid;
  }

  /**
   * Starts Node in the cage: the child's stdio, then the channel's and bubblewrap's pipes, and
   * nothing else (Node opens every other descriptor close-on-exec), in a process group of its
   * own, which `kill` ends whole.
   */
  spawn(node: NodeCommand, env: Record<string, string>): ChildProcess {
    const { file, args, extraFds } = this.command(node);
    const pipes = Array.from({ length: 4 + extraFds }, () => 'pipe' as const);
    return spawn(file, args, { stdio: pipes, env, detached: true });
  }

  private command(node: NodeCommand): CageCommand {
    const { bwrap, limits, groups, memoryBytes } = this.parts;
    const inner =
      bwrap === null
        ? [process.execPath, ...node.flags, node.entry, ...node.args]
        : // Nothing of the host's paths on the command line, which is the cell's pid 1's and its
          // Node's: bubblewrap's options come on ARGS_FD, and with them Node's flags (in
          // NODE_OPTIONS) and the folder the entry is named from.
          [bwrap, '--args', String(ARGS_FD), '--', process.execPath, basename(node.entry), ...node.args];
    if (bwrap !== null) this.argsData = [...this.bwrapArgs(), ...nodeArgs(node)].map((arg) => `${arg}\0`).join('');
    const extraFds = bwrap === null ? 0 : this.parts.userns === 'seccomp' ? 4 : 3;
    const closed =
      BASH === null
        ? inner
        : [BASH, '--posix', '--norc', '--noprofile', '-c', CLOSE_FDS, String(LAST_PROTOCOL_FD + extraFds), ...inner];
    if (PRLIMIT === null) return { file: closed[0] as string, args: closed.slice(1), extraFds };
    const rlimits = [
      `--nofile=${limits.openFiles}:${limits.openFiles}`,
      `--nproc=${limits.processes}:${limits.processes}`,
    ];
    // Without a memory cgroup, RLIMIT_DATA bounds what it can commit; unlike RLIMIT_AS, it
    // leaves V8's and WebAssembly's reservations alone.
    if (groups === null) rlimits.push(`--data=${memoryBytes}:${memoryBytes}`);
    return { file: PRLIMIT, args: [...rlimits, '--', ...closed], extraFds };
  }

  /**
   * The child was spawned: its cell is moved into the cgroup before Node runs (bubblewrap says
   * its init's pid on INFO_FD and waits on BLOCK_FD; Node, started by the init, is born in
   * the cgroup), and before its load goes. Rejects when the child never gets that far.
   */
  started(child: ChildProcess): Promise<void> {
    // Moved in at once: what it starts is born in the cell (with namespaces, bubblewrap's init
    // too, unless it was quicker: then the init is moved below, before Node starts).
    this.spawned = child;
    const { group } = this;
    const moved = group === null || child.pid === undefined ? Promise.resolve() : group.attach(child.pid);
    // A cell ended before bubblewrap said its init's pid never waits for this move: its cgroup
    // may be gone under it (ENODEV), which nothing is left to hear.
    moved.catch(() => {});
    if (this.parts.bwrap === null) {
      this.nodePid = child.pid ?? 0;
      return moved;
    }
    const stdio = child.stdio as readonly unknown[];
    const info = (stdio[INFO_FD] ?? null) as Readable | null;
    const block = (stdio[BLOCK_FD] ?? null) as Writable | null;
    const seccomp = (stdio[SECCOMP_FD] ?? null) as Writable | null;
    const options = (stdio[ARGS_FD] ?? null) as Writable | null;
    // bubblewrap reads its options first, and the filter once it may go on: each to its end.
    for (const [pipe, data] of [
      [options, this.argsData],
      [seccomp, usernsFilter()],
    ] as const) {
      pipe?.on('error', () => {});
      pipe?.end(data);
    }
    return new Promise((resolve, reject) => {
      if (info === null || block === null) return reject(new Error('bubblewrap has no descriptors to report on'));
      let said = '';
      info.setEncoding('utf8');
      info.on('data', (text: string) => {
        said += text;
        const pid = Number(CHILD_PID.exec(said)?.[1] ?? 0);
        if (pid <= 0 || this.initPid > 0) return;
        this.initPid = pid;
        if (this.killed) {
          // Told to end before it said who its init is: the init waits on BLOCK_FD, without
          // the parent-death signal it sets only later, and must not go on alone.
          this.kill();
          reject(new Error('ended before its cell started'));
          return;
        }
        void Promise.all([moved, group?.attach(pid)]).then(() => {
          if (this.killed) {
            reject(new Error('ended before its cell started'));
            return;
          }
          block.end('go');
          resolve();
        }, reject);
      });
      // bubblewrap closes it once it has said the pid, maybe while the init is still being moved.
      info.on('end', () => {
        if (this.initPid === 0) reject(new Error('bubblewrap ended before its cell started'));
      });
      // Nothing useful follows the pid; a child that has ended cannot take the byte.
      info.on('error', () => {});
      block.on('error', () => {});
    });
  }

  /**
   * The cell's key has come: a spare's folders are bound into its stage, and the swarm's uid
   * is taken (held until `release`). Resolves to the user its Node drops to, null for none.
   */
  async enter(access: KeyAccess): Promise<SwarmUser | null> {
    if (this.swarm !== null) throw new Error('a cell serves one key only');
    const { stage, rootReal } = this.parts;
    if (stage !== null) {
      const outside = access.entries.filter((entry) => !within(entry.path, rootReal));
      const booted = this.bootEntries();
      const missing = outside.find((entry) => !booted.some((at) => within(entry.path, at.path)));
      if (missing !== undefined) throw new Error(`a spare cell cannot show ${missing.path}, outside the pool's root`);
      await stage.enter(access.entries.filter((entry) => within(entry.path, rootReal)));
    } else if (this.access !== null && this.access.swarm !== access.swarm) {
      throw new Error('a cell started for one key cannot serve another');
    }
    this.swarm = access.swarm;
    return this.parts.ids?.acquire(access.swarm) ?? this.parts.fixedUser;
  }

  /**
   * Ends every task of the cell: besides the child (which the caller kills), bubblewrap's init,
   * which outlives it while it waits on BLOCK_FD, and anything left in the cgroup.
   */
  kill(): void {
    this.killed = true;
    // Its process group, while its leader is not reaped (so the group's id is no one else's):
    // whatever started before the cell's cgroup could hold it, and bubblewrap's init before
    // bubblewrap named it. Killed with its bubblewrap before that bubblewrap signalled it, such
    // an init waits for it forever, holding the cell's channel (and so the pool's close).
    const leader = this.spawned;
    if (leader?.pid !== undefined && leader.exitCode === null && leader.signalCode === null) {
      try {
        process.kill(-leader.pid, 'SIGKILL');
      } catch {
        // Gone already.
      }
    }
    if (this.initPid > 0) {
      try {
        process.kill(this.initPid, 'SIGKILL');
      } catch {
        // Gone already.
      }
    }
    this.group?.kill();
  }

  /** Where the cell's CPU is counted, its children's included before they are reaped; null without a cgroup that counts it. */
  cpuUsage(): CellCpu | null {
    return this.group?.cpuUsage() ?? null;
  }

  /** The memory its cgroup bounds the cell to; null without one. */
  bounds(): { memoryMaxBytes: number } | null {
    return this.group === null ? null : { memoryMaxBytes: this.parts.memoryBytes };
  }

  /** Bytes the cell holds now, as its cgroup counts them; null without one. */
  memoryBytes(): number | null {
    return this.group?.memoryBytes() ?? null;
  }

  /** Lowers or restores the cell's CPU weight among the cells; null without a cgroup (renice instead). */
  prioritize(nice: number): boolean | null {
    return this.group?.prioritize(nice) ?? null;
  }

  /** Whether the kernel's OOM killer ended a task of the cell. */
  oomKilled(): boolean {
    return this.group?.oomKilled() ?? false;
  }

  /** The child has ended: its uid, stage binds and cgroup (and anything left in it) go. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    if (this.swarm !== null) this.parts.ids?.release(this.swarm);
    await Promise.all([this.parts.stage?.close(), this.group?.remove()]);
  }

  private bwrapArgs(): string[] {
    const { root, tmpMb, stage, rootReal } = this.parts;
    const entries: ViewEntry[] = [...this.bootEntries()];
    if (stage !== null) entries.push({ kind: 'bind', source: stage.dir, path: rootReal, write: false });
    else entries.push(...(this.access?.entries ?? []));
    return [
      ...namespaceArgs(root, tmpMb * 2 ** 20, this.parts.userns, SECCOMP_FD),
      '--info-fd',
      String(INFO_FD),
      '--block-fd',
      String(BLOCK_FD),
      ...bwrapArgs(entries, new Set(NAMESPACE_DIRS)),
    ];
  }

  /** What a cell sees from its start: the runtime, and for a spare the packages above the pool's root. */
  private bootEntries(): ViewEntry[] {
    const { runtime, pool, rootReal } = this.parts;
    return [...runtime, ...pool.filter((entry) => !within(entry.path, rootReal))];
  }
}

/**
 * bubblewrap's options that start Node as `node.flags` would: the flags in NODE_OPTIONS (each
 * quoted, as Node splits it on spaces), and the entry's folder as the working directory, so the
 * command names the entry by its file name alone. The entry goes back to `/` first thing.
 */
function nodeArgs(node: NodeCommand): string[] {
  const options = node.flags.map((flag) => `"${flag.replace(/["\\]/g, '\\$&')}"`).join(' ');
  return ['--setenv', 'NODE_OPTIONS', options, '--chdir', dirname(node.entry)];
}
