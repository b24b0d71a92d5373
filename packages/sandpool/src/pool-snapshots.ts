import { SnapshotStore } from './store.js';

/** `pool.snapshots`: the store, plus draining the workers of a snapshot before it is removed. */
export class PoolSnapshotStore extends SnapshotStore {
  constructor(
    root: string,
    private readonly retire: (swarm: string, name: string) => Promise<void>,
  ) {
    super({ root });
  }

  override async remove(swarm: string, name: string): Promise<void> {
    // Validates and proves it exists first: bad input must not touch any worker.
    await this.get(swarm, name);
    await this.retire(swarm, name);
    await super.remove(swarm, name);
  }
}
