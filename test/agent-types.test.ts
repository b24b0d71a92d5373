import type {} from 'sandpool/agent';
import { describe, expect, expectTypeOf, it } from 'vitest';
import { installCleanup, openPool } from './support/pool.js';
import { makeRoot } from './support/root.js';

installCleanup();

// Checked by the compiler only (the test suite's type check): the global as agents see it.
function agentView(): void {
  expectTypeOf(sandpool.key).toEqualTypeOf<string>();
  expectTypeOf(sandpool.signal).toEqualTypeOf<AbortSignal>();
  expectTypeOf(sandpool.deadline).toEqualTypeOf<number | null>();
  // Unaugmented, any name is an async function (possibly absent, under noUncheckedIndexedAccess).
  expectTypeOf(sandpool.host.anything?.(1, 'two')).toEqualTypeOf<Promise<unknown> | undefined>();
  const moved = sandpool.transfer({ bytes: new Uint8Array(4) }, [new ArrayBuffer(4)]);
  expectTypeOf(moved.bytes).toEqualTypeOf<Uint8Array<ArrayBuffer>>();
  // @ts-expect-error the global is read-only
  sandpool.key = 'other';
}
void agentView;

const AGENT = `import type {} from 'sandpool/agent';

export async function who(id: number): Promise<string> {
  const name = (await sandpool.host.lookupUser(id)) as string;
  return \`\${sandpool.key}: \${name}\`;
}
`;

describe('sandpool/agent', () => {
  it('a TypeScript agent importing the global types runs with no dependency in its folder', async () => {
    const pool = openPool({
      root: await makeRoot({ 'ts/live/typed.mts': AGENT }),
      host: { lookupUser: (_ctx, id: number) => `user ${id}` },
    });
    expect(await pool.call('ts/typed', 'who', [7])).toBe('ts/typed: user 7');
  });
});
