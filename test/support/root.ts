import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

const FIXTURES = new URL('../fixtures/', import.meta.url);

export function fixture(name: string): Promise<string> {
  return readFile(new URL(name, FIXTURES), 'utf8');
}

const roots: string[] = [];

/** A temp root laid out as `<swarm>/live/...`; removed by `removeRoots()` after each test. */
export async function makeRoot(files: Record<string, string> = {}): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'sandpool-test-'));
  roots.push(root);
  await writeFiles(root, files);
  return root;
}

export async function writeFiles(root: string, files: Record<string, string>): Promise<void> {
  for (const [path, text] of Object.entries(files)) {
    await mkdir(dirname(join(root, path)), { recursive: true });
    await writeFile(join(root, path), text);
  }
}

export async function removeRoots(): Promise<void> {
  for (const root of roots.splice(0)) await rm(root, { recursive: true, force: true });
}

/** A counter agent and its helper in `<swarm>/live/`, with the version marker replaced. */
export async function counterAgent(
  swarm: string,
  version = 'v1',
  stem = 'notifier_agent',
): Promise<Record<string, string>> {
  const agent = (await fixture('counter.mjs')).replace("'v1'", `'${version}'`);
  const helper = (await fixture('format.mjs')).replace('format-v1', `format-${version}`);
  return { [`${swarm}/live/${stem}.mjs`]: agent, [`${swarm}/live/format.mjs`]: helper };
}

/** The artifact folder a snapshot name points to now (`<root>/.sandpool-cache/artifacts/<swarm>/<digest>`). */
export async function snapshotContent(root: string, swarm: string, name: string): Promise<string> {
  const pointer = JSON.parse(await readFile(join(root, swarm, 'snapshots', name), 'utf8')) as { digest: string };
  return join(root, '.sandpool-cache', 'artifacts', swarm, pointer.digest);
}
