// What a name's pointer may not go back from: the highest generation the store gave the name.
// No zod here: the coordinator reads it, synchronously, when it reads a pointer that changed.
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { snapshotCorrupt } from '../errors.js';
import { generationFile, generationsDir, TEMP_PREFIX } from './layout.js';
import { workFolderName } from './leftovers.js';
import type { Pointer } from './pointer.js';
import { readRegularFileSync, UnsafeFileError } from './safe-read.js';

/** A decimal safe integer and a newline; anything longer was not written by the store. */
const MAX_RECORD_BYTES = 32;
const RECORD = /^(0|[1-9][0-9]{0,15})\n?$/;

/**
 * `<root>/.sandpool-cache/generations/<swarm>/<name>`: the highest generation the store has
 * given `name`, by a move or a remove (0 when it never did: a name last moved before
 * generations). A record the store cannot read is CORRUPT: a pointer is never judged without it.
 */
export function recordedGeneration(root: string, swarm: string, name: string, key?: string): number {
  let text: string;
  try {
    text = readRegularFileSync(generationFile(root, swarm, name), { maxBytes: MAX_RECORD_BYTES }).toString('utf8');
  } catch (error) {
    if (error instanceof UnsafeFileError && error.reason === 'missing') return 0;
    throw snapshotCorrupt(`the store's record of snapshot ${name}'s generation is unreadable`, key, error);
  }
  const value = RECORD.test(text) ? Number(text.trim()) : Number.NaN;
  if (!Number.isSafeInteger(value)) {
    throw snapshotCorrupt(`the store's record of snapshot ${name}'s generation is malformed`, key);
  }
  return value;
}

/**
 * Sets the record, written beside it and renamed over it, so a reader sees the old value or the
 * new one. A store writes it holding the name's lock: after the pointer a move writes, so a
 * reader never finds the record ahead of the pointer in place (which it would refuse), and
 * before a remove takes the pointer away, so no pointer put back once the name is gone passes.
 */
export async function recordGeneration(root: string, swarm: string, name: string, generation: number): Promise<void> {
  const dir = generationsDir(root, swarm);
  await mkdir(dir, { recursive: true });
  const temp = join(dir, workFolderName(TEMP_PREFIX));
  try {
    await writeFile(temp, `${generation}\n`, { flag: 'wx', mode: 0o644 });
    await rename(temp, generationFile(root, swarm, name));
  } finally {
    await rm(temp, { force: true });
  }
}

/** A pointer older than the name's last move: an old pointer put back (a rollback no move made). */
export function checkGeneration(pointer: Pointer, recorded: number, key?: string): void {
  if (pointer.generation < recorded) {
    throw snapshotCorrupt(
      `snapshot ${pointer.name} holds a pointer older than its last move (generation ${pointer.generation}, the store's ${recorded}): an old pointer was put back`,
      key,
    );
  }
}
