import { appendFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { alive } from '../workers/sandbox/alive.js';
import type { CageGroup, CageGroups, CellCpu, PoolCpu } from '../workers/sandbox/cage.js';

/** The controllers a cell needs, all or none: its memory, its number of tasks, its CPU weight. */
const CONTROLLERS = ['memory', 'pids', 'cpu'] as const;
type Controller = (typeof CONTROLLERS)[number];
/** Where a cell's cgroups are: one per controller, and on v1 the cpuacct one where it is mounted (its CPU count). */
type CellDirs = Readonly<Record<Controller, string>> & { readonly cpuacct?: string };
/** A pool's cgroup is named after the host's pid, so a later host can remove what a crashed one left. */
const NAME = /^sandpool-(\d+)-\d+$/;
/** Its CPU bound's period (the kernel's default): `cpuMax` cores are that many of these per period. */
const CPU_PERIOD_US = 100_000;
/** How long removing a cgroup waits for its last task to be reaped (EBUSY until then). */
const REMOVE_TRIES = 50;
const REMOVE_PAUSE_MS = 20;

/** What the kernel says of this process's cgroups: /proc/self/mountinfo and /proc/self/cgroup. */
export interface CgroupHost {
  readonly mountinfo: string;
  readonly membership: string;
  readonly pid: number;
}

export interface CellLimits {
  /** Memory of every task of the cell, page cache and its /tmp included: past it the kernel's OOM killer ends it. */
  readonly memoryBytes: number;
  /** Tasks (processes and threads) the cell may hold at once. */
  readonly pids: number;
}

let probed: CgroupTree | string | null = null;

/** This host's cgroups for cells, probed on the first pool that may run a process key, and kept (a string: why none). */
export function hostCgroups(): CgroupTree | string {
  probed ??= findCgroups(readCgroupHost());
  return probed;
}

/** A cgroup for one pool's cells under this host's (see CgroupTree.pool), or why it has none. */
export function poolCgroups(cpu: PoolCpu): PoolGroup | string {
  const tree = hostCgroups();
  if (typeof tree === 'string') return tree;
  try {
    return tree.pool(cpu);
  } catch (error) {
    return `cannot make the pool's cgroup: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`;
  }
}

export function readCgroupHost(): CgroupHost {
  return {
    mountinfo: readFileSync('/proc/self/mountinfo', 'latin1'),
    membership: readFileSync('/proc/self/cgroup', 'latin1'),
    pid: process.pid,
  };
}

/**
 * Where this host may make a cgroup per cell, with memory, pids and cpu: cgroup v2 where those
 * controllers can be enabled for the children of a cgroup it may write (its own, else the
 * hierarchy's root, which the no-internal-process rule exempts), else v1 where each of the
 * three is mounted and its own cgroup there takes children. Nothing is moved: the host stays
 * in its cgroup. A string says why neither works.
 */
export function findCgroups(host: CgroupHost): CgroupTree | string {
  const mounts = parseMounts(host.mountinfo);
  const membership = parseMembership(host.membership);
  const problems: string[] = [];
  const v2 = mounts.find((mount) => mount.type === 'cgroup2');
  if (v2 !== undefined) {
    const own = ownDir(v2, membership.get('') ?? null);
    for (const dir of unique([own, v2.point])) {
      if (dir === null) continue;
      const problem = delegableV2(dir, host.pid);
      if (problem === null) return new CgroupTree('v2', { memory: dir, pids: dir, cpu: dir }, host.pid);
      problems.push(`v2 at ${dir}: ${problem}`);
    }
  }
  const dirs: Partial<Record<Controller, string>> = {};
  for (const controller of CONTROLLERS) {
    const mount = mounts.find((entry) => entry.type === 'cgroup' && entry.options.includes(controller));
    const dir = mount === undefined ? null : ownDir(mount, membership.get(controller) ?? null);
    const problem = dir === null ? 'not mounted' : writable(dir, host.pid);
    if (problem !== null || dir === null) {
      problems.push(`v1 ${controller}: ${problem}`);
      break;
    }
    dirs[controller] = dir;
  }
  const { memory, pids, cpu } = dirs;
  if (memory !== undefined && pids !== undefined && cpu !== undefined) {
    // The cell's CPU usage (its children's too, before they are reaped) is cpuacct's: often mounted with cpu, not always.
    const mount = mounts.find((entry) => entry.type === 'cgroup' && entry.options.includes('cpuacct'));
    const cpuacct = mount === undefined ? null : ownDir(mount, membership.get('cpuacct') ?? null);
    const counted = cpuacct !== null && writable(cpuacct, host.pid) === null ? { cpuacct } : {};
    return new CgroupTree('v1', { memory, pids, cpu, ...counted }, host.pid);
  }
  return problems.length === 0 ? 'no cgroup hierarchy is mounted' : problems.join('; ');
}

/**
 * Where this host makes its pools' cgroups: one directory per controller (one for all three on
 * v2), the host's own cgroup or the hierarchy's root. Each pool gets a cgroup of its own there
 * (`pool`), and its cells are made inside it.
 */
export class CgroupTree {
  private made = 0;

  constructor(
    readonly version: 'v1' | 'v2',
    private readonly parents: CellDirs,
    private readonly pid: number,
  ) {
    this.sweep();
  }

  /**
   * The parent cgroup of one pool's cells, with the pool's CPU weight and bound: the cells'
   * CPU counts against the pool's as a unit, and a cell's weight (a demotion, a booting spare)
   * ranks it among the pool's other cells only, not among every cgroup of the machine. Throws
   * when the kernel refuses.
   */
  pool(cpu: PoolCpu): PoolGroup {
    for (;;) {
      const dirs = dirsOf(this.parents, `sandpool-${this.pid}-${++this.made}`);
      const made: string[] = [];
      try {
        for (const dir of unique(Object.values(dirs))) {
          mkdirSync(dir);
          made.push(dir);
        }
        const group = new PoolGroup(this.version, dirs);
        group.limit(cpu);
        return group;
      } catch (error) {
        for (const dir of made.reverse()) tryRmdir(dir);
        // Another copy of this module in the process took that name: the next one is free.
        if (made.length === 0 && (error as NodeJS.ErrnoException).code === 'EEXIST') continue;
        throw error;
      }
    }
  }

  /** Removes the cgroups (a pool's, with its cells') of hosts that ended without removing theirs. */
  private sweep(): void {
    for (const parent of unique(Object.values(this.parents))) {
      let names: string[];
      try {
        names = readdirSync(parent);
      } catch {
        continue;
      }
      for (const name of names) {
        const owner = NAME.exec(name)?.[1];
        if (owner === undefined || Number(owner) === this.pid || alive(Number(owner))) continue;
        removeTree(join(parent, name));
      }
    }
  }
}

/**
 * One pool's cgroup, the parent of its cells' (see CgroupTree.pool). Unless `sandbox.cpuWeight`
 * fixes its weight, it weighs what its cells would as as many threads at nice 0: the kernel
 * gives a group the weight it is set to however many tasks it holds, so at its default the
 * cells of a pool together got one thread's share of a loaded machine (and, a group mostly
 * asleep being discounted further, a process key's calls waited p90 1-4 ms at load 15 where
 * a thread key's waited 0.06-0.9 ms). A cell's own weight (a demotion, a booting spare) still
 * ranks it among the pool's cells only.
 */
export class PoolGroup implements CageGroups {
  private made = 0;
  /** Its cells' cgroups, made and not yet removed: what the pool's weight follows. */
  private readonly cells = new Set<CellGroup>();
  /** `sandbox.cpuWeight`, v2's scale; null: the weight follows the cells. */
  private fixedWeight: number | null = null;

  constructor(
    readonly version: 'v1' | 'v2',
    private readonly dirs: CellDirs,
  ) {}

  /** The pool's CPU among the host's cgroups; on v2, its cells get the three controllers. */
  limit({ weight, maxCores }: PoolCpu): void {
    const { cpu } = this.dirs;
    const quota = maxCores === null ? null : Math.round(maxCores * CPU_PERIOD_US);
    this.fixedWeight = weight;
    if (this.version === 'v2') {
      writeFileSync(join(cpu, 'cgroup.subtree_control'), CONTROLLERS.map((name) => `+${name}`).join(' '));
      if (quota !== null) writeFileSync(join(cpu, 'cpu.max'), `${quota} ${CPU_PERIOD_US}`);
    } else if (quota !== null) {
      writeFileSync(join(cpu, 'cpu.cfs_period_us'), String(CPU_PERIOD_US));
      writeFileSync(join(cpu, 'cpu.cfs_quota_us'), String(quota));
    }
    this.weigh();
  }

  /** Writes the pool's weight: the one set, else one nice-0 thread's per cell (at least one's). */
  private weigh(): void {
    const weight = this.fixedWeight ?? Math.min(MAX_WEIGHT, NICE_0_WEIGHT * Math.max(1, this.cells.size));
    if (this.version === 'v2') writeFileSync(join(this.dirs.cpu, 'cpu.weight'), String(weight));
    else writeFileSync(join(this.dirs.cpu, 'cpu.shares'), String(sharesOf(weight)));
  }

  /** Weighs again after a cell came or went; a refusal leaves the last weight, which still holds the cells. */
  private reweigh(): void {
    if (this.fixedWeight !== null) return;
    try {
      this.weigh();
    } catch {
      // The pool's cgroup removed under it (the host's sweep, an operator): nothing to weigh.
    }
  }

  /** A cgroup for one cell, limits set, empty until `attach`. Throws when the kernel refuses. */
  create(limits: CellLimits): CellGroup {
    const cell = dirsOf(this.dirs, `cell-${++this.made}`);
    const dirs = unique(Object.values(cell));
    for (const dir of dirs) mkdirSync(dir);
    const group = new CellGroup(this.version, cell, () => {
      this.cells.delete(group);
      this.reweigh();
    });
    try {
      group.limit(limits);
    } catch (error) {
      for (const dir of dirs) rmdirSync(dir);
      throw error;
    }
    this.cells.add(group);
    this.reweigh();
    return group;
  }

  /**
   * Removes the pool's cgroup once its cells' are gone (each cell removes its own as it ends).
   * One that still holds a cell (a child that would not end) is left for a later host's sweep.
   */
  async remove(): Promise<void> {
    const dirs = unique(Object.values(this.dirs));
    for (let tries = 0; ; tries++) {
      const busy = dirs.filter((dir) => existsSync(dir) && !tryRmdir(dir));
      if (busy.length === 0 || tries >= REMOVE_TRIES) return;
      await new Promise((resolve) => setTimeout(resolve, REMOVE_PAUSE_MS));
    }
  }
}

/** One cell's cgroup (a directory per controller on v1). */
export class CellGroup implements CageGroup {
  constructor(
    readonly version: 'v1' | 'v2',
    private readonly dirs: CellDirs,
    /** Told once the cell's cgroup is gone (or left for a later sweep): its pool weighs again. */
    private readonly onRemoved: () => void,
  ) {}

  limit({ memoryBytes, pids }: CellLimits): void {
    const { memory } = this.dirs;
    if (this.version === 'v2') {
      writeFileSync(join(memory, 'memory.max'), String(memoryBytes));
      // Swap would let a cell hold more than its bound; the whole cell goes when one task is OOM-killed.
      writeIfExists(join(memory, 'memory.swap.max'), '0');
      writeIfExists(join(memory, 'memory.oom.group'), '1');
    } else {
      writeFileSync(join(memory, 'memory.limit_in_bytes'), String(memoryBytes));
      writeIfExists(join(memory, 'memory.memsw.limit_in_bytes'), String(memoryBytes));
    }
    writeFileSync(join(this.dirs.pids, 'pids.max'), String(pids));
  }

  /**
   * Moves a process (every thread of it) into the cell; what it starts from then on is born
   * there. Off the event loop: the kernel can take milliseconds over a move (v1 waits for an
   * RCU grace period), which would hold up every other key's messages.
   */
  async attach(pid: number): Promise<void> {
    for (const dir of unique(Object.values(this.dirs))) await writeFile(join(dir, 'cgroup.procs'), String(pid));
  }

  /** Where the kernel counts the CPU of every task of the cell, ended ones included: v2's cpu.stat, v1's cpuacct.usage; null on a v1 host without cpuacct. */
  cpuUsage(): CellCpu | null {
    if (this.version === 'v2') return { path: join(this.dirs.cpu, 'cpu.stat'), format: 'cpu.stat' };
    const { cpuacct } = this.dirs;
    return cpuacct === undefined ? null : { path: join(cpuacct, 'cpuacct.usage'), format: 'ns' };
  }

  /** Bytes the cell's tasks hold now, page cache and /tmp included; null when unreadable. */
  memoryBytes(): number | null {
    const file = this.version === 'v2' ? 'memory.current' : 'memory.usage_in_bytes';
    try {
      return Number(readFileSync(join(this.dirs.memory, file), 'latin1'));
    } catch {
      return null;
    }
  }

  /**
   * A CPU weight matching a nice value among the pool's cells: the kernel's own weights for
   * nice 0 (1024) and 19 (15), as cpu.shares (v1) or cpu.weight (v2, where 100 is nice 0's).
   */
  prioritize(nice: number): boolean {
    const weight = Math.round(1024 / 1.25 ** Math.max(-20, Math.min(19, nice)));
    try {
      if (this.version === 'v2') {
        const scaled = Math.max(1, Math.min(10_000, Math.round((weight * 100) / 1024)));
        writeFileSync(join(this.dirs.cpu, 'cpu.weight'), String(scaled));
      } else {
        writeFileSync(join(this.dirs.cpu, 'cpu.shares'), String(Math.max(2, weight)));
      }
      return true;
    } catch {
      return false;
    }
  }

  /** Whether the kernel's OOM killer ended a task of the cell (read before `remove`). */
  oomKilled(): boolean {
    const file = this.version === 'v2' ? 'memory.events' : 'memory.oom_control';
    try {
      const count = /^oom_kill (\d+)$/m.exec(readFileSync(join(this.dirs.memory, file), 'latin1'))?.[1];
      return Number(count ?? 0) > 0;
    } catch {
      return false;
    }
  }

  /** Ends every task still in the cell (what a granted child process left), then removes it. */
  async remove(): Promise<void> {
    const dirs = unique(Object.values(this.dirs));
    try {
      for (let tries = 0; ; tries++) {
        this.kill();
        const busy = dirs.filter((dir) => existsSync(dir) && !tryRmdir(dir));
        if (busy.length === 0 || tries >= REMOVE_TRIES) return;
        await new Promise((resolve) => setTimeout(resolve, REMOVE_PAUSE_MS));
      }
    } finally {
      this.onRemoved();
    }
  }

  /** SIGKILL to every task in the cell. */
  kill(): void {
    if (this.version === 'v2' && writeIfExists(join(this.dirs.pids, 'cgroup.kill'), '1')) return;
    let pids: string[];
    try {
      pids = readFileSync(join(this.dirs.pids, 'cgroup.procs'), 'latin1').split('\n');
    } catch {
      return;
    }
    for (const pid of pids) {
      try {
        if (pid !== '') process.kill(Number(pid), 'SIGKILL');
      } catch {
        // Gone meanwhile.
      }
    }
  }
}

interface Mount {
  /** The path inside the hierarchy that is mounted (not `/` in a container that sees only its own). */
  readonly root: string;
  readonly point: string;
  readonly type: string;
  readonly options: readonly string[];
}

function parseMounts(mountinfo: string): Mount[] {
  const mounts: Mount[] = [];
  for (const line of mountinfo.split('\n')) {
    const [before, after] = line.split(' - ');
    if (before === undefined || after === undefined) continue;
    const fields = before.split(' ');
    const [type, , superOptions] = after.split(' ');
    const root = fields[3];
    const point = fields[4];
    if (root === undefined || point === undefined || type === undefined) continue;
    mounts.push({
      root: unescapeMount(root),
      point: unescapeMount(point),
      type,
      options: (superOptions ?? '').split(','),
    });
  }
  return mounts;
}

/** Controller list (`''` for v2) → this process's path in that hierarchy. */
function parseMembership(text: string): Map<string, string> {
  const membership = new Map<string, string>();
  for (const line of text.split('\n')) {
    const match = /^\d+:([^:]*):(.*)$/.exec(line);
    if (match === null) continue;
    const [, controllers = '', path = ''] = match;
    for (const controller of controllers.split(',')) membership.set(controller, path);
  }
  return membership;
}

function ownDir(mount: Mount, path: string | null): string | null {
  if (path === null) return null;
  if (mount.root === '/') return join(mount.point, path);
  if (path !== mount.root && !path.startsWith(`${mount.root}/`)) return null;
  return join(mount.point, path.slice(mount.root.length));
}

function delegableV2(dir: string, pid: number): string | null {
  try {
    const offered = readFileSync(join(dir, 'cgroup.controllers'), 'latin1').trim().split(' ');
    const missing = CONTROLLERS.filter((controller) => !offered.includes(controller));
    if (missing.length > 0) return `no ${missing.join(', ')} controller`;
    const enabled = readFileSync(join(dir, 'cgroup.subtree_control'), 'latin1').trim().split(' ');
    const off = CONTROLLERS.filter((controller) => !enabled.includes(controller));
    if (off.length > 0) appendFileSync(join(dir, 'cgroup.subtree_control'), off.map((name) => `+${name}`).join(' '));
  } catch (error) {
    return (error as NodeJS.ErrnoException).code ?? String(error);
  }
  return writable(dir, pid);
}

/** Whether a child cgroup can be made (and removed) here. */
function writable(dir: string, pid: number): string | null {
  const probe = join(dir, `sandpool-${pid}-0`);
  try {
    mkdirSync(probe);
    rmdirSync(probe);
    return null;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code ?? String(error);
  }
}

function writeIfExists(file: string, value: string): boolean {
  try {
    writeFileSync(file, value);
    return true;
  } catch {
    return false;
  }
}

/** The directories of a cgroup named `name` under `parents`, one per controller. */
function dirsOf(parents: CellDirs, name: string): CellDirs {
  const { cpuacct } = parents;
  return {
    memory: join(parents.memory, name),
    pids: join(parents.pids, name),
    cpu: join(parents.cpu, name),
    ...(cpuacct === undefined ? {} : { cpuacct: join(cpuacct, name) }),
  };
}

/** A nice-0 task's weight on cgroup v2's scale, and the most v2 takes. */
const NICE_0_WEIGHT = 100;
const MAX_WEIGHT = 10_000;

/** v1's cpu.shares for a v2 weight: 1024 is 100's, between the kernel's bounds. */
function sharesOf(weight: number): number {
  return Math.max(2, Math.min(262_144, Math.round((weight * 1024) / 100)));
}

/** Removes a cgroup and the cgroups in it, deepest first; one still holding a task stays, and so do those above it. */
function removeTree(dir: string): void {
  try {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (entry.isDirectory()) removeTree(join(dir, entry.name));
    }
  } catch {
    return;
  }
  tryRmdir(dir);
}

function tryRmdir(dir: string): boolean {
  try {
    rmdirSync(dir);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ENOENT';
  }
}

/** mountinfo escapes space, tab, newline and backslash as octal. */
function unescapeMount(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}

function unique<T>(items: readonly T[]): T[] {
  return [...new Set(items)];
}
