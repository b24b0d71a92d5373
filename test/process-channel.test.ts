import { describe, expect, it } from 'vitest';
import { rejection } from './support/errors.js';
import { withNeighbours } from './support/neighbours.js';
import { installCleanup, openPool, rssGrowth } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();

/** What a process key can write on its channel to the host (fd 3) besides sandpool's own frames. */
const ATTACKER = `
import { writeSync } from 'node:fs';

/** Writes all of \`bytes\` to the channel (a blocking pipe); false once the host has closed its end. */
function write(bytes) {
  try {
    for (let at = 0; at < bytes.length; ) at += writeSync(3, bytes, at);
    return true;
  } catch {
    return false;
  }
}

export function garbage() {
  // A frame's length, then bytes that are no serialized value.
  const frame = Buffer.alloc(12);
  frame.writeUInt32BE(8, 0);
  frame.fill(0xff, 4);
  return write(frame);
}

export function badJson() {
  // A frame that starts as JSON does, and is none.
  const body = Buffer.from('{"t":"done","ok":[1,');
  const frame = Buffer.alloc(4 + body.length);
  frame.writeUInt32BE(body.length, 0);
  body.copy(frame, 4);
  return write(frame);
}

/** A frame that announces 4 GB, then 320 MB of it: Node 20's IPC channel buffered all it was sent. */
export async function huge() {
  const header = Buffer.alloc(4);
  header.writeUInt32BE(0xfffffff0, 0);
  write(header);
  const piece = Buffer.alloc(2 ** 20, 1);
  for (let i = 0; i < 320; i++) if (!write(piece)) return 'closed';
  return 'all written';
}

/** What Node's own IPC would have offered: a channel with commands and handles. */
export const nodeIpc = () => [typeof process.send, typeof process.channel];
`;

async function attackPool() {
  const root = await makeRoot({
    'x/live/attacker.mjs': ATTACKER,
    ...(await counterAgent('n')),
    ...(await counterAgent('m')),
  });
  return openPool({
    root,
    isolation: (key) => (key.swarm === 'n' ? 'thread' : 'process'),
    permissions: (key) => (key.swarm === 'x' ? 'none' : 'strict'),
    callTimeoutMs: 30_000,
  });
}

describe('a process key’s channel, written by a hostile agent', () => {
  it('is no Node IPC channel: no commands, no handles to send', async () => {
    const pool = await attackPool();
    expect(await withNeighbours(pool, () => pool.call('x/attacker', 'nodeIpc'))).toEqual(['undefined', 'undefined']);
  });

  it.each(['garbage', 'badJson'])(
    'a frame that does not deserialize (%s) ends that key with protocol; the neighbours answer',
    async (attack) => {
      const pool = await attackPool();
      const error = await withNeighbours(pool, () => rejection(pool.call('x/attacker', attack)));
      expect(error).toMatchObject({ code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'protocol' });
    },
  );

  it('a frame announced past the bound ends that key with protocol before the host keeps any of it', async () => {
    const pool = await attackPool();
    const { value: error, growth } = await rssGrowth(() =>
      withNeighbours(pool, () => rejection(pool.call('x/attacker', 'huge'))),
    );
    expect(error).toMatchObject({ code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'protocol' });
    // Unbounded, the host kept all 320 MB; bounded, it read one pipe's worth past the header.
    expect(growth).toBeLessThan(96 * 2 ** 20);
  });
});
