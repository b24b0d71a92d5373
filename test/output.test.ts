import { describe, expect, it, onTestFinished } from 'vitest';
import {
  LineSplitter,
  labelledWriter,
  neutralise,
  OUTPUT_BUDGET,
  OutputAllowance,
} from '../packages/sandpool/dist/host/workers/output.js';

describe('neutralise', () => {
  it('escapes every character that could move the cursor or fake a line, and keeps the rest', () => {
    expect(neutralise('a\rb')).toBe('a\\u000db');
    expect(neutralise('\x1b[2K[b/x] forged')).toBe('\\u001b[2K[b/x] forged');
    expect(neutralise('\x9b2K \x85 \x7f \b')).toBe('\\u009b2K \\u0085 \\u007f \\u0008');
    expect(neutralise('\u2028\u2029\u202e\u2066')).toBe('\\u2028\\u2029\\u202e\\u2066');
    expect(neutralise('tab\tstays, so does é and 漢字 and 🙂')).toBe('tab\tstays, so does é and 漢字 and 🙂');
  });
});

describe('LineSplitter', () => {
  it('joins chunks into lines and cuts a line that never ends into bounded pieces', () => {
    const lines: string[] = [];
    const splitter = new LineSplitter(
      'stdout',
      () => 'a/x',
      (_key, _stream, text) => lines.push(text),
      new OutputAllowance(),
      () => {
        throw new Error('nothing is dropped within the budget');
      },
    );
    splitter.push('one\ntw');
    splitter.push('o\n');
    expect(lines).toEqual(['one', 'two']);
    lines.length = 0;
    splitter.push('z'.repeat(200 * 1024));
    expect(lines.every((line) => line.length <= 64 * 1024)).toBe(true);
    splitter.end();
    expect(lines.join('')).toBe('z'.repeat(200 * 1024));
  });

  it('holds a worker to its lines and characters per second over both streams, dropping the rest unread', () => {
    let now = 0;
    const allowance = new OutputAllowance(OUTPUT_BUDGET, () => now);
    let lines = 0;
    const dropped: [number, string][] = [];
    const splitter = (stream: 'stdout' | 'stderr') =>
      new LineSplitter(
        stream,
        () => 'a/x',
        () => {
          lines += 1;
        },
        allowance,
        (chars, key) => dropped.push([chars, key]),
      );
    const [stdout, stderr] = [splitter('stdout'), splitter('stderr')];
    // A million empty lines on each stream: a budget's worth goes out, the rest is one drop.
    stdout.push('\n'.repeat(1_000_000));
    stderr.push('\n'.repeat(1_000_000));
    expect(lines).toBe(OUTPUT_BUDGET.linesPerSecond);
    expect(dropped.reduce((sum, [chars]) => sum + chars, 0)).toBe(2_000_000 - OUTPUT_BUDGET.linesPerSecond);
    expect(dropped.every(([, key]) => key === 'a/x')).toBe(true);
    // Half a second later, half a budget more.
    now += 500;
    stdout.push('\n'.repeat(1_000_000));
    expect(lines).toBe(OUTPUT_BUDGET.linesPerSecond * 1.5);
    // Characters: past a second's worth, the chunk is not read at all.
    now += 10_000;
    dropped.length = 0;
    stdout.push('x'.repeat(OUTPUT_BUDGET.charsPerSecond + 10));
    expect(dropped).toEqual([[10, 'a/x']]);
  });
});

describe('labelledWriter', () => {
  it('drops and counts a line while the stream holds more than its high-water mark', () => {
    const written: string[] = [];
    const write = process.stdout.write;
    const length = Object.getOwnPropertyDescriptor(process.stdout, 'writableLength');
    let backlog = 0;
    Object.defineProperty(process.stdout, 'writableLength', { configurable: true, get: () => backlog });
    process.stdout.write = ((chunk: string) => {
      written.push(chunk);
      return true;
    }) as typeof process.stdout.write;
    onTestFinished(() => {
      process.stdout.write = write;
      if (length === undefined) delete (process.stdout as { writableLength?: number }).writableLength;
      else Object.defineProperty(process.stdout, 'writableLength', length);
    });
    let dropped = 0;
    const writer = labelledWriter(() => {
      dropped += 1;
    });
    writer('a/x', 'stdout', 'first\r');
    backlog = process.stdout.writableHighWaterMark + 1;
    writer('a/x', 'stdout', 'lost');
    backlog = 0;
    writer('a/x', 'stdout', 'third');
    expect(written).toEqual(['[a/x] first\\u000d\n', '[a/x] third\n']);
    expect(dropped).toBe(1);
  });
});
