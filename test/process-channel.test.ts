import { describe, expect, it } from 'vitest';
import { rejection } from './support/errors.js';
import { installCleanup, invariants, openPool } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();

/** What a process key can write on its IPC channel besides sandpool's own messages. */
const ATTACKER = `
import tty from 'node:tty';
import net from 'node:net';
export function nodeCommand() {
  process.send({ cmd: 'NODE_HANDLE_ACK' });
  return 'sent';
}
export function garbage() {
  // A frame's length, then bytes that are no serialized value.
  const frame = Buffer.alloc(12);
  frame.writeUInt32BE(8, 0);
  frame.fill(0xff, 4);
  new tty.WriteStream(process.channel.fd).write(frame);
  return 'sent';
}
export async function handle() {
  const server = net.createServer().listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  for (let i = 0; i < 50; i++) process.send({ t: 'output', stream: 'stdout', text: '' }, server);
  return 'sent';
}
`;

describe('a process key’s IPC channel, written by a hostile agent', () => {
  for (const fn of ['nodeCommand', 'garbage', 'handle']) {
    it(`${fn}: ends that key with protocol; the host lives and a neighbour answers`, async () => {
      const root = await makeRoot({ 'x/live/attacker.mjs': ATTACKER, ...(await counterAgent('n')) });
      const pool = openPool({
        root,
        isolation: (key) => (key.swarm === 'x' ? 'process' : 'thread'),
        permissions: 'none',
      });
      expect(await pool.call('n/notifier_agent', 'notify', ['before'])).toMatchObject({ version: 'v1' });
      const neighbour = (async () => {
        for (let i = 0; i < 20; i++) await pool.call('n/notifier_agent', 'notify', [`during ${i}`]);
      })();
      const error = await rejection(pool.call('x/attacker', fn));
      expect(error).toMatchObject({ code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'protocol' });
      await neighbour;
      expect(await pool.call('n/notifier_agent', 'notify', ['after'])).toMatchObject({ version: 'v1' });
      expect(invariants(pool)).toEqual([]);
    });
  }
});
