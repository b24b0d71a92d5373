import { readFileSync } from 'node:fs';
import type { AgentKey, KeyPolicy } from 'sandpool';
import { afterEach, describe, expect, it } from 'vitest';
import { rejection } from './support/errors.js';
import { closeServers, serve } from './support/http.js';
import { installCleanup, invariants, openPool } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();
afterEach(closeServers);

const AGENT = `
import { getHeapStatistics } from 'node:v8';
import { readFileSync } from 'node:fs';
export function env() {
  return process.env.TIER ?? null;
}
export function heapLimitMb() {
  return Math.round(getHeapStatistics().heap_size_limit / 2 ** 20);
}
export function external(mb) {
  globalThis.kept = new ArrayBuffer(mb * 2 ** 20);
  new Uint8Array(globalThis.kept).fill(1);
  return new Promise((resolve) => setTimeout(() => resolve('kept'), 500));
}
export function spin(ms) {
  const end = Date.now() + ms;
  while (Date.now() < end);
  return 'spun';
}
export function pid() {
  return process.pid;
}
export function read(path) {
  try {
    return readFileSync(path, 'utf8').length > 0;
  } catch (error) {
    return error.code;
  }
}
export async function tool() {
  return await sandpool.host.tool().catch((error) => error.code);
}
export async function fetchIt(url) {
  return await sandpool.host.fetch(url).then((response) => response.text(), (error) => error.code);
}
`;

const NEIGHBOUR = 'n/notifier_agent';

async function root(): Promise<string> {
  const files: Record<string, string> = { ...(await counterAgent('n')) };
  for (const swarm of ['small', 'big', 'bad', 'odd']) files[`${swarm}/live/agent.mjs`] = AGENT;
  return makeRoot(files);
}

