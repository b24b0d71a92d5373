import { mkdir, mkdtemp, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { run, startServe, WORKSPACE } from './support/packed.js';

// The built binary, as an operator runs it: `pnpm run build` comes first.
const BIN = fileURLToPath(new URL('../packages/cli/dist/bin.js', import.meta.url));

/** A project folder as a platform has it: the packages installed, agents, a config file. */
let project = '';

beforeEach(async () => {
  project = await mkdtemp(join(tmpdir(), 'sandpool-config-'));
  await mkdir(join(project, 'node_modules', '@sandpool'), { recursive: true });
  await symlink(join(WORKSPACE, 'packages', 'sandpool'), join(project, 'node_modules', 'sandpool'));
  await symlink(join(WORKSPACE, 'packages', 'server'), join(project, 'node_modules', '@sandpool', 'server'));
  await writeFile(join(project, 'package.json'), '{"type":"module"}\n');
  await write('agents/a1b2/live/greeter.mjs', [
    'export async function greet(id) {',
    '  const user = await sandpool.host.lookupUser(id);',
    "  return { text: 'hello ' + user.name + ', asked by ' + user.askedBy, pid: process.pid, region: process.env.REGION };",
    '}',
  ]);
  await write('agents/proc/live/greeter.mjs', ['export const where = () => process.pid;']);
});

afterEach(async () => {
  await rm(project, { recursive: true, force: true });
});

async function write(path: string, lines: readonly string[]): Promise<void> {
  await mkdir(dirname(join(project, path)), { recursive: true });
  await writeFile(join(project, path), `${lines.join('\n')}\n`);
}

function serve(...args: string[]) {
  return startServe(BIN, args, project);
}

/** `sandpool serve` that must not start: its exit status and stderr. */
function refused(...args: string[]) {
  return run(process.execPath, [BIN, 'serve', ...args], project, 30_000);
}

async function call(
  url: string,
  key: string,
  fn: string,
  args: unknown[],
  token?: string,
): Promise<{ status: number; node: string | null; body: Record<string, unknown> }> {
  const response = await fetch(`${url}/v1/call/${key}`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
    },
    body: JSON.stringify({ fn, args }),
  });
  return {
    status: response.status,
    node: response.headers.get('x-sandpool-node'),
    body: (await response.json()) as Record<string, unknown>,
  };
}

/** A platform's config: capabilities, isolation as a function of the key, the agents' env, tokens. */
const PLATFORM_CONFIG = [
  "import { defineConfig } from '@sandpool/server';",
  'export default defineConfig({',
  '  pool: {',
  "    root: './agents',",
  "    host: { lookupUser: async (ctx, id) => ({ id, name: 'Ada', askedBy: ctx.swarm }) },",
  "    isolation: (key) => (key.swarm === 'proc' ? 'process' : 'thread'),",
  "    permissions: (key) => (key.swarm === 'proc' ? 'none' : 'strict'),",
  // The test's folder is the test user's own (mode 700): its process keys run as that user, not nobody.
  "    processUser: 'host',",
  "    env: { REGION: 'eu-1' },",
  '    maxWorkers: 8,',
  '  },',
  "  server: { nodeName: 'from-config', port: 0, token: 'config-token', metricsSwarms: 10 },",
  '});',
];

