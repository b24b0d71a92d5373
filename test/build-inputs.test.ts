/**
 * What a build may read (DESIGN.md, "One artifact per key", "Build inputs"): the swarm's own
 * folder and the package folders on its resolution path, nothing else, whatever the tenant's
 * imports, links, hard links, FIFOs or swaps say. Each attack runs through the pool's store
 * (its helper process) with a neighbour key answering the whole time.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, lstatSync } from 'node:fs';
import { link, mkdir, readdir, readFile, rename, symlink, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Pool } from 'sandpool';
import { afterEach, describe, expect, it } from 'vitest';
import { rejection } from './support/errors.js';
import { installCleanup, invariants, openPool } from './support/pool.js';
import { counterAgent, makeRoot, snapshotContent, writeFiles } from './support/root.js';

installCleanup();

const NEIGHBOUR = 'n/notifier_agent';
/** In the host's token file only: no snapshot may ever hold it. */
const TOKEN = `host-token-${process.pid}-${Date.now()}`;
const SECRET = 'b-secret-of-swarm-b';

const children: ChildProcess[] = [];
afterEach(() => {
  for (const child of children.splice(0)) child.kill('SIGKILL');
});

/**
 * A process that swaps `a/live/lib` for a link to `b/live/lib` and back until killed: at
 * random moments (a few ms held, up to 30 ms apart), or as fast as it can.
 */
function swapLibForTheirs(root: string, pace: 'at random moments' | 'as fast as it can'): ChildProcess {
  const [hold, gap] =
    pace === 'at random moments' ? ['pause(Math.random() * 3);', 'pause(Math.random() * 30);'] : ['', ''];
  return spawn(
    process.execPath,
    [
      '-e',
      `const fs = require('node:fs');
       const [lib, real, theirs] = process.argv.slice(1);
       const pause = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
       for (;;) {
         try { fs.renameSync(lib, real); fs.symlinkSync(theirs, lib); ${hold} fs.unlinkSync(lib); fs.renameSync(real, lib); } catch {}
         ${gap}
       }`,
      join(root, 'a/live/lib'),
      join(root, 'a/live/lib-real'),
      join(root, 'b/live/lib'),
    ],
    { stdio: 'ignore' },
  );
}

/** Calls the neighbour until `stop()`; resolves to every answer it got, each checked by the caller. */
function keepCalling(pool: Pool): { stop: () => Promise<unknown[]> } {
  const answers: unknown[] = [];
  let running = true;
  const loop = (async () => {
    for (let i = 0; running; i++) answers.push(await pool.call(NEIGHBOUR, 'add', [i, 1]));
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return answers;
    },
  };
}

/** The neighbour answered right throughout, the host lives, the pool holds its invariants. */
async function assertNeighbourAnswered(pool: Pool, answers: unknown[]): Promise<void> {
  expect(answers.length).toBeGreaterThan(0);
  expect(answers).toEqual(answers.map((_, i) => i + 1));
  expect(await pool.call(NEIGHBOUR, 'add', [20, 22])).toBe(42);
  expect(invariants(pool)).toEqual([]);
}

/** A root with the neighbour, swarm b's secret, and a token file of the host's outside the root. */
async function arena(files: Record<string, string>): Promise<{ root: string; token: string; pool: Pool }> {
  const host = await makeRoot({ 'etc/token.json': JSON.stringify({ token: TOKEN }) });
  const root = await makeRoot({
    ...(await counterAgent('n')),
    'b/live/secret.mjs': `export const secret = '${SECRET}';\n`,
    'b/live/lib/helper.mjs': `export const value = '${SECRET}';\n`,
    ...files,
  });
  const pool = openPool({ root });
  expect(await pool.call(NEIGHBOUR, 'add', [1, 1])).toBe(2);
  return { root, token: join(host, 'etc/token.json'), pool };
}

