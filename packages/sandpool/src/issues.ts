import type { z } from 'zod';
import type { SandpoolIssue } from './errors.js';

export function issuesOf(error: z.ZodError): SandpoolIssue[] {
  return error.issues.map((issue) => ({ path: issue.path, message: issue.message, code: issue.code }));
}
