import { rmSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

/** Fixtures live beside `src/` and `dist/`: `benchmarks/fixtures/`. */
export const FIXTURES = new URL('../../fixtures/', import.meta.url);

export function fixture(name: string): URL {
  return new URL(name, FIXTURES);
}

export interface AgentFile {
  swarm: string;
  stem: string;
  /** File name under `benchmarks/fixtures/`. */
  fixture: string;
}

export interface TempRoot {
  root: string;
  /** The copied module of a key, as a file URL (for piscina, in-process and bare workers). */
  url(swarm: string, stem: string): string;
  cleanup(): Promise<void>;
}

/**
 * A sandpool root in a temp folder: `<root>/<swarm>/live/<stem>.mjs`, each a copy of a
 * fixture. Every key gets a file of its own, so every key is a module of its own for every
 * system compared, not only for sandpool.
 */
export async function makeRoot(agents: readonly AgentFile[]): Promise<TempRoot> {
  const root = await mkdtemp(join(tmpdir(), 'sandpool-bench-'));
  // A crash (an uncaught error from a library under test) skips every `finally`; 'exit' still runs.
  const removeAtExit = (): void => rmSync(root, { recursive: true, force: true });
  process.once('exit', removeAtExit);
  const sources = new Map<string, string>();
  const swarms = new Set<string>();
  for (const agent of agents) {
    if (!swarms.has(agent.swarm)) {
      await mkdir(join(root, agent.swarm, 'live'), { recursive: true });
      swarms.add(agent.swarm);
    }
    let source = sources.get(agent.fixture);
    if (source === undefined) {
      source = await readFile(fixture(agent.fixture), 'utf8');
      sources.set(agent.fixture, source);
    }
    await writeFile(join(root, agent.swarm, 'live', `${agent.stem}.mjs`), source);
  }
  return {
    root,
    url: (swarm, stem) => pathToFileURL(join(root, swarm, 'live', `${stem}.mjs`)).href,
    cleanup: async () => {
      process.removeListener('exit', removeAtExit);
      await rm(root, { recursive: true, force: true });
    },
  };
}
