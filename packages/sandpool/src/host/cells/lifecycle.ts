import {
  closed,
  type ExitReason,
  moduleLoad,
  quotaExceeded,
  type SandpoolError,
  snapshotRemoved,
  workerDied,
} from '../../errors.js';
import type { MemoryBeat } from '../../protocol/messages.js';
import type { FetchOption, HostOption } from '../../types.js';
import { hostCallsFor } from '../capabilities/capabilities.js';
import type { KeyQuota, Quotas } from '../capabilities/quotas.js';
import type { CpuGovernor } from '../governors/cpu.js';
import { IDLE_POLL_MS, type MemoryGovernor } from '../governors/memory.js';
import type { KeyPolicy } from '../policy/key-policy.js';
import type { Scheduler } from '../slots/scheduler.js';
import type { Spares } from '../slots/spares.js';
import type { Telemetry } from '../telemetry/telemetry.js';
import type { AgentWorker, RetireReason, ThreadEnd } from '../workers/agent-worker.js';
import type { Launcher, LaunchPlan } from '../workers/launch.js';
import { AgentProcess } from '../workers/process.js';
import type { Call } from './call.js';
import type { Cell, CellLife, CellPhase } from './cell.js';
import type { Redact } from './host-paths.js';
import { toSandpoolError } from './remote-error.js';

/** How often a worker the coordinator cannot probe reports its memory while calls run. */
const HEARTBEAT_MS = 20;

export interface LifecycleParts {
  readonly scheduler: Scheduler<Cell>;
  readonly spares: Spares;
  readonly memory: MemoryGovernor<Cell>;
  readonly cpu: CpuGovernor<Cell>;
  readonly launcher: Launcher;
  readonly host: HostOption;
  readonly fetch: FetchOption | undefined;
  readonly quotas: Quotas;
  /** The key's settings for a spawn (the `policy` option over the pool's); throws INVALID_OPTIONS. */
  readonly policy: (key: Cell['key']) => KeyPolicy;
  readonly abortGraceMs: number;
  /** Whether calls are observed now (their workers' CPU is read for them then). */
  readonly telemetry: Pick<Telemetry, 'measuring'>;
  readonly redact: Redact;
}

/**
 * What happens to cells, decided in one place: a cell is prepared (its file found, its plan
 * made) and queued, started when the scheduler gives it a slot, and ended one of three ways:
 * `retire` (the pool no longer wants it: an idle one ends now, a busy one drains first),
 * `kill` (it must end now, its calls failing with the reason), or its worker ending by
 * itself (`ended`). What that means for the key's calls and routing is its route's to decide
 * (CellRoute); the slots are the scheduler's; the workers' memory and CPU the governors'.
 */
export class Lifecycle implements CellLife {
  constructor(private readonly parts: LifecycleParts) {}

  /** Finds the module and makes the cell's plan, then waits for a slot: nothing is spawned for a key that has no file. */
  async prepare(cell: Cell): Promise<void> {
    let plan: Awaited<ReturnType<Launcher['plan']>>;
    try {
      // Before the plan: a live key's plan builds its artifact from the files as they are then.
      await cell.route.beforeLoad(cell);
      plan = await this.parts.launcher.plan(cell.key, this.parts.policy, cell.route.snapshot);
      const { policy } = plan;
      const { host, fetch } = this.parts;
      cell.host = hostCallsFor(policy.host ?? host, fetch, policy.fetch, cell.key, this.quotaOf(cell, policy));
      cell.policy = policy;
      cell.digest = plan.location.digest;
    } catch (error) {
      if (cell.phase.name !== 'resolving') return;
      const failure = toSandpoolError(error, cell.key.text, this.parts.redact);
      cell.route.prepareFailed(cell, failure);
      this.abandon(cell, failure);
      return;
    }
    const { phase } = cell;
    if (phase.name !== 'resolving') return;
    cell.transition({ name: 'queued', waiting: phase.waiting, plan });
    this.parts.scheduler.enqueue(cell);
  }

