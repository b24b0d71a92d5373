import { chmod } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { code, rejection } from './support/errors.js';
import { eventually, installCleanup, invariants, openPool, recordEvents } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();

const AGENT = `
const state = { produced: 0, finallyRan: 0, aborted: null, reason: null };
export function observed() {
  return state;
}
export async function* numbers(n) {
  try {
    for (let i = 0; i < n; i++) {
      state.produced += 1;
      yield { i, produced: state.produced };
    }
  } finally {
    state.finallyRan += 1;
    state.aborted = sandpool.signal.aborted;
  }
}
export async function* failing() {
  yield 1;
  yield 2;
  const error = new Error('broke mid-stream');
  error.code = 'E_MID';
  throw error;
}
export async function* dying() {
  yield 'last words';
  await new Promise((resolve) => setTimeout(resolve, 20));
  process.exit(3);
}
export async function* stalls() {
  yield 'first';
  const { signal } = sandpool;
  await new Promise((resolve) => signal.addEventListener('abort', resolve));
  state.reason = signal.reason.name;
}
export function readable() {
  let i = 0;
  return new ReadableStream({
    pull(controller) {
      if (i === 3) controller.close();
      else controller.enqueue(\`r\${i++}\`);
    },
  });
}
export function plain() {
  return [1, 2];
}
export function nothing() {
  return undefined;
}
export async function later() {
  await new Promise((resolve) => setTimeout(resolve, 5));
  return { late: true };
}
`;

const KEY = 's/gen';
const NEIGHBOUR = 'n/notifier_agent';

async function root(): Promise<string> {
  return makeRoot({ 's/live/gen.mjs': AGENT, ...(await counterAgent('n')) });
}

