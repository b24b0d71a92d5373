import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CONSUMER, CONSUMER_JS, HELLO_AGENT, STRICT } from '../support/consumer.js';
import { freshProject, npmInstall, packAll, run, TSC, tempDir } from '../support/packed.js';

/**
 * The published .d.ts against every @types/node major a user may have: a type that only
 * one major has (TransferListItem was gone in 26) breaks `tsc` in their project, not ours.
 */
const MAJORS = [20, 22, 24, 26] as const;

let scratch: Awaited<ReturnType<typeof tempDir>>;
let project: string;

beforeAll(async () => {
  scratch = await tempDir('sandpool-types-');
  const tarballs = await packAll(join(scratch.path, 'tarballs'));
  project = await freshProject(scratch.path, 'consumer');
  await npmInstall(project, [
    tarballs.sandpool,
    ...MAJORS.map((major) => `types-node-${major}@npm:@types/node@${major}`),
  ]);
  // One project, four majors: each config's typeRoots holds a `node` that is one of them, which
  // also answers the `/// <reference types="node" />` inside undici-types.
  for (const major of MAJORS) {
    await mkdir(join(project, 'typeroots', String(major)), { recursive: true });
    await symlink(
      join(project, 'node_modules', `types-node-${major}`),
      join(project, 'typeroots', String(major), 'node'),
    );
  }
  await writeFile(join(project, 'consumer.mts'), CONSUMER);
  await writeFile(join(project, 'consumer-js.mts'), CONSUMER_JS);
  await mkdir(join(project, 'agents', 'a', 'live'), { recursive: true });
  await writeFile(join(project, 'agents', 'a', 'live', 'hello.mjs'), HELLO_AGENT);
});

afterAll(async () => {
  await scratch?.remove();
});

async function tsc(name: string, major: number, files: string[], extra: Record<string, unknown> = {}) {
  const config = `tsconfig.${name}.json`;
  const compilerOptions = { ...STRICT, noEmit: true, typeRoots: [`./typeroots/${major}`], types: ['node'], ...extra };
  await writeFile(join(project, config), JSON.stringify({ compilerOptions, files }));
  const result = await run(process.execPath, [TSC, '-p', config], project);
  return { status: result.status, output: result.stdout + result.stderr };
}

describe('a strict nodenext user project', () => {
  it('compiles against @types/node 20, 22, 24 and 26', async () => {
    // In parallel: each run checks every lib file and takes seconds on its own.
    const results = await Promise.all(MAJORS.map((major) => tsc(`node${major}`, major, ['consumer.mts'])));
    expect(results).toEqual(MAJORS.map(() => ({ status: 0, output: '' })));
  });

  it('types remote<typeof import(agent.mjs)> with allowJs, and without it refuses the import (TS7016)', async () => {
    const [withJs, withoutJs] = await Promise.all([
      tsc('js', 26, ['consumer-js.mts'], { allowJs: true }),
      tsc('nojs', 26, ['consumer-js.mts']),
    ]);
    expect(withJs).toEqual({ status: 0, output: '' });
    expect(withoutJs.output).toContain('error TS7016');
  });
});
