import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { code } from './support/errors.js';
import { eventually, installCleanup, invariants, openPool, recordEvents } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();

/**
 * Native calls terminate() cannot interrupt: a FIFO read (it says when it is about to block,
 * by a marker file) and a child process (the test sees the \`sleep\` and ends it when it wants).
 */
const BLOCKER = `
  import { readFileSync, writeFileSync } from 'node:fs';
  export function readFifo(path, marker) { writeFileSync(marker, ''); return readFileSync(path, 'utf8'); }
`;

const NAPPER = `
  import { execFileSync } from 'node:child_process';
  export function nap(seconds) { execFileSync('sleep', [String(seconds)]); return 'woke'; }
`;

/** The \`sleep\` processes this process's threads started: a thread with one is inside execFileSync. */
function sleepers(): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      // pid (comm) state ppid ...: comm may hold spaces, so read past its closing parenthesis.
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (stat.includes('(sleep)') && state !== 'Z' && Number(ppid) === process.pid) pids.push(Number(entry));
    } catch {
      // gone already
    }
  }
  return pids;
}

describe('threads that terminate() cannot stop', () => {
  it('stop holding a slot, show in stats().stuck, and end (with their exit event) when the native call returns', async () => {
    const root = await makeRoot({ 'a/live/napper.mjs': NAPPER, ...(await counterAgent('n')) });
    // They run native calls the strict permission model would refuse (a child process, a FIFO outside the key).
    const pool = openPool({ root, maxWorkers: 1, abortGraceMs: 0, permissions: 'none' });
    const { events } = recordEvents(pool);
    const controller = new AbortController();
    const napping = pool.call('a/napper', 'nap', [600], { signal: controller.signal });
    // Aborted only once its thread is inside the native call, where terminate() cannot reach it.
    await eventually(() => sleepers().length === 1);
    const [sleeper] = sleepers();
    try {
      controller.abort();
      expect(await code(napping)).toBe('ERR_SANDPOOL_ABORTED');
      // The neighbour needs the only slot, which the stuck thread gives up.
      expect(await pool.call('n/notifier_agent', 'add', [1, 2])).toBe(3);
      expect(pool.stats()).toMatchObject({ stuck: 1, workers: 1 });
      expect(events.filter((event) => event.type === 'exit' && event.key === 'a/napper')).toEqual([]);
      expect(invariants(pool)).toEqual([]);
    } finally {
      process.kill(sleeper as number); // the native call returns
    }
    await eventually(() => pool.stats().stuck === 0);
    expect(events).toContainEqual(expect.objectContaining({ type: 'exit', key: 'a/napper', reason: 'killed' }));
  });

  it('a swarm with as many stuck threads as it may leave gets no new worker until one ends; others do', async () => {
    const root = await makeRoot({
      'a/live/napper1.mjs': NAPPER,
      'a/live/napper2.mjs': NAPPER,
      ...(await counterAgent('a')),
      ...(await counterAgent('n')),
    });
    const pool = openPool({ root, maxWorkers: 8, abortGraceMs: 0, permissions: 'none' });
    const { events } = recordEvents(pool);
    const stuck: number[] = [];
    try {
      for (const stem of ['napper1', 'napper2']) {
        const controller = new AbortController();
        const napping = pool.call(`a/${stem}`, 'nap', [600], { signal: controller.signal });
        // Aborted only once its thread is inside the native call, where terminate() cannot reach it.
        await eventually(() => sleepers().length > stuck.length);
        stuck.push(...sleepers().filter((pid) => !stuck.includes(pid)));
        controller.abort();
        expect(await code(napping)).toBe('ERR_SANDPOOL_ABORTED');
        await eventually(() => pool.stats().stuck === stuck.length);
      }
      const waiting = pool.call('a/notifier_agent', 'add', [1, 2]);
      waiting.catch(() => {}); // awaited below; a failed check before that must not leave it unhandled
      expect(await pool.call('n/notifier_agent', 'add', [2, 2])).toBe(4);
      const state = () => pool.keyStats().find((entry) => entry.key === 'a/notifier_agent')?.state;
      await eventually(() => state() !== 'resolving');
      expect(state()).toBe('queued');
      expect(events.filter((event) => event.type === 'spawn' && event.key === 'a/notifier_agent')).toEqual([]);
      expect(invariants(pool)).toEqual([]);
      // One native call returns: its thread ends, and the swarm is under the bound again.
      process.kill(stuck.shift() as number);
      expect(await waiting).toBe(3);
      expect(pool.stats().stuck).toBe(1);
      expect(events).toContainEqual(expect.objectContaining({ type: 'exit', key: 'a/napper1', reason: 'killed' }));
      expect(invariants(pool)).toEqual([]);
    } finally {
      for (const pid of stuck) process.kill(pid);
    }
    await eventually(() => pool.stats().stuck === 0);
  });

  it('close() resolves with a thread blocked on a FIFO nobody writes', async () => {
    const root = await makeRoot({ 'a/live/blocker.mjs': BLOCKER });
    const fifo = join(root, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const marker = join(root, 'blocking');
    const pool = openPool({ root, abortGraceMs: 0, permissions: 'none' });
    const controller = new AbortController();
    const reading = pool.call('a/blocker', 'readFifo', [fifo, marker], { signal: controller.signal });
    // Aborted once it is about to open the FIFO, where terminate() cannot reach it.
    await eventually(() => existsSync(marker));
    controller.abort();
    expect(await code(reading)).toBe('ERR_SANDPOOL_ABORTED');
    await eventually(() => pool.stats().stuck === 1);
    await pool.close();
    expect(pool.stats()).toMatchObject({ workers: 0, stuck: 1 });
    // Unblock it so the thread can end before the next test counts threads.
    closeSync(openSync(fifo, 'w'));
    await eventually(() => pool.stats().stuck === 0);
  });
});
