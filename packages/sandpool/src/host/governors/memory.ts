import type { AgentWorker } from '../workers/agent-worker.js';
import { type MemoryProbe, type MemoryReading, memoryProbe } from '../workers/memory-probe.js';
import { underPermissionModel } from '../workers/permissions.js';
import { QUIET_NS } from './cpu.js';
import { Sweep, type Swept } from './sweep.js';

/** How often a busy worker's memory is read: objects grow at up to ~0.5 GB/s, doubling strings faster. */
const BUSY_POLL_MS = 10;
/** An idle worker can still allocate (timers), but reading it this often would cost more than it finds. */
export const IDLE_POLL_MS = 250;

export interface MemoryLimits {
  /** Heap bytes a worker may use: `resourceLimits.maxOldGenerationSizeMb`. */
  readonly heapBytes: number;
  /** Bytes outside the heap (ArrayBuffers…): `maxExternalMb`. */
  readonly externalBytes: number;
}

/**
 * V8's own limit for a worker whose heap the governor watches. When a worker reaches its
 * V8 limit, Node allows it 16 MB more to finish the collection in progress; a doubling Map
 * or string needs more, and V8 then aborts the whole process (nodejs/node#47224). So V8's
 * limit sits well above the budget the governor enforces: 3x it, 4x from 256 MB up, which
 * contained every growth pattern measured, 10 of 10 runs each, on Node 20 and 24. The limit
 * reserves nothing: a worker only gets near it when one synchronous allocation outruns the
 * governor.
 */
export function v8HeapLimitMb(budgetMb: number): number {
  return Math.max(budgetMb * (budgetMb >= 256 ? 4 : 3), budgetMb + LARGEST_ALLOCATION_MB);
}

/**
 * The most V8 allocates in one step for agent code: a FixedArray at its maximum length
 * (about 2^27 slots of 8 bytes) or a two-byte string at its maximum length, about 1 GB
 * each. With V8's limit this far above the budget, one such allocation lands under it and
 * the governor ends the worker; at 3x a 64 or 128 MB budget, `new Array(1e8).fill(0)`
 * reached V8's limit first and aborted the whole process on Node 24 and 26.
 */
const LARGEST_ALLOCATION_MB = 1280;

/**
 * A child process's resident memory beyond its heap and external budgets that is still its
 * runtime's, not the agent's: Node itself, sandpool's worker runtime, code. Measured about
 * 45 MB idle on Node 20 and 24.
 */
const PROCESS_RUNTIME_BYTES = 96 * 2 ** 20;

/**
 * Room in a process cell's kernel bound above the governor's line (heap + external + runtime),
 * so the governor ends a cell with its own message and the kernel is only the backstop.
 */
const KERNEL_MARGIN_BYTES = 64 * 2 ** 20;

/** What the kernel holds a process cell to (its cgroup, else RLIMIT_DATA): the governor's line, and a margin above it. */
export function kernelMemoryBound(limits: MemoryLimits): number {
  return processLine(limits) + KERNEL_MARGIN_BYTES;
}

/** Where the governor ends a process: both budgets and its runtime. */
function processLine({ heapBytes, externalBytes }: MemoryLimits): number {
  return heapBytes + externalBytes + PROCESS_RUNTIME_BYTES;
}

/**
 * Growth of the process's RSS after which every idle worker is read, quiet or not: memory can
 * grow on a thread other than the worker's own (libuv's pool fills a buffer an agent asked
 * for), so a quiet worker thread does not prove a worker that did not grow.
 */
const RSS_GROWTH_BYTES = 32 * 2 ** 20;

/** How often an idle heartbeat worker is asked for a beat where its thread's CPU cannot be read. */
const QUIET_ASK_MS = 2_000;

/** A heartbeat this late, from a busy worker, means it is stuck in synchronous code. */
const BEAT_MISSED_MS = 100;