  /**
   * The key's quotas, its policy's from this spawn on. Calls that came before its first calls
   * quota are charged now: the first ones pass, those past its burst fail.
   */
  private quotaOf(cell: Cell, policy: KeyPolicy): KeyQuota {
    const { quotas } = this.parts;
    if (policy.quotas === undefined) return quotas.of(cell.key.text);
    const limited = quotas.of(cell.key.text).limitsCalls;
    const quota = quotas.configure(cell.key.text, policy.quotas);
    if (limited || !quota.limitsCalls) return quota;
    for (const call of [...(cell.waiting ?? [])]) {
      if (!quota.takeCall()) call.interrupt(quotaExceeded(cell.key.text), 'abort');
    }
    return quota;
  }

  /** The scheduler gave the cell a slot: it gets a worker (a spare if one fits) and loads. */
  start(cell: Cell): void {
    const { phase } = cell;
    if (phase.name !== 'queued') throw new Error(`sandpool: cannot start a ${phase.name} cell`);
    const { launcher, memory } = this.parts;
    const { plan } = phase;
    const { thread, from, folder } = this.workerFor(plan);
    const channel = cell.openChannel(thread, this.parts.abortGraceMs, this.parts.telemetry, this.parts.redact);
    cell.transition({
      name: 'starting',
      waiting: phase.waiting,
      thread,
      channel,
      from,
      startedAt: performance.now(),
      retiring: null,
    });
    const heartbeat = thread.isolation === 'thread' && memory.needsHeartbeat(plan.execArgv);
    const { resourceLimits, maxExternalMb } = plan.policy;
    memory.watch(cell, thread, heartbeat, {
      heapBytes: resourceLimits.maxOldGenerationSizeMb * 2 ** 20,
      externalBytes: maxExternalMb * 2 ** 20,
    });
    const beat = heartbeat ? { busyMs: HEARTBEAT_MS, idleMs: IDLE_POLL_MS } : null;
    thread.assign(cell.key, plan.access);
    thread.post(launcher.loadRequest(cell.key, plan, beat, folder));
    cell.route.loading(cell);
  }

  /** A spare where one fits, its key's folder shown to it (`folder`: where it reads it); else a worker booted for the plan. */
  private workerFor(plan: LaunchPlan): { thread: AgentWorker; from: 'cold' | 'spare'; folder: string } {
    const { launcher, spares } = this.parts;
    const { folder } = plan.location;
    const spare = launcher.fitsSpare(plan, spares.isolation) ? spares.take() : null;
    if (spare !== null) {
      try {
        return { thread: spare, from: 'spare', folder: spare.seeFolder(folder) };
      } catch {
        // Its folder cannot show the key's (removed from under it, or the root made read-only): it serves no key.
        spare.terminate({ retired: 'closed' });
        spares.refill();
      }
    }
    return { thread: launcher.boot(plan), from: 'cold', folder };
  }

  ready(cell: Cell, tid: number): void {
    const { phase } = cell;
    if (phase.name !== 'starting') return;
    const { cpu, spares } = this.parts;
    const { thread, channel, waiting } = phase;
    const cpuTimeoutMs = cell.policy?.cpuTimeoutMs;
    if (thread instanceof AgentProcess) {
      cpu.watchProcess(cell, thread.nodePid, (nice) => thread.prioritize(nice), cpuTimeoutMs, thread.cpuUsage());
    } else if (tid > 0) cpu.watch(cell, tid, cpuTimeoutMs);
    if (phase.from === 'cold' && thread.isolation === spares.isolation) {
      spares.booted(performance.now() - phase.startedAt);
    }
    cell.transition({ name: 'ready', thread, channel });
    this.startEnded(phase);
    if (cell.route.promote(cell)) return;
    for (const call of waiting) channel.post(call);
    if (phase.retiring !== null) {
      this.retire(cell, phase.retiring);
      return;
    }
    if (channel.busy === 0) this.drained(cell);
    cell.route.serves(cell);
  }

  loadTimedOut(cell: Cell): void {
    const { text } = cell.key;
    this.loadFailed(cell, moduleLoad(`${text} was still loading after ${cell.loadTimeoutMs} ms`, text));
  }

