import { moduleNotFound, rebuilt, SandpoolError } from '../../errors.js';
import type { Outcome, RemoteError } from '../../protocol/messages.js';
import type { Redact } from './host-paths.js';

/** Turns whatever a failure arrived as into the SandpoolError the caller sees, naming no host folder. */
export function toSandpoolError(failure: unknown, key: string, redact: Redact): SandpoolError {
  if (failure instanceof SandpoolError) return failure;
  if (isFailedOutcome(failure)) {
    const cause = rebuild(failure.error, redact);
    return rebuilt(failure.code, `${key}: ${cause.message}`, { key, cause });
  }
  // Only file-system surprises (EACCES, EIO…) reach here: the module cannot be had.
  return moduleNotFound(`${key}: ${redact(String(failure))}`, key, failure);
}

/** An Error in this thread with the remote name, message, stack and code. */
function rebuild(remote: RemoteError, redact: Redact): Error {
  const error = new Error(redact(remote.message));
  error.name = remote.name;
  if (remote.stack !== undefined) error.stack = redact(remote.stack);
  if (remote.code !== undefined) (error as Error & { code?: unknown }).code = remote.code;
  return error;
}

function isFailedOutcome(value: unknown): value is Outcome & { ok: false } {
  return typeof value === 'object' && value !== null && (value as { ok?: unknown }).ok === false;
}
