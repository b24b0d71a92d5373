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
export function labelledWriter(onDrop: (key: string) => void): OutputListener {
  return (key, stream, text) => {
    const target = process[stream];
    if (target.writableLength > target.writableHighWaterMark) {
      onDrop(key);
      return;
    }
    target.write(`[${key}] ${neutralise(text)}\n`);
  };
}

/**
 * What one worker's output may cost the coordinator per second, both streams together: a
 * flood of empty lines is a million listener calls per megabyte, and the coordinator serves
 * every key. One second's worth may come at once.
 */
export const OUTPUT_BUDGET = { linesPerSecond: 10_000, charsPerSecond: 1024 * 1024 } as const;

/** A worker's budget of lines and characters, refilled with time (a token bucket). */
export class OutputAllowance {
  private lines: number;
  private chars: number;
  private at: number;

  constructor(
    private readonly budget: { readonly linesPerSecond: number; readonly charsPerSecond: number } = OUTPUT_BUDGET,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.lines = budget.linesPerSecond;
    this.chars = budget.charsPerSecond;
    this.at = now();
  }

  /** Refills for the time gone by; then what is left, to be spent with `spend`. */
  refill(): void {
    const now = this.now();
    const seconds = Math.max(0, now - this.at) / 1000;
    this.at = now;
    this.lines = Math.min(this.budget.linesPerSecond, this.lines + seconds * this.budget.linesPerSecond);
    this.chars = Math.min(this.budget.charsPerSecond, this.chars + seconds * this.budget.charsPerSecond);
  }

  /** How many of `chars` characters may be read (and are spent). */
  takeChars(chars: number): number {
    const taken = Math.min(chars, Math.floor(this.chars));
    this.chars -= taken;
    return taken;
  }

  /** Whether one more line may go out (and it is spent). */
  takeLine(): boolean {
    if (this.lines < 1) return false;
    this.lines -= 1;
    return true;
  }
}

/**
 * Joins a worker's output chunks into lines and hands each to `listener` with the key the
 * worker serves now, within its allowance (shared by its two streams): what is past it is
 * dropped unread, and counted with `dropped`.
 */
export class LineSplitter {
  private partial = '';

  constructor(
    private readonly stream: OutputStream,
    private readonly label: () => string,
    private readonly listener: OutputListener,
    private readonly allowance: OutputAllowance,
    private readonly dropped: (chars: number, key: string) => void,
  ) {}

  push(chunk: string): void {
    this.allowance.refill();
    const readable = this.allowance.takeChars(chunk.length);
    if (readable < chunk.length) this.dropped(chunk.length - readable, this.label());
    if (readable === 0) return;
    const text = this.partial + (readable < chunk.length ? chunk.slice(0, readable) : chunk);
    this.partial = '';
    let start = 0;
    for (let end = text.indexOf('\n'); end >= 0; end = text.indexOf('\n', start)) {
      if (!this.allowance.takeLine()) {
        // The rest is not walked: every line of it would cost what the budget is there to bound.
        this.dropped(text.length - start, this.label());
        return;
      }
      this.listener(this.label(), this.stream, text.slice(start, end));
      start = end + 1;
    }
    this.partial = text.slice(start);
    while (this.partial.length > MAX_LINE) {
      if (!this.allowance.takeLine()) {
        this.dropped(this.partial.length, this.label());
        this.partial = '';
        return;
      }
      this.listener(this.label(), this.stream, this.partial.slice(0, MAX_LINE));
      this.partial = this.partial.slice(MAX_LINE);
    }
  }

  end(): void {
    if (this.partial !== '') this.listener(this.label(), this.stream, this.partial);
    this.partial = '';
  }
}
