import type { Pool } from 'sandpool';
import type { ServerMetrics } from './metrics.js';
import type { ResolvedServerOptions } from './options.js';

/** What every route needs: built once by createServer and handed to each route module. */
export interface ServerContext {
  readonly pool: Pool;
  readonly metrics: ServerMetrics;
  readonly options: ResolvedServerOptions;
  /** Set when shutdown begins: calls are refused and /readyz says 503 from then on. */
  readonly lifecycle: { draining: boolean };
}
