import { resolve as resolvePath } from 'node:path';
import { type InvalidateSelector, type ResolvedPoolOptions, swarmCap } from '../../options.js';
import type { LiveSource } from '../../store/live.js';
import { digestOf } from '../../store/names.js';
import type { InvalidateReport, KeyStats, PoolEvents, PoolStats } from '../../types.js';
import { Dispatch } from '../calls/dispatch.js';
import { mayHaveCapabilities } from '../capabilities/capabilities.js';
import { Quotas } from '../capabilities/quotas.js';
import type { Cell } from '../cells/cell.js';
import { Census } from '../cells/census.js';
import { hostPaths } from '../cells/host-paths.js';
import { Lifecycle } from '../cells/lifecycle.js';
import { poolCgroups } from '../governors/cgroups.js';
import { CpuGovernor } from '../governors/cpu.js';
import { kernelMemoryBound, MemoryGovernor, v8HeapLimitMb } from '../governors/memory.js';
import { ProcessThreads } from '../governors/threads.js';
import { type KeyPolicy, keyPolicy } from '../policy/key-policy.js';
import { Backoff } from '../routes/backoff.js';
import { KeyBook } from '../routes/key-book.js';
import { PointerBook } from '../routes/pointers.js';
import { reloadMatching } from '../routes/reload.js';
import { RouteTable } from '../routes/table.js';
import { LiveWatcher } from '../routes/watch.js';
import { Scheduler } from '../slots/scheduler.js';
import { SpareDemand } from '../slots/spare-demand.js';
import { Spares } from '../slots/spares.js';
import { Telemetry } from '../telemetry/telemetry.js';
import { SPARE_LABEL, type ThreadSettings } from '../workers/agent-worker.js';
import { Launcher } from '../workers/launch.js';
import { labelledWriter } from '../workers/output.js';
import { refuseUnenforceableNetwork, sandboxEnds } from '../workers/permissions.js';
import { violations } from './invariants.js';
import { collectKeyStats } from './key-stats.js';

/** How often the pool looks at the snapshot names it serves for a move it did not see in a call (the bound it documents). */
const POINTER_CHECK_MS = 200;

type Emit = <E extends keyof PoolEvents>(event: E, ...args: PoolEvents[E]) => void;

/** What the pool's facade tells the core about its events. */
export interface PoolEmitter {
  emit: Emit;
  /** Whether the event has listeners now. */
  listens(event: keyof PoolEvents): boolean;
}

/**
 * The parts of one pool, wired: who tells whom is decided here, once, and the parts then
 * talk to each other directly. What is left here is what concerns the whole pool: its
 * stats, snapshot removal and close.
 */
export class PoolCore {
  readonly root: string;
  readonly dispatch: Dispatch;
  private readonly census: Census;
  private readonly scheduler: Scheduler<Cell>;
  private readonly spares: Spares;
  private readonly lifecycle: Lifecycle;
  private readonly launcher: Launcher;
  private readonly memory: MemoryGovernor<Cell>;
  private readonly cpu: CpuGovernor<Cell>;
  private readonly table: RouteTable;
  private readonly backoff = new Backoff();
  private readonly book = new KeyBook();
  private readonly quotas: Quotas;
  private readonly watcher: LiveWatcher | null;
  private readonly threads: ProcessThreads;
  private readonly pointers: PointerBook;
  private readonly pointerCheck: NodeJS.Timeout;
  private outputDropped = 0;
  private closing: Promise<void> | null = null;

