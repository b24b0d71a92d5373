import { describe, expect, it } from 'vitest';
import { encodeFrame, FrameReader } from '../packages/sandpool/dist/protocol/frames.js';
import { installCleanup, openPool } from './support/pool.js';
import { makeRoot } from './support/root.js';

installCleanup();

/** Primitives a process key's channel must give back exactly: JSON alone would change each of them. */
const TRICKY: readonly unknown[] = [
  undefined,
  Number.NaN,
  -0,
  Number.POSITIVE_INFINITY,
  Number.NEGATIVE_INFINITY,
  2n ** 70n,
  // Past what one JSON frame carries: it goes as v8.serialize.
  '\u0001'.repeat(70_000),
];
/** Primitives JSON keeps, which take the JSON frames: escaped ones too (a lone surrogate, control characters). */
const PLAIN: readonly unknown[] = [
  0,
  1.5,
  -7,
  Number.MAX_SAFE_INTEGER,
  1e300,
  'text',
  'ünïcödé ☃ 😀',
  '\ud800 lone surrogate',
  '\u0000\u001f control',
  '',
  true,
  false,
  null,
];

/** One message through a frame and back, in chunks of `split` bytes. */
function throughFrame(message: unknown, split = Number.POSITIVE_INFINITY): unknown[] {
  const got: unknown[] = [];
  const reader = new FrameReader((value) => got.push(value));
  const frame = encodeFrame(message);
  for (let at = 0; at < frame.length; at += Math.min(split, frame.length)) {
    reader.push(frame.subarray(at, Math.min(frame.length, at + split)));
  }
  return got;
}

describe('a process key’s frames', () => {
  it('give back every primitive exactly, whether JSON carries the frame or v8.serialize does', () => {
    for (const value of [...TRICKY, ...PLAIN]) {
      const [message] = throughFrame({ t: 'done', ok: [1, value], err: [] }, 3);
      const ok = (message as { ok: unknown[] }).ok;
      expect(ok).toHaveLength(2);
      expect(Object.is(ok[1], value), String(value).slice(0, 40)).toBe(true);
    }
    // Every field kept: a value JSON would drop from an object, an array with a hole.
    expect(throughFrame({ t: 'calls', calls: [1, 'f', 0, 1, undefined] })).toEqual([
      { t: 'calls', calls: [1, 'f', 0, 1, undefined] },
    ]);
    const sparse: unknown[] = [1, 2];
    sparse[3] = 3;
    const [holed] = throughFrame({ t: 'done', ok: sparse, err: [] }) as [{ ok: unknown[] }];
    expect(2 in holed.ok).toBe(false);
  });

  it('send plain messages as JSON and the rest as v8.serialize', () => {
    expect(encodeFrame({ t: 'calls', calls: [1, 'add', 0, 2, 1, 'two'] })[4]).toBe(0x7b);
    for (const value of TRICKY) expect(encodeFrame({ t: 'done', ok: [1, value], err: [] })[4]).toBe(0xff);
    expect(encodeFrame({ t: 'done', ok: [], err: [1, 'E', { name: 'Error' }] })[4]).toBe(0xff);
  });

  it('carry them to and from a process key exactly, one at a time and in batches', async () => {
    const root = await makeRoot({ 'x/live/echo.mjs': 'export const echo = (value) => value;\n' });
    const pool = openPool({ root, isolation: 'process', permissions: 'none' });
    const values = [...TRICKY, ...PLAIN];
    for (const value of values) expect(Object.is(await pool.call('x/echo', 'echo', [value]), value)).toBe(true);
    // Made in one turn, they leave in batches and come back in them.
    const answers = await Promise.all(values.map((value) => pool.call('x/echo', 'echo', [value])));
    answers.forEach((answer, i) => {
      expect(Object.is(answer, values[i])).toBe(true);
    });
  });
});