interface Watched {
  readonly thread: AgentWorker;
  /** Its key's budgets (its policy's, or the pool's). */
  readonly limits: MemoryLimits;
  /** Read by the coordinator's probe, or reported by the worker's heartbeat. */
  readonly source: 'probe' | 'heartbeat';
  reading: boolean;
  lastRead: number;
  /** Process RSS at the last heartbeat: growth past the budget while beats are missed is this worker's. */
  rssAtBeat: number;
  /** When a busy visit first saw it busy (heartbeat only): an idle worker beats slowly, so a wait counts from here. */
  busySince: number | null;
  /** The thread's CPU (ns) once its last reading was in, or null where it cannot be read. */
  cpuAtRead: number | null;
}

/**
 * Stops a worker before V8 does: reads each worker's heap and external memory from the
 * coordinator (the worker's cooperation is not needed, and the reads answer while it spins)
 * and ends it with `oom` past its budget.
 */
export class MemoryGovernor<W extends Swept> {
  readonly probe: MemoryProbe | null = memoryProbe();
  private readonly watched = new Map<W, Watched>();
  /** The process's RSS when idle workers were last all read, and the visit that decided (its `now`). */
  private rssMark = process.memoryUsage.rss();
  private rssVisit = -1;
  private rssGrew = false;
  private readonly sweep = new Sweep<W>(BUSY_POLL_MS, IDLE_POLL_MS, {
    busy: (cells, now) => this.visitBusy(cells, now),
    idle: (cell, now) => this.visitIdle(cell, now),
  });

  constructor(
    private readonly limits: MemoryLimits,
    private readonly onBreach: (cell: W, detail: string) => void,
    /**
     * A worker thread's CPU (ns) as of the CPU governor's last sample, or read afresh; null
     * where it cannot be read. A thread that ran no code since its last reading cannot have
     * grown, so an idle one is read only once it ran: reading every idle worker interrupts
     * each, and 300 idle workers cost 4x the CPU of 300 bare ones.
     */
    private readonly cpuNs: (cell: W, fresh: boolean) => number | null,
  ) {}

  get active(): boolean {
    return this.probe !== null;
  }

  /**
   * Whether a worker started with these flags can be probed: under the permission model a
   * worker has no inspector, so where the probe is the inspector (Node 20) it must beat.
   */
  needsHeartbeat(execArgv: readonly string[]): boolean {
    return this.probe?.kind === 'inspector' && underPermissionModel(execArgv);
  }

  /** Watches a cell's worker against `limits` (a key's own, from its policy), or the pool's. */
  watch(cell: W, thread: AgentWorker, heartbeat: boolean, limits: MemoryLimits = this.limits): void {
    if (this.probe === null) return;
    this.watched.set(cell, {
      thread,
      limits,
      source: heartbeat ? 'heartbeat' : 'probe',
      reading: false,
      lastRead: performance.now(),
      rssAtBeat: process.memoryUsage.rss(),
      busySince: null,
      cpuAtRead: null,
    });
    this.sweep.add(cell);
  }

  unwatch(cell: W): void {
    this.watched.delete(cell);
    this.sweep.delete(cell);
  }

  /** The worker took a call: its memory is read at the busy rate until it is idle. */
  engaged(cell: W): void {
    this.sweep.engaged(cell);
  }

  /** The last figures read for a cell's worker, for keyStats(). */
  private readonly last = new WeakMap<W, MemoryReading>();

  lastReading(cell: W): MemoryReading | null {
    return this.last.get(cell) ?? null;
  }

  /** A heartbeat from a worker that cannot be probed. */
  beat(cell: W, reading: MemoryReading): void {
    const entry = this.watched.get(cell);
    if (entry?.source !== 'heartbeat') return;
    entry.lastRead = performance.now();
    entry.rssAtBeat = process.memoryUsage.rss();
    this.last.set(cell, reading);
    this.check(cell, entry.limits, reading);
  }

  private visitBusy(cells: ReadonlySet<W>, now: number): void {
    let rss = -1;
    for (const cell of cells) {
      const entry = this.watched.get(cell);
      if (entry === undefined) continue;
      if (entry.source === 'probe') {
        this.read(cell, entry, now);
        continue;
      }
      if (entry.busySince === null) {
        // Its last beat may be seconds old: the wait for the next, and the growth, count from now.
        entry.busySince = now;
        if (rss < 0) rss = process.memoryUsage.rss();
        entry.rssAtBeat = rss;
      }
      if (now - Math.max(entry.lastRead, entry.busySince) < BEAT_MISSED_MS) continue;
      // Degraded (Node 20 under the permission model): a busy worker that stopped beating
      // while the process grew past its budget is taken to be the one growing.
      if (rss < 0) rss = process.memoryUsage.rss();
      if (rss - entry.rssAtBeat > entry.limits.heapBytes) {
        this.unwatch(cell);
        this.onBreach(cell, `missed its heartbeat while the process grew ${mb(rss - entry.rssAtBeat)} MB`);
      }
    }
  }

