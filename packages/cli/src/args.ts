import { InvalidArgumentError } from 'commander';

/**
 * Commander argument parsers. Throwing InvalidArgumentError makes commander report the
 * value as a usage error (exit 2) before any command runs, so nothing is spawned or read.
 */

/** Accumulates variadic JSON arguments; commander calls it once per value. */
export function collectJson(text: string, previous: unknown[] | undefined): unknown[] {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    const why = error instanceof Error ? error.message : String(error);
    throw new InvalidArgumentError(`not valid JSON (${why}); quote strings as '"text"'.`);
  }
  return [...(previous ?? []), value];
}

export function parseMillis(text: string): number {
  // Number('') is 0 and Number(' 5') is 5: demand digits so typos are not silently accepted.
  if (!/^\d+$/.test(text)) throw new InvalidArgumentError('expected a whole number of milliseconds.');
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value > 2_147_483_647) {
    throw new InvalidArgumentError('at most 2147483647 milliseconds.');
  }
  return value;
}
