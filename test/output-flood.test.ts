import type { Isolation } from 'sandpool';
import { describe, expect, it } from 'vitest';
import { withNeighbours } from './support/neighbours.js';
import { installCleanup, openPool } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();

/** Empty lines by the million: raw on fds 1 and 2 (what a process key can do past the runtime), or through process.stdout. */
const FLOODER = `
import { writeSync } from 'node:fs';
const block = Buffer.from('\\n'.repeat(4_000_000));
/** All of the block to fd, as fast as the pipe takes it (Node made it non-blocking). */
function flood(fd) {
  for (let at = 0; at < block.length; ) {
    try {
      at += writeSync(fd, block, at);
    } catch (error) {
      if (error.code !== 'EAGAIN') throw error;
    }
  }
}
export function raw(rounds) {
  for (let i = 0; i < rounds; i++) {
    flood(1);
    flood(2);
  }
  return 'done';
}
export function stdout(rounds) {
  for (let i = 0; i < rounds; i++) process.stdout.write(block.toString());
  return 'done';
}
`;

/** The default budget: lines per second a worker's output may cost the coordinator. */
const LINES_PER_SECOND = 10_000;

describe('an output flood', () => {
  it.each([
    ['process', 'raw'],
    ['thread', 'stdout'],
  ] as const)(
    'from a %s key (%s) is held to its budget, the excess dropped unread and counted',
    async (isolation, fn) => {
      const root = await makeRoot({
        'x/live/flooder.mjs': FLOODER,
        ...(await counterAgent('n')),
        ...(await counterAgent('m')),
      });
      let lines = 0;
      const pool = openPool({
        root,
        isolation: (key): Isolation => (key.swarm === 'n' ? 'thread' : key.swarm === 'm' ? 'process' : isolation),
        permissions: (key) => (key.swarm === 'x' ? 'none' : 'strict'),
        callTimeoutMs: 120_000,
        onOutput: (key) => {
          if (key === 'x/flooder') lines += 1;
        },
      });
      const started = performance.now();
      // 80 million empty lines from a process key, 160 million through a thread's window.
      const result = await withNeighbours(pool, () => pool.call('x/flooder', fn, [isolation === 'process' ? 10 : 40]));
      const seconds = (performance.now() - started) / 1000;
      expect(result).toBe('done');
      // A second's worth at once, then the budget's rate: never a line walked past it.
      expect(lines).toBeLessThanOrEqual(LINES_PER_SECOND * (seconds + 1));
      const stats = pool.keyStats().find((entry) => entry.key === 'x/flooder');
      expect(stats?.outputDropped).toBeGreaterThan(1_000_000);
      expect(pool.stats().outputDropped).toBeGreaterThanOrEqual(stats?.outputDropped ?? Infinity);
    },
  );
});
