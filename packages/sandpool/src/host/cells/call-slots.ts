import type { Call } from './call.js';

/** A slot whose call was answered (timed out, aborted) while its agent may still run. */
const CANCELLED = null;

/**
 * The calls in flight on one worker, by id. An id is a slot taken from a free list and given
 * back once the worker can no longer answer it, so ids stay small and the table stays one
 * array. Ids from a counter in a Map made every call cost the main thread's garbage
 * collector: the Map's hash tables, rebuilt as the ids grew, were promoted to the old
 * generation and kept the calls they had held alive through each scavenge, so a fifth of
 * every call's allocations (234 of 1,250 bytes) was promoted, and scavenges took 40% of the
 * main thread at 64 calls in flight. With slots, 2% of what the Map promoted is.
 *
 * A slot is reused only after its worker answered its call or was told it no longer needs to
 * (a cancel stays CANCELLED until the agent settles), so a late answer never reaches a newer
 * call. Only a worker that breaks the protocol (answering one call twice) can misroute an
 * answer, and then only among its own key's calls.
 */
export class CallSlots {
  /** By id − 1: the running call, CANCELLED, or undefined for a free slot. */
  private slots: (Call | typeof CANCELLED | undefined)[] = [];
  private free: number[] = [];
  private running = 0;
  /** Posting order: the oldest running call has the smallest. */
  private posted = 0;

  /** Calls running: their ids are taken and they have not settled. */
  get size(): number {
    return this.running;
  }

  /** Gives the call an id and holds it. */
  add(call: Call): void {
    const id = this.free.pop() ?? this.slots.push(undefined);
    call.id = id;
    call.seq = ++this.posted;
    this.slots[id - 1] = call;
    this.running += 1;
  }

  /** Whether the id was ever given out: an answer to any other is a forgery. */
  issued(id: number): boolean {
    return id >= 1 && id <= this.slots.length;
  }

  /** The call running under the id, if one does now. */
  get(id: number): Call | undefined {
    return this.slots[id - 1] ?? undefined;
  }

  /** The call settled: its id is free. */
  settle(call: Call): void {
    if (this.slots[call.id - 1] !== call) return;
    this.slots[call.id - 1] = undefined;
    this.free.push(call.id);
    this.running -= 1;
  }

  /** The call was answered but its agent may run on: its id stays taken until release(). */
  cancel(call: Call): void {
    if (this.slots[call.id - 1] !== call) return;
    this.slots[call.id - 1] = CANCELLED;
    this.running -= 1;
  }

  /** A cancelled call's agent settled: its id is free. */
  release(id: number): void {
    if (this.slots[id - 1] !== CANCELLED) return;
    this.slots[id - 1] = undefined;
    this.free.push(id);
  }

  /** The call that has run longest; null when none runs. */
  oldest(): Call | null {
    let oldest: Call | null = null;
    for (const call of this.slots) if (call && (oldest === null || call.seq < oldest.seq)) oldest = call;
    return oldest;
  }

  /** The running calls, in no particular order. */
  calls(): Call[] {
    const calls: Call[] = [];
    for (const call of this.slots) if (call) calls.push(call);
    return calls;
  }

  /** Forgets every call and id: the worker is gone. */
  clear(): void {
    this.slots = [];
    this.free = [];
    this.running = 0;
  }
}
