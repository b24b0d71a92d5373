import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Json } from './report.js';

const RUN = fileURLToPath(new URL('../run.js', import.meta.url));

/**
 * Runs one phase of a benchmark in a fresh Node process and returns what it printed as JSON.
 * Its progress lines go to stderr as usual.
 */
export function runPhase(bench: string, phase: string, quick: boolean): Promise<Json> {
  const args = ['--expose-gc', RUN, '--child', bench, '--phase', phase, ...(quick ? ['--quick'] : [])];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let output = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      output += chunk;
    });
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      if (code !== 0) {
        reject(new Error(`${bench} phase ${phase} failed (${signal ?? `exit ${code}`})`));
        return;
      }
      try {
        resolve(JSON.parse(output) as Json);
      } catch (error) {
        reject(new Error(`${bench} phase ${phase} printed no JSON`, { cause: error }));
      }
    });
  });
}
