import { type ChildProcess, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';

// The built binary, as an operator runs it: `pnpm test:cluster` builds first.
const BIN = fileURLToPath(new URL('../../packages/cli/dist/bin.js', import.meta.url));

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A child process this test started, with everything it printed (for failure messages). */
export interface Started {
  readonly child: ChildProcess;
  readonly exited: Promise<Exit>;
  output(): string;
}

const started = new Set<ChildProcess>();

// Last resort if the runner dies before afterAll: never leave a node or nginx behind.
process.on('exit', () => {
  for (const child of started) child.kill('SIGKILL');
});

export function launch(command: string, args: readonly string[]): Started {
  // The runner's NODE_OPTIONS (loaders, inspector) must not reach the processes under test.
  const { NODE_OPTIONS: _ignored, ...env } = process.env;
  const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  started.add(child);
  let output = '';
  const collect = (chunk: string): void => {
    output += chunk;
  };
  child.stdout?.setEncoding('utf8').on('data', collect);
  child.stderr?.setEncoding('utf8').on('data', collect);
  const exited = new Promise<Exit>((resolve) => {
    child.on('exit', (code, signal) => {
      started.delete(child);
      resolve({ code, signal });
    });
  });
  return { child, exited, output: () => output };
}

export interface ServeNode extends Started {
  readonly name: string;
  readonly port: number;
  readonly url: string;
}

/**
 * `sandpool serve` on a port the kernel picks; resolves once it prints where it listens.
 * `maxWorkers` must hold every key a node may get, or cycling through them evicts on every call.
 */
export function startNode(root: string, name: string, maxWorkers: number): Promise<ServeNode> {
  return serve(name, ['--root', root, '--port', '0', '--node-name', name, '--max-workers', String(maxWorkers)]);
}

/** `sandpool serve --config <file>`: the file holds everything, the port the kernel picks. */
export function startConfiguredNode(config: string, name: string): Promise<ServeNode> {
  return serve(name, ['--config', config, '--port', '0', '--node-name', name]);
}

async function serve(name: string, args: readonly string[]): Promise<ServeNode> {
  const proc = launch(process.execPath, [BIN, 'serve', ...args]);
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not start:\n${proc.output()}`)), 15_000);
    proc.child.stdout?.on('data', () => {
      const match = /listening on (http:\/\/\S+)/.exec(proc.output());
      if (match?.[1] === undefined) return;
      clearTimeout(timer);
      resolve(match[1]);
    });
    void proc.exited.then((exit) => reject(new Error(`${name} exited early (${exit.code}):\n${proc.output()}`)));
  });
  return { ...proc, name, url, port: Number(new URL(url).port) };
}

/** Sends `signal` and waits for the exit; SIGKILL if it takes longer than `graceMs`. */
export async function stop(proc: Started, signal: NodeJS.Signals, graceMs = 15_000): Promise<Exit> {
  if (proc.child.exitCode !== null || proc.child.signalCode !== null) return proc.exited;
  proc.child.kill(signal);
  const timer = setTimeout(() => proc.child.kill('SIGKILL'), graceMs);
  try {
    return await proc.exited;
  } finally {
    clearTimeout(timer);
  }
}

/** A port free right now (the kernel's pick); nginx needs one before it starts. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address !== null ? resolve(address.port) : reject()));
    });
  });
}
