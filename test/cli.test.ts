import { spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { startServe } from './support/packed.js';
import { snapshotContent } from './support/root.js';
import { hostLayers } from './support/sandbox.js';

// Each test starts several Node processes one after another: minutes on a loaded machine.
vi.setConfig({ testTimeout: 180_000 });

// The built binary, as a user runs it: `pnpm run build` comes first.
const BIN = fileURLToPath(new URL('../packages/cli/dist/bin.js', import.meta.url));
/** A bound for a hung CLI, not a measure: a loaded machine takes seconds to start Node and a pool. */
// A net for a hung CLI, not a speed bound: the demo builds four swarms' artifacts, which a loaded machine slows.
const KILL_AFTER_MS = 100_000;

interface Outcome {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `node bin.js ...args`; resolves whatever the exit status, so tests assert on it. */
function sandpool(...args: string[]): Promise<Outcome> {
  // The runner's NODE_OPTIONS (loaders, inspector) must not leak into the CLI under test.
  const { NODE_OPTIONS: _ignored, ...env } = process.env;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), KILL_AFTER_MS);
    child.on('error', reject);
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

/** The first `error <CODE>:` line on stderr: the contract, rather than the message prose. */
function errorCode(stderr: string): string | undefined {
  return /^error (ERR_SANDPOOL_[A-Z_]+):/m.exec(stderr)?.[1];
}

let root: string;

async function writeLive(swarm: string, version: string): Promise<void> {
  const live = join(root, swarm, 'live');
  await mkdir(live, { recursive: true });
  await writeFile(join(live, 'format.mjs'), `export const VERSION = '${version}';\n`);
  await writeFile(
    join(live, 'notifier_agent.mjs'),
    [
      "import { VERSION } from './format.mjs';",
      `export function notify(msg) { return { version: '${version}', helper: VERSION, msg }; }`,
      "export function echo(...args) { console.log('agent output must not reach stdout'); return args; }",
      "export function fail() { const e = new TypeError('nope'); e.code = 'E_AGENT'; throw e; }",
      'export function slow() { return new Promise((done) => setTimeout(done, 5000)); }',
      '',
    ].join('\n'),
  );
}

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'sandpool-cli-'));
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('sandpool call', () => {
  it('answers from the snapshot after live has changed', async () => {
    await writeLive('a1b2', 'v1');
    const created = await sandpool('snapshot', 'create', 'a1b2', 'jan', '--root', root, '--json');
    expect(created.status).toBe(0);
    expect(JSON.parse(created.stdout)).toMatchObject({ swarm: 'a1b2', name: 'jan', files: 6 });
    await writeLive('a1b2', 'v2');

    const [frozen, live] = await Promise.all([
      sandpool('call', 'a1b2@jan/notifier_agent', 'notify', '"hi"', '--root', root),
      sandpool('call', 'a1b2/notifier_agent', 'notify', '"hi"', '--root', root),
    ]);
    expect(frozen.status).toBe(0);
    expect(JSON.parse(frozen.stdout)).toEqual({ version: 'v1', helper: 'v1', msg: 'hi' });
    expect(live.status).toBe(0);
    expect(JSON.parse(live.stdout)).toEqual({ version: 'v2', helper: 'v2', msg: 'hi' });
  });

  it('passes each json-arg as one JSON value and keeps agent output off stdout', async () => {
    await writeLive('a1b2', 'v1');
    const args = ['1', '"two"', '{"three":[3]}', 'null', '-4'];
    const result = await sandpool('call', 'a1b2/notifier_agent', 'echo', '--root', root, ...args);
    expect(result.status).toBe(0);
    expect(JSON.parse(result.stdout)).toEqual([1, 'two', { three: [3] }, null, -4]);
    expect(result.stderr).toContain('[a1b2/notifier_agent]');
  });

  it('exits 1 with ERR_SANDPOOL_INVALID_KEY for a bad key, printing nothing on stdout', async () => {
    for (const key of ['no-slash', 'a1b2@/notifier_agent', '../etc/passwd', 'node_modules/notifier_agent']) {
      const result = await sandpool('call', key, 'notify', '--root', root);
      expect(result.status).toBe(1);
      expect(errorCode(result.stderr)).toBe('ERR_SANDPOOL_INVALID_KEY');
      expect(result.stdout).toBe('');
    }
    // A swarm named node_modules would sit on every other swarm's resolution path.
    const reserved = await sandpool('snapshot', 'create', 'node_modules', 'jan', '--root', root);
    expect(reserved.status).toBe(1);
    expect(errorCode(reserved.stderr)).toBe('ERR_SANDPOOL_INVALID_KEY');
  });

  it("exits 1 with ERR_SANDPOOL_AGENT_ERROR and the cause's code when the agent throws", async () => {
    await writeLive('a1b2', 'v1');
    const result = await sandpool('call', 'a1b2/notifier_agent', 'fail', '--root', root);
    expect(result.status).toBe(1);
    expect(errorCode(result.stderr)).toBe('ERR_SANDPOOL_AGENT_ERROR');
    expect(result.stderr).toMatch(/^caused by TypeError \[E_AGENT\]/m);
  });

  it('exits 1 with ERR_SANDPOOL_TIMEOUT when --timeout runs out', async () => {
    await writeLive('a1b2', 'v1');
    const result = await sandpool('call', 'a1b2/notifier_agent', 'slow', '--timeout', '100', '--root', root);
    expect(result.status).toBe(1);
    expect(errorCode(result.stderr)).toBe('ERR_SANDPOOL_TIMEOUT');
  });

  it('exits 1 with ERR_SANDPOOL_SNAPSHOT_NOT_FOUND for a snapshot that does not exist', async () => {
    await writeLive('a1b2', 'v1');
    const result = await sandpool('call', 'a1b2@nope/notifier_agent', 'notify', '--root', root);
    expect(result.status).toBe(1);
    expect(errorCode(result.stderr)).toBe('ERR_SANDPOOL_SNAPSHOT_NOT_FOUND');
  });
});

