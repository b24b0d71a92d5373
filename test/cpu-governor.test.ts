// The CPU governor's judgement of background CPU, on a clock the test moves and CPU figures
// it scripts: a loaded machine changes how much CPU a real worker gets, never what is judged.
import { type ChildProcess, spawn } from 'node:child_process';
import type { DemoteReason } from 'sandpool';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { CpuGovernor, type CpuWatched } from '../packages/sandpool/dist/host/governors/cpu.js';
import { reniceProcess } from '../packages/sandpool/dist/host/workers/priority.js';

const onLinux = process.platform === 'linux';

/** A worker as the governor sees it, named for the test's record. */
interface Watched extends CpuWatched {
  readonly name: string;
}

/** A process to stand for a worker: the governor opens its /proc file and sets its priority, nothing else. */
function stand(): ChildProcess {
  return spawn('sleep', ['600'], { stdio: 'ignore' });
}

describe.runIf(onLinux)('the CPU governor, on background CPU', () => {
  const children: ChildProcess[] = [];

  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval', 'performance'] });
  });

  afterEach(() => {
    vi.useRealTimers();
    for (const child of children.splice(0)) child.kill('SIGKILL');
  });

  /**
   * A governor whose readings are scripted: each watched worker uses `share` of a core from
   * the moment it is watched (its CPU in ns is what the governor reads from /proc).
   */
  function governed(shares: number[]): {
    cells: Watched[];
    judged: string[];
  } {
    const judged: string[] = [];
    const cells = shares.map((_, i): Watched => ({ busy: 0, oldestCall: () => null, name: `w${i}` }));
    const name = (cell: Watched): string => cell.name;
    const governor = new CpuGovernor<Watched>(
      { fairness: true, cpuTimeoutMs: 0 },
      {
        used: () => {},
        demoted: (cell: Watched, reason: DemoteReason) => judged.push(`${name(cell)} demoted ${reason}`),
        overran: () => {},
        idleBurner: (cell: Watched) => judged.push(`${name(cell)} evicted`),
        recycle: () => {},
      },
    );
    const started = performance.now();
    const shareOf = new Map<number, number>();
    // The governor reads each worker's /proc file through this method: the script replaces it.
    Object.defineProperty(governor, 'read', {
      value: (entry: { tid: number }) => (performance.now() - started) * 1e6 * (shareOf.get(entry.tid) ?? 0),
    });
    shares.forEach((share, i) => {
      const child = stand();
      children.push(child);
      const pid = child.pid as number;
      shareOf.set(pid, share);
      // As a child process without a cgroup sets its priority: each of its threads' nice.
      expect(governor.watchProcess(cells[i] as Watched, pid, (nice) => reniceProcess(pid, nice))).toBe(true);
    });
    return { cells, judged };
  }

  it('demotes a worker that burns over 100 ms a second with no call, and evicts it after a second such window', () => {
    const { judged } = governed([0.5, 0.05]);
    vi.advanceTimersByTime(900);
    expect(judged).toEqual([]);
    vi.advanceTimersByTime(400); // past the first one-second window
    expect(judged).toEqual(['w0 demoted background-cpu']);
    vi.advanceTimersByTime(1_100);
    expect(judged).toEqual(['w0 demoted background-cpu', 'w0 evicted']);
    // The quiet worker (50 ms a second) is never judged.
    vi.advanceTimersByTime(5_000);
    expect(judged.filter((entry) => entry.startsWith('w1'))).toEqual([]);
  });

  it('leaves alone a worker whose CPU goes to a running call', () => {
    const { cells, judged } = governed([0.9]);
    const call = {};
    Object.assign(cells[0] as Watched, { busy: 1, oldestCall: () => call });
    vi.advanceTimersByTime(5_000);
    expect(judged).toEqual([]);
  });
});
