import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPool } from 'sandpool';
import { describe, expect, it } from 'vitest';
import { findCgroups } from '../packages/sandpool/dist/host/governors/cgroups.js';
import { fakeV1, fakeV2 } from './support/cgroup.js';

const NO_CPU = { weight: null, maxCores: null };

describe('cgroup detection', () => {
  it('uses cgroup v2 where memory, pids and cpu can be enabled, with its limits and weights', async () => {
    const { mount, host } = await fakeV2('cpuset cpu io memory pids', 'cpu memory pids');
    const tree = findCgroups(host);
    if (typeof tree === 'string') throw new Error(tree);
    expect(tree.version).toBe('v2');
    const group = tree.pool(NO_CPU).create({ memoryBytes: 300 * 2 ** 20, pids: 64 });
    const cell = join(mount, 'service', 'sandpool-4242-1', 'cell-1');
    expect(readFileSync(join(cell, 'memory.max'), 'latin1')).toBe(String(300 * 2 ** 20));
    expect(readFileSync(join(cell, 'pids.max'), 'latin1')).toBe('64');
    expect(readFileSync(join(mount, 'service/cgroup.subtree_control'), 'latin1')).toBe('+memory +pids +cpu');
    expect(group.prioritize(19)).toBe(true);
    expect(readFileSync(join(cell, 'cpu.weight'), 'latin1')).toBe('1');
    await group.attach(777);
    expect(readFileSync(join(cell, 'cgroup.procs'), 'latin1')).toBe('777');
    writeFileSync(join(cell, 'memory.events'), 'low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n');
    expect(group.oomKilled()).toBe(true);
  });

  it('says why when v2 lacks a controller and no v1 hierarchy has it', async () => {
    const { host } = await fakeV2('cpuset io hugetlb', '');
    const found = findCgroups(host);
    expect(found).toMatch(/no memory, pids, cpu controller/);
    expect(found).toMatch(/v1 memory: not mounted/);
  });
});

describe("a pool's cgroup, the parent of its cells'", () => {
  it('on v2: one per pool, its CPU weight and bound set, the three controllers given to its cells', async () => {
    const { mount, host } = await fakeV2('cpuset cpu io memory pids', 'cpu memory pids');
    const tree = findCgroups(host);
    if (typeof tree === 'string') throw new Error(tree);
    const fixed = tree.pool({ weight: 50, maxCores: 1.5 });
    fixed.create({ memoryBytes: 2 ** 28, pids: 64 });
    const pool = join(mount, 'service', 'sandpool-4242-1');
    expect(readFileSync(join(pool, 'cpu.weight'), 'latin1')).toBe('50');
    expect(readFileSync(join(pool, 'cpu.max'), 'latin1')).toBe('150000 100000');
    expect(readFileSync(join(pool, 'cgroup.subtree_control'), 'latin1')).toBe('+memory +pids +cpu');
    expect(readFileSync(join(pool, 'cell-1', 'pids.max'), 'latin1')).toBe('64');
    // A weight set stays however many cells come.
    fixed.create({ memoryBytes: 2 ** 28, pids: 64 });
    expect(readFileSync(join(pool, 'cpu.weight'), 'latin1')).toBe('50');
    // Unset, the weight is a nice-0 thread's per cell, at least one's; no bound is written.
    const unset = tree.pool(NO_CPU);
    const second = join(mount, 'service', 'sandpool-4242-2');
    const weight = (): string => readFileSync(join(second, 'cpu.weight'), 'latin1');
    expect(weight()).toBe('100');
    expect(existsSync(join(second, 'cpu.max'))).toBe(false);
    const cells = [1, 2, 3].map(() => unset.create({ memoryBytes: 2 ** 28, pids: 64 }));
    expect(weight()).toBe('300');
    await cells[0]?.remove();
    expect(weight()).toBe('200');
  });

  it('on v1: one per pool in each hierarchy, cpu.shares and the CFS quota for its weight and bound', async () => {
    const { mount, host } = await fakeV1();
    const tree = findCgroups(host);
    if (typeof tree === 'string') throw new Error(tree);
    expect(tree.version).toBe('v1');
    const group = tree.pool({ weight: 50, maxCores: 0.5 }).create({ memoryBytes: 2 ** 28, pids: 32 });
    const pool = (controller: string, below = ''): string => join(mount, controller, below, 'sandpool-4242-1');
    expect(readFileSync(join(pool('cpu'), 'cpu.shares'), 'latin1')).toBe('512');
    expect(readFileSync(join(pool('cpu'), 'cpu.cfs_period_us'), 'latin1')).toBe('100000');
    expect(readFileSync(join(pool('cpu'), 'cpu.cfs_quota_us'), 'latin1')).toBe('50000');
    // Each hierarchy's pool is under the host's own cgroup there.
    expect(readFileSync(join(pool('memory', 'service'), 'cell-1', 'memory.limit_in_bytes'), 'latin1')).toBe(
      String(2 ** 28),
    );
    expect(readFileSync(join(pool('pids'), 'cell-1', 'pids.max'), 'latin1')).toBe('32');
    expect(existsSync(join(pool('cpuacct'), 'cell-1'))).toBe(true);
    // A demoted cell's weight is among the pool's cells.
    expect(group.prioritize(19)).toBe(true);
    expect(readFileSync(join(pool('cpu'), 'cell-1', 'cpu.shares'), 'latin1')).toBe('15');
  });

  it('takes the next name when another copy of sandpool in the process holds one', async () => {
    const { mount, host } = await fakeV2('cpu memory pids', 'cpu memory pids');
    mkdirSync(join(mount, 'service', 'sandpool-4242-1'));
    const tree = findCgroups(host);
    if (typeof tree === 'string') throw new Error(tree);
    tree.pool(NO_CPU).create({ memoryBytes: 2 ** 28, pids: 64 });
    expect(existsSync(join(mount, 'service', 'sandpool-4242-2', 'cell-1'))).toBe(true);
    expect(existsSync(join(mount, 'service', 'sandpool-4242-1', 'cell-1'))).toBe(false);
  });

  it("removes what a host that ended left, its pools' cells first, and nothing of a live host's", async () => {
    const { mount, host } = await fakeV2('cpu memory pids', 'cpu memory pids');
    // A pid that was and is no more.
    const gone = spawnSync('true').pid as number;
    for (const dir of [`sandpool-${gone}-1/cell-1`, `sandpool-${gone}-2`, 'sandpool-1-1/cell-1']) {
      mkdirSync(join(mount, 'service', dir), { recursive: true });
    }
    findCgroups(host);
    expect(existsSync(join(mount, 'service', `sandpool-${gone}-1`))).toBe(false);
    expect(existsSync(join(mount, 'service', `sandpool-${gone}-2`))).toBe(false);
    expect(existsSync(join(mount, 'service', 'sandpool-1-1', 'cell-1'))).toBe(true);
  });
});

describe("a pool's CPU options", () => {
  it('refuses a weight or a bound the kernel would not take, with INVALID_OPTIONS', () => {
    for (const sandbox of [
      { cpuWeight: 0 },
      { cpuWeight: 10_001 },
      { cpuWeight: 1.5 },
      { cpuMax: 0 },
      { cpuMax: -1 },
    ]) {
      expect(() => createPool({ root: tmpdir(), isolation: 'process', sandbox })).toThrow(
        expect.objectContaining({ code: 'ERR_SANDPOOL_INVALID_OPTIONS' }),
      );
    }
  });
});
