import { type PoolOptions, SandpoolError } from 'sandpool';
import { z } from 'zod';

const MEGABYTE = 1024 * 1024;

/** The server's own options; everything else is handed to `createPool`, whose strict schema checks it. */
const ServerOnlySchema = z.strictObject({
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
});

export interface ServerOptions extends PoolOptions {
  /** Sent as `x-sandpool-node` on every response, so callers (and tests) see which node answered. */
  nodeName: string;
  /** Bearer token required on every route but `/healthz`; absent means no auth. */
  token?: string | undefined;
  /** Error bodies carry stacks. */
  debug?: boolean;
  /** Largest request body in bytes (default 10 MB); larger ones get 413. */
  bodyLimit?: number;
  /** Log every request (pino JSON lines on stdout); without it only unexpected errors are logged. */
  logger?: boolean;
}

export type ResolvedServerOptions = z.output<typeof ServerOnlySchema>;

const SERVER_KEYS = new Set(Object.keys(ServerOnlySchema.shape));

/** Splits and validates: server options here, pool options left for `createPool`. */
export function splitOptions(options: ServerOptions): { server: ResolvedServerOptions; pool: PoolOptions } {
  const server: Record<string, unknown> = {};
  const pool: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(options)) {
    // An explicit undefined (e.g. `token: process.env.X`) means "not given".
    if (value === undefined) continue;
    (SERVER_KEYS.has(name) ? server : pool)[name] = value;
  }
  const parsed = ServerOnlySchema.safeParse(server);
  if (!parsed.success) {
    const issues = parsed.error.issues.map(({ path, message, code }) => ({ path, message, code }));
    const fields = [...new Set(issues.map((issue) => issue.path.join('.')))].join(', ');
    throw new SandpoolError(
      'ERR_SANDPOOL_INVALID_OPTIONS',
      `invalid server options: ${fields}: ${issues[0]?.message}`,
      {
        issues,
      },
    );
  }
  return { server: parsed.data, pool: pool as PoolOptions };
}
