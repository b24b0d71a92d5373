import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { childProcesses, eventually, installCleanup, invariants, openPool } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();

function helpers(): number[] {
  return childProcesses().filter((pid) => readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes('helper-entry'));
}

describe('the snapshot helper process', () => {
  it('starts on the first snapshot operation, and one that died is started again for the next', async () => {
    const pool = openPool({ root: await makeRoot(await counterAgent('s')) });
    expect(helpers()).toEqual([]);
    const jan = await pool.snapshots.create('s', 'jan');
    const [first] = helpers();
    expect(first).toBeGreaterThan(0);
    process.kill(first as number, 'SIGKILL');
    await eventually(() => helpers().length === 0);
    // Sent before the host has seen the channel close, a request never reached it: sent again.
    expect(await pool.snapshots.verify('s', 'jan')).toEqual(jan);
    expect(await pool.snapshots.verify('s', 'jan')).toEqual(jan);
    expect(helpers()).toHaveLength(1);
    expect(helpers()[0]).not.toBe(first);
    expect(await pool.call('s@jan/notifier_agent', 'add', [2, 3])).toBe(5);
    expect(invariants(pool)).toEqual([]);
  });

  it('fails a create whose helper died while it ran it, never running it twice; the next create succeeds', async () => {
    const files = await counterAgent('s');
    // Enough files that the copy is still under way when the test sees its work folder.
    for (let i = 0; i < 600; i++) files[`s/live/data/${i}.txt`] = 'x'.repeat(4096);
    const root = await makeRoot({ ...files, ...(await counterAgent('n')) });
    const pool = openPool({ root });
    const snapshots = join(root, 's', 'snapshots');
    const building = join(root, '.sandpool-cache', 'artifacts', 's');
    const creating = pool.snapshots.create('s', 'jan').catch((error: unknown) => error);
    await eventually(
      () => existsSync(building) && readdirSync(building).some((name) => name.startsWith('.tmp-')),
      20_000,
    );
    const [helper] = helpers();
    process.kill(helper as number, 'SIGKILL');
    expect(await pool.call('n/notifier_agent', 'add', [2, 3])).toBe(5);
    const failed = await creating;
    expect(failed).toBeInstanceOf(Error);
    expect((failed as Error).message).toMatch(/snapshot helper process ended \(SIGKILL\) before it answered/);
    expect(existsSync(join(snapshots, 'jan'))).toBe(false);
    expect(await pool.snapshots.create('s', 'jan')).toMatchObject({ name: 'jan' });
    // The next create swept the dead helper's work folder: its owner is gone.
    expect(readdirSync(snapshots)).toEqual(['jan']);
    expect((await pool.snapshots.list('s')).map(({ name }) => name)).toEqual(['jan']);
    expect(invariants(pool)).toEqual([]);
  });

  it('gives the store’s errors with their codes, and bad input is refused before it is asked', async () => {
    const pool = openPool({ root: await makeRoot(await counterAgent('s')) });
    await expect(pool.snapshots.create('s', '../x')).rejects.toMatchObject({ code: 'ERR_SANDPOOL_INVALID_KEY' });
    expect(helpers()).toEqual([]);
    await expect(pool.snapshots.create('nope', 'jan')).rejects.toMatchObject({ code: 'ERR_SANDPOOL_SWARM_NOT_FOUND' });
    await expect(pool.snapshots.verify('s', 'jan')).rejects.toMatchObject({ code: 'ERR_SANDPOOL_SNAPSHOT_NOT_FOUND' });
    await expect(pool.snapshots.sign('s', 'jan')).rejects.toMatchObject({ code: 'ERR_SANDPOOL_INVALID_OPTIONS' });
  });

  it('ends once close() is called and what it runs has answered; the store then works in the host', async () => {
    const pool = openPool({ root: await makeRoot(await counterAgent('s')) });
    const creating = pool.snapshots.create('s', 'jan');
    await eventually(() => helpers().length === 1);
    await pool.close();
    expect(await creating).toMatchObject({ name: 'jan' });
    await eventually(() => helpers().length === 0);
    expect(await pool.snapshots.create('s', 'feb')).toMatchObject({ name: 'feb', digest: (await creating).digest });
    expect(helpers()).toEqual([]);
  });

  it('ignores the SIGINT and SIGTERM a terminal or service manager sends the whole process group', async () => {
    const pool = openPool({ root: await makeRoot(await counterAgent('s')) });
    const jan = await pool.snapshots.create('s', 'jan');
    const [helper] = helpers();
    process.kill(helper as number, 'SIGTERM');
    process.kill(helper as number, 'SIGINT');
    expect(await pool.snapshots.verify('s', 'jan')).toEqual(jan);
    expect(helpers()).toEqual([helper]);
  });
});

describe('reads of names and manifests', () => {
  it('list() and get() parse no manifest on the coordinator: a tenant with many names and a large manifest stalls no key', async () => {
    // A large manifest (4,000 files) under 60 names: parsed on the coordinator, the list took
    // one unbroken turn of its event loop for all of them.
    const files: Record<string, string> = {};
    for (let i = 0; i < 4000; i++) files[`t/live/data/file-${i}.txt`] = String(i);
    const root = await makeRoot({ ...files, ...(await counterAgent('t')), ...(await counterAgent('n')) });
    const pool = openPool({ root });
    await pool.snapshots.create('t', 'base');
    await Promise.all(Array.from({ length: 60 }, (_, i) => pool.snapshots.point('t', `n${i}`, 'base')));
    expect(await pool.call('n/notifier_agent', 'notify', ['x'])).toMatchObject({ count: 1 });
    // The longest the coordinator's event loop went without turning while the reads ran.
    let last = performance.now();
    let longest = 0;
    const ticker = setInterval(() => {
      const now = performance.now();
      longest = Math.max(longest, now - last);
      last = now;
    }, 5);
    const started = performance.now();
    const [listed, got] = await Promise.all([pool.snapshots.list('t'), pool.snapshots.get('t', 'n7')]);
    const tookMs = performance.now() - started;
    await new Promise((resolve) => setTimeout(resolve, 10));
    clearInterval(ticker);
    expect(listed).toHaveLength(61);
    expect(got.name).toBe('n7');
    expect(got.files).toBeGreaterThan(4000);
    // The longest the coordinator could not turn is a small part of what the reads took.
    expect(longest).toBeLessThan(Math.max(tookMs / 3, 60));
    expect(await pool.call('n/notifier_agent', 'notify', ['x'])).toMatchObject({ count: 2 });
    expect(invariants(pool)).toEqual([]);
  });
});
