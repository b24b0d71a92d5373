import { type Command, Option } from 'commander';
import { z } from 'zod';
import { type Io, printLine } from '../io.js';
import {
  answerError,
  DEFAULT_URL,
  parseUrl,
  ServerAnswerError,
  type ServerOptionsOfCommand,
  send,
  targetOf,
} from '../server-client.js';

interface InvalidateOptions extends ServerOptionsOfCommand {
  readonly stem?: string;
  readonly snapshot?: string;
  readonly json?: boolean;
}

/** What a reload reports (invalidate, and deploy after its swap): each key reloaded or failed. */
export const ReportSchema = z.object({
  reloaded: z.array(z.string()),
  failed: z.array(z.object({ key: z.string(), code: z.string(), message: z.string() })),
});

/**
 * Over HTTP, not on a local root: invalidate reloads running workers, and those live in
 * the server's process. A pool this command made itself would have none to reload.
 */
export function registerInvalidate(program: Command, io: Io): void {
  program
    .command('invalidate')
    .description("reload a running server's workers of a swarm (live code by default) and report each key")
    .argument('<swarm>')
    .option('--stem <stem>', 'only this stem')
    .option('--snapshot <name>', "the snapshot's workers instead of the live ones")
    .addOption(serverUrlOption())
    .addOption(serverTokenOption())
    .option('--json', 'print the report as JSON')
    .action(async (swarm: string, options: InvalidateOptions) => {
      const body = {
        ...(options.stem === undefined ? {} : { stem: options.stem }),
        ...(options.snapshot === undefined ? {} : { snapshot: options.snapshot }),
      };
      const answer = await send(targetOf(options), 'POST', `/v1/swarms/${encodeURIComponent(swarm)}/invalidate`, body);
      // 409 carries the same report as 200, with the keys whose new code failed to load.
      if (answer.status !== 200 && answer.status !== 409) throw answerError(answer);
      const report = ReportSchema.safeParse(answer.body);
      if (!report.success) {
        throw new ServerAnswerError('ERR_SANDPOOL_HTTP_UNEXPECTED', 'unexpected answer from the server', answer.status);
      }
      const { reloaded, failed } = report.data;
      if (options.json === true) printLine(io.writeOut, JSON.stringify(report.data));
      else {
        for (const key of reloaded) printLine(io.writeOut, `reloaded ${key}`);
        for (const { key, code, message } of failed) printLine(io.writeErr, `failed ${key}: ${code}: ${message}`);
        const node = answer.node === null ? '' : ` on node ${answer.node}`;
        if (reloaded.length + failed.length === 0)
          printLine(io.writeOut, `nothing to reload${node}: no worker of it is running`);
      }
      if (failed.length > 0) throw answerError(answer);
    });
}

export function serverUrlOption(): Option {
  return new Option('--url <url>', 'the server, as `sandpool serve` printed it')
    .default(DEFAULT_URL)
    .argParser(parseUrl);
}

export function serverTokenOption(): Option {
  return new Option('--token <token>', 'bearer token (default: $SANDPOOL_TOKEN)');
}
