import { realpathSync } from 'node:fs';
import { chmod, cp, readFile, symlink, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  createPool,
  formatKey,
  isSandpoolError,
  parseKey,
  type SandpoolError,
  SandpoolError as SandpoolErrorClass,
} from 'sandpool';
import { describe, expect, it } from 'vitest';
import { code, rejection } from './support/errors.js';
import { deaths, eventually, installCleanup, openPool, recordEvents, TEST_LOAD_TIMEOUT_MS } from './support/pool.js';
import { counterAgent, fixture, makeRoot, snapshotContent } from './support/root.js';

installCleanup();

const require = createRequire(import.meta.url);

async function faultyRoot(): Promise<string> {
  return makeRoot({
    'a/live/faulty.mjs': await fixture('faulty.mjs'),
    'a/live/on_import.mjs': await fixture('throws-on-import.mjs'),
    'a/live/syntax.mjs': await fixture('syntax-error.mjs'),
    ...(await counterAgent('a')),
  });
}

describe('keys', () => {
  const bad: Array<[string, unknown]> = [
    ['.. as swarm', { swarm: '..', stem: 'x' }],
    ['.. as snapshot', { swarm: 'a', snapshot: '..', stem: 'x' }],
    ['.. as stem', { swarm: 'a', stem: '..' }],
    ['/ in swarm', { swarm: 'a/b', stem: 'x' }],
    ['/ in snapshot', { swarm: 'a', snapshot: 'j/an', stem: 'x' }],
    ['/ in stem', { swarm: 'a', stem: 'x/y' }],
    ['empty swarm', { swarm: '', stem: 'x' }],
    ['empty stem', { swarm: 'a', stem: '' }],
    ['empty snapshot', { swarm: 'a', snapshot: '', stem: 'x' }],
    ['overlong swarm', { swarm: 'a'.repeat(65), stem: 'x' }],
    ['overlong stem', { swarm: 'a', stem: 'x'.repeat(129) }],
    ['NUL in stem', { swarm: 'a', stem: 'x\0' }],
    ['absolute path', { swarm: '/etc', stem: 'passwd' }],
    ['Unicode look-alike', { swarm: 'а', stem: 'x' }], // Cyrillic a
    ['unknown field', { swarm: 'a', stem: 'x', extra: 1 }],
    ['text with two slashes', 'a/../x'],
    ['text without a stem', 'a/'],
    ['empty text', ''],
    ['text with NUL', 'a/x\0'],
    ['not a key at all', 42],
  ];

  it.each(bad)('rejects %s with INVALID_KEY and spawns nothing', async (_label, key) => {
    const pool = openPool({ root: await makeRoot(await counterAgent('a')) });
    const { events } = recordEvents(pool);
    const error = await rejection(pool.call(key as string, 'notify'));
    expect(error.code).toBe('ERR_SANDPOOL_INVALID_KEY');
    expect(error.issues?.length).toBeGreaterThan(0);
    expect(events).toEqual([]);
  });

  it('names the failing fields in issues', async () => {
    const pool = openPool({ root: await makeRoot() });
    const error = await rejection(pool.call({ swarm: '..', snapshot: 'ok', stem: 'x/y' }, 'f'));
    expect(error.issues?.map((issue) => issue.path[0]).sort()).toEqual(['stem', 'swarm']);
  });

  it('round-trips the text form', () => {
    expect(parseKey('a/b')).toEqual({ swarm: 'a', snapshot: null, stem: 'b' });
    expect(parseKey('a1b2@jan.2026/notifier_agent')).toEqual({
      swarm: 'a1b2',
      snapshot: 'jan.2026',
      stem: 'notifier_agent',
    });
    expect(formatKey({ swarm: 'a', stem: 'b' })).toBe('a/b');
    expect(formatKey({ swarm: 'a', snapshot: 'jan', stem: 'b' })).toBe('a@jan/b');
    expect(() => parseKey('a@/b')).toThrow(expect.objectContaining({ code: 'ERR_SANDPOOL_INVALID_KEY' }));
  });

  it('never throws synchronously', () => {
    const pool = openPool({ root: '/nonexistent' });
    expect(() => pool.call('bad key', 'f').catch(() => {})).not.toThrow();
    expect(() => pool.call({ swarm: 'a', stem: 'b' }, 'f', 'not an array' as never).catch(() => {})).not.toThrow();
  });
});

