// A name's pointer moves (create, point, sign, remove) one at a time across every process on the
// store: a move reads what the name holds and its generation and replaces them, and without a
// lock a slow one (sign verifies the content first) would put back what a faster one had just
// moved away from, or two would take one generation.
import { link, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { snapshotBuild } from '../errors.js';
import { isTakenError } from './artifact.js';
import { LOCK_PREFIX, TEMP_PREFIX } from './layout.js';
import { ownerToken, removeAbandonedLock } from './leftovers.js';

/** A holder only reads and renames small files; this long means its owner cannot be asked. */
const WAIT_MS = 30_000;
const POLL_MS = 2;

/** Runs `move` holding `<snapshots>/.lock-<name>` (see withLock). */
export function withNameLock<T>(parent: string, name: string, move: () => Promise<T>): Promise<T> {
  return withLock(parent, `${LOCK_PREFIX}${name}`, `snapshot ${name} is being moved by another process`, move);
}

/**
 * Runs `body` holding `<parent>/.lock-.swarm`, where the swarm's names or content are counted
 * against their bound and one more is added, so two additions never both take the last room.
 * No snapshot name starts with a dot: it is no name's lock. Taken inside a name's lock, never
 * around one.
 */
export function withSwarmLock<T>(parent: string, body: () => Promise<T>): Promise<T> {
  return withLock(parent, `${LOCK_PREFIX}.swarm`, "the swarm's snapshots are being counted by another process", body);
}

/**
 * Runs `body` holding `<parent>/<name>`: a file made whole under this process's token and
 * linked into place (link fails if the lock exists), so the lock always names its owner and a
 * lock whose owner died is taken over (see removeAbandonedLock). `parent` must exist (ENOENT
 * otherwise): a lock never makes a swarm's folders.
 */
async function withLock<T>(parent: string, name: string, busy: string, body: () => Promise<T>): Promise<T> {
  const lock = join(parent, name);
  const token = ownerToken();
  const temp = join(parent, `${TEMP_PREFIX}${token}`);
  await writeFile(temp, token, { flag: 'wx', mode: 0o444 });
  try {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      try {
        await link(temp, lock);
        break;
      } catch (error) {
        if (!isTakenError(error)) throw error;
      }
      if (await removeAbandonedLock(lock)) continue;
      if (Date.now() > deadline) {
        throw snapshotBuild(`${busy}; try again`);
      }
      await sleep(POLL_MS);
    }
  } finally {
    await rm(temp, { force: true });
  }
  try {
    return await body();
  } finally {
    // Ours unless we were taken for dead (another machine, after LEFTOVER_AGE_MS): then not ours to remove.
    if ((await readFile(lock, 'utf8').catch(() => null)) === token) await rm(lock, { force: true });
  }
}
