// Reading a file whose path a tenant controls. No zod here: worker threads load this module.
import { closeSync, constants, fstatSync, lstatSync, openSync, readSync, type Stats } from 'node:fs';
import { type FileHandle, lstat, open } from 'node:fs/promises';

/**
 * O_NOFOLLOW: a file swapped for a link after the walk is not read through.
 * O_NONBLOCK: a file swapped for a FIFO opens at once instead of waiting for a writer; the
 * fstat below then refuses it, so nothing ever blocks on it.
 */
const FLAGS = constants.O_RDONLY | (constants.O_NOFOLLOW ?? 0) | (constants.O_NONBLOCK ?? 0);

export type UnsafeReason = 'missing' | 'not-regular' | 'hard-link' | 'too-large' | 'changed' | 'unreadable' | 'outside';

/** Why a file could not be read safely; callers turn it into the SandpoolError their context needs. */
export class UnsafeFileError extends Error {
  constructor(
    readonly reason: UnsafeReason,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export interface ReadLimits {
  /** Most bytes the file may hold, by its apparent size: a sparse file counts in full. */
  maxBytes: number;
  /** Refuse a regular file with more than one name (a hard link may be another tenant's file). */
  singleLink?: boolean;
  /**
   * Called with the open descriptor and its stats before a byte is read: where the caller
   * proves the inode it holds is one it may read (a swap of a folder on the path is caught here).
   */
  verify?: (stats: Stats, fd: number) => Promise<void>;
}

/**
 * Reads a whole regular file through one descriptor: the checks and the read see the same
 * inode, whatever happens to the path meanwhile. A file that grows while it is read is
 * refused rather than cut short.
 */
export async function readRegularFile(path: string, limits: ReadLimits): Promise<Buffer> {
  let handle: FileHandle;
  try {
    // A FIFO is never opened for reading (that alone can release a writer waiting on it).
    checkKind(await lstat(path));
    handle = await open(path, FLAGS);
  } catch (cause) {
    throw openError(cause);
  }
  try {
    const stats = await handle.stat();
    checkStats(stats, limits);
    await limits.verify?.(stats, handle.fd);
    const buffer = Buffer.allocUnsafe(stats.size);
    let filled = 0;
    while (filled < stats.size) {
      const { bytesRead } = await handle.read(buffer, filled, stats.size - filled, filled);
      if (bytesRead === 0) throw new UnsafeFileError('changed', 'shrank while it was being read');
      filled += bytesRead;
    }
    const { bytesRead } = await handle.read(Buffer.allocUnsafe(1), 0, 1, filled);
    if (bytesRead !== 0) throw new UnsafeFileError('changed', 'grew while it was being read');
    return buffer;
  } catch (error) {
    throw readError(error);
  } finally {
    await handle.close();
  }
}

/**
 * The same read with synchronous calls, for the coordinator's own small reads (a manifest
 * when a key resolves): they must not queue in the libuv pool behind a tenant's async jobs.
 */
export function readRegularFileSync(path: string, limits: Omit<ReadLimits, 'verify'>): Buffer {
  let fd: number;
  try {
    checkKind(lstatSync(path));
    fd = openSync(path, FLAGS);
  } catch (cause) {
    throw openError(cause);
  }
  try {
    const stats = fstatSync(fd);
    checkStats(stats, limits);
    const buffer = Buffer.allocUnsafe(stats.size);
    let filled = 0;
    while (filled < stats.size) {
      const bytesRead = readSync(fd, buffer, filled, stats.size - filled, filled);
      if (bytesRead === 0) throw new UnsafeFileError('changed', 'shrank while it was being read');
      filled += bytesRead;
    }
    if (readSync(fd, Buffer.allocUnsafe(1), 0, 1, filled) !== 0) {
      throw new UnsafeFileError('changed', 'grew while it was being read');
    }
    return buffer;
  } catch (error) {
    throw readError(error);
  } finally {
    closeSync(fd);
  }
}

function checkKind(stats: Stats): void {
  if (stats.isSymbolicLink()) throw new UnsafeFileError('not-regular', 'is a symlink');
  if (!stats.isFile()) throw new UnsafeFileError('not-regular', 'is not a regular file');
}

function openError(cause: unknown): UnsafeFileError {
  if (cause instanceof UnsafeFileError) return cause;
  const code = (cause as { code?: unknown }).code;
  if (code === 'ENOENT' || code === 'ENOTDIR') {
    return new UnsafeFileError('missing', 'disappeared while it was being read (renamed or removed)', { cause });
  }
  if (code === 'ELOOP' || code === 'EMLINK') {
    return new UnsafeFileError('not-regular', 'became a symlink while it was being read', { cause });
  }
  return new UnsafeFileError('unreadable', `cannot be opened (${String(code)})`, { cause });
}

function checkStats(stats: Stats, limits: ReadLimits): void {
  if (!stats.isFile()) throw new UnsafeFileError('not-regular', 'is not a regular file');
  if (limits.singleLink === true && stats.nlink > 1) {
    throw new UnsafeFileError('hard-link', `has ${stats.nlink} hard links; only files with one name can be copied`);
  }
  if (stats.size > limits.maxBytes) {
    throw new UnsafeFileError('too-large', `holds ${stats.size} bytes, over the ${limits.maxBytes} left`);
  }
}

function readError(error: unknown): UnsafeFileError {
  if (error instanceof UnsafeFileError) return error;
  return new UnsafeFileError('unreadable', 'cannot be read', { cause: error });
}
