import { createHash } from 'node:crypto';

export interface SwarmUser {
  readonly uid: number;
  readonly gid: number;
}

interface Assignment {
  readonly user: SwarmUser;
  /** Cells of the swarm whose process has not ended yet. */
  holders: number;
}

/**
 * A uid and gid (equal) per swarm, from a range: where the swarm's name hashes to, else the
 * next free one up (wrapping), so two swarms of this pool never share one. A swarm keeps its
 * uid while the pool lives; only when the range is full does a swarm with no process left
 * give its uid up to a new one (the oldest such first). The first of two colliding swarms
 * keeps the hashed uid; the other's depends on the order they came in.
 */
export class SwarmIds {
  private readonly bySwarm = new Map<string, Assignment>();
  private readonly taken = new Set<number>();

  constructor(private readonly range: readonly [number, number]) {}

  get size(): number {
    return this.range[1] - this.range[0] + 1;
  }

  /** The swarm's user, held until `release`; throws when every uid is held by a running swarm. */
  acquire(swarm: string): SwarmUser {
    const known = this.bySwarm.get(swarm);
    if (known !== undefined) {
      known.holders += 1;
      // Most recently used last: the first with no holders is the one to give up.
      this.bySwarm.delete(swarm);
      this.bySwarm.set(swarm, known);
      return known.user;
    }
    if (this.taken.size >= this.size) this.forgetIdle();
    const uid = this.freeFrom(this.hashed(swarm));
    const assignment: Assignment = { user: { uid, gid: uid }, holders: 1 };
    this.taken.add(uid);
    this.bySwarm.set(swarm, assignment);
    return assignment.user;
  }

  /** The uid the swarm has, or would get now (nothing is held). */
  peek(swarm: string): SwarmUser {
    const known = this.bySwarm.get(swarm)?.user;
    if (known !== undefined || this.taken.size >= this.size) return known ?? { uid: this.range[0], gid: this.range[0] };
    const uid = this.freeFrom(this.hashed(swarm));
    return { uid, gid: uid };
  }

  release(swarm: string): void {
    const known = this.bySwarm.get(swarm);
    if (known !== undefined && known.holders > 0) known.holders -= 1;
  }

  private hashed(swarm: string): number {
    const digest = createHash('sha256').update(swarm).digest();
    return this.range[0] + (digest.readUIntBE(0, 6) % this.size);
  }

  private freeFrom(start: number): number {
    const [low] = this.range;
    for (let step = 0; step < this.size; step++) {
      const uid = low + ((start - low + step) % this.size);
      if (!this.taken.has(uid)) return uid;
    }
    throw new Error(`every uid of sandbox.uidRange ${this.range[0]}–${this.range[1]} is held by a running swarm`);
  }

  private forgetIdle(): void {
    for (const [swarm, assignment] of this.bySwarm) {
      if (assignment.holders > 0) continue;
      this.bySwarm.delete(swarm);
      this.taken.delete(assignment.user.uid);
      return;
    }
  }
}