  constructor(
    private readonly options: ResolvedPoolOptions,
    { emit, listens }: PoolEmitter,
    /** The artifact a swarm's live keys run from now, built off this thread. */
    live: LiveSource,
  ) {
    this.root = resolvePath(options.root);
    this.pointers = new PointerBook(this.root, options.snapshotSecret);
    const telemetry = new Telemetry(
      options.tracing,
      () => listens('call'),
      (record) => emit('call', record),
    );
    this.quotas = new Quotas(options.quotas);
    this.census = new Census(emit);
    const onOutputDropped = (chars: number, key: string): void => {
      this.outputDropped += chars;
      if (key !== SPARE_LABEL) this.book.outputDropped(key, chars);
    };
    const memoryLimits = {
      heapBytes: options.resourceLimits.maxOldGenerationSizeMb * 2 ** 20,
      externalBytes: options.maxExternalMb * 2 ** 20,
    };
    this.memory = new MemoryGovernor<Cell>(
      memoryLimits,
      (cell, detail) => this.lifecycle.kill(cell, 'oom', new Error(detail)),
      (cell, fresh) => this.cpu.threadNs(cell, fresh),
    );
    this.cpu = new CpuGovernor<Cell>(options, {
      used: (cell, ms) => this.book.cpu(cell.key.text, ms),
      demoted: (cell, reason) => emit('demote', { key: cell.key.text, reason, ...cell.worker }),
      overran: (cell, detail) => this.lifecycle.kill(cell, 'cpu', new Error(detail)),
      idleBurner: (cell) => this.lifecycle.retire(cell, 'cpu'),
      recycle: (cell) => this.lifecycle.retire(cell, 'cpu'),
    });
    const output = options.onOutput ?? labelledWriter((key) => onOutputDropped(1, key));
    const settingsFor = ({ env, resourceLimits }: Pick<KeyPolicy, 'env' | 'resourceLimits'>): ThreadSettings => ({
      env,
      // The governor ends a worker at its budget; V8's own limit is the backstop above it.
      resourceLimits: this.memory.active
        ? { ...resourceLimits, maxOldGenerationSizeMb: v8HeapLimitMb(resourceLimits.maxOldGenerationSizeMb) }
        : resourceLimits,
      output,
      onOutputDropped,
    });
    const launcher = new Launcher(
      options,
      this.root,
      settingsFor(options),
      { cgroups: poolCgroups, memoryBytes: kernelMemoryBound(memoryLimits) },
      live,
      settingsFor,
      kernelMemoryBound,
    );
    this.launcher = launcher;
    // Before anything starts: a spare, or the stage a spare cell needs.
    try {
      refuseUnenforceableNetwork(options, launcher.sandbox.layers);
    } catch (error) {
      // No pool will close its sandbox: its cgroup goes now.
      void launcher.sandbox.close();
      throw error;
    }
    // With isolation a function of the key, which kind the next key needs is unknown: threads.
    const spareIsolation = options.isolation === 'process' ? 'process' : 'thread';
    // A spare's flags are fixed at boot: strict spares are kept once a key could take one (a
    // pool of keys none of which can boots none), blank ones from the start.
    const spareKind = launcher.spareKind(spareIsolation);
    const demand = new SpareDemand(
      spareKind === null ? 0 : options.spareWorkers,
      undefined,
      spareKind === 'strict' ? 'first-miss' : 'start',
    );
    this.spares = new Spares(demand, spareIsolation, () => launcher.bootSpare(spareIsolation));
    this.scheduler = new Scheduler<Cell>(
      this.census,
      {
        ...options,
        swarmCap: swarmCap(options),
        memoryBudget: options.maxMemoryMb === undefined ? null : options.maxMemoryMb * 2 ** 20,
      },
      {
        start: (cell) => this.lifecycle.start(cell),
        evict: (cell, reason) => this.lifecycle.evict(cell, reason),
        isCandidate: (cell) => cell.route.isCandidate(cell),
        isBeingReplaced: (cell) => cell.route.isBeingReplaced(cell),
        memoryOf: (cell) => {
          const reading = this.memory.lastReading(cell);
          return reading === null ? null : reading.heap + reading.external;
        },
      },
    );
    this.lifecycle = new Lifecycle({
      scheduler: this.scheduler,
      spares: this.spares,
      memory: this.memory,
      cpu: this.cpu,
      launcher,
      host: options.host,
      fetch: options.fetch,
      quotas: this.quotas,
      policy: (key) => keyPolicy(options, key),
      abortGraceMs: options.abortGraceMs,
      telemetry,
      redact: hostPaths(this.root),
    });
    const sandboxEnd = typeof options.permissions === 'object' ? sandboxEnds(options.permissions) : null;
    if (sandboxEnd !== null) process.emitWarning(sandboxEnd, { code: 'SANDPOOL_SANDBOX_ENDED' });
    const watcher = options.watch
      ? new LiveWatcher(this.root, (swarm) => {
          if (this.closing === null) void this.invalidate({ swarm });
        })
      : null;
    this.watcher = watcher;
    this.table = new RouteTable({
      root: this.root,
      census: this.census,
      lifecycle: this.lifecycle,
      scheduler: this.scheduler,
      backoff: this.backoff,
      book: this.book,
      watcher,
      queueTimeoutMs: options.queueTimeoutMs,
      loadTimeoutMs: options.loadTimeoutMs,
      closing: () => this.closing !== null,
      liveCellEnded: (swarm) => {
        if (watcher !== null && !this.hasLiveCell(swarm)) watcher.unwatch(swarm);
      },
      emit,
    });
    this.dispatch = new Dispatch(
      this.table,
      this.backoff,
      options,
      this.census.slotWaiters,
      () => this.closing !== null,
      mayHaveCapabilities(options),
      this.quotas,
      telemetry,
      this.pointers,
    );
    this.pointerCheck = setInterval(() => this.checkPointers(), POINTER_CHECK_MS);
    this.pointerCheck.unref();
    this.threads = new ProcessThreads(() => this.cpu.ownedThreads());
    this.spares.fill();
    const { layers } = launcher.sandbox;
    // After createPool has returned, so a listener added then hears it.
    if (layers !== null) queueMicrotask(() => emit('sandbox', layers));
  }

