import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Heartbeat } from '../packages/sandpool/dist/worker/heartbeat.js';

describe('a worker’s memory heartbeat (Node 20 under the permission model)', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('beats at the busy rate while calls run, at the idle rate while none does, and at once when calls arrive', () => {
    let busy = false;
    const beats: number[] = [];
    const read = () => ({ heapUsed: 7, arrayBuffers: 3 });
    const heartbeat = new Heartbeat(
      () => beats.push(Date.now()),
      read,
      () => busy,
      20,
      250,
    );
    const start = Date.now();
    vi.advanceTimersByTime(1_000);
    expect(beats.map((at) => at - start)).toEqual([250, 500, 750, 1_000]);
    busy = true;
    heartbeat.quicken();
    expect(beats.at(-1)).toBe(start + 1_000);
    expect(beats).toHaveLength(5);
    vi.advanceTimersByTime(100);
    expect(beats.slice(5).map((at) => at - start)).toEqual([1_020, 1_040, 1_060, 1_080, 1_100]);
    heartbeat.quicken(); // already fast: nothing extra
    expect(beats).toHaveLength(10);
    busy = false;
    vi.advanceTimersByTime(20 + 250 + 250);
    expect(beats.slice(10).map((at) => at - start)).toEqual([1_120, 1_370, 1_620]);
  });

  it('posts what it reads, as the coordinator expects a memory beat', () => {
    const posted: unknown[] = [];
    new Heartbeat(
      (beat) => posted.push(beat),
      () => ({ heapUsed: 7, arrayBuffers: 3 }),
      () => false,
      20,
      250,
    );
    vi.advanceTimersByTime(250);
    expect(posted).toEqual([{ t: 'memory', heap: 7, external: 3 }]);
  });
});
