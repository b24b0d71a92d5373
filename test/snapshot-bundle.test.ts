// Self-contained snapshots: packages and out-of-live imports pinned at create, what cannot be
// pinned refused at create, the worker running exactly the bytes it checked, signed manifests.
import { createHash } from 'node:crypto';
import { readdirSync } from 'node:fs';
import {
  chmod,
  copyFile,
  cp,
  link,
  mkdir,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  symlink,
  truncate,
  writeFile,
} from 'node:fs/promises';
import { join } from 'node:path';
import { SnapshotStore } from 'sandpool';
import { afterEach, describe, expect, it } from 'vitest';
import { code, rejection } from './support/errors.js';
import { installCleanup, invariants, openPool } from './support/pool.js';
import { counterAgent, makeRoot, removeRoots, snapshotContent, writeFiles } from './support/root.js';

installCleanup();
afterEach(removeRoots);

const MANIFEST = '.sandpool-manifest.json';
const SECRET = 'a-secret-of-at-least-16-chars';
const sha256 = (data: string | Buffer): string => createHash('sha256').update(data).digest('hex');

/** A swarm whose agent uses a package up the tree, a pnpm-linked one in live/, and an SDK outside live/. */
async function swarmWithDependencies(version: string): Promise<string> {
  const root = await makeRoot({
    'node_modules/greet/package.json': JSON.stringify({ name: 'greet', version, main: 'index.cjs' }),
    'node_modules/greet/index.cjs': `const path = require('node:path');\nexports.greet = (n) => 'hello ' + n + ' from ${version} ' + path.sep;\n`,
    [`a/live/node_modules/.pnpm/fmt@${version}/node_modules/fmt/package.json`]: JSON.stringify({
      name: 'fmt',
      type: 'module',
      exports: './fmt.mjs',
    }),
    [`a/live/node_modules/.pnpm/fmt@${version}/node_modules/fmt/fmt.mjs`]: `export const fmt = (s) => '[${version}] ' + s;\n`,
    'a/shared/sdk.mjs': `export const sdk = () => 'sdk-${version}';\n`,
    'a/live/notifier_agent.mjs': [
      "import { greet } from 'greet';",
      "import { fmt } from 'fmt';",
      "import { sdk } from '../shared/sdk.mjs';",
      'export const hello = (n) => fmt(greet(n)) + " " + sdk();',
    ].join('\n'),
  });
  await symlink(`.pnpm/fmt@${version}/node_modules/fmt`, join(root, 'a/live/node_modules/fmt'));
  return root;
}

/** Replaces every dependency with another version, as an install would. */
async function upgrade(root: string, version: string): Promise<void> {
  await writeFiles(root, {
    'node_modules/greet/index.cjs': `exports.greet = (n) => 'hello ' + n + ' from ${version}';\n`,
    'a/shared/sdk.mjs': `export const sdk = () => 'sdk-${version}';\n`,
  });
  const pnpm = join(root, 'a/live/node_modules');
  await writeFiles(pnpm, {
    [`.pnpm/fmt@${version}/node_modules/fmt/package.json`]: JSON.stringify({ name: 'fmt', exports: './fmt.mjs' }),
    [`.pnpm/fmt@${version}/node_modules/fmt/fmt.mjs`]: `export const fmt = (s) => '[${version}] ' + s;\n`,
  });
  await rm(join(pnpm, 'fmt'));
  await symlink(`.pnpm/fmt@${version}/node_modules/fmt`, join(pnpm, 'fmt'));
}

