/**
 * Snapshot loading in the worker: read the stem's one bundle into memory, check those bytes,
 * then import those same bytes, never the path again, so a file swapped after the check runs
 * nowhere. No zod here: it would cost every worker megabytes.
 */
import { createHash } from 'node:crypto';
import * as nodeModule from 'node:module';
import { relative, sep } from 'node:path';
import { pathToFileURL } from 'node:url';
import { snapshotCorrupt } from '../errors.js';
import type { LoadRequest } from '../protocol/messages.js';
import { readManifest, verifyAgainst } from '../store/manifest.js';
import { readRegularFileSync, UnsafeFileError } from '../store/safe-read.js';
import { traceBundle } from './traces.js';

export interface VerifiedBundle {
  readonly file: string;
  readonly bytes: Buffer;
}

/**
 * Checks a snapshot before anything in it runs. A self-contained snapshot yields its bundle's
 * verified bytes; an older one (copied files, no bundles) is rehashed whole and yields null,
 * to be imported by path as before.
 */
export async function verifySnapshot(request: LoadRequest): Promise<VerifiedBundle | null> {
  const dir = request.verifyDir as string;
  const rel = relative(dir, request.file).split(sep).join('/');
  // The coordinator's digest and size come from a manifest it authenticated; the worker's own
  // reread of the manifest is the fallback when it sends none.
  if (request.sha256 !== undefined && request.bytes !== undefined) {
    return { file: request.file, bytes: readChecked(request, rel, request.sha256, request.bytes) };
  }
  const { manifest } = readManifest(dir, request.key);
  if (manifest.version === 1) {
    await verifyAgainst(dir, manifest, request.key);
    return null;
  }
  const entry = Object.hasOwn(manifest.files, rel) ? manifest.files[rel] : undefined;
  if (entry === undefined || !Object.values(manifest.stems).includes(rel)) {
    throw snapshotCorrupt(`snapshot manifest lists no bundle ${rel}`, request.key);
  }
  return { file: request.file, bytes: readChecked(request, rel, request.sha256 ?? entry.sha256, entry.bytes) };
}

/** The bundle's bytes, at most `size` of them, if they hash to `expected`. */
function readChecked(request: LoadRequest, rel: string, expected: string, size: number): Buffer {
  let bytes: Buffer;
  try {
    // Synchronous: this thread has nothing else to do yet, and libuv's pool, which an async
    // read would wait in, is shared with every tenant's async jobs.
    bytes = readRegularFileSync(request.file, { maxBytes: size });
  } catch (error) {
    const why = error instanceof UnsafeFileError ? error.message : 'cannot be read';
    throw snapshotCorrupt(`snapshot bundle ${rel} ${why}`, request.key, error);
  }
  if (createHash('sha256').update(bytes).digest('hex') !== expected) {
    throw snapshotCorrupt(`snapshot does not match its manifest (changed: ${rel})`, request.key);
  }
  return bytes;
}

/** Read by the bundle's banner (store/bundle.ts) while it is evaluated. */
const BUNDLE_URL = Symbol.for('sandpool.bundleUrl');

interface Hooks {
  deregister(): void;
}
type RegisterHooks = (hooks: {
  resolve?: (specifier: string, context: unknown, next: (s: string, c?: unknown) => unknown) => unknown;
  load?: (url: string, context: unknown, next: (u: string, c?: unknown) => unknown) => unknown;
}) => Hooks;

/**
 * Imports exactly `bundle.bytes`. Where Node has in-thread module hooks (22.15+, 24), the
 * bundle keeps its own file URL, so stack traces and the compile cache name the real file;
 * on older Nodes it goes in as a `data:` URL, with a sourceURL so traces still name the file.
 */
export async function importVerified(bundle: VerifiedBundle): Promise<Record<string, unknown>> {
  const url = pathToFileURL(bundle.file).href;
  // Before it runs: an error its top level throws names the tenant's file too.
  traceBundle(url, bundle.file, bundle.bytes);
  const register = (nodeModule as { registerHooks?: RegisterHooks }).registerHooks;
  if (typeof register === 'function') {
    const hooks = register({
      resolve: (specifier, context, next) =>
        specifier === url ? { url, format: 'module', shortCircuit: true } : next(specifier, context),
      load: (target, context, next) =>
        target === url ? { format: 'module', source: bundle.bytes, shortCircuit: true } : next(target, context),
    });
    try {
      return (await import(url)) as Record<string, unknown>;
    } finally {
      hooks.deregister();
    }
  }
  const source = Buffer.concat([bundle.bytes, Buffer.from(`\n//# sourceURL=${url}\n`)]);
  // A data: URL names no file: the bundle's banner reads its own here, for import.meta and __dirname.
  const named = globalThis as Record<symbol, unknown>;
  named[BUNDLE_URL] = url;
  try {
    return (await import(`data:text/javascript;base64,${source.toString('base64')}`)) as Record<string, unknown>;
  } finally {
    delete named[BUNDLE_URL];
  }
}
