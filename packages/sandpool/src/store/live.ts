/**
 * The artifacts live keys run from: a live key is a snapshot that follows its folder. Each
 * swarm's live/ is built into an artifact as a snapshot is (see buildArtifact), rebuilt when
 * something it was built from changed (see live-stamp.ts) and reused while nothing did, by
 * this process and, through a record in the store's cache, by the next one. Runs where the
 * store's heavy work runs: the snapshot helper process, never the coordinator's thread.
 */
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { invalidKey, snapshotBuild } from '../errors.js';
import { isSwarmName } from '../swarm-name.js';
import { type Build, buildArtifact, sweepUnused, touchArtifact } from './artifact.js';
import { liveDigestFile, liveRecordsDir, TEMP_PREFIX } from './layout.js';
import { workFolderName } from './leftovers.js';
import { inputsStamp, treeStamp } from './live-stamp.js';
import { namedDigests } from './names.js';
import { readRegularFile } from './safe-read.js';

/** The artifact a swarm's live keys run from now. */
export interface LiveArtifact {
  readonly digest: string;
  /** Stems whose bundle failed, with the build's message (its place relative to the swarm, no host path). */
  readonly failures: Readonly<Record<string, string>>;
  /** Each stem's bundle: the sha256 and size of its bytes, which its worker checks before running it. */
  readonly bundles: Readonly<Record<string, Bundle>>;
}

/**
 * What one live key's start needs of its swarm's artifact, and nothing more: the coordinator
 * reads no manifest (a swarm's may take megabytes to parse) and no other stem's failure.
 */
export interface LiveStem {
  readonly digest: string;
  /** Why the stem failed to bundle (its place relative to the swarm); null if it did not. */
  readonly failure: string | null;
  /** The sha256 of its bundle, `.sandpool-bundles/<stem>.mjs`; null when live/ has no such stem. */
  readonly sha256: string | null;
  /** Its size in bytes; null where sha256 is. */
  readonly bytes: number | null;
}

interface Bundle {
  readonly sha256: string;
  readonly bytes: number;
}

/** How a pool asks for a live key's artifact (built off its thread, see SnapshotStore's helper). */
export type LiveSource = (swarm: string, stem: string) => Promise<LiveStem>;

export function stemOf(artifact: LiveArtifact, stem: string): LiveStem {
  const failure = Object.hasOwn(artifact.failures, stem) ? artifact.failures[stem] : undefined;
  const bundle = Object.hasOwn(artifact.bundles, stem) ? artifact.bundles[stem] : undefined;
  return {
    digest: artifact.digest,
    failure: failure ?? null,
    sha256: bundle?.sha256 ?? null,
    bytes: bundle?.bytes ?? null,
  };
}

/** What the last live build of a swarm made, and what its reuse is stamped by. */
interface Held {
  readonly artifact: LiveArtifact;
  readonly stamp: string;
  /** What the build looked at besides live/'s entries (see InputProbe), stamped again at each look. */
  readonly probed: readonly string[];
}

/** Tries of a build whose content a sweep elsewhere removed as it was made. */
const BUILD_ATTEMPTS = 3;
/** A record past this is not read (one lists the paths a build looked at). */
const MAX_RECORD_BYTES = 64 * 1024 * 1024;

export class LiveArtifacts {
  private readonly held = new Map<string, Held>();
  /** A swarm's builds run one after the other: the second of a burst of starts reuses the first. */
  private readonly turns = new Map<string, Promise<unknown>>();

  constructor(
    private readonly root: string,
    private readonly maxBytes: number,
  ) {}

  /**
   * The artifact of `swarm`'s live/ as it is now. A stem that fails to bundle is recorded and
   * the others still run; anything that fails the whole build (a link that leaves live/, a
   * FIFO, past maxSnapshotBytes) is SNAPSHOT_BUILD, no folder SWARM_NOT_FOUND. Content a new
   * build replaced goes once unused (see UNUSED_ARTIFACT_MS).
   */
  get(swarm: string): Promise<LiveArtifact> {
    if (!isSwarmName(swarm)) {
      return Promise.reject(invalidKey(swarm, [{ path: ['swarm'], message: 'not a swarm name' }]));
    }
    const turn = (this.turns.get(swarm) ?? Promise.resolve()).then(() => this.now(swarm));
    const settled = turn.catch(() => undefined);
    this.turns.set(swarm, settled);
    void settled.then(() => {
      if (this.turns.get(swarm) === settled) this.turns.delete(swarm);
    });
    return turn;
  }