  private visitIdle(cell: W, now: number): void {
    const entry = this.watched.get(cell);
    if (entry === undefined) return;
    if (entry.source === 'heartbeat') {
      entry.busySince = null;
      this.askBeat(cell, entry, now);
      return;
    }
    const quiet = entry.cpuAtRead !== null && (this.cpuNs(cell, false) ?? Infinity) - entry.cpuAtRead < QUIET_NS;
    if (quiet && !this.processGrew(now)) return;
    this.read(cell, entry, now);
  }

  /**
   * An idle heartbeat worker whose memory stays put stops beating (worker/heartbeat.ts): it is
   * asked for a beat once its thread ran since it was last asked, or the process grew. Where
   * the thread's CPU cannot be read, it is asked every QUIET_ASK_MS, as it used to beat.
   */
  private askBeat(cell: W, entry: Watched, now: number): void {
    const cpu = this.cpuNs(cell, false);
    const ran =
      cpu === null
        ? now - entry.lastRead >= QUIET_ASK_MS
        : entry.cpuAtRead === null || cpu - entry.cpuAtRead >= QUIET_NS;
    if (!ran && !this.processGrew(now)) return;
    // Read before the beat: the beat's own CPU (well under QUIET_NS) does not count as running.
    entry.cpuAtRead = this.cpuNs(cell, true);
    entry.lastRead = now;
    entry.thread.post({ t: 'beat' });
  }

  /** Whether the process grew by RSS_GROWTH_BYTES since the last time it did: asked once per idle sweep. */
  private processGrew(now: number): boolean {
    if (this.rssVisit === now) return this.rssGrew;
    this.rssVisit = now;
    const rss = process.memoryUsage.rss();
    this.rssGrew = rss - this.rssMark > RSS_GROWTH_BYTES;
    if (this.rssGrew || rss < this.rssMark) this.rssMark = rss;
    return this.rssGrew;
  }

  private read(cell: W, entry: Watched, now: number): void {
    const probe = this.probe;
    if (probe === null || entry.reading) return;
    entry.reading = true;
    entry.lastRead = now;
    entry.thread
      .readMemory(probe)
      .then((reading) => {
        // Taken after the read, whose own cost on the worker must not count as the worker running.
        entry.cpuAtRead = this.cpuNs(cell, true);
        this.last.set(cell, reading);
        if (this.watched.get(cell) !== entry) return;
        if (entry.thread.isolation === 'process') this.checkProcess(cell, entry.limits, reading);
        else this.check(cell, entry.limits, reading);
      })
      .catch(() => {
        // The worker is exiting, or the probe lost it: its exit settles everything.
      })
      .finally(() => {
        entry.reading = false;
      });
  }

  /** A process's one figure is its RSS (see AgentProcess.readMemory): held to both budgets and its runtime. */
  private checkProcess(cell: W, limits: MemoryLimits, { heap: rss }: MemoryReading): void {
    const limit = processLine(limits);
    if (rss <= limit) return;
    this.unwatch(cell);
    this.onBreach(cell, `resident memory ${mb(rss)} MB past its ${mb(limit)} MB budget`);
  }

  private check(cell: W, limits: MemoryLimits, { heap, external }: MemoryReading): void {
    const { heapBytes, externalBytes } = limits;
    if (heap > heapBytes) {
      this.unwatch(cell);
      this.onBreach(cell, `heap ${mb(heap)} MB past its ${mb(heapBytes)} MB budget`);
    } else if (external > externalBytes) {
      this.unwatch(cell);
      this.onBreach(cell, `external memory ${mb(external)} MB past its ${mb(externalBytes)} MB budget`);
    }
  }
}

function mb(bytes: number): number {
  return Math.round(bytes / 2 ** 20);
}
