import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Started } from './processes.js';

/** 4 swarms x 50 stems: enough keys that each of 3 nodes gets a share of them. */
export const KEYS = ['alpha', 'beta', 'gamma', 'delta'].flatMap((swarm) =>
  Array.from({ length: 50 }, (_, i) => `${swarm}/agent_${String(i).padStart(3, '0')}`),
);

/** One answer as the client saw it through the balancer. */
export interface Answer {
  key: string;
  status: number;
  node: string | null;
  code: string | null;
  pid: number | null;
}

/** Each key's agent answers with the pid of the process that runs it; `slow` takes its time first. */
export async function writeAgents(root: string): Promise<void> {
  for (const key of KEYS) {
    const [swarm, stem] = key.split('/') as [string, string];
    await mkdir(join(root, swarm, 'live'), { recursive: true });
    await writeFile(
      join(root, swarm, 'live', `${stem}.mjs`),
      [
        'export function where(n) { return { n, pid: process.pid }; }',
        'export async function slow(ms) {',
        '  await new Promise((resolve) => setTimeout(resolve, ms));',
        '  return { pid: process.pid };',
        '}',
        '',
      ].join('\n'),
    );
  }
}

/** One call through the balancer, the key in the path or in the x-sandpool-key header: both must route alike. */
export async function callThrough(
  base: string,
  key: string,
  inPath: boolean,
  fn: 'where' | 'slow' = 'where',
  arg = 1,
): Promise<Answer> {
  const url = inPath ? `${base}/v1/call/${key}` : `${base}/v1/call`;
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (!inPath) headers['x-sandpool-key'] = key;
  try {
    const response = await fetch(url, {
      method: 'POST',
      headers,
      body: JSON.stringify({ fn, args: [arg] }),
      signal: AbortSignal.timeout(30_000),
    });
    const body = (await response.json()) as { result?: { pid?: number }; code?: string };
    return {
      key,
      status: response.status,
      node: response.headers.get('x-sandpool-node'),
      code: body.code ?? null,
      pid: body.result?.pid ?? null,
    };
  } catch (error) {
    // fetch says only "fetch failed"; what failed is its cause (ECONNRESET, UND_ERR_SOCKET…).
    const cause = error instanceof Error && error.cause instanceof Error ? ` (${describeCause(error.cause)})` : '';
    return { key, status: 0, node: null, code: `${String(error)}${cause}`, pid: null };
  }
}

function describeCause(cause: Error): string {
  const code = (cause as { code?: unknown }).code;
  return typeof code === 'string' ? `${code}: ${cause.message}` : cause.message;
}

/** Calls every key once, `concurrency` at a time; answers in key order. */
export async function eachKey(
  keys: readonly string[],
  concurrency: number,
  call: (key: string, index: number) => Promise<Answer>,
): Promise<Answer[]> {
  const answers: Answer[] = new Array(keys.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let index = next++; index < keys.length; index = next++) answers[index] = await call(keys[index]!, index);
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return answers;
}

/** Until the balancer answers /healthz (from any node). */
export async function waitUntilServing(base: string, balancer: Started): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      if ((await fetch(`${base}/healthz`)).ok) return;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) throw new Error(`the balancer did not come up:\n${balancer.output()}`);
    await sleep(50);
  }
}

export function countBy<T>(items: readonly T[], keyOf: (item: T) => string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const item of items) counts.set(keyOf(item), (counts.get(keyOf(item)) ?? 0) + 1);
  return counts;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
