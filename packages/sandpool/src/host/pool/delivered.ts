import type { AgentKey } from '../../key.js';
import type { CallOptions, StreamOptions } from '../../options.js';
import { DISPATCH, type Pool } from './pool.js';
import { PoolStream } from './streams.js';

/**
 * A call whose value its caller turns into what it sends on (the server's JSON) as part of
 * the call: a value that cannot be delivered fails the call with the error `deliver` throws
 * (DATA_CLONE for anything else), so the caller, the key's totals and the call's record and
 * span agree on how it ended.
 */
export function deliveredCall<R>(
  pool: Pool,
  key: AgentKey | string,
  fn: string,
  args: readonly unknown[],
  options: CallOptions | undefined,
  deliver: (value: unknown) => R,
): Promise<R> {
  return pool[DISPATCH]().submit(key, fn, args, options, deliver) as Promise<R>;
}

/** `pool.stream()` whose chunks are delivered as they arrive, on the same terms as deliveredCall's value. */
export function deliveredStream<R>(
  pool: Pool,
  key: AgentKey | string,
  fn: string,
  args: readonly unknown[],
  options: StreamOptions | undefined,
  deliver: (chunk: unknown) => R,
): AsyncIterableIterator<R, undefined> {
  return new PoolStream<R>(pool[DISPATCH](), key, fn, args, options, deliver);
}
