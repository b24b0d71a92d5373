// The fleet's database as every process of a node uses it: connections, queries and
// transactions whose failures never show the connection string.
import pg from 'pg';
import { isSandpoolError, type SandpoolError, snapshotBuild } from '../errors.js';

const TRANSACTION_ATTEMPTS = 3;
/** PostgreSQL's deadlock_detected. */
const DEADLOCK = '40P01';

/**
 * A small pool of connections, each closed after `idleMs` unused (0: kept); a lost one is
 * made again by the next query.
 */
export function openDatabase(url: string, { max, idleMs }: { max: number; idleMs: number }): pg.Pool {
  const pool = new pg.Pool({ connectionString: url, max, idleTimeoutMillis: idleMs });
  pool.on('error', () => {});
  return pool;
}

export async function query(db: pg.Pool, text: string, values?: unknown[]): Promise<pg.QueryResult> {
  try {
    return await db.query(text, values);
  } catch (error) {
    throw unreachable('a query failed', error);
  }
}

/**
 * Runs `body` in one transaction. Points and removes lock names, then content (in digest
 * order); a create claims its content first. Two writers on two nodes can still wait for each
 * other (a point of `a` at `b` while `b` is pointed at `a`): PostgreSQL ends one of them (a
 * deadlock), and it runs again, as nothing of it was kept.
 */
export async function transaction<T>(db: pg.Pool, body: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    let client: pg.PoolClient;
    try {
      client = await db.connect();
    } catch (error) {
      throw unreachable('no connection', error);
    }
    try {
      await client.query('BEGIN');
      const value = await body(client);
      await client.query('COMMIT');
      return value;
    } catch (error) {
      await client.query('ROLLBACK').catch(() => {});
      if (isSandpoolError(error)) throw error;
      if (attempt < TRANSACTION_ATTEMPTS && sqlState(error) === DEADLOCK) continue;
      throw unreachable('a transaction failed; nothing changed', error);
    } finally {
      client.release();
    }
  }
}

/**
 * The database could not be used. What pg said is kept only as its SQLSTATE or errno code:
 * its messages may name the host or user of the connection string.
 */
function unreachable(what: string, error: unknown): SandpoolError {
  const state = sqlState(error);
  const code = state === null ? '' : ` (${state.slice(0, 32)})`;
  return snapshotBuild(`the snapshot store's database cannot be used: ${what}${code}`);
}

/** A pg error's SQLSTATE, or a socket error's errno code. */
function sqlState(error: unknown): string | null {
  return typeof error === 'object' && error !== null && 'code' in error && typeof error.code === 'string'
    ? error.code
    : null;
}
