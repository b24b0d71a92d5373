import { AsyncLocalStorage } from 'node:async_hooks';
import type { HostContext } from 'sandpool';
import { describe, expect, it } from 'vitest';
import { rejection } from './support/errors.js';
import { installCleanup, invariants, openPool } from './support/pool.js';
import { makeRoot } from './support/root.js';

installCleanup();

const AGENT = `
export async function ask(question, times = 1) {
  const answers = [];
  for (let i = 0; i < times; i += 1) answers.push(await sandpool.host.tool(question));
  return answers;
}
export async function* tokens(question) {
  yield await sandpool.host.tool(question);
}
`;

/** What a tool saw of the request that called it. */
interface Seen {
  question: string;
  store: string | undefined;
  context: unknown;
}

const wait = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('call context', () => {
  it('each capability runs in the async context of the code that made the call, under concurrency', async () => {
    const conversation = new AsyncLocalStorage<string>();
    const pool = openPool({
      root: await makeRoot({ 'c/live/chat.mjs': AGENT }),
      host: {
        // Waits before reading, so the three calls' tool calls interleave on the host.
        tool: async (_ctx: HostContext, question: string): Promise<Seen> => {
          await wait(5);
          return { question, store: conversation.getStore(), context: undefined };
        },
      },
    });
    const converse = (id: string): Promise<Seen[]> =>
      conversation.run(id, () => pool.call<Seen[]>('c/chat', 'ask', [id, 3]));
    // The first three share the worker's start (the first one starts it); the next three find it warm.
    for (const round of [
      ['conv-1', 'conv-2', 'conv-3'],
      ['conv-4', 'conv-5', 'conv-6'],
    ]) {
      const answers = await Promise.all(round.map(converse));
      for (const [index, seen] of answers.entries()) {
        expect(seen).toEqual(Array(3).fill({ question: round[index], store: round[index], context: undefined }));
      }
    }
    expect(invariants(pool)).toEqual([]);
  });

  it("gives capabilities the caller's context as a copy made at the call, through call, remote and stream", async () => {
    const contexts: unknown[] = [];
    const pool = openPool({
      root: await makeRoot({ 'c/live/chat.mjs': AGENT }),
      host: {
        tool: (ctx: HostContext, question: string): string => {
          contexts.push(structuredClone(ctx.context));
          // A capability changing its copy changes nothing the next host call sees.
          if (typeof ctx.context === 'object' && ctx.context !== null)
            (ctx.context as { user: string }).user = 'mallory';
          return question;
        },
      },
    });
    const context = { user: 'ada', conversation: 7, at: new Date(0), tags: new Map([['plan', 'pro']]) };
    // The call waits for its worker's start; the caller changes its object meanwhile.
    const pending = pool.call('c/chat', 'ask', ['q', 2], { context });
    context.user = 'eve';
    expect(await pending).toEqual(['q', 'q']);
    const original = { user: 'ada', conversation: 7, at: new Date(0), tags: new Map([['plan', 'pro']]) };
    expect(contexts).toEqual([original, original]);

    contexts.length = 0;
    const agent = pool.remote<{ ask(question: string): string[] }>('c/chat', { context: 'remote-ctx' });
    await agent.ask('r');
    const streamed: unknown[] = [];
    for await (const token of pool.stream('c/chat', 'tokens', ['s'], { context: ['stream-ctx'] })) streamed.push(token);
    await pool.call('c/chat', 'ask', ['none']);
    expect(streamed).toEqual(['s']);
    expect(contexts).toEqual(['remote-ctx', ['stream-ctx'], undefined]);
  });

  it('refuses a context past 64 KB or that cannot be cloned, at the call, before anything starts', async () => {
    const pool = openPool({
      root: await makeRoot({ 'c/live/chat.mjs': AGENT }),
      host: { tool: () => 'x' },
    });
    const large = await rejection(pool.call('c/chat', 'ask', ['q'], { context: { text: 'x'.repeat(70_000) } }));
    expect(large.code).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
    expect(large.issues?.map((issue) => issue.path.join('.'))).toEqual(['context']);
    // A sparse array serializes to a few bytes, but every slot would be walked.
    const sparse = await rejection(pool.call('c/chat', 'ask', ['q'], { context: new Array(2 ** 32 - 1) }));
    expect(sparse.code).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
    for (const context of [{ fn: () => 1 }, new SharedArrayBuffer(8), { sym: Symbol('x') }]) {
      expect((await rejection(pool.call('c/chat', 'ask', ['q'], { context }))).code).toBe('ERR_SANDPOOL_DATA_CLONE');
    }
    const streamed = pool.stream('c/chat', 'tokens', ['q'], { context: () => 1 });
    expect((await rejection(streamed.next())).code).toBe('ERR_SANDPOOL_DATA_CLONE');
    expect(pool.stats().spawned).toBe(0);
    expect(await pool.call('c/chat', 'ask', ['ok'], { context: 'x'.repeat(60_000) })).toEqual(['x']);
  });
});
