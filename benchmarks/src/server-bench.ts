/**
 * `pnpm bench:server`: the HTTP server under autocannon, warm keys, against in-process
 * `pool.call` on the same agents in the same run. Targets: one `sandpool serve` node
 * direct (a bearer token on, as metrics and validation always are), the least a fastify
 * route can do to call `pool.call` (fixtures/minimal-server.mjs, the baseline the server's
 * overhead is judged by), and nginx (the shipped deploy/nginx.conf) in front of three
 * nodes. Each at 1 request in flight (latency: what HTTP adds per call) and at CONNECTIONS
 * in flight (throughput); the node and the baseline at CONNECTIONS take turns over several
 * rounds, since on a shared machine one long run each would mostly measure the neighbours.
 * Writes results/server.json (and .svg) through the suite's report helpers.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createPool, type Pool } from 'sandpool';
import { loadNow } from './lib/conditions.js';
import { num, perSecond, ratio, us } from './lib/format.js';
import { Latency, type LatencySummary } from './lib/histogram.js';
import { type BenchContext, type Benchmark, type BenchReport, makeContext, publish } from './lib/report.js';
import { fixture, makeRoot } from './lib/temp-root.js';

const WORKSPACE = fileURLToPath(new URL('../../', import.meta.url));
const CLI = join(WORKSPACE, 'packages/cli/dist/bin.js');
const NGINX_TEMPLATE = join(WORKSPACE, 'packages/server/deploy/nginx.conf');
const KEYS = Array.from({ length: 24 }, (_, i) => `s${i % 3}/agent_${String(i).padStart(2, '0')}`);
const CONNECTIONS = 32;
const BODY = JSON.stringify({ fn: 'add', args: [1, 2] });
const TOKEN = 'bench-token';
const HEADERS = { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` };
const NODE = 'HTTP, 1 node';
const MINIMAL = 'minimal fastify route';

/** The slice of autocannon's API used here; the package ships no types. */
type Autocannon = (options: {
  url: string;
  connections: number;
  duration: number;
  method: 'POST';
  headers: Record<string, string>;
  body: string;
  requests: { setupRequest: (request: Record<string, unknown>) => Record<string, unknown> }[];
}) => AutocannonRun;
interface AutocannonRun
  extends PromiseLike<{ requests: { total: number }; errors: number; non2xx: number; duration: number }> {
  on(event: 'response', listener: (client: unknown, status: number, bytes: number, ms: number) => void): void;
}
const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon;

interface Measured {
  target: string;
  inFlight: number;
  callsPerSecond: number;
  latency: LatencySummary;
  failures: number;
}

/** The node against the baseline at CONNECTIONS in flight, round by round. */
interface Rounds {
  node: number[];
  minimal: number[];
  /** 1-minute load average before each round. */
  load: number[];
}

