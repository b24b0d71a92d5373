/** Three significant digits, with a thousands separator where the integer part is long. */
export function num(value: number, digits = 3): string {
  if (Number.isNaN(value)) return 'n/a';
  if (!Number.isFinite(value)) return String(value);
  const abs = Math.abs(value);
  if (abs >= 10 ** digits) return Math.round(value).toLocaleString('en-US');
  const text = value.toPrecision(digits);
  return text.includes('.') && !text.includes('e') ? text.replace(/0+$/, '').replace(/\.$/, '') : text;
}

export function ms(value: number): string {
  return `${num(value)} ms`;
}

export function us(valueMs: number): string {
  return `${num(valueMs * 1000)} µs`;
}

export function ratio(value: number): string {
  return Number.isFinite(value) ? `${num(value)}×` : 'n/a';
}

export function perSecond(value: number): string {
  return `${num(value)}/s`;
}

export function mb(bytes: number): string {
  return `${num(bytes / 2 ** 20)} MB`;
}

export function percent(fraction: number): string {
  return `${num(fraction * 100)}%`;
}