describe('options', () => {
  it.each([
    [{}, 'root'],
    [{ root: '/r', maxWorkers: 0 }, 'maxWorkers'],
    [{ root: '/r', idleTimeoutMs: -1 }, 'idleTimeoutMs'],
    [{ root: '/r', resourceLimits: { maxOldGenerationSizeMb: 'big' } }, 'resourceLimits'],
    [{ root: '/r', env: { A: 1 } }, 'env'],
    [{ root: '/r', colour: 'blue' }, ''],
  ])('refuses %j naming the field', (options, field) => {
    let caught: unknown;
    try {
      createPool(options as never);
    } catch (error) {
      caught = error;
    }
    expect(caught).toMatchObject({ code: 'ERR_SANDPOOL_INVALID_OPTIONS' });
    const paths = (caught as SandpoolError).issues?.map((issue) => issue.path[0] ?? '') ?? [];
    if (field !== '') expect(paths).toContain(field);
  });

  it('refuses bad call options', async () => {
    const pool = openPool({ root: await makeRoot(await counterAgent('a')) });
    expect(await code(pool.call('a/notifier_agent', 'notify', [], { timeoutMs: -5 }))).toBe(
      'ERR_SANDPOOL_INVALID_OPTIONS',
    );
  });
});

describe('modules and exports', () => {
  it('names no folder of the host in what an agent’s failure says: paths read from <root>', async () => {
    const root = await makeRoot({
      'h/live/syntax.mjs': 'export function f( { return 1 }',
      'h/live/missing.mjs': "import './nope.mjs';\nexport const g = 1;",
      'h/live/throws.mjs': "export function boom() { throw new Error('boom'); }",
    });
    const pool = openPool({ root });
    const host = [realpathSync(root), root, realpathSync(join(dirname(require.resolve('sandpool')), '..'))];
    const failures = [
      await rejection(pool.call('h/syntax', 'f')),
      await rejection(pool.call('h/missing', 'g')),
      await rejection(pool.call('h/throws', 'boom')),
    ];
    expect(failures.map((error) => error.code)).toEqual([
      'ERR_SANDPOOL_MODULE_LOAD',
      'ERR_SANDPOOL_MODULE_LOAD',
      'ERR_SANDPOOL_AGENT_ERROR',
    ]);
    // The build names the place in the swarm, and so does a trace of the stem's bundle (its source map).
    expect(failures[0]?.message).toContain('live/syntax.mjs:1:');
    expect(failures[1]?.message).toMatch(/live\/missing\.mjs:1:\d+: .*"\.\/nope\.mjs"/);
    expect(String((failures[2]?.cause as Error | undefined)?.stack)).toContain('at Module.boom (live/throws.mjs:1:32)');
    for (const error of failures) {
      const said = `${error.message}\n${String((error.cause as Error | undefined)?.stack)}`;
      for (const folder of host) expect(said).not.toContain(folder);
    }
  });

  it("traces an agent's throw to its own files and lines, relative to the swarm, live and from a snapshot", async () => {
    const root = await makeRoot({
      'h/live/lib/deep.ts':
        "// a helper\nexport function deep(n: number): number {\n  if (n > 0) throw new Error('deep ' + n);\n  return n;\n}\n",
      'h/live/agent.mjs': "import { deep } from './lib/deep.ts';\n\nexport function go() {\n  return deep(1);\n}\n",
    });
    const pool = openPool({ root });
    await pool.snapshots.create('h', 'jan');
    const host = [realpathSync(root), root, realpathSync(join(dirname(require.resolve('sandpool')), '..'))];
    for (const key of ['h/agent', 'h@jan/agent']) {
      const stack = String(((await rejection(pool.call(key, 'go'))).cause as Error | undefined)?.stack);
      expect(stack).toContain('at deep (live/lib/deep.ts:3:20)');
      expect(stack).toContain('at Module.go (live/agent.mjs:4:10)');
      expect(stack).not.toContain('.sandpool-bundles');
      for (const folder of host) expect(stack).not.toContain(folder);
    }
    // The map is content (in the manifest, so in the digest) and names no folder of the host.
    const dir = await snapshotContent(root, 'h', 'jan');
    const manifest = JSON.parse(await readFile(join(dir, '.sandpool-manifest.json'), 'utf8')) as { files: object };
    expect(Object.keys(manifest.files)).toContain('.sandpool-bundles/agent.mjs.map');
    const map = await readFile(join(dir, '.sandpool-bundles/agent.mjs.map'), 'utf8');
    expect((JSON.parse(map) as { sources: string[] }).sources).toEqual(['live/lib/deep.ts', 'live/agent.mjs']);
    for (const folder of host) expect(map).not.toContain(folder);
  });

  it('MODULE_NOT_FOUND for a missing file, a missing swarm and a missing file in a snapshot', async () => {
    const root = await makeRoot(await counterAgent('a'));
    const pool = openPool({ root });
    const { events } = recordEvents(pool);
    await pool.snapshots.create('a', 'jan');
    expect(await code(pool.call('a/missing', 'f'))).toBe('ERR_SANDPOOL_MODULE_NOT_FOUND');
    expect(await code(pool.call('nobody/notifier_agent', 'f'))).toBe('ERR_SANDPOOL_MODULE_NOT_FOUND');
    expect(await code(pool.call('a@jan/missing', 'f'))).toBe('ERR_SANDPOOL_MODULE_NOT_FOUND');
    expect(events).toEqual([]);
  });

  it('SNAPSHOT_NOT_FOUND for a snapshot that does not exist', async () => {
    const pool = openPool({ root: await makeRoot(await counterAgent('a')) });
    expect(await code(pool.call('a@nope/notifier_agent', 'notify'))).toBe('ERR_SANDPOOL_SNAPSHOT_NOT_FOUND');
  });

  it('MODULE_NOT_FOUND for a symlink that leaves the swarm folder, and nothing of it runs', async () => {
    const root = await makeRoot({ 'outside/evil.mjs': 'globalThis.ran = true; export const f = () => "ran";' });
    await makeRoot(); // a sibling temp root, to prove nothing outside is read
    const { mkdir } = await import('node:fs/promises');
    await mkdir(join(root, 'a/live'), { recursive: true });
    await symlink(join(root, 'outside/evil.mjs'), join(root, 'a/live/evil.mjs'));
    const pool = openPool({ root });
    const { events } = recordEvents(pool);
    expect(await code(pool.call('a/evil', 'f'))).toBe('ERR_SANDPOOL_MODULE_NOT_FOUND');
    expect(events).toEqual([]);
  });

  it('EXPORT_NOT_FOUND for a missing export and for one that is not a function', async () => {
    const pool = openPool({ root: await faultyRoot() });
    expect(await code(pool.call('a/faulty', 'nope'))).toBe('ERR_SANDPOOL_EXPORT_NOT_FOUND');
    expect(await code(pool.call('a/faulty', 'notAFunction'))).toBe('ERR_SANDPOOL_EXPORT_NOT_FOUND');
    expect(await code(pool.remote<Record<string, () => Promise<unknown>>>('a/faulty').nope!())).toBe(
      'ERR_SANDPOOL_EXPORT_NOT_FOUND',
    );
  });

  // A syntax error fails the build: no worker starts for it.
  it.each([
    ['on_import', ['spawn', 'exit']],
    ['syntax', []],
  ])('MODULE_LOAD for a module that fails to load (%s)', async (stem, lived) => {
    const pool = openPool({ root: await faultyRoot() });
    const { events } = recordEvents(pool);
    expect(await code(pool.call(`a/${stem}`, 'f'))).toBe('ERR_SANDPOOL_MODULE_LOAD');
    await eventually(() => pool.stats().workers === 0);
    expect(events.map((event) => event.type)).toEqual(lived);
    // The neighbour is untouched.
    expect(await pool.call('a/notifier_agent', 'add', [1, 2])).toBe(3);
  });
});

