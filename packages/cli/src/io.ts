/**
 * Where the CLI writes. Commands take this instead of touching `process` so that the
 * program can be driven in-process (and its output captured) as well as from the binary.
 */
export interface Io {
  readonly writeOut: (text: string) => void;
  readonly writeErr: (text: string) => void;
  /** stdout is a terminal: live views redraw only then (unless asked to). */
  readonly interactive?: boolean;
  /** The terminal's height now, when known. */
  readonly rows?: () => number | undefined;
}

export const processIo: Io = {
  writeOut: (text) => process.stdout.write(text),
  writeErr: (text) => process.stderr.write(text),
  interactive: process.stdout.isTTY === true,
  rows: () => process.stdout.rows,
};

export function printLine(write: (text: string) => void, line: string): void {
  write(`${line}\n`);
}
