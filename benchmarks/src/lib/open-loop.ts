import { Latency, type LatencySummary, round } from './histogram.js';
import { now } from './timing.js';

export type QuietPhase = {
  /** From the moment the call was made to its result. */
  fromSend: LatencySummary;
  /** From the moment the schedule wanted it sent: includes time a blocked caller could not send it. */
  fromDue: LatencySummary;
  quietPerSecond: number;
  noisyPerSecond: number;
  errors: number;
};

export interface Noise {
  readonly done: number;
  readonly errors: number;
  stop(): Promise<void>;
}

/** `lanes` closed loops, each making the next call as soon as its last one answered. */
export function startNoise(call: (lane: number) => Promise<unknown>, lanes: number): Noise {
  let running = true;
  let done = 0;
  let errors = 0;
  const lane = async (index: number): Promise<void> => {
    while (running) {
      try {
        await call(index);
        done += 1;
      } catch {
        errors += 1;
      }
    }
  };
  const all = Array.from({ length: lanes }, (_, index) => lane(index));
  return {
    get done() {
      return done;
    },
    get errors() {
      return errors;
    },
    stop: async () => {
      running = false;
      await Promise.all(all);
    },
  };
}

export interface QuietLoad {
  keys: number;
  intervalMs: number;
  durationMs: number;
  call(key: number, n: number): Promise<unknown>;
  noise?: Noise | undefined;
}

/** Open-loop load: every key's calls are due on a fixed grid, whatever happened to the last one. */
export async function quietLoad(load: QuietLoad): Promise<QuietPhase> {
  const { keys, intervalMs, durationMs, noise } = load;
  const latency = new Latency();
  const service = new Latency();
  let completed = 0;
  let errors = 0;
  let outstanding = 0;
  let drained: (() => void) | null = null;
  const start = now();
  const end = start + durationMs;
  const noisyBefore = noise?.done ?? 0;
  const next = Array.from({ length: keys }, (_, key) => start + (key * intervalMs) / keys);
  let n = 0;
  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const at = now();
      let earliest = Number.POSITIVE_INFINITY;
      for (let key = 0; key < keys; key += 1) {
        while ((next[key] as number) <= at && (next[key] as number) < end) {
          const due = next[key] as number;
          next[key] = due + intervalMs;
          const sent = now();
          outstanding += 1;
          load.call(key, n++).then(
            () => {
              const done = now();
              latency.recordMs(done - due);
              service.recordMs(done - sent);
              if (done <= end) completed += 1;
              if (--outstanding === 0) drained?.();
            },
            () => {
              errors += 1;
              if (--outstanding === 0) drained?.();
            },
          );
        }
        earliest = Math.min(earliest, next[key] as number);
      }
      if (earliest < end) setTimeout(tick, Math.max(0, earliest - now()));
      else resolve();
    };
    tick();
  });
  const elapsed = durationMs / 1000;
  const noisyPerSecond = ((noise?.done ?? 0) - noisyBefore) / elapsed;
  if (outstanding > 0) await new Promise<void>((resolve) => (drained = resolve));
  return {
    fromSend: service.summaryMs(),
    fromDue: latency.summaryMs(),
    quietPerSecond: round(completed / elapsed),
    noisyPerSecond: round(noisyPerSecond),
    errors,
  };
}

/** The round with the median p99 (from send), whole, so its figures stay consistent with each other. */
export function medianRound(runs: QuietPhase[]): QuietPhase {
  const sorted = [...runs].sort((a, b) => a.fromSend.p99 - b.fromSend.p99);
  const middle = sorted[Math.floor((sorted.length - 1) / 2)];
  if (middle === undefined) throw new Error('no rounds');
  return middle;
}
