import { closeSync, existsSync, openSync, readSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import type { DemoteReason } from '../../types.js';
import { probeRaise, setNice } from '../workers/priority.js';
import type { CellCpu } from '../workers/sandbox/cage.js';
import { Sweep, type Swept } from './sweep.js';

/** How often each worker's CPU time is read (a kept-open fd, 12-18 µs a read). */
const SAMPLE_MS = 20;
/**
 * How often a worker with no call running is read: often enough to judge each background
 * window, and not 50 times a second for every idle worker (300 idle workers took 13% of the
 * main thread at the busy rate).
 */
const IDLE_SAMPLE_MS = 250;
/**
 * A quiet idle worker is read half as often each time it is found quiet, down to this: an
 * idle pool then costs a read per worker every few seconds, and a worker that starts burning
 * in the background is seen within this long, then read at IDLE_SAMPLE_MS again.
 */
const QUIET_SAMPLE_MS = 2_000;
/**
 * CPU under which an idle worker counts as quiet between two reads. Never zero: V8 and
 * libuv wake an idle thread now and then (a bare idle worker uses about 30 µs a second).
 */
export const QUIET_NS = 1_000_000;
/** A call that has used this much CPU is heavy: a candidate for demotion when busy keys outnumber cores. */
const HEAVY_CALL_MS = 10;
/** CPU a worker may burn with no call running, per window, before it is demoted; a second window evicts it. */
const BACKGROUND_MS = 100;
const BACKGROUND_WINDOW_MS = 1_000;
const DEMOTED_NICE = 19;
/** Linux reports a process's CPU in clock ticks of USER_HZ, 100 a second on every architecture Node runs on. */
const NS_PER_TICK = 1e7;

export interface CpuOptions {
  /** Demote CPU-heavy threads when busy keys outnumber cores. */
  readonly fairness: boolean;
  /** CPU one call may use; 0 = off. */
  readonly cpuTimeoutMs: number;
}

/** What the CPU governor reads of a worker it watches (a cell). */
export interface CpuWatched extends Swept {
  /** The oldest call its worker runs, or null: the one charged with the CPU since it became the oldest. */
  oldestCall(): object | null;
}

export interface CpuEvents<W> {
  /** CPU a key's worker used since the last sample. */
  used(cell: W, ms: number): void;
  demoted(cell: W, reason: DemoteReason): void;
  /** A call outran cpuTimeoutMs: its worker must end with `cpu`. */
  overran(cell: W, detail: string): void;
  /** A worker kept burning CPU with no call running: evict it. */
  idleBurner(cell: W): void;
  /** A demoted worker went idle and its priority cannot be raised back: recycle it. */
  recycle(cell: W): void;
}

interface Sampled {
  readonly tid: number;
  /** CPU one call may use (its key's, or the pool's); 0 = off. */
  readonly cpuTimeoutMs: number;
  /**
   * A child process, `tid` its pid: its CPU is every thread's (V8's, libuv's pool, any it
   * started), and its priority is set its own way (`prioritize`). Otherwise one worker thread.
   */
  readonly whole: boolean;
  /** A child process's own way to set its priority (its cgroup's CPU weight, or each thread's nice). */
  readonly prioritize: ((nice: number) => boolean) | null;
  readonly fd: number;
  /** What `fd` reads: see parseCpu. */
  readonly format: CpuFormat;
  /** Nanoseconds on CPU at the last sample. */
  total: number;
  /** The oldest call running at the last sample, and the CPU (ns) when it became the oldest. */
  oldest: object | null;
  oldestStart: number;
  demoted: DemoteReason | null;
  windowStart: number;
  windowCpu: number;
  /** When it was last read (performance.now()). */
  sampledAt: number;
  /** How long it may go unread while idle: doubles while it stays quiet. */
  idleInterval: number;
}

/**
 * Per-worker CPU, counted on the worker's own thread from /proc (the kernel's figure, also
 * between calls: timers, microtask loops), and what follows from it: cpuTimeoutMs, and with
 * `fairness`, a lowered priority for heavy threads so a quiet key's latency holds.
 */
export class CpuGovernor<W extends CpuWatched> {
  private readonly sampled = new Map<W, Sampled>();
  /** Room for a /proc/<pid>/stat line (52 fields) as well as a schedstat one. */
  private readonly buffer = Buffer.alloc(1024);
  private readonly sweep = new Sweep<W>(SAMPLE_MS, IDLE_SAMPLE_MS, {
    busy: (cells, now) => this.visitBusy(cells, now),
    idle: (cell, now) => this.visitIdle(cell, now),
  });
  /** Whether a lowered priority can be raised back here (CAP_SYS_NICE or RLIMIT_NICE), probed on first use. */
  private raisable: boolean | null = null;

  constructor(
    private readonly options: CpuOptions,
    private readonly events: CpuEvents<W>,
  ) {}

  /**
   * The TID a worker thread reported, checked: a thread of this process, not the main one,
   * not another worker's. Anything else is refused, and the worker goes unaccounted.
   */
  watch(cell: W, tid: number, cpuTimeoutMs = this.options.cpuTimeoutMs): boolean {
    if (!Number.isSafeInteger(tid) || tid <= 0 || tid === process.pid) return false;
    for (const other of this.sampled.values()) if (other.tid === tid) return false;
    if (!existsSync(`/proc/self/task/${tid}`)) return false;
    return this.open(cell, tid, null, `/proc/self/task/${tid}/schedstat`, cpuTimeoutMs);
  }

  /**
   * A child process, by the pid the host spawned it with (nothing it reported). Its whole
   * CPU: an agent that keeps libuv's pool busy (async `crypto.pbkdf2`, allowed under strict
   * permissions) burns CPU on threads other than its main one.
   */
  watchProcess(
    cell: W,
    pid: number,
    prioritize: (nice: number) => boolean,
    cpuTimeoutMs = this.options.cpuTimeoutMs,
    cellCpu: CellCpu | null = null,
  ): boolean {
    if (pid <= 0) return false;
    // In a cgroup, the kernel counts the cell's every task: the processes a granted
    // childProcess starts are counted as they run, not only once they are reaped.
    if (cellCpu !== null && this.open(cell, pid, prioritize, cellCpu.path, cpuTimeoutMs, cellCpu.format)) return true;
    return this.open(cell, pid, prioritize, `/proc/${pid}/stat`, cpuTimeoutMs, 'stat');
  }

  private open(
    cell: W,
    tid: number,
    prioritize: ((nice: number) => boolean) | null,
    path: string,
    cpuTimeoutMs: number,
    format: CpuFormat = 'schedstat',
  ): boolean {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch {
      return false;
    }
    const entry: Sampled = {
      tid,
      cpuTimeoutMs,
      whole: prioritize !== null,
      prioritize,
      fd,
      format,
      total: 0,
      oldest: null,
      oldestStart: 0,
      demoted: null,
      windowStart: 0,
      windowCpu: 0,
      sampledAt: performance.now(),
      idleInterval: IDLE_SAMPLE_MS,
    };
    entry.total = this.read(entry);
    entry.windowStart = performance.now();
    this.sampled.set(cell, entry);
    this.raisable ??= probeRaise(tid);
    this.sweep.add(cell);
    return true;
  }

  unwatch(cell: W): void {
    const entry = this.sampled.get(cell);
    if (entry === undefined) return;
    this.sampled.delete(cell);
    this.sweep.delete(cell);
    this.events.used(cell, (this.read(entry) - entry.total) / 1e6);
    closeSync(entry.fd);
  }

  /** The worker took a call: it is read at the busy rate until it is idle. */
  engaged(cell: W): void {
    this.sweep.engaged(cell);
  }

  /**
   * The CPU a worker thread has used, in ns: as of its last sample, or read afresh (kept out of
   * the accounting); null for a child process (its figure moves in 10 ms ticks) or one not watched.
   */
  threadNs(cell: W, fresh: boolean): number | null {
    const entry = this.sampled.get(cell);
    if (entry === undefined || entry.whole) return null;
    return fresh ? this.read(entry) : entry.total;
  }

  /** The worker's CPU now (ns), read apart from the samples; NaN when it is not watched. */
  cpuNs(cell: W): number {
    const entry = this.sampled.get(cell);
    return entry === undefined ? Number.NaN : this.read(entry);
  }

  /** The worker threads it watches: their CPU is their keys'. */
  ownedThreads(): Set<number> {
    const tids = new Set<number>();
    for (const entry of this.sampled.values()) if (!entry.whole) tids.add(entry.tid);
    return tids;
  }

  isDemoted(cell: W): boolean {
    return (this.sampled.get(cell)?.demoted ?? null) !== null;
  }

  /** The worker has no call left: a demoted one gets its priority back, or is recycled. */
  drained(cell: W): void {
    const entry = this.sampled.get(cell);
    if (entry === undefined) return;
    entry.oldest = null;
    entry.windowStart = performance.now();
    entry.windowCpu = 0;
    if (entry.demoted !== 'cpu-share') return;
    if (this.raisable === true && renice(entry, 0)) entry.demoted = null;
    else this.events.recycle(cell);
  }

  private visitIdle(cell: W, now: number): void {
    const entry = this.sampled.get(cell);
    // Half a visit's slack: a worker due at the next visit is read at this one.
    if (entry !== undefined && now - entry.sampledAt >= entry.idleInterval - IDLE_SAMPLE_MS / 2)
      this.sample(cell, entry, now, false);
  }

  private visitBusy(cells: ReadonlySet<W>, now: number): void {
    const crowded = cells.size > availableParallelism();
    for (const cell of cells) {
      const entry = this.sampled.get(cell);
      if (entry !== undefined) this.sample(cell, entry, now, crowded);
    }
  }

  private sample(cell: W, entry: Sampled, now: number, crowded: boolean): void {
    entry.sampledAt = now;
    const total = this.read(entry);
    const delta = total - entry.total;
    entry.total = total;
    const oldest = cell.oldestCall();
    entry.idleInterval =
      oldest === null && cell.busy === 0 && delta < QUIET_NS
        ? Math.min(entry.idleInterval * 2, QUIET_SAMPLE_MS)
        : IDLE_SAMPLE_MS;
    if (delta > 0) this.events.used(cell, delta / 1e6);
    if (oldest !== null) {
      // The oldest call is charged the thread's CPU since it became the oldest (to within a
      // sample); calls running beside it share that figure. After an idle stretch the last
      // read may be seconds old: that CPU was background work, not the call's.
      if (oldest !== entry.oldest) {
        if (entry.oldest === null) {
          entry.windowCpu += delta / 1e6;
          entry.oldestStart = total;
        } else {
          entry.oldestStart = total - delta;
        }
        entry.oldest = oldest;
      }
      const callMs = (total - entry.oldestStart) / 1e6;
      if (entry.cpuTimeoutMs > 0 && callMs > entry.cpuTimeoutMs) {
        this.events.overran(
          cell,
          `a call used ${Math.round(callMs)} ms of CPU, past cpuTimeoutMs ${entry.cpuTimeoutMs}`,
        );
        return;
      }
      if (this.options.fairness && crowded && entry.demoted === null && callMs > HEAVY_CALL_MS) {
        this.demote(cell, entry, 'cpu-share');
      }
      return;
    }
    entry.oldest = null;
    if (cell.busy > 0) return; // an answered call still within its abort grace
    entry.windowCpu += delta / 1e6;
    if (now - entry.windowStart < BACKGROUND_WINDOW_MS) return;
    const burning = entry.windowCpu > BACKGROUND_MS;
    entry.windowStart = now;
    entry.windowCpu = 0;
    if (!burning || !this.options.fairness) return;
    if (entry.demoted === 'background-cpu') this.events.idleBurner(cell);
    else this.demote(cell, entry, 'background-cpu');
  }

  private demote(cell: W, entry: Sampled, reason: DemoteReason): void {
    if (!renice(entry, DEMOTED_NICE)) return;
    entry.demoted = reason;
    this.events.demoted(cell, reason);
  }

  private read(entry: Sampled): number {
    try {
      const length = readSync(entry.fd, this.buffer, 0, this.buffer.length, 0);
      const text = this.buffer.toString('latin1', 0, length);
      const ns = parseCpu(entry.format, text);
      // A line that does not parse must not stick as NaN and switch accounting off.
      return Number.isFinite(ns) ? ns : entry.total;
    } catch {
      return entry.total; // the thread has gone: nothing more to count
    }
  }
}

/**
 * Nanoseconds on CPU, from a thread's schedstat (the first field), a process's stat, a v1
 * cgroup's cpuacct.usage (one number) or a v2 cgroup's cpu.stat (usage_usec).
 */
type CpuFormat = 'schedstat' | 'stat' | CellCpu['format'];

function parseCpu(format: CpuFormat, text: string): number {
  switch (format) {
    case 'schedstat':
      return Number(text.split(' ')[0]);
    case 'stat':
      return processNs(text);
    case 'ns':
      return Number(text.trim());
    case 'cpu.stat':
      return Number(/^usage_usec (\d+)$/m.exec(text)?.[1] ?? Number.NaN) * 1000;
  }
}

/**
 * utime + stime of /proc/<pid>/stat (fields 14 and 15), which count every thread of the
 * process, the ended ones too. The fields are read after the last ')': the command name
 * before it is the agent's to set (`process.title`) and may hold spaces and parentheses.
 */
function processNs(stat: string): number {
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * NS_PER_TICK;
}

/** Sets a worker thread's priority, or a child process's. */
function renice(entry: Sampled, nice: number): boolean {
  return entry.prioritize === null ? setNice(entry.tid, nice) : entry.prioritize(nice);
}
