import type { Dirent } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pack } from 'tar-stream';
import { ServerAnswerError } from './server-client.js';

export interface PackedFolder {
  readonly archive: Buffer;
  readonly files: number;
}

/**
 * A folder's files as a tar archive for `PUT /v1/swarms/:swarm/live`: files and folders
 * only, as the server takes them. A link, FIFO, socket or device is refused here, with its
 * name, rather than by the server after the upload.
 */
export async function packFolder(folder: string): Promise<PackedFolder> {
  const archive = pack();
  const chunks: Buffer[] = [];
  // Read as it is written: the packer waits for its reader once it holds a few chunks.
  const read = (async () => {
    for await (const chunk of archive) chunks.push(chunk as Buffer);
  })();
  let files = 0;
  const walk = async (rel: string): Promise<void> => {
    const entries: Dirent[] = await readdir(rel === '' ? folder : join(folder, rel), { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const entry of entries) {
      const name = rel === '' ? entry.name : `${rel}/${entry.name}`;
      if (entry.isDirectory()) {
        await add(archive, { name: `${name}/`, type: 'directory', mode: 0o755 });
        await walk(name);
      } else if (entry.isFile()) {
        await add(archive, { name, type: 'file', mode: 0o644 }, await readFile(join(folder, name)));
        files += 1;
      } else {
        throw new ServerAnswerError(
          'ERR_SANDPOOL_HTTP_BAD_ARCHIVE',
          `${name} is not a file or a folder (a link, FIFO, socket or device): a deploy takes files and folders only`,
          null,
        );
      }
    }
  };
  try {
    await walk('');
  } finally {
    archive.finalize();
    await read;
  }
  return { archive: Buffer.concat(chunks), files };
}

function add(
  archive: ReturnType<typeof pack>,
  header: { name: string; type: 'file' | 'directory'; mode: number },
  bytes?: Buffer,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (error?: Error | null): void => (error ? reject(error) : resolve());
    if (bytes === undefined) archive.entry(header, done);
    else archive.entry(header, bytes, done);
  });
}
