import { type LatencySummary, round } from './histogram.js';
import type { Json } from './report.js';

export type Percentile = 'p50' | 'p90' | 'mean';

/**
 * For benchmarks that time variant `over` against variant `under` once per mode: the ratio
 * at a percentile, and the ratios block of the report (p50 with its target, p90 beside it).
 */
export function abRatios<M extends string>(
  modes: readonly M[],
  summaries: Record<string, Record<string, LatencySummary>>,
  over: string,
  under: string,
  target: number,
): { ratioOf: (mode: M, at: Percentile) => number; ratios: Record<string, Json> } {
  const ratioOf = (mode: M, at: Percentile): number => {
    const s = summaries[mode] as Record<string, LatencySummary>;
    return round((s[over] as LatencySummary)[at] / (s[under] as LatencySummary)[at], 3);
  };
  const ratios: Record<string, Json> = {};
  for (const mode of modes) {
    const p50 = ratioOf(mode, 'p50');
    ratios[`${over} p50 / ${under} p50, permissions ${mode} (target <= ${target})`] = {
      value: p50,
      target,
      met: p50 <= target,
    };
    ratios[`${over} p90 / ${under} p90, permissions ${mode}`] = ratioOf(mode, 'p90');
  }
  return { ratioOf, ratios };
}