  loadFailed(cell: Cell, error: SandpoolError): void {
    if (cell.phase.name !== 'starting') return;
    cell.route.startFailed(cell, error);
    this.terminate(cell, { died: 'crash' });
  }

  /** Ends a worker now; its calls reject with WORKER_EXITED `reason` (and `cause`). */
  kill(cell: Cell, reason: Exclude<ExitReason, 'crash' | 'exit'>, cause: Error | null = null): void {
    const { phase } = cell;
    if (phase.name !== 'starting' && phase.name !== 'ready' && phase.name !== 'draining') return;
    if (phase.name === 'starting') cell.route.startFailed(cell, workerDied(cell.key.text, reason, cause, true));
    cell.route.detach(cell);
    this.terminate(cell, { died: reason }, cause);
  }

  /** The pool retires a cell: idle ones stop now, busy ones finish their calls first. */
  retire(cell: Cell, reason: RetireReason): void {
    const { phase } = cell;
    switch (phase.name) {
      case 'resolving':
      case 'queued': {
        if (reason === 'reload') {
          // New code took over before it got a slot (its key's worker died during a reload, and
          // a call opened it): its callers run on what now serves the key, as they would have.
          const calls = cell.takeWaiting();
          this.abandon(cell, closed(cell.key.text));
          for (const call of calls) cell.route.accept(call);
          return;
        }
        // Removed or closed: its callers asked too late.
        const { key } = cell;
        const error =
          reason === 'removed' && key.snapshot !== null
            ? snapshotRemoved(key.text, key.swarm, key.snapshot)
            : closed(key.text);
        this.abandon(cell, error);
        return;
      }
      case 'starting':
        cell.route.detach(cell);
        if (reason === 'closed') {
          answer(cell.takeWaiting(), closed(cell.key.text));
          this.terminate(cell, { retired: reason });
        } else {
          // Its callers asked before the retirement: it serves them once loaded, then drains.
          phase.retiring = reason;
        }
        return;
      case 'ready':
        cell.route.detach(cell);
        this.parts.scheduler.forget(cell);
        if (phase.channel.busy === 0) {
          this.terminate(cell, { retired: reason });
          return;
        }
        cell.transition({ name: 'draining', thread: phase.thread, channel: phase.channel, reason });
        if (reason === 'closed') phase.channel.signalAll('close');
        return;
      default:
        return;
    }
  }

  /** The scheduler makes room, or an idle worker idled out; a worker being replaced makes room for its candidate. */
  evict(cell: Cell, reason: 'lru' | 'idle'): void {
    if (reason === 'lru' && cell.route.yieldToCandidate(cell)) return;
    this.retire(cell, reason);
  }

  /** Tells the worker to end (`cause`: what its calls fail with); the cell waits for it, and calls it stuck if it does not end in time. */
  terminate(cell: Cell, end: ThreadEnd, cause: Error | null = null): void {
    const { phase } = cell;
    if (phase.name !== 'starting' && phase.name !== 'ready' && phase.name !== 'draining') return;
    this.unwatch(cell);
    cell.transition({ name: 'exiting', thread: phase.thread, channel: phase.channel, end });
    this.startEnded(phase);
    phase.thread.terminate(end, cause);
    this.resend(cell, phase.channel.takeDeferred(), end);
  }

  /** A cell that took a spare has left its start (ready, or failed): the spare is replaced now (see Spares.take). */
  private startEnded(phase: CellPhase): void {
    if (phase.name === 'starting' && phase.from === 'spare') this.parts.spares.refill();
  }

  /**
   * Calls that never reached a worker that is ending (they waited for a cancelled call's
   * grace) run on the key's next worker, once; when the pool closes or the snapshot goes,
   * they fail as the worker's other calls do.
   */
  private resend(cell: Cell, calls: readonly Call[], end: ThreadEnd): void {
    if (calls.length === 0) return;
    const { key } = cell;
    const ends = 'retired' in end && (end.retired === 'closed' || end.retired === 'removed');
    for (const call of calls) {
      if (!ends && !call.resent) {
        call.resent = true;
        cell.route.accept(call);
        continue;
      }
      const error =
        'died' in end
          ? workerDied(key.text, end.died, null, false)
          : end.retired === 'removed' && key.snapshot !== null
            ? snapshotRemoved(key.text, key.swarm, key.snapshot)
            : closed(key.text);
      call.settle(error);
    }
  }

