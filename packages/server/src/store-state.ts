import type { Pool } from 'sandpool';

/** The pool's database as this node last heard of it: not yet reached, reached, or lost (it reconnects). */
export type StoreState = 'connecting' | 'connected' | 'lost';

export interface StoreStatus {
  readonly state: StoreState;
  /** When it entered that state, ISO 8601. */
  readonly since: string;
}

/** What `/healthz`, `/readyz`, `/metrics` and `sandpool serve`'s log say of the pool's store. */
export interface StoreReport {
  /** Null when the pool keeps its snapshots under its root alone (no `store` option). */
  readonly status: StoreStatus | null;
  /** Times the database was lost since the node started: an outage counts once, however many reconnections it takes. */
  readonly losses: number;
  /** Called on every change of state (never twice for the same state in a row). */
  onChange(listener: (status: StoreStatus) => void): void;
}

/**
 * Follows the pool's `store` events from its creation. A lost database emits `lost` on every
 * failed reconnection; this reports the change once, so a log line or a counter means an outage.
 */
export function watchStore(pool: Pool): StoreReport {
  let status: StoreStatus | null =
    pool.options.store === undefined ? null : { state: 'connecting', since: new Date().toISOString() };
  let losses = 0;
  const listeners: Array<(status: StoreStatus) => void> = [];
  pool.on('store', ({ state }) => {
    if (status === null || status.state === state) return;
    status = { state, since: new Date().toISOString() };
    if (state === 'lost') losses += 1;
    for (const listener of listeners) listener(status);
  });
  return {
    get status() {
      return status;
    },
    get losses() {
      return losses;
    },
    onChange(listener) {
      listeners.push(listener);
    },
  };
}
