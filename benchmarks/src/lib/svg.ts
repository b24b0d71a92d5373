import { num } from './format.js';

export interface Bar {
  series: string;
  value: number;
}

export interface BarGroup {
  label: string;
  bars: Bar[];
}

export interface Panel {
  title: string;
  unit: string;
  /** Log scale where the figures span orders of magnitude (0.5 ms next to 130 ms). */
  log?: boolean;
  groups: BarGroup[];
}

export interface Chart {
  title: string;
  subtitle: string;
  panels: Panel[];
}

const WIDTH = 820;
const LABEL_WIDTH = 210;
const VALUE_WIDTH = 90;
const PLOT_WIDTH = WIDTH - LABEL_WIDTH - VALUE_WIDTH - 20;
const BAR = 13;
const BAR_GAP = 2;
const GROUP_GAP = 9;
const PALETTE = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#b07aa1', '#9c755f'];

/** A small hand-written SVG of horizontal grouped bars: no chart dependency, a few KB per file. */
export function renderSvg(chart: Chart): string {
  const series = [
    ...new Set(chart.panels.flatMap((panel) => panel.groups.flatMap((g) => g.bars.map((b) => b.series)))),
  ];
  const color = (name: string): string => PALETTE[series.indexOf(name) % PALETTE.length] ?? '#888';
  const parts: string[] = [];
  let y = 28;
  parts.push(text(12, y, chart.title, 'font-size="16" font-weight="bold"'));
  y += 18;
  parts.push(text(12, y, chart.subtitle, 'font-size="11" fill="#555"'));
  y += 20;
  let x = 12;
  for (const name of series) {
    parts.push(`<rect x="${x}" y="${y - 10}" width="12" height="12" fill="${color(name)}"/>`);
    parts.push(text(x + 16, y, name, 'font-size="11"'));
    x += 16 + name.length * 6.5 + 18;
  }
  y += 16;
  for (const panel of chart.panels) {
    y += 14;
    parts.push(
      text(
        12,
        y,
        `${panel.title} (${panel.unit}${panel.log ? ', log scale' : ''})`,
        'font-size="13" font-weight="bold"',
      ),
    );
    y += 8;
    const values = panel.groups.flatMap((group) => group.bars.map((bar) => bar.value)).filter((v) => v > 0);
    const scale = makeScale(values, panel.log === true);
    const top = y;
    const rows: string[] = [];
    for (const group of panel.groups) {
      const height = group.bars.length * (BAR + BAR_GAP);
      rows.push(text(LABEL_WIDTH - 8, y + height / 2 + 4, group.label, 'font-size="11" text-anchor="end"'));
      for (const bar of group.bars) {
        const width = Number.isFinite(bar.value) && bar.value > 0 ? Math.max(1, scale.x(bar.value)) : 0;
        rows.push(
          `<rect x="${LABEL_WIDTH}" y="${y}" width="${width.toFixed(1)}" height="${BAR}" fill="${color(bar.series)}"><title>${escapeXml(`${group.label} ${bar.series}: ${num(bar.value)} ${panel.unit}`)}</title></rect>`,
        );
        rows.push(
          text(
            LABEL_WIDTH + width + 4,
            y + BAR - 2,
            Number.isFinite(bar.value) ? num(bar.value) : 'n/a',
            'font-size="10" fill="#333"',
          ),
        );
        y += BAR + BAR_GAP;
      }
      y += GROUP_GAP;
    }
    for (const tick of scale.ticks) {
      const tx = LABEL_WIDTH + scale.x(tick);
      parts.push(
        `<line x1="${tx.toFixed(1)}" y1="${top - 2}" x2="${tx.toFixed(1)}" y2="${y - GROUP_GAP + 2}" stroke="#ddd"/>`,
      );
      parts.push(text(tx, y + 6, num(tick), 'font-size="9" fill="#777" text-anchor="middle"'));
    }
    parts.push(
      `<line x1="${LABEL_WIDTH}" y1="${top - 2}" x2="${LABEL_WIDTH}" y2="${y - GROUP_GAP + 2}" stroke="#999"/>`,
    );
    parts.push(...rows);
    y += 14;
  }
  const height = y + 8;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="system-ui, sans-serif">`,
    `<rect width="${WIDTH}" height="${height}" fill="#fff"/>`,
    ...parts,
    '</svg>',
    '',
  ].join('\n');
}

interface Scale {
  x(value: number): number;
  ticks: number[];
}

function makeScale(values: number[], log: boolean): Scale {
  const max = values.length === 0 ? 1 : Math.max(...values);
  if (log) {
    const low = 10 ** Math.floor(Math.log10(Math.min(...values, max)));
    const high = 10 ** Math.ceil(Math.log10(max * 1.0001));
    const span = Math.log10(high / low) || 1;
    const ticks: number[] = [];
    for (let tick = low; tick <= high * 1.0001; tick *= 10) ticks.push(tick);
    // A bar at the floor value still shows: the axis starts a little below it.
    const floor = low / 10 ** 0.15;
    const fullSpan = span + 0.15;
    return {
      x: (value) => (Math.log10(Math.max(value, floor) / floor) / fullSpan) * PLOT_WIDTH,
      ticks,
    };
  }
  const step = niceStep(max / 5);
  const high = Math.ceil(max / step) * step;
  const ticks: number[] = [];
  for (let tick = 0; tick <= high + step / 2; tick += step) ticks.push(tick);
  return { x: (value) => (value / high) * PLOT_WIDTH, ticks };
}

function niceStep(raw: number): number {
  const power = 10 ** Math.floor(Math.log10(raw));
  const fraction = raw / power;
  return (fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10) * power;
}

function text(x: number, y: number, content: string, attributes: string): string {
  return `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" ${attributes}>${escapeXml(content)}</text>`;
}

function escapeXml(content: string): string {
  return content.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}
