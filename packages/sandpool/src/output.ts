import type { Readable } from 'node:stream';
import type { OutputListener, OutputStream } from './options.js';

/** Writes worker output to the host's streams, one labelled line at a time. */
export const writeLabelled: OutputListener = (key, stream, text) => {
  process[stream].write(`[${key}] ${text}\n`);
};

/**
 * Splits a worker stream into lines and hands each to `listener` with the key the worker
 * serves at that moment, so nothing a worker prints reaches the host unlabelled.
 */
export function pipeLines(source: Readable, stream: OutputStream, label: () => string, listener: OutputListener): void {
  let partial = '';
  source.setEncoding('utf8');
  source.on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) listener(label(), stream, line);
  });
  source.on('end', () => {
    if (partial !== '') listener(label(), stream, partial);
    partial = '';
  });
}
