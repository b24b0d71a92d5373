import type { OutputListener, OutputStream } from '../options.js';

/** Writes worker output to the host's streams, one labelled line at a time. */
export const writeLabelled: OutputListener = (key, stream, text) => {
  process[stream].write(`[${key}] ${text}\n`);
};

/**
 * Joins a worker's output chunks into lines and hands each to `listener` with the key the
 * worker serves at that moment, so nothing a worker prints reaches the host unlabelled.
 */
/** A line longer than this is passed on in pieces: an agent that never prints a newline must not grow the host. */
const MAX_LINE = 64 * 1024;

export class LineSplitter {
  private partial = '';

  constructor(
    private readonly stream: OutputStream,
    private readonly label: () => string,
    private readonly listener: OutputListener,
  ) {}

  push(chunk: string): void {
    const lines = (this.partial + chunk).split('\n');
    this.partial = lines.pop() ?? '';
    for (const line of lines) this.listener(this.label(), this.stream, line);
    while (this.partial.length > MAX_LINE) {
      this.listener(this.label(), this.stream, this.partial.slice(0, MAX_LINE));
      this.partial = this.partial.slice(MAX_LINE);
    }
  }

  end(): void {
    if (this.partial !== '') this.listener(this.label(), this.stream, this.partial);
    this.partial = '';
  }
}