  /**
   * terminate() did not end the thread (blocked in native code or a syscall). Its calls are
   * answered now, it gives up its slot, and `exit` fires when the thread really ends.
   */
  stuck(cell: Cell): void {
    const { phase } = cell;
    if (phase.name !== 'exiting') return;
    const key = cell.key.text;
    const { end } = phase;
    const error = 'died' in end ? workerDied(key, end.died, null, false) : closed(key);
    const running = phase.channel.drain();
    cell.transition({ name: 'stuck', thread: phase.thread, end });
    answer(running, error);
    this.parts.scheduler.pump();
  }

  ended(cell: Cell, end: ThreadEnd, failure: Error | null): void {
    const { phase } = cell;
    this.unwatch(cell);
    const key = cell.key.text;
    const death = 'died' in end ? end.died : null;
    if (phase.name === 'starting') cell.route.startFailed(cell, workerDied(key, death ?? 'exit', failure, true));
    cell.route.detach(cell);
    const exitError = death === null ? closed(key) : workerDied(key, death, failure, false);
    const running = cell.channel?.drain() ?? [];
    const unsent = cell.channel?.takeDeferred() ?? [];
    cell.transition({ name: 'ended', end });
    this.startEnded(phase);
    // A kill or a cpuTimeoutMs overrun is the pool's own doing, and a failed load has backed off already.
    const own = death === 'killed' || death === 'cpu' || phase.name === 'starting' || failedLoad(phase);
    // Before the route hears the cell is gone: a call resent keeps the route (and makes its next cell).
    this.resend(cell, unsent, end);
    cell.route.released(cell, death !== null && !own ? exitError : null);
    answer(running, exitError);
    this.parts.scheduler.pump();
  }

  /** A cell with no worker yet lost its last caller. */
  abandoned(cell: Cell): void {
    this.abandon(cell, closed(cell.key.text));
  }

  /** A cell with no worker yet ends; its waiting calls fail with `failure`. */
  abandon(cell: Cell, failure: SandpoolError): void {
    this.parts.scheduler.forget(cell);
    cell.route.detach(cell);
    answer(cell.takeWaiting(), failure);
    cell.transition({ name: 'ended', end: null });
    cell.route.released(cell, null);
  }

  engaged(cell: Cell): void {
    this.parts.memory.engaged(cell);
    this.parts.cpu.engaged(cell);
  }

  drained(cell: Cell): void {
    const { phase } = cell;
    if (phase.name === 'draining') {
      this.terminate(cell, { retired: phase.reason });
      return;
    }
    if (phase.name !== 'ready') return;
    phase.thread.setReferenced(false);
    this.parts.cpu.drained(cell);
    if (cell.phase.name !== 'ready') return; // recycled to get its priority back
    this.parts.scheduler.cellIdle(cell);
  }

  beat(cell: Cell, beat: MemoryBeat): void {
    this.parts.memory.beat(cell, beat);
  }

  cpuNs(cell: Cell): number {
    return this.parts.cpu.cpuNs(cell);
  }

  /** The slot, the memory and the CPU books no longer follow it. */
  private unwatch(cell: Cell): void {
    cell.host?.close();
    this.parts.scheduler.forget(cell);
    this.parts.memory.unwatch(cell);
    this.parts.cpu.unwatch(cell);
  }
}

/** A load that failed ended its worker with `crash` and has backed its key off already. */
function failedLoad(phase: CellPhase): boolean {
  return phase.name === 'exiting' && 'died' in phase.end && phase.end.died === 'crash';
}

function answer(calls: readonly Call[], error: SandpoolError): void {
  for (const call of calls) call.settle(error);
}
