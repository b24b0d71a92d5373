import { type PoolOptions, PoolOptionsSchema, type SandpoolIssue } from 'sandpool';
import { z } from 'zod';
import { invalidConfig } from './errors.js';
import { type ServerSettings, ServerSettingsSchema } from './options.js';

/** Where `sandpool serve` listens. Only the command listens, so `createServer` never sees these. */
export interface ListenSettings {
  /** TCP port; 0 picks a free one (8080). */
  port?: number;
  /** Address to listen on (127.0.0.1). */
  host?: string;
}

/** What a `sandpool serve --config` file exports by default. */
export interface SandpoolConfig {
  /** Everything `createPool` takes, functions included; `root` may come from `--root` instead. */
  pool?: Omit<PoolOptions, 'root'> & { root?: string };
  /** The server's own settings and where to listen; `nodeName` defaults to the host name. */
  server?: Partial<ServerSettings> & ListenSettings;
}

/**
 * Gives a config file's default export its type (in a `.ts` config, or a `.mjs` one with
 * `// @ts-check`). It returns the config as it is: `sandpool serve` checks it when it loads it.
 */
export function defineConfig(config: SandpoolConfig): SandpoolConfig {
  return config;
}

const ConfigSchema = z.strictObject(
  { pool: z.unknown().optional(), server: z.unknown().optional() },
  { error: 'the default export must be an object { pool, server }' },
);
// `root` may be given by --root, and `nodeName` defaults to the host name: both are checked once merged.
const ConfigPoolSchema = PoolOptionsSchema.partial({ root: true });
const ConfigServerSchema = ServerSettingsSchema.partial({ nodeName: true }).extend({
  port: z.number().int().min(0).max(65_535).optional(),
  host: z.string().min(1).optional(),
});

/** The fields of a zod failure, as a SandpoolIssue each; an unknown key is named by its own path. */
interface FoundIssue {
  readonly path: readonly PropertyKey[];
  readonly message: string;
  readonly code: string;
  readonly keys?: readonly string[];
}

/**
 * Checks a config file's default export as the options are checked: `pool` with the
 * library's `PoolOptionsSchema`, `server` with the server's `ServerSettingsSchema` (plus
 * `port` and `host`). It throws one ERR_SANDPOOL_INVALID_OPTIONS naming every field at
 * fault (`pool.maxWorkers`, `server.port`), and changes nothing: the config is returned as
 * given, functions and all, for `createServer` to parse again.
 */
export function checkConfig(value: unknown, file: string): SandpoolConfig {
  const shape = ConfigSchema.safeParse(value);
  if (!shape.success) throw invalidConfig(file, issuesOf(shape.error.issues, []));
  const issues: SandpoolIssue[] = [];
  const pool = shape.data.pool === undefined ? null : ConfigPoolSchema.safeParse(shape.data.pool);
  if (pool?.success === false) issues.push(...issuesOf(pool.error.issues, ['pool']));
  const server = shape.data.server === undefined ? null : ConfigServerSchema.safeParse(shape.data.server);
  if (server?.success === false) issues.push(...issuesOf(server.error.issues, ['server']));
  if (issues.length > 0) throw invalidConfig(file, issues);
  return value as SandpoolConfig;
}

function issuesOf(found: readonly FoundIssue[], prefix: readonly PropertyKey[]): SandpoolIssue[] {
  return found.flatMap(({ path, message, code, keys }) =>
    code === 'unrecognized_keys' && keys !== undefined
      ? keys.map((key) => ({ path: [...prefix, ...path, key], message: `unknown option ${key}`, code }))
      : [{ path: [...prefix, ...path], message, code }],
  );
}
