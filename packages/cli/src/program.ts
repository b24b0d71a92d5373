import { Command } from 'commander';
import { registerCall } from './commands/call.js';
import { registerDemo } from './commands/demo.js';
import { registerDeploy } from './commands/deploy.js';
import { registerInvalidate } from './commands/invalidate.js';
import { registerServe } from './commands/serve.js';
import { registerSnapshot } from './commands/snapshot.js';
import { registerTop } from './commands/top.js';
import type { Io } from './io.js';
import { cliVersion } from './version.js';

/**
 * The whole command surface. exitOverride makes commander throw instead of calling
 * process.exit, so run() alone decides exit statuses (usage errors are 2, not commander's 1).
 * Subcommands created with .command() inherit both settings below.
 */
export function buildProgram(io: Io): Command {
  const program = new Command('sandpool')
    .description('run agents one worker thread per (swarm, snapshot, stem) key')
    .version(cliVersion())
    .exitOverride()
    .configureOutput({ writeOut: io.writeOut, writeErr: io.writeErr })
    .showHelpAfterError('(sandpool --help for usage)')
    .addHelpText('after', '\nExit status: 0 ok, 1 operation failed (stderr: error <CODE>: message), 2 usage error.');
  registerCall(program, io);
  registerSnapshot(program, io);
  registerServe(program, io);
  registerDeploy(program, io);
  registerInvalidate(program, io);
  registerTop(program, io);
  registerDemo(program, io);
  return program;
}
