import { symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { hostPaths } from 'sandpool/internal';
import { describe, expect, it } from 'vitest';
import { installCleanup } from './support/pool.js';
import { makeRoot } from './support/root.js';

installCleanup();

/** The one rewrite of host paths: the library's agent errors and the server's answers both go through it. */
describe('hostPaths', () => {
  it('names the root and sandpool by label, as paths, real paths and file: URLs, and the places it is given', async () => {
    const real = await makeRoot();
    const linked = join(await makeRoot(), 'root');
    await symlink(real, linked);
    const redact = hostPaths(linked, [
      ['<tmp>', tmpdir()],
      ['<home>', '/'],
    ]);
    const text = [
      `${linked}/a/live/agent.mjs:3:9`,
      `${pathToFileURL(join(real, 'a/live/agent.mjs')).href}:1`,
      `${tmpdir()}/other.txt`,
      `${import.meta.resolve('sandpool')}`,
      '/etc/passwd',
    ].join('\n');
    expect(redact(text).split('\n')).toEqual([
      '<root>/a/live/agent.mjs:3:9',
      '<root>/a/live/agent.mjs:1',
      // The root lies inside the temp folder: the longer place is taken whole first.
      '<tmp>/other.txt',
      '<sandpool>/dist/index.js',
      // A place of one character is no place: `/` would rewrite every path.
      '/etc/passwd',
    ]);
  });
});