  private async now(swarm: string): Promise<LiveArtifact> {
    const live = join(this.root, swarm, 'live');
    const held = this.held.get(swarm) ?? (await this.recorded(swarm));
    if (held !== undefined) {
      const stamp = await stampOf(live, held.probed);
      if (stamp === held.stamp && (await touchArtifact(this.root, swarm, held.artifact.digest))) return held.artifact;
    }
    // Stamped before it is read: a write during the build makes the next look build again.
    const tree = await treeStamp(live);
    for (let attempt = 1; ; attempt++) {
      const built = await buildArtifact(this.root, swarm, { maxBytes: this.maxBytes, making: 'live' });
      // Touched, so no sweep takes it before a worker starts from it.
      if (!(await touchArtifact(this.root, swarm, built.digest))) {
        if (attempt >= BUILD_ATTEMPTS)
          throw snapshotBuild('the content was removed as fast as it was built; try again');
        continue;
      }
      await this.markLive(swarm, built.digest);
      // As the build found them, before it looked: a change since makes the next look build.
      const used = built.probe?.stamp() ?? null;
      const artifact: LiveArtifact = { digest: built.digest, failures: built.failures, bundles: bundlesOf(built) };
      if (tree === null || used === null) this.held.delete(swarm);
      else await this.hold(swarm, { artifact, stamp: `${tree}:${used}`, probed: built.probe?.paths() ?? [] });
      if (held !== undefined && held.artifact.digest !== built.digest) {
        // The old content's grace starts now: a worker still draining from it keeps its files.
        await touchArtifact(this.root, swarm, held.artifact.digest);
        await sweepUnused(this.root, swarm, () => namedDigests(this.root, swarm));
      }
      return artifact;
    }
  }

  /**
   * Records `digest` as the content the swarm's live keys run from, which every sweep keeps (see
   * namedDigests). Replaced by the next build's, the old content's grace starts.
   */
  private async markLive(swarm: string, digest: string): Promise<void> {
    const dir = liveRecordsDir(this.root);
    const temp = join(dir, workFolderName(TEMP_PREFIX));
    try {
      await mkdir(dir, { recursive: true });
      await writeFile(temp, digest, { flag: 'wx', mode: 0o600 });
      await rename(temp, liveDigestFile(this.root, swarm));
    } catch {
      // Best effort, as the record: without it the content is kept from each start for 10 minutes.
      await rm(temp, { force: true });
    }
  }

  /** Kept here, and recorded for the next process on this root (best effort: without it, that one builds). */
  private async hold(swarm: string, held: Held): Promise<void> {
    this.held.set(swarm, held);
    const dir = liveRecordsDir(this.root);
    const temp = join(dir, workFolderName(TEMP_PREFIX));
    try {
      await mkdir(dir, { recursive: true });
      await writeFile(temp, JSON.stringify(held), { flag: 'wx', mode: 0o600 });
      await rename(temp, join(dir, `${swarm}.json`));
    } catch {
      await rm(temp, { force: true });
    }
  }

  /** What an earlier process on this root built last, if its record is whole; it is reused only if its stamp still holds. */
  private async recorded(swarm: string): Promise<Held | undefined> {
    try {
      const bytes = await readRegularFile(join(liveRecordsDir(this.root), `${swarm}.json`), {
        maxBytes: MAX_RECORD_BYTES,
      });
      const held: unknown = JSON.parse(bytes.toString('utf8'));
      return isHeld(held) ? held : undefined;
    } catch {
      return undefined;
    }
  }
}

async function stampOf(live: string, probed: readonly string[]): Promise<string | null> {
  const [tree, used] = await Promise.all([treeStamp(live), inputsStamp(probed)]);
  return tree === null || used === null ? null : `${tree}:${used}`;
}

function bundlesOf({ manifest }: Build): Record<string, Bundle> {
  const bundles: Record<string, Bundle> = {};
  for (const [stem, rel] of Object.entries(manifest.stems)) {
    const file = Object.hasOwn(manifest.files, rel) ? manifest.files[rel] : undefined;
    if (file !== undefined) bundles[stem] = { sha256: file.sha256, bytes: file.bytes };
  }
  return bundles;
}

/** A record's shape, checked by hand: the helper loads no schema library on its way to a live key's start. */
function isHeld(value: unknown): value is Held {
  const record = value as Partial<Record<keyof Held, unknown>> | null;
  const artifact = record?.artifact as { digest?: unknown; failures?: unknown; bundles?: unknown } | undefined;
  const strings = (list: unknown): boolean => Array.isArray(list) && list.every((item) => typeof item === 'string');
  const table = (value: unknown, valid: (item: unknown) => boolean): boolean =>
    typeof value === 'object' && value !== null && Object.values(value).every(valid);
  return (
    typeof record === 'object' &&
    record !== null &&
    typeof record.stamp === 'string' &&
    strings(record.probed) &&
    typeof artifact === 'object' &&
    artifact !== null &&
    isDigest(artifact.digest) &&
    table(artifact.failures, (why) => typeof why === 'string') &&
    table(artifact.bundles, isBundle)
  );
}

function isBundle(value: unknown): value is Bundle {
  const bundle = value as Partial<Record<keyof Bundle, unknown>> | null;
  return (
    typeof bundle === 'object' &&
    bundle !== null &&
    isDigest(bundle.sha256) &&
    Number.isSafeInteger(bundle.bytes) &&
    (bundle.bytes as number) >= 0
  );
}

function isDigest(value: unknown): value is string {
  return typeof value === 'string' && /^[0-9a-f]{64}$/.test(value);
}
