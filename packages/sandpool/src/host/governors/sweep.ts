/** What a sweep reads of a worker it visits (a cell). */
export interface Swept {
  /** Calls its worker runs: a busy worker is visited at the busy rate. */
  readonly busy: number;
}

export interface SweepVisits<W> {
  /** The busy workers, every `busyMs` while there is one. */
  busy(cells: ReadonlySet<W>, now: number): void;
  /** Each worker with no call running, every `idleMs`. */
  idle(cell: W, now: number): void;
}

/**
 * Visits a governor's workers at two rates, so an idle pool costs a visit per worker every
 * `idleMs` and nothing more: one timer walking every worker at the busy rate cost 300 idle
 * workers a few percent of the main thread. Which workers are busy is learnt from `engaged`
 * and checked against `busy` at every visit: an engagement missed is caught by the next idle
 * visit, and a worker that went idle leaves the busy set at the next busy visit.
 */
export class Sweep<W extends Swept> {
  private readonly all = new Set<W>();
  private readonly busy = new Set<W>();
  private busyTimer: NodeJS.Timeout | null = null;
  private idleTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly busyMs: number,
    private readonly idleMs: number,
    private readonly visits: SweepVisits<W>,
  ) {}

  add(cell: W): void {
    this.all.add(cell);
    if (this.idleTimer === null) this.idleTimer = unrefInterval(this.visitIdle, this.idleMs);
    if (cell.busy > 0) this.engaged(cell);
  }

  delete(cell: W): void {
    this.all.delete(cell);
    this.busy.delete(cell);
    if (this.all.size > 0) return;
    this.stopBusy();
    if (this.idleTimer !== null) clearInterval(this.idleTimer);
    this.idleTimer = null;
  }

  /** The worker took a call: it is visited at the busy rate from now on, until it is idle. */
  engaged(cell: W): void {
    if (!this.all.has(cell)) return;
    this.busy.add(cell);
    this.busyTimer ??= unrefInterval(this.visitBusy, this.busyMs);
  }

  private readonly visitBusy = (): void => {
    for (const cell of this.busy) if (cell.busy === 0) this.busy.delete(cell);
    if (this.busy.size === 0) {
      this.stopBusy();
      return;
    }
    this.visits.busy(this.busy, performance.now());
  };

  private readonly visitIdle = (): void => {
    const now = performance.now();
    for (const cell of this.all) {
      if (cell.busy > 0) this.engaged(cell);
      else if (!this.busy.has(cell)) this.visits.idle(cell, now);
    }
  };

  private stopBusy(): void {
    if (this.busyTimer !== null) clearInterval(this.busyTimer);
    this.busyTimer = null;
  }
}

function unrefInterval(run: () => void, ms: number): NodeJS.Timeout {
  const timer = setInterval(run, ms);
  timer.unref();
  return timer;
}
