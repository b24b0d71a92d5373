import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { MemoryBeat } from '../packages/sandpool/dist/protocol/messages.js';
import { Heartbeat } from '../packages/sandpool/dist/worker/heartbeat.js';

describe('a worker’s memory heartbeat (Node 20 under the permission model)', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  function beating(busy: () => boolean): { heartbeat: Heartbeat; beats: number[]; start: number } {
    const beats: number[] = [];
    const start = Date.now();
    // It grows at every read: an idle worker whose memory stays put stops beating (see below).
    let reads = 0;
    const read = () => {
      reads += 1;
      return { heapUsed: reads * 2 ** 21, arrayBuffers: 3 };
    };
    const heartbeat = new Heartbeat(() => beats.push(Date.now() - start), read, busy, 20, 250);
    return { heartbeat, beats, start };
  }

  it('slows to the idle rate once a beat finds no call came or runs, and is brought forward when calls come', () => {
    const { heartbeat, beats } = beating(() => false);
    vi.advanceTimersByTime(1_020);
    expect(beats).toEqual([20, 270, 520, 770, 1_020]);
    vi.advanceTimersByTime(30);
    heartbeat.quicken(); // at 1,050: the beat due at 1,270 comes at 1,070
    expect(beats).toHaveLength(5);
    vi.advanceTimersByTime(20);
    expect(beats.at(-1)).toBe(1_070);
    // The beat after the calls still counts them: one more at the busy rate, then slow.
    vi.advanceTimersByTime(20 + 250);
    expect(beats.slice(5)).toEqual([1_070, 1_090, 1_340]);
  });

  it('stays at the busy rate while calls keep coming, and costs a call nothing but a flag', () => {
    const { heartbeat, beats } = beating(() => false);
    for (let t = 0; t < 200; t += 5) {
      heartbeat.quicken();
      vi.advanceTimersByTime(5);
    }
    expect(beats).toEqual([20, 40, 60, 80, 100, 120, 140, 160, 180, 200]);
    vi.advanceTimersByTime(20 + 250);
    expect(beats.slice(10)).toEqual([220, 470]);
  });

  it('stays at the busy rate while a call runs', () => {
    let running = true;
    const { beats } = beating(() => running);
    vi.advanceTimersByTime(100);
    expect(beats).toEqual([20, 40, 60, 80, 100]);
    running = false;
    vi.advanceTimersByTime(20 + 250);
    expect(beats.slice(5)).toEqual([120, 370]);
  });

  it('keeps beating after a read that throws (memoryUsage with no fd left)', () => {
    const posted: number[] = [];
    let reads = 0;
    const read = () => {
      reads += 1;
      if (reads === 1) throw new Error('EMFILE');
      return { heapUsed: reads, arrayBuffers: 0 };
    };
    new Heartbeat(
      (beat) => posted.push(beat.heap),
      read,
      () => false,
      20,
      250,
    );
    expect(() => vi.advanceTimersByTime(20)).toThrow('EMFILE');
    vi.advanceTimersByTime(250);
    expect(posted).toEqual([2]);
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
    vi.advanceTimersByTime(20);
    expect(posted).toEqual([{ t: 'memory', heap: 7, external: 3 }]);
  });

  it('says nothing while its memory stays put and stops, answers a request at once, and beats again for calls', () => {
    const posted: MemoryBeat[] = [];
    let heap = 10 * 2 ** 20;
    const beat = new Heartbeat(
      (message) => posted.push(message),
      () => ({ heapUsed: heap, arrayBuffers: 0 }),
      () => false,
      10,
      250,
    );
    vi.advanceTimersByTime(10 + 250); // the busy beat, then the first idle one
    const spoken = posted.length;
    expect(spoken).toBeGreaterThan(0);
    expect(vi.getTimerCount()).toBe(0); // idle and unchanged: no timer wakes the worker
    vi.advanceTimersByTime(20_000);
    expect(posted).toHaveLength(spoken);
    heap += 4 * 2 ** 20;
    beat.requested(); // the coordinator saw the thread run: a beat now, and still no timer
    expect(posted.at(-1)).toMatchObject({ t: 'memory', heap });
    expect(vi.getTimerCount()).toBe(0);
    beat.requested(); // asked again, unchanged: it answers all the same, the coordinator waits for it
    expect(posted).toHaveLength(spoken + 2);
    beat.quicken(); // a call came: the busy rate again at once
    vi.advanceTimersByTime(10);
    expect(posted).toHaveLength(spoken + 3);
  });
});
