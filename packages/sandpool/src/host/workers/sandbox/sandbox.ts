import { existsSync, realpathSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { sandboxMissing } from '../../../errors.js';
import type { ResolvedKey } from '../../../key.js';
import type { ResolvedPoolOptions } from '../../../options.js';
import type { PermissionPolicy, SandboxLayers } from '../../../types.js';
import { checkReadableBy } from '../isolation.js';
import type { ModuleLocation } from '../resolve.js';
import { Cage, type CageGroups, type CageParts, type PoolCpu } from './cage.js';
import { openStage } from './stage.js';
import { hostSupport, type UsernsGuard } from './support.js';
import { SwarmIds } from './uids.js';
import { entriesFor, type KeyAccess, moduleEntries, type ViewEntry, within } from './view.js';

/** What the sandbox takes from the parts above the workers. */
export interface SandboxParts {
  /** A cgroup for this pool's cells (governors/cgroups.ts), asked only when a key may run in a process; a string says why there is none. */
  readonly cgroups: (cpu: PoolCpu) => CageGroups | string;
  /** What the kernel holds a cell's memory to (governors/memory.ts, kernelMemoryBound). */
  readonly memoryBytes: number;
}

/**
 * The OS sandbox of one pool's process keys: which layers this host gives them (probed once
 * per process; `'require'` refuses a pool that would go without one), and a Cage per child.
 */
export class Sandbox {
  /** Null when no key of this pool can run in a process. */
  readonly layers: SandboxLayers | null;
  private readonly ids: SwarmIds | null;
  private readonly groups: CageGroups | null;
  private readonly bwrap: string | null;
  private readonly userns: UsernsGuard | null;
  private readonly runtime: readonly ViewEntry[];
  private readonly root: boolean;
  private readonly rootReal: string;
  /** The stage's read-only mirror of the root, made for the first spare cell. */
  private mirrored: string | null = null;

  constructor(
    private readonly options: ResolvedPoolOptions,
    private readonly parts: SandboxParts,
  ) {
    const { mode } = options.sandbox;
    this.rootReal = realOrSelf(options.root);
    this.root = process.getuid?.() === 0;
    const missing: SandboxLayers['missing'] = [];
    const perSwarm = options.processUser === 'swarm';
    if (options.processUser === 'host') {
      missing.push({ layer: 'uidPerSwarm', reason: "processUser is 'host': children keep the host's uid" });
    } else if (!perSwarm) {
      missing.push({ layer: 'uidPerSwarm', reason: 'processUser names one user for every swarm' });
    } else if (!this.root) {
      missing.push({ layer: 'uidPerSwarm', reason: 'the host is not root: children keep its uid' });
    }
    this.ids = perSwarm && this.root ? new SwarmIds(options.sandbox.uidRange) : null;
    if (options.isolation === 'thread') {
      this.layers = null;
      this.groups = null;
      this.bwrap = null;
      this.userns = null;
      this.runtime = [];
      return;
    }
    const support = mode === 'off' ? null : hostSupport();
    const { cpuWeight, cpuMax } = options.sandbox;
    const cgroups = mode === 'off' ? null : parts.cgroups({ weight: cpuWeight ?? null, maxCores: cpuMax ?? null });
    const cell = support !== null && 'path' in support.bwrap ? support.bwrap : null;
    this.bwrap = cell?.path ?? null;
    this.userns = cell === null || typeof cell.userns !== 'string' ? null : cell.userns;
    this.groups = typeof cgroups === 'string' ? null : cgroups;
    this.runtime = support?.runtime ?? [];
    if (support === null) {
      missing.push(
        { layer: 'namespaces', reason: "sandbox is 'off'" },
        { layer: 'cgroups', reason: "sandbox is 'off'" },
        { layer: 'userns', reason: "sandbox is 'off'" },
      );
    } else {
      if ('problem' in support.bwrap) {
        missing.push(
          { layer: 'namespaces', reason: support.bwrap.problem },
          { layer: 'userns', reason: 'a cell needs bubblewrap to be kept from making user namespaces' },
        );
      } else if (typeof support.bwrap.userns !== 'string') {
        missing.push({ layer: 'userns', reason: support.bwrap.userns.problem });
      }
      if (typeof cgroups === 'string') missing.push({ layer: 'cgroups', reason: cgroups });
    }
    if (mode === 'require' && missing.length > 0) {
      // No pool will close it.
      void this.groups?.remove();
      throw sandboxMissing(missing);
    }
    this.layers = Object.freeze({
      namespaces: this.bwrap !== null,
      uidPerSwarm: this.ids !== null,
      cgroups: this.groups?.version ?? null,
      network: this.bwrap !== null ? 'loopback' : 'host',
      userns: this.userns,
      missing,
    });
  }

  /**
   * Whether a process key can take a spare: with namespaces, a spare's folders are bound in
   * when its key comes, which needs root (see Stage); probed on first ask.
   */
  get sparesPossible(): boolean {
    if (this.bwrap === null) return true;
    return typeof openStage() !== 'string';
  }

  /** What a key's cell sees: its folder, the packages an unbundled old snapshot may import, and widenings. */
  access(key: ResolvedKey, location: ModuleLocation, policy: PermissionPolicy): KeyAccess {
    if (this.bwrap === null) return { swarm: key.swarm, entries: [] };
    const tenantTop = join(this.rootReal, key.swarm);
    const entries: ViewEntry[] = [
      { kind: 'bind', source: location.folder, path: location.folder, write: false },
      ...(location.sha256 === null ? moduleEntries(dirname(location.folder), tenantTop) : []),
    ];
    if (typeof policy === 'object') {
      // The cell's /tmp is its own: a grant there names it, never the host's.
      const granted = (paths: readonly string[] | undefined): string[] =>
        (paths ?? []).filter((path) => !within(path, '/tmp') && existsSync(path));
      for (const path of granted(policy.fsRead)) entries.push(...entriesFor(path));
      for (const path of granted(policy.fsWrite)) entries.push(...entriesFor(path, true));
    }
    return { swarm: key.swarm, entries };
  }

  /**
   * A child running as another uid reads the agent's files with that uid's rights. In a cell
   * the folders above the key's are the cell's own (0755), so only the key's folder and what
   * is inside it are checked; without namespaces, every folder up to `/`.
   */
  checkReadable(key: ResolvedKey, location: ModuleLocation): void {
    const user = this.userFor(key.swarm);
    if (user === null) return;
    checkReadableBy(user, location.file, key, this.bwrap === null ? null : location.folder);
  }

  /**
   * A cage for one child; `access` null for a spare, whose key comes later (see Cage.enter).
   * `memoryBytes`: its memory bound, where its key's budgets are its own (its policy's); null: the pool's.
   */
  cage(access: KeyAccess | null, memoryBytes: number | null = null): Cage {
    const { sandbox, processLimits } = this.options;
    const stage = access === null && this.bwrap !== null ? openStage() : null;
    if (typeof stage === 'string') throw new Error(stage);
    if (stage !== null) this.mirrored ??= stage.mirror(this.rootReal);
    const parts: CageParts = {
      bwrap: this.bwrap,
      userns: this.userns,
      root: this.root,
      rootReal: this.rootReal,
      runtime: this.runtime,
      // A spare's view of the packages above the root is made at its boot, before its key.
      pool: stage === null ? [] : moduleEntries(this.rootReal, null),
      stage: stage === null || this.mirrored === null ? null : stage.cell(this.mirrored, this.rootReal),
      ids: this.ids,
      fixedUser: this.fixedUser(),
      groups: this.groups,
      memoryBytes: memoryBytes ?? this.parts.memoryBytes,
      tmpMb: sandbox.tmpMb,
      pids: sandbox.pids,
      limits: processLimits,
    };
    return new Cage(parts, access);
  }

  /** The pool is closed and its cells have ended: its cgroup and its read-only mirror of the root go. */
  async close(): Promise<void> {
    const mirrored = this.mirrored;
    this.mirrored = null;
    const stage = mirrored === null ? null : openStage();
    await Promise.all([this.groups?.remove(), typeof stage === 'string' ? null : stage?.unmirror(this.rootReal)]);
  }

  private userFor(swarm: string): { uid: number; gid: number } | null {
    return this.ids?.peek(swarm) ?? this.fixedUser();
  }

  /** The one user of every swarm's children when processUser names one (and the host is root). */
  private fixedUser(): { uid: number; gid: number } | null {
    const user = this.options.processUser;
    return this.root && typeof user === 'object' ? user : null;
  }
}

function realOrSelf(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}
