import { createPool, type KeyStats } from 'sandpool';
import { afterEach, describe, expect, it } from 'vitest';
import { statusOf } from '../packages/server/dist/status.js';
import { thrownSync } from './support/errors.js';
import { closeServers, serve } from './support/http.js';
import { installCleanup, invariants, openPool } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();
afterEach(closeServers);

const AGENT = `
export async function tools(n) {
  const outcomes = [];
  for (let i = 0; i < n; i += 1) {
    outcomes.push(await sandpool.host.tool('x'.repeat(100)).then(() => 'ok', (error) => error.code));
  }
  return outcomes;
}
// Reads a body until 2,000 bytes have come (its key is then in debt), then fetches again.
export async function fetchTwice(url) {
  const reader = (await sandpool.host.fetch(url)).body.getReader();
  let read = 0;
  while (read < 2000) read += (await reader.read()).value.byteLength;
  const again = await sandpool.host.fetch(url).then(() => 'ok', (error) => error.code);
  return { read, again };
}
`;

async function root(): Promise<string> {
  return makeRoot({ 'q/live/agent.mjs': AGENT, 'r/live/agent.mjs': AGENT, ...(await counterAgent('n')) });
}

function statsOf(pool: ReturnType<typeof openPool>, key: string): KeyStats {
  const stats = pool.keyStats().find((entry) => entry.key === key);
  if (stats === undefined) throw new Error(`no stats for ${key}`);
  return stats;
}

describe('quotas', () => {
  it("refuse a key's calls past its quota with QUOTA at the call, each key on its own, and refill", async () => {
    const pool = openPool({ root: await root(), quotas: { calls: { perSecond: 1, burst: 3 } } });
    const started = performance.now();
    const outcomes = await Promise.all(
      Array.from({ length: 5 }, () => pool.call('n/notifier_agent', 'add', [1, 2]).catch((error) => error.code)),
    );
    expect(outcomes).toEqual([3, 3, 3, 'ERR_SANDPOOL_QUOTA', 'ERR_SANDPOOL_QUOTA']);
    // Other keys have their own tokens, while this one is refused.
    // A token a second comes back meanwhile: the key's first start (its artifact's build) may take seconds.
    const refilled = Math.ceil((performance.now() - started) / 1000);
    const [flood, others] = await Promise.all([
      Promise.all(Array.from({ length: 50 }, () => pool.call('n/notifier_agent', 'add', [1, 2]).catch((e) => e.code))),
      Promise.all([pool.call('q/agent', 'tools', [0]), pool.call('r/agent', 'tools', [0])]),
    ]);
    const floodRefused = flood.filter((outcome) => outcome === 'ERR_SANDPOOL_QUOTA').length;
    expect(floodRefused).toBeGreaterThanOrEqual(49 - refilled);
    expect(others).toEqual([[], []]);
    expect(statsOf(pool, 'n/notifier_agent').quotaRefused).toBe(2 + floodRefused);
    expect(statsOf(pool, 'q/agent')).toMatchObject({ calls: 1, quotaRefused: 0 });
    // A token comes back within a second.
    let refill: unknown = 'ERR_SANDPOOL_QUOTA';
    for (const started = Date.now(); refill === 'ERR_SANDPOOL_QUOTA' && Date.now() - started < 10_000; ) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      refill = await pool.call('n/notifier_agent', 'add', [1, 2]).catch((error) => error.code);
    }
    expect(refill).toBe(3);
    expect(statusOf('ERR_SANDPOOL_QUOTA')).toBe(429);
    expect(invariants(pool)).toEqual([]);
  });

  it("refuse a capability's calls past its quota in the agent, count its use, and a new worker gets no new tokens", async () => {
    const pool = openPool({
      root: await root(),
      host: { tool: () => 'y'.repeat(200) },
      quotas: { host: { tool: { perSecond: 0.01, burst: 2 } } },
    });
    expect(await pool.call('q/agent', 'tools', [3])).toEqual(['ok', 'ok', 'ERR_SANDPOOL_QUOTA']);
    const { host } = statsOf(pool, 'q/agent');
    expect(host.tool).toMatchObject({ calls: 2, refused: 1 });
    // Two calls of 100 characters out (serialized) and 200 back each.
    expect(host.tool?.bytes).toBeGreaterThanOrEqual(2 * (100 + 200));
    expect(await pool.call('r/agent', 'tools', [1])).toEqual(['ok']);
    await pool.invalidate({ swarm: 'q' });
    expect(await pool.call('q/agent', 'tools', [1])).toEqual(['ERR_SANDPOOL_QUOTA']);
    expect(statsOf(pool, 'q/agent').host.tool).toMatchObject({ calls: 2, refused: 2 });
  });

  it('count the bytes a fetch body moves: past bytesPerSecond the key is in debt and its next fetch is refused', async () => {
    const api = await serve((_request, response) => response.end(Buffer.alloc(256 * 1024, 1)));
    const pool = openPool({
      root: await root(),
      fetch: { q: { allow: [api.origin] } },
      quotas: { host: { fetch: { bytesPerSecond: 1000 } } },
    });
    const { read, again } = (await pool.call('q/agent', 'fetchTwice', [api.origin])) as { read: number; again: string };
    expect(again).toBe('ERR_SANDPOOL_QUOTA');
    expect(statsOf(pool, 'q/agent').host.fetch).toMatchObject({ calls: 1, refused: 1 });
    expect(statsOf(pool, 'q/agent').host.fetch?.bytes).toBeGreaterThanOrEqual(read);
  });

  it('are checked at createPool', async () => {
    const agents = await root();
    for (const [quotas, path] of [
      [{ calls: { perSecond: 0 } }, 'quotas.calls.perSecond'],
      [{ calls: { perSecond: 1, burst: 0.5 } }, 'quotas.calls.burst'],
      [{ host: { tool: {} } }, 'quotas.host.tool'],
      [{ host: { tool: { bytesPerSecond: 10, burst: 2 } } }, 'quotas.host.tool.burst'],
      [{ cpu: 1 }, 'quotas'],
    ] as const) {
      expect(
        thrownSync(() => createPool({ root: agents, quotas: quotas as never })),
        path,
      ).toEqual({
        code: 'ERR_SANDPOOL_INVALID_OPTIONS',
        paths: [path],
      });
    }
  });
});
