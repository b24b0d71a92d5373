import { setImmediate as realSetImmediate } from 'node:timers';
import { serialize } from 'node:v8';
import type { SandpoolError } from 'sandpool';
import { describe, expect, it, vi } from 'vitest';
import type { Call } from '../packages/sandpool/dist/host/cells/call.js';
import { Channel, type ChannelOwner } from '../packages/sandpool/dist/host/cells/channel.js';
import type { AgentThread } from '../packages/sandpool/dist/host/workers/thread.js';
import { checkFromWorker } from '../packages/sandpool/dist/protocol/checks.js';
import { LIMITS, type Outcome, type ToWorker } from '../packages/sandpool/dist/protocol/messages.js';

const error = { name: 'Error', message: 'boom' };

function refused(raw: unknown): string {
  const checked = checkFromWorker(raw);
  if (checked.ok) throw new Error(`accepted ${JSON.stringify(raw)?.slice(0, 200)}`);
  return checked.problem;
}

describe('checkFromWorker', () => {
  it('accepts what the runtime sends', () => {
    for (const message of [
      { t: 'ready', tid: 1234 },
      { t: 'done', ok: [1, 'v', 2, null, 3, 4.5, 4, undefined, 5, 10n], err: [6, 'ERR_SANDPOOL_AGENT_ERROR', error] },
      { t: 'done', ok: [], err: [1, 'ERR_SANDPOOL_DATA_CLONE', { ...error, stack: 's', code: 'E_PROP' }] },
      { t: 'done', ok: [], err: [1, 'ERR_SANDPOOL_AGENT_ERROR', { ...error, code: 42 }] },
      { t: 'result', id: 7, bytes: new ArrayBuffer(8) },
      { t: 'out', stream: 'stderr', text: 'x'.repeat(LIMITS.outputChunk), dropped: 0 },
      { t: 'load-failed', code: 'ERR_SANDPOOL_MODULE_LOAD', error },
      Object.assign(Object.create(null), { t: 'ready', tid: 0 }),
    ]) {
      expect(checkFromWorker(message).ok, JSON.stringify(Object.keys(message))).toBe(true);
    }
  });

  it('refuses a sparse ok list of length 2**32-1 without walking it', () => {
    const ok: unknown[] = [];
    ok.length = 2 ** 32 - 1;
    const started = performance.now();
    expect(refused({ t: 'done', ok, err: [] })).toMatch(/ok list/);
    const err: unknown[] = [];
    err.length = 2 ** 32 - 1;
    expect(refused({ t: 'done', ok: [], err })).toMatch(/error list/);
    // A walk over 2**32 slots takes minutes; refusing on the length takes nothing.
    expect(performance.now() - started).toBeLessThan(1_000);
  });

  it('refuses an ok list longer than a batch, or of odd length, or with a bad id', () => {
    expect(refused({ t: 'done', ok: new Array(LIMITS.replyBatch * 2 + 2).fill(1), err: [] })).toMatch(/ok list/);
    expect(refused({ t: 'done', ok: [1], err: [] })).toMatch(/ok list/);
    for (const id of [0, -1, 1.5, '1', Number.NaN, 2 ** 53]) {
      expect(refused({ t: 'done', ok: [id, 'v'], err: [] })).toMatch(/call id/);
    }
  });

  it('refuses a call failure whose code is outside the closed set', () => {
    for (const code of [
      'ERR_SANDPOOL_TIMEOUT',
      'ERR_SANDPOOL_WORKER_EXITED',
      'ERR_SANDPOOL_MODULE_LOAD',
      'E_PROP',
      7,
    ]) {
      expect(refused({ t: 'done', ok: [], err: [1, code, error] })).toMatch(/closed set/);
    }
    expect(refused({ t: 'load-failed', code: 'ERR_SANDPOOL_AGENT_ERROR', error })).toMatch(/closed set/);
  });

  it('refuses a missing or malformed error: null, a string, an Error instance', () => {
    for (const bad of [null, undefined, 'boom', new Error('boom'), { name: 'Error' }, { message: 'm' }]) {
      expect(refused({ t: 'done', ok: [], err: [1, 'ERR_SANDPOOL_AGENT_ERROR', bad] })).toMatch(/call error/);
    }
    expect(refused({ t: 'load-failed', code: 'ERR_SANDPOOL_MODULE_LOAD', error: null })).toMatch(/load error/);
  });

  it('refuses an agent code that is not a short token, and non-finite numbers', () => {
    for (const code of ['x'.repeat(65), 'has space', '', Number.POSITIVE_INFINITY, Number.NaN, {}, true]) {
      expect(refused({ t: 'done', ok: [], err: [1, 'ERR_SANDPOOL_AGENT_ERROR', { ...error, code }] })).toMatch(
        /call error/,
      );
    }
  });

  it('refuses an object value in done.ok: objects travel only as sized bytes', () => {
    for (const value of [{ a: 1 }, [1], new Date(0), () => 1]) {
      expect(refused({ t: 'done', ok: [1, value], err: [] })).toMatch(/object or long string result/);
    }
  });

  it('refuses a message of unknown type', () => {
    for (const t of ['calls', 'load', 'DONE', undefined, 1]) expect(refused({ t })).toMatch(/unknown type/);
  });

  it('refuses oversize error text', () => {
    const long = (n: number) => 'e'.repeat(n + 1);
    for (const bad of [
      { name: long(LIMITS.errorName), message: 'm' },
      { name: 'Error', message: long(LIMITS.errorMessage) },
      { name: 'Error', message: 'm', stack: long(LIMITS.errorStack) },
    ]) {
      expect(refused({ t: 'done', ok: [], err: [1, 'ERR_SANDPOOL_AGENT_ERROR', bad] })).toMatch(/call error/);
    }
  });

  it('refuses an output chunk too large, on an unknown stream, or with a bad drop count', () => {
    const text = 'x'.repeat(LIMITS.outputChunk + 1);
    expect(refused({ t: 'out', stream: 'stdout', text, dropped: 0 })).toMatch(/too large/);
    expect(refused({ t: 'out', stream: 'stdout', text: 1, dropped: 0 })).toMatch(/too large/);
    expect(refused({ t: 'out', stream: 'stdin', text: '', dropped: 0 })).toMatch(/unknown stream/);
    expect(refused({ t: 'out', stream: 'stdout', text: '', dropped: -1 })).toMatch(/dropped/);
  });

  it('refuses a result without its bytes', () => {
    expect(refused({ t: 'result', id: 1, bytes: new Uint8Array(4) })).toMatch(/bytes/);
    expect(refused({ t: 'result', id: 0, bytes: new ArrayBuffer(4) })).toMatch(/call id/);
  });

  it('refuses anything but a plain object', () => {
    class Message {
      t = 'ready';
    }
    for (const raw of [null, undefined, 'ready', 1, [{ t: 'ready' }], new Message(), new Map([['t', 'ready']])]) {
      expect(refused(raw)).toMatch(/plain object/);
    }
  });
});

