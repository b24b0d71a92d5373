import { join, relative } from 'node:path';
import type { ResolvedKey } from '../../key.js';
import type { ResolvedPoolOptions } from '../../options.js';
import type { Deniable, LoadRequest } from '../../protocol/messages.js';
import type { LiveSource } from '../../store/live.js';
import type { SnapshotRef } from '../../store/names.js';
import type { Isolation, PermissionPolicy } from '../../types.js';
import type { KeyPolicy } from '../policy/key-policy.js';
import type { AgentWorker, ThreadSettings } from './agent-worker.js';
import { isolationFor } from './isolation.js';
import { denialsOf, permissionArgs, policyFor, refuseUnenforceableNetwork } from './permissions.js';
import { AgentProcess, type ProcessSettings } from './process.js';
import { locateModule, type ModuleLocation } from './resolve.js';
import { Sandbox, type SandboxParts } from './sandbox/sandbox.js';
import type { KeyAccess } from './sandbox/view.js';
import { StrictSpares } from './strict-spares.js';
import { AgentThread } from './thread.js';
import { typeScriptExecArgv } from './typescript.js';

/** What a key's worker starts with, settled before it takes a slot. */
export interface LaunchPlan {
  readonly location: ModuleLocation;
  /** Its worker's Node flags (permission model, type stripping), fixed before it starts. */
  readonly execArgv: readonly string[];
  /** What its worker denies the agent (worker/lockdown.ts); null: nothing. */
  readonly deny: Deniable[] | null;
  readonly isolation: Isolation;
  /** What a process key's cell must show it (see Sandbox.access); null for a thread. */
  readonly access: KeyAccess | null;
  /** The key's settings for this spawn (the `policy` option's answer over the pool's). */
  readonly policy: KeyPolicy;
}

/**
 * What a pool's spares are: `blank`, with no permission flags (a key under `'none'` takes
 * one); `strict`, threads under the pool's own strict policy (see StrictSpares); null: no key
 * here could take one.
 */
export type SpareKind = 'blank' | 'strict' | null;

/**
 * How a key's worker is launched: where its module is, which flags and which isolation it
 * gets (all from the options, per key), and the worker itself, booted cold or as a spare
 * before its key is known. Every refusal (no file, a link that leaves the folder, a bad
 * per-key answer) is thrown by `plan`, before the key holds a slot.
 */
export class Launcher {
  /** The OS sandbox of this pool's process keys. */
  readonly sandbox: Sandbox;
  private readonly process: ProcessSettings;
  /** The flags a blank worker boots with: only a key that needs no more may take it. */
  private readonly blankFlags = typeScriptExecArgv();
  /** Spare threads for the pool's own strict policy; null under `'none'` or a function. */
  private readonly strict: StrictSpares | null;

  constructor(
    private readonly options: ResolvedPoolOptions,
    private readonly root: string,
    private readonly settings: ThreadSettings,
    sandbox: SandboxParts,
    /** The artifact a swarm's live keys run from now (see SnapshotStore's helper). */
    private readonly live: LiveSource,
    /** A key's worker settings where its policy gives it heap, external or env settings of its own. */
    private readonly settingsFor: (policy: KeyPolicy) => ThreadSettings = () => settings,
    /** The kernel's memory bound of a process key's cell, from its budgets (see kernelMemoryBound). */
    private readonly memoryBoundFor: (limits: { heapBytes: number; externalBytes: number }) => number = () =>
      sandbox.memoryBytes,
  ) {
    this.sandbox = new Sandbox(options, sandbox);
    const { permissions } = options;
    this.strict =
      permissions === 'strict' || typeof permissions === 'object'
        ? new StrictSpares(root, permissions, settings, this.blankFlags)
        : null;
    // Their V8 heap limit is the budget itself: past it V8 aborts the child alone.
    this.process = { sandbox: this.sandbox, heapMb: options.resourceLimits.maxOldGenerationSizeMb, memoryBytes: null };
  }

  /**
   * `policyOf` gives the key's settings for this spawn, asked once its module is found;
   * `snapshot`, what a snapshot key's route serves (null: read the name now).
   */
  async plan(
    key: ResolvedKey,
    policyOf: (key: ResolvedKey) => KeyPolicy,
    snapshot: SnapshotRef | null = null,
  ): Promise<LaunchPlan> {
    const location = await locateModule(this.root, key, {
      snapshotSecret: this.options.snapshotSecret,
      snapshot,
      live: this.live,
    });
    const keyPolicy = policyOf(key);
    const policy = keyPolicy.permissions ?? policyFor(this.options.permissions, key);
    const execArgv = this.execArgvFor(policy, key, location);
    const isolation = keyPolicy.isolation ?? isolationFor(this.options.isolation, key);
    // createPool checked the pool's options; a key's own (its policy's) are checked here.
    refuseUnenforceableNetwork({ network: this.options.network, permissions: policy, isolation }, this.sandbox.layers);
    let access: KeyAccess | null = null;
    if (isolation === 'process') {
      this.sandbox.checkReadable(key, location);
      access = this.sandbox.access(key, location, policy);
    }
    return { location, execArgv, deny: denialsOf(policy, isolation), isolation, access, policy: keyPolicy };
  }

