import type { Command } from 'commander';
import { z } from 'zod';
import { type Io, printLine } from '../io.js';
import { packFolder } from '../pack-folder.js';
import {
  answerError,
  RawBody,
  ServerAnswerError,
  type ServerOptionsOfCommand,
  send,
  targetOf,
} from '../server-client.js';
import { ReportSchema, serverTokenOption, serverUrlOption } from './invalidate.js';

interface DeployOptions extends ServerOptionsOfCommand {
  readonly json?: boolean;
}

const DeployAnswerSchema = ReportSchema.extend({ swarm: z.string(), files: z.number(), bytes: z.number() });

/** `sandpool deploy <swarm> <folder>`: the folder becomes the swarm's live files on a running server. */
export function registerDeploy(program: Command, io: Io): void {
  program
    .command('deploy')
    .description("replace a swarm's live files on a running server with a folder's, and reload its live workers")
    .argument('<swarm>')
    .argument('<folder>', "the swarm's files: what live/ should hold")
    .addOption(serverUrlOption())
    .addOption(serverTokenOption())
    .option('--json', 'print the answer as JSON')
    .action(async (swarm: string, folder: string, options: DeployOptions) => {
      const { archive } = await packFolder(folder);
      const answer = await send(
        targetOf(options),
        'PUT',
        `/v1/swarms/${encodeURIComponent(swarm)}/live`,
        new RawBody('application/x-tar', archive),
      );
      // 409: the files are deployed, but some keys' new code failed to load (they keep the old).
      if (answer.status !== 200 && answer.status !== 409) throw answerError(answer);
      const parsed = DeployAnswerSchema.safeParse(answer.body);
      if (!parsed.success) {
        throw new ServerAnswerError('ERR_SANDPOOL_HTTP_UNEXPECTED', 'unexpected answer from the server', answer.status);
      }
      const { files, bytes, reloaded, failed } = parsed.data;
      if (options.json === true) printLine(io.writeOut, JSON.stringify(parsed.data));
      else {
        const node = answer.node === null ? '' : ` on node ${answer.node}`;
        printLine(io.writeOut, `deployed ${swarm}${node}: ${files} files, ${bytes} bytes`);
        for (const key of reloaded) printLine(io.writeOut, `reloaded ${key}`);
        for (const { key, code, message } of failed) printLine(io.writeErr, `failed ${key}: ${code}: ${message}`);
      }
      if (failed.length > 0) throw answerError(answer);
    });
}
