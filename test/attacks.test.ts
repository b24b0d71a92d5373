import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { inspect } from 'node:util';
import { serialize } from 'node:v8';
import type { Pool, PoolStats } from 'sandpool';
import { describe, expect, it, onTestFinished } from 'vitest';
import { ERROR_CODES } from '../packages/sandpool/dist/errors.js';
import { hostCallsFor } from '../packages/sandpool/dist/host/capabilities/capabilities.js';
import { KeyQuota } from '../packages/sandpool/dist/host/capabilities/quotas.js';
import { resolveKey } from '../packages/sandpool/dist/key.js';
import { rejection } from './support/errors.js';
import { eventually, installCleanup, invariants, NO_DEATHS, openPool, rssGrowth } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();

const NEIGHBOUR = 'n/notifier_agent';
const HOSTILE = 'x/hostile';
const MB = 2 ** 20;

/** Every attack an agent can mount on the host through what it returns, throws or prints. */
const HOSTILE_AGENT = `
  export function ping() { return 'pong'; }
  export function sparse() { const a = []; a.length = 2 ** 32 - 1; a[7] = 'seven'; return a; }
  export function forged(code) { const e = new Error('forged'); e.code = code; throw e; }
  export function junk() { const e = new Error('junk'); e.code = 'J'.repeat(2 ** 20); throw e; }
  export function deep(depth) { let v = { leaf: true }; for (let i = 0; i < depth; i++) v = { a: v }; return v; }
  export function shared(mb, times) { const s = 'x'.repeat(mb * 2 ** 20); return new Array(times).fill(s); }
  export function print(text) { process.stdout.write(text); return true; }
  export function bigString(mb) { return 'z'.repeat(mb * 2 ** 20); }
  export async function* bigChunk(mb) { yield 'small'; yield 'c'.repeat(mb * 2 ** 20); }
  export async function forgeHostArgs() {
    // The runtime serializes host-call arguments with node:v8's serialize; an agent can swap it.
    const v8 = (await import('node:v8')).default;
    const { syncBuiltinESMExports } = await import('node:module');
    const original = v8.serialize;
    v8.serialize = () => { const sparse = []; sparse.length = 2 ** 32 - 1; return original([sparse]); };
    syncBuiltinESMExports();
    return sandpool.host.count(1);
  }
  export async function forgeResult() {
    // As forgeHostArgs: the bytes of a result are whatever serialize answers.
    const v8 = (await import('node:v8')).default;
    const { syncBuiltinESMExports } = await import('node:module');
    const original = v8.serialize;
    v8.serialize = () => { const sparse = []; sparse.length = 2 ** 32 - 1; return original(sparse); };
    syncBuiltinESMExports();
    return { honest: true };
  }
  export async function hostFlood(ms) {
    const big = 'h'.repeat(2 ** 20 - 64);
    const until = Date.now() + ms;
    let made = 0;
    const worker = async () => { while (Date.now() < until) { await sandpool.host.count(big); made += 1; } };
    await Promise.all(Array.from({ length: 64 }, worker));
    return made;
  }
  export async function flood(mb) {
    const chunk = 'y'.repeat(2 ** 20 - 1) + '\\n';
    for (let i = 0; i < mb; i++) {
      process.stdout.write(chunk);
      // Let acknowledgements in, as a real printing loop would between its awaits.
      if (i % 8 === 0) await new Promise((resolve) => setImmediate(resolve));
    }
    return mb;
  }
`;

async function hostileRoot(): Promise<string> {
  return makeRoot({ ...(await counterAgent('n')), 'x/live/hostile.mjs': HOSTILE_AGENT });
}

/**
 * Runs `attack` while a second key is called in a loop, every answer checked. The neighbour
 * must answer during the attack, never wrongly, and never fall silent for long (a frozen
 * main thread would stop it for minutes, not seconds).
 */