  /** A worker for a plan, booted now with its own flags, and its own settings where its policy gives some. */
  boot(plan: LaunchPlan): AgentWorker {
    const own = plan.policy.ownSettings;
    const settings = own ? this.settingsFor(plan.policy) : this.settings;
    if (plan.isolation === 'thread') return new AgentThread(settings, plan.execArgv);
    const { resourceLimits, maxExternalMb } = plan.policy;
    const heapMb = resourceLimits.maxOldGenerationSizeMb;
    const child: ProcessSettings = own
      ? {
          sandbox: this.sandbox,
          heapMb,
          memoryBytes: this.memoryBoundFor({ heapBytes: heapMb * 2 ** 20, externalBytes: maxExternalMb * 2 ** 20 }),
        }
      : this.process;
    return new AgentProcess(settings, plan.execArgv, child, plan.access);
  }

  /**
   * The spares of `isolation` this pool keeps. Strict spares where the pool's policy is
   * strict or a grant, for threads; blank ones where a key may run under `'none'` (the
   * option, or a function or policy that may answer it; a spare cell needs a stage: see
   * Sandbox).
   */
  spareKind(isolation: Isolation): SpareKind {
    if (isolation === 'thread' && this.strict !== null) return 'strict';
    const { permissions, policy } = this.options;
    const mayBeNone = permissions === 'none' || typeof permissions === 'function' || policy !== undefined;
    return mayBeNone && (isolation === 'thread' || this.sandbox.sparesPossible) ? 'blank' : null;
  }

  /** A spare of `isolation`, booted before its key is known; null when none can be made now. */
  bootSpare(isolation: Isolation): AgentWorker | null {
    if (isolation === 'thread' && this.strict !== null) return this.strict.boot();
    return isolation === 'process'
      ? new AgentProcess(this.settings, this.blankFlags, this.process, null)
      : new AgentThread(this.settings, this.blankFlags);
  }

  /** Whether a spare of `isolation` can serve this plan: its flags are fixed at boot. */
  fitsSpare(plan: LaunchPlan, isolation: Isolation): boolean {
    if (plan.isolation !== isolation || plan.policy.ownSettings) return false;
    if (isolation === 'thread' && this.strict !== null)
      return this.strict.fits(plan.execArgv, plan.deny, plan.location);
    return sameFlags(plan.execArgv, this.blankFlags);
  }

  /** The pool has closed: what its workers used goes. */
  async close(): Promise<void> {
    this.strict?.close();
    await this.sandbox.close();
  }

  /**
   * The load message for a worker about to run this plan's module, which reads its key's
   * folder at `folder` (a spare's own, see seeFolder).
   */
  loadRequest(key: ResolvedKey, plan: LaunchPlan, beat: Beat | null, folder = plan.location.folder): LoadRequest {
    const { file, verifyDir, sha256, bytes } = plan.location;
    const seen = (path: string): string =>
      folder === plan.location.folder ? path : join(folder, relative(plan.location.folder, path));
    return {
      t: 'load',
      ...(beat === null ? {} : { heartbeatMs: beat.busyMs, idleHeartbeatMs: beat.idleMs }),
      key: key.text,
      file: seen(file),
      verifyDir: seen(verifyDir),
      ...(sha256 === null ? {} : { sha256 }),
      ...(bytes === null ? {} : { bytes }),
      ...(plan.deny === null ? {} : { deny: plan.deny }),
    };
  }

  /** The key's worker flags: its permission model (see permissions.ts) and type stripping. */
  private execArgvFor(policy: PermissionPolicy, key: ResolvedKey, location: ModuleLocation): string[] {
    const folders = {
      folder: location.folder,
      swarm: location.swarmFolder,
      bundled: location.sha256 !== null,
      artifact: location.artifact,
    };
    return [...this.blankFlags, ...permissionArgs(policy, folders, key)];
  }
}

/** How often a worker the coordinator cannot probe reports its memory: while calls run, and while idle. */
export interface Beat {
  readonly busyMs: number;
  readonly idleMs: number;
}

function sameFlags(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((flag, i) => flag === b[i]);
}
