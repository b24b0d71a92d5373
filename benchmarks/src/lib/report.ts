import { mkdir, writeFile } from 'node:fs/promises';
import { type Conditions, conditions, describe, loadNow } from './conditions.js';
import { type Chart, renderSvg } from './svg.js';
import { renderTable, type Table } from './table.js';

export const RESULTS = new URL('../../results/', import.meta.url);

export interface BenchContext {
  quick: boolean;
  /** `--against <ref>`: the earlier build a release comparison measures against (null: the last release). */
  against: string | null;
  loadAtStart: number;
  /** One line per phase on stderr, so long runs show they are alive. */
  progress(message: string): void;
}

export type Json = string | number | boolean | null | Json[] | { [key: string]: Json | undefined };

export interface BenchReport {
  /** What exactly is measured, and how: written into the JSON and printed under the tables. */
  method: string[];
  parameters: { [key: string]: Json };
  results: { [key: string]: Json };
  ratios: { [key: string]: Json };
  tables: Table[];
  chart: Omit<Chart, 'subtitle'>;
}

export interface Benchmark {
  name: string;
  title: string;
  /** null: nothing to measure on this Node (the reason is on stderr); no results file is written. */
  run(context: BenchContext): Promise<BenchReport | null>;
  /** Parts that `run` starts in processes of their own (see `runPhase`), by name. */
  phases?: { [name: string]: (context: BenchContext) => Promise<Json> };
}

export function makeContext(name: string, quick: boolean, against: string | null = null): BenchContext {
  const start = performance.now();
  return {
    quick,
    against,
    loadAtStart: loadNow(),
    progress: (message) => {
      const seconds = ((performance.now() - start) / 1000).toFixed(1).padStart(5);
      process.stderr.write(`[${name} ${seconds}s] ${message}\n`);
    },
  };
}

/** Prints the tables and writes `results/<name>.json` and `results/<name>.svg`. */
export async function publish(bench: Benchmark, report: BenchReport, context: BenchContext): Promise<void> {
  const where: Conditions = conditions(context.quick, context.loadAtStart);
  const header = `## ${bench.title}\n\n${describe(where)}\n`;
  process.stdout.write(`\n${header}\n${report.tables.map(renderTable).join('\n')}\n`);
  await mkdir(RESULTS, { recursive: true });
  const json = {
    benchmark: bench.name,
    title: bench.title,
    conditions: where,
    method: report.method,
    parameters: report.parameters,
    results: report.results,
    ratios: report.ratios,
  };
  await writeFile(new URL(`${bench.name}.json`, RESULTS), `${JSON.stringify(json, null, 2)}\n`);
  await writeFile(new URL(`${bench.name}.svg`, RESULTS), renderSvg({ ...report.chart, subtitle: describe(where) }));
}
