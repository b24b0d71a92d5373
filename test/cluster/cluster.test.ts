import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type Answer,
  callThrough,
  countBy,
  eachKey as eachKeyAt,
  KEYS,
  sleep,
  waitUntilServing,
  writeAgents,
} from './calls.js';
import { findNginx, startNginx, writeConfig } from './nginx.js';
import { freePort, type ServeNode, type Started, startNode, stop } from './processes.js';

const CONCURRENCY = 16;
const eachKey = (keys: readonly string[], call: (key: string, index: number) => Promise<Answer>) =>
  eachKeyAt(keys, CONCURRENCY, call);

const nginxBinary = findNginx();
const inCi = process.env.CI === 'true' || process.env.CI === '1';
if (nginxBinary === null && !inCi) {
  console.warn('cluster test skipped: nginx is not installed (apt-get install nginx-light); CI installs it');
}

describe.skipIf(nginxBinary === null && !inCi)('three nodes behind nginx (hash $sandpool_key consistent)', () => {
  const nodes: ServeNode[] = [];
  let nginx: Started | null = null;
  let base = '';
  let work = '';

  beforeAll(async () => {
    if (nginxBinary === null) throw new Error('nginx is not installed: CI must install it before pnpm test:cluster');
    work = await mkdtemp(join(tmpdir(), 'sandpool-cluster-'));
    const root = join(work, 'root');
    await writeAgents(root);
    for (const name of ['n1', 'n2', 'n3']) nodes.push(await startNode(root, name, KEYS.length));
    const nginxDir = join(work, 'nginx');
    await mkdir(nginxDir);
    const port = await freePort();
    const config = await writeConfig(
      nginxDir,
      port,
      nodes.map((node) => node.port),
    );
    nginx = startNginx(nginxBinary, nginxDir, config);
    base = `http://127.0.0.1:${port}`;
    await waitUntilServing(base, nginx);
  });

  afterAll(async () => {
    // Everything this file started goes, whatever failed: nginx first, so nothing reaches a node.
    if (nginx !== null) await stop(nginx, 'SIGQUIT');
    await Promise.all(nodes.map((node) => stop(node, 'SIGTERM')));
    if (work !== '') await rm(work, { recursive: true, force: true });
  });

  it('keeps each key on one node, and moves only the keys of a node that stops', async () => {
    const pids = new Map(nodes.map((node) => [node.name, node.child.pid]));
    const call = (key: string, index: number): Promise<Answer> => callThrough(base, key, index % 2 === 0);

    // 1. Every key, twice: the same node both times, and that node really ran it (its pid).
    const first = await eachKey(KEYS, call);
    const second = await eachKey(KEYS, call);
    const home = new Map<string, string>();
    for (const [index, answer] of first.entries()) {
      expect(answer, JSON.stringify(answer)).toMatchObject({ status: 200 });
      expect(second[index]?.node).toBe(answer.node);
      expect(answer.pid).toBe(pids.get(answer.node ?? ''));
      home.set(answer.key, answer.node ?? '');
    }
    // One machine, one worker per key: each key is warm in its home process only, so the
    // processes' memory adds up to the keys', not to keys times processes.
    const warm = new Map<string, string[]>();
    for (const node of nodes) {
      const listing = (await (await fetch(`${node.url}/v1/keys?limit=${KEYS.length}`)).json()) as {
        keys: { key: string; workers: number }[];
      };
      for (const { key, workers } of listing.keys)
        if (workers > 0) warm.set(key, [...(warm.get(key) ?? []), node.name]);
    }
    expect([...warm.keys()].sort()).toEqual([...KEYS].sort());
    for (const key of KEYS) expect(warm.get(key), key).toEqual([home.get(key)]);
    const victim = nodes[1]!;
    const victimKeys = new Set(KEYS.filter((key) => home.get(key) === victim.name));
    const spread = countBy(KEYS, (key) => home.get(key) ?? '');
    expect(spread.size, `keys per node: ${JSON.stringify([...spread])}`).toBe(3);

    // 2. Calls keep flowing while n2 drains and exits, and for a while after.
    const during: Answer[] = [];
    let running = true;
    const load = (async () => {
      while (running) during.push(...(await eachKey(KEYS, call)));
    })();
    await sleep(300);
    const stopping = Date.now();
    const exit = await stop(victim, 'SIGTERM');
    const stopMs = Date.now() - stopping;
    await sleep(1_000);
    running = false;
    await load;
    expect(exit).toEqual({ code: 0, signal: null });

    // Only n2's keys may fail, and only with an error a client can act on; other keys never moved.
    for (const answer of during) {
      if (victimKeys.has(answer.key)) {
        if (answer.status !== 200) expect(answer.code, JSON.stringify(answer)).toMatch(/^ERR_SANDPOOL_/);
        continue;
      }
      expect(answer, JSON.stringify(answer)).toMatchObject({ status: 200, node: home.get(answer.key) });
    }

    // 3. With n2 gone: every call succeeds, survivors' keys stayed, n2's keys spread over both others.
    const after = await eachKey(KEYS, call);
    const moved = new Map<string, string>();
    for (const answer of after) {
      expect(answer, JSON.stringify(answer)).toMatchObject({ status: 200 });
      expect(answer.pid).toBe(pids.get(answer.node ?? ''));
      if (victimKeys.has(answer.key)) moved.set(answer.key, answer.node ?? '');
      else expect(answer.node).toBe(home.get(answer.key));
    }
    const failed = during.filter((answer) => answer.status !== 200);
    const landed = countBy([...moved.keys()], (key) => moved.get(key) ?? '');
    expect([...landed.keys()].sort()).toEqual(['n1', 'n3']);
    console.log(
      `cluster: ${KEYS.length} keys, homes ${JSON.stringify(Object.fromEntries(spread))}; ` +
        `n2's ${victimKeys.size} keys moved to ${JSON.stringify(Object.fromEntries(landed))}; ` +
        `n2 exited ${stopMs} ms after SIGTERM; ${during.length} calls around the stop, ` +
        `failed (n2 keys only): ${JSON.stringify(Object.fromEntries(countBy(failed, (a) => `${a.status} ${a.code}`)))}`,
    );
    // 50 s on a quiet machine; past 120 s at a load of 50 (three nodes start 200 workers).
  }, 300_000);
});
