/**
 * When a live key may reuse its last artifact (README, "On disk"): only while nothing it was
 * built from changed. Each change below is one a build from scratch sees; the reuse must see
 * it too, in this process (a reload) and in the next one (its record), with a neighbour key
 * answering the whole time.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { mkdir, rename, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Pool } from 'sandpool';
import { describe, expect, it } from 'vitest';
import { rejection } from './support/errors.js';
import { THREAD_NEIGHBOUR as NEIGHBOUR, withNeighbour } from './support/neighbours.js';
import { eventually, installCleanup, openPool } from './support/pool.js';
import { counterAgent, makeRoot, writeFiles } from './support/root.js';

installCleanup();

/** What `a/s`'s `v()` answers, or the code it fails with. */
async function answer(pool: Pool): Promise<unknown> {
  return pool.call('a/s', 'v').catch((error: { code?: unknown }) => error.code);
}

const IMPORTS_PKG = { 'a/live/s.mjs': "import x from 'pkg';\nexport const v = () => x;\n" };

/** A folder, what its key answers, a change, and what it answers after: as a build from scratch of the changed folder does. */
interface Change {
  readonly files: Record<string, string>;
  readonly setup?: (root: string) => Promise<void>;
  readonly before: unknown;
  readonly change: (root: string) => Promise<void>;
  readonly after: unknown;
}

const CHANGES: Record<string, Change> = {
  "a package.json's main rewritten in place under live/node_modules": {
    files: {
      ...IMPORTS_PKG,
      'a/live/node_modules/pkg/package.json': JSON.stringify({ name: 'pkg', main: 'one.js' }),
      'a/live/node_modules/pkg/one.js': "module.exports = 'one';",
      'a/live/node_modules/pkg/two.js': "module.exports = 'two';",
    },
    before: 'one',
    change: (root) =>
      writeFile(join(root, 'a/live/node_modules/pkg/package.json'), JSON.stringify({ name: 'pkg', main: 'two.js' })),
    after: 'two',
  },
  "an installed package's exports rewritten in place": {
    files: {
      ...IMPORTS_PKG,
      'node_modules/pkg/package.json': JSON.stringify({ name: 'pkg', exports: './one.js' }),
      'node_modules/pkg/one.js': "module.exports = 'one';",
      'node_modules/pkg/two.js': "module.exports = 'two';",
    },
    before: 'one',
    change: (root) =>
      writeFile(join(root, 'node_modules/pkg/package.json'), JSON.stringify({ name: 'pkg', exports: './two.js' })),
    after: 'two',
  },
  "an installed package's link moved to another version (pnpm)": {
    files: {
      ...IMPORTS_PKG,
      'node_modules/.pnpm/pkg@1/node_modules/pkg/index.js': "module.exports = 'one';",
      'node_modules/.pnpm/pkg@2/node_modules/pkg/index.js': "module.exports = 'two';",
    },
    setup: (root) => symlink('.pnpm/pkg@1/node_modules/pkg', join(root, 'node_modules/pkg')),
    before: 'one',
    change: async (root) => {
      await symlink('.pnpm/pkg@2/node_modules/pkg', join(root, 'node_modules/pkg.next'));
      await rename(join(root, 'node_modules/pkg.next'), join(root, 'node_modules/pkg'));
    },
    after: 'two',
  },
  "a package the swarm's own node_modules adds, nearer than the installed one": {
    files: {
      ...IMPORTS_PKG,
      'node_modules/pkg/index.js': "module.exports = 'installed';",
      'a/node_modules/other/index.js': "module.exports = 'other';",
    },
    before: 'installed',
    change: (root) => writeFiles(root, { 'a/node_modules/pkg/index.js': "module.exports = 'own';" }),
    after: 'own',
  },
  'a file added beside the folder an import out of live/ resolved to': {
    files: {
      'a/live/s.mjs': "import x from '../lib';\nexport const v = () => x;\n",
      'a/lib/index.js': "module.exports = 'folder';",
    },
    before: 'folder',
    change: (root) => writeFiles(root, { 'a/lib.js': "module.exports = 'file';" }),
    after: 'file',
  },
  'a package installed that a stem failed to find': {
    files: { ...IMPORTS_PKG, 'node_modules/other/index.js': "module.exports = 'other';" },
    before: 'ERR_SANDPOOL_MODULE_LOAD',
    change: (root) => writeFiles(root, { 'node_modules/pkg/index.js': "module.exports = 'installed';" }),
    after: 'installed',
  },
  'a file made that an import out of live/ failed to find': {
    files: {
      'a/live/s.mjs': "import x from '../shared/x.js';\nexport const v = () => x;\n",
      'a/shared/y.js': "module.exports = 'y';",
    },
    before: 'ERR_SANDPOOL_MODULE_LOAD',
    change: (root) => writeFiles(root, { 'a/shared/x.js': "module.exports = 'x';" }),
    after: 'x',
  },
  "the swarm's package.json imports map rewritten in place": {
    files: {
      'a/live/s.mjs': "import x from '#x';\nexport const v = () => x;\n",
      'a/package.json': JSON.stringify({ imports: { '#x': './one.js' } }),
      'a/one.js': "module.exports = 'one';",
      'a/two.js': "module.exports = 'two';",
    },
    before: 'one',
    change: (root) => writeFile(join(root, 'a/package.json'), JSON.stringify({ imports: { '#x': './two.js' } })),
    after: 'two',
  },
};

