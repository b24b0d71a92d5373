import { execFileSync } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { code } from './support/errors.js';
import { eventually, installCleanup, invariants, openPool, recordEvents } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();

const BLOCKER = `
  import { readFileSync } from 'node:fs';
  import { execSync } from 'node:child_process';
  export function readFifo(path) { return readFileSync(path, 'utf8'); }
  export function sleep(seconds) { execSync('sleep ' + seconds); return 'slept'; }
`;

describe('threads that terminate() cannot stop', () => {
  it('stop holding a slot, show in stats().stuck, and end (with their exit event) when the native call returns', async () => {
    const root = await makeRoot({ 'a/live/blocker.mjs': BLOCKER, ...(await counterAgent('n')) });
    // They run native calls the strict permission model would refuse (a child process, a FIFO outside the key).
    const pool = openPool({ root, maxWorkers: 1, abortGraceMs: 0, permissions: 'none' });
    const { events } = recordEvents(pool);
    expect(await code(pool.call('a/blocker', 'sleep', [4], { timeoutMs: 100 }))).toBe('ERR_SANDPOOL_TIMEOUT');
    // The neighbour needs the only slot, which the stuck thread gives up.
    expect(await pool.call('n/notifier_agent', 'add', [1, 2], { timeoutMs: 5_000 })).toBe(3);
    expect(pool.stats()).toMatchObject({ stuck: 1, workers: 1 });
    expect(events.filter((event) => event.type === 'exit' && event.key === 'a/blocker')).toEqual([]);
    expect(invariants(pool)).toEqual([]);
    await eventually(() => pool.stats().stuck === 0, 8_000);
    expect(events).toContainEqual(expect.objectContaining({ type: 'exit', key: 'a/blocker', reason: 'killed' }));
  });

  it('close() resolves with a thread blocked on a FIFO nobody writes', async () => {
    const root = await makeRoot({ 'a/live/blocker.mjs': BLOCKER });
    const fifo = join(root, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const pool = openPool({ root, abortGraceMs: 0, permissions: 'none' });
    expect(await code(pool.call('a/blocker', 'readFifo', [fifo], { timeoutMs: 100 }))).toBe('ERR_SANDPOOL_TIMEOUT');
    await eventually(() => pool.stats().stuck === 1, 5_000);
    await pool.close();
    expect(pool.stats()).toMatchObject({ workers: 0, stuck: 1 });
    // Unblock it so the thread can end before the next test counts threads.
    closeSync(openSync(fifo, 'w'));
    await eventually(() => pool.stats().stuck === 0, 5_000);
  });
});