async function withNeighbour<T>(pool: Pool, attack: () => Promise<T>): Promise<T> {
  expect(await pool.call(NEIGHBOUR, 'add', [0, 1])).toBe(1);
  let stop = false;
  let answered = 0;
  let longestGap = 0;
  const wrong: unknown[] = [];
  const loop = (async () => {
    let last = performance.now();
    for (let i = 0; !stop; i++) {
      try {
        const value = await pool.call(NEIGHBOUR, 'add', [i, 1]);
        if (value === i + 1) answered += 1;
        else wrong.push(value);
      } catch (error) {
        wrong.push(error);
      }
      const now = performance.now();
      longestGap = Math.max(longestGap, now - last);
      last = now;
    }
  })();
  let result: T;
  try {
    result = await attack();
    // At least one answer strictly after the attack settled, so a frozen loop cannot pass.
    const atEnd = answered;
    await eventually(() => answered > atEnd, 10_000);
  } finally {
    stop = true;
    await loop;
  }
  expect(wrong).toEqual([]);
  expect(answered).toBeGreaterThan(0);
  expect(longestGap).toBeLessThan(5_000);
  return result;
}

/** The books balance, the host still serves both keys, and the counters say what happened. */
async function sane(pool: Pool, expected: Partial<PoolStats>): Promise<void> {
  expect(invariants(pool)).toEqual([]);
  expect(await pool.call(NEIGHBOUR, 'add', [2, 2])).toBe(4);
  expect(await pool.call(HOSTILE, 'ping')).toBe('pong');
  expect(invariants(pool)).toEqual([]);
  expect(pool.stats()).toMatchObject({ busy: 0, queued: 0, workers: 2, spares: 0, ...expected });
}

