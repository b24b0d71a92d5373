import { checkSnapshotArgs, type SnapshotInfo, SnapshotStore, type SnapshotStoreOptions } from '../store/store.js';
import type { StoreHelper } from '../store/store-helper.js';

/**
 * `pool.snapshots`: the store, with its file-heavy operations run by the snapshot helper
 * process (a libuv pool of its own, so tenants' async jobs never delay them), and `remove`
 * draining the snapshot's workers first. A host that may not start processes runs them here. Listing and reading manifests stay here: they are
 * small, synchronous reads.
 */
export class PoolSnapshotStore extends SnapshotStore {
  constructor(
    options: SnapshotStoreOptions,
    private readonly helper: StoreHelper,
    private readonly drainAndRemove: (swarm: string, name: string, removeFiles: () => Promise<void>) => Promise<void>,
  ) {
    super(options);
  }

  override async create(swarm: string, name: string): Promise<SnapshotInfo> {
    if (!this.helper.available) return super.create(swarm, name);
    checkSnapshotArgs(swarm, name);
    return this.helper.run('create', swarm, name);
  }

  override async verify(swarm: string, name: string): Promise<SnapshotInfo> {
    if (!this.helper.available) return super.verify(swarm, name);
    checkSnapshotArgs(swarm, name);
    return this.helper.run('verify', swarm, name);
  }

  override async sign(swarm: string, name: string): Promise<SnapshotInfo> {
    if (!this.helper.available) return super.sign(swarm, name);
    checkSnapshotArgs(swarm, name);
    return this.helper.run('sign', swarm, name);
  }

  override async remove(swarm: string, name: string): Promise<void> {
    // Validates and proves it exists first: bad input must not touch any worker.
    await this.get(swarm, name);
    await this.drainAndRemove(swarm, name, async () => {
      if (this.helper.available) await this.helper.run('remove', swarm, name);
      else await super.remove(swarm, name);
    });
  }
}
