import { context, type Span, SpanStatusCode, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import type { CallRecord, HostContext } from 'sandpool';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CpuShare } from '../packages/sandpool/dist/host/telemetry/cpu-share.js';
import { code } from './support/errors.js';
import { eventually, installCleanup, invariants, openPool } from './support/pool.js';
import { makeRoot } from './support/root.js';

installCleanup();

/**
 * The application's side, as an application sets OpenTelemetry up: an SDK provider and the
 * async context manager NodeSDK registers. sandpool loads the API's CommonJS build on its
 * own, so the spans below also prove it sees a registration made through another copy.
 */
const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const tracer = provider.getTracer('the application');

beforeAll(() => {
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  trace.setGlobalTracerProvider(provider);
});
afterAll(async () => {
  trace.disable();
  context.disable();
  await provider.shutdown();
});
afterEach(() => exporter.reset());

const AGENT = `
export async function lookup(id) {
  const user = await sandpool.host.users(id);
  return { user, traceparent: sandpool.traceparent };
}
export function traceparent() {
  return sandpool.traceparent;
}
export function fail() {
  throw new Error('no');
}
export function burn(n) {
  let x = 0;
  for (let i = 0; i < n; i += 1) x = (x + Math.sqrt(i)) % 1e9;
  return x;
}
export async function interleaved(n) {
  for (let round = 0; round < 10; round += 1) {
    burn(n);
    await new Promise((resolve) => setImmediate(resolve));
  }
}
export async function* tokens() {
  yield sandpool.traceparent;
}
`;

/** A capability that makes a span of its own: it must land under the host call's span. */
function users(_ctx: HostContext, id: number): Promise<string> {
  return tracer.startActiveSpan('users.query', async (span: Span) => {
    await new Promise((resolve) => setTimeout(resolve, 2));
    span.end();
    return `user-${id}`;
  });
}

function spansNamed(name: string): ReadableSpan[] {
  return exporter.getFinishedSpans().filter((span) => span.name === name);
}

function parentOf(span: ReadableSpan): string | undefined {
  return span.parentSpanContext?.spanId;
}

function traceparentOf(span: ReadableSpan): string {
  const { traceId, spanId } = span.spanContext();
  return `00-${traceId}-${spanId}-01`;
}

