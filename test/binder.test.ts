import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import {
  Binder,
  type MountServer,
  mountServer,
  SHELL_SERVER,
} from '../packages/sandpool/dist/host/workers/sandbox/binder.js';
import { findExecutable } from '../packages/sandpool/dist/host/workers/sandbox/support.js';

const root = process.getuid?.() === 0;

/** Binds a folder holding one file at an empty one, then unbinds it, through `server`; says what it saw. */
async function bindAndUnbind(server: MountServer): Promise<{ bound: boolean; refused: string; unbound: boolean }> {
  const dir = await mkdtemp(join(tmpdir(), 'sandpool-binder-'));
  const binder = new Binder(server);
  onTestFinished(async () => {
    binder.close();
    await rm(dir, { recursive: true, force: true });
  });
  const [source, target] = [join(dir, 'source'), join(dir, 'target')];
  mkdirSync(source);
  mkdirSync(target);
  writeFileSync(join(source, 'file'), 'x');
  await binder.bind(source, target);
  const bound = existsSync(join(target, 'file'));
  const refused = await binder.bind(join(dir, 'missing'), target).then(
    () => 'bound',
    (error: Error) => error.message,
  );
  await binder.unbind(target);
  return { bound, refused, unbound: !existsSync(join(target, 'file')) };
}

describe("the stage's binds", () => {
  it.runIf(root && findExecutable('perl') !== null)('are made by perl calling mount(2) where it can', async () => {
    const server = mountServer();
    expect(server.file).toMatch(/perl$/);
    expect(await bindAndUnbind(server)).toEqual({
      bound: true,
      refused: 'mount: No such file or directory',
      unbound: true,
    });
  });

  it.runIf(root)('are made by a shell running mount(8) elsewhere, answering the same', async () => {
    expect(mountServer('ia32').file).toBe('sh');
    expect(await bindAndUnbind(SHELL_SERVER)).toEqual({
      bound: true,
      refused: expect.stringMatching(/^mount: .*missing/),
      unbound: true,
    });
  });
});
