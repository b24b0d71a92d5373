import type { OutputListener, OutputStream } from '../../options.js';

/** A line longer than this is passed on in pieces: an agent that never prints a newline must not grow the host. */
const MAX_LINE = 64 * 1024;

/**
 * C0 and C1 controls (CR, ESC, backspace…), DEL, and the Unicode line separators and bidi
 * overrides: in a labelled line, each could make one key's output look like another's.
 */
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
const UNSAFE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

export function neutralise(text: string): string {
  return text.replace(UNSAFE, (char) => `\\u${char.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/**
 * The default listener: the host's own stream, one labelled line at a time. When the stream
 * already holds more than its high-water mark (a slow terminal, a full pipe), the line is
 * dropped and counted rather than buffered without bound.
 */
export function labelledWriter(onDrop: () => void): OutputListener {
  return (key, stream, text) => {
    const target = process[stream];
    if (target.writableLength > target.writableHighWaterMark) {
      onDrop();
      return;
    }
    target.write(`[${key}] ${neutralise(text)}\n`);
  };
}

/** Joins a worker's output chunks into lines and hands each to `listener` with the key the worker serves now. */
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
