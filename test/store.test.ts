import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  chmod,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  symlink,
  unlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SandpoolError, SnapshotStore } from 'sandpool';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { code } from './support/errors.js';

const MANIFEST = '.sandpool-manifest.json';
const BUNDLES = '.sandpool-bundles';
const sha256 = (data: string | Buffer): string => createHash('sha256').update(data).digest('hex');
const sleep = (ms: number): Promise<void> => new Promise((done) => setTimeout(done, ms));

/** Every path below dir, for "nothing was created" checks. */
async function tree(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true });
  return entries.map(String).sort();
}

let root: string;
let store: SnapshotStore;
const live = (...parts: string[]): string => join(root, 'acme', 'live', ...parts);
const pointerPath = (name: string, swarm = 'acme'): string => join(root, swarm, 'snapshots', name);
const pointerOf = (name: string, swarm = 'acme'): Record<string, unknown> =>
  JSON.parse(readFileSync(pointerPath(name, swarm), 'utf8'));
const artifacts = (swarm = 'acme'): string => join(root, '.sandpool-cache', 'artifacts', swarm);
/** A path inside the artifact the name points to now. */
const snap = (name: string, ...parts: string[]): string => join(artifacts(), String(pointerOf(name).digest), ...parts);

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'sandpool-store-'));
  await mkdir(live('lib', 'deep'), { recursive: true });
  await writeFile(live('notifier_agent.mjs'), "import { h } from './lib/helper.mjs';\nexport const notify = h;\n");
  await writeFile(live('lib', 'helper.mjs'), 'export const h = (m) => m;\n');
  await writeFile(live('lib', 'deep', 'data.json'), '{"a":1}\n');
  store = new SnapshotStore({ root });
});

afterEach(async () => {
  // Root removes read-only files anyway; rm with force covers a non-root run too.
  await rm(root, { recursive: true, force: true });
});