describe('sandpool snapshot', () => {
  it('lists snapshots as JSON, oldest first, and remove drops one', async () => {
    await writeLive('a1b2', 'v1');
    expect((await sandpool('snapshot', 'create', 'a1b2', 'jan', '--root', root)).status).toBe(0);
    await writeLive('a1b2', 'v2');
    expect((await sandpool('snapshot', 'create', 'a1b2', 'jun', '--root', root)).status).toBe(0);

    const listed = await sandpool('snapshot', 'list', 'a1b2', '--root', root, '--json');
    expect(listed.status).toBe(0);
    const infos = JSON.parse(listed.stdout) as { name: string; digest: string; files: number }[];
    expect(infos.map((info) => info.name)).toEqual(['jan', 'jun']);
    for (const info of infos) {
      expect(info.digest).toMatch(/^[0-9a-f]{64}$/);
      expect(info.files).toBe(6); // two sources, their two bundles and the bundles' source maps
    }

    expect((await sandpool('snapshot', 'remove', 'a1b2', 'jan', '--root', root)).status).toBe(0);
    const after = await sandpool('snapshot', 'list', 'a1b2', '--root', root, '--json');
    expect((JSON.parse(after.stdout) as { name: string }[]).map((info) => info.name)).toEqual(['jun']);
  });

  it('verify exits 0 on an intact snapshot and 1 with ERR_SANDPOOL_SNAPSHOT_CORRUPT once a file is edited', async () => {
    await writeLive('a1b2', 'v1');
    expect((await sandpool('snapshot', 'create', 'a1b2', 'jan', '--root', root)).status).toBe(0);
    const intact = await sandpool('snapshot', 'verify', 'a1b2', 'jan', '--root', root, '--json');
    expect(intact.status).toBe(0);
    expect(JSON.parse(intact.stdout)).toMatchObject({ swarm: 'a1b2', name: 'jan' });

    const helper = join(await snapshotContent(root, 'a1b2', 'jan'), 'format.mjs');
    // Snapshot files are 0o444; root could write anyway, but do not rely on that.
    await chmod(helper, 0o644);
    await writeFile(helper, "export const VERSION = 'tampered';\n");
    const corrupt = await sandpool('snapshot', 'verify', 'a1b2', 'jan', '--root', root);
    expect(corrupt.status).toBe(1);
    expect(errorCode(corrupt.stderr)).toBe('ERR_SANDPOOL_SNAPSHOT_CORRUPT');
  });

  it('exits 1 with the store error code for a swarm that does not exist', async () => {
    const result = await sandpool('snapshot', 'create', 'nobody', 'jan', '--root', root);
    expect(result.status).toBe(1);
    expect(errorCode(result.stderr)).toBe('ERR_SANDPOOL_SWARM_NOT_FOUND');
  });
});

