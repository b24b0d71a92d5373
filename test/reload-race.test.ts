import { open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Pool } from 'sandpool';
import { describe, expect, it, onTestFinished } from 'vitest';
import { eventually, installCleanup, invariants, openPool, recordEvents } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();

const KEY = 'a/agent';

/**
 * Two exports, the second far down the file: a module loaded from the first half has
 * `version` but not `other`, and an empty one has neither. Either, promoted, would fail
 * calls with EXPORT_NOT_FOUND.
 */
function versioned(version: number): string {
  return `export const version = () => ${version};\n${'// padding\n'.repeat(200)}export const other = () => -${version};\n`;
}

/**
 * An in-place write as a slow writer makes it: truncate, half the text, a pause shorter than
 * the reload's 100 ms stability window, then the rest.
 */
async function writeInPlace(file: string, text: string, pauseMs: number, duringPause?: () => void): Promise<void> {
  const handle = await open(file, 'r+');
  try {
    await handle.truncate(0);
    const half = Math.floor(text.length / 2);
    await handle.write(text.slice(0, half), 0);
    duringPause?.();
    await sleep(pauseMs);
    await handle.write(text.slice(half), half);
  } finally {
    await handle.close();
  }
}

/** Calls both exports of the key (and a neighbour) back to back until stopped, keeping every failure. */
function steadyCalls(pool: Pool) {
  const versions: number[] = [];
  const failures: unknown[] = [];
  let stopAsked = false;
  const done = (async () => {
    // A failing run stops early: the failures so far say what went wrong.
    while (failures.length < 20) {
      // The round that starts after stop() is asked for is the last: every version the test saw
      // served before stopping is then seen by the stream too, however late its rounds ran.
      const last = stopAsked;
      const [version, other, neighbour] = await Promise.allSettled([
        pool.call<number>(KEY, 'version'),
        pool.call<number>(KEY, 'other'),
        pool.call('other/notifier_agent', 'add', [1, 1]),
      ]);
      for (const result of [version, other, neighbour]) if (result?.status === 'rejected') failures.push(result.reason);
      if (version?.status === 'fulfilled' && other?.status === 'fulfilled') {
        // Both answers came from one whole version of the file.
        if (other.value !== -version.value) failures.push(new Error(`version ${version.value}, other ${other.value}`));
        versions.push(version.value);
      }
      if (last) break;
    }
  })();
  const stop = async (): Promise<void> => {
    stopAsked = true;
    await done;
  };
  // A test that fails before stopping the stream must not leave it calling a closed pool.
  onTestFinished(stop);
  return { versions, failures, stop };
}

async function setup(watch: boolean) {
  const root = await makeRoot({ 'a/live/agent.mjs': versioned(0), ...(await counterAgent('other')) });
  const pool = openPool({ root, watch });
  expect(await pool.call(KEY, 'version')).toBe(0);
  return { pool, file: join(root, 'a/live/agent.mjs') };
}

describe('a reload never promotes a half-written file', () => {
  it('explicit invalidate() during an in-place write: every call answers, the whole new file wins', async () => {
    const { pool, file } = await setup(false);
    const stream = steadyCalls(pool);
    for (let version = 1; version <= 5; version++) {
      let reload: ReturnType<Pool['invalidate']> | undefined;
      // Asked for while the file holds only its first half.
      await writeInPlace(file, versioned(version), 40, () => {
        reload = pool.invalidate({ swarm: 'a' });
      });
      expect(await reload).toEqual({ reloaded: [KEY], failed: [] });
      expect(await pool.call(KEY, 'version')).toBe(version);
      expect(await pool.call(KEY, 'other')).toBe(-version);
      expect(invariants(pool)).toEqual([]);
    }
    await stream.stop();
    expect(stream.failures).toEqual([]);
    expect(stream.versions.length).toBeGreaterThan(0);
    expect(stream.versions.at(-1)).toBe(5);
    // Versions only move forward: no half-loaded candidate served, then gave way.
    expect(stream.versions).toEqual([...stream.versions].sort((x, y) => x - y));
    expect(invariants(pool)).toEqual([]);
  });

  it.each([
    ['within the watcher debounce', 40],
    ['past the watcher debounce, within the stability window', 75],
  ])(
    'with watch: true, in-place writes pausing %s: every call answers and the last version wins',
    async (_label, pauseMs) => {
      const { pool, file } = await setup(true);
      const stream = steadyCalls(pool);
      for (let version = 1; version <= 6; version++) {
        await writeInPlace(file, versioned(version), pauseMs);
        await sleep(30);
      }
      await eventually(() => stream.versions.at(-1) === 6, 10_000);
      await stream.stop();
      expect(stream.failures).toEqual([]);
      expect(stream.versions.every((version) => Number.isInteger(version) && version >= 0 && version <= 6)).toBe(true);
      expect(stream.versions).toEqual([...stream.versions].sort((x, y) => x - y));
      expect(invariants(pool)).toEqual([]);
    },
  );

  it('new code that fails to load is reported in failed, and the old worker keeps answering', async () => {
    const { pool, file } = await setup(false);
    const { events } = recordEvents(pool);
    const stream = steadyCalls(pool);
    await writeFile(file, 'export const version = ( => 1;\n');
    const report = await pool.invalidate({ swarm: 'a' });
    expect(report).toEqual({
      reloaded: [],
      failed: [{ key: KEY, error: expect.objectContaining({ code: 'ERR_SANDPOOL_MODULE_LOAD', key: KEY }) }],
    });
    // The worker of version 0 still serves; only the candidate's thread came and went.
    expect(await pool.call(KEY, 'version')).toBe(0);
    expect(events.filter((event) => event.type === 'evict')).toEqual([]);
    await stream.stop();
    expect(stream.failures).toEqual([]);
    expect(new Set(stream.versions)).toEqual(new Set([0]));
    // Fixed code takes over on the next invalidate.
    await writeFile(file, versioned(7));
    expect(await pool.invalidate({ swarm: 'a' })).toEqual({ reloaded: [KEY], failed: [] });
    expect(await pool.call(KEY, 'other')).toBe(-7);
    expect(invariants(pool)).toEqual([]);
  });
});
