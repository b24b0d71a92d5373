import { Latency, type LatencySummary, round } from './histogram.js';
import { collectGarbage, mainThreadCpuMs, now, processCpuMs } from './timing.js';

/** Something that adds on another thread or process: what the RPC loops drive. */
export interface RpcSystem {
  name: string;
  add(a: number, b: number): Promise<number>;
  close(): Promise<void>;
}

export type Sequential = {
  /** Microseconds per call: total time over calls. */
  meanUs: number;
  latency: LatencySummary;
  calls: number;
  /** Main-thread CPU per call, µs (null where schedstat cannot be read): what one call at a time costs the coordinator. */
  mainCpuUsPerCall: number | null;
};

export type Pipelined = {
  depth: number;
  callsPerSecond: number;
  /** Main-thread CPU per call, µs: the coordinator's own cost, structured clone included. */
  mainCpuUsPerCall: number | null;
  /** Whole-process CPU per call (all threads, the worker's included), µs. */
  processCpuUsPerCall: number;
  calls: number;
};

export function median<T>(runs: T[], by: (run: T) => number): T {
  const sorted = [...runs].sort((a, b) => by(a) - by(b));
  const middle = sorted[Math.floor((sorted.length - 1) / 2)];
  if (middle === undefined) throw new Error('no runs');
  return middle;
}

export async function runSequential(system: RpcSystem, durationMs: number): Promise<Sequential> {
  return (await runSequentialInterleaved([system], durationMs, 1)).get(system.name) as Sequential;
}

/**
 * Sequential calls to each system in turn, `slices` times `sliceMs` each: a disturbance of the
 * shared machine then falls on every system alike, not on whichever ran at that moment.
 */
export async function runSequentialInterleaved(
  systems: readonly RpcSystem[],
  sliceMs: number,
  slices: number,
): Promise<Map<string, Sequential>> {
  collectGarbage();
  const runs = systems.map((system) => ({
    system,
    latency: new Latency(),
    elapsedMs: 0,
    calls: 0,
    mainCpuMs: 0 as number | null,
  }));
  for (let slice = 0; slice < slices; slice += 1) {
    for (const run of runs) {
      const cpu0 = mainThreadCpuMs();
      const start = now();
      const end = start + sliceMs;
      let t = start;
      while (t < end) {
        const value = await run.system.add(run.calls, 1);
        if (value !== run.calls + 1) throw new Error(`${run.system.name}: wrong result ${value}`);
        const after = now();
        run.latency.recordMs(after - t);
        t = after;
        run.calls += 1;
      }
      run.elapsedMs += t - start;
      const cpu1 = mainThreadCpuMs();
      run.mainCpuMs = run.mainCpuMs === null || cpu0 === null || cpu1 === null ? null : run.mainCpuMs + cpu1 - cpu0;
    }
  }
  return new Map(
    runs.map((run) => [
      run.system.name,
      {
        meanUs: round((run.elapsedMs * 1000) / run.calls),
        latency: run.latency.summaryMs(),
        calls: run.calls,
        mainCpuUsPerCall: run.mainCpuMs === null ? null : round((run.mainCpuMs * 1000) / run.calls),
      },
    ]),
  );
}

export async function runPipelined(system: RpcSystem, depth: number, durationMs: number): Promise<Pipelined> {
  collectGarbage();
  return pipelinedFigures(depth, await pipelinedWindow(system, depth, durationMs));
}

/**
 * Pipelined windows of each system in turn, `slices` times `sliceMs` each, summed per system:
 * as for sequential calls, a disturbance of the shared machine falls on every system alike.
 */
export async function runPipelinedInterleaved(
  systems: readonly RpcSystem[],
  depth: number,
  sliceMs: number,
  slices: number,
): Promise<Map<string, Pipelined>> {
  collectGarbage();
  const totals = new Map<string, Window>(
    systems.map((system) => [system.name, { done: 0, elapsedMs: 0, mainCpuMs: 0, processCpuMs: 0 }]),
  );
  for (let slice = 0; slice < slices; slice += 1) {
    for (const system of systems) {
      const window = await pipelinedWindow(system, depth, sliceMs);
      const total = totals.get(system.name) as Window;
      total.done += window.done;
      total.elapsedMs += window.elapsedMs;
      total.mainCpuMs =
        total.mainCpuMs === null || window.mainCpuMs === null ? null : total.mainCpuMs + window.mainCpuMs;
      total.processCpuMs += window.processCpuMs;
    }
  }
  return new Map([...totals].map(([name, total]) => [name, pipelinedFigures(depth, total)]));
}

interface Window {
  done: number;
  elapsedMs: number;
  mainCpuMs: number | null;
  processCpuMs: number;
}

function pipelinedFigures(depth: number, { done, elapsedMs, mainCpuMs, processCpuMs }: Window): Pipelined {
  return {
    depth,
    callsPerSecond: round((done * 1000) / elapsedMs),
    mainCpuUsPerCall: mainCpuMs === null ? null : round((mainCpuMs * 1000) / done),
    processCpuUsPerCall: round((processCpuMs * 1000) / done),
    calls: done,
  };
}

/** `depth` calls kept in flight for `durationMs` (each result issues the next), counted to the last result. */
async function pipelinedWindow(system: RpcSystem, depth: number, durationMs: number): Promise<Window> {
  const cpu0 = mainThreadCpuMs();
  const process0 = processCpuMs();
  const start = now();
  const end = start + durationMs;
  let issued = 0;
  let done = 0;
  let last = start;
  await new Promise<void>((resolve, reject) => {
    const issue = (): void => {
      const a = issued++;
      system.add(a, 1).then((value) => {
        if (value !== a + 1) {
          reject(new Error(`${system.name}: wrong result ${value}`));
          return;
        }
        done += 1;
        if (now() < end) issue();
        else if (done === issued) {
          last = now();
          resolve();
        }
      }, reject);
    };
    for (let i = 0; i < depth; i += 1) issue();
  });
  const cpu1 = mainThreadCpuMs();
  return {
    done,
    elapsedMs: last - start,
    mainCpuMs: cpu0 === null || cpu1 === null ? null : cpu1 - cpu0,
    processCpuMs: processCpuMs() - process0,
  };
}
