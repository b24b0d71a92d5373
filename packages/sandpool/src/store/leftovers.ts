/**
 * Work folders and files (`.tmp-*` of a create or a pointer write, `.rm-*` of a remove) and
 * name locks (`.lock-<name>`), and their removal after a crash. Each names its owner,
 * `<pid>.<machine>.<random>` (a work item in its name, a lock in its content), so a sweep
 * can tell one whose process died (removed at once) from one still in use, in this process
 * or another on the same store. An owner on another machine cannot be asked: its work
 * items, and those of releases that named no owner, go only when old.
 */
import { createHash, randomBytes } from 'node:crypto';
import { type Dirent, readFileSync, readlinkSync } from 'node:fs';
import { chmod, link, lstat, readdir, readFile, rename, rm } from 'node:fs/promises';
import { hostname, networkInterfaces } from 'node:os';
import { dirname, join } from 'node:path';
import { isSwarmName } from '../swarm-name.js';
import {
  artifactsDir,
  generationsDir,
  LOCK_PREFIX,
  liveRecordsDir,
  REMOVING_PREFIX,
  snapshotsDir,
  TEMP_PREFIX,
} from './layout.js';

/**
 * A folder this old whose owner cannot be asked was left by a crash: no create or remove
 * runs that long. Younger ones may belong to one still running on another machine.
 */
export const LEFTOVER_AGE_MS = 60 * 60 * 1000;

/**
 * This machine, as process ids see it: where one pid means one process. On Linux that is the
 * kernel's boot (its random `boot_id`, which no two hosts and no two boots share, whatever
 * their host names or cloned images say) and the pid namespace in it, so neither two hosts of
 * one name sharing a store nor two containers on one kernel judge each other's pids.
 */
const MACHINE = createHash('sha256').update(machineFacts()).digest('hex').slice(0, 12);
const OWNED = /^([1-9][0-9]{0,9})\.([0-9a-f]{12})\.[0-9a-f]{16}$/;
const MAX_PID = 2 ** 31 - 1;

/** A fresh work folder (or file) name under `prefix`, owned by this process. */
export function workFolderName(prefix: typeof TEMP_PREFIX | typeof REMOVING_PREFIX): string {
  return `${prefix}${ownerToken()}`;
}

/** A fresh `<pid>.<machine>.<random>`: this process, as a sweep can ask after it. */
export function ownerToken(): string {
  return `${process.pid}.${MACHINE}.${randomBytes(8).toString('hex')}`;
}

/**
 * Removes the abandoned work folders, work files and name locks of one `snapshots/` folder
 * and nothing else. A pointer left half-published (`.tmp-*`) or half-removed (`.rm-*`) still
 * names its content, which no sweep of unused content takes while it is there. Each is
 * first renamed to a name of this process's own, so a sweep never deletes under a build
 * that is still publishing (its rename then fails whole) nor two sweeps under each other.
 * Best effort: what fails stays for the next sweep.
 */
export async function sweepWorkFolders(parent: string, now = Date.now()): Promise<void> {
  let names: string[];
  try {
    names = await readdir(parent);
  } catch {
    return;
  }
  for (const name of names) {
    if (name.startsWith(LOCK_PREFIX)) {
      await removeAbandonedLock(join(parent, name), now);
      continue;
    }
    const prefix = name.startsWith(TEMP_PREFIX)
      ? TEMP_PREFIX
      : name.startsWith(REMOVING_PREFIX)
        ? REMOVING_PREFIX
        : null;
    if (prefix === null) continue;
    const path = join(parent, name);
    try {
      const info = await lstat(path);
      if (!(info.isDirectory() || info.isFile()) || !abandoned(name.slice(prefix.length), info.mtimeMs, now)) continue;
      const claimed = join(parent, workFolderName(REMOVING_PREFIX));
      await rename(path, claimed);
      // A build that died after freezing its copy left read-only folders.
      await removeTree(claimed);
    } catch {
      // Gone already (its build published it, or another sweep took it), or not ours to remove.
    }
  }
}

/** On a restart: the leftovers of every swarm's interrupted creates and removes. */
export async function sweepStore(root: string): Promise<void> {
  let entries: Dirent[];
  try {
    entries = await readdir(root, { withFileTypes: true });
  } catch {
    return;
  }
  const now = Date.now();
  // The records of live builds (see live.ts), written beside their place and renamed in.
  const live = await lstat(liveRecordsDir(root)).catch(() => null);
  if (live?.isDirectory() === true) await sweepWorkFolders(liveRecordsDir(root), now);
  for (const entry of entries) {
    // A link in the root is no swarm of this store: its folders are someone else's.
    if (!entry.isDirectory() || !isSwarmName(entry.name)) continue;
    // Its names, the artifacts its creates build, and the records of its names' generations.
    for (const parent of [
      snapshotsDir(root, entry.name),
      artifactsDir(root, entry.name),
      generationsDir(root, entry.name),
    ]) {
      const info = await lstat(parent).catch(() => null);
      if (info?.isDirectory() === true) await sweepWorkFolders(parent, now);
    }
  }
}

