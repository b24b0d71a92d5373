import { type Evictable, type EvictionName, type EvictionPolicy, evictionPolicy } from './eviction.js';

/** What the scheduler knows of a worker incarnation (a cell): queued for a slot, or holding one. */
export interface Slotted extends Evictable {
  readonly key: { readonly swarm: string };
  /** Order of first demand, which the queue keeps within a swarm. */
  readonly arrival: number;
  lastUsed: number;
  /** Ready with no call running. */
  readonly idle: boolean;
}

/** The books the scheduler reads: who holds a slot, by phase and by swarm (the census). */
export interface SlotBook<T> {
  /** Workers alive, draining and exiting ones included: what maxWorkers bounds. */
  readonly slotHolders: number;
  slotsOf(swarm: string): number;
  cells(phase: 'ready' | 'exiting' | 'stuck'): ReadonlySet<T>;
  withThread(): Iterable<T>;
}

/** What the scheduler asks of the cells' lifecycle and routes. */
export interface SlotUser<T> {
  /** A queued cell got a slot: give it a worker. */
  start(cell: T): void;
  /** Retire an idle cell to make room, or because it idled out. */
  evict(cell: T, reason: 'lru' | 'idle'): void;
  /** The cell is a reload candidate: never a victim. */
  isCandidate(cell: T): boolean;
  /** The cell serves a key whose candidate is loading: a victim only when nothing else can make room. */
  isBeingReplaced(cell: T): boolean;
  /** Heap and external bytes last read from the cell's worker; null before the first reading. */
  memoryOf(cell: T): number | null;
}

/** What a worker is expected to use before any has been read (an idle thread's heap is 4-6 MB). */
const FIRST_ESTIMATE_BYTES = 8 * 2 ** 20;

/**
 * Stuck threads a swarm may leave behind before it gets no new worker: each still holds
 * memory and perhaps a core, which a tenant must not multiply by retrying.
 */
export const MAX_STUCK_PER_SWARM = 2;

export interface SchedulerOptions {
  readonly maxWorkers: number;
  readonly eviction: EvictionName;
  /** maxMemoryMb in bytes, or null for no budget. */
  readonly memoryBudget: number | null;
  /** Slots one swarm may hold (maxWorkersPerSwarm). */
  readonly swarmCap: number;
  readonly idleTimeoutMs: number;
}

/**
 * How many idle workers to evict now: the cells waiting for a slot, less the slots that
 * workers already exiting will free. Exported so the rule can be held to by itself.
 */
export function evictionsNeeded(waiting: number, exiting: number): number {
  return Math.max(0, waiting - exiting);
}

/**
 * The slots under maxWorkers: who waits for one (round-robin across swarms, arrival order
 * within a swarm, no swarm above its cap), who gets one, which idle worker makes room
 * (least recently used; a swarm at its cap makes room from its own), and when an idle
 * worker has idled long enough.
 */
export class Scheduler<T extends Slotted> {
  /** Per swarm, its queued cells in arrival order; Map order is the round-robin turn. */
  private readonly queues = new Map<string, T[]>();
  /** Swarms that had a turn and wait for their next: new swarms are not ordered among them. */
  private readonly served = new Set<string>();
  private readonly idleTimers = new Map<T, { since: number; timer: NodeJS.Timeout | undefined }>();
  private useClock = 0;
  private readonly policy: EvictionPolicy;

  constructor(
    private readonly census: SlotBook<T>,
    private readonly options: SchedulerOptions,
    private readonly user: SlotUser<T>,
  ) {
    this.policy = evictionPolicy(options.eviction, options.maxWorkers);
  }

  /** The cell was just asked for. */
  touch(cell: T): void {
    cell.lastUsed = ++this.useClock;
    this.policy.touch(cell.keyHash);
  }

  enqueue(cell: T): void {
    const queue = this.queues.get(cell.key.swarm);
    if (queue === undefined) {
      this.addTurn(cell);
    } else {
      let index = queue.length;
      while (index > 0 && (queue[index - 1] as T).arrival > cell.arrival) index -= 1;
      queue.splice(index, 0, cell);
    }
    this.pump();
  }