const serverBench: Benchmark = {
  name: 'server',
  title: 'HTTP server: warm keys, one node and nginx + 3 nodes, vs in-process pool.call',
  async run(context: BenchContext): Promise<BenchReport> {
    const seconds = context.quick ? 3 : 10;
    const rounds = context.quick ? 3 : 7;
    const tree = await makeRoot(
      KEYS.map((key) => ({ swarm: key.split('/')[0]!, stem: key.split('/')[1]!, fixture: 'agent.mjs' })),
    );
    const children: ChildProcess[] = [];
    // If this process dies mid-run, the nodes and nginx it started must not outlive it.
    process.once('exit', () => {
      for (const child of children) child.kill('SIGKILL');
    });
    const results: Measured[] = [];
    let compared: Rounds | null = null;
    const scratch = join(tree.root, '..', `${tree.root.split('/').pop()}-nginx`);
    try {
      context.progress('in-process pool.call');
      const pool = createPool({ root: tree.root, spareWorkers: 0, idleTimeoutMs: 0 });
      await Promise.all(KEYS.map((key) => pool.call(key, 'add', [1, 2])));
      for (const inFlight of [1, CONNECTIONS]) results.push(await inProcess(pool, inFlight, seconds));
      await pool.close();

      const nodes = [];
      for (const name of ['b1', 'b2', 'b3'])
        nodes.push(await startServer(name, ['serve', ...serveArgs(tree.root, name)], children));
      const minimal = await startServer('minimal', [fileURLToPath(fixture('minimal-server.mjs')), tree.root], children);
      await warm(nodes[0]!);
      await warm(minimal);
      for (const [target, url] of [
        [NODE, nodes[0]!],
        [MINIMAL, minimal],
      ] as const) {
        context.progress(`${target}, 1 in flight`);
        results.push(await overHttp(target, url, 1, seconds));
      }
      compared = { node: [], minimal: [], load: [] };
      const latency = { node: new Latency(), minimal: new Latency() };
      const failures = { node: 0, minimal: 0 };
      for (let round = 0; round < rounds; round++) {
        compared.load.push(Math.round(loadNow() * 10) / 10);
        // Each goes first every other round: neither always meets the machine as the other left it.
        const order = round % 2 === 0 ? (['node', 'minimal'] as const) : (['minimal', 'node'] as const);
        for (const which of order) {
          context.progress(
            `${which === 'node' ? NODE : MINIMAL}, ${CONNECTIONS} in flight, round ${round + 1} of ${rounds}`,
          );
          const run = await measure(which === 'node' ? nodes[0]! : minimal, CONNECTIONS, seconds, latency[which]);
          compared[which].push(run.callsPerSecond);
          failures[which] += run.failures;
        }
      }
      for (const which of ['node', 'minimal'] as const) {
        results.push({
          target: which === 'node' ? NODE : MINIMAL,
          inFlight: CONNECTIONS,
          callsPerSecond: median(compared[which]),
          latency: latency[which].summaryMs(),
          failures: failures[which],
        });
      }
      const nginx = findNginx();
      if (nginx === null) {
        context.progress('nginx is not installed: skipping nginx + 3 nodes (apt-get install nginx-light)');
      } else {
        const url = await startNginx(nginx, scratch, nodes, children);
        for (const inFlight of [1, CONNECTIONS]) {
          context.progress(`nginx + 3 nodes, ${inFlight} in flight`);
          results.push(await overHttp('HTTP, nginx + 3 nodes', url, inFlight, seconds));
        }
      }
    } finally {
      await Promise.all(children.map(stopChild));
      await rm(scratch, { recursive: true, force: true });
      await tree.cleanup();
    }
    return report(results, compared, seconds);
  },
};

/** `inFlight` loops calling the keys in turn, for `seconds`; every call's latency recorded. */
async function inProcess(pool: Pool, inFlight: number, seconds: number): Promise<Measured> {
  const latency = new Latency();
  const end = performance.now() + seconds * 1000;
  let calls = 0;
  let failures = 0;
  const started = performance.now();
  const lane = async (offset: number): Promise<void> => {
    for (let i = offset; performance.now() < end; i += inFlight) {
      const t0 = performance.now();
      await pool.call(KEYS[i % KEYS.length]!, 'add', [1, 2]).catch(() => (failures += 1));
      latency.recordMs(performance.now() - t0);
      calls += 1;
    }
  };
  await Promise.all(Array.from({ length: inFlight }, (_, lane0) => lane(lane0)));
  const elapsed = (performance.now() - started) / 1000;
  return {
    target: 'in-process pool.call',
    inFlight,
    callsPerSecond: calls / elapsed,
    latency: latency.summaryMs(),
    failures,
  };
}

/** autocannon for `seconds` after a 1 s warm-up, the key in the path so nginx can hash it. */
async function overHttp(target: string, url: string, inFlight: number, seconds: number): Promise<Measured> {
  await measure(url, inFlight, 1, null);
  const latency = new Latency();
  const { callsPerSecond, failures } = await measure(url, inFlight, seconds, latency);
  return { target, inFlight, callsPerSecond, latency: latency.summaryMs(), failures };
}

