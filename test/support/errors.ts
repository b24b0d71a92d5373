import { SandpoolError, type SandpoolErrorCode } from 'sandpool';
import { expect } from 'vitest';

/** The SandpoolError a promise rejects with; fails the test if it resolves. */
export async function rejection(promise: Promise<unknown>): Promise<SandpoolError> {
  const error = await promise.then(
    () => {
      throw new Error('expected a rejection');
    },
    (reason: unknown) => reason,
  );
  expect(error).toBeInstanceOf(SandpoolError);
  return error as SandpoolError;
}

export async function code(promise: Promise<unknown>): Promise<SandpoolErrorCode> {
  return (await rejection(promise)).code;
}

/** The SandpoolError `fn` throws synchronously, with the paths of its issues; fails the test if it returns. */
export function thrownSync(fn: () => unknown): { code: SandpoolErrorCode; paths: string[] } {
  let thrown: unknown;
  try {
    fn();
  } catch (error) {
    thrown = error;
  }
  expect(thrown).toBeInstanceOf(SandpoolError);
  const error = thrown as SandpoolError;
  return { code: error.code, paths: (error.issues ?? []).map((issue) => issue.path.join('.')) };
}
