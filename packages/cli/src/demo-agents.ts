import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** What one generation of a swarm's notifier looks like; each demo edit writes a new one. */
export interface Generation {
  readonly swarm: string;
  readonly version: string;
  /** JS expression over `msg` that the helper's `format(msg)` returns. */
  readonly format: string;
}

export const STEM = 'notifier_agent';

/**
 * Writes `notifier_agent.mjs` and its sibling helper `format.mjs` into the swarm's live
 * folder. Both files carry the version: the helper reports its own, so the output shows
 * that a snapshot's agent imports the snapshot's helper, not whichever helper is live.
 */
export async function writeGeneration(root: string, generation: Generation): Promise<void> {
  const live = join(root, generation.swarm, 'live');
  await mkdir(live, { recursive: true });
  const label = `${generation.swarm} ${generation.version}`;
  await writeFile(
    join(live, 'format.mjs'),
    [
      `export const HELPER_VERSION = 'format ${label}';`,
      `export function format(msg) { return ${generation.format}; }`,
      '',
    ].join('\n'),
  );
  await writeFile(
    join(live, `${STEM}.mjs`),
    [
      "import { threadId } from 'node:worker_threads';",
      "import { format, HELPER_VERSION } from './format.mjs';",
      '',
      '// Module state: one counter per loaded copy of this file, so per key.',
      'let count = 0;',
      '',
      'export function notify(msg) {',
      '  count += 1;',
      `  return { version: '${label}', text: format(msg), count, helper: HELPER_VERSION, threadId };`,
      '}',
      '',
    ].join('\n'),
  );
}

/** What `notify` returns, checked rather than trusted: it crossed a thread boundary. */
export interface NotifyResult {
  readonly version: string;
  readonly text: string;
  readonly count: number;
  readonly helper: string;
  readonly threadId: number;
}

export function asNotifyResult(value: unknown): NotifyResult {
  if (typeof value !== 'object' || value === null) throw new TypeError('notify returned a non-object');
  const { version, text, count, helper, threadId } = value as Record<string, unknown>;
  if (
    typeof version !== 'string' ||
    typeof text !== 'string' ||
    typeof count !== 'number' ||
    typeof helper !== 'string' ||
    typeof threadId !== 'number'
  ) {
    throw new TypeError(`notify returned an unexpected shape: ${JSON.stringify(value)}`);
  }
  return { version, text, count, helper, threadId };
}

export const ASSISTANT = 'assistant';

/**
 * An agent as platforms write them: an `async function*` whose chunks the host reads with
 * `pool.stream()`, a function that reaches data only through a host capability (under
 * strict permissions it has no other way out of its folder), and functions that reach an
 * HTTP API only through the built-in `fetch`, under its swarm's allowlist.
 */
export async function writeAssistant(root: string, swarm: string): Promise<void> {
  const live = join(root, swarm, 'live');
  await mkdir(live, { recursive: true });
  await writeFile(
    join(live, `${ASSISTANT}.mjs`),
    [
      'export async function* answer(question) {',
      "  const words = ['Each', 'key', 'runs', 'on', 'a', 'worker', 'of', 'its', 'own.'];",
      '  for (const word of words) {',
      '    // A model would produce tokens at its own pace: the host prints each as it comes.',
      '    await new Promise((resolve) => setTimeout(resolve, 20));',
      '    if (sandpool.signal.aborted) return;',
      '    yield word;',
      '  }',
      '}',
      '',
      'export async function greet(userId) {',
      '  const user = await sandpool.host.lookupUser(userId);',
      "  return { key: sandpool.key, text: 'hello ' + user.name + ', your plan is ' + user.plan };",
      '}',
      '',
      '// The host adds the API token: this code never has it, and reaches no other origin.',
      'export async function orders(api) {',
      "  const response = await sandpool.host.fetch(api + '/orders', { headers: { accept: 'application/json' } });",
      '  const { orders } = await response.json();',
      '  return { status: response.status, orders, headers: [...response.headers] };',
      '}',
      '',
      'export async function probe(url) {',
      '  try {',
      '    const response = await sandpool.host.fetch(url);',
      "    return 'reached: ' + response.status;",
      '  } catch (error) {',
      '    return error.code;',
      '  }',
      '}',
      '',
    ].join('\n'),
  );
}

export interface DemoUser {
  readonly name: string;
  readonly plan: string;
}

/** The host's data: agents never see this table, only the answers `lookupUser` gives them. */
export const USERS: Readonly<Record<number, DemoUser>> = {
  7: { name: 'Ada', plan: 'team' },
  9: { name: 'Linus', plan: 'free' },
};

export interface GreetResult {
  readonly key: string;
  readonly text: string;
}

export function asGreetResult(value: unknown): GreetResult {
  const { key, text } = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>;
  if (typeof key !== 'string' || typeof text !== 'string') {
    throw new TypeError(`greet returned an unexpected shape: ${JSON.stringify(value)}`);
  }
  return { key, text };
}

export interface OrdersResult {
  readonly status: number;
  readonly orders: readonly string[];
  readonly headers: readonly (readonly [string, string])[];
}

export function asOrdersResult(value: unknown): OrdersResult {
  const { status, orders, headers } = (typeof value === 'object' && value !== null ? value : {}) as Record<
    string,
    unknown
  >;
  if (typeof status !== 'number' || !Array.isArray(orders) || !Array.isArray(headers)) {
    throw new TypeError(`orders returned an unexpected shape: ${JSON.stringify(value)}`);
  }
  return { status, orders: orders.map(String), headers: headers as [string, string][] };
}
