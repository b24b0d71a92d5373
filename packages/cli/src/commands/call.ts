import type { Command } from 'commander';
import { createPool, parseKey } from 'sandpool';
import { collectJson, parseMillis } from '../args.js';
import { type Io, printLine } from '../io.js';

interface CallOptions {
  readonly root: string;
  readonly timeout?: number;
}

export function registerCall(program: Command, io: Io): void {
  program
    .command('call')
    .description('call one exported function of an agent and print its result as JSON')
    .argument('<key>', 'swarm/stem (live) or swarm@snapshot/stem')
    .argument('<fn>', 'name of the exported function')
    .argument('[json-args...]', 'arguments, each one JSON value; quote strings: \'"text"\'', collectJson)
    .requiredOption('--root <dir>', 'folder holding <swarm>/live and <swarm>/snapshots')
    .option('--timeout <ms>', 'call timeout in milliseconds (0 = none)', parseMillis)
    .action(async (keyText: string, fn: string, args: unknown[] | undefined, options: CallOptions) => {
      // Validated before the pool exists, so a bad key starts no thread.
      const key = parseKey(keyText);
      const pool = createPool({
        root: options.root,
        // A one-shot call never has a next key to hand a spare to.
        spareWorkers: 0,
        // stdout carries only the result, so scripts can parse it; agent output goes to stderr, labelled.
        onOutput: (label, _stream, text) => printLine(io.writeErr, `[${label}] ${text}`),
      });
      try {
        const result = await pool.call(
          key,
          fn,
          args ?? [],
          options.timeout === undefined ? {} : { timeoutMs: options.timeout },
        );
        printLine(io.writeOut, toJson(result));
      } finally {
        await pool.close();
      }
    });
}

/** Results are structured clones, not JSON: undefined and bigint need a spelling of their own. */
function toJson(value: unknown): string {
  return JSON.stringify(value, (_key, item: unknown) => (typeof item === 'bigint' ? item.toString() : item)) ?? 'null';
}
