import type { HostContext } from 'sandpool';
import { describe, expect, it } from 'vitest';
import { code, rejection, thrownSync } from './support/errors.js';
import { eventually, installCleanup, invariants, NO_DEATHS, openPool, recordEvents } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();

const AGENT = `
export async function lookup(id) {
  return await sandpool.host.lookupUser(id);
}
export async function attempt(name, ...args) {
  try {
    return { ok: true, value: await sandpool.host[name](...args) };
  } catch (error) {
    return { ok: false, name: error.name, message: error.message, code: error.code };
  }
}
export async function uncaught(name) {
  return await sandpool.host[name]();
}
export async function burst(n) {
  const settled = await Promise.allSettled(Array.from({ length: n }, () => sandpool.host.hold()));
  return settled.map((outcome) => (outcome.status === 'fulfilled' ? 'ok' : outcome.reason.code));
}
export async function withFunction() {
  return await sandpool.host.take(() => 1).catch((error) => ({ ok: false, code: error.code }));
}
export async function waitHost() {
  return await sandpool.host.waitForAbort();
}
// A host call from the module's top level: no agent call is running.
const atTop = sandpool.host.lookupUser(1).then(() => 'ok', (error) => error.code);
export function topLevel() {
  return atTop;
}
export function strayTimer() {
  return new Promise((resolve) => {
    setTimeout(() => sandpool.host.lookupUser(1).then(() => resolve('ok'), (error) => resolve(error.code)), 20);
  });
}
export function leaveTimer() {
  globalThis.stray = new Promise((resolve) => {
    setTimeout(() => sandpool.host.lookupUser(1).then(() => resolve('ok'), (error) => resolve(error.code)), 50);
  });
  return 'left';
}
export function stray() {
  return globalThis.stray;
}
`;

const KEY = 'h/caps';
const NEIGHBOUR = 'n/notifier_agent';

async function root(): Promise<string> {
  return makeRoot({ 'h/live/caps.mjs': AGENT, 'h/snapshots/.keep': '', ...(await counterAgent('n')) });
}

class Coded extends Error {
  constructor(
    message: string,
    readonly code: string | number,
  ) {
    super(message);
  }
}

