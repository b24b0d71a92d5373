import { readFileSync } from 'node:fs';

/** The pids of this process's children whose command line contains `marker`. */
export function childPids(marker: string): number[] {
  const listed = readFileSync(`/proc/self/task/${process.pid}/children`, 'utf8').trim();
  if (listed === '') return [];
  return listed
    .split(' ')
    .map(Number)
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes(marker);
      } catch {
        return false; // gone already
      }
    });
}

/** A process and every process below it (a sandboxed cell is bubblewrap, its init, and Node). */
export function processTree(pid: number): number[] {
  let children: number[] = [];
  try {
    children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'latin1')
      .trim()
      .split(' ')
      .filter(Boolean)
      .map(Number);
  } catch {
    // Gone already.
  }
  return [pid, ...children.flatMap(processTree)];
}

/** What one process holds, in MB: resident, proportional (shared pages split), and private. */
export type ProcessMemory = { rssMb: number; pssMb: number; privateMb: number };

export function processMemory(pid: number): ProcessMemory {
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'latin1');
  const kb = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(rollup)?.[1] ?? 0);
  return {
    rssMb: kb('Rss') / 1024,
    pssMb: kb('Pss') / 1024,
    privateMb: (kb('Private_Clean') + kb('Private_Dirty')) / 1024,
  };
}
