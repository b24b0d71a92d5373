// The store option of a pool. Apart from the PostgreSQL client, which only a pool that names
// a database loads.
import { z } from 'zod';

export const PostgresStoreSchema = z.strictObject({
  /** `postgres://user:password@host:port/database`; never shown in an error or a log. */
  postgres: z
    .string()
    .max(4096)
    .refine((url) => /^postgres(ql)?:\/\/./.test(url), 'store.postgres must be a postgres:// connection URL'),
  /** How often every pointer is read again, in case a notification was lost. */
  recheckMs: z.number().int().min(50).max(3_600_000).default(5_000),
});
export type PostgresStoreOptions = z.input<typeof PostgresStoreSchema>;
export type ResolvedPostgresStore = z.output<typeof PostgresStoreSchema>;
