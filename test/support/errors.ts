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