describe('host capabilities', () => {
  it('run on the host with the calling key and a live signal; their result is copied back', async () => {
    const seen: HostContext[] = [];
    const pool = openPool({
      root: await root(),
      host: {
        lookupUser: (ctx: HostContext, id: number) => {
          seen.push(ctx);
          return { id, name: `user-${id}`, aborted: ctx.signal.aborted, tags: new Set(['a']) };
        },
      },
    });
    expect(await pool.call(KEY, 'lookup', [42])).toEqual({
      id: 42,
      name: 'user-42',
      aborted: false,
      tags: new Set(['a']),
    });
    const ctx = seen.at(-1);
    expect(ctx).toMatchObject({ key: KEY, swarm: 'h', snapshot: null, stem: 'caps' });
    // The call has settled: the capability's signal says so.
    expect(ctx?.signal.aborted).toBe(true);
    expect(Object.isFrozen(ctx)).toBe(true);
    expect(invariants(pool)).toEqual([]);
  });

  it('a per-key function is called once per spawn; a throw rejects that key with INVALID_OPTIONS only', async () => {
    const asked: string[] = [];
    const pool = openPool({
      root: await makeRoot({ 'a/live/caps.mjs': AGENT, 'b/live/caps.mjs': AGENT, ...(await counterAgent('n')) }),
      host: (key) => {
        asked.push(key.swarm);
        if (key.swarm === 'b') throw new Error('no capabilities for b');
        return { lookupUser: (ctx: HostContext) => `${ctx.swarm} only` };
      },
    });
    expect(await pool.call('a/caps', 'lookup', [1])).toBe('a only');
    expect(await pool.call('a/caps', 'lookup', [2])).toBe('a only');
    expect(await code(pool.call('b/caps', 'lookup', [1]))).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
    expect(await pool.call(NEIGHBOUR, 'add', [2, 3])).toBe(5);
    expect(asked).toEqual(['a', 'b', 'n']);
    expect(invariants(pool)).toEqual([]);
  });

  it('an undeclared name, and every name an object inherits, is ERR_SANDPOOL_HOST_NOT_FOUND in the agent', async () => {
    const pool = openPool({ root: await root(), host: { lookupUser: () => 'found' } });
    const { events } = recordEvents(pool);
    for (const name of [
      'nope',
      '__proto__',
      'constructor',
      'toString',
      'hasOwnProperty',
      'valueOf',
      '__defineGetter__',
    ]) {
      const answer = await pool.call<{ ok: boolean; code?: string; message?: string }>(KEY, 'attempt', [name]);
      expect(answer, name).toMatchObject({ ok: false, code: 'ERR_SANDPOOL_HOST_NOT_FOUND' });
      expect(answer.message).toContain('lookupUser');
    }
    expect(await pool.call(NEIGHBOUR, 'add', [1, 1])).toBe(2);
    // Not caught by the agent: an agent error whose cause keeps the code.
    const error = await rejection(pool.call(KEY, 'uncaught', ['missing']));
    expect(error.code).toBe('ERR_SANDPOOL_AGENT_ERROR');
    expect((error.cause as { code?: string }).code).toBe('ERR_SANDPOOL_HOST_NOT_FOUND');
    expect(await pool.call(KEY, 'attempt', ['lookupUser'])).toEqual({ ok: true, value: 'found' });
    expect(events.filter((event) => event.type === 'exit')).toEqual([]);
    expect(invariants(pool)).toEqual([]);
  });

  it("a capability's error reaches the agent as a thrown error with its code, without the host's stack", async () => {
    const pool = openPool({
      root: await root(),
      host: {
        denied: () => {
          throw new Coded('not allowed', 'E_DENIED');
        },
        later: async () => {
          throw new Coded('try later', 503);
        },
      },
    });
    expect(await pool.call(KEY, 'attempt', ['denied'])).toEqual({
      ok: false,
      name: 'Error',
      message: 'not allowed',
      code: 'E_DENIED',
    });
    expect(await pool.call(KEY, 'attempt', ['later'])).toMatchObject({ ok: false, message: 'try later', code: 503 });
    const error = await rejection(pool.call(KEY, 'uncaught', ['denied']));
    expect(error.code).toBe('ERR_SANDPOOL_AGENT_ERROR');
    expect((error.cause as { code?: string }).code).toBe('E_DENIED');
    expect((error.cause as Error).stack ?? '').not.toContain('host-capabilities.test');
    expect(invariants(pool)).toEqual([]);
  });

  it('arguments past the size bound are refused in the agent, before the host decodes anything', async () => {
    let called = 0;
    const pool = openPool({
      root: await root(),
      host: {
        take: (_ctx: HostContext, text: string) => {
          called += 1;
          return text.length;
        },
      },
    });
    expect(await pool.call(KEY, 'attempt', ['take', 'x'.repeat(1000)])).toEqual({ ok: true, value: 1000 });
    const refused = await pool.call(KEY, 'attempt', ['take', 'x'.repeat(2 * 1024 * 1024)]);
    expect(refused).toMatchObject({ ok: false, code: 'ERR_SANDPOOL_DATA_CLONE' });
    expect(await pool.call(KEY, 'withFunction')).toMatchObject({ ok: false, code: 'ERR_SANDPOOL_DATA_CLONE' });
    expect(called).toBe(1);
    expect(await pool.call(NEIGHBOUR, 'add', [2, 2])).toBe(4);
    expect(invariants(pool)).toEqual([]);
  });

  it('host calls in flight per key are bounded: the excess is refused in the agent', async () => {
    let running = 0;
    let peak = 0;
    const release: Array<() => void> = [];
    const pool = openPool({
      root: await root(),
      host: {
        hold: () =>
          new Promise<void>((resolve) => {
            running += 1;
            peak = Math.max(peak, running);
            release.push(() => {
              running -= 1;
              resolve();
            });
          }),
      },
    });
    const burst = pool.call<string[]>(KEY, 'burst', [100]);
    await eventually(() => running === 64);
    // The host is busy with this key's capabilities; another key still answers.
    expect(await pool.call(NEIGHBOUR, 'add', [1, 2])).toBe(3);
    for (const done of release.splice(0)) done();
    const outcomes = await burst;
    expect(outcomes.filter((outcome) => outcome === 'ok')).toHaveLength(64);
    expect(outcomes.filter((outcome) => outcome === 'ERR_SANDPOOL_QUEUE_FULL')).toHaveLength(36);
    expect(peak).toBe(64);
    expect(invariants(pool)).toEqual([]);
  });

  it("a capability's ctx.signal fires when the agent call times out, and the agent is answered at once", async () => {
    const reasons: unknown[] = [];
    const pool = openPool({
      root: await root(),
      // The agent settles as soon as it hears; the longest grace lets a loaded machine carry that back.
      abortGraceMs: 1_000,
      host: {
        // Ignores its signal on purpose: the agent must not wait for it.
        waitForAbort: (ctx: HostContext) =>
          new Promise(() => {
            ctx.signal.addEventListener('abort', () => reasons.push(ctx.signal.reason));
          }),
      },
    });
    expect(await code(pool.call(KEY, 'waitHost', [], { timeoutMs: 150 }))).toBe('ERR_SANDPOOL_TIMEOUT');
    await eventually(() => reasons.length === 1);
    expect(reasons[0]).toMatchObject({ code: 'ERR_SANDPOOL_TIMEOUT' });
    // The worker was not killed: its call saw the host call rejected and settled within its grace.
    expect(
      await pool.call(KEY, 'attempt', ['waitForAbort'], { timeoutMs: 100 }).catch((e: { code: string }) => e.code),
    ).toBe('ERR_SANDPOOL_TIMEOUT');
    expect(pool.stats()).toMatchObject({ workers: 1, died: NO_DEATHS });
    expect(invariants(pool)).toEqual([]);
  });

  it('a host call made outside a running call (top level, a timer outliving its call) is refused', async () => {
    let called = 0;
    const pool = openPool({
      root: await root(),
      host: {
        lookupUser: () => {
          called += 1;
          return 'ok';
        },
      },
    });
    expect(await pool.call(KEY, 'topLevel')).toBe('ERR_SANDPOOL_ABORTED');
    // A timer set inside a running call still belongs to it.
    expect(await pool.call(KEY, 'strayTimer')).toBe('ok');
    expect(await pool.call(KEY, 'leaveTimer')).toBe('left');
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(await pool.call(KEY, 'stray')).toBe('ERR_SANDPOOL_ABORTED');
    expect(called).toBe(1);
    expect(invariants(pool)).toEqual([]);
  });

  it('a bad host option is refused at createPool', async () => {
    const root_ = await root();
    expect(thrownSync(() => openPool({ root: root_, host: { x: 1 } as never }))).toEqual({
      code: 'ERR_SANDPOOL_INVALID_OPTIONS',
      paths: ['host'],
    });
  });
});