  /**
   * A swarm that starts waiting takes its turn by arrival among the swarms that have not had
   * a turn yet: cells resolve their files concurrently, and a later key whose file was found
   * first must not overtake an earlier one.
   */
  private addTurn(cell: T): void {
    const turns = [...this.queues];
    let index = turns.length;
    while (index > 0) {
      const [swarm, queue] = turns[index - 1] as [string, T[]];
      const head = queue[0];
      if (this.served.has(swarm) || head === undefined || head.arrival < cell.arrival) break;
      index -= 1;
    }
    if (index === turns.length) {
      this.queues.set(cell.key.swarm, [cell]);
      return;
    }
    turns.splice(index, 0, [cell.key.swarm, [cell]]);
    this.queues.clear();
    for (const [swarm, queue] of turns) this.queues.set(swarm, queue);
  }

  dequeue(cell: T): void {
    const queue = this.queues.get(cell.key.swarm);
    const index = queue?.indexOf(cell) ?? -1;
    if (queue === undefined || index < 0) return;
    queue.splice(index, 1);
    if (queue.length === 0) this.dropTurn(cell.key.swarm);
  }

  private dropTurn(swarm: string): void {
    this.queues.delete(swarm);
    this.served.delete(swarm);
  }

  *queued(): Generator<T> {
    for (const queue of this.queues.values()) yield* queue;
  }

  get queuedCount(): number {
    let count = 0;
    for (const queue of this.queues.values()) count += queue.length;
    return count;
  }

  /** Hands free slots to queued cells, and evicts idle cells to make room for the rest. */
  pump(): void {
    for (let cell = this.next(); cell !== null; cell = this.next()) this.user.start(cell);
    if (this.queues.size === 0) return;
    // A swarm at its cap can only make room from its own workers.
    let eligible = 0;
    for (const [swarm, queue] of this.queues) {
      if (this.census.slotsOf(swarm) < this.options.swarmCap) {
        eligible += queue.length;
        continue;
      }
      const exiting = [...this.census.cells('exiting')].filter((cell) => cell.key.swarm === swarm).length;
      this.evict(evictionsNeeded(queue.length, exiting), (cell) => cell.key.swarm === swarm);
    }
    // Slots still free are room already: a queue that waits on memory, not on a slot, is
    // the budget's to make room for, by bytes.
    const free = Math.max(0, this.options.maxWorkers - this.census.slotHolders);
    this.evict(evictionsNeeded(eligible, this.census.cells('exiting').size + free), () => true);
    if (eligible > 0) this.evictForMemory();
  }

  /**
   * Bytes over the memory budget if one more worker started now: the workers alive (each at
   * its last reading, unread ones at the estimate; exiting ones too, as their memory is
   * still held) plus the estimate. Zero or less when it fits, and always when none is alive.
   */
  private memoryDeficit(): number {
    return this.memoryPicture()?.deficit ?? 0;
  }

  /**
   * The memory books for the budget, read once: the deficit (see memoryDeficit), what the
   * exiting workers will give back, and the estimate for a worker not yet read. Null with
   * no budget, or with no worker alive (one always runs).
   */
  private memoryPicture(): { deficit: number; freeing: number; estimate: number } | null {
    const budget = this.options.memoryBudget;
    if (budget === null || this.census.slotHolders === 0) return null;
    let read = 0;
    let readCount = 0;
    for (const cell of this.census.withThread()) {
      const bytes = this.user.memoryOf(cell);
      if (bytes === null) continue;
      read += bytes;
      readCount += 1;
    }
    const estimate = readCount === 0 ? FIRST_ESTIMATE_BYTES : read / readCount;
    const used = read + (this.census.slotHolders - readCount) * estimate;
    let freeing = 0;
    for (const cell of this.census.cells('exiting')) freeing += this.user.memoryOf(cell) ?? estimate;
    return { deficit: used + estimate - budget, freeing, estimate };
  }

