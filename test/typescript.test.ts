// TypeScript agents and helpers: one rule (erasable syntax, `.ts` specifiers) on every Node,
// stripped in the worker where Node can, by the coordinator where it cannot (20).
import { SnapshotStore } from 'sandpool';
import { afterEach, describe, expect, it } from 'vitest';
import { rejection } from './support/errors.js';
import { installCleanup, openPool } from './support/pool.js';
import { makeRoot, removeRoots } from './support/root.js';

installCleanup();
afterEach(removeRoots);

const AGENT = [
  "import { double } from './lib/math.ts';",
  'interface Reply { value: number }',
  'export function run(n: number): Reply {',
  '  return { value: double(n) };',
  '}',
].join('\n');
const HELPER = 'export const double = (n: number): number => n * 2;\n';

describe('TypeScript agents', () => {
  it('load live with a .ts helper, and from a snapshot after live changed', async () => {
    const root = await makeRoot({ 'a/live/notifier_agent.ts': AGENT, 'a/live/lib/math.ts': HELPER });
    const pool = openPool({ root });
    expect(await pool.call('a/notifier_agent', 'run', [21])).toEqual({ value: 42 });
    await new SnapshotStore({ root }).create('a', 'jan');
    expect(await pool.call('a@jan/notifier_agent', 'run', [2])).toEqual({ value: 4 });
  });

  it('lose to .mjs when both exist', async () => {
    const root = await makeRoot({
      'a/live/notifier_agent.ts': 'export const who = (): string => "ts";',
      'a/live/notifier_agent.mjs': 'export const who = () => "mjs";',
    });
    expect(await openPool({ root }).call('a/notifier_agent', 'who', [])).toBe('mjs');
  });

  it('refuse an enum with MODULE_LOAD naming file, line and column', async () => {
    const root = await makeRoot({ 'a/live/notifier_agent.ts': 'export const a = 1;\n\nenum Color { Red }\n' });
    const error = await rejection(openPool({ root }).call('a/notifier_agent', 'a', []));
    expect(error.code).toBe('ERR_SANDPOOL_MODULE_LOAD');
    expect(error.message).toMatch(/notifier_agent\.ts:3:1/);
  });

  it('name file, line and column of a syntax error in a .mjs helper', async () => {
    const root = await makeRoot({
      'a/live/notifier_agent.mjs': "import { h } from './lib/h.mjs';\nexport const f = h;\n",
      'a/live/lib/h.mjs': 'export const h = 1;\nexport const broken = ;\n',
    });
    const error = await rejection(openPool({ root }).call('a/notifier_agent', 'f', []));
    expect(error.code).toBe('ERR_SANDPOOL_MODULE_LOAD');
    expect(error.message).toMatch(/lib\/h\.mjs:2:\d+/);
  });
});
