/**
 * Where the CLI writes. Commands take this instead of touching `process` so that the
 * program can be driven in-process (and its output captured) as well as from the binary.
 */
export interface Io {
  readonly writeOut: (text: string) => void;
  readonly writeErr: (text: string) => void;
}

export const processIo: Io = {
  writeOut: (text) => process.stdout.write(text),
  writeErr: (text) => process.stderr.write(text),
};

export function printLine(write: (text: string) => void, line: string): void {
  write(`${line}\n`);
}
