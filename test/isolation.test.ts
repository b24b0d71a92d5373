import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SnapshotStore } from 'sandpool';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { installCleanup, openPool } from './support/pool.js';
import { counterAgent, fixture, makeRoot, writeFiles } from './support/root.js';

installCleanup();

interface Answer {
  version: string;
  text: string;
  count: number;
  threadId: number;
}

/**
 * Swarm `a` with a `jan` and a `jun` snapshot and a third live version, as in the demo. Built
 * once for the file (no test changes it): snapshots are the costly part of these tests.
 */
let threeVersions = '';

beforeAll(async () => {
  threeVersions = await mkdtemp(join(tmpdir(), 'sandpool-test-'));
  const store = new SnapshotStore({ root: threeVersions });
  await writeFiles(threeVersions, await counterAgent('a', 'v1'));
  await store.create('a', 'jan');
  await writeFiles(threeVersions, await counterAgent('a', 'v2'));
  await store.create('a', 'jun');
  await writeFiles(threeVersions, await counterAgent('a', 'v3'));
});

afterAll(async () => {
  await rm(threeVersions, { recursive: true, force: true });
});

const KEYS = ['a@jan/notifier_agent', 'a@jun/notifier_agent', 'a/notifier_agent'] as const;
const VERSIONS = ['v1', 'v2', 'v3'] as const;

describe('the stale-module bug cannot happen', () => {
  it.each([
    ['January, June, live', [0, 1, 2]],
    ['live, June, January', [2, 1, 0]],
  ])('each key answers with its own code and helper, called %s', async (_order, order) => {
    const pool = openPool({ root: threeVersions });
    for (const index of order) {
      const answer = await pool.call<Answer>(KEYS[index] as string, 'notify', ['hi']);
      expect(answer.version).toBe(VERSIONS[index]);
      // The helper is the key's own copy: its version matches, and its counter starts at 1.
      expect(answer.text).toBe(`format-${VERSIONS[index]}:hi:1`);
      expect(answer.count).toBe(1);
    }
  });

  it('keeps module-level state separate per key', async () => {
    const pool = openPool({ root: threeVersions });
    for (let round = 1; round <= 3; round++) {
      const answers = await Promise.all(KEYS.map((key) => pool.call<Answer>(key, 'notify', ['x'])));
      expect(answers.map((answer) => answer.count)).toEqual([round, round, round]);
    }
    const threads = await Promise.all(KEYS.map((key) => pool.call<Answer>(key, 'notify', ['x'])));
    expect(new Set(threads.map((answer) => answer.threadId)).size).toBe(3);
  });
});

describe('swarms', () => {
  it('gives the same stem in two swarms two separate modules', async () => {
    const root = await makeRoot({ ...(await counterAgent('one', 'one')), ...(await counterAgent('two', 'two')) });
    const pool = openPool({ root });
    const first = await pool.call<Answer>('one/notifier_agent', 'notify', ['m']);
    const second = await pool.call<Answer>({ swarm: 'two', stem: 'notifier_agent' }, 'notify', ['m']);
    await pool.call('one/notifier_agent', 'notify', ['m']);
    const third = await pool.call<Answer>({ swarm: 'two', snapshot: null, stem: 'notifier_agent' }, 'notify', ['m']);
    expect([first.version, second.version]).toEqual(['one', 'two']);
    expect([first.count, second.count, third.count]).toEqual([1, 1, 2]);
    expect(first.threadId).not.toBe(second.threadId);
  });

  it('calls a CommonJS agent by its module.exports names', async () => {
    const root = await makeRoot({ 'a/live/legacy.cjs': await fixture('commonjs.cjs') });
    const pool = openPool({ root });
    expect(await pool.call('a/legacy', 'notify', ['x'])).toBe('cjs:x:1');
    expect(await pool.remote<{ notify(m: string): string }>('a/legacy').notify('y')).toBe('cjs:y:2');
  });

  it('resolves <stem>.mjs before .js before .cjs', async () => {
    const root = await makeRoot({
      'a/live/pick.mjs': 'export const which = () => "mjs";',
      'a/live/pick.js': 'export const which = () => "js";',
      'a/live/pick.cjs': 'exports.which = () => "cjs";',
      'a/live/second.js': 'export const which = () => "js";',
      'a/live/second.cjs': 'exports.which = () => "cjs";',
      'a/live/package.json': '{ "type": "module" }',
    });
    const pool = openPool({ root });
    expect(await pool.call('a/pick', 'which')).toBe('mjs');
    expect(await pool.call('a/second', 'which')).toBe('js');
  });
});
