import { tmpdir } from 'node:os';
import { createPool, type SandboxLayers } from 'sandpool';

/**
 * The sandbox layers process keys get on this machine, as a pool reports them (probed once
 * per process by the library itself).
 */
export function hostLayers(): SandboxLayers {
  const pool = createPool({ root: tmpdir(), isolation: 'process', spareWorkers: 0 });
  const layers = pool.stats().sandbox;
  void pool.close();
  if (layers === null) throw new Error('a process pool reported no sandbox');
  return layers;
}

/** On CI (CI=true) every layer must be there: a missing one fails rather than skips. */
export const ON_CI = process.env.CI === 'true';
