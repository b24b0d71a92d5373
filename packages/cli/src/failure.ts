import { CommanderError } from 'commander';
import { isSandpoolError, SandpoolError } from 'sandpool';

/** The exit statuses scripts can rely on. */
export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

/**
 * Maps whatever a command threw to an exit status and the lines to print on stderr.
 * Commander has already printed its own usage errors (through the program's output
 * configuration), so those add no lines here.
 */
export function describeFailure(error: unknown): { status: number; lines: string[] } {
  if (error instanceof CommanderError) {
    // Help and --version end the parse through the same exception path, with exitCode 0.
    return { status: error.exitCode === 0 ? EXIT_OK : EXIT_USAGE, lines: [] };
  }
  if (isSandpoolError(error)) {
    const lines = [`error ${error.code}: ${error.message}`];
    // The agent's own error is what the operator needs to see; the wrapper only says where.
    if (error.code === 'ERR_SANDPOOL_AGENT_ERROR' && error.cause instanceof Error) {
      lines.push(`caused by ${describeCause(error.cause)}`);
    }
    return { status: EXIT_FAILED, lines };
  }
  // Anything else is an operation that failed outside the library's vocabulary
  // (an fs error such as EACCES, or a bug): still exit 1, with the errno code if there is one.
  const code = errorCode(error);
  const message = error instanceof Error ? error.message : String(error);
  return { status: EXIT_FAILED, lines: [code === undefined ? `error: ${message}` : `error ${code}: ${message}`] };
}

/** A command-line option the CLI cannot use: the one place the CLI makes a SandpoolError. */
export function badOption(message: string): SandpoolError {
  return new SandpoolError('ERR_SANDPOOL_INVALID_OPTIONS', message);
}

function describeCause(cause: Error): string {
  const code = errorCode(cause);
  return code === undefined ? `${cause.name}: ${cause.message}` : `${cause.name} [${code}]: ${cause.message}`;
}

function errorCode(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null || !('code' in error)) return undefined;
  return typeof error.code === 'string' || typeof error.code === 'number' ? String(error.code) : undefined;
}
