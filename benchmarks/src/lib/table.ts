export interface Table {
  title: string;
  headers: string[];
  rows: string[][];
  /** One line under the table: what the figures mean. */
  note?: string;
}

/** Markdown tables, so the output pastes into the README as it is. */
export function renderTable(table: Table): string {
  const widths = table.headers.map((header, column) =>
    Math.max(header.length, ...table.rows.map((row) => (row[column] ?? '').length), 3),
  );
  // Right-align a column whose cells are all figures ('-' and 'n/a' are neutral).
  const neutral = (text: string): boolean => text === '-' || text === 'n/a';
  const figure = (text: string): boolean => /^-?[\d.][\d.,]*(?:[ ]?[a-zA-Zµ×%/]+)*$/.test(text);
  const numeric = table.headers.map((_, column) => {
    const cells = table.rows.map((row) => row[column] ?? '');
    return cells.some(figure) && cells.every((text) => neutral(text) || figure(text));
  });
  const cell = (text: string, column: number): string =>
    numeric[column] ? text.padStart(widths[column] ?? 0) : text.padEnd(widths[column] ?? 0);
  const line = (cells: string[]): string => `| ${cells.map((text, column) => cell(text, column)).join(' | ')} |`;
  const rule = `| ${widths.map((width, column) => (numeric[column] ? `${'-'.repeat(width - 1)}:` : '-'.repeat(width))).join(' | ')} |`;
  const out = [`### ${table.title}`, '', line(table.headers), rule, ...table.rows.map(line)];
  if (table.note !== undefined) out.push('', table.note);
  return `${out.join('\n')}\n`;
}