describe('self-contained snapshots', () => {
  it('pin packages up the tree, pnpm links in live/ and imports out of live/: the snapshot answers the same after they change', async () => {
    const root = await swarmWithDependencies('1.0.0');
    const first = openPool({ root, permissions: { fsRead: [join(root, 'a/shared')] } });
    const frozen = await first.snapshots.create('a', 'jan');
    expect(frozen.stems).toEqual(['notifier_agent']);
    const before = await first.call('a@jan/notifier_agent', 'hello', ['ann']);
    expect(before).toBe('[1.0.0] hello ann from 1.0.0 / sdk-1.0.0');
    await first.close();

    await upgrade(root, '2.0.0');
    const second = openPool({ root, permissions: { fsRead: [join(root, 'a/shared')] } });
    expect(await second.call('a/notifier_agent', 'hello', ['ann'])).toBe('[2.0.0] hello ann from 2.0.0 sdk-2.0.0');
    expect(await second.call('a@jan/notifier_agent', 'hello', ['ann'])).toBe(before);
    // No node_modules was copied: the bundle holds what the stem uses.
    expect(
      Object.keys(JSON.parse(await readFile(join(await snapshotContent(root, 'a', 'jan'), MANIFEST), 'utf8')).files),
    ).toEqual([
      '.sandpool-bundles/notifier_agent.mjs',
      '.sandpool-bundles/notifier_agent.mjs.map',
      'notifier_agent.mjs',
    ]);
  });

  it('gives equal content an equal digest, whatever the name and date', async () => {
    const root = await swarmWithDependencies('1.0.0');
    const store = new SnapshotStore({ root });
    const jan = await store.create('a', 'jan');
    const feb = await store.create('a', 'feb');
    expect(feb.digest).toBe(jan.digest);
    expect((await store.create('a', 'jan')).createdAt).toBe(jan.createdAt);
    await upgrade(root, '2.0.0');
    expect((await store.create('a', 'mar')).digest).not.toBe(jan.digest);
  });

  it('holds no executable file: exec bits in live/ are dropped, and a mode is not content', async () => {
    const root = await makeRoot({
      'a/live/notifier_agent.mjs': "export const f = () => 'ran';\n",
      'a/live/bin/tool.sh': '#!/bin/sh\necho tool\n',
    });
    await chmod(join(root, 'a/live/bin/tool.sh'), 0o755);
    await chmod(join(root, 'a/live/notifier_agent.mjs'), 0o775);
    const store = new SnapshotStore({ root });
    const exec = await store.create('a', 'exec');
    const modes = async (dir: string): Promise<string[]> => {
      const out: string[] = [];
      for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
        const mode = (await stat(join(entry.parentPath, entry.name))).mode & 0o777;
        out.push(`${entry.isDirectory() ? 'dir' : 'file'} ${mode.toString(8)}`);
      }
      return [...new Set(out)].sort();
    };
    // Every file read-only to all and executable by none, whatever live/ said; folders searchable.
    expect(await modes(await snapshotContent(root, 'a', 'exec'))).toEqual(['dir 555', 'file 444']);
    await chmod(join(root, 'a/live/bin/tool.sh'), 0o644);
    await chmod(join(root, 'a/live/notifier_agent.mjs'), 0o644);
    expect((await store.create('a', 'plain')).digest).toBe(exec.digest);
  });

  it.each([
    ['a native addon', "import addon from './build/addon.node';\nexport const f = () => addon;", 'native addon'],
    ['a computed import()', 'export const f = (name) => import(name);', 'import'],
    [
      'a computed require()',
      "import { createRequire } from 'node:module';\nexport const f = (n) => require(n);",
      'require',
    ],
    ['a missing package', "import x from 'not-installed';\nexport const f = () => x;", 'not-installed'],
  ])('refuse %s at create with SNAPSHOT_BUILD, and create nothing', async (_label, source, words) => {
    const root = await makeRoot({ 'a/live/notifier_agent.mjs': source, 'a/live/build/addon.node': 'not really' });
    const store = new SnapshotStore({ root });
    const error = await rejection(store.create('a', 'jan'));
    expect(error.code).toBe('ERR_SANDPOOL_SNAPSHOT_BUILD');
    expect(error.message).toContain('live/notifier_agent.mjs');
    expect(error.message).toContain(words);
    expect(error.message).not.toContain(root);
    expect(await store.list('a')).toEqual([]);
  });

  it("give each module its own import.meta: files next to the stem, or next to a helper, read from the snapshot's copy", async () => {
    const root = await makeRoot({
      'a/live/notifier_agent.mjs': [
        "import { readFileSync } from 'node:fs';",
        "import { join } from 'node:path';",
        "import { fromLib, libDir } from './lib/reader.mjs';",
        'export const read = () => [',
        "  readFileSync(new URL('./data.txt', import.meta.url), 'utf8'),",
        "  readFileSync(join(import.meta.dirname, 'data.txt'), 'utf8'),",
        '  fromLib(),',
        '  libDir(),',
        "  import.meta.resolve('./data.txt') === new URL('./data.txt', import.meta.url).href,",
        '];',
      ].join('\n'),
      'a/live/data.txt': 'beside the stem',
      'a/live/lib/reader.mjs':
        "import { readFileSync } from 'node:fs';\nexport const fromLib = () => readFileSync(new URL('./data.txt', import.meta.url), 'utf8');\nexport const libDir = () => import.meta.filename.endsWith('/lib/reader.mjs');\n",
      'a/live/lib/data.txt': 'beside the helper',
    });
    const pool = openPool({ root });
    await pool.snapshots.create('a', 'jan');
    // The live files change: the snapshot reads its own copies.
    await writeFiles(root, { 'a/live/data.txt': 'changed', 'a/live/lib/data.txt': 'changed' });
    expect(await pool.call('a@jan/notifier_agent', 'read')).toEqual([
      'beside the stem',
      'beside the stem',
      'beside the helper',
      true,
      true,
    ]);
  });

  it('refuse to bundle another swarm’s files', async () => {
    const root = await makeRoot({
      'b/live/secret.json': '{"token":"b-only"}',
      'a/live/notifier_agent.mjs': "import s from '../../b/live/secret.json';\nexport const f = () => s;",
    });
    const error = await rejection(new SnapshotStore({ root }).create('a', 'jan'));
    expect(error.code).toBe('ERR_SANDPOOL_SNAPSHOT_BUILD');
    expect(error.message).toContain(
      "live/notifier_agent.mjs:1:15: the import is missing, or leads outside the swarm's folder",
    );
    expect(error.message).not.toContain(root);
  });
});