describe('attacks, each with a neighbour key answering throughout', () => {
  it('a sparse array of length 2**32-1 is refused in the worker: its slots count, and nothing walks them', async () => {
    const pool = openPool({ root: await hostileRoot() });
    const error = await withNeighbour(pool, () => rejection(pool.call(HOSTILE, 'sparse')));
    expect(error).toMatchObject({ code: 'ERR_SANDPOOL_DATA_CLONE' });
    await sane(pool, { died: NO_DEATHS, spawned: 2 });
  });

  it('a 300 MB string result or chunk is refused in the worker, past the 256 MB result limit', async () => {
    const pool = openPool({ root: await hostileRoot(), resourceLimits: { maxOldGenerationSizeMb: 1024 } });
    const { value, growth } = await rssGrowth(() =>
      withNeighbour(pool, async () => {
        const result = await rejection(pool.call(HOSTILE, 'bigString', [300]));
        const chunks: unknown[] = [];
        const streamed = await (async () => {
          for await (const chunk of pool.stream(HOSTILE, 'bigChunk', [300])) chunks.push(chunk);
        })().catch((error: unknown) => error);
        return { result, streamed, chunks };
      }),
    );
    expect(value.result).toMatchObject({ code: 'ERR_SANDPOOL_DATA_CLONE' });
    expect(value.streamed).toMatchObject({ code: 'ERR_SANDPOOL_DATA_CLONE' });
    expect(value.chunks).toEqual(['small']);
    // The strings stayed in the worker: the host never held one.
    expect(growth).toBeLessThan(200 * MB);
    expect(await pool.call(HOSTILE, 'bigString', [1])).toHaveLength(MB);
    await sane(pool, { died: NO_DEATHS, spawned: 2 });
  });

  it('host-call arguments cannot be forged by swapping node:v8 serialize: the capability gets what was passed', async () => {
    const seen: unknown[] = [];
    const pool = openPool({ root: await hostileRoot(), host: { count: (_ctx, n: unknown) => seen.push(n) } });
    expect(await withNeighbour(pool, () => pool.call(HOSTILE, 'forgeHostArgs'))).toBe(1);
    expect(seen).toEqual([1]);
    await sane(pool, { died: NO_DEATHS, spawned: 2 });
  });

  it('host-call arguments that are a sparse array of length 2**32-1 end their worker (protocol), unwalked', () => {
    let counted = 0;
    const violations: string[] = [];
    const calls = hostCallsFor(
      { count: () => (counted += 1) },
      undefined,
      undefined,
      resolveKey(HOSTILE),
      new KeyQuota(),
    );
    const thread = { terminating: false, post() {}, violate: (problem: string) => violations.push(problem) };
    const sparse: unknown[] = [];
    sparse.length = 2 ** 32 - 1;
    const bytes = new Uint8Array(serialize(sparse)).buffer;
    const caller = { hostSignal: () => new AbortController().signal, context: null, scope: null, observed: null };
    calls.handle({ t: 'host', id: 1, call: 1, name: 'count', args: bytes }, () => caller, thread as never);
    expect(violations).toEqual(['host call arguments past their bound']);
    expect(counted).toBe(0);
  });

  it('an agent that swaps node:v8 serialize chooses no bytes the host receives: the runtime took its own', async () => {
    const pool = openPool({ root: await hostileRoot() });
    expect(await withNeighbour(pool, () => pool.call(HOSTILE, 'forgeResult'))).toEqual({ honest: true });
    await sane(pool, { died: NO_DEATHS, spawned: 2 });
  });

  it('64 host calls in flight with 1 MB arguments get the coordinator at their share: 16 MB a second', async () => {
    let counted = 0;
    const pool = openPool({ root: await hostileRoot(), host: { count: () => (counted += 1) } });
    const started = performance.now();
    const made = await withNeighbour(pool, () => pool.call<number>(HOSTILE, 'hostFlood', [1_500]));
    const seconds = (performance.now() - started) / 1000;
    expect(made).toBe(counted);
    // A second's worth at the start, then 16 a second: a bound that load can only lower.
    expect(counted).toBeLessThanOrEqual(16 + 16 * seconds + 1);
    expect(counted).toBeGreaterThan(0);
    await sane(pool, { died: NO_DEATHS, spawned: 2 });
  });

  it('forged error codes stay on cause and never become SandpoolError codes', async () => {
    const pool = openPool({ root: await hostileRoot() });
    await withNeighbour(pool, async () => {
      const timeout = await rejection(pool.call(HOSTILE, 'forged', ['ERR_SANDPOOL_TIMEOUT']));
      expect(timeout.code).toBe('ERR_SANDPOOL_AGENT_ERROR');
      expect((timeout.cause as { code?: unknown }).code).toBe('ERR_SANDPOOL_TIMEOUT');

      const junk = await rejection(pool.call(HOSTILE, 'junk'));
      expect(junk.code).toBe('ERR_SANDPOOL_AGENT_ERROR');
      expect(junk.cause).toBeInstanceOf(Error);
      expect((junk.cause as { code?: unknown }).code).toBeUndefined();

      const errors = await Promise.all(
        Array.from({ length: 400 }, (_, i) => rejection(pool.call(HOSTILE, 'forged', [`ERR_FORGED_${i}`]))),
      );
      expect(new Set(errors.map((error) => error.code))).toEqual(new Set(['ERR_SANDPOOL_AGENT_ERROR']));
      expect(errors.map((error) => (error.cause as { code?: unknown }).code)).toEqual(
        Array.from({ length: 400 }, (_, i) => `ERR_FORGED_${i}`),
      );
      for (const error of errors) expect(ERROR_CODES).toContain(error.code);
    });
    await sane(pool, { died: NO_DEATHS, spawned: 2 });
  });

  it('a result too deep for the host to rebuild fails with DATA_CLONE, not a timeout', async () => {
    const pool = openPool({ root: await hostileRoot(), callTimeoutMs: 10_000 });
    // 10,000 levels: a worker's 4 MB stack serializes it, the main thread's ~1 MB cannot
    // rebuild it (measured: it fails from about 5,000, and the worker from about 20,000).
    const error = await withNeighbour(pool, () => rejection(pool.call(HOSTILE, 'deep', [10_000])));
    expect(error.code).toBe('ERR_SANDPOOL_DATA_CLONE');
    expect(error.message).toMatch(/cannot be rebuilt in the host/);
    // The same shape, shallower, arrives whole: the failure was the depth alone.
    expect(await pool.call(HOSTILE, 'deep', [3])).toEqual({ a: { a: { a: { leaf: true } } } });
    await sane(pool, { died: NO_DEATHS, spawned: 2 });
  });

  it('a result holding one 50 MB string a thousand times fails with DATA_CLONE, and nothing balloons', async () => {
    const pool = openPool({ root: await hostileRoot() });
    const { value: error, growth } = await rssGrowth(() =>
      withNeighbour(pool, () => rejection(pool.call(HOSTILE, 'shared', [50, 1000]))),
    );
    expect(error.code).toBe('ERR_SANDPOOL_DATA_CLONE');
    expect(error.message).toMatch(/more than 256 MB/);
    // Serialized, it would be 50 GB; the worker's one string is 50 MB.
    expect(growth).toBeLessThan(600 * MB);
    await sane(pool, { died: NO_DEATHS, spawned: 2 });
  });

  it('a 2 GB print flood into a slow onOutput listener: memory bounded, output dropped and counted', async () => {
    let received = 0;
    const pool = openPool({
      root: await hostileRoot(),
      onOutput: (key, _stream, text) => {
        if (key !== HOSTILE) return;
        received += text.length;
        // A listener slower than the agent: 2 ms a line, busy, on the host's thread.
        const until = performance.now() + 2;
        while (performance.now() < until) {}
      },
    });
    const { value: flooded, growth } = await rssGrowth(() =>
      withNeighbour(pool, () => pool.call(HOSTILE, 'flood', [2048])),
    );
    expect(flooded).toBe(2048);
    // The worker reports drops with its next chunk, or when the host acknowledges one: after
    // the call's answer, perhaps.
    await eventually(() => pool.stats().outputDropped > 0);
    const { outputDropped } = pool.stats();
    expect(received).toBeGreaterThan(0);
    // What was dropped and what was heard never exceed what was printed.
    expect(received + outputDropped).toBeLessThanOrEqual(2048 * MB);
    expect(growth).toBeLessThan(600 * MB);
    await sane(pool, { died: NO_DEATHS, spawned: 2 });
  });

  it('a 2 GB print flood into a pipe nobody reads: the default writer drops, the host stays small', async () => {
    const root = await hostileRoot();
    const script = join(root, 'flood-host.mjs');
    const sandpool = pathToFileURL(join(import.meta.dirname, '../packages/sandpool/dist/index.js')).href;
    await writeFile(
      script,
      `
      import { createPool } from ${JSON.stringify(sandpool)};
      const pool = createPool({ root: ${JSON.stringify(root)}, spareWorkers: 0, idleTimeoutMs: 0, loadTimeoutMs: 60_000 });
      const before = process.memoryUsage().rss;
      let peak = before;
      const sampler = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss); }, 5);
      await pool.call('${NEIGHBOUR}', 'add', [0, 1]);
      let stop = false, answered = 0, wrong = 0;
      const loop = (async () => {
        for (let i = 0; !stop; i++) {
          const value = await pool.call('${NEIGHBOUR}', 'add', [i, 1]).catch(() => null);
          if (value === i + 1) answered += 1; else wrong += 1;
        }
      })();
      const flooded = await pool.call('${HOSTILE}', 'flood', [2048]);
      const atEnd = answered;
      while (answered === atEnd) await new Promise((resolve) => setTimeout(resolve, 10));
      stop = true;
      await loop;
      clearInterval(sampler);
      const after = await pool.call('${HOSTILE}', 'ping');
      process.send({ flooded, after, answered, wrong, growth: peak - before, stats: pool.stats() });
      `,
    );
    // stdout is a pipe this test never reads: the child's writes back up behind it.
    const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'], env: {} });
    onTestFinished(() => {
      child.kill('SIGKILL');
    });
    const report = await new Promise<Record<string, unknown>>((resolve, reject) => {
      child.once('message', (message) => resolve(message as Record<string, unknown>));
      child.once('exit', (code) => reject(new Error(`the host process exited (${code}) before reporting`)));
    });
    expect(report).toMatchObject({ flooded: 2048, after: 'pong', wrong: 0, stats: { died: NO_DEATHS, busy: 0 } });
    expect(report.answered).toBeGreaterThan(0);
    expect((report.stats as PoolStats).outputDropped).toBeGreaterThan(0);
    expect(report.growth).toBeLessThan(600 * MB);
  }, 180_000);

  it('CR, escape sequences and line separators cannot forge another key in the labelled output', async () => {
    const pool = openPool({ root: await hostileRoot() });
    const captured: string[] = [];
    const write = process.stdout.write;
    process.stdout.write = ((chunk: unknown, ...rest: unknown[]) => {
      if (typeof chunk === 'string' && chunk.startsWith(`[${HOSTILE}]`)) {
        captured.push(chunk);
        return true;
      }
      return (write as (...args: unknown[]) => boolean).call(process.stdout, chunk, ...rest);
    }) as typeof process.stdout.write;
    onTestFinished(() => {
      process.stdout.write = write;
    });
    const forgeries = [
      `benign\r[${NEIGHBOUR}] forged by CR`,
      `\x1b[2K\x1b[1G[${NEIGHBOUR}] forged by erase-line`,
      `\x1b[1A\x1b[2K[${NEIGHBOUR}] forged by cursor-up`,
      `\x1b]0;title\x07\x9b2K[${NEIGHBOUR}] forged by OSC and C1 CSI`,
      `x\u2028[${NEIGHBOUR}] forged by line separator`,
      `x\u0085[${NEIGHBOUR}] forged by NEL`,
      `\u202e]tnega_reifiton/n[ forged by bidi override`,
      `abc\b\b\b[${NEIGHBOUR}] forged by backspace`,
    ];
    await withNeighbour(pool, () => pool.call(HOSTILE, 'print', [`${forgeries.join('\n')}\n`]));
    await eventually(() => captured.length >= forgeries.length);
    expect(captured).toHaveLength(forgeries.length);
    for (const line of captured) {
      expect(line.startsWith(`[${HOSTILE}] `)).toBe(true);
      expect(line.endsWith('\n')).toBe(true);
      // Nothing in the line but printable text: no terminal can move the cursor back over the label.
      // biome-ignore lint/suspicious/noControlCharactersInRegex: the point is to find control characters
      expect(line.slice(0, -1)).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/);
    }
    await sane(pool, { died: NO_DEATHS, spawned: 2 });
  });

  it('logging a remote() proxy makes no call and raises no unhandled rejection; awaiting it calls no then', async () => {
    const root = await makeRoot({
      ...(await counterAgent('n')),
      'x/live/hostile.mjs': `${HOSTILE_AGENT}
        let calls = 0;
        const counted = (name) => () => { calls += 1; return name; };
        export const toJSON = counted('toJSON');
        export const toString = counted('toString');
        export const valueOf = counted('valueOf');
        export const inspect = counted('inspect');
        export const constructor = counted('constructor');
        // A named export 'then' would make the module namespace itself thenable: a default does not.
        export default { then: counted('then') };
        export function count() { return calls; }
      `,
    });
    const pool = openPool({ root });
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    onTestFinished(() => {
      process.off('unhandledRejection', onUnhandled);
    });
    const agent = pool.remote<Record<string, () => unknown>>(HOSTILE);
    await withNeighbour(pool, async () => {
      expect(JSON.stringify({ agent })).toBe('{"agent":{}}');
      expect(String(agent)).toMatch(/sandpool remote x\/hostile/);
      expect(`${agent}`).toMatch(/sandpool remote x\/hostile/);
      expect(inspect(agent)).toMatch(/sandpool remote x\/hostile/);
      // biome-ignore lint/style/useTemplate: the + operator's own conversion (valueOf first) is the case
      expect(agent + '').toMatch(/sandpool remote x\/hostile/);
      const awaited = await agent;
      expect(awaited).toBe(agent);
      // Anything a stray call would have done has had time to arrive.
      await new Promise((resolve) => setTimeout(resolve, 200));
    });
    expect(await pool.call(HOSTILE, 'count')).toBe(0);
    expect(unhandled).toEqual([]);
    // The counter does count: a deliberate call through call() is seen.
    expect(await pool.call(HOSTILE, 'toJSON')).toBe('toJSON');
    expect(await pool.call(HOSTILE, 'then')).toBe('then');
    expect(await pool.call(HOSTILE, 'count')).toBe(2);
    expect(await agent.ping?.()).toBe('pong');
    await sane(pool, { died: NO_DEATHS, spawned: 2 });
  });
});
