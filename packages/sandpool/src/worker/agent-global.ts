/**
 * The one global the worker defines before the agent's module loads: agents need no
 * dependency to see their key and the signal and deadline of the call they are running.
 * Its types are in `sandpool/agent`.
 */
import { currentCall, currentSignal } from './context.js';
import { markTransfer } from './transfer.js';

export function defineAgentGlobal(key: string, host: Readonly<Record<string, unknown>>): void {
  const api = Object.freeze({
    key,
    host,
    transfer: markTransfer,
    get signal(): AbortSignal {
      return currentSignal();
    },
    get deadline(): number | null {
      return currentCall()?.deadline ?? null;
    },
    get traceparent(): string | null {
      return currentCall()?.traceparent ?? null;
    },
  });
  Object.defineProperty(globalThis, 'sandpool', {
    value: api,
    enumerable: false,
    configurable: false,
    writable: false,
  });
}