/** Runs one create while the neighbour answers; the create must be refused, leaking nothing. */
async function refusedCreate(pool: Pool, root: string, token: string): Promise<string> {
  const calls = keepCalling(pool);
  const error = await rejection(pool.snapshots.create('a', 'jan'));
  await assertNeighbourAnswered(pool, await calls.stop());
  expect(error.code).toBe('ERR_SANDPOOL_SNAPSHOT_BUILD');
  for (const leak of [root, token, TOKEN, SECRET, '/etc/']) expect(error.message).not.toContain(leak);
  expect(await pool.snapshots.list('a')).toEqual([]);
  // No content was kept either: the store's folder holds no artifact of the swarm.
  const kept = await readdir(join(root, '.sandpool-cache/artifacts/a')).catch(() => []);
  expect(kept.filter((name) => /^[0-9a-f]{64}$/.test(name))).toEqual([]);
  return error.message;
}

describe('a build reads only the swarm and its packages', () => {
  it('refuses an absolute import of a host file, as a path or a URL, naming the import only', async () => {
    for (const form of [(path: string) => path, (path: string) => `file://${path}`]) {
      const { root, token, pool } = await arena({});
      await writeFiles(root, {
        'a/live/notifier_agent.mjs': `import t from '${form(token)}' with { type: 'json' };\nexport const f = () => t;\n`,
      });
      const message = await refusedCreate(pool, root, token);
      expect(message).toContain('live/notifier_agent.mjs:1:15: an absolute import');
    }
  });

  it('refuses a relative import that climbs out of the root to a host file', async () => {
    const { root, token, pool } = await arena({});
    const climb = `${'../'.repeat(root.split('/').length + 2)}${token.slice(1)}`;
    await writeFiles(root, {
      'a/live/notifier_agent.mjs': `import t from '${climb}' with { type: 'json' };\nexport const f = () => t;\n`,
    });
    expect(await refusedCreate(pool, root, token)).toContain(
      "the import is missing, or leads outside the swarm's folder",
    );
  });

  it('says the same of an import that leaves the swarm whether or not its target exists on the host', async () => {
    const host = await makeRoot({
      'etc/token.json': JSON.stringify({ token: TOKEN }),
      'etc/token.mjs': `export default '${TOKEN}';\n`,
      'etc/token': `${TOKEN}\n`,
      'etc/tokens/index.mjs': `export default '${TOKEN}';\n`,
    });
    const { root, token, pool } = await arena({});
    // Out by climbing (refused at the import), then through a link (refused before the bundler runs).
    const climb = `${'../'.repeat(root.split('/').length + 2)}${host.slice(1)}/etc/`;
    const forms = [
      {
        form: (file: string) => `${climb}${file}`,
        throughLink: false,
        said: /live\/notifier_agent\.mjs:1:15: the import is missing, or leads outside/,
      },
      {
        form: (file: string) => `etc/${file}`,
        throughLink: true,
        said: /live\/node_modules\/etc: it is a symlink that leads outside the swarm's folder/,
      },
    ];
    for (const { form, throughLink, said: refusal } of forms) {
      if (throughLink) {
        await mkdir(join(root, 'a/live/node_modules'), { recursive: true });
        await symlink(join(host, 'etc'), join(root, 'a/live/node_modules/etc'));
      }
      for (const [there, missing] of [
        ['token.json', 'gone.json'],
        ['token.mjs', 'gone.mjs'],
        ['token', 'gone'],
        ['tokens', 'nothing'],
      ] as const) {
        const said: string[] = [];
        for (const file of [there, missing]) {
          await writeFiles(root, {
            'a/live/notifier_agent.mjs': `import t from '${form(file)}';\nexport const f = () => t;\n`,
          });
          said.push(await refusedCreate(pool, root, token));
        }
        // One answer for both: a tenant learns nothing of which host files exist.
        expect(said[0], form(there)).toBe(said[1]);
        expect(said[0]).toMatch(refusal);
        for (const leak of [host, TOKEN]) expect(said[0]).not.toContain(leak);
      }
    }
  });

  it("refuses a hard link under live/node_modules to another swarm's file", async () => {
    const { root, token, pool } = await arena({
      'a/live/notifier_agent.mjs': "import { secret } from 'x';\nexport const f = () => secret;\n",
      'a/live/node_modules/x/package.json': JSON.stringify({ name: 'x', main: 'index.mjs' }),
    });
    await link(join(root, 'b/live/secret.mjs'), join(root, 'a/live/node_modules/x/index.mjs'));
    expect(await refusedCreate(pool, root, token)).toContain('live/node_modules/x/index.mjs has 2 hard links');
  });

  it("never quotes a host file or another swarm's file that esbuild reads itself (tsconfig extends, a linked package.json)", async () => {
    // Identifiers, not JSON: a parse error would quote them whole.
    const hostWord = `hostword_${process.pid}_${Date.now()}`;
    const swarmWord = `bword_${process.pid}_${Date.now()}`;
    const host = await makeRoot({ 'etc/token.txt': `${hostWord} not json\n` });
    const hostFile = join(host, 'etc/token.txt');
    for (const extend of [hostFile, '../../b/live/words.txt']) {
      const { pool } = await arena({
        'b/live/words.txt': `${swarmWord} not json\n`,
        'a/live/tsconfig.json': JSON.stringify({ extends: extend }),
        'a/live/notifier_agent.ts': 'export const f = (): number => 1;\n',
      });
      const calls = keepCalling(pool);
      const outcome = await pool.snapshots.create('a', 'jan').then(
        () => 'made',
        (error: Error) => error.message,
      );
      await assertNeighbourAnswered(pool, await calls.stop());
      for (const leak of [hostWord, swarmWord, host]) expect(outcome).not.toContain(leak);
      // A tsconfig.json is the swarm's file like any other; the build never follows it.
      expect(outcome).toBe('made');
    }
    const { root, token, pool } = await arena({
      'b/live/package.json': `{ "name": "b", ${swarmWord} }`,
      'a/live/notifier_agent.mjs': "import b from 'b';\nexport const f = () => b;\n",
    });
    await mkdir(join(root, 'a/live/node_modules'), { recursive: true });
    await symlink(join(root, 'b/live'), join(root, 'a/live/node_modules/b'));
    expect(await refusedCreate(pool, root, token)).not.toContain(swarmWord);
  });

  it('refuses a live/node_modules link to / (a package, or the folder itself), however the import reaches through it', async () => {
    const plants: Array<(root: string) => Promise<void>> = [
      async (root) => {
        await mkdir(join(root, 'a/live/node_modules'), { recursive: true });
        await symlink('/', join(root, 'a/live/node_modules/x'));
      },
      async (root) => symlink('/', join(root, 'a/live/node_modules')),
    ];
    for (const plant of plants) {
      const { root, token, pool } = await arena({});
      await writeFiles(root, {
        'a/live/notifier_agent.mjs': `import t from 'x${token}' with { type: 'json' };\nexport const f = () => t;\n`,
      });
      await plant(root);
      // By the copy (a link that leaves live/) or the bundle (a read that leaves the swarm).
      const outside = /leads outside the swarm's folder|leaves the live folder/;
      expect(await refusedCreate(pool, root, token)).toMatch(outside);
      // The link to / reaches another swarm's file just the same.
      await writeFiles(root, {
        'a/live/notifier_agent.mjs': `import { secret } from 'x${join(root, 'b/live/secret.mjs')}';\nexport const f = () => secret;\n`,
      });
      expect(await refusedCreate(pool, root, token)).toMatch(outside);
    }
  });

  it('refuses a FIFO, in live/ or as an imported package file, without opening it, and every key still starts', async () => {
    for (const [at, agent] of [
      ['a/live/pipe', 'export const f = () => 1;\n'],
      ['a/live/node_modules/p/index.mjs', "import 'p';\nexport const f = () => 1;\n"],
    ] as const) {
      const { root, token, pool } = await arena({ 'a/live/notifier_agent.mjs': agent });
      await mkdir(join(root, at, '..'), { recursive: true });
      execFileSync('mkfifo', [join(root, at)]);
      // A writer waits for a reader: were the FIFO opened for reading, it would leave its mark.
      const mark = join(root, 'opened');
      const writer = spawn('sh', ['-c', 'echo x > "$1" && touch "$2"', 'sh', join(root, at), mark], {
        stdio: 'ignore',
      });
      children.push(writer);
      // esbuild's resolver passes over a FIFO; the copy refuses it by its type.
      expect(await refusedCreate(pool, root, token)).toMatch(
        /not a regular file|the import (of package "p" )?is missing/,
      );
      expect(existsSync(mark)).toBe(false);
      // Nothing of the process's libuv pool waits on it: a new thread key of another tenant starts.
      await writeFiles(root, await counterAgent('c'));
      expect(await pool.call('c/notifier_agent', 'add', [2, 3])).toBe(5);
      writer.kill('SIGKILL');
    }
  });

  it('never bundles or copies another swarm’s file when a folder is swapped for a link during create', async () => {
    const { root, pool } = await arena({
      'a/live/notifier_agent.mjs': "import { value } from './lib/helper.mjs';\nexport const f = () => value;\n",
      'a/live/lib/helper.mjs': "export const value = 'mine';\n",
    });
    // Another process swaps a/live/lib for a link to b/live/lib and back, at random moments.
    const racer = swapLibForTheirs(root, 'at random moments');
    children.push(racer);
    const calls = keepCalling(pool);
    let made = 0;
    let refused = 0;
    for (let i = 0; i < 150; i++) {
      const name = `t${i}`;
      const created = await pool.snapshots.create('a', name).then(
        () => true,
        (error: { code?: string; message?: string }) => {
          // Refused, or live/ caught mid-swap (a file missing): never a leak, never a hang.
          expect(error.code, error.message).toMatch(/^ERR_SANDPOOL_(SNAPSHOT_BUILD|MODULE_NOT_FOUND)$/);
          expect(error.message).not.toContain(root);
          refused += 1;
          return false;
        },
      );
      if (!created) continue;
      made += 1;
      const dir = await snapshotContent(root, 'a', name);
      for (const file of await readdir(dir, { recursive: true })) {
        const path = join(dir, file);
        if (lstatSync(path).isFile()) expect(await readFile(path, 'utf8')).not.toContain(SECRET);
      }
    }
    racer.kill('SIGKILL');
    await once(racer, 'exit');
    await assertNeighbourAnswered(pool, await calls.stop());
    // live/ whole again (the racer may have stopped mid-swap): a create holds the swarm's own code.
    const lib = join(root, 'a/live/lib');
    if (lstatSync(lib, { throwIfNoEntry: false })?.isSymbolicLink()) await unlink(lib);
    if (existsSync(`${lib}-real`)) await rename(`${lib}-real`, lib);
    await pool.snapshots.create('a', 'after');
    expect(await pool.call('a@after/notifier_agent', 'f')).toBe('mine');
    expect(made + refused).toBe(150);
  });

  it('a read proves where its descriptor is, not where its path led a moment later', async () => {
    // The window the swap test above met once in a loaded run, made wide: the racer swaps as
    // fast as it can, and each read is checked. Resolving the path and then stat-ing it let a
    // folder swapped for a link in between pass another swarm's inode as the swarm's own (74
    // of 20,000 reads here); the descriptor's own path (/proc/self/fd) cannot be swapped.
    const { root, pool } = await arena({ 'a/live/lib/helper.mjs': "export const value = 'mine';\n" });
    const { buildInputs, placeOf, readInput } = await import('../packages/sandpool/dist/store/confine.js');
    const inputs = await buildInputs(root, 'a');
    const racer = swapLibForTheirs(root, 'as fast as it can');
    children.push(racer);
    const calls = keepCalling(pool);
    const read = { mine: 0, leaked: 0, refused: 0 };
    for (let i = 0; i < 20_000; i++) {
      try {
        const { bytes } = await readInput(join(root, 'a/live/lib/helper.mjs'), (real) => placeOf(inputs, real), 4096);
        if (bytes.toString('utf8').includes(SECRET)) read.leaked += 1;
        else read.mine += 1;
      } catch {
        read.refused += 1;
      }
    }
    racer.kill('SIGKILL');
    await once(racer, 'exit');
    await assertNeighbourAnswered(pool, await calls.stop());
    expect(read.leaked, JSON.stringify(read)).toBe(0);
    expect(read.mine + read.refused).toBe(20_000);
  });
});