describe('the worker runs exactly the bytes it verified', () => {
  it('never runs a bundle swapped in while workers start (each load is the good code or SNAPSHOT_CORRUPT)', async () => {
    const root = await makeRoot({ 'a/live/notifier_agent.mjs': "export const who = () => 'good';\n" });
    await new SnapshotStore({ root }).create('a', 'jan');
    const bundle = join(await snapshotContent(root, 'a', 'jan'), '.sandpool-bundles/notifier_agent.mjs');
    const good = join(root, 'good.mjs');
    const evil = join(root, 'evil.mjs');
    await copyFile(bundle, good);
    await writeFile(evil, `${(await readFile(good, 'utf8')).replace(/good/g, 'evil')}`);
    let swapping = true;
    const swapper = (async () => {
      const temp = join(root, 'swap.tmp');
      while (swapping) {
        for (const source of [evil, good]) {
          await copyFile(source, temp);
          await rename(temp, bundle);
        }
      }
    })();
    const outcomes: string[] = [];
    try {
      for (let i = 0; i < 30; i++) {
        const pool = openPool({ root });
        outcomes.push(
          await pool.call('a@jan/notifier_agent', 'who', []).then(
            (value) => String(value),
            (error: { code?: string }) => String(error.code),
          ),
        );
        await pool.close();
      }
    } finally {
      swapping = false;
      await swapper;
    }
    expect(outcomes.filter((outcome) => outcome !== 'good' && outcome !== 'ERR_SANDPOOL_SNAPSHOT_CORRUPT')).toEqual([]);
  });
});

