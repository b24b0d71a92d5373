import { z } from 'zod';
import { describeLayers } from './layers.js';
import { formatTable } from './table.js';

export const TOP_SORTS = ['cpuMs', 'calls', 'errors', 'inFlight', 'heapBytes'] as const;

/** Loose objects: a newer server may add fields, which this view ignores. */
const KeyRowSchema = z.object({
  key: z.string(),
  state: z.string().nullable(),
  /** Optional: servers before process keys' cgroups were shown do not send them. */
  isolation: z.string().nullable().optional(),
  cgroup: z.object({ memoryMaxBytes: z.number() }).nullable().optional(),
  workers: z.number(),
  cpuMs: z.number(),
  heapBytes: z.number().nullable(),
  externalBytes: z.number().nullable(),
  calls: z.number(),
  errors: z.number(),
  inFlight: z.number(),
  queued: z.number(),
  demoted: z.boolean(),
  latency: z.object({ p50: z.number(), p99: z.number(), max: z.number() }).nullable(),
});
export const KeysAnswerSchema = z.object({
  node: z.string(),
  sort: z.string(),
  total: z.number(),
  keys: z.array(KeyRowSchema),
  /** Given to a token that reaches every swarm (and by servers that have it). */
  unattributedCpu: z.object({ libuvMs: z.number(), v8Ms: z.number(), otherMs: z.number() }).optional(),
  /** The sandbox layers process keys get (null: no key runs in a process); absent from older servers. */
  sandbox: z
    .object({
      namespaces: z.boolean(),
      uidPerSwarm: z.boolean(),
      cgroups: z.string().nullable(),
      network: z.string(),
      userns: z.string().nullable(),
    })
    .nullable()
    .optional(),
});
export type KeysAnswer = z.infer<typeof KeysAnswerSchema>;

/** CPU milliseconds per key at a moment: two of them give a CPU share. */
export interface CpuSample {
  readonly at: number;
  readonly cpuMs: ReadonlyMap<string, number>;
}

export function sampleOf(answer: KeysAnswer, at: number): CpuSample {
  return { at, cpuMs: new Map(answer.keys.map((row) => [row.key, row.cpuMs])) };
}

const MB = 1024 * 1024;

/**
 * One screen: a summary line, then the table. `cpu%` is one core's worth per 100, over the
 * time since the previous sample, so it needs two; a one-shot view shows `-`.
 */
export function renderTop(answer: KeysAnswer, previous: CpuSample | null, now: CpuSample): string {
  const elapsed = previous === null ? 0 : now.at - previous.at;
  const rows = answer.keys.map((row) => {
    const before = previous?.cpuMs.get(row.key);
    const share = elapsed > 0 && before !== undefined ? `${(((row.cpuMs - before) / elapsed) * 100).toFixed(0)}` : '-';
    return [
      row.key,
      row.state ?? '-',
      row.isolation ?? '-',
      String(row.workers),
      share,
      (row.cpuMs / 1000).toFixed(2),
      megabytes(row.heapBytes),
      megabytes(row.externalBytes),
      row.cgroup == null ? '-' : `${megabytes(row.heapBytes)}/${megabytes(row.cgroup.memoryMaxBytes)}`,
      String(row.calls),
      String(row.errors),
      String(row.inFlight),
      String(row.queued),
      row.latency === null ? '-' : row.latency.p50.toFixed(2),
      row.latency === null ? '-' : row.latency.p99.toFixed(2),
      row.demoted ? 'yes' : '',
    ];
  });
  const shown = answer.keys.length === answer.total ? `${answer.total}` : `${answer.keys.length} of ${answer.total}`;
  const clock = new Date(now.at).toISOString().slice(11, 19);
  const summary = `node ${answer.node}: ${shown} keys, by ${answer.sort}, ${clock} UTC${unattributed(answer)}${layers(answer)}`;
  if (rows.length === 0) return `${summary}\n(no keys yet: none has been called)`;
  const right = 'right' as const;
  const table = formatTable(
    [
      { header: 'key' },
      { header: 'state' },
      { header: 'isolation' },
      { header: 'workers', align: right },
      { header: 'cpu%', align: right },
      { header: 'cpu s', align: right },
      { header: 'heap MB', align: right },
      { header: 'ext MB', align: right },
      { header: 'cell MB', align: right },
      { header: 'calls', align: right },
      { header: 'errors', align: right },
      { header: 'in flight', align: right },
      { header: 'queued', align: right },
      { header: 'p50 ms', align: right },
      { header: 'p99 ms', align: right },
      { header: 'demoted' },
    ],
    rows,
  );
  return `${summary}\n${table}`;
}

/** The process's CPU no key owns, in seconds since the pool started: the libuv pool, V8's threads, the rest. */
function unattributed({ unattributedCpu: cpu }: KeysAnswer): string {
  if (cpu === undefined) return '';
  const seconds = (ms: number): string => (ms / 1000).toFixed(2);
  return `; unattributed cpu s: libuv ${seconds(cpu.libuvMs)}, v8 ${seconds(cpu.v8Ms)}, other ${seconds(cpu.otherMs)}`;
}

/** Which sandbox layers the node's process keys get; nothing for a node that runs none (or says nothing of it). */
function layers({ sandbox }: KeysAnswer): string {
  return sandbox == null ? '' : `; process keys: ${describeLayers(sandbox)}`;
}

function megabytes(bytes: number | null): string {
  return bytes === null ? '-' : (bytes / MB).toFixed(1);
}