describe('OpenTelemetry', () => {
  it("makes a span per call under the caller's span, a child per capability call, and gives the agent its traceparent", async () => {
    const pool = openPool({ root: await makeRoot({ 'a/live/agent.mjs': AGENT }), host: { users } });
    // Concurrent requests, each under a span of its own: every call must find its own parent.
    const requests = [1, 2, 3].map((id) =>
      tracer.startActiveSpan(`request ${id}`, async (span: Span) => {
        const result = await pool.call<{ user: string; traceparent: string }>('a/agent', 'lookup', [id]);
        span.end();
        return result;
      }),
    );
    const results = await Promise.all(requests);

    for (const [index, result] of results.entries()) {
      const id = index + 1;
      expect(result.user).toBe(`user-${id}`);
      const [request] = spansNamed(`request ${id}`);
      const call = spansNamed('sandpool.call').find((span) => parentOf(span) === request?.spanContext().spanId);
      if (request === undefined || call === undefined) throw new Error(`no call span under request ${id}`);
      expect(call.spanContext().traceId).toBe(request.spanContext().traceId);
      expect(call.attributes).toMatchObject({
        'sandpool.swarm': 'a',
        'sandpool.stem': 'agent',
        'sandpool.function': 'lookup',
        'sandpool.outcome': 'ok',
      });
      expect(call.attributes['sandpool.snapshot']).toBeUndefined();
      expect(call.attributes['sandpool.cpu_ms']).toBeTypeOf('number');
      // The agent saw its call's span as its parent-to-be.
      expect(result.traceparent).toBe(traceparentOf(call));
      const host = spansNamed('sandpool.host users').find((span) => parentOf(span) === call.spanContext().spanId);
      if (host === undefined) throw new Error(`no host span under call ${id}`);
      expect(host.attributes['sandpool.capability']).toBe('users');
      const query = spansNamed('users.query').find((span) => parentOf(span) === host.spanContext().spanId);
      expect(query?.spanContext().traceId).toBe(request.spanContext().traceId);
    }
    expect(spansNamed('sandpool.call')).toHaveLength(3);
    expect(spansNamed('sandpool.host users')).toHaveLength(3);
    expect(invariants(pool)).toEqual([]);
  });

  it('marks failures and refusals with their code, names a snapshot and its digest, and traces streams', async () => {
    const root = await makeRoot({ 'a/live/agent.mjs': AGENT });
    const pool = openPool({ root, host: { users } });
    const snapshot = await pool.snapshots.create('a', 'jan');

    expect(await code(pool.call('a/agent', 'fail'))).toBe('ERR_SANDPOOL_AGENT_ERROR');
    const [failed] = spansNamed('sandpool.call');
    expect(failed?.status.code).toBe(SpanStatusCode.ERROR);
    expect(failed?.attributes).toMatchObject({
      'sandpool.outcome': 'error',
      'error.type': 'ERR_SANDPOOL_AGENT_ERROR',
    });
    exporter.reset();

    // Refused before it held anything: its span says why.
    expect(await code(pool.call('a/agent', 'traceparent', [], { signal: AbortSignal.abort() }))).toBe(
      'ERR_SANDPOOL_ABORTED',
    );
    expect(spansNamed('sandpool.call').map((span) => span.attributes['error.type'])).toEqual(['ERR_SANDPOOL_ABORTED']);
    exporter.reset();

    const traceparent = await pool.call<string>('a@jan/agent', 'traceparent');
    const [call] = spansNamed('sandpool.call');
    if (call === undefined) throw new Error('no span for the snapshot call');
    expect(call.attributes).toMatchObject({ 'sandpool.snapshot': 'jan', 'sandpool.digest': snapshot.digest });
    expect(traceparent).toBe(traceparentOf(call));
    exporter.reset();

    const chunks: unknown[] = [];
    for await (const chunk of pool.stream('a/agent', 'tokens')) chunks.push(chunk);
    const [stream] = spansNamed('sandpool.call');
    if (stream === undefined) throw new Error('no span for the stream');
    expect(chunks).toEqual([traceparentOf(stream)]);
  });

  it('gives every call it refuses or runs one span and one record, by call, stream and remote alike', async () => {
    const pool = openPool({ root: await makeRoot({ 'a/live/agent.mjs': AGENT }) });
    const records: CallRecord[] = [];
    pool.on('call', (record) => records.push(record));
    const drain = async (stream: AsyncIterable<unknown>): Promise<unknown[]> => {
      const chunks: unknown[] = [];
      for await (const chunk of stream) chunks.push(chunk);
      return chunks;
    };
    const bad = { highWaterMark: 0 } as never;

    expect(await code(pool.call('a/agent', 'traceparent', [], bad))).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
    // A stream is made at its first next(): that is where its refusal surfaces and is recorded.
    const refusedStream = pool.stream('a/agent', 'tokens', [], bad);
    expect(records).toHaveLength(1);
    expect(await code(drain(refusedStream))).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
    const remote = pool.remote<{ traceparent(): Promise<string> }>('a/agent', bad);
    expect(await code(remote.traceparent())).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
    expect(await code(pool.stream('a/agent', 'tokens', [], { signal: AbortSignal.abort() }).next())).toBe(
      'ERR_SANDPOOL_ABORTED',
    );
    expect(await drain(pool.stream('a/agent', 'tokens'))).toHaveLength(1);
    expect(await pool.remote<{ traceparent(): Promise<string> }>('a/agent').traceparent()).toMatch(/^00-/);
    // A call naming no valid key is no tenant's: it has neither.
    expect(await code(pool.call('../x', 'traceparent'))).toBe('ERR_SANDPOOL_INVALID_KEY');
    // A stream dropped before its first next() was never made.
    await pool.stream('a/agent', 'tokens', [], bad).return?.();

    await eventually(() => records.length === 6);
    const outcomes = records.map(({ fn, outcome, code }) => [fn, outcome, code ?? null]);
    expect(outcomes).toEqual([
      ['traceparent', 'error', 'ERR_SANDPOOL_INVALID_OPTIONS'],
      ['tokens', 'error', 'ERR_SANDPOOL_INVALID_OPTIONS'],
      ['traceparent', 'error', 'ERR_SANDPOOL_INVALID_OPTIONS'],
      ['tokens', 'error', 'ERR_SANDPOOL_ABORTED'],
      ['tokens', 'ok', null],
      ['traceparent', 'ok', null],
    ]);
    const spans = spansNamed('sandpool.call').map((span) => [
      span.attributes['sandpool.function'],
      span.attributes['sandpool.outcome'],
      span.attributes['error.type'] ?? null,
    ]);
    expect(spans).toEqual(outcomes);
    expect(invariants(pool)).toEqual([]);
  });

  it('gives a process key its traceparent over its own channel', async () => {
    const pool = openPool({
      root: await makeRoot({ 'a/live/agent.mjs': AGENT }),
      isolation: 'process',
      processUser: 'host',
    });
    const traceparent = await pool.call<string>('a/agent', 'traceparent');
    const [call] = spansNamed('sandpool.call');
    if (call === undefined) throw new Error('no span for the process call');
    expect(traceparent).toBe(traceparentOf(call));
  });

  it('makes no span with tracing: false, and the agent sees no traceparent', async () => {
    const pool = openPool({ root: await makeRoot({ 'a/live/agent.mjs': AGENT }), tracing: false });
    expect(await pool.call('a/agent', 'traceparent')).toBeNull();
    expect(exporter.getFinishedSpans()).toEqual([]);
  });
});

