import { SnapshotStore, type SnapshotStoreOptions } from '../store/store.js';

/** `pool.snapshots`: the store, plus draining the workers of a snapshot before it is removed. */
export class PoolSnapshotStore extends SnapshotStore {
  constructor(
    options: SnapshotStoreOptions,
    private readonly drainAndRemove: (swarm: string, name: string, removeFiles: () => Promise<void>) => Promise<void>,
  ) {
    super(options);
  }

  override async remove(swarm: string, name: string): Promise<void> {
    // Validates and proves it exists first: bad input must not touch any worker.
    await this.get(swarm, name);
    await this.drainAndRemove(swarm, name, () => super.remove(swarm, name));
  }
}
