/**
 * What a strict thread agent cannot reach (DESIGN.md, "Strict containment (threads)"): each
 * attack runs with a neighbour key answering, on every Node line; a feature a line lacks is
 * asserted absent there, never skipped in silence.
 */
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { installCleanup } from './support/pool.js';
import { counterAgent, makeRoot, writeFiles } from './support/root.js';

installCleanup();

const execFileAsync = promisify(execFile);
const SANDPOOL = pathToFileURL(join(import.meta.dirname, '../packages/sandpool/dist/index.js')).href;

/** An agent whose `attempt(name, ...args)` runs one attack and answers what it got, or the error's code. */
const ATTACKER = `
export async function attempt(name, ...args) {
  try {
    return { got: await attacks[name](...args) };
  } catch (error) {
    return { code: error.code ?? error.name, message: String(error.message) };
  }
}
const attacks = {
  read: async (path) => (await import('node:fs')).readFileSync(path, 'utf8'),
};
`;

async function tenants(extra: Record<string, string> = {}): Promise<string> {
  return makeRoot({ 'a/live/attacker.mjs': ATTACKER, ...(await counterAgent('n')), ...extra });
}

/** Runs `body` (with `pool` open) in a host process of its own, started in `cwd`; returns what it prints. */
async function inHost(root: string, cwd: string, body: string): Promise<unknown> {
  const script = join(root, 'host.mjs');
  await writeFile(
    script,
    `import { createPool } from ${JSON.stringify(SANDPOOL)};
    const pool = createPool({ root: ${JSON.stringify(root)}, spareWorkers: 0 });
    const out = await (async () => { ${body} })();
    await pool.close();
    process.stdout.write(JSON.stringify(out));`,
  );
  const { stdout } = await execFileAsync(process.execPath, [script], { cwd, env: { PATH: process.env.PATH ?? '' } });
  return JSON.parse(stdout);
}

describe('the host’s files', () => {
  it('a thread reads nothing of the host’s working directory (Node 24 and 26 granted it to every strict thread)', async () => {
    const root = await tenants();
    const cwd = join(root, 'host-cwd');
    await writeFiles(cwd, { '.env': 'SECRET=host' });
    const out = await inHost(
      root,
      cwd,
      `return [await pool.call('a/attacker', 'attempt', ['read', ${JSON.stringify(join(cwd, '.env'))}]),
        await pool.call('n/notifier_agent', 'add', [2, 3])];`,
    );
    expect(out).toEqual([{ code: 'ERR_ACCESS_DENIED', message: expect.any(String) }, 5]);
  });
});
