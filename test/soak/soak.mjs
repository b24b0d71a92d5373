// Soak: 1,000 keys, maxWorkers 50, random calls for a set time (default 60 s).
// Usage: pnpm soak [--seconds N]. Exits non-zero when RSS grows past 1.25x its level after
// the first 10 s, or when any error other than the provoked ones appears.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { createPool } from 'sandpool';

const { values } = parseArgs({ options: { seconds: { type: 'string', default: '60' } } });
const seconds = Number(values.seconds);
if (!Number.isFinite(seconds) || seconds < 10) {
  console.error('usage: soak [--seconds N]   (N >= 10)');
  process.exit(2);
}

const SWARMS = 20;
const STEMS = 50;
const IN_FLIGHT = 64;
const HOT_KEYS = 40;
// Errors the run provokes on purpose; anything else is a failure.
const PROVOKED = new Set(['ERR_SANDPOOL_AGENT_ERROR']);

const AGENT = `
let count = 0;
const cache = new Map();
export function work(n) {
  count += 1;
  let x = 0;
  for (let i = 0; i < n; i++) x += Math.sqrt(i);
  cache.set(count % 100, 'x'.repeat(100));
  return count;
}
export function fail() {
  const error = new Error('provoked');
  error.code = 'E_PROVOKED';
  throw error;
}
`;

const root = await mkdtemp(join(tmpdir(), 'sandpool-soak-'));
const keys = [];
for (let s = 0; s < SWARMS; s++) {
  await mkdir(join(root, `s${s}`, 'live'), { recursive: true });
  for (let t = 0; t < STEMS; t++) {
    await writeFile(join(root, `s${s}`, 'live', `agent_${t}.mjs`), AGENT);
    keys.push(`s${s}/agent_${t}`);
  }
}

const pool = createPool({ root, maxWorkers: 50, idleTimeoutMs: 5_000, callTimeoutMs: 10_000 });
const delay = monitorEventLoopDelay({ resolution: 10 });
delay.enable();

let done = 0;
const errors = new Map();
let running = true;
const started = Date.now();
let rssAfterFirst = 0;
let rssOfLastWindow = 0;
const mb = (bytes) => (bytes / 2 ** 20).toFixed(1);

function pickKey() {
  // Most traffic goes to a hot set, the rest churns through the other keys.
  const index = Math.random() < 0.8 ? Math.floor(Math.random() * HOT_KEYS) : Math.floor(Math.random() * keys.length);
  return keys[index];
}

async function lane() {
  while (running) {
    const provoke = Math.random() < 0.01;
    try {
      await pool.call(pickKey(), provoke ? 'fail' : 'work', [2_000]);
    } catch (error) {
      const code = error?.code ?? String(error);
      errors.set(code, (errors.get(code) ?? 0) + 1);
    }
    done += 1;
  }
}

// RSS swings by hundreds of MB as workers start and exit, so one reading says little:
// each 10 s window keeps a reading a second and reports its median.
let window = [];
const sampler = setInterval(() => window.push(process.memoryUsage().rss), 1_000);

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? process.memoryUsage().rss;
}

function report() {
  const elapsed = Math.round((Date.now() - started) / 1000);
  const stats = pool.stats();
  const rss = median(window);
  window = [];
  if (rssAfterFirst === 0) rssAfterFirst = rss;
  const errorText = [...errors].map(([code, n]) => `${code}=${n}`).join(' ') || 'none';
  console.log(
    `${String(elapsed).padStart(4)}s  calls ${done}  errors ${errorText}  workers ${stats.workers} (spawned ${stats.spawned}, retired ${Object.values(stats.retired).reduce((a, b) => a + b, 0)})  ` +
      `rss median ${mb(rss)} MB  loop delay p99 ${(delay.percentile(99) / 1e6).toFixed(1)} ms`,
  );
  delay.reset();
  rssOfLastWindow = rss;
}

const ticker = setInterval(report, 10_000);
const lanes = Array.from({ length: IN_FLIGHT }, lane);
await new Promise((resolve) => setTimeout(resolve, seconds * 1000 + 100));
clearInterval(ticker);
clearInterval(sampler);
const rssEnd = rssOfLastWindow;
running = false;
await Promise.all(lanes);
await pool.close();
await rm(root, { recursive: true, force: true });

const ratio = rssEnd / rssAfterFirst;
const unexpected = [...errors.keys()].filter((code) => !PROVOKED.has(code));
console.log(
  `\nsoak: ${done} calls in ${seconds} s (${Math.round(done / seconds)}/s); RSS end / after 10 s = ${ratio.toFixed(2)} (target <= 1.25); ` +
    `unexpected errors: ${unexpected.length === 0 ? 'none' : unexpected.join(', ')}`,
);
process.exitCode = ratio <= 1.25 && unexpected.length === 0 ? 0 : 1;
