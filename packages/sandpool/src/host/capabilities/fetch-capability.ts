/**
 * The `fetch` pool option: which keys get `sandpool.host.fetch`, under which policy. Off
 * unless a swarm has a policy (`{ [swarm]: policy }`, checked at createPool) or a function
 * of the key returns one (checked per spawn). A key's fetcher, and the connections it opens,
 * exist from its first request until its worker ends.
 */
import { invalidOptions, unusableOptions } from '../../errors.js';
import { issuesOf } from '../../issues.js';
import type { ResolvedKey } from '../../key.js';
import type { FetchOption, FetchPolicy, HostCapability, HostContext } from '../../types.js';
import { askForKey } from '../policy/ask.js';
import { createFetcher, type Fetcher, type FetchInit } from './fetch.js';
import { FetchPolicySchema, parseFetchPolicy } from './fetch-policy.js';
import { HostStream } from './host-bodies.js';

/** A key's built-in `fetch`, and how to let its connections go. */
export interface FetchCapability {
  readonly capability: HostCapability;
  close(): Promise<void>;
}

/** Checks every policy of a static `fetch` option; throws INVALID_OPTIONS naming the swarm. */
export function checkFetchOption(option: FetchOption | undefined): void {
  if (option === undefined || typeof option === 'function') return;
  for (const [swarm, policy] of Object.entries(option)) {
    const parsed = FetchPolicySchema.safeParse(policy);
    if (parsed.success) continue;
    const issues = issuesOf(parsed.error).map((issue) => ({ ...issue, path: ['fetch', swarm, ...issue.path] }));
    throw invalidOptions('pool options', issues);
  }
}

/**
 * The key's fetch policy, checked, or null when it has none: `own` (its `policy` answer's)
 * where given, else the `fetch` option's. Throws INVALID_OPTIONS, which fails that key's calls.
 */
export function fetchPolicyFor(
  option: FetchOption | undefined,
  key: ResolvedKey,
  own: FetchPolicy | null | undefined,
): FetchPolicy | null {
  const policy = own !== undefined ? own : optionFor(option, key);
  if (policy === undefined || policy === null) return null;
  try {
    parseFetchPolicy(policy);
  } catch (error) {
    const from = own === undefined ? 'fetch' : 'policy';
    throw unusableOptions(`${from}(${key.text}) gave an invalid fetch policy`, { key: key.text, cause: error });
  }
  return policy as FetchPolicy;
}

/** The `fetch` option's answer for a key: its swarm's policy, or the function's. */
function optionFor(option: FetchOption | undefined, key: ResolvedKey): unknown {
  if (option === undefined) return null;
  if (typeof option === 'function') return askForKey('fetch', option, key);
  return Object.hasOwn(option, key.swarm) ? option[key.swarm] : null;
}

/**
 * `sandpool.host.fetch(url, init)` for one key: the response's head answers the host call,
 * and its body follows as the agent reads it (see host-bodies.ts). The fetcher is made at
 * the first request.
 */
export function fetchCapability(policy: FetchPolicy): FetchCapability {
  let fetcher: Fetcher | null = null;
  const capability = async (ctx: HostContext, url: string, init?: FetchInit): Promise<HostStream> => {
    fetcher ??= createFetcher(policy);
    const { body, ...head } = await fetcher(url, init, ctx.signal);
    return new HostStream(head, body);
  };
  return {
    capability: capability as HostCapability,
    close: () => fetcher?.close() ?? Promise.resolve(),
  };
}