describe('manifests', () => {
  it('catch a change to every file of a snapshot, one at a time', async () => {
    const root = await makeRoot({
      'a/live/notifier_agent.mjs': "import { h } from './lib/h.mjs';\nexport const f = h;\n",
      'a/live/lib/h.mjs': 'export const h = () => 1;\n',
      'a/live/lib/data.json': '{"a":1}\n',
      'a/live/other.mjs': 'export const g = () => 2;\n',
    });
    const store = new SnapshotStore({ root });
    await store.create('a', 'jan');
    const dir = await snapshotContent(root, 'a', 'jan');
    const files = Object.keys(JSON.parse(await readFile(join(dir, MANIFEST), 'utf8')).files);
    // Four files of live/, two bundles and their source maps: a changed map is caught too.
    expect(files.length).toBe(8);
    for (const file of files) {
      const path = join(dir, file);
      const original = await readFile(path);
      await chmod(path, 0o644);
      await writeFile(path, Buffer.concat([original, Buffer.from(' ')]));
      const error = await rejection(store.verify('a', 'jan'));
      expect([file, error.code, error.message.includes(file)]).toEqual([file, 'ERR_SANDPOOL_SNAPSHOT_CORRUPT', true]);
      await writeFile(path, original);
    }
    await expect(store.verify('a', 'jan')).resolves.toMatchObject({ name: 'jan' });
  });

  it('with snapshotSecret, catch a file, the manifest and the pointer rewritten together; without one, cannot', async () => {
    const root = await makeRoot({ 'a/live/notifier_agent.mjs': "export const f = () => 'good';\n" });
    const signed = new SnapshotStore({ root, snapshotSecret: SECRET });
    expect((await signed.create('a', 'jan')).signed).toBe(true);
    await expect(signed.verify('a', 'jan')).resolves.toMatchObject({ signed: true });

    // Rewrite the bundle, then the manifest to match it, digest included; move the content to
    // its new digest's folder and point the name there, keeping its old signature.
    const dir = await snapshotContent(root, 'a', 'jan');
    const rel = '.sandpool-bundles/notifier_agent.mjs';
    const evil = "export const f = () => 'evil';\n";
    await chmod(dir, 0o755);
    await chmod(join(dir, '.sandpool-bundles'), 0o755);
    await chmod(join(dir, rel), 0o644);
    await writeFile(join(dir, rel), evil);
    const manifest = JSON.parse(await readFile(join(dir, MANIFEST), 'utf8'));
    manifest.files[rel] = { sha256: sha256(evil), bytes: Buffer.byteLength(evil) };
    const list = (o: Record<string, unknown>): [string, unknown][] =>
      Object.keys(o)
        .sort()
        .map((k): [string, unknown] => [k, o[k]]);
    const fileList = list(manifest.files).map(([path, e]) => [
      path,
      (e as { sha256: string }).sha256,
      (e as { bytes: number }).bytes,
    ]);
    manifest.digest = sha256(JSON.stringify(['sandpool-snapshot', 2, fileList, list(manifest.stems)]));
    await chmod(join(dir, MANIFEST), 0o644);
    await writeFile(join(dir, MANIFEST), JSON.stringify(manifest));
    // Only the content moved: its folder's name is its old digest, which the pointer names.
    expect(await code(new SnapshotStore({ root }).get('a', 'jan'))).toBe('ERR_SANDPOOL_SNAPSHOT_CORRUPT');
    await rename(dir, join(dir, '..', manifest.digest));
    const pointerPath = join(root, 'a/snapshots/jan');
    const pointer = JSON.parse(await readFile(pointerPath, 'utf8'));
    await writeFile(`${pointerPath}.new`, JSON.stringify({ ...pointer, digest: manifest.digest }));
    await rename(`${pointerPath}.new`, pointerPath);

    expect(await code(signed.verify('a', 'jan'))).toBe('ERR_SANDPOOL_SNAPSHOT_CORRUPT');
    expect(await code(signed.get('a', 'jan'))).toBe('ERR_SANDPOOL_SNAPSHOT_CORRUPT');
    expect(await code(new SnapshotStore({ root, snapshotSecret: `${SECRET}-other` }).get('a', 'jan'))).toBe(
      'ERR_SANDPOOL_SNAPSHOT_CORRUPT',
    );
    // Without a secret a consistent rewrite is indistinguishable from the real thing: documented.
    await expect(new SnapshotStore({ root }).verify('a', 'jan')).resolves.toMatchObject({ name: 'jan' });
  });

  it('refuse a snapshot copied to another swarm or name, edited or not, while a neighbour answers', async () => {
    const root = await makeRoot({
      'a/live/notifier_agent.mjs': "export const f = () => 'a';\n",
      'b/live/notifier_agent.mjs': "export const f = () => 'b';\n",
    });
    const store = new SnapshotStore({ root, snapshotSecret: SECRET });
    const jan = await store.create('a', 'jan');
    const pool = openPool({ root, snapshotSecret: SECRET });
    const unsigned = openPool({ root });
    expect(await pool.call('a@jan/notifier_agent', 'f')).toBe('a');
    let answering = true;
    const answers: unknown[] = [];
    const neighbour = (async () => {
      while (answering) answers.push(await pool.call('a@jan/notifier_agent', 'f').catch((e: Error) => e));
    })();

    const artifacts = (swarm: string): string => join(root, '.sandpool-cache/artifacts', swarm);
    /** Copies a/jan's pointer to `swarm`/`name`, saying `says`, and (`withContent`) its content to that swarm. */
    const replay = async (swarm: string, name: string, says: object, withContent: boolean): Promise<void> => {
      const pointer = JSON.parse(await readFile(join(root, 'a/snapshots/jan'), 'utf8'));
      await mkdir(join(root, swarm, 'snapshots'), { recursive: true });
      await writeFile(join(root, swarm, 'snapshots', name), JSON.stringify({ ...pointer, ...says }));
      if (!withContent || swarm === 'a') return;
      const copy = join(artifacts(swarm), jan.digest);
      await cp(join(artifacts('a'), jan.digest), copy, { recursive: true });
      // Its manifest made to say it is b's: the digest covers content, not place; the signature does.
      const manifest = JSON.parse(await readFile(join(copy, MANIFEST), 'utf8'));
      await chmod(copy, 0o755);
      await chmod(join(copy, MANIFEST), 0o644);
      await writeFile(join(copy, MANIFEST), JSON.stringify({ ...manifest, swarm }));
    };
    const places = [
      ['b', 'feb', {}, false],
      ['b', 'mar', { swarm: 'b', name: 'mar' }, true],
      ['a', 'apr', {}, false],
      ['a', 'may', { name: 'may' }, false],
    ] as const;
    for (const [swarm, name, says, withContent] of places) await replay(swarm, name, says, withContent);
    const outcome = (promise: Promise<unknown>): Promise<unknown> =>
      promise.then(
        (value) => `accepted ${String(value)}`,
        (error: { code?: unknown }) => error.code,
      );
    for (const [swarm, name, says] of places) {
      const where = `${swarm}@${name}`;
      // A copy that says where it was made is refused with or without a secret; one edited to
      // say where it lies is refused by its signature.
      const edited = Object.keys(says).length > 0;
      expect([where, await outcome(store.get(swarm, name))]).toEqual([where, 'ERR_SANDPOOL_SNAPSHOT_CORRUPT']);
      expect([where, await outcome(pool.call(`${where}/notifier_agent`, 'f'))]).toEqual([
        where,
        'ERR_SANDPOOL_SNAPSHOT_CORRUPT',
      ]);
      if (!edited) {
        expect([where, await outcome(unsigned.call(`${where}/notifier_agent`, 'f'))]).toEqual([
          where,
          'ERR_SANDPOOL_SNAPSHOT_CORRUPT',
        ]);
      }
    }
    // sign() vouches for content where it lies, not for a pointer made for another place.
    expect(await code(store.sign('b', 'feb'))).toBe('ERR_SANDPOOL_SNAPSHOT_CORRUPT');
    answering = false;
    await neighbour;
    expect(answers.length).toBeGreaterThan(0);
    expect(answers.filter((answer) => answer !== 'a')).toEqual([]);
    expect(await pool.call('a@jan/notifier_agent', 'f')).toBe('a');
    expect(await pool.call('b/notifier_agent', 'f')).toBe('b');
    expect(invariants(pool)).toEqual([]);
    expect(invariants(unsigned)).toEqual([]);
  });

  it('with snapshotSecret, refuse unsigned snapshots until sign() verified them', async () => {
    const root = await makeRoot({ 'a/live/notifier_agent.mjs': "export const f = () => 'good';\n" });
    await new SnapshotStore({ root }).create('a', 'jan');
    const store = new SnapshotStore({ root, snapshotSecret: SECRET });
    expect(await rejection(store.get('a', 'jan'))).toMatchObject({
      code: 'ERR_SANDPOOL_SNAPSHOT_CORRUPT',
      message: expect.stringContaining('not signed'),
    });
    expect(await store.sign('a', 'jan')).toMatchObject({ signed: true });
    await expect(store.verify('a', 'jan')).resolves.toMatchObject({ signed: true });
  });
});