describe('SnapshotStore options', () => {
  it.each([{}, { root: '' }, { root: 1 }, { root: '/x', extra: true }])('rejects %j', (options) => {
    let caught: unknown;
    try {
      new SnapshotStore(options as { root: string });
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(SandpoolError);
    expect((caught as SandpoolError).code).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
    expect((caught as SandpoolError).issues?.length).toBeGreaterThan(0);
  });
});

describe('create', () => {
  it('copies live/ with helpers and subfolders into a read-only artifact, plus one bundle per stem, with a manifest of digests', async () => {
    const info = await store.create('acme', 'jan');
    // Three files of live/, the stem's bundle and its source map.
    expect(info).toMatchObject({ swarm: 'acme', name: 'jan', files: 5, stems: ['notifier_agent'], signed: false });
    expect(Number.isNaN(Date.parse(info.createdAt))).toBe(false);
    expect(await tree(snap('jan'))).toEqual([
      BUNDLES,
      `${BUNDLES}/notifier_agent.mjs`,
      `${BUNDLES}/notifier_agent.mjs.map`,
      MANIFEST,
      'lib',
      'lib/deep',
      'lib/deep/data.json',
      'lib/helper.mjs',
      'notifier_agent.mjs',
    ]);
    for (const file of [
      'notifier_agent.mjs',
      'lib/helper.mjs',
      'lib/deep/data.json',
      MANIFEST,
      `${BUNDLES}/notifier_agent.mjs`,
      `${BUNDLES}/notifier_agent.mjs.map`,
    ]) {
      expect((await stat(snap('jan', file))).mode & 0o777).toBe(0o444);
    }
    const manifestBytes = await readFile(snap('jan', MANIFEST));
    const manifest = JSON.parse(manifestBytes.toString('utf8'));
    expect(manifest).toMatchObject({ version: 3, swarm: 'acme' });
    expect(manifest).not.toHaveProperty('name');
    expect(info.digest).toBe(manifest.digest);
    // The artifact is named by its digest, and its folders are read-only too.
    expect(snap('jan')).toBe(join(artifacts(), info.digest));
    for (const dir of ['', 'lib', 'lib/deep', BUNDLES]) expect((await stat(snap('jan', dir))).mode & 0o777).toBe(0o555);
    // The name is a small read-only pointer to that digest.
    expect((await stat(pointerPath('jan'))).mode & 0o777).toBe(0o444);
    expect(pointerOf('jan')).toEqual({
      sandpool: 'snapshot-pointer',
      version: 2,
      swarm: 'acme',
      name: 'jan',
      generation: 1,
      digest: info.digest,
      createdAt: info.createdAt,
    });
    expect(manifest.stems).toEqual({ notifier_agent: `${BUNDLES}/notifier_agent.mjs` });
    const helper = await readFile(live('lib', 'helper.mjs'));
    expect(manifest.files['lib/helper.mjs']).toEqual({ sha256: sha256(helper), bytes: helper.length });
    expect(Object.keys(manifest.files).sort()).toEqual([
      `${BUNDLES}/notifier_agent.mjs`,
      `${BUNDLES}/notifier_agent.mjs.map`,
      'lib/deep/data.json',
      'lib/helper.mjs',
      'notifier_agent.mjs',
    ]);
    let total = 0;
    for (const file of Object.keys(manifest.files)) total += (await readFile(snap('jan', file))).length;
    expect(info.bytes).toBe(total);
    // The helper is inside the bundle: the stem needs nothing else at run time.
    expect(await readFile(snap('jan', BUNDLES, 'notifier_agent.mjs'), 'utf8')).toContain('h = (m) => m');
  });

  it('freezes: later edits to live/ do not reach the snapshot', async () => {
    await store.create('acme', 'jan');
    await writeFile(live('lib', 'helper.mjs'), 'export const h = () => "changed";\n');
    expect(await readFile(snap('jan', 'lib', 'helper.mjs'), 'utf8')).toBe('export const h = (m) => m;\n');
    await expect(store.verify('acme', 'jan')).resolves.toMatchObject({ name: 'jan' });
  });

  it('is idempotent for the same content and rejects EXISTS for different content', async () => {
    const first = await store.create('acme', 'jan');
    await expect(store.create('acme', 'jan')).resolves.toEqual(first);
    await writeFile(live('lib', 'helper.mjs'), 'export const h = () => 2;\n');
    expect(await code(store.create('acme', 'jan'))).toBe('ERR_SANDPOOL_SNAPSHOT_EXISTS');
    await writeFile(live('lib', 'helper.mjs'), 'export const h = (m) => m;\n');
    await writeFile(live('extra.mjs'), 'export {};\n');
    expect(await code(store.create('acme', 'jan'))).toBe('ERR_SANDPOOL_SNAPSHOT_EXISTS');
    expect(await store.get('acme', 'jan')).toEqual(first);
    expect((await readdir(join(root, 'acme', 'snapshots'))).sort()).toEqual(['jan']);
  });

  it('resolves concurrent creates of one name to the same snapshot', async () => {
    const infos = await Promise.all(Array.from({ length: 5 }, () => store.create('acme', 'jan')));
    for (const info of infos) expect(info).toEqual(infos[0]);
    expect(await readdir(join(root, 'acme', 'snapshots'))).toEqual(['jan']);
    await expect(store.verify('acme', 'jan')).resolves.toEqual(infos[0]);
  });

  it('rejects SWARM_NOT_FOUND for a swarm without live/', async () => {
    expect(await code(store.create('ghost', 'jan'))).toBe('ERR_SANDPOOL_SWARM_NOT_FOUND');
    await mkdir(join(root, 'empty'));
    expect(await code(store.create('empty', 'jan'))).toBe('ERR_SANDPOOL_SWARM_NOT_FOUND');
    expect(await tree(root)).not.toContain('ghost');
  });

  it('copies the contents of a symlink that stays inside live/', async () => {
    await symlink('lib/helper.mjs', live('alias.mjs'));
    await store.create('acme', 'jan');
    const copied = await lstat(snap('jan', 'alias.mjs'));
    expect(copied.isFile()).toBe(true);
    expect(copied.mode & 0o777).toBe(0o444);
    expect(await readFile(snap('jan', 'alias.mjs'), 'utf8')).toBe('export const h = (m) => m;\n');
  });

  it.each([
    [
      'a file outside live/',
      async () => {
        await writeFile(join(root, 'secret.mjs'), 'export const s = 1;\n');
        await symlink(join(root, 'secret.mjs'), live('lib', 'secret.mjs'));
      },
    ],
    [
      'a relative escape',
      async () => {
        await writeFile(join(root, 'acme', 'outside.mjs'), 'export {};\n');
        await symlink('../../outside.mjs', live('lib', 'out.mjs'));
      },
    ],
    [
      'a folder',
      async () => {
        await symlink('lib', live('loop'));
      },
    ],
    [
      'nothing',
      async () => {
        await symlink('missing.mjs', live('dangling.mjs'));
      },
    ],
  ])('refuses a symlink to %s and creates nothing', async (_label, arrange) => {
    await arrange();
    expect(await code(store.create('acme', 'jan'))).toBe('ERR_SANDPOOL_SNAPSHOT_BUILD');
    expect(await tree(artifacts())).toEqual([]);
    expect(await store.list('acme')).toEqual([]);
  });
});

describe('list, get, remove', () => {
  it('lists oldest first and gets one', async () => {
    const zeta = await store.create('acme', 'zeta');
    await sleep(5);
    const alpha = await store.create('acme', 'alpha');
    expect(await store.list('acme')).toEqual([zeta, alpha]);
    expect(await store.get('acme', 'alpha')).toEqual(alpha);
  });

  it('lists [] for a swarm without snapshots and SWARM_NOT_FOUND for no swarm folder', async () => {
    expect(await store.list('acme')).toEqual([]);
    expect(await code(store.list('ghost'))).toBe('ERR_SANDPOOL_SWARM_NOT_FOUND');
  });

  it('sweeps work folders a crash left over an hour ago, and keeps younger ones', async () => {
    const parent = join(root, 'acme', 'snapshots');
    const names = ['.tmp-old', '.rm-old', '.tmp-young'];
    for (const name of names) await mkdir(join(parent, name), { recursive: true });
    const twoHoursAgo = new Date(Date.now() - 2 * 60 * 60 * 1000);
    await utimes(join(parent, '.tmp-old'), twoHoursAgo, twoHoursAgo);
    await utimes(join(parent, '.rm-old'), twoHoursAgo, twoHoursAgo);
    await store.create('acme', 'jan');
    const left = (await readdir(parent)).filter((name) => name.startsWith('.'));
    expect(left).toEqual(['.tmp-young']);
  });

  it('never shows a half-written snapshot left by a crash', async () => {
    const jan = await store.create('acme', 'jan');
    const leftover = join(root, 'acme', 'snapshots', '.tmp-deadbeef');
    await mkdir(leftover);
    await writeFile(join(leftover, 'notifier_agent.mjs'), 'export {};\n');
    expect(await store.list('acme')).toEqual([jan]);
    expect(await code(store.get('acme', '.tmp-deadbeef'))).toBe('ERR_SANDPOOL_INVALID_KEY');
  });

  it('removes a snapshot without leaving work folders', async () => {
    await store.create('acme', 'jan');
    await store.remove('acme', 'jan');
    expect(await readdir(join(root, 'acme', 'snapshots'))).toEqual([]);
    expect(await code(store.get('acme', 'jan'))).toBe('ERR_SANDPOOL_SNAPSHOT_NOT_FOUND');
    // The name is free again.
    await expect(store.create('acme', 'jan')).resolves.toMatchObject({ name: 'jan' });
  });

  it.each(['get', 'remove', 'verify'] as const)('%s rejects SNAPSHOT_NOT_FOUND', async (method) => {
    expect(await code(store[method]('acme', 'nope'))).toBe('ERR_SANDPOOL_SNAPSHOT_NOT_FOUND');
    expect(await code(store[method]('ghost', 'nope'))).toBe('ERR_SANDPOOL_SNAPSHOT_NOT_FOUND');
    // Nothing made on the way: not the swarm's folders, not a name lock.
    expect(await lstat(join(root, 'ghost')).catch(() => null)).toBeNull();
    expect(
      (await readdir(join(root, 'acme', 'snapshots')).catch(() => [] as string[])).filter((name) =>
        name.startsWith('.'),
      ),
    ).toEqual([]);
  });
});

describe('names and content', () => {
  const digests = async (): Promise<string[]> => (await readdir(artifacts())).filter((n) => !n.startsWith('.')).sort();
  const age = async (digest: string): Promise<void> => {
    const twoHoursAgo = new Date(Date.now() - 2 * 60 * 60 * 1000);
    await utimes(join(artifacts(), digest), twoHoursAgo, twoHoursAgo);
  };

  it('gives two names of the same content one artifact', async () => {
    const jan = await store.create('acme', 'jan');
    const feb = await store.create('acme', 'feb');
    expect(feb.digest).toBe(jan.digest);
    expect(await digests()).toEqual([jan.digest]);
  });

  it('points a name at the content another names, and moves it again (deploy, rollback)', async () => {
    const jan = await store.create('acme', 'jan');
    await writeFile(live('lib', 'helper.mjs'), 'export const h = () => "feb";\n');
    const feb = await store.create('acme', 'feb');
    expect(feb.digest).not.toBe(jan.digest);
    const prod = await store.point('acme', 'prod', 'jan');
    expect(prod).toMatchObject({ swarm: 'acme', name: 'prod', digest: jan.digest, stems: jan.stems });
    expect(await store.get('acme', 'prod')).toEqual(prod);
    expect((await store.point('acme', 'prod', 'feb')).digest).toBe(feb.digest);
    expect((await store.get('acme', 'prod')).digest).toBe(feb.digest);
    expect((await store.point('acme', 'prod', 'jan')).digest).toBe(jan.digest);
    await expect(store.verify('acme', 'prod')).resolves.toMatchObject({ digest: jan.digest });
    expect((await store.list('acme')).map(({ name }) => name).sort()).toEqual(['feb', 'jan', 'prod']);
    expect((await readdir(join(root, 'acme', 'snapshots'))).sort()).toEqual(['feb', 'jan', 'prod']);
  });

  it('refuses to point at a name that does not exist, or with bad names, and changes nothing', async () => {
    await store.create('acme', 'jan');
    const before = await tree(root);
    expect(await code(store.point('acme', 'prod', 'nope'))).toBe('ERR_SANDPOOL_SNAPSHOT_NOT_FOUND');
    expect(await code(store.point('acme', '../x', 'jan'))).toBe('ERR_SANDPOOL_INVALID_KEY');
    expect(await code(store.point('acme', 'prod', '.tmp-x'))).toBe('ERR_SANDPOOL_INVALID_KEY');
    expect(await code(store.point('ghost', 'prod', 'jan'))).toBe('ERR_SANDPOOL_SNAPSHOT_NOT_FOUND');
    expect(await tree(root)).toEqual(before);
  });

  it('removes a name but never content another name points to; unused content goes after its grace', async () => {
    const jan = await store.create('acme', 'jan');
    await store.point('acme', 'prod', 'jan');
    await age(jan.digest);
    await store.remove('acme', 'jan');
    // prod still names it, however old it is.
    await expect(store.verify('acme', 'prod')).resolves.toMatchObject({ digest: jan.digest });
    await writeFile(live('lib', 'helper.mjs'), 'export const h = () => "feb";\n');
    const feb = await store.create('acme', 'feb');
    await store.point('acme', 'prod', 'feb');
    // jan's content is named by nobody now, but was just unnamed: a pool elsewhere may still start it.
    expect(await digests()).toEqual([jan.digest, feb.digest].sort());
    await age(jan.digest);
    await age(feb.digest);
    await store.remove('acme', 'feb');
    expect(await digests()).toEqual([feb.digest]);
    await expect(store.verify('acme', 'prod')).resolves.toMatchObject({ digest: feb.digest });
    await store.remove('acme', 'prod');
    expect(await readdir(join(root, 'acme', 'snapshots'))).toEqual([]);
  });
});

describe('verify', () => {
  beforeEach(async () => {
    await store.create('acme', 'jan');
  });

  it('resolves to the info of an intact snapshot', async () => {
    await expect(store.verify('acme', 'jan')).resolves.toEqual(await store.get('acme', 'jan'));
  });

  it.each([
    [
      'a file is edited',
      async () => {
        await chmod(snap('jan', 'lib', 'helper.mjs'), 0o644);
        await writeFile(snap('jan', 'lib', 'helper.mjs'), 'export const h = () => "evil";\n');
      },
    ],
    [
      'a file is added',
      async () => {
        await chmod(snap('jan', 'lib'), 0o755);
        await writeFile(snap('jan', 'lib', 'new.mjs'), 'export {};\n');
      },
    ],
    ['a file is removed', async () => unlink(snap('jan', 'lib', 'deep', 'data.json'))],
    [
      'a file becomes a symlink',
      async () => {
        await unlink(snap('jan', 'lib', 'helper.mjs'));
        await symlink(live('lib', 'helper.mjs'), snap('jan', 'lib', 'helper.mjs'));
      },
    ],
    ['the manifest is removed', async () => unlink(snap('jan', MANIFEST))],
    [
      'the manifest is garbage',
      async () => {
        await unlink(snap('jan', MANIFEST));
        await writeFile(snap('jan', MANIFEST), '{not json');
      },
    ],
  ])('rejects CORRUPT when %s', async (_label, tamper) => {
    await tamper();
    expect(await code(store.verify('acme', 'jan'))).toBe('ERR_SANDPOOL_SNAPSHOT_CORRUPT');
  });
});

describe('invalid swarm or snapshot names', () => {
  const bad = ['..', '.', '/', 'a/b', '', 'a\0b', 'x'.repeat(65), '../acme', '.tmp-x'];

  it.each(bad)('rejects name %j with INVALID_KEY and touches nothing', async (name) => {
    const before = await tree(root);
    for (const call of [
      () => store.create('acme', name),
      () => store.get('acme', name),
      () => store.remove('acme', name),
      () => store.verify('acme', name),
    ]) {
      const error = await call().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(SandpoolError);
      expect((error as SandpoolError).code).toBe('ERR_SANDPOOL_INVALID_KEY');
      expect((error as SandpoolError).issues?.[0]?.path).toEqual(['name']);
    }
    expect(await tree(root)).toEqual(before);
  });

  it.each(bad)('rejects swarm %j with INVALID_KEY and touches nothing', async (swarm) => {
    const before = await tree(root);
    for (const call of [() => store.create(swarm, 'jan'), () => store.list(swarm), () => store.get(swarm, 'jan')]) {
      expect(await code(call())).toBe('ERR_SANDPOOL_INVALID_KEY');
    }
    expect(await tree(root)).toEqual(before);
  });

  it('rejects non-string arguments from untyped callers', async () => {
    expect(await code(store.create(42 as unknown as string, 'jan'))).toBe('ERR_SANDPOOL_INVALID_KEY');
    expect(await code(store.get('acme', null as unknown as string))).toBe('ERR_SANDPOOL_INVALID_KEY');
  });
});
