import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * A process's CPU weight among its siblings, read from the kernel: cpu.shares on cgroup v1
 * (1024 for nice 0), cpu.weight on v2 (100 for nice 0); null when it has no cgroup of its own
 * there (one not named by sandpool).
 */
export function cpuWeightOf(pid: number): number | null {
  const dir = cgroupDirOf(pid, 'cpu');
  if (dir === null) return null;
  for (const file of ['cpu.shares', 'cpu.weight']) {
    try {
      return Number(readFileSync(join(dir, file), 'latin1'));
    } catch {
      // The other version's file.
    }
  }
  return null;
}

/** A file of a process's own sandpool cgroup for a controller (memory, pids, cpu); null without one. */
export function cgroupFileOf(pid: number, controller: string, file: string): string | null {
  const dir = cgroupDirOf(pid, controller);
  if (dir === null) return null;
  try {
    return readFileSync(join(dir, file), 'latin1').trim();
  } catch {
    return null;
  }
}

function cgroupDirOf(pid: number, controller: string): string | null {
  let membership: string;
  try {
    membership = readFileSync(`/proc/${pid}/cgroup`, 'latin1');
  } catch {
    return null;
  }
  for (const line of membership.split('\n')) {
    const [, controllers = '', path = ''] = /^\d+:([^:]*):(.*)$/.exec(line) ?? [];
    if (!path.split('/').some((part) => part.startsWith('sandpool-'))) continue;
    const v2 = controllers === '';
    if (!v2 && !controllers.split(',').includes(controller)) continue;
    const mount = mountOf(v2 ? null : controller);
    if (mount !== null) return join(mount, path);
  }
  return null;
}

/** Where this machine mounts the cgroup hierarchy of a v1 controller, or v2's (null). */
function mountOf(controller: string | null): string | null {
  for (const line of readFileSync('/proc/self/mountinfo', 'latin1').split('\n')) {
    const [before, after] = line.split(' - ');
    const [type, , options = ''] = (after ?? '').split(' ');
    const point = before?.split(' ')[4];
    if (point === undefined) continue;
    if (controller === null ? type === 'cgroup2' : type === 'cgroup' && options.split(',').includes(controller))
      return point;
  }
  return null;
}