describe('snapshot folders made before artifacts', () => {
  it('stay readable where they lie: get, verify, sign, calls and remove', async () => {
    const root = await makeRoot({ 'a/live/notifier_agent.mjs': "export const f = () => 'old';\n" });
    const info = await new SnapshotStore({ root }).create('a', 'jan');
    // The folder layout of earlier releases: the content in snapshots/<name>/, its manifest naming it.
    const content = await snapshotContent(root, 'a', 'jan');
    const manifest = JSON.parse(await readFile(join(content, MANIFEST), 'utf8'));
    await rm(join(root, 'a/snapshots/jan'));
    const folder = join(root, 'a/snapshots/jan');
    await cp(content, folder, { recursive: true });
    await chmod(folder, 0o755);
    await chmod(join(folder, MANIFEST), 0o644);
    const { swarm, digest, files, stems } = manifest;
    const old = { version: 2, swarm, name: 'jan', createdAt: info.createdAt, digest, files, stems };
    await writeFile(join(folder, MANIFEST), JSON.stringify(old));

    const store = new SnapshotStore({ root });
    expect(await store.get('a', 'jan')).toEqual(info);
    await expect(store.verify('a', 'jan')).resolves.toEqual(info);
    const pool = openPool({ root });
    expect(await pool.call('a@jan/notifier_agent', 'f')).toBe('old');
    // Its content is not an artifact: a channel cannot point at it until it is made again.
    expect(await code(store.point('a', 'prod', 'jan'))).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
    const signed = new SnapshotStore({ root, snapshotSecret: SECRET });
    expect(await rejection(signed.get('a', 'jan'))).toMatchObject({
      code: 'ERR_SANDPOOL_SNAPSHOT_CORRUPT',
      message: expect.stringContaining('not signed'),
    });
    expect(await signed.sign('a', 'jan')).toMatchObject({ signed: true, digest: info.digest });
    await pool.snapshots.remove('a', 'jan');
    expect(await code(store.get('a', 'jan'))).toBe('ERR_SANDPOOL_SNAPSHOT_NOT_FOUND');
    expect(invariants(pool)).toEqual([]);
  });
});