  /**
   * Evicts idle workers, by the policy, until a queued cell's worker will fit the memory
   * budget once those already exiting are gone.
   */
  private evictForMemory(): void {
    const picture = this.memoryPicture();
    if (picture === null || picture.deficit <= 0) return;
    let deficit = picture.deficit - picture.freeing;
    const includeReplaced = this.mayEvictReplaced();
    while (deficit > 0) {
      const victim = this.victim(includeReplaced, () => true);
      if (victim === null) return;
      deficit -= this.user.memoryOf(victim) ?? picture.estimate;
      this.user.evict(victim, 'lru');
    }
  }

  /** Whether a worker whose key is reloading may go (see evict). */
  private mayEvictReplaced(): boolean {
    const othersWait = [...this.queued()].some((cell) => !this.user.isCandidate(cell));
    return othersWait || [...this.census.withThread()].every((cell) => this.user.isBeingReplaced(cell));
  }

  private evict(count: number, among: (cell: T) => boolean): void {
    if (count === 0) return;
    // A reload candidate does not evict the worker it is to replace: the old one keeps serving
    // until the new one is ready. Only when no other worker could ever make room (another key
    // waits, or every worker alive is being replaced) does it go first.
    const includeReplaced = this.mayEvictReplaced();
    for (let left = count; left > 0; left--) {
      const victim = this.victim(includeReplaced, among);
      if (victim === null) return;
      this.user.evict(victim, 'lru');
    }
  }

  /** The cell has no call running: it may idle out, and it may make room now. */
  cellIdle(cell: T): void {
    const entry = this.idleTimers.get(cell);
    if (entry === undefined) this.idleTimers.set(cell, { since: Date.now(), timer: undefined });
    else entry.since = Date.now();
    if (this.queues.size > 0) {
      this.pump();
      if (!cell.idle) return;
    }
    this.armIdleTimer(cell);
  }

  /** The cell is leaving (retired, killed, ended): no timer of its may fire. */
  forget(cell: T): void {
    clearTimeout(this.idleTimers.get(cell)?.timer);
    this.idleTimers.delete(cell);
    this.dequeue(cell);
  }

  /**
   * The cell to start now, if a slot is free: the first swarm in turn that is under its cap
   * gives up its first cell, then goes to the back of the turn.
   */
  private next(): T | null {
    if (this.census.slotHolders >= this.options.maxWorkers || this.memoryDeficit() > 0) return null;
    for (const [swarm, queue] of this.queues) {
      if (this.census.slotsOf(swarm) >= this.options.swarmCap || this.stuckIn(swarm) >= MAX_STUCK_PER_SWARM) continue;
      const cell = queue.shift() as T;
      this.dropTurn(swarm);
      if (queue.length > 0) {
        this.queues.set(swarm, queue);
        this.served.add(swarm);
      }
      return cell;
    }
    return null;
  }

  private stuckIn(swarm: string): number {
    let count = 0;
    for (const cell of this.census.cells('stuck')) if (cell.key.swarm === swarm) count += 1;
    return count;
  }

  /** The idle worker to evict, by the policy, among those that may go. */
  private victim(includeReplaced: boolean, among: (cell: T) => boolean): T | null {
    return this.policy.victim(this.evictable(includeReplaced, among));
  }

  private *evictable(includeReplaced: boolean, among: (cell: T) => boolean): Generator<T> {
    for (const cell of this.census.cells('ready')) {
      if (!cell.idle || !among(cell)) continue;
      if (this.user.isCandidate(cell) || (!includeReplaced && this.user.isBeingReplaced(cell))) continue;
      yield cell;
    }
  }

  /**
   * One timer per idle stretch, re-armed rather than reset on every call: a busy key's calls
   * only move `since`, and a timer that finds its cell busy simply lapses.
   */
  private armIdleTimer(cell: T): void {
    const timeout = this.options.idleTimeoutMs;
    const entry = this.idleTimers.get(cell);
    if (timeout === 0 || entry === undefined || entry.timer !== undefined) return;
    entry.timer = setTimeout(
      () => {
        entry.timer = undefined;
        if (this.idleTimers.get(cell) !== entry || !cell.idle) return;
        if (Date.now() - entry.since < timeout) return this.armIdleTimer(cell);
        this.idleTimers.delete(cell);
        this.user.evict(cell, 'idle');
      },
      Math.max(1, timeout - (Date.now() - entry.since)),
    );
    entry.timer.unref();
  }
}
