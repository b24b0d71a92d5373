import { readdirSync } from 'node:fs';
import { setPriority } from 'node:os';

/**
 * Sets the priority of each thread of a child process: Linux's setpriority acts on one
 * thread, and threads the child starts later inherit the priority of the one starting them.
 * False when its main thread's could not be set.
 */
export function reniceProcess(pid: number, nice: number): boolean {
  if (!setNice(pid, nice)) return false;
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return true; // it has ended meanwhile
  }
  for (const task of tasks) if (Number(task) !== pid) setNice(Number(task), nice);
  return true;
}

/** Sets one thread's priority (a worker thread's TID, or a process's pid for its main thread). */
export function setNice(tid: number, nice: number): boolean {
  try {
    setPriority(tid, nice);
    return true;
  } catch {
    return false;
  }
}

/**
 * Containers often drop CAP_SYS_NICE: lowering a priority still works there, raising it back
 * does not. Probed on a worker's thread once (1, then back to 0), before any demotion.
 */
export function probeRaise(tid: number): boolean {
  return setNice(tid, 1) && setNice(tid, 0);
}
