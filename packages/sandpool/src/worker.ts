/**
 * Worker entry: a blank runtime until `load` names its key's module, then one module
 * answering calls. No zod here: it would cost every worker megabytes.
 */
import { pathToFileURL } from 'node:url';
import { parentPort } from 'node:worker_threads';
import { expose } from 'comlink/dist/esm/comlink.mjs';
import { verifyTree } from './manifest.js';
import type { CallRequest, FailureCode, FromWorker, LoadRequest, Outcome, ToWorker } from './protocol.js';
import { toRemoteError } from './protocol.js';

type AgentFunction = (...args: unknown[]) => unknown;

if (parentPort === null) throw new Error('sandpool worker entry must run in a worker thread');
const port = parentPort;

let exportsOf: Record<string, unknown> | null = null;
let fallback: Record<string, unknown> | null = null;
const functions = new Map<string, AgentFunction | null>();

port.on('message', (message: ToWorker) => {
  switch (message.t) {
    case 'call':
      return onCall(message);
    case 'load':
      return void onLoad(message);
    case 'remote':
      return expose({ invoke }, message.port as unknown as Parameters<typeof expose>[1]);
  }
});

async function onLoad(request: LoadRequest): Promise<void> {
  let stage: FailureCode = 'ERR_SANDPOOL_SNAPSHOT_CORRUPT';
  try {
    if (request.verifyDir !== null) await verifyTree(request.verifyDir, request.key);
    stage = 'ERR_SANDPOOL_MODULE_LOAD';
    const namespace = (await import(pathToFileURL(request.file).href)) as Record<string, unknown>;
    exportsOf = namespace;
    // CommonJS agents (.cjs, or .js under a CommonJS package) expose `module.exports` as the default export.
    const def = namespace.default;
    if ((typeof def === 'object' && def !== null) || typeof def === 'function') {
      fallback = def as Record<string, unknown>;
    }
    post({ t: 'ready' });
  } catch (error) {
    post({ t: 'load-failed', code: stage, error: toRemoteError(error) });
  }
}

function lookup(name: string): AgentFunction | null {
  let fn = functions.get(name);
  if (fn !== undefined) return fn;
  const direct = exportsOf !== null && Object.hasOwn(exportsOf, name) ? exportsOf[name] : undefined;
  const viaDefault = fallback !== null && Object.hasOwn(fallback, name) ? fallback[name] : undefined;
  const found = typeof direct === 'function' ? direct : viaDefault;
  fn = typeof found === 'function' ? (found as AgentFunction) : null;
  functions.set(name, fn);
  return fn;
}

function onCall({ id, fn, args }: CallRequest): void {
  const settle = (outcome: Outcome): void => {
    if (outcome.ok) reply({ t: 'ok', id, value: outcome.value }, id);
    else post({ t: 'err', id, code: outcome.code, error: outcome.error });
  };
  const result = run(fn, args);
  if (result instanceof Promise) void result.then(settle);
  else settle(result);
}

function invoke(fn: string, args: unknown[]): Outcome | Promise<Outcome> {
  const result = run(fn, args);
  // comlink posts the value itself: check it can be cloned so the caller gets DATA_CLONE, not a hang.
  const checked = (outcome: Outcome): Outcome => {
    if (!outcome.ok) return outcome;
    try {
      structuredClone(outcome.value);
      return outcome;
    } catch (error) {
      return { ok: false, code: 'ERR_SANDPOOL_DATA_CLONE', error: toRemoteError(error) };
    }
  };
  return result instanceof Promise ? result.then(checked) : checked(result);
}

/** Runs one agent function; sync results stay sync so a plain function costs no extra tick. */
function run(name: string, args: unknown[]): Outcome | Promise<Outcome> {
  const fn = lookup(name);
  if (fn === null) {
    return {
      ok: false,
      code: 'ERR_SANDPOOL_EXPORT_NOT_FOUND',
      error: { name: 'Error', message: `the agent has no exported function ${JSON.stringify(name)}` },
    };
  }
  let value: unknown;
  try {
    value = fn.apply(exportsOf === null || Object.hasOwn(exportsOf, name) ? exportsOf : fallback, args);
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

function reply(message: FromWorker, id: number): void {
  try {
    port.postMessage(message);
  } catch (error) {
    post({ t: 'err', id, code: 'ERR_SANDPOOL_DATA_CLONE', error: toRemoteError(error) });
  }
}

function post(message: FromWorker): void {
  port.postMessage(message);
}
