import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Json } from './report.js';

const RUN = fileURLToPath(new URL('../run.js', import.meta.url));

/** How a benchmark's phase runs in a child: this script, that bench, that phase. */
export function phaseArgs(bench: string, phase: string, quick: boolean): string[] {
  return ['--expose-gc', RUN, '--child', bench, '--phase', phase, ...(quick ? ['--quick'] : [])];
}

/** Settles with the JSON line a phase's child printed last, once it exits cleanly. */
export function settleOnExit(child: ChildProcess, bench: string, phase: string, printed: () => string): Promise<Json> {
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      if (code !== 0) {
        reject(new Error(`${bench} phase ${phase} failed (${signal ?? `exit ${code}`})`));
        return;
      }
      try {
        resolve(JSON.parse(printed()) as Json);
      } catch (error) {
        reject(new Error(`${bench} phase ${phase} printed no JSON`, { cause: error }));
      }
    });
  });
}

/**
 * Runs one phase of a benchmark in a fresh Node process and returns what it printed as JSON.
 * Its progress lines go to stderr as usual.
 */
export function runPhase(bench: string, phase: string, quick: boolean): Promise<Json> {
  const child = spawn(process.execPath, phaseArgs(bench, phase, quick), { stdio: ['ignore', 'pipe', 'inherit'] });
  let output = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    output += chunk;
  });
  return settleOnExit(child, bench, phase, () => output);
}
