import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, readdirSync, symlinkSync } from 'node:fs';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { SpareFolders } from '../packages/sandpool/dist/host/workers/spare-folders.js';
import { ownerToken } from '../packages/sandpool/dist/store/leftovers.js';
import { code } from './support/errors.js';
import { fsRestrictedInThreads } from './support/permission-model.js';
import { eventually, installCleanup, invariants, openPool, recordEvents } from './support/pool.js';
import { counterAgent, makeRoot, snapshotContent } from './support/root.js';

installCleanup();

/** What a tenant's agent reads beside its module, by each documented way, and anything else it is asked to. */
const READER = `import { readdirSync, readFileSync } from 'node:fs';
import { workerData } from 'node:worker_threads';
import fromHelper from './helper.cjs';

// What a build cannot see runs at run time from the artifact's copy of live/.
const late = new Function('specifier', 'return imp' + 'ort(specifier)');

export async function beside() {
  return {
    url: import.meta.url,
    meta: readFileSync(new URL('./data.txt', import.meta.url), 'utf8'),
    dirname: readFileSync(import.meta.dirname + '/data.txt', 'utf8'),
    cjs: fromHelper(),
    late: (await late(new URL('./late.mjs', import.meta.url).href)).late,
  };
}
export function read(path) {
  try {
    return readFileSync(path, 'utf8');
  } catch (error) {
    return error.code;
  }
}
export function list(path) {
  try {
    return readdirSync(path);
  } catch (error) {
    return error.code;
  }
}
export function runtime() {
  let report;
  try {
    report = typeof process.report.getReport();
  } catch (error) {
    report = error.code;
  }
  return { report, argv1: process.argv[1], paths: process.execArgv.filter((flag) => flag.includes('=')), boot: Object.keys(workerData ?? {}) };
}
`;

/** A CommonJS helper: in a bundle, __dirname names the bundle's own folder. */
const HELPER = `module.exports = () => require('node:fs').readFileSync(require('node:path').join(__dirname, '..', 'data.txt'), 'utf8');`;

async function tenants(): Promise<string> {
  return makeRoot({
    'a/live/reader.mjs': READER,
    'a/live/helper.cjs': HELPER,
    'a/live/data.txt': 'a-data',
    'a/live/late.mjs': "export const late = 'a-late';",
    'b/live/reader.mjs': READER,
    'b/live/helper.cjs': HELPER,
    'b/live/data.txt': 'b-secret',
    'b/live/late.mjs': "export const late = 'b-late';",
    ...(await counterAgent('n')),
  });
}

const NEIGHBOUR = 'n@s/notifier_agent';

