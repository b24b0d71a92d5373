import { hostname } from 'node:os';
import type { SandpoolConfig, ServerOptions } from '@sandpool/server';
import { asUsage, badOption } from './failure.js';

/** The flags of `sandpool serve` as commander hands them over: each undefined unless given. */
export interface ServeFlags {
  readonly config?: string;
  readonly root?: string;
  readonly port?: number;
  readonly host?: string;
  readonly nodeName?: string;
  readonly token?: string;
  readonly tokenFile?: string;
  readonly headersTimeout?: number;
  readonly requestTimeout?: number;
  readonly keepAliveTimeout?: number;
  readonly debug?: boolean;
  readonly log?: boolean;
  readonly watch?: boolean;
  readonly maxWorkers?: number;
  readonly callTimeout?: number;
  readonly isolation?: 'thread' | 'process';
  readonly sandbox?: 'auto' | 'require' | 'off';
  readonly bodyLimit?: number;
  readonly metricsSwarms?: number;
}

/** What `serve` runs: the options for `createServer`, and where to listen. */
export interface ServeSettings {
  readonly options: ServerOptions;
  readonly port: number;
  readonly host: string;
}

type Tokens = NonNullable<ServerOptions['tokens']>;

/**
 * The config's settings with the flags over them: a flag given on the command line wins
 * over the same setting in the file (`--token-file` replaces `server.tokens` whole). The
 * token is `--token`, else the config's, else `$SANDPOOL_TOKEN`; the node name
 * `--node-name`, else the config's, else the host name; then port 8080 and 127.0.0.1.
 */
export function serveSettings(config: SandpoolConfig, flags: ServeFlags, tokens: Tokens | undefined): ServeSettings {
  const { port, host, ...server } = config.server ?? {};
  const root = flags.root ?? config.pool?.root;
  if (root === undefined) throw asUsage(badOption('no root: give --root, or pool.root in a --config file'));
  const environment = process.env.SANDPOOL_TOKEN;
  const token = flags.token ?? server.token ?? (environment === '' ? undefined : environment);
  const options: ServerOptions = {
    ...config.pool,
    ...server,
    root,
    nodeName: flags.nodeName ?? server.nodeName ?? hostname(),
    ...defined({
      token,
      tokens,
      watch: flags.watch,
      maxWorkers: flags.maxWorkers,
      callTimeoutMs: flags.callTimeout,
      isolation: flags.isolation,
      sandbox: flags.sandbox,
      headersTimeoutMs: flags.headersTimeout,
      requestTimeoutMs: flags.requestTimeout,
      keepAliveTimeoutMs: flags.keepAliveTimeout,
      debug: flags.debug,
      logger: flags.log,
      bodyLimit: flags.bodyLimit,
      metricsSwarms: flags.metricsSwarms,
    }),
  };
  return { options, port: flags.port ?? port ?? 8080, host: flags.host ?? host ?? '127.0.0.1' };
}

/** The entries that have a value: an absent flag leaves the config's setting alone. */
function defined<T extends object>(entries: { [K in keyof T]: T[K] | undefined }): Partial<T> {
  return Object.fromEntries(Object.entries(entries).filter(([, value]) => value !== undefined)) as Partial<T>;
}
