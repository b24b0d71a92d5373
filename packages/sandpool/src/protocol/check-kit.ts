import type { FromWorker } from './messages.js';

/** What a check makes of a message: the message, typed, or what is wrong with it. */
export type Checked = { ok: true; message: FromWorker } | { ok: false; problem: string };

/** An array whose length is bounded before it is walked: a sparse one with a huge length is refused unread. */
export function isDense(value: unknown, max: number): value is unknown[] {
  return Array.isArray(value) && value.length <= max;
}

export function isCallId(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0;
}

export function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

export function isText(value: unknown, max: number): value is string {
  return typeof value === 'string' && value.length <= max;
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

export function bad(problem: string): Checked {
  return { ok: false, problem: `the worker sent ${problem}` };
}