describe('sandpool serve --config', () => {
  it("runs a platform's config: capabilities, per-key isolation, env, node name and token from the file", async () => {
    await write('sandpool.config.mjs', PLATFORM_CONFIG);
    const server = await serve('--config', 'sandpool.config.mjs');
    try {
      expect((await call(server.url, 'a1b2/greeter', 'greet', [7])).status).toBe(401);
      const thread = await call(server.url, 'a1b2/greeter', 'greet', [7], 'config-token');
      expect(thread).toMatchObject({
        status: 200,
        node: 'from-config',
        body: { result: { text: 'hello Ada, asked by a1b2', region: 'eu-1' } },
      });
      const child = await call(server.url, 'proc/greeter', 'where', [], 'config-token');
      expect(child, JSON.stringify(child.body)).toMatchObject({ status: 200 });
      // isolation as a function of the key: this key runs in a process of its own.
      expect(child.body.result).not.toBe((thread.body.result as { pid: number }).pid);
    } finally {
      expect((await server.stop()).status).toBe(0);
    }
  });

  it('lets a flag given on the command line win over the same setting in the file', async () => {
    await write('sandpool.config.mjs', PLATFORM_CONFIG);
    await writeFile(join(project, 'tokens.json'), JSON.stringify({ 'file-token': { swarms: ['a1b2'] } }));
    const server = await serve(
      '--config',
      'sandpool.config.mjs',
      '--node-name',
      'from-flag',
      '--token',
      'flag-token',
      '--token-file',
      'tokens.json',
    );
    try {
      expect(await call(server.url, 'a1b2/greeter', 'greet', [1], 'flag-token')).toMatchObject({
        status: 200,
        node: 'from-flag',
      });
      expect((await call(server.url, 'a1b2/greeter', 'greet', [1], 'file-token')).status).toBe(200);
      expect((await call(server.url, 'a1b2/greeter', 'greet', [1], 'config-token')).status).toBe(401);
    } finally {
      await server.stop();
    }
  });

  it('loads a TypeScript config and the local TypeScript it imports, on this Node line, and leaves no file behind', async () => {
    await write('config/users.ts', [
      'export interface User { id: number; name: string }',
      "export const users: ReadonlyMap<number, User> = new Map([[7, { id: 7, name: 'Grace' }]]);",
    ]);
    await write('config/sandpool.config.ts', [
      "import { defineConfig } from '@sandpool/server';",
      "import type { HostContext } from 'sandpool';",
      "import { users } from './users.ts';",
      'enum Port { Any = 0 }',
      'export default defineConfig({',
      '  pool: {',
      "    root: './agents',",
      '    host: {',
      "      lookupUser: async (ctx: HostContext, id: number) => ({ name: users.get(id)?.name ?? '?', askedBy: ctx.swarm }),",
      '    },',
      '  },',
      "  server: { nodeName: 'typed', port: Port.Any },",
      '});',
    ]);
    const server = await serve('--config', 'config/sandpool.config.ts');
    try {
      expect(await call(server.url, 'a1b2/greeter', 'greet', [7])).toMatchObject({
        status: 200,
        node: 'typed',
        body: { result: { text: 'hello Grace, asked by a1b2' } },
      });
    } finally {
      await server.stop();
    }
    expect((await readdir(join(project, 'config'))).sort()).toEqual(['sandpool.config.ts', 'users.ts']);
  });

  it('refuses a config that fails its schema with exit 2, naming every field at fault, before listening', async () => {
    await write('sandpool.config.mjs', [
      'export default {',
      "  pool: { root: './agents', maxWorkers: 0, host: 'not functions', isolation: 'vm' },",
      '  server: { port: 70000, tokenz: {} },',
      '};',
    ]);
    const result = await refused('--config', 'sandpool.config.mjs');
    expect(result.status).toBe(2);
    expect(result.stdout).not.toContain('listening');
    const line = result.stderr.trim();
    expect(line).toMatch(/^error ERR_SANDPOOL_INVALID_OPTIONS: invalid config sandpool\.config\.mjs: /);
    for (const field of ['pool.maxWorkers', 'pool.host', 'pool.isolation', 'server.port', 'server.tokenz']) {
      expect(line).toContain(`${field}: `);
    }
  });

  it.each([
    ['a file that does not exist', [], 'missing.mjs', /--config missing\.mjs: no such file/],
    [
      'a kind of file it cannot load',
      [],
      'sandpool.config.json',
      /expected a \.mjs, \.js, \.cjs, \.ts, \.mts or \.cts file/,
    ],
    ['TypeScript that does not compile', ['const x: = 1;', 'export default {};'], 'bad.ts', /bad\.ts:1:\d+: /],
    ['a module that throws', ["throw new Error('no database');"], 'throws.mjs', /throws\.mjs: no database/],
    ['no default export', ['export const pool = {};'], 'named.mjs', /named\.mjs: no default export/],
    [
      'a default export that is no object',
      ['export default 42;'],
      'number.mjs',
      /must be an object \{ pool, server \}/,
    ],
    ['no root anywhere', ['export default { server: {} };'], 'noroot.mjs', /no root: give --root, or pool\.root/],
  ])('exits 2 on %s', async (_case, lines, file, message) => {
    if (lines.length > 0) await write(file, lines);
    if (file.endsWith('.json')) await write(file, ['{}']);
    const result = await refused('--config', file);
    expect(result.status).toBe(2);
    expect(result.stderr).toMatch(/^error ERR_SANDPOOL_INVALID_OPTIONS: /);
    expect(result.stderr).toMatch(message);
    expect(result.stdout).toBe('');
  });
});