describe('agent errors', () => {
  it('AGENT_ERROR keeps the remote name, message, stack and code on cause', async () => {
    const pool = openPool({ root: await faultyRoot() });
    const error = await rejection(pool.call('a/faulty', 'fail', ['E_REMOTE']));
    expect(error.code).toBe('ERR_SANDPOOL_AGENT_ERROR');
    expect(error.key).toBe('a/faulty');
    const cause = error.cause as Error & { code?: string };
    expect(cause).toBeInstanceOf(Error);
    expect(cause.name).toBe('TypeError');
    expect(cause.code).toBe('E_REMOTE');
    expect(cause.stack).toContain('faulty.mjs');
  });

  it('AGENT_ERROR for rejections and thrown non-errors, through call and remote', async () => {
    const pool = openPool({ root: await faultyRoot() });
    const agent = pool.remote<typeof import('./fixtures/faulty.mjs')>('a/faulty');
    const rejected = await rejection(agent.rejectWith('nope'));
    expect(rejected.code).toBe('ERR_SANDPOOL_AGENT_ERROR');
    expect((rejected.cause as Error).name).toBe('RangeError');
    expect(await code(pool.call('a/faulty', 'throwString'))).toBe('ERR_SANDPOOL_AGENT_ERROR');
    const viaRemote = await rejection(agent.fail('E_VIA_REMOTE'));
    expect((viaRemote.cause as { code?: string }).code).toBe('E_VIA_REMOTE');
    // The worker survives an agent error.
    expect(await pool.call('a/faulty', 'echo', [7])).toBe(7);
  });

  it('a call of a batch that cannot be cloned fails alone; its batch neighbours of every arity answer', async () => {
    const pool = openPool({ root: await faultyRoot() });
    await pool.call('a/faulty', 'echo', [0]); // warm: the next calls leave in one batch
    const settled = await Promise.allSettled([
      pool.call('a/faulty', 'all', []),
      pool.call('a/faulty', 'all', [1, 2, 3]),
      pool.call('a/faulty', 'all', [Symbol('s'), 'x']),
      pool.call('a/faulty', 'all', ['last', null]),
    ]);
    expect(settled.map((s) => (s.status === 'fulfilled' ? s.value : (s.reason as SandpoolError).code))).toEqual([
      '',
      '1,2,3',
      'ERR_SANDPOOL_DATA_CLONE',
      'last,',
    ]);
  });

  it('DATA_CLONE for arguments and results that cannot be cloned', async () => {
    const pool = openPool({ root: await faultyRoot() });
    expect(await code(pool.call('a/faulty', 'echo', [() => 1]))).toBe('ERR_SANDPOOL_DATA_CLONE');
    expect(await code(pool.call('a/faulty', 'echo', [Symbol('s')]))).toBe('ERR_SANDPOOL_DATA_CLONE');
    expect(await code(pool.call('a/faulty', 'unclonable'))).toBe('ERR_SANDPOOL_DATA_CLONE');
    const agent = pool.remote<typeof import('./fixtures/faulty.mjs')>('a/faulty');
    expect(await code(agent.echo(() => 1))).toBe('ERR_SANDPOOL_DATA_CLONE');
    expect(await code(agent.unclonable())).toBe('ERR_SANDPOOL_DATA_CLONE');
    expect(await pool.call('a/faulty', 'echo', ['still fine'])).toBe('still fine');
  });
});