  invalidate(selector: InvalidateSelector): Promise<InvalidateReport> {
    return reloadMatching(this.table, this.backoff, selector, () => this.closing !== null);
  }

  /**
   * A snapshot name any process sharing the store moved (point, or remove and create): its
   * routes of the old content take no new call and drain. Calls see a move at once (admission
   * reads the name); this check retires routes no call reaches, within POINTER_CHECK_MS.
   */
  private checkPointers(): void {
    const served = new Set<string>();
    for (const route of [...this.table.values()]) {
      const { key } = route;
      if (key.snapshot === null) continue;
      served.add(`${key.swarm}@${key.snapshot}`);
      let digest: string | null;
      try {
        digest = digestOf(this.pointers.resolve(key));
      } catch {
        digest = null; // removed, or no longer readable: its workers must not serve it
      }
      if (digest !== route.digest) this.table.supersede(route);
    }
    this.pointers.keepOnly(served);
  }

  private hasLiveCell(swarm: string): boolean {
    for (const cell of this.census.withThread())
      if (cell.key.swarm === swarm && cell.key.snapshot === null) return true;
    return false;
  }

  /** Calls to the snapshot fail while its workers drain and its files go; then it is gone. */
  async removeSnapshot(swarm: string, name: string, removeFiles: () => Promise<void>): Promise<void> {
    const id = `${swarm}@${name}`;
    this.dispatch.removing.add(id);
    try {
      const ended: Promise<void>[] = [];
      for (const route of [...this.table.values()]) {
        if (route.key.swarm !== swarm || route.key.snapshot !== name) continue;
        for (const cell of [route.serving, route.candidate]) {
          if (cell === null) continue;
          ended.push(cell.released);
          this.lifecycle.retire(cell, 'removed');
        }
      }
      await Promise.all(ended);
      await removeFiles();
    } finally {
      this.dispatch.removing.delete(id);
    }
  }

  stats(): PoolStats {
    let busy = 0;
    let idle = 0;
    let queued = this.census.slotWaiters.size;
    for (const cell of this.census.withThread()) {
      if (cell.busy > 0) busy += 1;
      else if (cell.idle) idle += 1;
    }
    for (const cell of this.census.cells('starting')) queued += cell.waiting?.length ?? 0;
    const { spawned, retired, died } = this.census.totals;
    return {
      workers: this.census.slotHolders,
      stuck: this.census.cells('stuck').size,
      spares: this.spares.size,
      busy,
      idle,
      queued,
      preparing: this.census.cells('resolving').size,
      outputDropped: this.outputDropped,
      spawned,
      retired: { ...retired },
      died: { ...died },
      unattributedCpu: this.threads.unattributed(),
      sandbox: this.launcher.sandbox.layers,
    };
  }

  /** Per key: CPU, memory, calls, errors, in flight, queued, demoted, latency (see KeyStats). */
  keyStats(): KeyStats[] {
    return collectKeyStats({
      book: this.book,
      routes: this.table.byKey,
      cells: this.census.withThread(),
      memory: (cell) => this.memory.lastReading(cell),
      demoted: (cell) => this.cpu.isDemoted(cell),
      quotas: this.quotas,
    });
  }

  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    clearInterval(this.pointerCheck);
    this.watcher?.close();
    for (const phase of ['resolving', 'queued'] as const) {
      for (const cell of [...this.census.cells(phase)]) this.lifecycle.retire(cell, 'closed');
    }
    const released = [...this.census.withThread()].map((cell) => cell.released);
    for (const cell of [...this.census.withThread()]) this.lifecycle.retire(cell, 'closed');
    const sparesEnded = this.spares.close();
    const closeTimer = setTimeout(() => {
      for (const cell of [...this.census.cells('draining')]) this.lifecycle.terminate(cell, { retired: 'closed' });
    }, this.options.closeTimeoutMs);
    await Promise.all([...released, sparesEnded]);
    clearTimeout(closeTimer);
    await this.launcher.close();
  }

  /** Every rule the books must obey, checked from scratch; empty when all hold. */
  violations(): string[] {
    return violations({
      census: this.census,
      queued: [...this.scheduler.queued()],
      routes: this.table.byKey,
      superseded: this.table.draining,
      maxWorkers: this.options.maxWorkers,
    });
  }
}