describe('call records', () => {
  it('fires one record per call, with its CPU, outcome, code and capability use', async () => {
    const pool = openPool({
      root: await makeRoot({ 'a/live/agent.mjs': AGENT }),
      host: { users },
      quotas: { calls: { perSecond: 0.001, burst: 4 } },
      tracing: false,
    });
    const records: CallRecord[] = [];
    pool.on('call', (record) => records.push(record));

    await pool.call('a/agent', 'lookup', [7]);
    await pool.call('a/agent', 'burn', [20_000_000]);
    await code(pool.call('a/agent', 'fail'));
    await pool.call('a/agent', 'traceparent');
    // Over the key's quota: refused at once, and recorded all the same.
    expect(await code(pool.call('a/agent', 'traceparent'))).toBe('ERR_SANDPOOL_QUOTA');

    await eventually(() => records.length === 5);
    const [lookup, burn, fail, quiet, refused] = records;
    expect(lookup).toMatchObject({
      key: 'a/agent',
      swarm: 'a',
      snapshot: null,
      stem: 'agent',
      fn: 'lookup',
      outcome: 'ok',
      host: { users: 1 },
    });
    expect(lookup?.code).toBeUndefined();
    expect(fail).toMatchObject({ fn: 'fail', outcome: 'error', code: 'ERR_SANDPOOL_AGENT_ERROR', host: {} });
    expect(refused).toMatchObject({ outcome: 'error', code: 'ERR_SANDPOOL_QUOTA', durationMs: 0, cpuMs: 0 });
    // The kernel's count of the worker's CPU while each ran: twenty million square roots take
    // some; returning a constant takes next to none.
    expect(burn?.cpuMs).toBeGreaterThan(5);
    expect(quiet?.cpuMs).toBeLessThan((burn?.cpuMs ?? 0) / 4);
    for (const record of records) expect(record.durationMs).toBeGreaterThanOrEqual(0);
    expect(burn?.durationMs).toBeGreaterThan(0);
    expect(invariants(pool)).toEqual([]);
  });

  it("shares a worker's CPU among the calls it runs at once: they add up to the worker's, not to a multiple", async () => {
    const pool = openPool({ root: await makeRoot({ 'a/live/agent.mjs': AGENT }), tracing: false });
    const records: CallRecord[] = [];
    pool.on('call', (record) => records.push(record));
    await pool.call('a/agent', 'traceparent');
    await Promise.all([1, 2, 3, 4].map(() => pool.call('a/agent', 'interleaved', [2_000_000])));
    const calls = records.slice(1);
    expect(calls).toHaveLength(4);
    for (const record of calls) expect(record.cpuMs).toBeGreaterThan(0);
    // The governor reads an idle worker every 250 ms: by then its total holds every call's CPU.
    await new Promise((resolve) => setTimeout(resolve, 600));
    const worker = pool.keyStats().find((stats) => stats.key === 'a/agent')?.cpuMs ?? 0;
    const sum = calls.reduce((total, record) => total + record.cpuMs, 0);
    expect(sum).toBeGreaterThan(10);
    expect(sum).toBeLessThanOrEqual(worker + 1);
  });
});

