import { createServer, type SandpoolServer, type ServerOptions } from '@sandpool/server';
import { afterEach, expect } from 'vitest';
import { removeRoots } from './root.js';

const servers: SandpoolServer[] = [];

/** A server closed after the test (its pool with it); no spare, so thread counts stay exact. */
export function openServer(options: Omit<ServerOptions, 'nodeName'> & { nodeName?: string }): SandpoolServer {
  const server = createServer({ nodeName: 'node-1', spareWorkers: 0, idleTimeoutMs: 0, ...options });
  servers.push(server);
  return server;
}

/** Closes every server a test opened and checks that closing the app closed its pool. */
export function installServerCleanup(): void {
  afterEach(async () => {
    const open = servers.splice(0);
    await Promise.all(open.map((server) => server.app.close()));
    for (const { pool } of open) expect(pool.stats().workers + pool.stats().spares).toBe(0);
    await removeRoots();
  });
}

export interface Reply {
  status: number;
  node: string | undefined;
  body: Record<string, unknown>;
}

/** One injected request, JSON in and out. */
export async function request(
  server: SandpoolServer,
  method: 'GET' | 'POST' | 'PUT' | 'DELETE',
  url: string,
  payload?: unknown,
  headers: Record<string, string> = {},
): Promise<Reply> {
  const response = await server.app.inject({
    method,
    url,
    headers,
    ...(payload === undefined ? {} : { payload: payload as Record<string, unknown> }),
  });
  const node = response.headers['x-sandpool-node'];
  return {
    status: response.statusCode,
    node: typeof node === 'string' ? node : undefined,
    body: response.body === '' ? {} : (JSON.parse(response.body) as Record<string, unknown>),
  };
}
