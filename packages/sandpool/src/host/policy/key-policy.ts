/**
 * The `policy` option: every per-tenant setting from one function of the key, asked once per
 * spawn. Its answer is checked with the options' own schemas and laid over the pool's options,
 * which are the defaults; the options that are themselves per key (permissions, isolation,
 * host, fetch) are overridden only where the answer names them.
 */
import { unusableOptions } from '../../errors.js';
import { issuesOf } from '../../issues.js';
import type { ResolvedKey } from '../../key.js';
import {
  KeyPolicySchema,
  type ResolvedKeyPolicy,
  type ResolvedPoolOptions,
  type ResolvedQuotas,
} from '../../options.js';
import type { FetchPolicy, HostCapabilities, Isolation, PermissionPolicy } from '../../types.js';
import { askForKey } from './ask.js';

/** One key's settings for one spawn. */
export interface KeyPolicy {
  readonly resourceLimits: ResolvedPoolOptions['resourceLimits'];
  readonly maxExternalMb: number;
  readonly cpuTimeoutMs: number;
  readonly env: Readonly<Record<string, string>>;
  /** Its heap, external or env settings differ from the pool's: a blank worker booted with the pool's cannot serve it. */
  readonly ownSettings: boolean;
  /** Where the answer names them, its own; undefined: the pool option decides. */
  readonly quotas: ResolvedQuotas | undefined;
  readonly permissions: PermissionPolicy | undefined;
  readonly isolation: Isolation | undefined;
  readonly host: HostCapabilities | undefined;
  /** Its own fetch policy (null: none); undefined: the `fetch` option decides. */
  readonly fetch: FetchPolicy | null | undefined;
}

const defaults = new WeakMap<ResolvedPoolOptions, KeyPolicy>();

/** The pool's own settings, as every key has them without a policy (made once per pool). */
function poolDefaults(options: ResolvedPoolOptions): KeyPolicy {
  let policy = defaults.get(options);
  if (policy === undefined) {
    policy = {
      resourceLimits: options.resourceLimits,
      maxExternalMb: options.maxExternalMb,
      cpuTimeoutMs: options.cpuTimeoutMs,
      env: options.env,
      ownSettings: false,
      quotas: undefined,
      permissions: undefined,
      isolation: undefined,
      host: undefined,
      fetch: undefined,
    };
    defaults.set(options, policy);
  }
  return policy;
}

/** The key's settings for a spawn about to be made; throws INVALID_OPTIONS (that key's calls fail with it). */
export function keyPolicy(options: ResolvedPoolOptions, key: ResolvedKey): KeyPolicy {
  const base = poolDefaults(options);
  if (options.policy === undefined) return base;
  const parsed = KeyPolicySchema.safeParse(askForKey('policy', options.policy, key));
  if (!parsed.success) {
    const issues = issuesOf(parsed.error).map((issue) => ({ ...issue, path: ['policy', ...issue.path] }));
    const first = issues[0];
    const where = first === undefined ? '' : `: ${first.path.join('.')}: ${first.message}`;
    throw unusableOptions(`policy(${key.text}) returned an invalid policy${where}`, { key: key.text, issues });
  }
  return overlay(base, parsed.data);
}

function overlay(base: KeyPolicy, answer: ResolvedKeyPolicy): KeyPolicy {
  const given = Object.entries(answer.resourceLimits ?? {}).filter(([, mb]) => mb !== undefined);
  const resourceLimits: KeyPolicy['resourceLimits'] =
    given.length === 0 ? base.resourceLimits : { ...base.resourceLimits, ...Object.fromEntries(given) };
  const maxExternalMb = answer.maxExternalMb ?? base.maxExternalMb;
  const env = answer.env ?? base.env;
  return {
    resourceLimits,
    maxExternalMb,
    cpuTimeoutMs: answer.cpuTimeoutMs ?? base.cpuTimeoutMs,
    env,
    ownSettings: answer.resourceLimits !== undefined || answer.env !== undefined || answer.maxExternalMb !== undefined,
    quotas: answer.quotas,
    permissions: answer.permissions,
    isolation: answer.isolation,
    host: answer.host,
    fetch: answer.fetch,
  };
}
