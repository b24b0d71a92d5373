import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { Cell } from '../packages/sandpool/dist/host/cells/cell.js';
import { MemoryGovernor } from '../packages/sandpool/dist/host/governors/memory.js';
import type { AgentWorker } from '../packages/sandpool/dist/host/workers/agent-worker.js';

describe('the governor and a worker that beats its memory (Node 20 under the permission model)', () => {
  // The governor's ticks and its clock are the test's to move: a loaded machine's late timers
  // would otherwise turn a wait into a missed beat.
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval', 'performance'] });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('does not take an idle worker’s slow beat for a missed one when a call arrives; a real miss still counts', () => {
    const breaches: string[] = [];
    // 1 MB of growth is enough to blame: the test grows the process by far more.
    const governor = new MemoryGovernor(
      { heapBytes: 2 ** 20, externalBytes: 2 ** 20 },
      (_cell, detail) => breaches.push(detail),
      () => null,
    );
    if (!governor.active) return; // no probe at all on this Node: nothing watches
    const cell = { busy: 0 } as unknown as Cell;
    governor.watch(cell, {} as AgentWorker, true);
    governor.beat(cell, { heap: 1, external: 1 });
    vi.advanceTimersByTime(200); // idle: its next beat would come at 250 ms
    const growth = Buffer.alloc(64 * 2 ** 20, 1); // the process grows while it idles
    (cell as { busy: number }).busy = 1;
    governor.engaged(cell);
    vi.advanceTimersByTime(30); // three ticks: the old rule blamed it at the first
    expect(breaches).toEqual([]);
    vi.advanceTimersByTime(150); // now it really has not beaten for 100 ms while busy…
    const more = Buffer.alloc(64 * 2 ** 20, 1); // …and the process grew
    vi.advanceTimersByTime(50);
    expect(breaches).toHaveLength(1);
    expect(breaches[0]).toMatch(/missed its heartbeat/);
    governor.unwatch(cell);
    expect(growth.length + more.length).toBeGreaterThan(0);
  });
});
