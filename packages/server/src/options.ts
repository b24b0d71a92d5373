import { AgentKeySchema, type PoolOptions, PoolOptionsSchema } from 'sandpool';
import { z } from 'zod';
import { invalidRequest } from './errors.js';

const MEGABYTE = 1024 * 1024;
const millis = (fallback: number) => z.number().int().positive().max(2_147_483_647).default(fallback);

/** What one bearer token may do: call and read the listed swarms (or all), and with `write` change their snapshots. */
export const TokenGrantSchema = z.strictObject({
  swarms: z.union([z.literal('*'), z.array(AgentKeySchema.shape.swarm)]),
  write: z.boolean().default(false),
});
export type TokenGrant = z.output<typeof TokenGrantSchema>;
export const TokenFileSchema = z.record(z.string().min(1, 'a token must not be empty'), TokenGrantSchema);

/**
 * The server's own settings (what `createServer` takes beyond the pool's options, and the
 * `server` part of a `sandpool serve --config` file); everything else is handed to
 * `createPool`, whose strict schema checks it.
 */
export const ServerSettingsSchema = z.strictObject({
  // It goes out in a header on every response: keep it to characters a header carries as-is.
  nodeName: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/, 'nodeName must match ^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$'),
  token: z.string().min(1, 'token must not be empty').optional(),
  debug: z.boolean().default(false),
  bodyLimit: z
    .number()
    .int()
    .positive()
    .default(10 * MEGABYTE),
  logger: z.boolean().default(false),
  tokens: TokenFileSchema.optional(),
  // A client that has not sent its whole head by then is cut off: partial headers hold nothing.
  headersTimeoutMs: millis(10_000),
  // The whole request, body included, must have arrived by then (slow bodies).
  requestTimeoutMs: millis(30_000),
  // An idle keep-alive connection between requests.
  keepAliveTimeoutMs: millis(5_000),
  // A deploy's archive as sent, and its files and folders: bounded like a snapshot build.
  deployMaxBytes: z
    .number()
    .int()
    .positive()
    .default(64 * MEGABYTE),
  deployMaxFiles: z.number().int().positive().max(1_000_000).default(10_000),
  // Swarms with series of their own in /metrics; the rest share one label, so callers naming swarms cannot grow a scrape.
  metricsSwarms: z.number().int().min(0).max(1_000).default(50),
});

/** The server's own settings, as `ServerSettingsSchema` checks them. */
export interface ServerSettings {
  /** Sent as `x-sandpool-node` on every response, so callers (and tests) see which node answered. */
  nodeName: string;
  /** Bearer token required on every route but `/healthz`; absent means no auth. */
  token?: string | undefined;
  /** Error bodies carry stacks. */
  debug?: boolean;
  /** Largest request body in bytes (default 10 MB); larger ones get 413. */
  bodyLimit?: number;
  /** Log every request and one line per call (key, outcome, duration); without it only unexpected errors are logged. */
  logger?: boolean;
  /** Tokens scoped to swarms: token → `{ swarms: [...] | '*', write? }`; `write` is needed to create or remove snapshots. */
  tokens?: Record<string, { swarms: string[] | '*'; write?: boolean }> | undefined;
  /** Longest wait for a request's headers, from the first byte of the connection or of the next request (10000). */
  headersTimeoutMs?: number;
  /** Longest wait for a whole request, body included (30000). */
  requestTimeoutMs?: number;
  /** How long an idle keep-alive connection stays open (5000). */
  keepAliveTimeoutMs?: number;
  /** Largest deploy archive in bytes, as sent (default 64 MB); larger ones get 413. */
  deployMaxBytes?: number;
  /** Most files and folders in one deploy archive (default 10000); more get 413. */
  deployMaxFiles?: number;
  /** Swarms that get their own `swarm` label on per-swarm metrics, the most active first (50); the rest are `_other`. */
  metricsSwarms?: number;
}

/** What `createServer` takes: the pool's options and the server's own settings, side by side. */
export interface ServerOptions extends PoolOptions, ServerSettings {}

export type ResolvedServerOptions = z.output<typeof ServerSettingsSchema> & {
  /** The pool's `callTimeoutMs`: no client's `timeoutMs` may go past it (0 = the server sets no bound). */
  readonly callTimeoutCapMs: number;
};

const SERVER_KEYS = new Set(Object.keys(ServerSettingsSchema.shape));

/** Splits and validates: server options here, pool options left for `createPool`. */
export function splitOptions(options: ServerOptions): { server: ResolvedServerOptions; pool: PoolOptions } {
  const server: Record<string, unknown> = {};
  const pool: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(options)) {
    // An explicit undefined (e.g. `token: process.env.X`) means "not given".
    if (value === undefined) continue;
    (SERVER_KEYS.has(name) ? server : pool)[name] = value;
  }
  const parsed = ServerSettingsSchema.safeParse(server);
  if (!parsed.success) {
    const issues = parsed.error.issues.map(({ path, message, code }) => ({ path, message, code }));
    const fields = [...new Set(issues.map((issue) => issue.path.join('.')))].join(', ');
    throw invalidRequest(`server options: ${fields}`, issues);
  }
  // The pool parses its options again in createPool; here only the resolved call timeout is wanted.
  const poolParsed = PoolOptionsSchema.safeParse(pool);
  const callTimeoutCapMs = poolParsed.success ? poolParsed.data.callTimeoutMs : 0;
  return { server: { ...parsed.data, callTimeoutCapMs }, pool: pool as PoolOptions };
}