describe('worker death', () => {
  it('rejects the call with WORKER_EXITED, the next call respawns, other keys are untouched', async () => {
    const pool = openPool({ root: await faultyRoot() });
    const { events } = recordEvents(pool);
    const before = await pool.call<{ threadId: number }>('a/notifier_agent', 'notify', ['x']);
    const error = await rejection(pool.call('a/faulty', 'exit', [1]));
    expect(error).toMatchObject({ code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'exit' });
    expect(events).toContainEqual(expect.objectContaining({ type: 'exit', key: 'a/faulty', reason: 'exit' }));
    expect(await pool.call('a/faulty', 'echo', ['back'])).toBe('back');
    const after = await pool.call<{ threadId: number; count: number }>('a/notifier_agent', 'notify', ['x']);
    expect(after).toMatchObject({ threadId: before.threadId, count: 2 });
    expect(pool.stats().died).toMatchObject({ exit: 1 });
    expect(deaths(pool.stats())).toBe(1);
  });

  it("reports an uncaught error as 'crash' to every call in flight", async () => {
    const pool = openPool({ root: await faultyRoot() });
    const waiting = pool.call('a/faulty', 'hang');
    // Its own reply leaves at the end of the worker's turn, and the crash comes on the next
    // timer: on a loaded machine the crash may come first, and then it fails this call too.
    const scheduled = await pool.call('a/faulty', 'crashLater').catch((error: SandpoolError) => error);
    if (typeof scheduled === 'string') expect(scheduled).toBe('scheduled');
    else expect(scheduled).toMatchObject({ code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'crash' });
    expect(await rejection(waiting)).toMatchObject({ code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'crash' });
  });
});