describe('create guards what it copies', () => {
  it('refuses a hard link in live/ (its other name may be anyone’s file)', async () => {
    const root = await makeRoot({
      'a/live/notifier_agent.mjs': 'export const f = () => 1;\n',
      'b/live/secret.txt': 'b',
    });
    await link(join(root, 'b/live/secret.txt'), join(root, 'a/live/copied.txt'));
    const error = await rejection(new SnapshotStore({ root }).create('a', 'jan'));
    expect(error.code).toBe('ERR_SANDPOOL_SNAPSHOT_BUILD');
    expect(error.message).toContain('hard link');
  });

  it('bounds the bytes it copies, counting a sparse file at its apparent size', async () => {
    const root = await makeRoot({ 'a/live/notifier_agent.mjs': 'export const f = () => 1;\n' });
    await writeFile(join(root, 'a/live/sparse.bin'), '');
    await truncate(join(root, 'a/live/sparse.bin'), 8 * 1024 * 1024 * 1024);
    const started = performance.now();
    const error = await rejection(new SnapshotStore({ root, maxSnapshotBytes: 1024 * 1024 }).create('a', 'jan'));
    expect(error.code).toBe('ERR_SANDPOOL_SNAPSHOT_BUILD');
    expect(error.message).toContain('maxSnapshotBytes');
    expect(performance.now() - started).toBeLessThan(5_000);
    expect(await code(new SnapshotStore({ root }).create('a', 'jan'))).toBe('ERR_SANDPOOL_SNAPSHOT_BUILD');
  });

  it('bounds many empty files too: each costs its inode and manifest entry', async () => {
    const root = await makeRoot({
      ...(await counterAgent('n')),
      'a/live/notifier_agent.mjs': 'export const f = () => 1;\n',
    });
    await mkdir(join(root, 'a/live/many'));
    for (let i = 0; i < 2000; i++) await writeFile(join(root, 'a/live/many', `${'f'.repeat(100)}${i}`), '');
    const pool = openPool({ root, maxSnapshotBytes: 256 * 1024 });
    let running = true;
    const answers: unknown[] = [];
    const neighbour = (async () => {
      for (let i = 0; running; i++) answers.push(await pool.call('n/notifier_agent', 'add', [i, 1]));
    })();
    const error = await rejection(pool.snapshots.create('a', 'jan'));
    running = false;
    await neighbour;
    expect(answers.length).toBeGreaterThan(0);
    expect(answers).toEqual(answers.map((_, i) => i + 1));
    expect(invariants(pool)).toEqual([]);
    expect(error.code).toBe('ERR_SANDPOOL_SNAPSHOT_BUILD');
    expect(error.message).toContain('maxSnapshotBytes');
    const kept = await readdir(join(root, '.sandpool-cache/artifacts/a'));
    expect(kept.filter((name) => /^[0-9a-f]{64}$/.test(name))).toEqual([]);
    expect((await new SnapshotStore({ root }).create('a', 'jan')).files).toBeGreaterThan(2000);
  });

  it('runs one build of a swarm at a time, however many creates arrive at once', async () => {
    const root = await makeRoot({
      ...(await counterAgent('n')),
      'a/live/notifier_agent.mjs': 'export const f = () => 1;\n',
    });
    await writeFile(join(root, 'a/live/blob.bin'), Buffer.alloc(8 * 1024 * 1024, 1));
    const pool = openPool({ root });
    let running = true;
    const answers: unknown[] = [];
    const neighbour = (async () => {
      for (let i = 0; running; i++) answers.push(await pool.call('n/notifier_agent', 'add', [i, 1]));
    })();
    const building = join(root, '.sandpool-cache/artifacts/a');
    await mkdir(building, { recursive: true });
    let most = 0;
    const watch = setInterval(() => {
      // A build's work folder (a lock's work file, of its count against the swarm's bound, is no build).
      const temps = readdirSync(building, { withFileTypes: true }).filter(
        (entry) => entry.name.startsWith('.tmp-') && entry.isDirectory(),
      );
      most = Math.max(most, temps.length);
    }, 1);
    const made = await Promise.all(Array.from({ length: 8 }, (_, i) => pool.snapshots.create('a', `n${i}`)));
    clearInterval(watch);
    running = false;
    await neighbour;
    expect(answers.length).toBeGreaterThan(0);
    expect(answers).toEqual(answers.map((_, i) => i + 1));
    expect(invariants(pool)).toEqual([]);
    expect(new Set(made.map((info) => info.digest)).size).toBe(1);
    expect(most).toBeLessThanOrEqual(1);
  });

  it('never blocks on a FIFO, and names a file renamed away mid-copy', async () => {
    const { readRegularFile } = await import('../packages/sandpool/dist/store/safe-read.js');
    const root = await makeRoot({});
    const fifo = join(root, 'fifo');
    const { execFileSync } = await import('node:child_process');
    execFileSync('mkfifo', [fifo]);
    await expect(readRegularFile(fifo, { maxBytes: 10 })).rejects.toMatchObject({ reason: 'not-regular' });
    await expect(readRegularFile(join(root, 'gone'), { maxBytes: 10 })).rejects.toMatchObject({ reason: 'missing' });
    await mkdir(join(root, 'a/live'), { recursive: true });
    await writeFile(join(root, 'a/live/notifier_agent.mjs'), 'export const f = () => 1;\n');
    await rename(fifo, join(root, 'a/live/pipe'));
    const error = await rejection(new SnapshotStore({ root }).create('a', 'jan'));
    expect(error.message).toContain('live/pipe');
  });
});
