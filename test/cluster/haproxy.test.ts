import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Answer, callThrough, countBy, eachKey, KEYS, sleep, waitUntilServing, writeAgents } from './calls.js';
import { findHaproxy, startHaproxy, writeConfig } from './haproxy.js';
import { freePort, type ServeNode, type Started, startNode, stop } from './processes.js';

const haproxyBinary = findHaproxy();
const inCi = process.env.CI === 'true' || process.env.CI === '1';
if (haproxyBinary === null && !inCi) {
  console.warn('HAProxy cluster test skipped: haproxy is not installed (apt-get install haproxy); CI installs it');
}

/** Calls one at a time: the bound never applies (a lone call always fits), so only the hash decides. */
const ONE_AT_A_TIME = 1;
/** The hot key's calls in flight, each taking HOT_CALL_MS: far past half of the fleet's calls on one node. */
const HOT_IN_FLIGHT = 24;
const HOT_CALLS = 480;
const HOT_CALL_MS = 40;
const HOT_ALONE = 40;
/**
 * At most this share of calls made one at a time may land away from their key's home: HAProxy's
 * own accounting sends one on now and then (step 1); round robin or a plain hash would move
 * most of them.
 */
const RARELY = 0.05;

describe.skipIf(haproxyBinary === null && !inCi)(
  'three nodes behind HAProxy (balance hash, hash-type consistent, hash-balance-factor)',
  () => {
    const nodes: ServeNode[] = [];
    let haproxy: Started | null = null;
    let base = '';
    let work = '';

    beforeAll(async () => {
      if (haproxyBinary === null)
        throw new Error('haproxy is not installed: CI must install it before pnpm test:cluster');
      work = await mkdtemp(join(tmpdir(), 'sandpool-haproxy-'));
      const root = join(work, 'root');
      await writeAgents(root);
      for (const name of ['n1', 'n2', 'n3']) nodes.push(await startNode(root, name, KEYS.length));
      const dir = join(work, 'haproxy');
      await mkdir(dir);
      const port = await freePort();
      const config = await writeConfig(
        dir,
        port,
        nodes.map(({ name, port }) => ({ name, port })),
      );
      haproxy = startHaproxy(haproxyBinary, config);
      base = `http://127.0.0.1:${port}`;
      await waitUntilServing(base, haproxy);
      await waitUntilEveryNodeIsUp(base, haproxy);
    });

    afterAll(async () => {
      if (process.env.HAPROXY_LOG === '1' && haproxy !== null) console.log(haproxy.output());
      // Everything this file started goes, whatever failed: HAProxy first, so nothing reaches a node.
      if (haproxy !== null) await stop(haproxy, 'SIGTERM');
      await Promise.all(nodes.map((node) => stop(node, 'SIGTERM')));
      if (work !== '') await rm(work, { recursive: true, force: true });
    });

    it("keeps each key on one node, spreads a hot key's extra calls, and moves only a stopped node's keys", async () => {
      const pids = new Map(nodes.map((node) => [node.name, node.child.pid]));
      const call = (key: string, index: number): Promise<Answer> => callThrough(base, key, index % 2 === 0);
      const answered = (answers: readonly Answer[]): void => {
        for (const answer of answers) {
          expect(answer, JSON.stringify(answer)).toMatchObject({ status: 200 });
          // The node that says it answered really ran the call: its pid.
          expect(answer.pid, JSON.stringify(answer)).toBe(pids.get(answer.node ?? ''));
        }
      };
      const away = (answers: readonly Answer[], home: ReadonlyMap<string, string>): number =>
        answers.filter((answer) => answer.node !== home.get(answer.key)).length;

      // Every key's first call starts its worker: those, 16 at a time, before anything is measured.
      answered(await eachKey(KEYS, 16, call));

      // 1. Every key, three times, one call at a time, the key in the path or the header: its home
      //    is the node that answered it most. HAProxy counts a call as in flight until it has
      //    finished with it, a moment after the client has its answer: a client's next call can
      //    meet that count and, the fleet being nearly idle, be sent on past its node. That is
      //    rare (about 1 call in 100 to the same key here), so "stays home" is a rate.
      const passes = [0, 1, 2];
      const sequential: Answer[] = [];
      for (const pass of passes)
        sequential.push(...(await eachKey(KEYS, ONE_AT_A_TIME, (key, i) => call(key, i + pass))));
      answered(sequential);
      const home = homes(sequential);
      const awayWhenIdle = away(sequential, home);
      expect(awayWhenIdle, `calls away from home, one at a time: ${awayWhenIdle}`).toBeLessThanOrEqual(
        sequential.length * RARELY,
      );
      const spread = countBy(KEYS, (key) => home.get(key) ?? '');
      expect(spread.size, `keys per node: ${JSON.stringify([...spread])}`).toBe(3);

      // 2. Under an even load (16 calls in flight over all keys) nearly every call stays home:
      //    no node is past 1.5 times the mean for long.
      const even = await eachKey(KEYS, 16, call);
      answered(even);
      const awayUnderEvenLoad = away(even, home);
      expect(awayUnderEvenLoad).toBeLessThan(KEYS.length / 5);

      // 3. A hot key: one call at a time stays on its node; HOT_IN_FLIGHT at once put its node
      //    past the bound, and the extra calls go to the other nodes.
      const hot = KEYS[0]!;
      const hotHome = home.get(hot) ?? '';
      const alone = await eachKey(Array(HOT_ALONE).fill(hot), ONE_AT_A_TIME, (key, index) =>
        callThrough(base, key, index % 2 === 0, 'slow', HOT_CALL_MS),
      );
      answered(alone);
      const aloneAway = away(alone, home);
      // Few calls, so a wider margin: 1 of 40 went away in one run, and a broken hash moves most.
      expect(aloneAway, `hot key one at a time, away: ${aloneAway}`).toBeLessThanOrEqual(HOT_ALONE * 3 * RARELY);
      const crowd = await eachKey(Array(HOT_CALLS).fill(hot), HOT_IN_FLIGHT, (key, index) =>
        callThrough(base, key, index % 2 === 0, 'slow', HOT_CALL_MS),
      );
      answered(crowd);
      const byNode = countBy(crowd, (answer) => answer.node ?? '');
      const atHome = byNode.get(hotHome) ?? 0;
      // Counts, generously bounded: at 24 in flight a node holds at most 12 (1.5 x 24 / 3), so the
      // home node runs about half the calls and the next node on the key's ring the other half
      // (a lone hot key never needs a third node at this factor: two hold 2 x 1.5 / 3 of it).
      expect(atHome, JSON.stringify([...byNode])).toBeGreaterThan(HOT_CALLS / 5);
      expect(HOT_CALLS - atHome, JSON.stringify([...byNode])).toBeGreaterThan(HOT_CALLS / 5);

      // 4. Calls keep flowing, one at a time, while a node drains and exits, and for a while after.
      const victim = nodes.find((node) => node.name !== hotHome) ?? nodes[1]!;
      const victimKeys = new Set(KEYS.filter((key) => home.get(key) === victim.name));
      const during: Answer[] = [];
      let running = true;
      const load = (async () => {
        while (running) during.push(...(await eachKey(KEYS, ONE_AT_A_TIME, call)));
      })();
      await sleep(300);
      const stopping = Date.now();
      const exit = await stop(victim, 'SIGTERM');
      const stopMs = Date.now() - stopping;
      await sleep(1_500);
      running = false;
      await load;
      expect(exit).toEqual({ code: 0, signal: null });

      // Only the stopped node's keys may fail, and only with an error a client can act on;
      // the other keys answered, from home but for the rare call the in-flight count sends on.
      const others = during.filter((answer) => !victimKeys.has(answer.key));
      for (const answer of during) {
        if (victimKeys.has(answer.key) && answer.status !== 200) {
          expect(answer.code, JSON.stringify(answer)).toMatch(/^ERR_SANDPOOL_/);
        }
      }
      answered(others);
      expect(away(others, home)).toBeLessThanOrEqual(others.length * RARELY);

      // 5. With it gone: every call succeeds, the others' keys stayed, its keys spread over both others.
      const after: Answer[] = [];
      for (const pass of passes) after.push(...(await eachKey(KEYS, ONE_AT_A_TIME, (key, i) => call(key, i + pass))));
      answered(after);
      const homeAfter = homes(after);
      const stayed = KEYS.filter((key) => !victimKeys.has(key) && homeAfter.get(key) === home.get(key));
      expect(stayed.length).toBe(KEYS.length - victimKeys.size);
      const landed = countBy([...victimKeys], (key) => homeAfter.get(key) ?? '');
      expect([...landed.keys()].sort()).toEqual(nodes.filter((node) => node !== victim).map((node) => node.name));
      const awayAfter = away(after, homeAfter);
      expect(awayAfter).toBeLessThanOrEqual(after.length * RARELY);

      const failed = during.filter((answer) => answer.status !== 200);
      console.log(
        `haproxy: ${KEYS.length} keys, homes ${JSON.stringify(Object.fromEntries(spread))}; ` +
          `one at a time: ${awayWhenIdle} of ${sequential.length} calls away from home; ` +
          `16 in flight over all keys: ${awayUnderEvenLoad} of ${KEYS.length} away; ` +
          `hot key ${hot} (home ${hotHome}): one at a time ${aloneAway} of ${HOT_ALONE} away, ` +
          `${HOT_CALLS} calls at ${HOT_IN_FLIGHT} in flight: ${JSON.stringify(Object.fromEntries(byNode))}; ` +
          `${victim.name}'s ${victimKeys.size} keys moved to ${JSON.stringify(Object.fromEntries(landed))}, ` +
          `the others' stayed (${awayAfter} of ${after.length} calls away after); ` +
          `${victim.name} exited ${stopMs} ms after SIGTERM; ${during.length} calls around the stop, ` +
          `failed (${victim.name} keys only): ${JSON.stringify(Object.fromEntries(countBy(failed, (a) => `${a.status} ${a.code}`)))}`,
      );
      // Sequential passes over 200 keys, on a machine the suite shares: longer than the cluster's default.
    }, 400_000);

    it("answers HAProxy's own errors as JSON 502 ERR_SANDPOOL_HTTP_UNREACHABLE, and passes the nodes' own through", async () => {
      // A node's own 5xx: a call past its timeout is the node's 504, with its header.
      const timedOut = await fetch(`${base}/v1/call/${KEYS[1]}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ fn: 'slow', args: [2_000], timeoutMs: 50 }),
      });
      expect(timedOut.status).toBe(504);
      expect(timedOut.headers.get('x-sandpool-node')).not.toBeNull();
      expect(await timedOut.json()).toMatchObject({ code: 'ERR_SANDPOOL_TIMEOUT' });

      // No node left: HAProxy's 503 becomes the same 502 JSON nginx gives.
      await Promise.all(nodes.map((node) => stop(node, 'SIGTERM')));
      const deadline = Date.now() + 15_000;
      let answer: Response;
      do {
        answer = await fetch(`${base}/v1/call/${KEYS[2]}`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ fn: 'where', args: [1] }),
        });
        if (answer.status === 502) break;
        await answer.arrayBuffer();
        await sleep(100);
      } while (Date.now() < deadline);
      expect(answer.status).toBe(502);
      expect(answer.headers.get('content-type')).toBe('application/json');
      expect(await answer.json()).toEqual({
        code: 'ERR_SANDPOOL_HTTP_UNREACHABLE',
        message: 'no answer from a sandpool node: none could be reached, or the connection closed before it answered',
      });
    });
  },
);

/** Each key's home: the node that answered most of its calls. */
function homes(answers: readonly Answer[]): Map<string, string> {
  const votes = new Map<string, Map<string, number>>();
  for (const { key, node } of answers) {
    const byNode = votes.get(key) ?? new Map<string, number>();
    byNode.set(node ?? '', (byNode.get(node ?? '') ?? 0) + 1);
    votes.set(key, byNode);
  }
  const home = new Map<string, string>();
  for (const [key, byNode] of votes) home.set(key, [...byNode].sort((a, b) => b[1] - a[1])[0]?.[0] ?? '');
  return home;
}

/** Round robin over the nodes HAProxy holds up (a request without a key) until each has answered. */
async function waitUntilEveryNodeIsUp(base: string, haproxy: Started): Promise<void> {
  const seen = new Set<string>();
  const deadline = Date.now() + 15_000;
  while (seen.size < 3) {
    const response = await fetch(`${base}/readyz`);
    const node = response.headers.get('x-sandpool-node');
    if (response.ok && node !== null) seen.add(node);
    if (Date.now() > deadline) throw new Error(`HAProxy did not mark every node up:\n${haproxy.output()}`);
    if (seen.size < 3) await sleep(50);
  }
}