describe('environment', () => {
  it('agents see the env option only, never the host environment', async () => {
    process.env.SANDPOOL_TEST_SECRET = 'host-secret';
    try {
      const pool = openPool({ root: await faultyRoot(), env: { GIVEN: 'yes' } });
      expect(await pool.call('a/faulty', 'readEnv', ['SANDPOOL_TEST_SECRET'])).toBeNull();
      expect(await pool.call('a/faulty', 'readEnv', ['PATH'])).toBeNull();
      expect(await pool.call('a/faulty', 'readEnv', ['GIVEN'])).toBe('yes');
    } finally {
      delete process.env.SANDPOOL_TEST_SECRET;
    }
  });
});

describe('snapshots through the pool', () => {
  it('SNAPSHOT_EXISTS, SWARM_NOT_FOUND and SNAPSHOT_NOT_FOUND', async () => {
    const root = await makeRoot(await counterAgent('a'));
    const pool = openPool({ root });
    await pool.snapshots.create('a', 'jan');
    await writeFile(join(root, 'a/live/format.mjs'), 'export const tag = () => "changed";');
    expect(await code(pool.snapshots.create('a', 'jan'))).toBe('ERR_SANDPOOL_SNAPSHOT_EXISTS');
    expect(await code(pool.snapshots.create('nobody', 'jan'))).toBe('ERR_SANDPOOL_SWARM_NOT_FOUND');
    expect(await code(pool.snapshots.remove('a', 'feb'))).toBe('ERR_SANDPOOL_SNAPSHOT_NOT_FOUND');
  });

  it('SNAPSHOT_CORRUPT when a snapshot file was edited, and none of its code runs', async () => {
    const root = await makeRoot(await counterAgent('a'));
    const first = openPool({ root });
    await first.snapshots.create('a', 'jan');
    expect(await first.call('a@jan/notifier_agent', 'add', [1, 1])).toBe(2);
    const file = join(await snapshotContent(root, 'a', 'jan'), '.sandpool-bundles/notifier_agent.mjs');
    await chmod(file, 0o644);
    await writeFile(file, 'process.exit(3); export const add = () => "tampered";');
    const second = openPool({ root });
    const { events } = recordEvents(second);
    expect(await code(second.call('a@jan/notifier_agent', 'add', [1, 1]))).toBe('ERR_SANDPOOL_SNAPSHOT_CORRUPT');
    await eventually(() => second.stats().workers === 0);
    // The worker ended because verification failed, not because the tampered code ran process.exit.
    expect(events.filter((event) => event.type === 'exit').map((event) => event.reason)).toEqual(['crash']);
  });

  it('remove drains the snapshot workers first', async () => {
    const root = await makeRoot(await counterAgent('a'));
    const pool = openPool({ root });
    const { events } = recordEvents(pool);
    await pool.snapshots.create('a', 'jan');
    const running = pool.call('a@jan/notifier_agent', 'slow', [150, 'finished']);
    await pool.call('a/notifier_agent', 'add', [1, 1]);
    await pool.snapshots.remove('a', 'jan');
    expect(await running).toBe('finished');
    expect(events).toContainEqual(
      expect.objectContaining({ type: 'exit', key: 'a@jan/notifier_agent', reason: 'retired' }),
    );
    expect(await code(pool.call('a@jan/notifier_agent', 'add', [1, 1]))).toBe('ERR_SANDPOOL_SNAPSHOT_NOT_FOUND');
    expect(await pool.call('a/notifier_agent', 'add', [2, 2])).toBe(4);
  });
});