describe('sandpool serve', () => {
  it('exits 1 at start when --root is not a folder, before listening', async () => {
    const result = await sandpool('serve', '--root', join(root, 'missing'), '--port', '0');
    expect(result.status).toBe(1);
    expect(errorCode(result.stderr)).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
    expect(result.stderr).toContain('is not a folder');
    expect(result.stdout).not.toContain('listening');
  });

  it('exits 1 on a token file that is not JSON', async () => {
    await writeLive('a1b2', 'v1');
    await writeFile(join(root, 'tokens.json'), '{nope');
    const result = await sandpool('serve', '--root', root, '--port', '0', '--token-file', join(root, 'tokens.json'));
    expect(result.status).toBe(1);
    expect(result.stderr).toContain('not valid JSON');
  });

  it('with --log, logs each call with its key, outcome and duration; --token-file scopes tokens', async () => {
    await writeLive('a1b2', 'v1');
    await writeFile(join(root, 'tokens.json'), JSON.stringify({ t1: { swarms: ['a1b2'] } }));
    const server = await startServe(
      BIN,
      ['--root', root, '--port', '0', '--log', '--token-file', join(root, 'tokens.json')],
      root,
    );
    const post = (key: string, token: string) =>
      fetch(`${server.url}/v1/call/${key}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
        body: JSON.stringify({ fn: 'echo', args: [1] }),
      });
    let stopped: { status: number | null; stdout: string } | undefined;
    try {
      expect((await post('a1b2/notifier_agent', 't1')).status).toBe(200);
      expect((await post('a1b2/nothing', 't1')).status).toBe(404);
      expect((await post('c3d4/notifier_agent', 't1')).status).toBe(403);
      expect((await post('a1b2/notifier_agent', 'wrong')).status).toBe(401);
    } finally {
      stopped = await server.stop();
    }
    expect(stopped.status).toBe(0);
    const calls = stopped.stdout
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as Record<string, unknown>)
      .filter((line) => 'durationMs' in line);
    expect(calls.map(({ key, outcome }) => ({ key, outcome }))).toEqual([
      { key: 'a1b2/notifier_agent', outcome: 'ok' },
      { key: 'a1b2/nothing', outcome: 'ERR_SANDPOOL_MODULE_NOT_FOUND' },
      { key: 'c3d4/notifier_agent', outcome: 'ERR_SANDPOOL_HTTP_FORBIDDEN' },
    ]);
    for (const line of calls) expect(line.durationMs).toEqual(expect.any(Number));
  });

  it('--isolation process says which sandbox layers process keys get; --sandbox require exits without one', async () => {
    await writeLive('a1b2', 'v1');
    // Where the host is root the children run as their swarm's uid, which mkdtemp's 0700 would keep out.
    await chmod(root, 0o755);
    const serve = (sandbox: string) => ['--root', root, '--port', '0', '--isolation', 'process', '--sandbox', sandbox];
    const bare = await startServe(BIN, serve('off'), root);
    let stopped: { status: number | null; stdout: string } | undefined;
    try {
      const call = await fetch(`${bare.url}/v1/call/a1b2/notifier_agent`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ fn: 'notify', args: ['hi'] }),
      });
      expect(call.status).toBe(200);
    } finally {
      stopped = await bare.stop();
    }
    expect(stopped.stdout).toMatch(
      /sandpool serve: process keys run with .*network host; without namespaces \(sandbox is 'off'\); cgroups \(sandbox is 'off'\); userns \(sandbox is 'off'\)/,
    );
    const layers = hostLayers();
    if (layers.missing.length === 0) {
      const whole = await (await startServe(BIN, serve('require'), root)).stop();
      expect(whole.stdout).toContain(
        `sandpool serve: process keys run with namespaces, a uid per swarm, cgroups ${layers.cgroups}, no user namespaces (${layers.userns}), network loopback\n`,
      );
    } else {
      const refused = await sandpool('serve', ...serve('require'));
      expect(refused.status).toBe(1);
      expect(errorCode(refused.stderr)).toBe('ERR_SANDPOOL_INVALID_OPTIONS');
      for (const { layer } of layers.missing) expect(refused.stderr).toContain(layer);
      expect(refused.stdout).not.toContain('listening');
    }
  });
});

describe('usage', () => {
  it.each([
    ['a bad JSON arg', ['call', 'a1b2/notifier_agent', 'notify', '{oops', '--root', '.']],
    ['an unknown command', ['frobnicate']],
    ['no command at all', []],
    ['a missing snapshot name', ['snapshot', 'create', 'a1b2', '--root', '.']],
    ['a missing --root', ['call', 'a1b2/notifier_agent', 'notify']],
    ['a bad --timeout', ['call', 'a1b2/notifier_agent', 'notify', '--timeout', 'soon', '--root', '.']],
    ['an unknown option', ['snapshot', 'list', 'a1b2', '--root', '.', '--bogus']],
    [
      'a sandbox mode that does not exist',
      ['serve', '--root', '.', '--isolation', 'process', '--sandbox', 'sometimes'],
    ],
  ])('exits 2 on %s', async (_case, args) => {
    const result = await sandpool(...args);
    expect(result.status).toBe(2);
    expect(result.stdout).toBe('');
  });

  it('--help exits 0 and names every command', async () => {
    const result = await sandpool('--help');
    expect(result.status).toBe(0);
    for (const command of ['call', 'snapshot', 'demo']) expect(result.stdout).toContain(command);
  });
});

describe('sandpool demo', () => {
  it('exits 0 and shows all five keys, a streamed answer, a host capability, fetch under a policy and the call records', async () => {
    const result = await sandpool('demo');
    expect(result.status).toBe(0);
    for (const key of ['a1b2@jan', 'a1b2@jun', 'a1b2', 'c3d4@jan', 'c3d4']) {
      expect(result.stdout).toContain(`${key}/notifier_agent`);
    }
    expect(result.stdout).toContain('  Each key runs on a worker of its own.   (9 tokens, each printed as it arrived)');
    expect(result.stdout).toMatch(/greet\(7\) +lookupUser\(7\) from e5f6\/assistant +hello Ada, your plan is team/);
    expect(result.stdout).toMatch(/greet\(9\) +lookupUser\(9\) from e5f6\/assistant +hello Linus, your plan is free/);
    // The API answers only requests carrying the host's token; the agent never saw it.
    expect(result.stdout).toMatch(
      /orders\(http:\/\/127\.0\.0\.1:\d+\) +200: #1041 tea, #1042 books \(token seen by the agent: no\)/,
    );
    expect(result.stdout).toMatch(
      /probe\(http:\/\/169\.254\.169\.254\/latest\/meta-data\/\) +ERR_SANDPOOL_ACCESS_DENIED/,
    );
    // The call records: one per call, with its CPU and the capabilities it used.
    expect(result.stdout).toMatch(/^greet +ok +[\d.]+ +[\d.]+ +lookupUser 1$/m);
    expect(result.stdout).toMatch(/^orders +ok +[\d.]+ +[\d.]+ +fetch 1$/m);
  });
});