/** One autocannon run; each response's latency goes into `latency` when given. */
async function measure(
  url: string,
  inFlight: number,
  seconds: number,
  latency: Latency | null,
): Promise<{ callsPerSecond: number; failures: number }> {
  let next = 0;
  const instance = autocannon({
    url,
    connections: inFlight,
    duration: seconds,
    method: 'POST',
    headers: HEADERS,
    body: BODY,
    requests: [{ setupRequest: (request) => ({ ...request, path: `/v1/call/${KEYS[next++ % KEYS.length]}` }) }],
  });
  if (latency !== null) instance.on('response', (_client, _status, _bytes, ms) => latency.recordMs(ms));
  const result = await instance;
  return { callsPerSecond: result.requests.total / result.duration, failures: result.errors + result.non2xx };
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

function report(results: Measured[], compared: Rounds | null, seconds: number): BenchReport {
  const find = (target: string, inFlight: number) =>
    results.find((r) => r.target === target && r.inFlight === inFlight);
  const local = find('in-process pool.call', 1);
  const direct = find(NODE, 1);
  const overheadUs =
    local !== undefined && direct !== undefined ? (direct.latency.p50 - local.latency.p50) * 1000 : null;
  const localMany = find('in-process pool.call', CONNECTIONS);
  const directMany = find(NODE, CONNECTIONS);
  const throughputRatio =
    localMany !== undefined && directMany !== undefined ? localMany.callsPerSecond / directMany.callsPerSecond : null;
  // Per round, then the median: a round's two runs are seconds apart and see much the same machine.
  const roundRatios =
    compared === null ? [] : compared.node.map((node, i) => node / (compared.minimal[i] ?? Number.NaN));
  const overMinimal = roundRatios.length === 0 ? null : median(roundRatios);
  return {
    method: [
      `${KEYS.length} warm keys (3 swarms), each a copy of fixtures/agent.mjs; every call is add(1, 2), the keys taken in turn.`,
      `Each run lasts ${seconds} s. HTTP rows: autocannon in this process (POST /v1/call/<key>, keep-alive, a bearer token), after a 1 s warm-up; latency from its per-response timings.`,
      'In-process rows: loops awaiting pool.call in this process, same keys and agent, before any server starts.',
      `Node vs ${MINIMAL} (fixtures/minimal-server.mjs: fastify's JSON parser and serializer, pool.call, nothing else) at ${CONNECTIONS} in flight: ${compared?.node.length ?? 0} rounds, each running both in turn (the first alternating); their rows give the median calls/s and the latency over all rounds, and the ratio is the median of the rounds' ratios.`,
      'nginx row: packages/server/deploy/nginx.conf with the three node ports (hash $sandpool_key consistent, keepalive), 1 worker process, and keepalive_requests raised: autocannon mis-times requests after nginx closes a client connection (by default every 1000 requests).',
      'Everything (load generator, nodes, nginx) shares the machine: on 2 cores three nodes cannot beat one.',
    ],
    parameters: { keys: KEYS.length, connections: CONNECTIONS, seconds, rounds: compared?.node.length ?? 0 },
    results: {
      ...Object.fromEntries(
        results.map((r) => [
          `${r.target} @${r.inFlight}`,
          {
            inFlight: r.inFlight,
            callsPerSecond: Math.round(r.callsPerSecond),
            latencyMs: { ...r.latency },
            failures: r.failures,
          },
        ]),
      ),
      rounds:
        compared === null
          ? null
          : {
              node: compared.node.map(Math.round),
              minimal: compared.minimal.map(Math.round),
              ratio: roundRatios.map((value) => Number(value.toFixed(3))),
              loadBefore: compared.load,
            },
    },
    ratios: {
      httpOverheadUsAtP50: overheadUs === null ? null : Math.round(overheadUs),
      inProcessOverHttpThroughput: throughputRatio === null ? null : Number(throughputRatio.toFixed(2)),
      nodeOverMinimalThroughput: overMinimal === null ? null : Number(overMinimal.toFixed(3)),
    },
    tables: [
      {
        title: 'Warm calls: in-process vs HTTP',
        headers: ['target', 'in flight', 'calls/s', 'p50', 'p99', 'failures'],
        rows: results.map((r) => [
          r.target,
          String(r.inFlight),
          perSecond(r.callsPerSecond),
          us(r.latency.p50),
          us(r.latency.p99),
          String(r.failures),
        ]),
        note:
          `HTTP adds ${overheadUs === null ? 'n/a' : `${num(overheadUs)} µs`} per call at p50 (1 in flight, one node vs pool.call); ` +
          `in-process does ${throughputRatio === null ? 'n/a' : ratio(throughputRatio)} the calls/s of one node at ${CONNECTIONS} in flight; ` +
          `the node does ${overMinimal === null ? 'n/a' : ratio(overMinimal)} the calls/s of the ${MINIMAL} (median of ${roundRatios.length} rounds: ${roundRatios.map((value) => value.toFixed(2)).join(', ')}).`,
      },
    ],
    chart: {
      title: 'sandpool over HTTP: warm calls/s',
      panels: [
        {
          title: 'calls per second',
          unit: '/s',
          groups: [1, CONNECTIONS].map((inFlight) => ({
            label: `${inFlight} in flight`,
            bars: results
              .filter((r) => r.inFlight === inFlight)
              .map((r) => ({ series: r.target, value: r.callsPerSecond })),
          })),
        },
      ],
    },
  };
}

/** `sandpool serve` as the cluster test runs it, with a bearer token: every check of the HTTP path on. */
function serveArgs(root: string, name: string): string[] {
  return ['--root', root, '--port', '0', '--node-name', name, '--token', TOKEN];
}

/** A server process of its own (node `script` plus `args`); resolves with the address it prints. */
async function startServer(name: string, args: string[], children: ChildProcess[]): Promise<string> {
  const script = args[0] === 'serve' ? [CLI, ...args] : args;
  const child = spawn(process.execPath, script, { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  let output = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      output += chunk;
      const match = /listening on (http:\/\/\S+)/.exec(output);
      if (match?.[1] !== undefined) resolve(match[1]);
    });
    child.on('exit', (code) => reject(new Error(`${name} exited (${code}): ${output}`)));
  });
  child.stdout?.resume();
  return url;
}

