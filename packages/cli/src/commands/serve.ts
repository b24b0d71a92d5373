import { readFile, stat } from 'node:fs/promises';
import type { SandpoolConfig } from '@sandpool/server';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { isSandpoolError, type SandboxLayers } from 'sandpool';
import { parseMillis } from '../args.js';
import { loadConfig } from '../config-file.js';
import { asUsage, badOption } from '../failure.js';
import { type Io, printLine } from '../io.js';
import { describeLayers } from '../layers.js';
import { type ServeFlags, serveSettings } from '../serve-settings.js';
import { cliVersion } from '../version.js';

type ServerModule = typeof import('@sandpool/server');

export function registerServe(program: Command, io: Io): void {
  program
    .command('serve')
    .description('serve calls, snapshots, health and metrics over HTTP until SIGTERM or SIGINT')
    .option('--config <file>', 'a module whose default export is { pool, server } (.mjs, .js, .cjs, .ts, .mts, .cts)')
    .option('--root <dir>', 'folder holding <swarm>/live and <swarm>/snapshots (pool.root; one of the two is needed)')
    .option('--port <n>', 'TCP port; 0 picks a free one, printed (default 8080)', parsePort)
    .option('--host <host>', 'address to listen on (default 127.0.0.1)')
    .option('--node-name <name>', 'sent as x-sandpool-node on every response (default: the host name)')
    .option(
      '--token <token>',
      "bearer token for every route but /healthz (default: the config's, else $SANDPOOL_TOKEN)",
    )
    .option('--token-file <file>', 'JSON: token -> { "swarms": [...] | "*", "write": bool } (scoped tokens)')
    .option('--headers-timeout <ms>', "longest wait for a request's headers (default 10000)", parsePositiveMillis)
    .option(
      '--request-timeout <ms>',
      'longest wait for a whole request, body included (default 30000)',
      parsePositiveMillis,
    )
    .option(
      '--keep-alive-timeout <ms>',
      'idle keep-alive connections close after this (default 5000)',
      parsePositiveMillis,
    )
    .option('--debug', 'put stacks in error bodies')
    .option('--log', 'log every request (JSON lines on stdout)')
    .option('--watch', "reload live workers when their swarm's live/ folder changes")
    .option('--max-workers <n>', 'keyed worker threads alive at most', parseCount)
    .option('--call-timeout <ms>', 'default call timeout in milliseconds (0 = none)', parseMillis)
    .addOption(
      new Option(
        '--isolation <where>',
        "where each key's agent runs: a worker thread, or a child process in a cell",
      ).choices(['thread', 'process']),
    )
    .addOption(
      new Option(
        '--sandbox <mode>',
        "the OS sandbox of process keys; 'require' exits when this host lacks a layer",
      ).choices(['auto', 'require', 'off']),
    )
    .option('--body-limit <bytes>', 'largest request body; larger ones get 413 (default 10 MB)', parseCount)
    .option('--metrics-swarms <n>', 'swarms with their own label in /metrics, the most active (default 50)', parseCount)
    .addHelpText('after', '\nA flag given on the command line wins over the same setting in --config.')
    .action(async (flags: ServeFlags) => {
      const { createServer, checkConfig } = await loadServer();
      const config = flags.config === undefined ? {} : await readConfig(flags.config, checkConfig);
      const tokens = flags.tokenFile === undefined ? undefined : await readTokenFile(flags.tokenFile);
      const { options, port, host } = serveSettings(config, flags, tokens);
      await checkRoot(options.root);
      const server = createServer(options);
      const layers = server.pool.stats().sandbox;
      if (layers !== null) printLine(io.writeOut, `sandpool serve: ${describeSandbox(layers)}`);
      // Installed before listening: a signal that arrives while the port opens still drains.
      const stop = nextSignal();
      try {
        const address = await server.app.listen({ port, host });
        printLine(io.writeOut, `sandpool serve: node ${server.nodeName} listening on ${address}`);
        const signal = await stop;
        printLine(io.writeOut, `sandpool serve: ${signal}, draining`);
      } finally {
        // Refuses new calls, answers /readyz 503, waits for in-flight requests, then closes the pool.
        await server.app.close();
      }
      printLine(io.writeOut, `sandpool serve: node ${server.nodeName} stopped`);
    });
}

/** What the OS sandbox gives process keys on this host, and each layer it goes without, with why. */
function describeSandbox(layers: SandboxLayers): string {
  const missing = layers.missing.map(({ layer, reason }) => `${layer} (${reason})`);
  return `process keys run with ${describeLayers(layers)}${missing.length === 0 ? '' : `; without ${missing.join('; ')}`}`;
}

/**
 * The server (fastify, prom-client) is an optional peer: `sandpool call` and `snapshot`
 * users never install it, so it is imported only here.
 */
async function loadServer(): Promise<ServerModule> {
  try {
    return await import('@sandpool/server');
  } catch (error) {
    if (!isMissing(error, '@sandpool/server')) throw error;
    const wanted = `@sandpool/server@${cliVersion()}`;
    throw Object.assign(new Error(`sandpool serve needs the server package: npm install ${wanted}`), {
      code: 'ERR_SANDPOOL_SERVER_MISSING',
    });
  }
}

function isMissing(error: unknown, specifier: string): boolean {
  if (!(error instanceof Error) || !('code' in error) || error.code !== 'ERR_MODULE_NOT_FOUND') return false;
  // Only the package itself: a server that is installed but broken must say so, not this.
  return error.message.includes(`'${specifier}'`);
}

/** The config file's default export, checked by the server's schemas; what is wrong in it is a usage error. */
async function readConfig(file: string, check: ServerModule['checkConfig']): Promise<SandpoolConfig> {
  const value = await loadConfig(file);
  try {
    return check(value, file);
  } catch (error) {
    throw isSandpoolError(error) ? asUsage(error) : error;
  }
}

/** A node that answers `ready` with no agents behind it would take a balancer's traffic and fail it all. */
async function checkRoot(root: string): Promise<void> {
  const info = await stat(root).catch(() => null);
  if (info === null || !info.isDirectory()) {
    throw badOption(`the root ${root} is not a folder`);
  }
}

/**
 * Resolves on the first SIGTERM or SIGINT. Both listeners go after one fires, so a second
 * signal gets Node's default action and kills a drain that hangs.
 */
function nextSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const signals: NodeJS.Signals[] = ['SIGTERM', 'SIGINT'];
    const onSignal = (signal: NodeJS.Signals): void => {
      for (const name of signals) process.off(name, onSignal);
      resolve(signal);
    };
    for (const name of signals) process.on(name, onSignal);
  });
}

/** Read here, checked by the server's schema: the CLI only says which file was unreadable. */
async function readTokenFile(file: string): Promise<Record<string, { swarms: string[] | '*'; write?: boolean }>> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as Record<string, { swarms: string[] | '*'; write?: boolean }>;
  } catch (error) {
    const why = error instanceof SyntaxError ? 'not valid JSON' : 'cannot be read';
    throw badOption(`--token-file ${file}: ${why}`);
  }
}

function parsePositiveMillis(text: string): number {
  const value = parseMillis(text);
  if (value === 0) throw new InvalidArgumentError('expected at least 1 millisecond.');
  return value;
}

function parsePort(text: string): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || value > 65_535) throw new InvalidArgumentError('expected a port number, 0 to 65535.');
  return value;
}

function parseCount(text: string): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < 1 || !Number.isSafeInteger(value)) {
    throw new InvalidArgumentError('expected a whole number above 0.');
  }
  return value;
}
