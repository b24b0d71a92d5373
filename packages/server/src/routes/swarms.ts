import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { parseKey } from 'sandpool';
import type { ServerContext } from '../context.js';
import { noSwarm } from '../errors.js';
import { authorize, visibleSwarms } from '../guard.js';

/** The extensions a live stem may have, in the order the pool picks them. */
const AGENT_FILE = /^(.+)\.(mjs|js|cjs)$/;

/**
 * What a root holds, for operators and tooling: the swarms a token reaches, and the stems
 * of one swarm's live folder. Names that are not valid keys are left out: nothing could call them.
 */
export function registerSwarmRoutes(app: FastifyInstance, { root }: ServerContext): void {
  app.get('/v1/swarms', async (request) => {
    const entries = await readdir(root, { withFileTypes: true }).catch(() => []);
    const swarms = entries
      .filter((entry) => entry.isDirectory() && validKey(`${entry.name}/x`))
      .map((entry) => entry.name)
      .sort();
    return { swarms: visibleSwarms(request, swarms) };
  });
  app.get<{ Params: { swarm: string } }>('/v1/swarms/:swarm/stems', async (request) => {
    const { swarm } = request.params;
    if (!validKey(`${swarm}/x`)) parseKey(`${swarm}/x`);
    authorize(request, swarm, 'read');
    const entries = await readdir(join(root, swarm, 'live'), { withFileTypes: true }).catch(() => null);
    if (entries === null) throw noSwarm(swarm);
    const stems = new Set<string>();
    for (const entry of entries) {
      const stem = AGENT_FILE.exec(entry.name)?.[1];
      if (entry.isFile() && stem !== undefined && validKey(`${swarm}/${stem}`)) stems.add(stem);
    }
    return { swarm, stems: [...stems].sort() };
  });
}

function validKey(text: string): boolean {
  try {
    parseKey(text);
    return true;
  } catch {
    return false;
  }
}