/** A thread that records what the channel sends and whether it was told the worker broke the protocol. */
function stubThread() {
  const sent: ToWorker[] = [];
  const violations: string[] = [];
  const thread = {
    setReferenced() {},
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

const owner: ChannelOwner = { engaged: () => {}, cancelIgnored: () => {}, drained: () => {}, cpuNs: () => Number.NaN };

/** A call whose settlements are recorded, as the outcome the worker's reply made of it. */
function call(fn = 'f', timeoutMs = 0, settled: Settled[] = []): Call {
  return {
    id: 0,
    fn,
    args: [],
    timeoutMs,
    deadline: 0,
    stream: null,
    transfer: null,
    observed: null,
    keyText: 'a/x',
    settledInto: settled,
    stopWaiting() {},
    copyArgs() {},
    settle(this: Call & { settledInto: Settled[] }, failure: SandpoolError | null, value?: unknown) {
      const outcome: Outcome =
        failure === null
          ? { ok: true, value }
          : ({ ok: false, code: failure.code, error: failure.cause } as unknown as Outcome);
      this.settledInto.push({ call: this, outcome });
      return true;
    },
  } as unknown as Call;
}

interface Settled {
  call: Call;
  outcome: Outcome;
}

function setup() {
  const { thread, sent, violations } = stubThread();
  const settled: Settled[] = [];
  const make = (fn = 'f', timeoutMs = 0): Call => call(fn, timeoutMs, settled);
  return {
    channel: new Channel(thread, owner, 250, { measuring: false }, (text) => text),
    sent,
    violations,
    settled,
    call: make,
  };
}

describe('Channel', () => {
  it('settles a reply to a call it made, once', async () => {
    const { channel, sent, violations, settled, call } = setup();
    const c = call();
    channel.post(c);
    await Promise.resolve();
    expect(sent).toEqual([{ t: 'calls', calls: [c.id, 'f', 0, 0] }]);
    channel.receive({ t: 'done', ok: [c.id, 'v'], err: [] });
    channel.receive({ t: 'done', ok: [c.id, 'again'], err: [] });
    expect(settled).toEqual([{ call: c, outcome: { ok: true, value: 'v' } }]);
    expect(violations).toEqual([]);
  });

  it('a reply to an id never issued ends the worker', () => {
    const { channel, violations, settled, call } = setup();
    channel.post(call());
    channel.receive({ t: 'done', ok: [99, 'forged'], err: [] });
    expect(violations).toEqual([expect.stringMatching(/never made/)]);
    expect(settled).toEqual([]);
    channel.receive({ t: 'result', id: 42, bytes: new Uint8Array(serialize({ a: 1 })).buffer });
    expect(violations).toHaveLength(2);
  });

  it('ignores a late reply to a call cancelled off the channel', () => {
    const { channel, violations, settled, call } = setup();
    const c = call();
    channel.post(c);
    channel.cancel(c, 'abort');
    expect(channel.has(c)).toBe(false);
    channel.receive({ t: 'done', ok: [c.id, 'late'], err: [] });
    channel.receive({ t: 'done', ok: [], err: [c.id, 'ERR_SANDPOOL_AGENT_ERROR', error] });
    expect(settled).toEqual([]);
    expect(violations).toEqual([]);
  });

  it('gives the id of a cancelled call to no newer call until its agent settles, then reuses it', async () => {
    const { channel, violations, settled, call, sent } = setup();
    const [cancelled, newer] = [call(), call()];
    channel.post(cancelled);
    channel.post(newer);
    channel.cancel(cancelled, 'timeout');
    // A call made while a cancelled one is within its grace waits, unsent and without an id.
    const waiting = call('later');
    channel.post(waiting);
    await Promise.resolve();
    expect(sent.flatMap((message) => (message.t === 'calls' ? message.calls : []))).not.toContain('later');
    expect(channel.waiting).toEqual([waiting]);
    channel.receive({ t: 'done', ok: [cancelled.id, 'late'], err: [] });
    expect(settled).toEqual([]);
    // The grace is over: it leaves now, on an id no running call holds.
    expect(channel.waiting).toEqual([]);
    expect(waiting.id).not.toBe(newer.id);
    channel.receive({ t: 'done', ok: [waiting.id, 'waited'], err: [] });
    settled.length = 0;
    channel.receive({ t: 'done', ok: [newer.id, 'mine'], err: [] });
    expect(settled).toEqual([{ call: newer, outcome: { ok: true, value: 'mine' } }]);
    // Both ids are free again: the next calls take them, and no third is made.
    const [next, after] = [call(), call()];
    channel.post(next);
    channel.post(after);
    expect(new Set([next.id, after.id])).toEqual(new Set([cancelled.id, newer.id]));
    expect(violations).toEqual([]);
  });

  it('names as oldest the call posted first, whatever id it holds', () => {
    const { channel, call } = setup();
    const [first, second, third] = [call(), call(), call()];
    channel.post(first);
    channel.post(second);
    channel.receive({ t: 'done', ok: [first.id, 1], err: [] });
    channel.post(third); // takes first's id, the smallest
    expect(third.id).toBe(first.id);
    expect(channel.running.oldest()).toBe(second);
  });

  it('sends a lone call at once, and batches the calls that follow it in the same turn of the event loop', async () => {
    const { channel, sent, call } = setup();
    const [lone, second, third] = [call('a'), call('b'), call('c')];
    channel.post(lone);
    expect(sent).toEqual([{ t: 'calls', calls: [lone.id, 'a', 0, 0] }]);
    channel.post(second);
    // A later tick of the same turn (a caller woken by another worker's reply, say) joins the batch.
    await Promise.resolve();
    channel.post(third);
    expect(sent).toHaveLength(1);
    await new Promise((resolve) => setImmediate(resolve));
    expect(sent[1]).toEqual({ t: 'calls', calls: [second.id, 'b', 0, 0, third.id, 'c', 0, 0] });
  });

  it('sends the batch while the application fakes the global timers', async () => {
    const { channel, sent, call } = setup();
    vi.useFakeTimers();
    try {
      const [lone, second] = [call('a'), call('b')];
      channel.post(lone);
      channel.post(second);
      await new Promise((resolve) => realSetImmediate(resolve));
      expect(sent[1]).toEqual({ t: 'calls', calls: [second.id, 'b', 0, 0] });
    } finally {
      vi.useRealTimers();
    }
  });

  it('times out a call whose deadline comes after the timer armed for one that settled', async () => {
    const { channel, settled, call } = setup();
    const timedOut = (): Call[] =>
      settled
        .filter(({ outcome }) => !outcome.ok && (outcome.code as string) === 'ERR_SANDPOOL_TIMEOUT')
        .map((s) => s.call);
    const settledFirst = call('f', 60);
    channel.post(settledFirst);
    channel.receive({ t: 'done', ok: [settledFirst.id, 1], err: [] });
    await new Promise((resolve) => setTimeout(resolve, 10));
    const later = call('f', 100);
    const postedAt = performance.now();
    channel.post(later);
    while (timedOut().length === 0 && performance.now() - postedAt < 2_000) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    expect(timedOut()).toEqual([later]);
    expect(performance.now() - postedAt).toBeGreaterThanOrEqual(99);
    channel.drain();
  });

  it('a serialized result past the limit ends the worker, unread', () => {
    const { channel, violations, settled, call } = setup();
    const c = call();
    channel.post(c);
    // Zero-filled and never touched: the pages are not committed.
    channel.receive({ t: 'result', id: c.id, bytes: new ArrayBuffer(LIMITS.resultBytes + 1) });
    expect(violations).toEqual([expect.stringMatching(/past the limit/)]);
    expect(settled).toEqual([]);
  });

  it('a result that cannot be deserialized fails that call with DATA_CLONE, and the channel goes on', () => {
    const { channel, violations, settled, call } = setup();
    const [bad, good] = [call(), call()];
    channel.post(bad);
    channel.post(good);
    channel.receive({ t: 'result', id: bad.id, bytes: new Uint8Array([0xff, 0x0f, 0x6f, 0x22, 0x99]).buffer });
    channel.receive({ t: 'result', id: good.id, bytes: new Uint8Array(serialize({ a: [1] })).buffer });
    expect(settled).toEqual([
      {
        call: bad,
        outcome: {
          ok: false,
          code: 'ERR_SANDPOOL_DATA_CLONE',
          error: expect.objectContaining({ name: 'DataCloneError' }),
        },
      },
      { call: good, outcome: { ok: true, value: { a: [1] } } },
    ]);
    expect(violations).toEqual([]);
  });
});