describe('close', () => {
  it('rejects new calls with CLOSED and leaves no worker running', async () => {
    const root = await makeRoot({ ...(await counterAgent('a')), ...(await counterAgent('b')) });
    const pool = createPool({ root, loadTimeoutMs: TEST_LOAD_TIMEOUT_MS });
    const { events } = recordEvents(pool);
    await pool.call('a/notifier_agent', 'notify', ['x']);
    await pool.call('b/notifier_agent', 'notify', ['x']);
    await pool.close();
    expect(pool.stats()).toMatchObject({ workers: 0, spares: 0 });
    const spawned = events.filter((event) => event.type === 'spawn').map((event) => event.threadId);
    const exited = events.filter((event) => event.type === 'exit').map((event) => event.threadId);
    expect(exited.sort()).toEqual(spawned.sort());
    expect(await code(pool.call('a/notifier_agent', 'notify'))).toBe('ERR_SANDPOOL_CLOSED');
  });

  it('lets running calls finish within closeTimeoutMs, then rejects them with CLOSED', async () => {
    const root = await makeRoot(await fixture('faulty.mjs').then((text) => ({ 'a/live/faulty.mjs': text })));
    const pool = createPool({ root, closeTimeoutMs: 100, spareWorkers: 0, loadTimeoutMs: TEST_LOAD_TIMEOUT_MS });
    const hanging = pool.call('a/faulty', 'hang');
    await pool.call('a/faulty', 'echo', [1]);
    const closed = pool.close();
    expect(await code(hanging)).toBe('ERR_SANDPOOL_CLOSED');
    await closed;
    expect(pool.stats().workers).toBe(0);
  });

  it('rejects calls still waiting for a worker at once', async () => {
    const pool = createPool({ root: await makeRoot(await counterAgent('a')), spareWorkers: 0 });
    const waiting = pool.call('a/notifier_agent', 'notify', ['x']);
    const closed = pool.close();
    expect(await code(waiting)).toBe('ERR_SANDPOOL_CLOSED');
    await closed;
  });

  it('supports await using', async () => {
    const root = await makeRoot(await counterAgent('a'));
    let pool: ReturnType<typeof createPool> | undefined;
    {
      await using scoped = createPool({ root, loadTimeoutMs: TEST_LOAD_TIMEOUT_MS });
      pool = scoped;
      await scoped.call('a/notifier_agent', 'notify', ['x']);
    }
    expect(pool.stats()).toMatchObject({ workers: 0, spares: 0 });
  });
});

describe('isSandpoolError', () => {
  it('recognises an error made by another copy of the package, which instanceof does not', async () => {
    // A second install of the package, as two dependents with their own copies get.
    const entry = createRequire(import.meta.url).resolve('sandpool');
    const installed = dirname(dirname(realpathSync(entry)));
    const copyRoot = await makeRoot();
    await cp(join(installed, 'dist'), join(copyRoot, 'dist'), { recursive: true });
    await cp(join(installed, 'package.json'), join(copyRoot, 'package.json'));
    await symlink(join(installed, 'node_modules'), join(copyRoot, 'node_modules'));
    const copy = (await import(pathToFileURL(join(copyRoot, 'dist/index.js')).href)) as typeof import('sandpool');
    expect(copy.SandpoolError).not.toBe(SandpoolErrorClass);
    const pool = copy.createPool({ root: copyRoot, spareWorkers: 0 });
    const theirs: unknown = await pool.call('a/x', 'f').catch((error: unknown) => error);
    await pool.close();
    expect(theirs instanceof SandpoolErrorClass).toBe(false);
    expect(isSandpoolError(theirs)).toBe(true);
    expect(isSandpoolError(theirs, 'ERR_SANDPOOL_MODULE_NOT_FOUND')).toBe(true);
    expect(isSandpoolError(theirs, 'ERR_SANDPOOL_TIMEOUT')).toBe(false);
    expect(isSandpoolError(Object.assign(new Error('x'), { code: 'ERR_SANDPOOL_TIMEOUT' }))).toBe(false);
  });
});
