import type { RemoteError } from '../../protocol/messages.js';
import { toRemoteError } from '../../protocol/remote-error.js';

/** A capability's error as the agent sees it: name, message and code, never the host's stack (it names host paths). */
export function hostError(thrown: unknown): RemoteError {
  const { stack: _stack, ...error } = toRemoteError(thrown);
  return error;
}

/** An error of sandpool's own for the agent, with its code. */
export function failure(code: string, message: string): RemoteError {
  return { name: 'Error', message, code };
}
