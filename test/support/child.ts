import type { ChildProcess } from 'node:child_process';

/** A message a test's child process sends: its type in `t`. */
export type Message = { t: string; [field: string]: unknown };

/**
 * Messages from a child, awaited by type in the order they came; a wait fails after
 * `timeoutMs` naming the type and `who` did not send it (a bound for a hang, not a measure).
 */
export function inbox(child: ChildProcess, who: string, defaultTimeoutMs = 60_000) {
  const queue: Message[] = [];
  const waiters: Array<{ type: string; resolve: (m: Message) => void }> = [];
  child.on('message', (raw) => {
    const message = raw as Message;
    const waiter = waiters.findIndex((w) => w.type === message.t);
    if (waiter >= 0) waiters.splice(waiter, 1)[0]?.resolve(message);
    else queue.push(message);
  });
  return (type: string, timeoutMs = defaultTimeoutMs): Promise<Message> => {
    const queued = queue.findIndex((m) => m.t === type);
    if (queued >= 0) return Promise.resolve(queue.splice(queued, 1)[0] as Message);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${type} from ${who} in ${timeoutMs} ms`)), timeoutMs);
      waiters.push({
        type,
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
      });
    });
  };
}

/** The p-th percentile (nearest rank) of some figures. */
export function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] as number;
}
