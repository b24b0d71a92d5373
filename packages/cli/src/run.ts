import { describeFailure, EXIT_OK } from './failure.js';
import { type Io, printLine, processIo } from './io.js';
import { buildProgram } from './program.js';

/** Runs the CLI on user arguments (no node/script prefix) and resolves to the exit status. */
export async function run(argv: readonly string[], io: Io = processIo): Promise<number> {
  try {
    await buildProgram(io).parseAsync([...argv], { from: 'user' });
    return EXIT_OK;
  } catch (error) {
    const { status, lines } = describeFailure(error);
    for (const line of lines) printLine(io.writeErr, line);
    return status;
  }
}
