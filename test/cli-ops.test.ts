import { type ChildProcess, spawn } from 'node:child_process';
import { chmod, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it, vi } from 'vitest';
import { describeLayers } from '../packages/cli/dist/layers.js';
import { counterAgent, makeRoot } from './support/root.js';
import { hostLayers } from './support/sandbox.js';
import { installServerCleanup, openServer, request } from './support/server.js';

// Each test starts several Node processes one after another: minutes on a loaded machine.
vi.setConfig({ testTimeout: 180_000 });

installServerCleanup();

const BIN = fileURLToPath(new URL('../packages/cli/dist/bin.js', import.meta.url));
const CLEAR = '\u001b[H\u001b[2J';
const TOKENS = {
  tok: { swarms: '*' as const, write: true },
  'read-a': { swarms: ['a'] },
  'write-b': { swarms: ['b'], write: true },
};

interface Outcome {
  status: number | null;
  stdout: string;
  stderr: string;
}

function start(args: string[], env: Record<string, string> = {}): ChildProcess {
  // The runner's NODE_OPTIONS must not leak into the CLI, nor a token from the caller's shell.
  const { NODE_OPTIONS: _options, SANDPOOL_TOKEN: _token, ...rest } = process.env;
  return spawn(process.execPath, [BIN, ...args], { env: { ...rest, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
}

function finish(child: ChildProcess, onOut: (text: string) => void = () => undefined): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk;
      onOut(stdout);
    });
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    // A bound for a hung CLI, not a measure: a loaded machine takes seconds to start Node.
    const timer = setTimeout(() => child.kill('SIGKILL'), 45_000);
    child.on('error', reject);
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

const sandpool = (args: string[], env?: Record<string, string>): Promise<Outcome> => finish(start(args, env));

async function listening(
  options: Partial<Parameters<typeof openServer>[0]> = {},
): Promise<{ url: string; root: string; call: (key: string, fn: string) => Promise<void> }> {
  const root = await makeRoot({ ...(await counterAgent('a')), ...(await counterAgent('b')) });
  // Readable by a process key's uid, as makeRoot's 0700 folder is not.
  await chmod(root, 0o755);
  const server = openServer({ root, tokens: TOKENS, ...options });
  const url = await server.app.listen({ port: 0, host: '127.0.0.1' });
  const call = async (key: string, fn: string): Promise<void> => {
    await request(server, 'POST', `/v1/call/${key}`, { fn, args: [1, 2] }, { authorization: 'Bearer tok' });
  };
  return { url, root, call };
}

/** The table's rows, cells split where the columns are two or more spaces apart. */
function rowsOf(text: string): string[][] {
  return text
    .trim()
    .split('\n')
    .slice(3)
    .map((line) => line.split(/ {2,}/));
}

describe('sandpool top', () => {
  it('--once prints the keys of a running server, busiest first, and exits', async () => {
    const { url, call } = await listening();
    for (let n = 0; n < 3; n += 1) await call('a/notifier_agent', 'add');
    await call('b/notifier_agent', 'nope');

    const top = await sandpool(['top', '--url', url, '--token', 'tok', '--sort', 'calls', '--once']);
    expect(top.stderr).toBe('');
    expect(top.status).toBe(0);
    expect(top.stdout).not.toContain(CLEAR);
    const lines = top.stdout.trim().split('\n');
    expect(lines[0]).toMatch(
      /^node node-1: 2 keys, by calls, \d\d:\d\d:\d\d UTC; unattributed cpu s: libuv \d+\.\d\d, v8 \d+\.\d\d, other \d+\.\d\d$/,
    );
    expect(lines[1]?.split(/ {2,}/)).toEqual([
      'key',
      'state',
      'isolation',
      'workers',
      'cpu%',
      'cpu s',
      'heap MB',
      'ext MB',
      'cell MB',
      'calls',
      'errors',
      'in flight',
      'queued',
      'p50 ms',
      'p99 ms',
      'demoted',
    ]);
    const [first, second] = rowsOf(top.stdout);
    expect(first?.slice(0, 5)).toEqual(['a/notifier_agent', 'ready', 'thread', '1', '-']);
    expect(first?.slice(8, 13)).toEqual(['-', '3', '0', '0', '0']);
    expect(second?.[0]).toBe('b/notifier_agent');
    expect(second?.slice(9, 11)).toEqual(['1', '1']);

    // A scoped token, read from the environment as `serve` reads it, sees only its swarm.
    const scoped = await sandpool(['top', '--url', url], { SANDPOOL_TOKEN: 'read-a' });
    expect(scoped.status).toBe(0);
    expect(rowsOf(scoped.stdout).map((row) => row[0])).toEqual(['a/notifier_agent']);
  });

  it("shows the sandbox layers of the node's process keys, and a process key's cell memory against its cgroup's bound", async () => {
    const { url, call } = await listening({ isolation: (key) => (key.swarm === 'b' ? 'process' : 'thread') });
    await call('a/notifier_agent', 'add');
    await call('b/notifier_agent', 'add');
    const layers = hostLayers();

    const top = await sandpool(['top', '--url', url, '--token', 'tok', '--sort', 'calls', '--once']);
    expect(top.status).toBe(0);
    const [summary] = top.stdout.split('\n');
    expect(summary?.endsWith(`; process keys: ${describeLayers(layers)}`)).toBe(true);
    const rows = new Map(rowsOf(top.stdout).map((row) => [row[0], row]));
    expect(rows.get('a/notifier_agent')?.slice(2, 3)).toEqual(['thread']);
    expect(rows.get('a/notifier_agent')?.[8]).toBe('-');
    expect(rows.get('b/notifier_agent')?.[2]).toBe('process');
    // In a cgroup: what it holds now over what the kernel bounds it to (256 MB heap, 256 external, 96 runtime, 64 room).
    if (layers.cgroups !== null) expect(rows.get('b/notifier_agent')?.[8]).toMatch(/^(-|\d+\.\d)\/672\.0$/);
    else expect(rows.get('b/notifier_agent')?.[8]).toBe('-');
  });

  it('without a terminal prints once; --watch redraws until interrupted, with a CPU share', async () => {
    const { url, call } = await listening();
    await call('a/notifier_agent', 'add');

    const piped = await sandpool(['top', '--url', url, '--token', 'tok']);
    expect(piped.status).toBe(0);
    expect(piped.stdout.split('\n')[0]).toMatch(/^node node-1: 1 keys/);

    const child = start(['top', '--url', url, '--token', 'tok', '--watch', '--interval', '100']);
    let interrupted = false;
    const done = finish(child, (stdout) => {
      // Once: a second Ctrl-C while it stops would end it by the signal, as it would a user's.
      if (interrupted || stdout.split(CLEAR).length <= 3) return;
      interrupted = true;
      child.kill('SIGINT');
    });
    const watched = await done;
    expect(watched.status).toBe(0);
    const frames = watched.stdout.split(CLEAR).slice(1);
    expect(frames.length).toBeGreaterThanOrEqual(3);
    // From the second frame on there is a previous sample, so the share is a number.
    expect(rowsOf(frames[0] ?? '')[0]?.[4]).toBe('-');
    expect(rowsOf(frames[2] ?? '')[0]?.[4]).toMatch(/^\d+$/);
  });

  it('exits 1 with the server’s error code, or unreachable; 2 on bad usage', async () => {
    const { url } = await listening();
    const denied = await sandpool(['top', '--url', url, '--token', 'wrong', '--once']);
    expect(denied.status).toBe(1);
    expect(denied.stderr).toMatch(/^error ERR_SANDPOOL_HTTP_UNAUTHORIZED: /);
    const away = await sandpool(['top', '--url', 'http://127.0.0.1:1', '--once']);
    expect(away.status).toBe(1);
    expect(away.stderr).toMatch(/^error ERR_SANDPOOL_HTTP_UNREACHABLE: cannot reach http:\/\/127\.0\.0\.1:1/);
    expect((await sandpool(['top', '--url', url, '--once', '--watch'])).status).toBe(2);
    expect((await sandpool(['top', '--url', 'ftp://x', '--once'])).status).toBe(2);
    expect((await sandpool(['top', '--url', url, '--sort', 'name', '--once'])).status).toBe(2);
  });
});

describe('sandpool invalidate', () => {
  it('reloads a swarm on a running server; exits 1 and names the keys whose new code failed', async () => {
    const { url, root, call } = await listening();
    await call('a/notifier_agent', 'add');
    await call('b/notifier_agent', 'add');

    const ok = await sandpool(['invalidate', 'a', '--url', url, '--token', 'tok']);
    expect(ok).toMatchObject({ status: 0, stdout: 'reloaded a/notifier_agent\n', stderr: '' });
    const json = await sandpool([
      'invalidate',
      'b',
      '--stem',
      'notifier_agent',
      '--url',
      url,
      '--token',
      'tok',
      '--json',
    ]);
    expect(json.status).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual({ reloaded: ['b/notifier_agent'], failed: [] });
    const none = await sandpool(['invalidate', 'a', '--snapshot', 'jan', '--url', url, '--token', 'tok']);
    expect(none).toMatchObject({ status: 0, stdout: 'nothing to reload on node node-1: no worker of it is running\n' });

    await writeFile(join(root, 'a/live/notifier_agent.mjs'), "import './gone.mjs';\n");
    const failed = await sandpool(['invalidate', 'a', '--url', url, '--token', 'tok']);
    expect(failed.status).toBe(1);
    expect(failed.stdout).toBe('');
    const lines = failed.stderr.trim().split('\n');
    expect(lines[0]).toMatch(/^failed a\/notifier_agent: ERR_SANDPOOL_MODULE_LOAD: /);
    expect(lines[1]).toMatch(/^error ERR_SANDPOOL_HTTP_RELOAD_FAILED: 1 of 1 keys failed/);
    expect(failed.stderr).not.toContain(root);

    const forbidden = await sandpool(['invalidate', 'a', '--url', url], { SANDPOOL_TOKEN: 'read-a' });
    expect(forbidden.status).toBe(1);
    expect(forbidden.stderr).toMatch(/^error ERR_SANDPOOL_HTTP_FORBIDDEN: /);
    expect((await sandpool(['invalidate', '--url', url])).status).toBe(2);
  });
});

describe('sandpool deploy, and snapshot --url', () => {
  it("deploys a folder as a swarm's live files and snapshots it on a running server, as --root does locally", async () => {
    const { url, root, call } = await listening();
    await call('a/notifier_agent', 'add');
    const folder = await makeRoot({
      'notifier_agent.mjs': "import { tag } from './lib/tag.mjs';\nexport const which = () => tag('v2');\n",
      'lib/tag.mjs': "export const tag = (text) => 'deployed-' + text;\n",
    });

    const deployed = await sandpool(['deploy', 'a', folder, '--url', url, '--token', 'tok']);
    expect(deployed).toMatchObject({ status: 0, stderr: '' });
    expect(deployed.stdout).toMatch(/^deployed a on node node-1: 2 files, \d+ bytes\nreloaded a\/notifier_agent\n$/);
    const server = await fetch(`${url}/v1/call/a/notifier_agent`, {
      method: 'POST',
      headers: { authorization: 'Bearer tok', 'content-type': 'application/json' },
      body: JSON.stringify({ fn: 'which', args: [] }),
    });
    expect(await server.json()).toEqual({ result: 'deployed-v2' });

    const created = await sandpool(['snapshot', 'create', 'a', 'jun', '--url', url, '--token', 'tok', '--json']);
    expect(created.status).toBe(0);
    // Its two files, the stem's bundle and its source map.
    expect(JSON.parse(created.stdout)).toMatchObject({ swarm: 'a', name: 'jun', files: 4, stems: ['notifier_agent'] });
    const listed = await sandpool(['snapshot', 'list', 'a', '--url', url, '--token', 'tok', '--json']);
    expect((JSON.parse(listed.stdout) as { name: string }[]).map((info) => info.name)).toEqual(['jun']);
    const verified = await sandpool(['snapshot', 'verify', 'a', 'jun', '--url', url, '--token', 'tok']);
    expect(verified.stdout).toMatch(/^verified a@jun: 4 files/);
    // The same store as --root on the server's own machine.
    const local = await sandpool(['snapshot', 'list', 'a', '--root', root, '--json']);
    expect(JSON.parse(local.stdout)).toEqual(JSON.parse(listed.stdout));
    expect(await sandpool(['snapshot', 'remove', 'a', 'jun', '--url', url, '--token', 'tok'])).toMatchObject({
      status: 0,
      stdout: 'removed a@jun\n',
    });

    // A token scoped to swarm a reads it but may not deploy there; nor may a write token of another swarm.
    const forbidden = await sandpool(['deploy', 'a', folder, '--url', url], { SANDPOOL_TOKEN: 'read-a' });
    expect(forbidden.status).toBe(1);
    expect(forbidden.stderr).toMatch(/^error ERR_SANDPOOL_HTTP_FORBIDDEN: /);
    const otherSwarm = await sandpool(['deploy', 'a', folder, '--url', url, '--token', 'write-b']);
    expect(otherSwarm.stderr).toMatch(/^error ERR_SANDPOOL_HTTP_FORBIDDEN: /);
    // A link in the folder is refused before anything is sent.
    await symlink('/etc/passwd', join(folder, 'passwd'));
    const linked = await sandpool(['deploy', 'a', folder, '--url', url, '--token', 'tok']);
    expect(linked.status).toBe(1);
    expect(linked.stderr).toMatch(/^error ERR_SANDPOOL_HTTP_BAD_ARCHIVE: passwd is not a file or a folder/);
    expect((await sandpool(['snapshot', 'list', 'a'])).status).toBe(2);
    expect((await sandpool(['snapshot', 'list', 'a', '--root', root, '--url', url])).status).toBe(2);
  });
});

describe('sandpool snapshot point', () => {
  it('points a channel at a snapshot through a server (--url, a write token), and the channel serves it', async () => {
    const { url, root } = await listening();
    const created = await sandpool(['snapshot', 'create', 'a', 'jan', '--url', url, '--token', 'tok', '--json']);
    expect(created.status).toBe(0);
    const jan = JSON.parse(created.stdout) as { digest: string };
    const pointed = await sandpool(['snapshot', 'point', 'a', 'prod', 'jan', '--url', url, '--json'], {
      SANDPOOL_TOKEN: 'tok',
    });
    expect(pointed.status).toBe(0);
    expect(JSON.parse(pointed.stdout)).toMatchObject({ swarm: 'a', name: 'prod', digest: jan.digest });
    // A token without write on the swarm is refused, and nothing moves.
    const denied = await sandpool(['snapshot', 'point', 'a', 'prod', 'jan', '--url', url], {
      SANDPOOL_TOKEN: 'read-a',
    });
    expect(denied.status).toBe(1);
    expect(denied.stderr).toMatch(/^error ERR_SANDPOOL_/m);
    const missing = await sandpool(['snapshot', 'point', 'a', 'prod', 'nope', '--url', url, '--token', 'tok']);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/^error ERR_SANDPOOL_SNAPSHOT_NOT_FOUND:/m);
    const local = await sandpool(['call', 'a@prod/notifier_agent', 'add', '2', '3', '--root', root]);
    expect(local).toMatchObject({ status: 0, stdout: '5\n' });
  });

  it('with --root signs the pointer with $SANDPOOL_SNAPSHOT_SECRET, which a pool with that secret accepts', async () => {
    const root = await makeRoot(await counterAgent('a'));
    const secret = { SANDPOOL_SNAPSHOT_SECRET: 'a-secret-of-at-least-16-chars' };
    expect((await sandpool(['snapshot', 'create', 'a', 'jan', '--root', root], secret)).status).toBe(0);
    const pointed = await sandpool(['snapshot', 'point', 'a', 'prod', 'jan', '--root', root, '--json'], secret);
    expect(pointed.status).toBe(0);
    expect(JSON.parse(pointed.stdout)).toMatchObject({ name: 'prod', signed: true });
    const server = openServer({ root, snapshotSecret: secret.SANDPOOL_SNAPSHOT_SECRET });
    const call = await request(server, 'POST', '/v1/call/a@prod/notifier_agent', { fn: 'add', args: [2, 3] });
    expect(call).toMatchObject({ status: 200, body: { result: 5 } });
    // Without the secret the CLI writes an unsigned pointer, which that server refuses.
    expect((await sandpool(['snapshot', 'point', 'a', 'beta', 'jan', '--root', root])).status).toBe(0);
    const beta = await request(server, 'POST', '/v1/call/a@beta/notifier_agent', { fn: 'add', args: [2, 3] });
    expect(beta).toMatchObject({ body: { code: 'ERR_SANDPOOL_SNAPSHOT_CORRUPT' } });
    expect((await request(server, 'POST', '/v1/call/a@prod/notifier_agent', { fn: 'add', args: [2, 3] })).body).toEqual(
      {
        result: 5,
      },
    );
  });
});
