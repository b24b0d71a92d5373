import { serialize } from 'node:v8';
import { describe, expect, it } from 'vitest';
import { HostCalls } from '../packages/sandpool/dist/host/capabilities/capabilities.js';
import { HostStream } from '../packages/sandpool/dist/host/capabilities/host-bodies.js';
import { KeyQuota } from '../packages/sandpool/dist/host/capabilities/quotas.js';
import type { AgentThread } from '../packages/sandpool/dist/host/workers/thread.js';
import { resolveKey } from '../packages/sandpool/dist/key.js';
import type { HostEnd } from '../packages/sandpool/dist/protocol/agent-io.js';
import { checkFromWorker } from '../packages/sandpool/dist/protocol/checks.js';
import type { ToWorker } from '../packages/sandpool/dist/protocol/messages.js';
import { installCleanup, invariants, openPool } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

/**
 * The host's side of a host call's body, with everything the worker sends treated as a
 * forgery it may be: credit past the window, credit or cancels for host calls never made,
 * and a body the agent call that made it outlives.
 */

installCleanup();

function stubThread() {
  const sent: ToWorker[] = [];
  const violations: string[] = [];
  const thread = {
    post(message: ToWorker) {
      sent.push(message);
    },
    terminating: false,
    violate(problem: string) {
      violations.push(problem);
    },
  };
  return { thread: thread as unknown as AgentThread, sent, violations };
}

/** A body that yields one chunk, then waits for `more` (it ignores every signal) and counts its closes. */
function gatedBody(): { body: AsyncIterable<Uint8Array>; release(): void; closed(): number } {
  let closed = 0;
  let release: () => void = () => {};
  const gate = new Promise<void>((resolve) => {
    release = resolve;
  });
  async function* body(): AsyncGenerator<Uint8Array> {
    try {
      yield new Uint8Array([1]);
      await gate;
      for (;;) yield new Uint8Array([2]);
    } finally {
      closed += 1;
    }
  }
  return { body: body(), release: () => release(), closed: () => closed };
}

const args = (list: unknown[]): ArrayBuffer => {
  const bytes = serialize(list);
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
};

async function opened() {
  const { thread, sent, violations } = stubThread();
  const source = gatedBody();
  const table = Object.freeze({ stream: () => new HostStream({ status: 200 }, source.body) });
  const calls = new HostCalls(table, resolveKey('a/x'), new KeyQuota());
  const controller = new AbortController();
  const call = { hostSignal: () => controller.signal, context: null, scope: null, observed: null };
  calls.handle({ t: 'host', id: 1, call: 1, name: 'stream', args: args([]) }, () => call, thread);
  await new Promise((resolve) => setImmediate(resolve));
  return { calls, thread, sent, violations, source, end: () => controller.abort() };
}

const flush = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe("a host call's body", () => {
  it('is read only as the worker asks, and credit past the window is a forgery', async () => {
    const { calls, thread, sent, violations, source } = await opened();
    expect(sent).toEqual([expect.objectContaining({ t: 'host-done', id: 1, ok: true, body: true })]);
    calls.pull({ t: 'host-pull', id: 1, n: 1 }, thread);
    await flush();
    expect(sent.filter((message) => message.t === 'host-chunk')).toHaveLength(1);
    // The source is waiting: credit piles up, and past the window it is refused.
    calls.pull({ t: 'host-pull', id: 1, n: 16 }, thread);
    expect(violations).toEqual([]);
    calls.pull({ t: 'host-pull', id: 1, n: 1 }, thread);
    expect(violations).toEqual([expect.stringMatching(/past its window/)]);
    source.release();
  });

  it('ends, and lets its source go, when the agent call that made it ends, whatever the source does', async () => {
    const { calls, thread, sent, source, end } = await opened();
    calls.pull({ t: 'host-pull', id: 1, n: 4 }, thread);
    await flush();
    end();
    await flush();
    const ended = sent.find((message): message is HostEnd => message.t === 'host-end');
    expect(ended?.error).toMatchObject({ code: 'ERR_SANDPOOL_ABORTED' });
    source.release();
    await flush();
    expect(source.closed()).toBe(1);
    // Credit for the body now is the worker's late word, not a forgery; nothing more is sent.
    const count = sent.length;
    calls.pull({ t: 'host-pull', id: 1, n: 1 }, thread);
    await flush();
    expect(sent).toHaveLength(count);
  });

  it('refuses credit, cancels and host calls for ids never made, or made twice', async () => {
    const { calls, thread, violations, source } = await opened();
    calls.pull({ t: 'host-pull', id: 1, n: 1 }, thread);
    calls.pull({ t: 'host-pull', id: 7, n: 1 }, thread);
    calls.cancel({ t: 'host-cancel', id: 8 }, thread);
    calls.handle({ t: 'host', id: 1, call: 1, name: 'stream', args: args([]) }, () => undefined, thread);
    expect(violations).toEqual([
      expect.stringMatching(/never made/),
      expect.stringMatching(/never made/),
      expect.stringMatching(/made twice/),
    ]);
    calls.cancel({ t: 'host-cancel', id: 1 }, thread);
    await flush();
    expect(source.closed()).toBe(1);
  });

  it('messages are checked for shape and bounds before anything reads them', () => {
    const refused = [
      { t: 'host-pull', id: 1, n: 0 },
      { t: 'host-pull', id: 1, n: 17 },
      { t: 'host-pull', id: 1, n: 1.5 },
      { t: 'host-pull', id: 0, n: 1 },
      { t: 'host-pull', id: '1', n: 1 },
      { t: 'host-cancel', id: -1 },
      { t: 'host-cancel' },
    ];
    for (const raw of refused) expect(checkFromWorker(raw).ok, JSON.stringify(raw)).toBe(false);
    expect(checkFromWorker({ t: 'host-pull', id: 3, n: 16 })).toEqual({
      ok: true,
      message: { t: 'host-pull', id: 3, n: 16 },
    });
  });

  it('a process agent forging credit on its own channel ends with protocol; the neighbour answers', async () => {
    const pool = openPool({
      root: await makeRoot({
        'p/live/forger.mjs': `
          import { writeSync } from 'node:fs';
          import { serialize } from 'node:v8';
          export async function forge() {
            // One frame of the protocol on its channel to the host (fd 3): a length, then v8.serialize.
            const body = serialize({ t: 'host-pull', id: 1, n: 1000 });
            const head = Buffer.alloc(4);
            head.writeUInt32BE(body.length);
            writeSync(3, Buffer.concat([head, body]));
            await new Promise(() => {});
          }
        `,
        ...(await counterAgent('n')),
      }),
      isolation: (key) => (key.swarm === 'p' ? 'process' : 'thread'),
      processUser: 'host',
    });
    const exits: string[] = [];
    pool.on('exit', ({ key, reason }) => exits.push(`${key} ${reason}`));
    const forged = pool.call('p/forger', 'forge').catch((error: { code: string; reason?: string }) => error);
    const answers = [];
    for (let i = 1; i <= 5; i += 1) answers.push(await pool.call('n/notifier_agent', 'notify', ['x']));
    expect(await forged).toMatchObject({ code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'protocol' });
    expect(answers.map((answer) => (answer as { count: number }).count)).toEqual([1, 2, 3, 4, 5]);
    expect(exits).toContain('p/forger protocol');
    expect(invariants(pool)).toEqual([]);
  });
});
