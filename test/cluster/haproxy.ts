import { spawnSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { launch, type Started } from './processes.js';

const TEMPLATE = new URL('../../packages/server/deploy/haproxy.cfg', import.meta.url);

/** The haproxy binary, on PATH or where Debian puts it (/usr/sbin is not on every user's PATH). */
export function findHaproxy(): string | null {
  for (const candidate of ['haproxy', '/usr/sbin/haproxy']) {
    if (spawnSync(candidate, ['-v'], { stdio: 'ignore' }).status === 0) return candidate;
  }
  return null;
}

/**
 * The shipped template with this test's ports. Each replacement must hit: a template that
 * drifts fails here, not with a confusing routing result later.
 */
export async function writeConfig(dir: string, listenPort: number, nodes: readonly ServerLine[]): Promise<string> {
  let text = await readFile(TEMPLATE, 'utf8');
  const servers = nodes.map(({ name, port }) => `    server ${name} 127.0.0.1:${port}`).join('\n');
  text = replaceOnce(text, /^(\s*server n\d 127\.0\.0\.1:\d+\n?)+/m, `${servers}\n`);
  text = replaceOnce(text, /^\s*bind :8080$/m, `    bind 127.0.0.1:${listenPort}`);
  const path = join(dir, 'haproxy.cfg');
  await writeFile(path, text);
  return path;
}

export interface ServerLine {
  readonly name: string;
  readonly port: number;
}

/** In the foreground (-db), its warnings (a node going down or up) on stderr; SIGTERM stops it. */
export function startHaproxy(binary: string, config: string): Started {
  return launch(binary, ['-f', config, '-db']);
}

function replaceOnce(text: string, pattern: RegExp, replacement: string): string {
  if (!pattern.test(text)) throw new Error(`haproxy.cfg template no longer matches ${pattern}`);
  return text.replace(pattern, replacement);
}
