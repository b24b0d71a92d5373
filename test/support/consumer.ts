/** The user project the packaging and type tests compile: strict, nodenext, every lib file checked. */

export const HELLO_AGENT = [
  'export function greet(name) {',
  "  return 'hello ' + name;",
  '}',
  'export const version = 1;',
  '',
].join('\n');

export const STRICT = {
  strict: true,
  noUncheckedIndexedAccess: true,
  exactOptionalPropertyTypes: true,
  noImplicitOverride: true,
  module: 'nodenext',
  moduleResolution: 'nodenext',
  target: 'es2022',
  lib: ['es2023'],
  // Off on purpose: the published .d.ts files are what is under test.
  skipLibCheck: false,
  rootDir: '.',
  outDir: 'out',
};

export const CONSUMER = `import { createPool, isSandpoolError, type PoolOptions, type Remote } from 'sandpool';

interface Greeter {
  greet(name: string): string;
}

const options: PoolOptions = { root: process.argv[2] ?? './agents', spareWorkers: 0 };
const pool = createPool(options);
try {
  const agent: Remote<Greeter> = pool.remote<Greeter>('a/hello');
  const text: string = await agent.greet('types');
  const failure: unknown = await pool.call('a/hello', 'nope').catch((error: unknown) => error);
  const code: string = isSandpoolError(failure) ? failure.code : 'none';
  console.log(JSON.stringify({ text, code }));
} finally {
  await pool.close();
}

// Never called: proves the proxy's parameters are typed, not any.
export function misuse(agent: Remote<Greeter>): void {
  // @ts-expect-error greet takes a string
  void agent.greet(1);
}
`;

export const CONSUMER_JS = `import { createPool } from 'sandpool';

const pool = createPool({ root: './agents', spareWorkers: 0 });
const agent = pool.remote<typeof import('./agents/a/live/hello.mjs')>('a/hello');
export const text: Promise<string> = agent.greet('js');
// @ts-expect-error version is a constant, not a function: remote() leaves it out
void agent.version;
`;
