import { ratio } from './format.js';
import { type LatencySummary, round } from './histogram.js';
import type { Json } from './report.js';

export type Percentile = 'p50' | 'p90' | 'mean';

/**
 * For benchmarks that time variant `over` against variant `under` once per mode: the ratios
 * block of the report (p50 with its target, p90 beside it), its table and its chart groups.
 */
export function abRatios<M extends string>(
  modes: readonly M[],
  summaries: Record<string, Record<string, LatencySummary>>,
  over: string,
  under: string,
  target: number,
): {
  ratios: Record<string, Json>;
  /** The report's Ratios table: p50 against the target, p90 beside it, per mode. */
  table: { title: string; headers: string[]; rows: string[][] };
  /** Chart groups, one per mode and variant (in `order`), with p50 and p90 bars. */
  groups: (order: readonly string[], label: (variant: string, mode: M) => string) => ChartGroup[];
} {
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
  const table = {
    title: 'Ratios',
    headers: ['comparison', 'ratio', 'target', 'met'],
    rows: modes.flatMap((mode) => [
      [
        `${over} p50 / ${under} p50, ${mode}`,
        ratio(ratioOf(mode, 'p50')),
        `<= ${target}×`,
        ratioOf(mode, 'p50') <= target ? 'yes' : 'no',
      ],
      [`${over} p90 / ${under} p90, ${mode}`, ratio(ratioOf(mode, 'p90')), '-', '-'],
    ]),
  };
  const groups = (order: readonly string[], label: (variant: string, mode: M) => string): ChartGroup[] =>
    modes.flatMap((mode) =>
      order.map((variant) => {
        const s = (summaries[mode] as Record<string, LatencySummary>)[variant] as LatencySummary;
        return {
          label: label(variant, mode),
          bars: [
            { series: 'p50', value: s.p50 },
            { series: 'p90', value: s.p90 },
          ],
        };
      }),
    );
  return { ratios, table, groups };
}

interface ChartGroup {
  label: string;
  bars: { series: string; value: number }[];
}
