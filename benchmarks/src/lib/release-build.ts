/**
 * An earlier build of sandpool, made for one run: the commit checked out in a git worktree
 * under the OS temp folder, installed from pnpm's store alone (`--offline --frozen-lockfile`)
 * and built there, so a benchmark can call it beside this build in the same process. The
 * worktree is removed afterwards, from git's list too.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const WORKSPACE = fileURLToPath(new URL('../../../', import.meta.url));
/** The README's results say which commit they measured: `One full `pnpm bench` (<date>, commit <sha>, …`. */
const MEASURED = /One full `pnpm bench` \([^)]*?commit ([0-9a-f]{7,40})/;

export interface ReleaseBuild {
  /** The commit built (short), and why that one. */
  readonly commit: string;
  readonly chosenBy: string;
  /** `file:` URL of its `packages/sandpool/dist/index.js`. */
  readonly entry: string;
  /** Seconds its install and build took. */
  readonly buildSeconds: number;
  cleanup(): Promise<void>;
}

/**
 * Which earlier build to measure against: `against` when given (a ref), else the newest tag,
 * else the commit the README's results last measured in one full run.
 */
export async function releaseRef(against: string | null): Promise<{ ref: string; chosenBy: string }> {
  if (against !== null) return { ref: against, chosenBy: `asked for (--against ${against})` };
  const tags = (await git(['tag', '--sort=-creatordate'])).split('\n').filter((tag) => tag !== '');
  if (tags[0] !== undefined) return { ref: tags[0], chosenBy: `the newest tag, ${tags[0]}` };
  const measured = MEASURED.exec(await readFile(join(WORKSPACE, 'README.md'), 'utf8'))?.[1];
  if (measured === undefined) throw new Error('no tag, and the README names no commit its results measured');
  return { ref: measured, chosenBy: "no tag: the commit of the README's last full pnpm bench" };
}

/**
 * Checks out and builds `ref`. Throws, saying why, when the store lacks a package it needs
 * (nothing is fetched) or it does not build.
 */
export async function buildRelease(
  ref: string,
  chosenBy: string,
  progress: (message: string) => void,
): Promise<ReleaseBuild> {
  const commit = await git(['rev-parse', '--short', `${ref}^{commit}`]);
  const folder = await mkdtemp(join(tmpdir(), 'sandpool-release-'));
  const tree = join(folder, commit);
  const cleanup = async (): Promise<void> => {
    await git(['worktree', 'remove', '--force', tree]).catch(() => undefined);
    await rm(folder, { recursive: true, force: true });
    await git(['worktree', 'prune']).catch(() => undefined);
  };
  const t0 = performance.now();
  try {
    await git(['worktree', 'add', '--detach', tree, commit]);
    progress(`building ${commit} (${chosenBy}) in ${tree}`);
    await step(tree, ['install', '--offline', '--frozen-lockfile'], `install ${commit} offline`);
    await step(tree, ['run', 'build'], `build ${commit}`);
  } catch (error) {
    await cleanup();
    throw error;
  }
  return {
    commit,
    chosenBy,
    entry: pathToFileURL(join(tree, 'packages', 'sandpool', 'dist', 'index.js')).href,
    buildSeconds: Math.round((performance.now() - t0) / 100) / 10,
    cleanup,
  };
}

async function step(cwd: string, args: string[], what: string): Promise<void> {
  try {
    await run('pnpm', args, { cwd, maxBuffer: 64 * 1024 * 1024 });
  } catch (error) {
    const said = error as { stdout?: string; stderr?: string };
    const tail = `${said.stdout ?? ''}${said.stderr ?? ''}`.trim().split('\n').slice(-8).join('\n');
    throw new Error(`cannot ${what}:\n${tail}`, { cause: error });
  }
}

async function git(args: string[]): Promise<string> {
  return (await run('git', args, { cwd: WORKSPACE })).stdout.trim();
}
