import { spawnSync } from 'node:child_process';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { launch, type Started } from './processes.js';

const TEMPLATE = new URL('../../packages/server/deploy/nginx.conf', import.meta.url);

/** The nginx binary, on PATH or where Debian puts it (/usr/sbin is not on every user's PATH). */
export function findNginx(): string | null {
  for (const candidate of ['nginx', '/usr/sbin/nginx']) {
    if (spawnSync(candidate, ['-v'], { stdio: 'ignore' }).status === 0) return candidate;
  }
  return null;
}

/**
 * The shipped template with this test's ports, and every file nginx writes inside `dir`.
 * Each replacement must hit: a template that drifts fails here, not with a confusing
 * routing result later.
 */
export async function writeConfig(dir: string, listenPort: number, nodePorts: readonly number[]): Promise<string> {
  let text = await readFile(TEMPLATE, 'utf8');
  const servers = nodePorts.map((port) => `        server 127.0.0.1:${port} max_fails=1 fail_timeout=10s;`).join('\n');
  text = replaceOnce(text, /^(\s*server 127\.0\.0\.1:\d+ [^\n]*\n)+/m, `${servers}\n`);
  text = replaceOnce(text, /^\s*listen 8080;$/m, `        listen 127.0.0.1:${listenPort};`);
  text = replaceOnce(
    text,
    /^worker_processes auto;$/m,
    `worker_processes 1;\nerror_log ${join(dir, 'error.log')} info;`,
  );
  const paths = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']
    .map((name) => `    ${name}_temp_path ${join(dir, name)};`)
    .join('\n');
  text = replaceOnce(text, /^http \{$/m, `http {\n    access_log ${join(dir, 'access.log')};\n${paths}`);
  const path = join(dir, 'nginx.conf');
  await writeFile(path, text);
  // Run as root, nginx's workers become `nobody`: they must be able to reach the temp paths.
  await chmod(dir, 0o755);
  return path;
}

export function startNginx(binary: string, dir: string, config: string): Started {
  return launch(binary, ['-p', dir, '-c', config, '-g', `daemon off; pid ${join(dir, 'nginx.pid')};`]);
}

function replaceOnce(text: string, pattern: RegExp, replacement: string): string {
  if (!pattern.test(text)) throw new Error(`nginx.conf template no longer matches ${pattern}`);
  return text.replace(pattern, replacement);
}
