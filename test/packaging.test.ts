import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  freshProject,
  mustRun,
  npmInstall,
  PACKAGES,
  type PackageDir,
  packAll,
  run,
  startServe,
  TSC,
  tempDir,
} from './support/packed.js';

/**
 * What a new user gets: the packed tarballs installed by npm, with `--engine-strict`, into
 * projects outside the workspace, on the Node running this suite (CI runs it on 20 and 24).
 */

import { CONSUMER, CONSUMER_JS, HELLO_AGENT, STRICT } from './support/consumer.js';

let scratch: Awaited<ReturnType<typeof tempDir>>;
let tarballs: Record<PackageDir, string>;
/** Both projects install at once, while the tarballs are checked: each describe awaits its own. */
let installs: { lean: Promise<string>; full: Promise<string> };

beforeAll(async () => {
  scratch = await tempDir('sandpool-packaging-');
  tarballs = await packAll(join(scratch.path, 'tarballs'));
  installs = { lean: installLean(), full: installFull() };
  // Awaited by their describes; a failure before then must not surface as unhandled.
  for (const install of Object.values(installs)) install.catch(() => {});
}, 240_000);

async function installLean(): Promise<string> {
  const project = await freshProject(scratch.path, 'lean');
  await npmInstall(project, [
    tarballs.sandpool,
    tarballs.cli,
    // Whatever @types/node a new user gets today; test:types checks each major.
    '@types/node',
  ]);
  await writeFile(join(project, 'consumer.mts'), CONSUMER);
  await writeFile(join(project, 'consumer-js.mts'), CONSUMER_JS);
  await mkdir(join(project, 'agents', 'a', 'live'), { recursive: true });
  await writeFile(join(project, 'agents', 'a', 'live', 'hello.mjs'), HELLO_AGENT);
  return project;
}

async function installFull(): Promise<string> {
  const project = await freshProject(scratch.path, 'full');
  await npmInstall(project, [tarballs.sandpool, tarballs.server, tarballs.cli]);
  await mkdir(join(project, 'agents', 'a', 'live'), { recursive: true });
  await writeFile(join(project, 'agents', 'a', 'live', 'hello.mjs'), HELLO_AGENT);
  return project;
}

afterAll(async () => {
  await scratch?.remove();
});

describe('each tarball', () => {
  it.each(PACKAGES)('%s carries README, LICENSE and every file its source maps name', async (name) => {
    const unpacked = join(scratch.path, 'unpacked', name);
    await mkdir(unpacked, { recursive: true });
    await mustRun('tar', ['xzf', tarballs[name], '-C', unpacked], scratch.path);
    const root = join(unpacked, 'package');
    const files = await listFiles(root);
    expect(files).toEqual(expect.arrayContaining(['README.md', 'LICENSE', 'package.json']));
    expect(files.filter((file) => file.endsWith('.tsbuildinfo'))).toEqual([]);
    const license = await readFile(join(root, 'LICENSE'), 'utf8');
    expect(license).toMatch(/^MIT License/);

    const maps = files.filter((file) => file.endsWith('.map'));
    expect(maps.length).toBeGreaterThan(0);
    const dangling: string[] = [];
    for (const map of maps) {
      const { sources } = JSON.parse(await readFile(join(root, map), 'utf8')) as { sources: string[] };
      for (const source of sources) {
        const target = relative(root, resolve(dirname(join(root, map)), source));
        if (!files.includes(target)) dangling.push(`${map} -> ${source}`);
      }
    }
    expect(dangling).toEqual([]);

    const manifest = JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as Record<string, unknown>;
    expect(JSON.stringify(manifest)).not.toContain('workspace:');
    expect(manifest.engines).toEqual({ node: '>=20.19' });
  });
});

describe('sandpool and the CLI without the server', () => {
  let project: string;

  beforeAll(async () => {
    project = await installs.lean;
  }, 240_000);

  it('installs neither the server nor fastify nor prom-client', async () => {
    const installed = await readdir(join(project, 'node_modules'));
    expect(installed).toEqual(expect.arrayContaining(['sandpool', '@sandpool', 'commander', 'zod']));
    for (const absent of ['fastify', 'prom-client']) expect(installed).not.toContain(absent);
    expect(await readdir(join(project, 'node_modules', '@sandpool'))).toEqual(['cli']);
    // The CLI's `sandpool` dependency is the tarball installed beside it, not a registry copy.
    await expect(stat(join(project, 'node_modules', '@sandpool', 'cli', 'node_modules'))).rejects.toThrow();
  });

  it('a strict nodenext consumer compiles (remote<typeof import(agent.mjs)> through allowJs), runs and calls an agent', async () => {
    await writeJson(join(project, 'tsconfig.json'), {
      compilerOptions: { ...STRICT, types: ['node'], allowJs: true },
      files: ['consumer.mts', 'consumer-js.mts'],
    });
    const compiled = await run(process.execPath, [TSC, '-p', 'tsconfig.json'], project);
    expect(compiled.stdout + compiled.stderr).toBe('');
    expect(compiled.status).toBe(0);
    const output = await mustRun(process.execPath, [join('out', 'consumer.mjs'), './agents'], project);
    expect(JSON.parse(output)).toEqual({ text: 'hello types', code: 'ERR_SANDPOOL_EXPORT_NOT_FOUND' });
  }, 240_000);

  it('runs `sandpool call` from the installed bin', async () => {
    const result = await run(
      join(project, 'node_modules', '.bin', 'sandpool'),
      ['call', 'a/hello', 'greet', '"cli"', '--root', './agents'],
      project,
    );
    expect(result).toMatchObject({ status: 0, stdout: '"hello cli"\n' });
  });

  it('`sandpool serve` exits 1 and says which package to install', async () => {
    const result = await run(
      join(project, 'node_modules', '.bin', 'sandpool'),
      ['serve', '--root', './agents'],
      project,
    );
    expect(result.status).toBe(1);
    expect(result.stderr).toContain('error ERR_SANDPOOL_SERVER_MISSING: sandpool serve needs the server package');
    expect(result.stderr).toContain('npm install @sandpool/server@0.1.0');
  });
});

describe('the CLI with the server', () => {
  let project: string;

  beforeAll(async () => {
    project = await installs.full;
  }, 240_000);

  it('`sandpool serve` answers a call over HTTP and stops on SIGTERM', async () => {
    const bin = join(project, 'node_modules', '@sandpool', 'cli', 'dist', 'bin.js');
    const server = await startServe(bin, ['--root', './agents', '--port', '0', '--node-name', 'packed'], project);
    try {
      const reply = await fetch(`${server.url}/v1/call/a/hello`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ fn: 'greet', args: ['http'] }),
      });
      expect(reply.headers.get('x-sandpool-node')).toBe('packed');
      expect(await reply.json()).toEqual({ result: 'hello http' });
    } finally {
      expect((await server.stop()).status).toBe(0);
    }
  });
});

async function listFiles(root: string): Promise<string[]> {
  const entries = await readdir(root, { recursive: true, withFileTypes: true });
  return entries
    .filter((entry) => entry.isFile())
    .map((entry) => relative(root, join(entry.parentPath, entry.name)))
    .sort();
}

async function writeJson(path: string, value: unknown): Promise<void> {
  await writeFile(path, `${JSON.stringify(value, null, 2)}\n`);
}
