import type { Pool } from 'sandpool';
import type { Scrub } from './errors.js';
import type { ServerMetrics } from './metrics.js';
import type { ResolvedServerOptions } from './options.js';
import type { StoreReport } from './store-state.js';

/** What every route needs: built once by createServer and handed to each route module. */
export interface ServerContext {
  readonly pool: Pool;
  readonly metrics: ServerMetrics;
  readonly options: ResolvedServerOptions;
  /** The pool's database, as its `store` events tell it (null status without one). */
  readonly store: StoreReport;
  /** The pool's root, absolute. */
  readonly root: string;
  /** What every error message passes through before it leaves the server. */
  readonly scrub: Scrub;
  /** Set when shutdown begins: calls are refused and /readyz says 503 from then on. */
  readonly lifecycle: { draining: boolean };
}