describe('a live key reuses its artifact only while nothing it was built from changed', () => {
  it.each(Object.entries(CHANGES))('sees %s: at a reload, and in the next process', async (_, change) => {
    const made = async (): Promise<string> => {
      const root = await makeRoot({ ...(await counterAgent('n')), ...change.files });
      await change.setup?.(root);
      return root;
    };
    // At a reload: the same pool, asked to reload after the change.
    const root = await made();
    const pool = openPool({ root });
    expect(await pool.call(NEIGHBOUR, 'add', [1, 1])).toBe(2);
    const reloaded = await withNeighbour(pool, async () => {
      expect(await answer(pool)).toBe(change.before);
      await change.change(root);
      await pool.invalidate({ swarm: 'a' });
      return answer(pool);
    });
    expect(reloaded).toBe(change.after);
    // In the next process: a pool on the same root after the change, with the last one's record there.
    const next = await made();
    const first = openPool({ root: next });
    expect(await answer(first)).toBe(change.before);
    await first.close();
    await change.change(next);
    const second = openPool({ root: next });
    expect(await second.call(NEIGHBOUR, 'add', [1, 1])).toBe(2);
    expect(await withNeighbour(second, () => answer(second))).toBe(change.after);
  });

  it('sees a write to an input made while the build that read it was still going', async () => {
    // The stem `a` reads ../shared/x.js; `zz`, bundled after it, keeps the build going for a while.
    const lines = Array.from({ length: 60_000 }, (_, i) => `const v${i}: number = ${i};`);
    const root = await makeRoot({
      ...(await counterAgent('n')),
      'a/live/a.mjs': "import x from '../shared/x.js';\nexport const v = () => x;\n",
      'a/live/zz.ts': `${lines.join('\n')}\nexport const last = (): number => v59999;\n`,
      'a/shared/x.js': "module.exports = 'old';",
    });
    const input = join(root, 'a/shared/x.js');
    // An access time older than the file: the build's read of it sets it (relatime), which is how
    // this test sees the read happen.
    const { mtime } = statSync(input);
    await utimes(input, new Date(0), mtime);
    const pool = openPool({ root });
    expect(await pool.call(NEIGHBOUR, 'add', [1, 1])).toBe(2);
    const seen = await withNeighbour(pool, async () => {
      const first = pool.call('a/a', 'v');
      await eventually(() => statSync(input).atimeMs > 0, 120_000);
      // Read already: this write is the build's to miss, not to include.
      await writeFile(input, "module.exports = 'new';");
      const during = await first;
      await pool.invalidate({ swarm: 'a' });
      return { during, after: await pool.call('a/a', 'v') };
    });
    expect(seen).toEqual({ during: 'old', after: 'new' });
  });
});

describe('a live key whose folder did not change', () => {
  it('reuses its artifact, in this process and the next', async () => {
    const root = await makeRoot({
      ...(await counterAgent('n')),
      ...IMPORTS_PKG,
      'node_modules/pkg/index.js': "module.exports = 'installed';",
    });
    const pool = openPool({ root });
    expect(await answer(pool)).toBe('installed');
    const artifacts = join(root, '.sandpool-cache/artifacts/a');
    const built = statSync(join(root, '.sandpool-cache/live/a.json')).mtimeMs;
    await pool.invalidate({ swarm: 'a' });
    expect(await answer(pool)).toBe('installed');
    await pool.close();
    const next = openPool({ root });
    expect(await answer(next)).toBe('installed');
    // One build only: the record was written once, and one artifact holds the swarm.
    expect(statSync(join(root, '.sandpool-cache/live/a.json')).mtimeMs).toBe(built);
    expect(readdirSync(artifacts).filter((name) => /^[0-9a-f]{64}$/.test(name))).toHaveLength(1);
    await rm(join(root, 'node_modules/pkg/index.js'));
    await writeFiles(root, { 'node_modules/pkg/index.js': "module.exports = 'replaced';" });
    await next.invalidate({ swarm: 'a' });
    expect(await answer(next)).toBe('replaced');
  });
});

describe('a live folder past the stamp’s bound', () => {
  it('is refused before it is built: no copy of 100,000 files at each start, the neighbour answering', async () => {
    const root = await makeRoot({ ...(await counterAgent('n')), 'a/live/s.mjs': 'export const v = () => 1;\n' });
    for (let folder = 0; folder < 100; folder++) {
      await mkdir(join(root, `a/live/many/${folder}`), { recursive: true });
      await Promise.all(
        Array.from({ length: 1000 }, (_, i) => writeFile(join(root, `a/live/many/${folder}/${i}`), '')),
      );
    }
    const pool = openPool({ root, queueTimeoutMs: 600_000 });
    expect(await pool.call(NEIGHBOUR, 'add', [1, 1])).toBe(2);
    const error = await withNeighbour(pool, () => rejection(pool.call('a/s', 'v')));
    expect(error.code).toBe('ERR_SANDPOOL_MODULE_NOT_FOUND');
    expect(error.message).toContain('live/: it holds over 100000 entries');
    // Nothing was copied: no artifact of the swarm, nor a work folder.
    const artifacts = join(root, '.sandpool-cache/artifacts/a');
    expect(existsSync(artifacts) ? readdirSync(artifacts) : []).toEqual([]);
  });
});