function findNginx(): string | null {
  for (const candidate of ['nginx', '/usr/sbin/nginx']) {
    if (spawnSync(candidate, ['-v'], { stdio: 'ignore' }).status === 0) return candidate;
  }
  return null;
}

/** The shipped config with these ports and every file nginx writes under `dir` (as the cluster test does). */
async function startNginx(binary: string, dir: string, nodes: string[], children: ChildProcess[]): Promise<string> {
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const port = await freePort();
  const servers = nodes.map((url) => `        server ${new URL(url).host};`).join('\n');
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((n) => `    ${n}_temp_path ${join(dir, n)};`);
  const config = (await readFile(NGINX_TEMPLATE, 'utf8'))
    .replace(/^(\s*server 127\.0\.0\.1:\d+ [^\n]*\n)+/m, `${servers}\n`)
    .replace(/^\s*listen 8080;$/m, `        listen 127.0.0.1:${port};`)
    .replace(/^worker_processes auto;$/m, `worker_processes 1;\nerror_log ${join(dir, 'error.log')};`)
    // autocannon mis-times a connection the server has closed (nginx does after 1000 requests):
    // after it reconnects, two requests queue on one connection and each latency doubles.
    .replace(/^http \{$/m, `http {\n    access_log off;\n    keepalive_requests 10000000;\n${temp.join('\n')}`);
  await writeFile(join(dir, 'nginx.conf'), config);
  const pid = join(dir, 'nginx.pid');
  const child = spawn(binary, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-g', `daemon off; pid ${pid};`], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  children.push(child);
  const url = `http://127.0.0.1:${port}`;
  for (let attempt = 0; ; attempt++) {
    const ok = await fetch(`${url}/healthz`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) break;
    if (attempt > 200) throw new Error('nginx did not come up');
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  await warm(url);
  return url;
}

/** Every key called once, so the measured runs see no cold start. */
async function warm(url: string): Promise<void> {
  const call = (key: string) => fetch(`${url}/v1/call/${key}`, { method: 'POST', headers: HEADERS, body: BODY });
  await Promise.all(KEYS.map(call));
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address !== null ? resolve(address.port) : reject()));
    });
  });
}

/** SIGTERM drains a node; nginx stops on SIGQUIT; both get SIGKILL after 10 s. */
async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill(child.spawnfile.endsWith('nginx') ? 'SIGQUIT' : 'SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

const { values } = parseArgs({ options: { quick: { type: 'boolean', default: false } }, strict: true });
const context = makeContext(serverBench.name, values.quick === true);
const produced = await serverBench.run(context);
if (produced !== null) await publish(serverBench, produced, context);
