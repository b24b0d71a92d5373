/**
 * Worker entry: a blank runtime until `load` names its key's module, then one module
 * answering calls. No zod here: it would cost every worker megabytes.
 */
import { parentPort } from 'node:worker_threads';
import { isPrimitive } from '../protocol/clone.js';
import type {
  CallBatch,
  FromWorker,
  LoadRequest,
  Outcome,
  RemoteRequest,
  ToWorker,
} from '../protocol/messages.js';
import { toRemoteError } from '../protocol/messages.js';
import { LoadFailure, loadAgent } from './load.js';

type AgentFunction = (...args: unknown[]) => unknown;

if (parentPort === null) throw new Error('sandpool worker entry must run in a worker thread');
const port = parentPort;

for (const stream of ['stdout', 'stderr'] as const) {
  const write = (chunk: unknown, encoding?: unknown, callback?: unknown): boolean => {
    const text = typeof chunk === 'string' ? chunk : Buffer.from(chunk as Uint8Array).toString('utf8');
    port.postMessage({ t: 'out', stream, text } satisfies FromWorker);
    const done = typeof encoding === 'function' ? encoding : callback;
    if (typeof done === 'function') queueMicrotask(() => done());
    return true;
  };
  process[stream].write = write as typeof process.stdout.write;
}

let exportsOf: Record<string, unknown> | null = null;
let fallback: Record<string, unknown> | null = null;
const functions = new Map<string, Bound>();

port.on('message', (message: ToWorker) => {
  switch (message.t) {
    case 'calls':
      return onCalls(message);
    case 'load':
      return void onLoad(message);
    case 'remote':
      return void exposeRemote(message.port);
  }
});

/**
 * comlink and the manifest check load on first use, not at boot: every worker start pays
 * for what it imports (about 10 ms for both here), and most never need them.
 */
async function exposeRemote(remotePort: RemoteRequest['port']): Promise<void> {
  const { expose } = await import('comlink/dist/esm/comlink.mjs');
  expose({ invoke }, remotePort as unknown as Parameters<typeof expose>[1]);
}

async function onLoad(request: LoadRequest): Promise<void> {
  try {
    const namespace = await loadAgent(request);
    exportsOf = namespace;
    // CommonJS agents (.cjs, or .js under a CommonJS package) expose `module.exports` as the default export.
    const def = namespace.default;
    if ((typeof def === 'object' && def !== null) || typeof def === 'function') {
      fallback = def as Record<string, unknown>;
    }
    post({ t: 'ready' });
  } catch (error) {
    if (error instanceof LoadFailure) post({ t: 'load-failed', code: error.code, error: toRemoteError(error.failure) });
    else post({ t: 'load-failed', code: 'ERR_SANDPOOL_MODULE_LOAD', error: toRemoteError(error) });
  }
}

/** An agent function with the object it belongs to, so `this` works as in the agent's own calls. */
interface Bound {
  fn: AgentFunction;
  self: Record<string, unknown>;
}

function lookup(name: string): Bound | null {
  const cached = functions.get(name);
  if (cached !== undefined) return cached;
  for (const self of [exportsOf, fallback]) {
    const fn = self !== null && Object.hasOwn(self, name) ? self[name] : undefined;
    if (typeof fn !== 'function') continue;
    const bound = { fn: fn as AgentFunction, self: self as Record<string, unknown> };
    functions.set(name, bound);
    return bound;
  }
  return null; // misses are not cached: names come from callers
}

let okReplies: unknown[] = [];
let errReplies: unknown[] = [];

function onCalls({ calls }: CallBatch): void {
  for (let i = 0; i < calls.length; i += 3) {
    const id = calls[i] as number;
    const result = run(calls[i + 1] as string, calls[i + 2] as unknown[]);
    if (result instanceof Promise) void result.then((outcome) => queueReply(id, outcome));
    else queueReply(id, result);
  }
}

/**
 * Replies settled in the same tick leave together, after it: a lone reply waits for nothing.
 * An object result is cloned at once instead, as postMessage would: the agent's next call
 * in this tick may change an object it returned (module state, say).
 */
function queueReply(id: number, outcome: Outcome): void {
  if (outcome.ok && !isPrimitive(outcome.value)) {
    flushReplies();
    sendReplies([id, outcome.value], []);
    return;
  }
  if (okReplies.length === 0 && errReplies.length === 0) queueMicrotask(flushReplies);
  if (outcome.ok) okReplies.push(id, outcome.value);
  else errReplies.push(id, outcome.code, outcome.error);
}

function flushReplies(): void {
  if (okReplies.length === 0 && errReplies.length === 0) return;
  const ok = okReplies;
  const err = errReplies;
  okReplies = [];
  errReplies = [];
  sendReplies(ok, err);
}

function sendReplies(ok: unknown[], err: unknown[]): void {
  try {
    post({ t: 'done', ok, err });
    return;
  } catch {
    // One value cannot be cloned: send them one by one to find it.
  }
  if (err.length > 0) post({ t: 'done', ok: [], err });
  for (let i = 0; i < ok.length; i += 2) {
    try {
      post({ t: 'done', ok: [ok[i], ok[i + 1]], err: [] });
    } catch (error) {
      post({ t: 'done', ok: [], err: [ok[i], 'ERR_SANDPOOL_DATA_CLONE', toRemoteError(error)] });
    }
  }
}

/**
 * The function comlink exposes for `remote()`. A result that cannot be cloned needs no check
 * here: comlink answers it with a rejection, which the coordinator reports as DATA_CLONE.
 */
function invoke(fn: string, args: unknown[]): Outcome | Promise<Outcome> {
  return run(fn, args);
}

/** Runs one agent function; sync results stay sync so a plain function costs no extra tick. */
function run(name: string, args: unknown[]): Outcome | Promise<Outcome> {
  const bound = lookup(name);
  if (bound === null) {
    return {
      ok: false,
      code: 'ERR_SANDPOOL_EXPORT_NOT_FOUND',
      error: { name: 'Error', message: `the agent has no exported function ${JSON.stringify(name)}` },
    };
  }
  let value: unknown;
  try {
    value = bound.fn.apply(bound.self, args);
  } catch (error) {
    return agentError(error);
  }
  if (isThenable(value)) {
    return Promise.resolve(value).then((resolved): Outcome => ({ ok: true, value: resolved }), agentError);
  }
  return { ok: true, value };
}

function agentError(error: unknown): Outcome {
  return { ok: false, code: 'ERR_SANDPOOL_AGENT_ERROR', error: toRemoteError(error) };
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (
    (typeof value === 'object' || typeof value === 'function') &&
    value !== null &&
    typeof (value as { then?: unknown }).then === 'function'
  );
}

function post(message: FromWorker): void {
  port.postMessage(message);
}
