import { describe, expect, it } from 'vitest';
import { installCleanup, invariants, NO_DEATHS, openPool } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();

const AGENT = `
export function describe(value) {
  return { kind: value.constructor.name, isBuffer: Buffer.isBuffer(value), length: value.byteLength, sum: sum(value) };
}
function sum(view) {
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  let total = 0;
  for (let i = 0; i < bytes.length; i += 4096) total += bytes[i];
  return total;
}
let kept = null;
export function fill(size, moved) {
  const buffer = new ArrayBuffer(size);
  const bytes = new Uint8Array(buffer);
  for (let i = 0; i < size; i += 4096) bytes[i] = (i / 4096) % 251;
  const result = { bytes, head: Buffer.from(buffer, 0, 4), raw: buffer };
  kept = buffer;
  return moved ? sandpool.transfer(result, [buffer]) : result;
}
export function keptLength() {
  return kept.byteLength;
}
export function buffer() {
  return Buffer.from('hi');
}
export function pooled() {
  const small = Buffer.from('pooled');
  return sandpool.transfer({ small }, [small.buffer]);
}
`;

const KEY = 't/bytes';
const SIZE = 64 * 1024 * 1024;

async function root(): Promise<string> {
  return makeRoot({ 't/live/bytes.mjs': AGENT, ...(await counterAgent('n')) });
}

function pattern(size: number): { buffer: ArrayBuffer; sum: number } {
  const buffer = new ArrayBuffer(size);
  const bytes = new Uint8Array(buffer);
  let sum = 0;
  for (let i = 0; i < size; i += 4096) {
    bytes[i] = (i / 4096) % 251;
    sum += bytes[i] as number;
  }
  return { buffer, sum };
}

describe('transfers', () => {
  it('call(..., { transfer }) moves the buffers: the caller is detached at once and the bytes arrive', async () => {
    const pool = openPool({ root: await root() });
    await pool.call(KEY, 'fill', [16, false]); // a warm worker
    const moved = pattern(SIZE);
    const copied = pattern(SIZE);
    // Moved, not copied: the caller's buffer is detached at once (which is faster is the benchmark's to say).
    const movedSeen = await pool.call(KEY, 'describe', [new Uint8Array(moved.buffer)], { transfer: [moved.buffer] });
    expect(moved.buffer.byteLength).toBe(0); // detached
    expect(movedSeen).toEqual({ kind: 'Uint8Array', isBuffer: false, length: SIZE, sum: moved.sum });
    const copiedSeen = await pool.call(KEY, 'describe', [new Uint8Array(copied.buffer)]);
    expect(copied.buffer.byteLength).toBe(SIZE);
    expect(copiedSeen).toEqual(movedSeen);
    expect(invariants(pool)).toEqual([]);
  });

  it('a call that waits for its worker moves its buffers at once, and they still arrive', async () => {
    const pool = openPool({ root: await root() });
    const { buffer, sum } = pattern(1024 * 1024);
    const pending = pool.call(KEY, 'describe', [Buffer.from(buffer)], { transfer: [buffer] });
    expect(buffer.byteLength).toBe(0);
    // A Buffer argument arrives as a Uint8Array, as with postMessage.
    expect(await pending).toEqual({ kind: 'Uint8Array', isBuffer: false, length: 1024 * 1024, sum });
  });

  it('sandpool.transfer() moves a result out of band: same bytes and views, the agent keeps nothing', async () => {
    const pool = openPool({ root: await root() });
    type Filled = { bytes: Uint8Array; head: Buffer; raw: ArrayBuffer };
    // Moved, not copied: the agent keeps nothing, and the views share one buffer.
    const moved = await pool.call<Filled>(KEY, 'fill', [SIZE, true]);
    expect(await pool.call(KEY, 'keptLength')).toBe(0);
    const copied = await pool.call<Filled>(KEY, 'fill', [SIZE, false]);
    expect(await pool.call(KEY, 'keptLength')).toBe(SIZE);
    for (const result of [moved, copied]) {
      expect(result.bytes.byteLength).toBe(SIZE);
      expect(result.bytes[4096 * 7]).toBe(7);
      expect(Buffer.isBuffer(result.head)).toBe(true);
      expect(result.raw.byteLength).toBe(SIZE);
    }
    // Moved, the views share the one buffer, as they did in the agent.
    expect(moved.bytes.buffer).toBe(moved.raw);
    expect(moved.head.buffer).toBe(moved.raw);
    expect(invariants(pool)).toEqual([]);
  });

  it('a Buffer result arrives as a Buffer; moving what cannot be moved is DATA_CLONE, the worker goes on', async () => {
    const pool = openPool({ root: await root() });
    const result = await pool.call<Buffer>(KEY, 'buffer');
    expect(Buffer.isBuffer(result)).toBe(true);
    expect(result.toString()).toBe('hi');
    // Buffer's shared pool cannot move: Node 20 copies it instead, later versions refuse.
    const pooled = await pool.call<{ small: Buffer }>(KEY, 'pooled').catch((error: { code: string }) => error.code);
    if (typeof pooled === 'string') expect(pooled).toBe('ERR_SANDPOOL_DATA_CLONE');
    else expect(pooled.small.toString()).toBe('pooled');
    expect(Buffer.isBuffer(await pool.call(KEY, 'buffer'))).toBe(true);
    expect(pool.stats().died).toEqual(NO_DEATHS);
    expect(invariants(pool)).toEqual([]);
  });
});
