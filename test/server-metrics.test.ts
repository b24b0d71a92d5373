import { describe, expect, it } from 'vitest';
import { thrownSync } from './support/errors.js';
import { counterAgent, fixture, makeRoot } from './support/root.js';
import { installServerCleanup, openServer, request } from './support/server.js';

installServerCleanup();

type Server = ReturnType<typeof openServer>;

/** Any token may scrape; the tests' servers all know `t`. */
async function scrape(server: Server, token = 't'): Promise<string> {
  const response = await server.app.inject({
    method: 'GET',
    url: '/metrics',
    headers: { authorization: `Bearer ${token}` },
  });
  expect(response.statusCode).toBe(200);
  return response.body;
}

/** Lines that are samples, not `# HELP` / `# TYPE`: what a scraper stores as series. */
function seriesOf(text: string): string[] {
  return text.split('\n').filter((line) => line !== '' && !line.startsWith('#'));
}

function swarmLabels(text: string): Set<string> {
  return new Set(seriesOf(text).flatMap((line) => /\bswarm="([^"]*)"/.exec(line)?.[1] ?? []));
}

function sample(text: string, series: string): number | undefined {
  const line = seriesOf(text).find((candidate) => candidate.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

function sumOf(text: string, name: string): number {
  return seriesOf(text)
    .filter((line) => line.startsWith(`${name}{`))
    .reduce((total, line) => total + Number(line.slice(line.lastIndexOf(' ') + 1)), 0);
}

describe('per-swarm metrics', () => {
  it('keeps the scrape bounded when callers name 500 swarms, and gives a busy newcomer its own label', async () => {
    const root = await makeRoot({ ...(await counterAgent('busy')), ...(await counterAgent('late')) });
    const server = openServer({ root, tokens: { t: { swarms: '*' } } });
    const auth = { authorization: 'Bearer t' };
    await request(server, 'POST', '/v1/call/busy/notifier_agent', { fn: 'add', args: [1, 2] }, auth);
    const before = seriesOf(await scrape(server)).length;

    // Each call names a swarm of its own; none has code, so this costs the attacker nothing.
    // busy keeps calling meanwhile: an incumbent still in use keeps its label.
    for (let batch = 0; batch < 10; batch += 1) {
      await Promise.all([
        request(server, 'POST', '/v1/call/busy/notifier_agent', { fn: 'add', args: [1, 2] }, auth),
        ...Array.from({ length: 50 }, (_, n) =>
          request(server, 'POST', `/v1/call/t${batch * 50 + n}/ghost`, { fn: 'x' }, auth),
        ),
      ]);
    }
    const flooded = await scrape(server);
    const labels = swarmLabels(flooded);
    expect(labels.size).toBeLessThanOrEqual(51);
    expect(labels).toContain('_other');
    expect(labels).toContain('busy');
    // Every call is counted, under its swarm or under _other.
    expect(sumOf(flooded, 'sandpool_swarm_calls_total')).toBe(511);
    expect(sumOf(flooded, 'sandpool_swarm_errors_total')).toBe(500);
    const after = seriesOf(flooded).length;
    // At most 13 series per label: calls, errors, CPU, and 10 of the latency histogram.
    expect(after - before).toBeLessThanOrEqual(51 * 13);

    // A swarm busier than the incumbents since the last scrape takes a place at the next one.
    for (let n = 0; n < 5; n += 1) {
      await request(server, 'POST', '/v1/call/late/notifier_agent', { fn: 'add', args: [1, 2] }, auth);
    }
    // Its place is given at this scrape; its calls so far were counted under _other.
    expect(swarmLabels(await scrape(server)).size).toBeLessThanOrEqual(51);
    await request(server, 'POST', '/v1/call/late/notifier_agent', { fn: 'add', args: [1, 2] }, auth);
    const reranked = await scrape(server);
    expect(sample(reranked, 'sandpool_swarm_calls_total{swarm="late",node="node-1"}')).toBe(1);
    expect(swarmLabels(reranked).size).toBeLessThanOrEqual(51);
    expect(sumOf(reranked, 'sandpool_swarm_cpu_seconds_total')).toBeGreaterThanOrEqual(0);
  });

  it('labels only the swarms a token reaches, and honours metricsSwarms', async () => {
    const root = await makeRoot({ ...(await counterAgent('a')), ...(await counterAgent('b')) });
    const server = openServer({ root, tokens: { ta: { swarms: ['a'] }, t: { swarms: '*' } }, metricsSwarms: 1 });
    const auth = { authorization: 'Bearer ta' };
    await request(server, 'POST', '/v1/call/a/notifier_agent', { fn: 'add', args: [1, 2] }, auth);
    expect((await request(server, 'POST', '/v1/call/b/notifier_agent', { fn: 'add', args: [1, 2] }, auth)).status).toBe(
      403,
    );
    await request(server, 'POST', '/v1/call/a/notifier_agent', { fn: 'nope' }, auth);
    const text = await scrape(server);
    expect([...swarmLabels(text)].sort()).toEqual(['a']);
    expect(sample(text, 'sandpool_swarm_calls_total{swarm="a",node="node-1"}')).toBe(2);
    expect(sample(text, 'sandpool_swarm_errors_total{swarm="a",node="node-1"}')).toBe(1);
    expect(sample(text, 'sandpool_swarm_call_duration_seconds_count{node="node-1",swarm="a"}')).toBe(2);
    expect(thrownSync(() => openServer({ root, metricsSwarms: -1 }))).toEqual({
      code: 'ERR_SANDPOOL_INVALID_OPTIONS',
      paths: ['metricsSwarms'],
    });
  });
  it("answers a scoped token with its swarms' series only: no other swarm, no node-wide total", async () => {
    const root = await makeRoot({ ...(await counterAgent('a')), ...(await counterAgent('b')) });
    const server = openServer({ root, tokens: { ta: { swarms: ['a'] }, t: { swarms: '*' } } });
    for (const swarm of ['a', 'a', 'b']) {
      await request(
        server,
        'POST',
        `/v1/call/${swarm}/notifier_agent`,
        { fn: 'add', args: [1, 2] },
        { authorization: 'Bearer t' },
      );
    }
    const scoped = await scrape(server, 'ta');
    expect([...swarmLabels(scoped)]).toEqual(['a']);
    expect(seriesOf(scoped).every((line) => line.startsWith('sandpool_swarm_'))).toBe(true);
    expect(sample(scoped, 'sandpool_swarm_calls_total{swarm="a",node="node-1"}')).toBe(2);
    expect(scoped).toMatch(/^# HELP sandpool_swarm_calls_total /m);
    expect(scoped).not.toMatch(/sandpool_calls_total|sandpool_workers_alive|process_cpu/);
    const full = await scrape(server);
    expect([...swarmLabels(full)].sort()).toEqual(['a', 'b']);
    expect(sample(full, 'sandpool_calls_total{outcome="ok",node="node-1"}')).toBe(3);
  });
});

describe('metrics from the pool', () => {
  it("counts the embedding service's own calls beside the HTTP ones, and requests refused before the pool", async () => {
    const root = await makeRoot({ ...(await counterAgent('a')), ...(await counterAgent('b')) });
    const server = openServer({ root, tokens: { ta: { swarms: ['a'] }, t: { swarms: '*' } } });
    await request(
      server,
      'POST',
      '/v1/call/a/notifier_agent',
      { fn: 'add', args: [1, 2] },
      { authorization: 'Bearer ta' },
    );
    // The service calls its pool directly: no HTTP request, the same metrics.
    await server.pool.call('a/notifier_agent', 'add', [1, 2]);
    await server.pool.call('a@none/notifier_agent', 'add', [1, 2]).catch(() => {});
    await server.pool.call('b/notifier_agent', 'add', [1, 2]);
    // Refused before the pool: no swarm of its own, counted node-wide by its code.
    const refused = await request(
      server,
      'POST',
      '/v1/call/b/notifier_agent',
      { fn: 'add' },
      { authorization: 'Bearer ta' },
    );
    expect(refused.status).toBe(403);

    const text = await scrape(server);
    expect(sample(text, 'sandpool_swarm_calls_total{swarm="a",node="node-1"}')).toBe(3);
    expect(sample(text, 'sandpool_swarm_errors_total{swarm="a",node="node-1"}')).toBe(1);
    expect(sample(text, 'sandpool_swarm_calls_total{swarm="b",node="node-1"}')).toBe(1);
    expect(sample(text, 'sandpool_calls_total{outcome="ok",node="node-1"}')).toBe(3);
    expect(sample(text, 'sandpool_calls_total{outcome="ERR_SANDPOOL_SNAPSHOT_NOT_FOUND",node="node-1"}')).toBe(1);
    expect(sample(text, 'sandpool_calls_total{outcome="ERR_SANDPOOL_HTTP_FORBIDDEN",node="node-1"}')).toBe(1);
    expect(sample(text, 'sandpool_call_duration_seconds_count{node="node-1",kind="live"}')).toBe(3);
    expect(sample(text, 'sandpool_call_duration_seconds_count{node="node-1",kind="snapshot"}')).toBe(1);
    // A token scoped to a still sees its swarm's series only.
    expect([...swarmLabels(await scrape(server, 'ta'))]).toEqual(['a']);
  });
});

describe('metrics and the HTTP answer agree', () => {
  it('counts a result or chunk that JSON cannot carry as the error the client got, not as ok', async () => {
    const agent = [
      'export function cycle() { const a = { n: 1 }; a.self = a; return a; }',
      'export function big() { return { n: 2n ** 70n }; }',
      'export async function* chunks() { yield 1; const a = []; a.push(a); yield a; yield 3; }',
    ].join('\n');
    const root = await makeRoot({ ...(await counterAgent('n')), 'x/live/odd.mjs': `${agent}\n` });
    const server = openServer({ root, tokens: { t: { swarms: '*' } } });
    const auth = { authorization: 'Bearer t' };
    const records: { fn: string; code?: string }[] = [];
    server.pool.on('call', ({ fn, code }) => records.push(code === undefined ? { fn } : { fn, code }));

    const cycle = await request(server, 'POST', '/v1/call/x/odd', { fn: 'cycle' }, auth);
    expect(cycle.status).toBe(400);
    expect(cycle.body).toMatchObject({ code: 'ERR_SANDPOOL_DATA_CLONE' });
    // A bigint is written as its decimal text: that call did succeed.
    const big = await request(server, 'POST', '/v1/call/x/odd', { fn: 'big' }, auth);
    expect(big.body).toEqual({ result: { n: (2n ** 70n).toString() } });
    const streamed = await server.app.inject({
      method: 'POST',
      url: '/v1/stream/x/odd',
      headers: { 'content-type': 'application/json', ...auth },
      payload: JSON.stringify({ fn: 'chunks' }),
    });
    const lines = streamed.body
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(lines).toEqual([{ chunk: 1 }, { error: expect.objectContaining({ code: 'ERR_SANDPOOL_DATA_CLONE' }) }]);
    // The neighbour keeps answering, and the stream's worker too.
    const neighbour = await request(server, 'POST', '/v1/call/n/notifier_agent', { fn: 'add', args: [2, 3] }, auth);
    expect(neighbour.body).toEqual({ result: 5 });

    await expect.poll(() => records.length).toBe(4);
    expect(records).toEqual([
      { fn: 'cycle', code: 'ERR_SANDPOOL_DATA_CLONE' },
      { fn: 'big' },
      { fn: 'chunks', code: 'ERR_SANDPOOL_DATA_CLONE' },
      { fn: 'add' },
    ]);
    const text = await scrape(server);
    expect(sample(text, 'sandpool_calls_total{outcome="ok",node="node-1"}')).toBe(2);
    expect(sample(text, 'sandpool_calls_total{outcome="ERR_SANDPOOL_DATA_CLONE",node="node-1"}')).toBe(2);
    expect(sample(text, 'sandpool_swarm_calls_total{swarm="x",node="node-1"}')).toBe(3);
    expect(sample(text, 'sandpool_swarm_errors_total{swarm="x",node="node-1"}')).toBe(2);
    const [stats] = server.pool.keyStats().filter((key) => key.key === 'x/odd');
    expect(stats).toMatchObject({ calls: 3, errors: 2 });
  });
});

describe('worker health metrics', () => {
  it('exposes stuck workers, dropped output and exits by a closed set of reasons', async () => {
    const root = await makeRoot({ 'a/live/faulty.mjs': await fixture('faulty.mjs') });
    const server = openServer({ root, token: 't' });
    await request(server, 'POST', '/v1/call/a/faulty', { fn: 'exit', args: [1] }, { authorization: 'Bearer t' });
    await expect
      .poll(async () => sample(await scrape(server), 'sandpool_exits_total{reason="exit",node="node-1"}'))
      .toBe(1);
    const text = await scrape(server);
    expect(sample(text, 'sandpool_workers_stuck{node="node-1"}')).toBe(0);
    expect(sample(text, 'sandpool_output_dropped_total{node="node-1"}')).toBe(0);
    const reasons = seriesOf(text)
      .filter((line) => line.startsWith('sandpool_exits_total{'))
      .map((line) => /reason="([^"]+)"/.exec(line)?.[1]);
    expect(reasons.sort()).toEqual(['retired', 'cpu', 'crash', 'exit', 'killed', 'oom', 'protocol'].sort());
    expect(sample(text, 'sandpool_crashes_total{reason="protocol",node="node-1"}')).toBe(0);
    expect(sample(text, 'sandpool_demotions_total{reason="cpu-share",node="node-1"}')).toBe(0);
  });
});
