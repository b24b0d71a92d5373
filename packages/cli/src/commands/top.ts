import { setTimeout as sleep } from 'node:timers/promises';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { parseMillis } from '../args.js';
import { type Io, printLine } from '../io.js';
import { expectBody, type ServerOptionsOfCommand, type ServerTarget, send, targetOf } from '../server-client.js';
import { type CpuSample, type KeysAnswer, KeysAnswerSchema, renderTop, sampleOf, TOP_SORTS } from '../top-view.js';
import { serverTokenOption, serverUrlOption } from './invalidate.js';

interface TopOptions extends ServerOptionsOfCommand {
  readonly sort: (typeof TOP_SORTS)[number];
  readonly limit?: number;
  readonly interval: number;
  readonly once?: boolean;
  readonly watch?: boolean;
}

/** Home, then clear: each frame overwrites the last without scrolling. */
const CLEAR = '\u001b[H\u001b[2J';
/** The summary line, the header and the rule, plus the prompt line the shell keeps. */
const CHROME_LINES = 4;
const MAX_LIMIT = 1_000;

export function registerTop(program: Command, io: Io): void {
  program
    .command('top')
    .description("a live view of a running server's keys: CPU, memory, calls, errors, latency, demotion")
    .addOption(serverUrlOption())
    .addOption(serverTokenOption())
    .addOption(new Option('--sort <field>', 'busiest first by this field').choices(TOP_SORTS).default('cpuMs'))
    .option('--limit <n>', 'keys shown at most (default: what fits the terminal, or 100)', parseLimit)
    .option('--interval <ms>', 'time between refreshes', parseInterval, 1_000)
    .addOption(new Option('--once', 'print one table and exit').conflicts('watch'))
    .option('--watch', 'refresh until interrupted, even when stdout is not a terminal')
    .action(async (options: TopOptions) => {
      const target = targetOf(options);
      // A pipe or a file gets one table, as `ps` would give: a screen of clear codes helps no one there.
      const watch = options.watch === true || (options.once !== true && io.interactive === true);
      if (!watch) {
        const answer = await fetchKeys(target, options.sort, options.limit ?? 100);
        printLine(io.writeOut, renderTop(answer, null, sampleOf(answer, Date.now())));
        return;
      }
      await watchKeys(target, options, io);
    });
}

async function watchKeys(target: ServerTarget, options: TopOptions, io: Io): Promise<void> {
  const stop = new AbortController();
  const onSignal = (): void => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let previous: CpuSample | null = null;
  try {
    while (!stop.signal.aborted) {
      const started = Date.now();
      const limit =
        options.limit ?? Math.min(MAX_LIMIT, Math.max(1, (io.rows?.() ?? 100 + CHROME_LINES) - CHROME_LINES));
      let frame: string;
      try {
        const answer = await fetchKeys(target, options.sort, limit);
        const now = sampleOf(answer, Date.now());
        frame = renderTop(answer, previous, now);
        previous = now;
      } catch (error) {
        // A server that restarts or drains comes back: keep the view and say what went wrong.
        const code = error instanceof Error && 'code' in error ? `${String(error.code)}: ` : '';
        frame = `${target.url}: error ${code}${error instanceof Error ? error.message : String(error)} (retrying)`;
      }
      io.writeOut(`${CLEAR}${frame}\n`);
      await sleep(Math.max(0, options.interval - (Date.now() - started)), undefined, { signal: stop.signal }).catch(
        () => undefined,
      );
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

async function fetchKeys(target: ServerTarget, sort: string, limit: number): Promise<KeysAnswer> {
  const query = new URLSearchParams({ sort, limit: String(limit) });
  return expectBody(KeysAnswerSchema, await send(target, 'GET', `/v1/keys?${query}`));
}

function parseLimit(text: string): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < 1 || value > MAX_LIMIT) {
    throw new InvalidArgumentError(`expected a whole number from 1 to ${MAX_LIMIT}.`);
  }
  return value;
}

function parseInterval(text: string): number {
  const value = parseMillis(text);
  if (value < 100) throw new InvalidArgumentError('expected at least 100 milliseconds.');
  return value;
}