/** A lock's content is its owner's token: a few dozen bytes; more is not a lock of ours. */
const MAX_TOKEN_BYTES = 64;

/**
 * Removes a name lock whose owner is gone (see `abandoned`); true if it did, false if it is
 * held, gone already, or not a lock. The lock is renamed away and read again: a second
 * remover that raced to the same dead lock may have taken it and made its own meanwhile,
 * and that live lock is linked back.
 */
export async function removeAbandonedLock(path: string, now = Date.now()): Promise<boolean> {
  let token: string;
  try {
    const info = await lstat(path);
    if (!info.isFile() || info.size > MAX_TOKEN_BYTES) return false;
    token = await readFile(path, 'utf8');
    if (!abandoned(token, info.mtimeMs, now)) return false;
  } catch {
    return false;
  }
  const claimed = join(dirname(path), workFolderName(REMOVING_PREFIX));
  try {
    await rename(path, claimed);
  } catch {
    return false;
  }
  try {
    const took = await readFile(claimed, 'utf8').catch(() => null);
    if (took === token) return true;
    await link(claimed, path).catch(() => undefined);
    return false;
  } finally {
    await rm(claimed, { force: true });
  }
}

function abandoned(owner: string, mtimeMs: number, now: number): boolean {
  return ownerGone(owner) ?? now - mtimeMs > LEFTOVER_AGE_MS;
}

/**
 * Whether the process an owner's token names has ended; null when it cannot be asked (a
 * process of another machine, or no token of ours). A reused pid keeps what it owns until
 * that process ends too: late, never wrong.
 */
export function ownerGone(owner: string): boolean | null {
  const match = OWNED.exec(owner);
  if (match === null || match[2] !== MACHINE) return null;
  const pid = Number(match[1]);
  return pid <= MAX_PID ? !alive(pid) : null;
}

/** Whether a process of this pid exists; a reused pid errs on the safe side (kept until old). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists under another user. Anything else unexpected: assume it runs.
    return (error as { code?: unknown }).code !== 'ESRCH';
  }
}

/**
 * What tells this pid space from every other. Without /proc (another OS, or /proc hidden):
 * the host name with the machine id and the network cards' addresses, which hosts cloned from
 * one image do not share; with none of those either, this process alone, so no other
 * process's pids are judged (their leftovers go by age). Two processes of one machine that
 * get different answers only make a sweep late, never wrong.
 */
function machineFacts(): string {
  const boot = firstLine('/proc/sys/kernel/random/boot_id');
  const pids = linkTarget('/proc/self/ns/pid');
  if (boot !== null && pids !== null) return `boot\0${boot}\0${pids}`;
  const id = firstLine('/etc/machine-id') ?? firstLine('/var/lib/dbus/machine-id');
  const cards = hardwareAddresses();
  if (id === null && cards.length === 0) return `process\0${randomBytes(16).toString('hex')}`;
  return `host\0${hostname()}\0${id ?? ''}\0${[...new Set(cards)].sort().join(',')}`;
}

function hardwareAddresses(): string[] {
  try {
    return Object.values(networkInterfaces())
      .flatMap((addresses) => addresses ?? [])
      .filter((address) => !address.internal && address.mac !== '00:00:00:00:00:00')
      .map((address) => address.mac);
  } catch {
    // A sandbox that denies the query.
    return [];
  }
}

function firstLine(path: string): string | null {
  try {
    const line = readFileSync(path, 'utf8').split('\n', 1)[0]?.trim() ?? '';
    return line === '' ? null : line;
  } catch {
    return null;
  }
}

function linkTarget(path: string): string | null {
  try {
    return readlinkSync(path);
  } catch {
    return null;
  }
}

/** Removes a folder the store froze: its folders are made writable again first (a non-root owner could not empty them). */
export async function removeTree(path: string): Promise<void> {
  const thaw = async (dir: string): Promise<void> => {
    await chmod(dir, 0o755);
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      if (entry.isDirectory()) await thaw(join(dir, entry.name));
    }
  };
  try {
    await thaw(path);
  } catch {
    // Gone already, or partly: rm below says what is left.
  }
  await rm(path, { recursive: true, force: true });
}
