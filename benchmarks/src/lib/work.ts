import { fixture } from './temp-root.js';
import { now } from './timing.js';

interface Cruncher {
  crunch(iterations: number): number;
}

/**
 * The iteration count of `crunch` that takes `targetMs` of CPU here, measured once on this
 * thread before any load starts. The fastest of several timed runs: a run that was preempted
 * only looks slower, never faster.
 */
export async function calibrateCrunch(targetMs: number): Promise<number> {
  const { crunch } = (await import(fixture('agent.mjs').href)) as Cruncher;
  for (let i = 0; i < 20; i += 1) crunch(200_000); // let the JIT settle on the loop
  const probe = 2_000_000;
  let best = Number.POSITIVE_INFINITY;
  for (let i = 0; i < 15; i += 1) {
    const t0 = now();
    crunch(probe);
    best = Math.min(best, now() - t0);
  }
  return Math.round((probe * targetMs) / best);
}
