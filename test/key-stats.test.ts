// keyStats() latency, from known latencies: the percentiles it reports are the right ones.
import { describe, expect, it } from 'vitest';
import { KeyBook } from '../packages/sandpool/dist/host/routes/key-book.js';

/** 1..n in an order that is not sorted, so the percentiles must sort. */
function shuffled(n: number): number[] {
  const values = Array.from({ length: n }, (_, i) => i + 1);
  for (let i = n - 1; i > 0; i--) {
    const j = (i * 7919) % (i + 1);
    [values[i], values[j]] = [values[j] as number, values[i] as number];
  }
  return values;
}

function settleAll(book: KeyBook, key: string, latencies: number[]): void {
  const totals = book.of(key);
  for (const ms of latencies) book.settled(totals, false, ms);
}

describe('keyStats() latency', () => {
  it('tells p50, p99 and max apart: for latencies 1..200 ms they are 101, 199 and 200', () => {
    const book = new KeyBook();
    settleAll(book, 's/k', shuffled(200));
    expect(book.read('s/k')).toMatchObject({ calls: 200, errors: 0, latency: { p50: 101, p99: 199, max: 200 } });
  });

  it('covers the last 256 calls only: older slow calls drop out of p99 and max', () => {
    const book = new KeyBook();
    settleAll(book, 's/k', [...Array.from({ length: 44 }, () => 10_000), ...shuffled(256)]);
    expect(book.read('s/k')).toMatchObject({ calls: 300, latency: { p50: 129, p99: 254, max: 256 } });
  });

  it('is null for a key with no settled call', () => {
    expect(new KeyBook().read('s/k')).toEqual({ calls: 0, errors: 0, cpuMs: 0, latency: null, outputDropped: 0 });
  });
});