describe('the policy option', () => {
  // Its spins end only when cpuTimeoutMs ends them: on a loaded machine that takes a while.
  it("sets each key's limits in one place, over the pool's options, and they reach its worker and governors", {
    timeout: 120_000,
  }, async () => {
    const policy = (key: Readonly<AgentKey>): KeyPolicy =>
      key.swarm === 'small'
        ? {
            resourceLimits: { maxOldGenerationSizeMb: 32 },
            maxExternalMb: 16,
            cpuTimeoutMs: 300,
            env: { TIER: 'small' },
          }
        : {};
    const pool = openPool({ root: await root(), env: { TIER: 'pool' }, policy });
    expect(await pool.call('small/agent', 'env')).toBe('small');
    expect(await pool.call('big/agent', 'env')).toBe('pool');
    // The worker's own V8 limit follows the key's heap budget (the backstop above it).
    const [small, big] = await Promise.all([
      pool.call<number>('small/agent', 'heapLimitMb'),
      pool.call<number>('big/agent', 'heapLimitMb'),
    ]);
    expect(small).toBeLessThan(big);
    // The governors hold each key to its own budgets, while the neighbour answers.
    const outcomes = await Promise.all([
      pool.call('small/agent', 'external', [64]).catch((error) => [error.code, error.reason]),
      pool.call('big/agent', 'external', [64]),
      // Spins until its worker ends (a minute at most): on a loaded machine 5 s of wall time can be under 300 ms of CPU.
      pool.call('small/agent', 'spin', [60_000], { timeoutMs: 90_000 }).catch((error) => [error.code, error.reason]),
      pool.call(NEIGHBOUR, 'notify', ['x']),
    ]);
    expect(outcomes.slice(0, 2)).toEqual([['ERR_SANDPOOL_WORKER_EXITED', 'oom'], 'kept']);
    // The spin either ran on the worker the oom ended, or on the next one, which cpuTimeoutMs ends.
    expect(outcomes[2]).toEqual(['ERR_SANDPOOL_WORKER_EXITED', expect.stringMatching(/^(oom|cpu)$/)]);
    expect(outcomes[3]).toMatchObject({ count: 1 });
    expect(await pool.call('small/agent', 'spin', [60_000], { timeoutMs: 90_000 }).catch((e) => e.reason)).toBe('cpu');
    expect(await pool.call('big/agent', 'spin', [400])).toBe('spun');
    expect(invariants(pool)).toEqual([]);
  });

  it('is asked once per spawn; a bad answer fails that key with INVALID_OPTIONS naming the field', async () => {
    const asked: string[] = [];
    const answers: Record<string, unknown> = {
      bad: { maxExternalMb: -1 },
      odd: { cpus: 4 },
    };
    const pool = openPool({
      root: await root(),
      policy: (key) => {
        asked.push(key.swarm);
        if (key.swarm === 'small') throw new Error('no policy for small');
        return (answers[key.swarm] ?? {}) as KeyPolicy;
      },
    });
    const bad = await rejection(pool.call('bad/agent', 'env'));
    expect(bad.code).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
    expect(bad.issues?.map((issue) => issue.path.join('.'))).toEqual(['policy.maxExternalMb']);
    expect((await rejection(pool.call('odd/agent', 'env'))).issues?.map((issue) => issue.path.join('.'))).toEqual([
      'policy',
    ]);
    expect((await rejection(pool.call('small/agent', 'env'))).code).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
    for (let i = 0; i < 3; i += 1) await pool.call('big/agent', 'env');
    expect(asked.filter((swarm) => swarm === 'big')).toHaveLength(1);
    await pool.invalidate({ swarm: 'big' });
    await pool.call('big/agent', 'env');
    expect(asked.filter((swarm) => swarm === 'big')).toHaveLength(2);
    expect(await pool.call(NEIGHBOUR, 'notify', ['x'])).toMatchObject({ count: 1 });
  });

  it('overrides the per-key options where it names them: permissions, isolation, host, fetch, quotas', async () => {
    const api = await serve((_request, response) => response.end('from the api'));
    const pool = openPool({
      root: await root(),
      host: { tool: () => 'pool tool' },
      fetch: { small: { allow: [api.origin] }, big: { allow: [api.origin] } },
      processUser: 'host',
      policy: (key) =>
        key.swarm === 'small'
          ? {
              permissions: 'none',
              isolation: 'process',
              host: { tool: () => 'small tool' },
              fetch: null,
              quotas: { calls: { perSecond: 0.01, burst: 2 } },
            }
          : {},
    });
    // Its first calls wait for its first spawn, and are charged when its quota is known.
    const first = await Promise.all(
      Array.from({ length: 4 }, () => pool.call('small/agent', 'tool').catch((error) => error.code)),
    );
    expect(first).toEqual(['small tool', 'small tool', 'ERR_SANDPOOL_QUOTA', 'ERR_SANDPOOL_QUOTA']);
    expect(await pool.call('big/agent', 'tool')).toBe('pool tool');
    expect(await pool.call('big/agent', 'fetchIt', [api.origin])).toBe('from the api');
    expect(await pool.call('big/agent', 'pid')).toBe(process.pid);
    const hostname = readFileSync('/etc/hostname', 'utf8').length > 0 ? '/etc/hostname' : '/etc/passwd';
    expect(await pool.call('big/agent', 'read', [hostname])).toBe('ERR_ACCESS_DENIED');

    const other = openPool({
      root: await root(),
      fetch: { small: { allow: [api.origin] } },
      processUser: 'host',
      policy: (key) => (key.swarm === 'small' ? { permissions: 'none', isolation: 'process', fetch: null } : {}),
    });
    expect(await other.call('small/agent', 'fetchIt', [api.origin])).toBe('ERR_SANDPOOL_HOST_NOT_FOUND');
    expect(await other.call('small/agent', 'pid')).not.toBe(process.pid);
    expect(await other.call('small/agent', 'read', [hostname])).toBe(true);
  });
});
