import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, onTestFinished } from 'vitest';
import { Cage, type CageParts } from '../packages/sandpool/dist/host/workers/sandbox/cage.js';
import { eventually } from './support/pool.js';

/** The children of a process, by pid. */
function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'latin1').trim().split(' ').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function alive(pid: number): boolean {
  try {
    // A zombie is gone for this purpose: it holds no descriptor.
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'latin1'));
  } catch {
    return false;
  }
}

describe('a cage’s end', () => {
  it('ends what its child started before the host could know of it, and the child’s pipes close', async () => {
    // Stands for bubblewrap killed between making the cell's init and naming it: a child of it
    // that holds the cell's pipes, with no parent-death signal and in no cgroup.
    const dir = await mkdtemp(join(tmpdir(), 'sandpool-cage-'));
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    const bwrap = join(dir, 'bwrap');
    await writeFile(bwrap, '#!/bin/sh\nsleep 1000 &\nwait\n');
    await chmod(bwrap, 0o755);
    const parts: CageParts = {
      bwrap,
      userns: null,
      root: false,
      rootReal: dir,
      runtime: [],
      pool: [],
      stage: null,
      ids: null,
      fixedUser: null,
      groups: null,
      memoryBytes: 2 ** 30,
      tmpMb: 16,
      pids: 64,
      limits: { openFiles: 1024, processes: 8192 },
    };
    const cage = new Cage(parts, { swarm: 'x', entries: [] });
    const child = cage.spawn({ flags: [], entry: join(dir, 'bundle.js'), args: [] }, {});
    const closed = once(child, 'close');
    // It never names an init: the cage waits in vain, and must not hold the test up.
    cage.started(child).catch(() => undefined);
    let init = 0;
    await eventually(() => {
      init = childrenOf(child.pid as number)[0] ?? 0;
      return init > 0;
    });
    // As AgentProcess ends a child: the child itself, then its cage.
    child.kill('SIGKILL');
    cage.kill();
    await eventually(() => !alive(init));
    await closed;
    await cage.release();
  });
});
