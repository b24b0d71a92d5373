/**
 * The compile cache is no code path of its own (DESIGN.md, "One artifact per key"): Node
 * enables it only for a folder its worker may write, and an entry is checked against the
 * source by a CRC its writer stores, V8's own check being the source's length. So no worker
 * uses one: nothing an agent writes can make a later start run other bytes than the bundle's.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import * as nodeModule from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import * as zlib from 'node:zlib';
import type { PoolOptions } from 'sandpool';
import { describe, expect, it } from 'vitest';
import { installCleanup, invariants, openPool } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();

const execFileAsync = promisify(execFile);
const NEIGHBOUR = 'n/notifier_agent';
/** Node 22.1+; where it is missing there is no cache to forge. */
const hasCompileCache =
  typeof (nodeModule as { enableCompileCache?: unknown }).enableCompileCache === 'function' &&
  typeof (nodeModule as { registerHooks?: unknown }).registerHooks === 'function';
const crc32 = (zlib as { crc32?: (data: Buffer) => number }).crc32;

/** The folder earlier releases gave a snapshot's workers, per content digest. */
const oldCacheDir = (root: string, digest: string): string => join(root, '.sandpool-cache', 'compile', digest);

const ATTACKER = `import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
export function fill(dir) {
  try {
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'junk'), Buffer.alloc(1 << 20));
    return 'wrote';
  } catch (error) {
    return error.code;
  }
}
// Top-level code: V8 caches it compiled, where a function body is compiled on its first call.
const word = 'genuine';
export const answer = () => word;
`;

async function snapshotRoot(): Promise<{ root: string; digest: string; bundle: string }> {
  const root = realpathSync(await makeRoot({ 'a/live/victim.mjs': ATTACKER, ...(await counterAgent('n')) }));
  const pool = openPool({ root });
  const { digest } = await pool.snapshots.create('a', 'jan');
  await pool.close();
  // The bundle a@jan's workers import: in the content-addressed artifact its name points to.
  const bundle = join(root, '.sandpool-cache', 'artifacts', 'a', digest, '.sandpool-bundles', 'victim.mjs');
  return { root, digest, bundle };
}

const MODES: readonly PoolOptions['permissions'][] = ['strict', 'none'];

describe('the compile cache', () => {
  it('a strict snapshot worker gets no cache folder to write, and nothing is written', async () => {
    const { root, digest } = await snapshotRoot();
    const pool = openPool({ root });
    const neighbour = pool.call(NEIGHBOUR, 'add', [2, 3]);
    const target = oldCacheDir(root, digest);
    expect(await pool.call('a@jan/victim', 'fill', [target])).toBe('ERR_ACCESS_DENIED');
    expect(await pool.call('a@jan/victim', 'fill', [join(target, 'deeper')])).toBe('ERR_ACCESS_DENIED');
    expect(await neighbour).toBe(5);
    expect(await pool.call(NEIGHBOUR, 'add', [1, 1])).toBe(2);
    expect(invariants(pool)).toEqual([]);
    // A worker writes its cache as it exits: after close, still nothing.
    await pool.close();
    expect(existsSync(join(root, '.sandpool-cache', 'compile'))).toBe(false);
  });

  it.skipIf(!hasCompileCache)(
    'a forged entry for the bundle (other source of the same length, valid checksums) never runs',
    async () => {
      const { root, digest, bundle } = await snapshotRoot();
      const real = readFileSync(bundle);
      const fake = Buffer.from(real.toString('latin1').replace('"genuine"', '"FORGED!"'), 'latin1');
      expect(fake.length).toBe(real.length);
      expect(fake.equals(real)).toBe(false);
      const dir = oldCacheDir(root, digest);
      await forgeEntry(dir, bundle, fake);
      // Node keeps a CRC of the source in the entry, written by whoever writes the entry:
      // the forger writes the bundle's, and V8 itself checks only the length.
      const patched = patchSourceChecksum(dir, crc32?.(fake) as number, crc32?.(real) as number);
      expect(patched).toBeGreaterThan(0);
      for (const permissions of MODES) {
        const pool = openPool({ root, permissions });
        const neighbour = pool.call(NEIGHBOUR, 'add', [2, 3]);
        expect(await pool.call('a@jan/victim', 'answer')).toBe('genuine');
        expect(await neighbour).toBe(5);
        expect(invariants(pool)).toEqual([]);
        await pool.close();
      }
    },
  );
});

/**
 * What an agent with write access to the cache folder could do: compile other source under
 * the bundle's URL, as a worker loads it (module hooks serving the bytes), and keep the entry.
 */
async function forgeEntry(dir: string, bundle: string, source: Buffer): Promise<void> {
  const url = pathToFileURL(bundle).href;
  const script = `
    import module from 'node:module';
    module.enableCompileCache(${JSON.stringify(dir)});
    const url = ${JSON.stringify(url)};
    const source = Buffer.from(${JSON.stringify(source.toString('base64'))}, 'base64');
    module.registerHooks({
      resolve: (specifier, context, next) => specifier === url ? { url, format: 'module', shortCircuit: true } : next(specifier, context),
      load: (target, context, next) => target === url ? { format: 'module', source, shortCircuit: true } : next(target, context),
    });
    const forged = await import(url);
    if (forged.answer() !== 'FORGED!') throw new Error('not forged');
    module.flushCompileCache();
  `;
  // The test process's flags: V8 refuses a cache made under other flags.
  await execFileAsync(process.execPath, [...process.execArgv, '--input-type=module', '-e', script]);
}

/** Rewrites the source CRC in the header of every entry under `dir`; returns how many. */
function patchSourceChecksum(dir: string, from: number, to: number): number {
  let patched = 0;
  for (const name of readdirSync(dir, { recursive: true }).map(String)) {
    const path = join(dir, name);
    let bytes: Buffer;
    try {
      bytes = readFileSync(path);
    } catch {
      continue; // a folder
    }
    for (let offset = 4; offset < 32 && offset + 4 <= bytes.length; offset += 4) {
      if (bytes.readUInt32LE(offset) !== from) continue;
      bytes.writeUInt32LE(to, offset);
      writeFileSync(path, bytes);
      patched++;
    }
  }
  return patched;
}
