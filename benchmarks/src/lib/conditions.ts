import { execFileSync } from 'node:child_process';
import { availableParallelism, cpus, loadavg, totalmem } from 'node:os';
import { fileURLToPath } from 'node:url';

export interface Conditions {
  date: string;
  mode: 'quick' | 'full';
  node: string;
  v8: string;
  platform: string;
  cpu: string;
  cores: number;
  memoryMb: number;
  /** The commit measured, and whether the library's sources differed from it. */
  commit: string;
  libraryDirty: boolean;
  /**
   * 1-minute load average when the benchmark started and when it ended. Anything else running
   * on the machine (a build, a test run) shows here: on 2 cores it moves every figure.
   */
  loadAverage: { start: number; end: number };
}

const WORKSPACE = fileURLToPath(new URL('../../../', import.meta.url));

export function conditions(quick: boolean, loadAtStart: number): Conditions {
  return {
    date: new Date().toISOString(),
    mode: quick ? 'quick' : 'full',
    node: process.version,
    v8: process.versions.v8,
    platform: `${process.platform} ${process.arch}`,
    cpu: cpus()[0]?.model.trim() ?? 'unknown',
    cores: availableParallelism(),
    memoryMb: Math.round(totalmem() / 2 ** 20),
    commit: git(['rev-parse', '--short', 'HEAD']) ?? 'unknown',
    libraryDirty: (git(['status', '--porcelain', '--', 'packages/sandpool']) ?? '') !== '',
    loadAverage: { start: round2(loadAtStart), end: round2(loadNow()) },
  };
}

function git(args: string[]): string | null {
  try {
    return execFileSync('git', args, { cwd: WORKSPACE, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return null;
  }
}

export function loadNow(): number {
  return loadavg()[0] ?? 0;
}

function round2(value: number): number {
  return Math.round(value * 100) / 100;
}

export function describe(c: Conditions): string {
  const load = Math.max(c.loadAverage.start, c.loadAverage.end);
  return `${c.mode} run, ${c.date.slice(0, 16).replace('T', ' ')} UTC, Node ${c.node}, ${c.cpu}, ${c.cores} cores, load ${load.toFixed(1)}, commit ${c.commit}${c.libraryDirty ? '+dirty' : ''}`;
}
