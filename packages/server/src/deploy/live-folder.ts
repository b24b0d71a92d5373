import { randomBytes } from 'node:crypto';
import { lstat, mkdir, readdir, readlink, rename, rm, symlink } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { Readable } from 'node:stream';
import { type ArchiveLimits, type Extracted, extractArchive } from './archive.js';

/** Inside `<root>/<swarm>/`: a dot name, which no snapshot or swarm name can take. */
const VERSIONS = '.deploys';
const TEMP_PREFIX = '.tmp-';
/**
 * Versions other than the live one and the one before it are removed after a deploy, unless
 * younger than this: another node sharing the root may be about to point live/ at one.
 */
const KEEP_YOUNG_MS = 10 * 60 * 1000;

/**
 * Replaces a swarm's live files with an archive's, at once: the files go into a new folder
 * `<swarm>/.deploys/<id>/`, and `<swarm>/live` becomes a link to it by one rename, so a worker
 * starting at any moment reads the old files or the new, never a mix and never none. A live/
 * that is a plain folder (made by hand) becomes the first version. The version before stays
 * for the workers still running it (a blue-green reload drains them); older ones go.
 * Deploys of one swarm on this node run one after another.
 */
export class LiveFolders {
  private readonly queues = new Map<string, Promise<unknown>>();

  constructor(private readonly root: string) {}

  replace(swarm: string, archive: Readable, limits: ArchiveLimits): Promise<Extracted> {
    const before = this.queues.get(swarm) ?? Promise.resolve();
    const run = before.then(
      () => this.replaceNow(swarm, archive, limits),
      () => this.replaceNow(swarm, archive, limits),
    );
    const tail = run.catch(() => undefined);
    this.queues.set(swarm, tail);
    void tail.then(() => {
      if (this.queues.get(swarm) === tail) this.queues.delete(swarm);
    });
    return run;
  }

  private async replaceNow(swarm: string, archive: Readable, limits: ArchiveLimits): Promise<Extracted> {
    const swarmDir = join(this.root, swarm);
    const versions = join(swarmDir, VERSIONS);
    await mkdir(versions, { recursive: true });
    const temp = join(versions, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
    await mkdir(temp);
    let extracted: Extracted;
    try {
      extracted = await extractArchive(archive, temp, limits);
    } catch (error) {
      await rm(temp, { recursive: true, force: true });
      throw error;
    }
    const id = versionId();
    await rename(temp, join(versions, id));
    const previous = await this.pointLiveAt(swarmDir, id);
    await sweep(versions, new Set([id, ...(previous === null ? [] : [previous])]));
    return extracted;
  }

  /** Points `<swarm>/live` at version `id` by one rename; returns the version it pointed at. */
  private async pointLiveAt(swarmDir: string, id: string): Promise<string | null> {
    const live = join(swarmDir, 'live');
    const current = await lstat(live).catch(() => null);
    let previous: string | null = null;
    if (current?.isSymbolicLink()) {
      previous = basename(await readlink(live));
    } else if (current !== null) {
      // A hand-made live/ becomes a version of its own; the one moment live/ is missing.
      previous = `${versionId()}-adopted`;
      await rename(live, join(swarmDir, VERSIONS, previous));
    }
    const link = join(swarmDir, `${VERSIONS}${TEMP_PREFIX}link-${randomBytes(8).toString('hex')}`);
    // Relative, so the root can move.
    await symlink(`${VERSIONS}/${id}`, link, 'dir');
    try {
      await rename(link, live);
    } catch (error) {
      await rm(link, { force: true });
      throw error;
    }
    return previous;
  }
}

/** Sorts in the order of deploys: the time in base 36, then a random tail. */
function versionId(): string {
  return `${Date.now().toString(36).padStart(9, '0')}-${randomBytes(4).toString('hex')}`;
}

/** Removes versions not in `keep` and older than KEEP_YOUNG_MS, and work folders left by a crash. */
async function sweep(versions: string, keep: ReadonlySet<string>): Promise<void> {
  const now = Date.now();
  for (const name of await readdir(versions)) {
    if (keep.has(name)) continue;
    const path = join(versions, name);
    const info = await lstat(path).catch(() => null);
    if (info === null || now - info.mtimeMs < (name.startsWith(TEMP_PREFIX) ? 60 * 60 * 1000 : KEEP_YOUNG_MS)) continue;
    await rm(path, { recursive: true, force: true });
  }
}
