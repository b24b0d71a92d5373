import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { phaseArgs, settleOnExit } from './phase.js';
import type { Json } from './report.js';

const READY = 'ready';
const GO = 'go';

/**
 * Phases that must measure at the same time, each in a process of its own: every one gets
 * ready (starts its workers), and only once all are ready are they told to go, so their
 * windows overlap and none measures while another is still booting threads.
 */
export async function runGang(bench: string, phases: readonly string[], quick: boolean): Promise<Json[]> {
  const members = phases.map((phase) => {
    const child = spawn(process.execPath, phaseArgs(bench, phase, quick), { stdio: ['pipe', 'pipe', 'inherit'] });
    const lines = createInterface({ input: child.stdout });
    let resolveReady: () => void = () => {};
    const ready = new Promise<void>((resolve) => {
      resolveReady = resolve;
    });
    let last = '';
    lines.on('line', (line) => {
      if (line === READY) resolveReady();
      else last = line;
    });
    const result = settleOnExit(child, bench, phase, () => last);
    return { child, ready, result };
  });
  // A member that fails before it is ready must not leave the others waiting for a go.
  try {
    await Promise.race([Promise.all(members.map((member) => member.ready)), Promise.all(members.map((m) => m.result))]);
    for (const member of members) member.child.stdin.end(`${GO}\n`);
    return await Promise.all(members.map((member) => member.result));
  } catch (error) {
    for (const member of members) member.child.kill();
    throw error;
  }
}

/** In a gang's phase: says it is ready, and resolves when every member is. */
export function readyThenWait(): Promise<void> {
  process.stdout.write(`${READY}\n`);
  return new Promise((resolve) => {
    const lines = createInterface({ input: process.stdin });
    lines.on('line', (line) => {
      if (line !== GO) return;
      lines.close();
      resolve();
    });
  });
}