describe("a worker's CPU for call records", () => {
  /** A worker whose CPU grows by 1 ms a reading, on a clock the test moves. */
  function worker(): { share: CpuShare; reads: () => number; tick: (ms: number) => number } {
    let reads = 0;
    let now = 0;
    const share = new CpuShare(
      () => ++reads * 1e6,
      () => now,
    );
    return { share, reads: () => reads, tick: (ms) => (now += ms) };
  }

  it('reads once per batch of replies, and once per call when each call answers the last reply at once', () => {
    const { share, reads, tick } = worker();
    // Four calls start together on an idle worker: one reading.
    const from = [0, 1, 2, 3].map((running) => share.start(running, tick(0)));
    expect(reads()).toBe(1);
    // Their four replies arrive in one batch: one reading, shared.
    share.replies(4, 4);
    const ends = [4, 3, 2, 1].map((running) => share.now(running));
    share.settled();
    expect(reads()).toBe(2);
    expect(ends.map((end, i) => end - (from[i] ?? 0))).toEqual([0.25e6, 0.25e6, 0.25e6, 0.25e6]);
    // Sequential calls, each made as the last reply settles: the reply's reading serves the start.
    for (let call = 0; call < 10; call += 1) {
      const start = share.start(0, tick(0.1));
      share.replies(1, 1);
      expect(share.now(1) - start).toBe(1e6);
      share.settled();
    }
    expect(reads()).toBe(12);
    // After an idle stretch the worker is read again first: what it ran meanwhile is no call's.
    const late = share.start(0, tick(5));
    expect(reads()).toBe(13);
    share.replies(1, 1);
    expect(share.now(1) - late).toBe(1e6);
    share.settled();
  });

  it('lets batches that follow a reading closely share it while calls go on running, and reads when the run ends', () => {
    const { share, reads, tick } = worker();
    const from = [0, 1, 2, 3].map((running) => share.start(running, tick(0)));
    // Two of four answer 20 µs after the reading: the others run on, so that reading serves.
    tick(0.02);
    share.replies(4, 2);
    const early = [share.now(4), share.now(3)];
    share.settled();
    expect(reads()).toBe(1);
    // The last two end the run: read, and the CPU since the first reading is shared by them.
    tick(0.02);
    share.replies(2, 2);
    const late = [share.now(2), share.now(1)];
    share.settled();
    expect(reads()).toBe(2);
    const cpu = [...early, ...late].map((end, i) => end - (from[i] ?? 0));
    expect(cpu).toEqual([0, 0, 0.5e6, 0.5e6]);
    // Every nanosecond the worker ran is some call's.
    expect(cpu.reduce((sum, ns) => sum + ns, 0)).toBe(1e6);
    // A batch after a longer gap reads, though calls run on.
    const more = [0, 1, 2].map((running) => share.start(running, tick(5)));
    expect(reads()).toBe(3);
    tick(0.2);
    share.replies(3, 1);
    expect(share.now(3) - (more[0] ?? 0)).toBeCloseTo(1e6 / 3);
    share.settled();
    expect(reads()).toBe(4);
  });
});
