import { readdirSync, readFileSync } from 'node:fs';

/** Linux reports CPU in clock ticks of USER_HZ, 100 a second on every architecture Node runs on. */
const MS_PER_TICK = 10;
/** A reading this recent is reused: stats() may be called often, and each reading opens a file per thread. */
const FRESH_MS = 1_000;

/**
 * CPU of this process's threads that no key of the pool owns, since the pool started, by
 * what Node names them (Node 22+ names its threads; on Node 20 every one is `node`, so all of
 * it is `other`):
 * - `libuv`: the libuv pool, shared by the process: async crypto, zlib, dns.lookup and file
 *   work, the keys' included, which nothing tells apart by key.
 * - `v8`: V8's platform threads (garbage collection and compilation for every isolate).
 * - `other`: the rest (the inspector's, Node's own), and on Node 20 all of the above.
 */
export interface UnattributedCpu {
  libuvMs: number;
  v8Ms: number;
  otherMs: number;
}

type Kind = keyof UnattributedCpu;

export class ProcessThreads {
  /** Each thread's CPU (ms) when first seen, so only what it used since the pool started counts. */
  private readonly baseline = new Map<number, number>();
  /** What each thread counted at the last reading, and under which name. */
  private readonly counted = new Map<number, { kind: Kind; ms: number }>();
  /** What threads that ended, or that a key came to own, had counted: the totals never go back. */
  private readonly settled: UnattributedCpu = { libuvMs: 0, v8Ms: 0, otherMs: 0 };
  private last: { at: number; cpu: UnattributedCpu } | null = null;

  constructor(
    /** Threads a key owns (its worker's), counted on the key already. */
    private readonly owned: () => ReadonlySet<number>,
  ) {
    this.read();
  }

  unattributed(): UnattributedCpu {
    const now = performance.now();
    if (this.last === null || now - this.last.at > FRESH_MS) this.last = { at: now, cpu: this.read() };
    return { ...this.last.cpu };
  }

  private read(): UnattributedCpu {
    let tasks: string[];
    try {
      tasks = readdirSync('/proc/self/task');
    } catch {
      return { ...this.settled }; // not Linux
    }
    const owned = this.owned();
    const present = new Set<number>();
    for (const task of tasks) {
      const tid = Number(task);
      if (tid === process.pid || owned.has(tid)) continue;
      const used = threadMs(tid);
      if (used === null) continue;
      present.add(tid);
      let base = this.baseline.get(tid);
      if (base === undefined) {
        base = used;
        this.baseline.set(tid, used);
      }
      this.counted.set(tid, { kind: kindOf(threadName(tid)), ms: used - base });
    }
    const cpu = { ...this.settled };
    for (const [tid, { kind, ms }] of this.counted) {
      if (present.has(tid)) {
        cpu[kind] += ms;
        continue;
      }
      this.settled[kind] += ms;
      cpu[kind] += ms;
      this.counted.delete(tid);
      this.baseline.delete(tid);
    }
    return cpu;
  }
}

/** utime + stime of a thread, in ms; null once it has gone. Fields are read after the last ')'. */
function threadMs(tid: number): number | null {
  try {
    const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'latin1');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(fields[11]) + Number(fields[12]);
    return Number.isFinite(ticks) ? ticks * MS_PER_TICK : null;
  } catch {
    return null;
  }
}

function kindOf(name: string): Kind {
  if (name.includes('libuv')) return 'libuvMs';
  if (name.includes('V8')) return 'v8Ms';
  return 'otherMs';
}

function threadName(tid: number): string {
  try {
    return readFileSync(`/proc/self/task/${tid}/comm`, 'latin1');
  } catch {
    return '';
  }
}
