import { AGENT_CODE, LIMITS, type RemoteError } from './messages.js';

/**
 * The worker's side: an agent's thrown value as it may cross, bounded and with a code kept
 * only when it is a short token. Used for everything the runtime reports, so what it sends
 * always passes the coordinator's checks.
 */
export function toRemoteError(thrown: unknown): RemoteError {
  try {
    return bounded(thrown);
  } catch {
    // A getter on the thrown value threw: report that, not a crash of the runtime.
    return { name: 'Error', message: 'the agent threw a value that cannot be read' };
  }
}

function bounded(thrown: unknown): RemoteError {
  if (!(thrown instanceof Error)) return { name: 'Error', message: clip(describe(thrown), LIMITS.errorMessage) };
  const out: RemoteError = {
    name: clip(String(thrown.name), LIMITS.errorName),
    message: clip(String(thrown.message), LIMITS.errorMessage),
  };
  if (typeof thrown.stack === 'string') out.stack = clip(thrown.stack, LIMITS.errorStack);
  const code = agentCode((thrown as { code?: unknown }).code);
  if (code !== undefined) out.code = code;
  return out;
}

function agentCode(code: unknown): string | number | undefined {
  if (typeof code === 'number' && Number.isFinite(code)) return code;
  if (typeof code === 'string' && AGENT_CODE.test(code)) return code;
  return undefined;
}

function clip(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}

function describe(value: unknown): string {
  if (typeof value === 'string') return value;
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}
