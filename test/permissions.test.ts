import { execFile } from 'node:child_process';
import { mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { code, rejection } from './support/errors.js';
import { fsRestrictedInThreads } from './support/permission-model.js';
import { eventually, installCleanup, invariants, openPool, recordEvents } from './support/pool.js';
import { counterAgent, fixture, makeRoot } from './support/root.js';

installCleanup();

const execFileAsync = promisify(execFile);

async function tenants(): Promise<string> {
  return makeRoot({
    'a/live/intruder.mjs': await fixture('intruder.mjs'),
    'b/live/secret.txt': 'b only',
    ...(await counterAgent('n')),
  });
}

const NEIGHBOUR = 'n/notifier_agent';

describe("permissions: 'strict' (the default)", () => {
  it('refuses child processes, nested workers, the inspector and addons; the host and a neighbour go on', async () => {
    const pool = openPool({ root: await tenants() });
    const refused = { spawn: 'ERR_ACCESS_DENIED', nestedWorker: 'ERR_ACCESS_DENIED', inspector: 'ERR_ACCESS_DENIED' };
    for (const [fn, expected] of Object.entries({ ...refused, addon: 'ERR_DLOPEN_DISABLED' })) {
      expect([fn, await pool.call('a/intruder', fn)]).toEqual([fn, expected]);
      expect(await pool.call(NEIGHBOUR, 'add', [1, 2])).toBe(3);
    }
    expect(invariants(pool)).toEqual([]);
  });

  it.runIf(fsRestrictedInThreads)(
    "restricts reads to the key's own code and writes to nothing: another swarm, the host's environ",
    async () => {
      const root = await tenants();
      const pool = openPool({ root });
      expect(await pool.call('a/intruder', 'readOwn', ['./intruder.mjs'])).toBe('allowed');
      // It runs from its artifact: its own raw folder, which a tenant's links could widen, is not granted.
      expect(await pool.call('a/intruder', 'read', [join(root, 'a/live/intruder.mjs')])).toBe('ERR_ACCESS_DENIED');
      expect(await pool.call('a/intruder', 'read', [join(root, 'b/live/secret.txt')])).toBe('ERR_ACCESS_DENIED');
      expect(await pool.call('a/intruder', 'read', ['/proc/self/environ'])).toBe('ERR_ACCESS_DENIED');
      expect(await pool.call('a/intruder', 'write', [join(root, 'a/live/new.txt')])).toBe('ERR_ACCESS_DENIED');
      expect(await pool.call(NEIGHBOUR, 'add', [1, 2])).toBe(3);
      expect(invariants(pool)).toEqual([]);
    },
  );

  it('refuses at spawn a key folder holding a link that leaves it (the permission model follows links)', async () => {
    const root = await tenants();
    await symlink(join(root, 'b/live/secret.txt'), join(root, 'a/live/borrowed.txt'));
    const pool = openPool({ root });
    expect(await code(pool.call('a/intruder', 'read', ['x']))).toBe('ERR_SANDPOOL_MODULE_NOT_FOUND');
    expect(await pool.call(NEIGHBOUR, 'add', [1, 2])).toBe(3);
    expect(pool.stats().spawned).toBe(1);
  });

  it('refuses a link into a sibling folder whose name starts with the key folder’s (live → live-evil)', async () => {
    const root = await tenants();
    await mkdir(join(root, 'a/live-evil'));
    await writeFile(join(root, 'a/live-evil/loot.txt'), 'outside live/');
    await symlink(join(root, 'a/live-evil/loot.txt'), join(root, 'a/live/loot.txt'));
    await symlink(join(root, 'a/live-evil'), join(root, 'a/live/evil'));
    const pool = openPool({ root });
    const error = await rejection(pool.call('a/intruder', 'read', [join(root, 'a/live/loot.txt')]));
    expect(error.code).toBe('ERR_SANDPOOL_MODULE_NOT_FOUND');
    expect(error.message).toContain('leaves the live folder');
    expect(await pool.call(NEIGHBOUR, 'add', [1, 2])).toBe(3);
    // A link that stays inside is fine.
    await rm(join(root, 'a/live/loot.txt'));
    await rm(join(root, 'a/live/evil'));
    await symlink(join(root, 'a/live/intruder.mjs'), join(root, 'a/live/alias.mjs'));
    expect(await pool.call('a/alias', 'readOwn', ['./intruder.mjs'])).toBe('allowed');
  });
});

describe('widening and turning off', () => {
  it("a grant widens strict for the paths and rights it names; 'none' is only the host's limits", async () => {
    const root = await tenants();
    const pool = openPool({
      root,
      permissions: (key) => (key.swarm === 'a' ? { fsRead: [join(root, 'b/live')], worker: true } : 'strict'),
    });
    expect(await pool.call('a/intruder', 'nestedWorker')).toBe('allowed');
    expect(await pool.call('a/intruder', 'spawn')).toBe('ERR_ACCESS_DENIED');
    if (fsRestrictedInThreads) {
      expect(await pool.call('a/intruder', 'read', [join(root, 'b/live/secret.txt')])).toBe('allowed');
    }
    const open = openPool({ root, permissions: 'none' });
    expect(await open.call('a/intruder', 'spawn')).toBe('allowed');
  });

  it('a strict key never gets a blank spare (its flags are fixed at boot), though its pool keeps blank spares for others', async () => {
    const root = await tenants();
    const pool = openPool({ root, spareWorkers: 2, permissions: (key) => (key.swarm === 'a' ? 'strict' : 'none') });
    const { events } = recordEvents(pool);
    expect(await pool.call(NEIGHBOUR, 'add', [1, 2])).toBe(3);
    await eventually(() => pool.stats().spares > 0);
    expect(await pool.call('a/intruder', 'spawn')).toBe('ERR_ACCESS_DENIED');
    expect(await pool.call('a/intruder', 'nestedWorker')).toBe('ERR_ACCESS_DENIED');
    if (fsRestrictedInThreads) {
      expect(await pool.call('a/intruder', 'read', [join(root, 'b/live/secret.txt')])).toBe('ERR_ACCESS_DENIED');
    }
    const spawns = events.filter((event) => event.type === 'spawn').map((event) => `${event.key} ${event.reason}`);
    expect(spawns).toContain('a/intruder cold');
    expect(pool.stats().spares).toBeGreaterThan(0);
    expect(invariants(pool)).toEqual([]);
  });

  it("'none' under a host that itself runs under the permission model gives workers no right the host lacks", async () => {
    const root = await tenants();
    await openPool({ root }).snapshots.create('a', 'made');
    const script = join(root, 'limited-host.mjs');
    const sandpool = pathToFileURL(join(import.meta.dirname, '../packages/sandpool/dist/index.js')).href;
    await writeFile(
      script,
      `import { createPool } from ${JSON.stringify(sandpool)};
      const pool = createPool({ root: ${JSON.stringify(root)}, permissions: 'none', spareWorkers: 0, loadTimeoutMs: 60_000 });
      const spawn = await pool.call('a@made/intruder', 'spawn');
      const live = await pool.call('a/intruder', 'spawn').catch((error) => [error.code, error.message]);
      await pool.close();
      process.stdout.write(JSON.stringify({ spawn, live }));`,
    );
    const flag = process.allowedNodeEnvironmentFlags.has('--permission') ? '--permission' : '--experimental-permission';
    // The host may read everything and start workers, but not child processes.
    const { stdout } = await execFileAsync(process.execPath, [flag, '--allow-fs-read=*', '--allow-worker', script], {
      env: { PATH: process.env.PATH ?? '' },
    });
    // Its snapshot keys (made by a host that may build) run; its live keys, which need a build, cannot.
    expect(JSON.parse(stdout)).toEqual({
      spawn: 'ERR_ACCESS_DENIED',
      live: ['ERR_SANDPOOL_MODULE_LOAD', expect.stringContaining('--allow-child-process')],
    });
  });

  it('a per-key function that throws rejects the call with INVALID_OPTIONS and starts nothing', async () => {
    const pool = openPool({
      root: await tenants(),
      permissions: () => {
        throw new Error('no policy');
      },
    });
    expect(await code(pool.call('a/intruder', 'spawn'))).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
    expect(pool.stats().spawned).toBe(0);
  });

  it('warns that granting child processes ends the sandbox for them', async () => {
    const warnings: string[] = [];
    const listener = (warning: Error & { code?: string }) => warnings.push(warning.code ?? '');
    process.on('warning', listener);
    try {
      openPool({ root: await tenants(), permissions: { childProcess: true } });
      await new Promise((resolve) => setImmediate(resolve));
      expect(warnings).toContain('SANDPOOL_SANDBOX_ENDED');
    } finally {
      process.off('warning', listener);
    }
  });
});
