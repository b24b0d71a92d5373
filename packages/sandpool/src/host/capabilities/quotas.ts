/**
 * Quotas and capability usage per key: each key's own token buckets (its calls, and its calls
 * and bytes of each capability) and its counts, for limits and for billing. They outlive the
 * key's workers (a respawn gets no fresh tokens), bounded to MAX_KEYS keys.
 */
import type { ResolvedQuotas } from '../../options.js';
import type { HostUsage } from '../../types.js';
import { TokenBucket } from './token-bucket.js';

/** Keys whose quotas and usage are kept at most: the first seen are forgotten first. */
const MAX_KEYS = 10_000;

type HostQuota = NonNullable<ResolvedQuotas['host']>[string];

/** A quota's burst when none is given: one second's worth, at least one. */
function burstOf(rate: { perSecond: number; burst?: number | undefined }): number {
  return rate.burst ?? Math.max(1, Math.ceil(rate.perSecond));
}

/** One capability's buckets for one key. */
class HostLimit {
  readonly calls: TokenBucket | null;
  readonly bytes: TokenBucket | null;

  constructor(quota: HostQuota) {
    const { perSecond, burst } = quota;
    this.calls = perSecond === undefined ? null : new TokenBucket(perSecond, burstOf({ perSecond, burst }));
    this.bytes =
      quota.bytesPerSecond === undefined ? null : new TokenBucket(quota.bytesPerSecond, quota.bytesPerSecond);
  }
}

/** One key's limits and usage. */
export class KeyQuota {
  private calls: TokenBucket | null = null;
  private host = new Map<string, HostLimit>();
  private quotas: ResolvedQuotas | undefined = undefined;
  /** Calls refused by the calls quota. */
  refused = 0;
  readonly usage = new Map<string, HostUsage>();

  /** The key's quotas from now on; buckets of a rate that stays keep what is left in them. */
  configure(quotas: ResolvedQuotas | undefined): void {
    if (quotas === this.quotas) return;
    this.quotas = quotas;
    const calls = quotas?.calls;
    if (calls === undefined) this.calls = null;
    else if (this.calls === null) this.calls = new TokenBucket(calls.perSecond, burstOf(calls));
    else this.calls.reset(calls.perSecond, burstOf(calls));
    this.host = new Map(
      Object.entries(quotas?.host ?? {}).map(([name, quota]) => [name, this.host.get(name) ?? new HostLimit(quota)]),
    );
  }

  /** Whether the key's calls are limited. */
  get limitsCalls(): boolean {
    return this.calls !== null;
  }

  /** Takes a call's token; false (counted) when the key is over its calls quota. */
  takeCall(): boolean {
    if (this.calls === null || this.calls.take()) return true;
    this.refused += 1;
    return false;
  }

  /** Admits a host call of `name` carrying `bytes` of arguments; false (counted) when over its quota. */
  takeHost(name: string, bytes: number): boolean {
    const usage = this.usageOf(name);
    const limit = this.host.get(name);
    if (limit !== undefined) {
      const over = (limit.bytes !== null && !limit.bytes.available) || (limit.calls !== null && !limit.calls.take());
      if (over) {
        usage.refused += 1;
        return false;
      }
    }
    usage.calls += 1;
    this.moved(name, bytes);
    return true;
  }

  /** Bytes a host call of `name` moved (its result, its body); the milliseconds its body should wait for its rate. */
  moved(name: string, bytes: number): number {
    this.usageOf(name).bytes += bytes;
    const limit = this.host.get(name)?.bytes;
    if (limit === undefined || limit === null) return 0;
    limit.charge(bytes);
    return limit.waitMs();
  }

  private usageOf(name: string): HostUsage {
    let usage = this.usage.get(name);
    if (usage === undefined) {
      usage = { calls: 0, refused: 0, bytes: 0 };
      this.usage.set(name, usage);
    }
    return usage;
  }
}

/** Every key's quota and usage, with the pool's default quotas. */
export class Quotas {
  private readonly keys = new Map<string, KeyQuota>();
  /** Some key was given a calls quota of its own. */
  private perKeyCalls = false;

  constructor(private readonly defaults: ResolvedQuotas | undefined) {}

  /** Whether any call may be refused for a calls quota: admission skips quotas otherwise. */
  get calls(): boolean {
    return this.perKeyCalls || this.defaults?.calls !== undefined;
  }

  /** The key's own quotas (its policy's), in place of the pool's defaults. */
  configure(key: string, quotas: ResolvedQuotas | undefined): KeyQuota {
    const quota = this.of(key);
    quota.configure(quotas);
    if (quotas?.calls !== undefined) this.perKeyCalls = true;
    return quota;
  }

  /** Admits a call of `key`; false when it is over its calls quota. */
  admitCall(key: string): boolean {
    const known = this.keys.get(key);
    if (known !== undefined) return known.takeCall();
    if (this.defaults?.calls === undefined) return true;
    return this.of(key).takeCall();
  }

  /** The key's quota, with the pool's defaults until it is configured otherwise. */
  of(key: string): KeyQuota {
    const known = this.keys.get(key);
    if (known !== undefined) return known;
    const quota = new KeyQuota();
    quota.configure(this.defaults);
    this.keys.set(key, quota);
    if (this.keys.size > MAX_KEYS) {
      const oldest = this.keys.keys().next().value;
      if (oldest !== undefined) this.keys.delete(oldest);
    }
    return quota;
  }

  /** What keyStats() says of the key's quotas and capability use. */
  read(key: string): { quotaRefused: number; host: Record<string, HostUsage> } {
    const quota = this.keys.get(key);
    if (quota === undefined) return { quotaRefused: 0, host: {} };
    return {
      quotaRefused: quota.refused,
      host: Object.fromEntries([...quota.usage].map(([name, usage]) => [name, { ...usage }])),
    };
  }
}
