import { mkdir, open } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { extract } from 'tar-stream';
import { archiveRefused, archiveTooLarge, HttpError } from '../errors.js';

export interface ArchiveLimits {
  /** Bytes of the archive as sent, headers included. */
  readonly maxBytes: number;
  /** Entries: files and folders. */
  readonly maxEntries: number;
}

export interface Extracted {
  readonly files: number;
  /** Bytes of the files written. */
  readonly bytes: number;
}

const MAX_PATH = 1024;
const MAX_SEGMENT = 255;
const MAX_DEPTH = 32;
const FILE_MODE = 0o644;

/**
 * Writes a tar archive's files into `dir`, a fresh empty folder, as a build would accept
 * them: regular files and folders only (no link, device or FIFO is ever made), each name a
 * relative path of plain segments (no `..`, no absolute path, no backslash or control
 * character), each path once, bounded in archive bytes and in entries. Modes and owners in
 * the archive are ignored: files are 0644. Nothing is written outside `dir`: nothing in it is
 * a link, and every name is checked before it is joined.
 */
export async function extractArchive(source: Readable, dir: string, limits: ArchiveLimits): Promise<Extracted> {
  const parser = extract();
  let received = 0;
  const count = (chunk: Buffer): void => {
    received += chunk.length;
    if (received > limits.maxBytes)
      parser.destroy(archiveTooLarge(`the archive is larger than ${limits.maxBytes} bytes`));
  };
  // Not stream.pipeline: on an error it would destroy the request, and the client would get no answer.
  source.on('data', count);
  source.pipe(parser);
  const seen = new Map<string, 'file' | 'directory'>();
  let files = 0;
  let bytes = 0;
  try {
    for await (const entry of parser) {
      const { header } = entry;
      if (seen.size >= limits.maxEntries) {
        throw archiveTooLarge(`the archive holds more than ${limits.maxEntries} files and folders`);
      }
      const rel = checkedPath(header.name);
      if (header.type !== 'file' && header.type !== 'directory') {
        throw archiveRefused(
          `${show(rel ?? header.name)} is a ${header.type ?? 'entry of no type'}: only files and folders are taken`,
        );
      }
      if (rel === null) {
        // `./` itself: the folder being written.
        if (header.type === 'directory') {
          entry.resume();
          continue;
        }
        throw archiveRefused(`${show(header.name)} is not a file name`);
      }
      const before = seen.get(rel);
      if (before !== undefined && (before === 'file' || header.type === 'file')) {
        throw archiveRefused(`${show(rel)} is in the archive twice`);
      }
      for (const parent of parentsOf(rel)) {
        if (seen.get(parent) === 'file') throw archiveRefused(`${show(rel)} is inside ${show(parent)}, a file`);
        seen.set(parent, 'directory');
      }
      seen.set(rel, header.type);
      const path = join(dir, ...rel.split('/'));
      if (header.type === 'directory') {
        await mkdir(path, { recursive: true });
        entry.resume();
        continue;
      }
      await mkdir(join(path, '..'), { recursive: true });
      // 'wx': a name is written once, and never through anything already there.
      const handle = await open(path, 'wx', FILE_MODE);
      try {
        for await (const chunk of entry as AsyncIterable<Buffer>) {
          bytes += chunk.length;
          await handle.write(chunk);
        }
      } finally {
        await handle.close();
      }
      files += 1;
    }
  } catch (error) {
    parser.destroy();
    // The parser's own errors are the archive's fault; a file system's (ENOSPC…) are the server's.
    if (error instanceof HttpError || (error instanceof Error && 'syscall' in error)) throw error;
    throw archiveRefused(`not a tar archive this server reads: ${messageOf(error)}`);
  } finally {
    source.unpipe(parser);
    source.off('data', count);
  }
  if (files === 0) throw archiveRefused('the archive holds no files');
  return { files, bytes };
}

/**
 * The entry's path as `a/b/c`, or null for the archive's own top (`.` or `./`). Throws for a
 * name that could leave the folder or that a file system or a later tool might read otherwise.
 */
function checkedPath(name: string): string | null {
  let text = name.replace(/\/+$/, '');
  while (text.startsWith('./')) text = text.slice(2);
  if (text === '' || text === '.') return null;
  if (text.length > MAX_PATH) throw archiveRefused(`a name is longer than ${MAX_PATH} characters`);
  if (text.startsWith('/')) throw archiveRefused(`${show(text)} is an absolute path`);
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what is refused.
  if (/[\\\u0000-\u001f\u007f]/.test(text))
    throw archiveRefused(`${show(text)} holds a backslash or a control character`);
  const segments = text.split('/');
  if (segments.length > MAX_DEPTH) throw archiveRefused(`${show(text)} is more than ${MAX_DEPTH} folders deep`);
  for (const segment of segments) {
    if (segment === '' || segment === '.' || segment === '..')
      throw archiveRefused(`${show(text)} is not a plain relative path`);
    if (Buffer.byteLength(segment) > MAX_SEGMENT)
      throw archiveRefused(`a name in ${show(text)} is longer than ${MAX_SEGMENT} bytes`);
  }
  return segments.join('/');
}

function parentsOf(rel: string): string[] {
  const segments = rel.split('/');
  return segments.slice(0, -1).map((_, index) => segments.slice(0, index + 1).join('/'));
}

/** A name as it goes into a message: quoted, bounded. */
function show(name: string): string {
  return JSON.stringify(name.length > 200 ? `${name.slice(0, 200)}…` : name);
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