describe.runIf(fsRestrictedInThreads)('strict spares', () => {
  it('a strict key run from an artifact takes a spare; it reads its own artifact through its folder, and nothing else', async () => {
    const root = await tenants();
    const pool = openPool({ root, spareWorkers: 1 });
    const { events } = recordEvents(pool);
    for (const swarm of ['a', 'b', 'n']) await pool.snapshots.create(swarm, 's');
    // The first key that could take a spare starts cold, and from then on the pool keeps one.
    expect(await pool.call(NEIGHBOUR, 'add', [1, 2])).toBe(3);
    await eventually(() => pool.stats().spares === 1);
    const seen = await pool.call<{ url: string; meta: string; dirname: string; cjs: string; late: string }>(
      'a@s/reader',
      'beside',
    );
    const artifactA = await snapshotContent(root, 'a', 's');
    const artifactB = await snapshotContent(root, 'b', 's');
    // Its module is named at the spare's own folder, which shows its artifact: reads beside it work.
    const own = dirname(fileURLToPath(seen.url));
    expect(own.startsWith(artifactA)).toBe(false);
    expect(seen).toMatchObject({ meta: 'a-data', dirname: 'a-data', cjs: 'a-data', late: 'a-late' });
    expect(await pool.call('a@s/reader', 'read', [join(own, 'data.txt')])).toBe('a-data');
    // Another swarm's key takes the next spare: its folder shows b's artifact now.
    await eventually(() => pool.stats().spares === 1);
    const other = dirname(fileURLToPath((await pool.call<{ url: string }>('b@s/reader', 'beside')).url));
    expect(await pool.call('b@s/reader', 'read', [join(other, 'data.txt')])).toBe('b-secret');
    // Nothing else: the other spare's folder, `..` out of its own, another swarm's artifact and
    // live files, its own artifact by the real path (not granted: read it by its module's path).
    const spareFolders = dirname(own);
    expect(dirname(other)).toBe(spareFolders);
    const outside = [
      ['read', join(other, 'data.txt')],
      ['read', join(own, '..', basename(other), 'data.txt')],
      ['list', spareFolders],
      ['list', join(own, '..')],
      ['list', join(spareFolders, '..')],
      ['read', join(own, basename(artifactB), 'data.txt')],
      ['read', join(artifactB, 'data.txt')],
      ['read', join(root, 'b/live/data.txt')],
      ['read', join(artifactA, 'data.txt')],
      ['read', join(root, 'a/live/data.txt')],
      ['read', '/proc/self/environ'],
    ] as const;
    for (const [fn, path] of outside) {
      const got = await pool.call<unknown>('a@s/reader', fn, [path]);
      expect([fn, path, got]).toEqual([fn, path, expect.stringMatching(/^(ERR_ACCESS_DENIED|ENOENT)$/)]);
      expect(await pool.call(NEIGHBOUR, 'add', [2, 3])).toBe(5);
    }
    // Its denials were applied as it booted, and leave no trace of its folder or its boot.
    expect(await pool.call('a@s/reader', 'runtime')).toEqual({
      report: 'ERR_ACCESS_DENIED',
      argv1: '[sandpool agent]',
      paths: [],
      boot: [],
    });
    // And the other the same way round.
    expect(await pool.call('b@s/reader', 'read', [join(own, 'data.txt')])).toBe('ERR_ACCESS_DENIED');
    const spawned = events.filter((event) => event.type === 'spawn').map((event) => `${event.key} ${event.reason}`);
    expect(spawned).toEqual([`${NEIGHBOUR} cold`, 'a@s/reader spare', 'b@s/reader spare']);
    expect(invariants(pool)).toEqual([]);
    await pool.close();
    // Their folders went with their workers: nothing shows either artifact any more.
    expect([existsSync(own), existsSync(other)]).toEqual([false, false]);
  });

  it('a spare serves one key: the one a swarm took, whose load failed, serves no other, and its folder goes', async () => {
    const root = await tenants();
    await writeFile(join(root, 'a/live/broken.mjs'), "console.log(import.meta.url);\nthrow new Error('no');\n");
    const printed: string[] = [];
    const pool = openPool({
      root,
      spareWorkers: 1,
      onOutput: (key, _stream, text) => {
        if (key === 'a@s/broken') printed.push(text);
      },
    });
    const { events } = recordEvents(pool);
    for (const swarm of ['a', 'b', 'n']) await pool.snapshots.create(swarm, 's');
    expect(await pool.call(NEIGHBOUR, 'add', [1, 2])).toBe(3);
    await eventually(() => pool.stats().spares === 1);
    expect(await code(pool.call('a@s/broken', 'x'))).toBe('ERR_SANDPOOL_MODULE_LOAD');
    await eventually(() => printed.length > 0);
    const taken = dirname(fileURLToPath(printed.join('').trim()));
    await eventually(() => !existsSync(taken));
    // Its replacement is booted once that load is over.
    await eventually(() => pool.stats().spares === 1);
    const seen = await pool.call<{ url: string; meta: string }>('b@s/reader', 'beside');
    expect(seen.meta).toBe('b-secret');
    expect(dirname(fileURLToPath(seen.url))).not.toBe(taken);
    const spawns = events.filter((event) => event.type === 'spawn');
    expect(spawns.map((event) => `${event.key} ${event.reason}`)).toEqual([
      `${NEIGHBOUR} cold`,
      'a@s/broken spare',
      'b@s/reader spare',
    ]);
    expect(new Set(spawns.map((event) => event.threadId)).size).toBe(spawns.length);
    expect(await pool.call(NEIGHBOUR, 'add', [2, 3])).toBe(5);
    expect(invariants(pool)).toEqual([]);
  });

  it('a spare folder shows one key once; after it, or once its worker ended, it shows none', async () => {
    const root = await makeRoot({ 'a/live/data.txt': 'a' });
    const folders = new SpareFolders(root);
    const folder = folders.make();
    folder.show(join(root, 'a/live'));
    expect(readdirSync(folder.path)).toEqual(['data.txt']);
    expect(() => folder.show(join(root, 'b/live'))).toThrow();
    folder.release();
    expect(existsSync(folder.path)).toBe(false);
    const unused = folders.make();
    unused.release();
    expect(() => unused.show(join(root, 'a/live'))).toThrow();
    expect(existsSync(unused.path)).toBe(false);
    folders.close();
  });

  it('a spare folder is a folder at every moment, also while it turns to show its key: Node grants what is under it only if it is one as the spare boots', async () => {
    const root = await makeRoot({ 'a/live/data.txt': 'a' });
    const folders = new SpareFolders(root);
    const first = folders.make();
    // Another thread stats the folder being shown, as a booting worker's permissions do.
    const SHOWN = 2_000;
    const state = new Int32Array(new SharedArrayBuffer(4 * (SHOWN + 2)));
    const watcher = new Worker(
      `const { statSync } = require('node:fs');
       const { workerData: { base, state, shown } } = require('node:worker_threads');
       let missed = 0;
       Atomics.store(state, 0, 1);
       for (let i = 1; i <= shown; i++) {
         while (Atomics.load(state, i) === 0) {}
         while (Atomics.load(state, i) === 1) {
           try { if (!statSync(base + '/' + i).isDirectory()) missed++; } catch { missed++; }
         }
       }
       require('node:worker_threads').parentPort.postMessage(missed);`,
      { eval: true, workerData: { base: dirname(first.path), state, shown: SHOWN + 1 } },
    );
    const missed = new Promise<number>((resolve) => watcher.once('message', resolve));
    const shows = [first];
    for (let i = 2; i <= SHOWN + 1; i++) shows.push(folders.make());
    while (Atomics.load(state, 0) === 0) await new Promise((resolve) => setTimeout(resolve, 1));
    for (const [index, folder] of shows.entries()) {
      Atomics.store(state, index + 1, 1);
      folder.show(join(root, 'a/live'));
      Atomics.store(state, index + 1, 2);
    }
    expect(await missed).toBe(0);
    await watcher.terminate();
    for (const folder of shows) folder.release();
    folders.close();
  });

  it('keys whose grant or settings differ from the spare’s start cold; the rest take spares, live keys and snapshot keys', async () => {
    const root = await tenants();
    await writeFile(join(root, 'shared.txt'), 'widened');
    const pool = openPool({
      root,
      spareWorkers: 1,
      // b reads one more path; n's workers get an environment of their own.
      policy: (key) =>
        key.swarm === 'b'
          ? { permissions: { fsRead: [join(root, 'shared.txt')] } }
          : key.swarm === 'n'
            ? { env: { X: '1' } }
            : {},
    });
    const { events } = recordEvents(pool);
    for (const swarm of ['a', 'b', 'n']) await pool.snapshots.create(swarm, 's');
    expect(await pool.call('a@s/reader', 'read', [join(root, 'shared.txt')])).toBe('ERR_ACCESS_DENIED');
    await eventually(() => pool.stats().spares === 1);
    expect(await pool.call('b@s/reader', 'read', [join(root, 'shared.txt')])).toBe('widened');
    expect(await pool.call('b/reader', 'read', [join(root, 'shared.txt')])).toBe('widened');
    expect(await pool.call(NEIGHBOUR, 'add', [1, 2])).toBe(3);
    expect(await pool.call('n/notifier_agent', 'add', [1, 2])).toBe(3);
    const reasons = (): Record<string, string> =>
      Object.fromEntries(events.filter((event) => event.type === 'spawn').map((event) => [event.key, event.reason]));
    expect(reasons()).toEqual({
      'a@s/reader': 'cold',
      'b@s/reader': 'cold',
      'b/reader': 'cold',
      [NEIGHBOUR]: 'cold',
      'n/notifier_agent': 'cold',
    });
    // The spare waits, untouched; the next keys of the pool's own grant take one each, live or not.
    expect(pool.stats().spares).toBe(1);
    expect(await pool.call<{ meta: string; late: string }>('a/reader', 'beside')).toMatchObject({
      meta: 'a-data',
      late: 'a-late',
    });
    await eventually(() => pool.stats().spares === 1);
    await writeFile(join(root, 'a/live/other.mjs'), 'export const x = () => 1;');
    await pool.snapshots.create('a', 't');
    expect(await pool.call('a@t/other', 'x')).toBe(1);
    expect(reasons()).toMatchObject({ 'a/reader': 'spare', 'a@t/other': 'spare' });
    expect(invariants(pool)).toEqual([]);
  });

  it('a pool none of whose keys could take one keeps no spare', async () => {
    const root = await tenants();
    // Every key's workers get an environment of their own: no spare booted with the pool's fits.
    const pool = openPool({ root, spareWorkers: 4, policy: () => ({ env: { X: '1' } }) });
    expect(pool.stats().spares).toBe(0);
    expect(await pool.call<{ meta: string }>('a/reader', 'beside')).toMatchObject({ meta: 'a-data' });
    expect(await pool.call<{ meta: string }>('b/reader', 'beside')).toMatchObject({ meta: 'b-secret' });
    expect(pool.stats().spares).toBe(0);
    expect(invariants(pool)).toEqual([]);
  });

  it.runIf(existsSync('/dev/shm'))(
    'removes the spare folders of an ended process on its next start, never what their links show',
    async () => {
      // A process that has ended: its pid, in an owner's name as this machine writes it.
      const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], {
        encoding: 'utf8',
      }).stdout;
      const [, machine, random] = ownerToken().split('.');
      const left = join('/dev/shm', `sandpool-spares-${dead}.${machine}.${random}`);
      const shown = await mkdtemp(join(tmpdir(), 'sandpool-shown-'));
      await writeFile(join(shown, 'kept.txt'), 'kept');
      mkdirSync(join(left, 'pool'), { recursive: true });
      symlinkSync(shown, join(left, 'pool', '1'), 'dir');
      mkdirSync(join(left, 'pool', '2'));
      // A live process's stays.
      const alive = join('/dev/shm', `sandpool-spares-${process.ppid}.${machine}.${random}`);
      mkdirSync(alive);
      try {
        const root = await tenants();
        const pool = openPool({ root, spareWorkers: 1 });
        await pool.snapshots.create('a', 's');
        expect(await pool.call('a@s/reader', 'read', [join(root, 'a/live/data.txt')])).toBe('ERR_ACCESS_DENIED');
        expect(existsSync(left)).toBe(false);
        expect(await readFile(join(shown, 'kept.txt'), 'utf8')).toBe('kept');
        expect(lstatSync(alive).isDirectory()).toBe(true);
      } finally {
        spawnSync('rm', ['-rf', left, alive, shown]);
      }
    },
  );
});