interface State {
  produced: number;
  finallyRan: number;
  aborted: boolean | null;
  reason: string | null;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A child process's agent can reach its channel (see the worker entry): it forges chunks for
 * its own stream, past the credit the consumer gave, as frames on fd 3 (a length, then
 * v8.serialize). The stream's id is the call's: the first a worker takes is its slot 1.
 */
const FLOODER = `
import { writeSync } from 'node:fs';
import { serialize } from 'node:v8';
function forge(message) {
  const body = serialize(message);
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  writeSync(3, Buffer.concat([head, body]));
}
export async function* flood(n) {
  for (let i = 0; i < n; i++) forge({ t: 'chunk', id: 1, value: i, bytes: null });
  yield 'honest';
}
`;

describe('pool.stream()', () => {
  it('pauses the generator when the consumer is slow: it never runs more than highWaterMark ahead', async () => {
    const pool = openPool({ root: await root() });
    const highWaterMark = 4;
    const stream = pool.stream<{ i: number; produced: number }>(KEY, 'numbers', [50], { highWaterMark });
    let consumed = 0;
    const seen: number[] = [];
    for await (const chunk of stream) {
      consumed += 1;
      seen.push(chunk.i);
      expect(chunk.produced).toBeLessThanOrEqual(consumed + highWaterMark);
      if (consumed === 1 || consumed === 20) {
        // Given all the time it wants, the generator fills the window and stops there.
        let produced = 0;
        for (const deadline = performance.now() + 15_000; performance.now() < deadline; await sleep(10)) {
          ({ produced } = await pool.call<State>(KEY, 'observed'));
          if (produced >= consumed + highWaterMark) break;
        }
        expect(produced).toBe(consumed + highWaterMark);
        // A stream holds its worker busy: not idle, so not evictable.
        expect(pool.stats()).toMatchObject({ busy: 1, idle: 0 });
      }
    }
    expect(seen).toEqual(Array.from({ length: 50 }, (_, i) => i));
    expect(await pool.call(KEY, 'observed')).toMatchObject({ produced: 50, finallyRan: 1, aborted: false });
    await eventually(() => pool.stats().busy === 0);
    expect(invariants(pool)).toEqual([]);
  });

  it('break ends the generator in the worker: its finally runs and its signal fires; the worker stays', async () => {
    const pool = openPool({ root: await root() });
    const { events } = recordEvents(pool);
    for await (const chunk of pool.stream<{ i: number }>(KEY, 'numbers', [1_000_000])) {
      if (chunk.i === 3) break;
    }
    await eventually(() => pool.stats().busy === 0);
    const state = await pool.call<State>(KEY, 'observed');
    expect(state).toMatchObject({ finallyRan: 1, aborted: true });
    expect(state.produced).toBeLessThanOrEqual(4 + 16);
    expect(await pool.call(NEIGHBOUR, 'add', [1, 2])).toBe(3);
    expect(events.filter((event) => event.type === 'exit')).toEqual([]);
    expect(invariants(pool)).toEqual([]);
  });

  it('an error mid-stream rejects the iterator after the chunks before it, with the call codes', async () => {
    const pool = openPool({ root: await root() });
    const got: unknown[] = [];
    const error = await rejection(
      (async () => {
        for await (const chunk of pool.stream(KEY, 'failing')) got.push(chunk);
      })(),
    );
    expect(got).toEqual([1, 2]);
    expect(error.code).toBe('ERR_SANDPOOL_AGENT_ERROR');
    expect(error.cause).toMatchObject({ message: 'broke mid-stream', code: 'E_MID' });
    expect(invariants(pool)).toEqual([]);
  });

  it('a worker that dies mid-stream rejects it with WORKER_EXITED and its reason; a neighbour is untouched', async () => {
    const pool = openPool({ root: await root() });
    const got: unknown[] = [];
    const error = await rejection(
      (async () => {
        for await (const chunk of pool.stream(KEY, 'dying')) got.push(chunk);
      })(),
    );
    expect(got).toEqual(['last words']);
    expect(error).toMatchObject({ code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'exit' });
    expect(await pool.call(NEIGHBOUR, 'add', [2, 2])).toBe(4);
    expect(invariants(pool)).toEqual([]);
  });

  it('chunkTimeoutMs bounds the wait for a chunk: TIMEOUT, and the agent sees a TimeoutError', async () => {
    const pool = openPool({ root: await root() });
    // Warm first: the first next() would also wait for the worker's start.
    expect(await pool.call(KEY, 'observed')).toMatchObject({ produced: 0 });
    const stream = pool.stream(KEY, 'stalls', [], { chunkTimeoutMs: 1_000 });
    expect(await stream.next()).toEqual({ done: false, value: 'first' });
    const started = performance.now();
    expect(await code(stream.next())).toBe('ERR_SANDPOOL_TIMEOUT');
    expect(performance.now() - started).toBeGreaterThanOrEqual(990);
    await eventually(() => pool.stats().busy === 0);
    expect(await pool.call(KEY, 'observed')).toMatchObject({ reason: 'TimeoutError' });
    expect(await stream.next()).toEqual({ done: true, value: undefined });
    expect(invariants(pool)).toEqual([]);
  });

  it('timeoutMs bounds the whole stream, and an abort signal rejects it with ABORTED', async () => {
    const pool = openPool({ root: await root() });
    const timed = pool.stream(KEY, 'numbers', [1_000_000], { timeoutMs: 150, highWaterMark: 1 });
    const error = await rejection(
      (async () => {
        for await (const _ of timed) await sleep(10);
      })(),
    );
    expect(error.code).toBe('ERR_SANDPOOL_TIMEOUT');
    const controller = new AbortController();
    const aborted = pool.stream(KEY, 'stalls', [], { signal: controller.signal });
    expect(await aborted.next()).toMatchObject({ value: 'first' });
    const waiting = aborted.next();
    controller.abort();
    expect(await code(waiting)).toBe('ERR_SANDPOOL_ABORTED');
    await eventually(() => pool.stats().busy === 0);
    expect(invariants(pool)).toEqual([]);
  });

  it('a worker that sends more chunks than its credit is ended with protocol; a neighbour is untouched', async () => {
    const dir = await makeRoot({ 'x/live/flooder.mjs': FLOODER, ...(await counterAgent('n')) });
    await chmod(dir, 0o755); // the child may run under another uid
    const pool = openPool({ root: dir, isolation: (key) => (key.swarm === 'x' ? 'process' : 'thread') });
    const { events } = recordEvents(pool);
    const stream = pool.stream('x/flooder', 'flood', [10], { highWaterMark: 2 });
    expect(await stream.next()).toEqual({ done: false, value: 0 });
    // Nothing more is taken: the window holds two more chunks, and the fourth breaks the credit.
    await eventually(() => events.some((event) => event.type === 'exit' && event.reason === 'protocol'));
    expect(events).toContainEqual(expect.objectContaining({ type: 'exit', key: 'x/flooder', reason: 'protocol' }));
    expect(await stream.next()).toEqual({ done: false, value: 1 });
    expect(await stream.next()).toEqual({ done: false, value: 2 });
    expect(await rejection(stream.next())).toMatchObject({ code: 'ERR_SANDPOOL_WORKER_EXITED', reason: 'protocol' });
    expect(await pool.call(NEIGHBOUR, 'add', [2, 2])).toBe(4);
    expect(invariants(pool)).toEqual([]);
  });

  it('streams a ReadableStream; yields a plain value (an array, undefined, an async result) once', async () => {
    const pool = openPool({ root: await root() });
    const collect = async (fn: string): Promise<unknown[]> => {
      const out: unknown[] = [];
      for await (const chunk of pool.stream(KEY, fn)) out.push(chunk);
      return out;
    };
    expect(await collect('readable')).toEqual(['r0', 'r1', 'r2']);
    expect(await collect('plain')).toEqual([[1, 2]]);
    expect(await collect('nothing')).toEqual([undefined]);
    expect(await collect('later')).toEqual([{ late: true }]);
    expect(invariants(pool)).toEqual([]);
  });

  it('call() on a streaming function rejects with DATA_CLONE naming stream(); errors surface on next(), never at once', async () => {
    const pool = openPool({ root: await root() });
    const error = await rejection(pool.call(KEY, 'numbers', [3]));
    expect(error.code).toBe('ERR_SANDPOOL_DATA_CLONE');
    expect(error.message).toContain('pool.stream()');
    // The generator was never started, and the worker goes on.
    expect(await pool.call(KEY, 'observed')).toMatchObject({ produced: 0 });
    const bad = pool.stream('not a key', 'f');
    expect(await code(bad.next())).toBe('ERR_SANDPOOL_INVALID_KEY');
    const badOptions = pool.stream(KEY, 'plain', [], { highWaterMark: 0 });
    expect(await code(badOptions.next())).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
    expect(await code(pool.stream(KEY, 'missing').next())).toBe('ERR_SANDPOOL_EXPORT_NOT_FOUND');
    expect(invariants(pool)).toEqual([]);
  });
});
