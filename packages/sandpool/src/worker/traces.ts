/**
 * Stack traces that name the tenant's own files: a frame in an artifact's bundle is shown at
 * its place in the source (`live/agent.mjs:5:11`, relative to the swarm's folder), read from
 * the bundle's source map. The map is read, checked and parsed only when a trace first needs
 * it, so a key that never formats a stack pays nothing at its start. No zod here, as in the
 * rest of the worker.
 */
import { createHash } from 'node:crypto';
import { SourceMap } from 'node:module';
import { SOURCE_MAP_LINE } from '../store/manifest.js';
import { readRegularFileSync } from '../store/safe-read.js';

/** A map is at most this many bytes (the build bounds the whole artifact; this bounds one read). */
const MAX_MAP_BYTES = 256 * 1024 * 1024;

interface Traced {
  readonly mapFile: string;
  readonly sha256: string;
  /** undefined: not read yet; null: unreadable or not the bundle's (frames stay as they are). */
  map?: SourceMap | null;
}

/** By the name a frame gives its script (the bundle's file URL, also on Node 20's data: import via its sourceURL). */
const traced = new Map<string, Traced>();

/**
 * Has traces of `url` (a bundle just verified, `bytes` its checked content, `file` its path)
 * mapped to its sources. The map's digest comes from the bundle's last line, so a map that is
 * not the one built with these bytes is never used. A bundle without that line (built before
 * maps were) keeps its frames.
 */
export function traceBundle(url: string, file: string, bytes: Buffer): void {
  const tail = bytes.subarray(Math.max(0, bytes.length - 200)).toString('utf8');
  const at = tail.lastIndexOf(SOURCE_MAP_LINE);
  if (at < 0) return;
  const sha256 = tail.slice(at + SOURCE_MAP_LINE.length).trim();
  if (!/^[0-9a-f]{64}$/.test(sha256)) return;
  traced.set(url, { mapFile: `${file}.map`, sha256 });
  // An agent's own Error.prepareStackTrace, set later, replaces this one for its errors.
  Error.prepareStackTrace = formatStack;
}

function formatStack(error: unknown, frames: NodeJS.CallSite[]): string {
  let header: string;
  try {
    header = Error.prototype.toString.call(error);
  } catch {
    header = 'Error';
  }
  return `${header}${frames.map((frame) => `\n    at ${frameText(frame)}`).join('')}`;
}

function frameText(frame: NodeJS.CallSite): string {
  const text = String(frame);
  const script = frame.getScriptNameOrSourceURL();
  const entry = script === undefined || script === null ? undefined : traced.get(script);
  const line = frame.getLineNumber();
  const column = frame.getColumnNumber();
  if (entry === undefined || line === null || column === null) return text;
  const map = mapOf(entry);
  const origin = map?.findEntry(line - 1, column - 1);
  if (origin === undefined || !('originalSource' in origin) || origin.originalSource === undefined) return text;
  const place = `${origin.originalSource}:${origin.originalLine + 1}:${origin.originalColumn + 1}`;
  return text.replace(`${script}:${line}:${column}`, place);
}

function mapOf(entry: Traced): SourceMap | null {
  if (entry.map !== undefined) return entry.map;
  entry.map = null;
  try {
    const bytes = readRegularFileSync(entry.mapFile, { maxBytes: MAX_MAP_BYTES });
    if (createHash('sha256').update(bytes).digest('hex') === entry.sha256) {
      entry.map = new SourceMap(JSON.parse(bytes.toString('utf8')));
    }
  } catch {
    // Unreadable or malformed: the frames keep the bundle's place.
  }
  return entry.map;
}
