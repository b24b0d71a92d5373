import { execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const WORKSPACE = fileURLToPath(new URL('../../', import.meta.url));
export const PACKAGES = ['sandpool', 'server', 'cli'] as const;
export type PackageDir = (typeof PACKAGES)[number];

/** The workspace's own compiler, so the consumer checks against the version the packages build with. */
export const TSC = join(WORKSPACE, 'node_modules', 'typescript', 'bin', 'tsc');

export interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Child processes get the Node that runs this test first on PATH: `npm` is a script that
 * starts with `#!/usr/bin/env node`, so `--engine-strict` judges the same Node as the suite.
 */
export function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { ...process.env, PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ''}`, ...extra };
}

export function run(command: string, args: readonly string[], cwd: string, timeoutMs = 240_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      command,
      args,
      { cwd, env: childEnv(), timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const status = error === null ? 0 : typeof error.code === 'number' ? error.code : null;
        resolve({ status, stdout, stderr });
      },
    );
  });
}

export async function mustRun(command: string, args: readonly string[], cwd: string): Promise<string> {
  const result = await run(command, args, cwd);
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} exited ${result.status}\n${result.stdout}\n${result.stderr}`);
  }
  return result.stdout;
}

/**
 * Packs each package as a user would get it (`workspace:` ranges rewritten) and returns the
 * tarball paths. All at once, each into a folder of its own, where it is the only tarball.
 */
export async function packAll(destination: string): Promise<Record<PackageDir, string>> {
  const packed = await Promise.all(
    PACKAGES.map(async (name): Promise<[PackageDir, string]> => {
      const folder = join(destination, name);
      await mkdir(folder, { recursive: true });
      await mustRun('pnpm', ['pack', '--pack-destination', folder], join(WORKSPACE, 'packages', name));
      const written = (await readdir(folder)).filter((file) => file.endsWith('.tgz'));
      if (written.length !== 1 || written[0] === undefined) {
        throw new Error(`pnpm pack of ${name} wrote ${written.join(', ')}`);
      }
      return [name, join(folder, written[0])];
    }),
  );
  return Object.fromEntries(packed) as Record<PackageDir, string>;
}

/** A fresh npm project (no workspace above it that npm could mistake for its root). */
export async function freshProject(parent: string, name: string): Promise<string> {
  const dir = join(parent, name);
  await mkdir(dir, { recursive: true });
  await writeFile(
    join(dir, 'package.json'),
    `${JSON.stringify({ name: `consumer-${name}`, private: true, type: 'module' }, null, 2)}\n`,
  );
  return dir;
}

export function npmInstall(dir: string, specs: readonly string[]): Promise<string> {
  return mustRun('npm', ['install', '--engine-strict', '--no-audit', '--no-fund', '--loglevel=error', ...specs], dir);
}

export async function tempDir(prefix: string): Promise<{ path: string; remove: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}

/** Starts `sandpool serve` and resolves with its address once it prints it. */
export function startServe(
  bin: string,
  args: readonly string[],
  cwd: string,
): Promise<{ url: string; stop: () => Promise<Run> }> {
  const child = spawn(process.execPath, [bin, 'serve', ...args], { cwd, env: childEnv(), stdio: 'pipe' });
  let stdout = '';
  let stderr = '';
  const exited = new Promise<Run>((resolve) => {
    child.on('exit', (code) => resolve({ status: code, stdout, stderr }));
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`serve did not start\n${stdout}\n${stderr}`));
    }, 60_000);
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      const match = /listening on (http:\/\/\S+)/.exec(stdout);
      if (match?.[1] !== undefined) {
        clearTimeout(timer);
        resolve({
          url: match[1],
          stop: () => {
            child.kill('SIGTERM');
            return exited;
          },
        });
      }
    });
    void exited.then((result) => {
      clearTimeout(timer);
      reject(new Error(`serve exited ${result.status} before listening\n${stdout}\n${stderr}`));
    });
  });
}
