import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { onTestFinished } from 'vitest';

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

/** The directory of a process's own sandpool cgroup for a controller (its cell's); null without one. */
export function cgroupDirOf(pid: number, controller: string): string | null {
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

/**
 * The cgroups this process's pools hold now (`sandpool-<pid>-<n>`), where sandpool makes them:
 * under this process's own cgroup or at the hierarchy's root, of v1's pids hierarchy or v2's.
 */
export function poolGroupsOfThisProcess(): string[] {
  const name = new RegExp(`^sandpool-${process.pid}-\\d+$`);
  const membership = readFileSync('/proc/self/cgroup', 'latin1').split('\n');
  const found = new Set<string>();
  for (const controller of ['pids', null]) {
    const mount = mountOf(controller);
    const line = membership.find((entry) =>
      controller === null ? entry.startsWith('0::') : entry.split(':')[1]?.split(',').includes(controller),
    );
    if (mount === null || line === undefined) continue;
    for (const dir of [join(mount, line.slice(line.indexOf(':', line.indexOf(':') + 1) + 1)), mount]) {
      try {
        for (const entry of readdirSync(dir)) if (name.test(entry)) found.add(join(dir, entry));
      } catch {
        // Not there, or not ours to read.
      }
    }
  }
  return [...found];
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

/** What the host would read of its cgroups from the kernel, for findCgroups: the host is pid 4242 in its `service` group. */
export interface FakeHost {
  readonly mountinfo: string;
  readonly membership: string;
  readonly pid: number;
}

/** A temp folder for a fake hierarchy, removed when the test ends. */
async function fakeMount(): Promise<string> {
  const mount = await mkdtemp(join(tmpdir(), 'sandpool-cgroup-'));
  onTestFinished(() => rm(mount, { recursive: true, force: true }));
  return mount;
}

/** A cgroup v2 file tree in a temp folder, as the kernel lays it out, with `controllers` offered. */
export async function fakeV2(controllers: string, subtree: string): Promise<{ mount: string; host: FakeHost }> {
  const mount = await fakeMount();
  mkdirSync(join(mount, 'service'));
  writeFileSync(join(mount, 'cgroup.controllers'), controllers);
  writeFileSync(join(mount, 'cgroup.subtree_control'), subtree);
  writeFileSync(join(mount, 'service/cgroup.controllers'), controllers);
  writeFileSync(join(mount, 'service/cgroup.subtree_control'), '');
  return {
    mount,
    host: {
      mountinfo: `40 30 0:37 / ${mount} rw,relatime - cgroup2 cgroup2 rw\n`,
      membership: '0::/service\n',
      pid: 4242,
    },
  };
}

/** cgroup v1 hierarchies in a temp folder, one per controller, as this machine mounts them; the host in `service` for memory, at the root elsewhere. */
export async function fakeV1(): Promise<{ mount: string; host: FakeHost }> {
  const mount = await fakeMount();
  const controllers = ['cpu', 'cpuacct', 'memory', 'pids'];
  for (const controller of controllers) mkdirSync(join(mount, controller));
  mkdirSync(join(mount, 'memory/service'));
  return {
    mount,
    host: {
      mountinfo: controllers
        .map(
          (controller, i) =>
            `${32 + i} 31 0:${29 + i} / ${join(mount, controller)} rw - cgroup cgroup rw,${controller}\n`,
        )
        .join(''),
      membership: '8:pids:/\n4:memory:/service\n2:cpuacct:/\n1:cpu:/\n0::/\n',
      pid: 4242,
    },
  };
}
