import { isSandpoolError, moduleLoad } from '../../errors.js';
import type { LiveArtifact } from '../../store/live.js';
import type { PostgresMirror } from '../../store/postgres.js';
import {
  checkPointArgs,
  checkSnapshotArgs,
  checkSwarmArgs,
  type SnapshotInfo,
  SnapshotStore,
  type SnapshotStoreOptions,
} from '../../store/store.js';
import type { StoreHelper } from '../../store/store-helper.js';

/**
 * `pool.snapshots`: the store, with its file-heavy operations run by the snapshot helper
 * process (a libuv pool of its own, so tenants' async jobs never delay them), and `remove`
 * draining the snapshot's workers first. A host that may not start processes, or a closed
 * pool, runs them here. Listing and reading manifests go there too: a tenant may make many
 * names and large manifests, and parsing them here stalled every key (151 names of a
 * 4,000-file artifact: 15.7 s).
 */
export class PoolSnapshotStore extends SnapshotStore {
  constructor(
    options: SnapshotStoreOptions,
    private readonly helper: StoreHelper,
    private readonly drainAndRemove: (swarm: string, name: string, removeFiles: () => Promise<void>) => Promise<void>,
    private readonly mirror: Promise<PostgresMirror> | null,
  ) {
    super(options);
  }

  /** With a database, the name is taken there too, in one transaction with the content's upload. */
  override async create(swarm: string, name: string): Promise<SnapshotInfo> {
    if (this.mirror === null) return this.inHelper('create', swarm, name, () => super.create(swarm, name));
    checkSnapshotArgs(swarm, name);
    return (await this.mirror).write(swarm, name, null, () =>
      this.inHelper('create', swarm, name, () => super.create(swarm, name)),
    );
  }

  override async list(swarm: string): Promise<SnapshotInfo[]> {
    if (!this.helper.available) return super.list(swarm);
    checkSwarmArgs(swarm);
    return this.helper.run('list', swarm, '');
  }

  override get(swarm: string, name: string): Promise<SnapshotInfo> {
    return this.inHelper('get', swarm, name, () => super.get(swarm, name));
  }

  override verify(swarm: string, name: string): Promise<SnapshotInfo> {
    return this.inHelper('verify', swarm, name, () => super.verify(swarm, name));
  }

  /** With a database, the signed pointer is a move of the name like any other: taken there, for every node. */
  override async sign(swarm: string, name: string): Promise<SnapshotInfo> {
    const local = (): Promise<SnapshotInfo> => this.inHelper('sign', swarm, name, () => super.sign(swarm, name));
    if (this.mirror === null) return local();
    checkSnapshotArgs(swarm, name);
    return (await this.mirror).write(swarm, name, name, local);
  }

  /** Every pool on the store sees the move within its pointer check (see PoolCore): the old content drains. */
  override async point(swarm: string, name: string, target: string): Promise<SnapshotInfo> {
    checkPointArgs(swarm, name, target);
    const local = (): Promise<SnapshotInfo> =>
      this.helper.available ? this.helper.run('point', swarm, name, target) : super.point(swarm, name, target);
    return this.mirror === null ? local() : (await this.mirror).write(swarm, name, target, local);
  }

  override async remove(swarm: string, name: string): Promise<void> {
    // Validates and proves it exists first: bad input must not touch any worker.
    await this.get(swarm, name);
    if (this.mirror !== null) await (await this.mirror).remove(swarm, name);
    await this.drainAndRemove(swarm, name, async () => {
      try {
        if (this.helper.available) await this.helper.run('remove', swarm, name);
        else await super.remove(swarm, name);
      } catch (error) {
        // The database's NOTIFY reached this node's mirror first, which removed the name already.
        if (this.mirror === null || !isSandpoolError(error, 'ERR_SANDPOOL_SNAPSHOT_NOT_FOUND')) throw error;
      }
    });
  }

  /** Bad arguments are refused here, before the helper is asked (or started). */
  private async inHelper(
    op: 'create' | 'verify' | 'sign' | 'get',
    swarm: string,
    name: string,
    inHost: () => Promise<SnapshotInfo>,
  ): Promise<SnapshotInfo> {
    if (!this.helper.available) return inHost();
    checkSnapshotArgs(swarm, name);
    return this.helper.run(op, swarm, name);
  }
}

/**
 * How a pool gets its live keys' artifacts: built by the snapshot helper, never in the host
 * (a closed pool's helper refuses with CLOSED, and writes nothing after close). A host under
 * the permission model without the right to start processes has no helper and no bundler
 * (esbuild runs as a process of its own), so its live keys cannot be built: they fail to
 * load, saying so; its snapshot keys (made elsewhere) run.
 */
export function liveArtifacts(helper: StoreHelper): (swarm: string) => Promise<LiveArtifact> {
  return (swarm) => {
    if (!mayStartProcesses()) {
      return Promise.reject(
        moduleLoad(
          `live keys of swarm ${swarm} cannot be built here: this host runs under Node's permission model without ` +
            '--allow-child-process, and a live key runs from an artifact built by a process of its own; grant it, or serve snapshots made elsewhere',
        ),
      );
    }
    return helper.run('live', swarm, '');
  };
}

function mayStartProcesses(): boolean {
  const permission = (process as { permission?: { has(scope: string): boolean } }).permission;
  return permission === undefined || permission.has('child');
}
