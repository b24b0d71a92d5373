import { LIMITS, type OutputChunk } from '../protocol/messages.js';

type Post = (message: OutputChunk) => void;

/**
 * Routes `process.stdout`/`stderr` writes to the coordinator as chunks, within a window of
 * unacknowledged characters: an agent printing faster than the host can write loses the
 * excess (counted and reported) instead of growing the host's memory.
 */
export class OutputGate {
  private inFlight = 0;
  private readonly dropped = { stdout: 0, stderr: 0 };

  constructor(private readonly post: Post) {
    for (const stream of ['stdout', 'stderr'] as const) {
      const write = (chunk: unknown, encoding?: unknown, callback?: unknown): boolean => {
        this.write(stream, typeof chunk === 'string' ? chunk : Buffer.from(chunk as Uint8Array).toString('utf8'));
        const done = typeof encoding === 'function' ? encoding : callback;
        if (typeof done === 'function') queueMicrotask(() => done());
        return true;
      };
      process[stream].write = write as typeof process.stdout.write;
    }
  }

  /** The coordinator has written `chars` more characters; drops not yet reported go out now. */
  acknowledge(chars: number): void {
    this.inFlight = Math.max(0, this.inFlight - chars);
    for (const stream of ['stdout', 'stderr'] as const) {
      if (this.dropped[stream] > 0) this.send(stream, '');
    }
  }

  private write(stream: 'stdout' | 'stderr', text: string): void {
    for (let start = 0; start < text.length; start += LIMITS.outputChunk) {
      this.send(stream, text.slice(start, start + LIMITS.outputChunk));
    }
  }

  private send(stream: 'stdout' | 'stderr', piece: string): void {
    if (this.inFlight + piece.length > LIMITS.outputWindow) {
      this.dropped[stream] += piece.length;
      return;
    }
    this.inFlight += piece.length;
    this.post({ t: 'out', stream, text: piece, dropped: this.dropped[stream] });
    this.dropped[stream] = 0;
  }
}
