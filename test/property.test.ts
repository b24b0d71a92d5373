import fc from 'fast-check';
import { AgentKeySchema, createPool, SandpoolError } from 'sandpool';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually, recordEvents, threadCount } from './support/pool.js';
import { fixture, makeRoot, removeRoots } from './support/root.js';

const KEYS = ['s1/faulty', 's2/faulty', 's3/faulty'] as const;

type Step =
  | { op: 'call'; key: number; behaviour: 'ok' | 'throw' | 'hang' | 'exit' | 'slow' }
  | { op: 'invalidate'; key: number }
  | { op: 'pause' };

const step: fc.Arbitrary<Step> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      op: fc.constant('call' as const),
      key: fc.integer({ min: 0, max: KEYS.length - 1 }),
      behaviour: fc.constantFrom(
        'ok' as const,
        'ok' as const,
        'throw' as const,
        'hang' as const,
        'exit' as const,
        'slow' as const,
      ),
    }),
  },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('invalidate' as const), key: fc.integer({ min: 0, max: 2 }) }) },
  { weight: 1, arbitrary: fc.constant({ op: 'pause' as const }) },
);

/** Codes any call may meet here: a neighbour on its worker timed out or exited, back-off, close. */
const ANY_CALL = ['ERR_SANDPOOL_WORKER_EXITED', 'ERR_SANDPOOL_TIMEOUT', 'ERR_SANDPOOL_CLOSED'];

const CALLS: Record<
  Extract<Step, { op: 'call' }>['behaviour'],
  { fn: string; args: unknown[]; value?: unknown; codes: string[] }
> = {
  ok: { fn: 'echo', args: ['fine'], value: 'fine', codes: ANY_CALL },
  throw: { fn: 'fail', args: ['E_PROP'], codes: ['ERR_SANDPOOL_AGENT_ERROR', ...ANY_CALL] },
  hang: { fn: 'hang', args: [], codes: ANY_CALL },
  exit: { fn: 'exit', args: [1], codes: ANY_CALL },
  slow: { fn: 'size', args: ['abc'], value: 3, codes: ANY_CALL },
};

/** Every call must settle by then: a call left hanging fails the property, not the test timeout. */
const SETTLE_MS = 8_000;

function settledInTime<T>(promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`not settled within ${SETTLE_MS} ms`)), SETTLE_MS);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

let root = '';

beforeAll(async () => {
  const agent = await fixture('faulty.mjs');
  root = await makeRoot(Object.fromEntries(KEYS.map((key) => [`${key.split('/')[0]}/live/faulty.mjs`, agent])));
});
afterAll(removeRoots);

describe('the coordinator under random sequences', () => {
  it('settles every call with its value or a code its scenario allows, within maxWorkers, and leaves no thread', {
    timeout: 60_000,
  }, async () => {
    const baseline = threadCount();
    await fc.assert(
      fc.asyncProperty(fc.array(step, { minLength: 1, maxLength: 14 }), async (steps) => {
        const pool = createPool({ root, maxWorkers: 2, spareWorkers: 1, callTimeoutMs: 80, idleTimeoutMs: 0 });
        const { peak } = recordEvents(pool);
        const outcomes: Promise<unknown>[] = [];
        for (const s of steps) {
          if (s.op === 'call') {
            const { fn, args, value, codes } = CALLS[s.behaviour];
            outcomes.push(
              pool.call(KEYS[s.key] as string, fn, args).then(
                (result) => expect(result).toEqual(value),
                (error: unknown) => {
                  expect(error).toBeInstanceOf(SandpoolError);
                  expect(codes).toContain((error as SandpoolError).code);
                },
              ),
            );
          } else if (s.op === 'invalidate') {
            outcomes.push(pool.invalidate({ swarm: (KEYS[s.key] as string).split('/')[0] as string }));
          } else {
            await new Promise((resolve) => setTimeout(resolve, 20));
          }
        }
        const closing = pool.close();
        await settledInTime(Promise.all(outcomes));
        await settledInTime(closing);
        expect(peak()).toBeLessThanOrEqual(2);
        expect(pool.stats()).toMatchObject({ workers: 0, spares: 0 });
      }),
      { numRuns: 25, interruptAfterTimeLimit: 15_000 },
    );
    await eventually(() => threadCount() <= baseline).catch(() => {
      throw new Error(`threads: ${threadCount()} now, ${baseline} before`);
    });
  });
});

describe('key validation', () => {
  it('the pool accepts exactly the object keys AgentKeySchema accepts', async () => {
    const pool = createPool({ root, spareWorkers: 0 });
    const part = fc.stringMatching(/^[A-Za-z0-9_.\-/@а\0]{0,8}$/);
    try {
      await fc.assert(
        fc.asyncProperty(
          fc.record(
            { swarm: part, snapshot: fc.option(part, { nil: undefined }), stem: part },
            { requiredKeys: ['swarm', 'stem'] },
          ),
          async (key) => {
            const valid = AgentKeySchema.safeParse(key).success;
            const outcome = await pool.call(key, 'f').then(
              () => 'resolved',
              (error: SandpoolError) => error.code,
            );
            if (valid) expect(outcome).not.toBe('ERR_SANDPOOL_INVALID_KEY');
            else expect(outcome).toBe('ERR_SANDPOOL_INVALID_KEY');
          },
        ),
        { numRuns: 300 },
      );
    } finally {
      await pool.close();
    }
  });
});
