/**
 * Bundles one stem into one self-contained ES module at snapshot time: its helpers, the
 * packages it imports from the node_modules folders on its resolution path (pnpm's links
 * included) and the swarm's files out of live/. What cannot be pinned, or comes from anywhere
 * else, fails here with ERR_SANDPOOL_SNAPSHOT_BUILD rather than at a call months later. Runs in
 * the store's helper process (or the caller's, for a SnapshotStore of its own), never on the
 * pool's coordinator thread.
 */
import { createHash } from 'node:crypto';
import { realpathSync } from 'node:fs';
import { extname, join, resolve, sep } from 'node:path';
import type { Message, PartialMessage, Plugin } from 'esbuild';
import { isSandpoolError, moduleLoad, type SandpoolError, snapshotBuild } from '../errors.js';
import { stripTypeScript } from '../typescript/strip.js';
import { type BuildInputs, isInside, placeOf, readInput, shownPath } from './confine.js';
import type { InputProbe } from './live-stamp.js';
import { SOURCE_MAP_LINE } from './manifest.js';
import { UnsafeFileError } from './safe-read.js';

/**
 * Defined before the bundled code: CommonJS dependencies call `require` for node builtins,
 * and an ES module has none. It serves builtins only, so a require esbuild could not see
 * (inside a try) can never reach a file outside the snapshot.
 */
const BANNER = [
  "import { createRequire as __sandpoolCreateRequire, isBuiltin as __sandpoolIsBuiltin } from 'node:module';",
  "import { fileURLToPath as __sandpoolFileURLToPath } from 'node:url';",
  "import { dirname as __sandpoolDirnameOf } from 'node:path';",
  // The bundle's own file. Where a worker imports it as a data: URL (Node 20), the worker names
  // the file beside it.
  "const __sandpoolUrl = import.meta.url.startsWith('file:') ? import.meta.url : (globalThis[Symbol.for('sandpool.bundleUrl')] ?? 'file:///sandpool-snapshot.mjs');",
  // CommonJS packages read __filename and __dirname (the TypeScript compiler does); in the
  // bundle they name the bundle itself.
  'const __sandpoolFilename = __sandpoolFileURLToPath(__sandpoolUrl);',
  'const __sandpoolDirname = __sandpoolDirnameOf(__sandpoolFilename);',
  // Each module's import.meta names its own file's place in the snapshot, which holds live/'s
  // files at the same paths, one folder up from the bundle: reads next to a module still work.
  "const __sandpoolMetaOf = (rel) => { const url = rel === null ? __sandpoolUrl : new URL('../' + rel, __sandpoolUrl).href; const filename = __sandpoolFileURLToPath(url); return { url, filename, dirname: __sandpoolDirnameOf(filename), resolve: (specifier) => new URL(specifier, url).href }; };",
  "const require = ((load) => (id) => { if (__sandpoolIsBuiltin(id)) return load(id); const error = new Error('Cannot find module ' + JSON.stringify(id) + ': a snapshot holds only what was bundled when it was made'); error.code = 'MODULE_NOT_FOUND'; throw error; })(__sandpoolCreateRequire('/'));",
].join('\n');

/**
 * `import(x)` or `require(x)` whose argument is not one plain string: the module is chosen at
 * run time, so no bundle can hold it. esbuild bundles what it can and says nothing about the
 * rest, so the swarm's own files are checked here. Packages are not: many guard an optional
 * `require(name)` with a try (the TypeScript compiler does), and in a snapshot that require
 * fails cleanly (MODULE_NOT_FOUND) rather than reaching outside it.
 */
const COMPUTED_LOAD = /\b(import|require)\s*\(\s*(?!(['"])[^'"\n]*\2\s*[,)])(?!\))/g;

function computedLoad(code: string, shown: string): string | null {
  for (const match of code.matchAll(COMPUTED_LOAD)) {
    const before = code.slice(0, match.index);
    const lineStart = before.lastIndexOf('\n') + 1;
    const line = before.split('\n').length;
    // Comments and `.import(` / `.require(` method calls are not module loads.
    const prefix = before.slice(lineStart);
    if (/\/\/|^\s*\*/.test(prefix) || /[.$\w]$/.test(prefix)) continue;
    return `${shown}:${line}:${match.index - lineStart + 1}: ${match[1]}() of a name computed at run time cannot be pinned in a snapshot (import a string literal, or import each choice)`;
  }
  return null;
}

const LOADERS: Readonly<Record<string, 'js' | 'json' | 'ts'>> = {
  '.js': 'js',
  '.mjs': 'js',
  '.cjs': 'js',
  '.json': 'json',
  '.ts': 'ts',
  '.mts': 'ts',
  '.cts': 'ts',
};

export interface BundleContext {
  /** Real path of the swarm's live/ folder. */
  liveReal: string;
  /** Where inputs may come from. */
  inputs: BuildInputs;
  /** Bytes the whole snapshot may still take; decremented as inputs are read. */
  budget: { left: number };
  /** What is being made, for messages: a snapshot, or the artifact a live key runs from. */
  making: 'snapshot' | 'live';
  /** A live build's: what it looks at, stamped before it looks (what its reuse is stamped by). */
  probe?: InputProbe;
}

/** A module named by a host path: a build takes only what the swarm and its packages hold. */
const ABSOLUTE = /^(\/|file:)/;

/** The package a bare specifier names (`x`, `@scope/x`, before any subpath); a relative or absolute one names none. */
const PACKAGE_NAME = /^(?:@[A-Za-z0-9][\w.~-]*\/)?[A-Za-z0-9][\w.~-]*(?=\/|$)/;

/** A relative specifier: `./x`, `../x`, `.` or `..`. */
const RELATIVE = /^\.\.?(\/|$)/;
/** Longest specifier a message quotes. */
const MAX_SHOWN_SPECIFIER = 200;

/**
 * What every import that cannot be bundled from an accepted place says, whether its target is
 * missing or exists elsewhere: were the two told apart (esbuild's "Could not resolve" against a
 * refusal), a tenant could probe which host files exist by importing them. What it says is
 * worked out from the tenant's own text alone, never from the disk: a package's name (one word),
 * or a relative specifier that, as written, stays in the swarm's folder; not one that climbs
 * out of it, which may spell a host's path.
 */
function unreachable(context: BundleContext, specifier: string | null, resolveDir = ''): string {
  let what = 'the import';
  const name = specifier === null ? undefined : PACKAGE_NAME.exec(specifier)?.[0];
  if (name !== undefined) what = `the import of package ${JSON.stringify(name)}`;
  else if (
    specifier !== null &&
    specifier.length <= MAX_SHOWN_SPECIFIER &&
    RELATIVE.test(specifier) &&
    isInside(context.inputs.swarmReal, resolve(resolveDir, specifier))
  ) {
    what = `the import ${JSON.stringify(specifier)}`;
  }
  return `${what} is missing, or leads outside the swarm's folder and its package folders`;
}

/** Marks esbuild's own resolution of a tenant's import, asked for by the plugin itself. */
const OWN_LOOKUP = Symbol('sandpool.resolve');

/**
 * Reads every input itself rather than letting esbuild do it: each is proven to come from the
 * swarm's folder or a package folder on its resolution path (see confine.ts), with the same
 * guards as the copy (no FIFO opened, byte bound, hard links), whatever links or swaps say.
 * Refusals are returned, not thrown: esbuild then names the import that led here, and no stack
 * of the host's.
 */
function guardPlugin(context: BundleContext): Plugin {
  const accept = (real: string) => placeOf(context.inputs, real);
  const refuse = (text: string) => ({ errors: [{ text }] satisfies PartialMessage[] });
  return {
    name: 'sandpool',
    setup(build) {
      build.onResolve({ filter: ABSOLUTE }, (args) =>
        args.kind === 'entry-point'
          ? undefined
          : refuse("an absolute import: a build reads only the swarm's folder and its package folders"),
      );
      const { probe } = context;
      if (probe !== undefined) {
        // Before esbuild resolves it: where the resolution will look is stamped as it was then.
        build.onResolve({ filter: /.*/ }, async (args) => {
          if (args.kind !== 'entry-point' && args.pluginData !== OWN_LOOKUP)
            await probe.beforeResolve(args.resolveDir, args.path);
          return undefined;
        });
      }
      // The tenant's own imports: resolved by esbuild, then answered in one way whether nothing
      // was found or something outside was, so neither message nor path tells them apart. An
      // operator's package resolves its own imports as esbuild does.
      build.onResolve({ filter: /.*/ }, async (args) => {
        if (args.kind === 'entry-point' || args.pluginData === OWN_LOOKUP || accept(args.importer) !== 'swarm') {
          return undefined;
        }
        const found = await build.resolve(args.path, {
          kind: args.kind,
          importer: args.importer,
          namespace: args.namespace,
          resolveDir: args.resolveDir,
          with: args.with,
          pluginData: OWN_LOOKUP,
        });
        if (found.errors.length > 0 || (!found.external && accept(found.path) === null))
          return refuse(unreachable(context, args.path, args.resolveDir));
        const { path, external, sideEffects, namespace, suffix, pluginData, warnings } = found;
        return { path, external, sideEffects, namespace, suffix, pluginData, warnings };
      });
      build.onLoad({ filter: /.*/ }, async (args) => {
        // Its place first: nothing of a file outside (its type, its size) may shape the answer.
        if (accept(args.path) === null) return refuse(unreachable(context, null));
        const shown = shownPath(context.inputs, args.path);
        const extension = extname(args.path);
        if (extension === '.node') return refuse(`${shown} is a native addon, which a snapshot cannot hold`);
        const loader = LOADERS[extension];
        if (loader === undefined) {
          return refuse(`${shown} is not a JavaScript, TypeScript or JSON module, which is all a snapshot holds`);
        }
        let read: Awaited<ReturnType<typeof readInput>>;
        await context.probe?.beforeRead(args.path);
        try {
          read = await readInput(args.path, accept, context.budget.left);
        } catch (error) {
          if (!(error instanceof UnsafeFileError)) throw error;
          // Where it leads is the host's business: the import's place in the tenant's code names it.
          return refuse(error.reason === 'outside' ? unreachable(context, null) : `${shown} ${error.message}`);
        }
        const { bytes, place } = read;
        context.budget.left -= bytes.length;
        // Node's own stripper, not esbuild's TypeScript: one rule (erasable syntax only) live and frozen.
        let code: string | null = null;
        if (loader === 'ts') {
          try {
            code = await stripTypeScript(bytes.toString('utf8'), shown);
          } catch (error) {
            // Its message names the place (shown:line:column); thrown, esbuild would point at our own code.
            if (isSandpoolError(error)) return refuse(error.message);
            throw error;
          }
        }
        if (loader !== 'json' && place === 'swarm' && !isInNodeModules(args.path)) {
          const computed = computedLoad(code ?? bytes.toString('utf8'), shown);
          if (computed !== null) return refuse(computed);
        }
        if (loader === 'json') return { contents: bytes, loader };
        const text = code ?? bytes.toString('utf8');
        if (!text.includes('import.meta')) {
          return code === null ? { contents: bytes, loader } : { contents: code, loader: 'js' as const };
        }
        // Declared on the first line, so every other line keeps its number in traces and messages.
        const meta = `const __sandpoolMeta = __sandpoolMetaOf(${JSON.stringify(copiedAs(context, args.path))}); `;
        // A hashbang must stay first: it becomes a comment after the declaration.
        const body = text.startsWith('#!') ? `//${text.slice(2)}` : text;
        return { contents: meta + body, loader: code === null ? loader : ('js' as const) };
      });
    },
  };
}

/** Where the copy of live/ holds this file (see the banner's __sandpoolMetaOf); null: the copy has no such file. */
function copiedAs(context: BundleContext, path: string): string | null {
  if (!path.startsWith(context.liveReal + sep) || isInNodeModules(path.slice(context.liveReal.length))) return null;
  return path
    .slice(context.liveReal.length + 1)
    .split(sep)
    .join('/');
}

function isInNodeModules(path: string): boolean {
  return path.split(sep).includes('node_modules');
}

/** Tries of a stem whose bundler's process ended under it: the second runs on a bundler started again. */
const BUNDLE_ATTEMPTS = 2;

/** A stem's bundle and its source map (see withSourceMap). */
export interface StemBundle {
  readonly code: Buffer;
  readonly map: Buffer;
}

/** One ES module holding the stem and everything it imports but node builtins, with its source map. */
export async function bundleStem(entry: string, context: BundleContext): Promise<StemBundle> {
  const { build, stop } = await import('esbuild');
  const budget = context.budget.left;
  for (let attempt = 1; ; attempt++) {
    let result: Awaited<ReturnType<typeof build>>;
    try {
      result = await build({
        entryPoints: [entry],
        absWorkingDir: context.liveReal,
        bundle: true,
        write: false,
        // Never written (write: false): it places the map's sources relative to live/.
        outfile: join(context.liveReal, MAP_BASE),
        sourcemap: 'external',
        sourcesContent: false,
        format: 'esm',
        platform: 'node',
        // The code runs as written: the Node that loads the snapshot is the one it was written for.
        target: 'esnext',
        logLevel: 'silent',
        tsconfigRaw: '{}',
        legalComments: 'eof',
        banner: { js: BANNER },
        // Only free references are replaced: a module's own `const __filename` stays its own.
        // `import.meta` is each module's own __sandpoolMeta (declared by the plugin; esbuild
        // renames one module's apart from another's).
        define: { __filename: '__sandpoolFilename', __dirname: '__sandpoolDirname', 'import.meta': '__sandpoolMeta' },
        plugins: [guardPlugin(context)],
      });
    } catch (error) {
      const errors = (error as { errors?: Message[] }).errors ?? [];
      if (!bundlerStopped(error, errors)) throw buildError(context, entry, errors);
      // Killed (the kernel's OOM killer, say): no build would run again on this helper until the
      // bundler is started again, which the next build does once it is stopped.
      await stop();
      if (attempt < BUNDLE_ATTEMPTS) {
        context.budget.left = budget;
        continue;
      }
      const text = `cannot build ${shownPath(context.inputs, entry)}: the bundler stopped while it built`;
      // Not the stem's failure, which a live build would keep (see LiveArtifacts): the next look builds.
      throw context.making === 'live' ? moduleLoad(text) : snapshotBuild(text);
    }
    const outputs = result.outputFiles ?? [];
    const code = outputs.find((file) => !file.path.endsWith('.map'));
    const map = outputs.find((file) => file.path.endsWith('.map'));
    if (code === undefined || map === undefined) throw buildError(context, entry, []);
    return withSourceMap(context, bytesOf(code.contents), map.text);
  }
}

/** The output's base name, for esbuild alone: sources are written relative to its folder, live/. */
const MAP_BASE = 'sandpool-bundle.mjs';

function bytesOf(contents: Uint8Array): Buffer {
  return Buffer.from(contents.buffer, contents.byteOffset, contents.byteLength);
}

/**
 * The map keeps only what a trace needs (sources, names, mappings), each source as a message
 * shows a path (relative to the swarm's folder: `live/agent.mjs`; a package's from its
 * `node_modules`), never the host's. The bundle's last line carries the map's digest: the
 * worker checks the bundle's bytes, and through them the map's, without the manifest.
 */
function withSourceMap(context: BundleContext, code: Buffer, mapText: string): StemBundle {
  const raw = JSON.parse(mapText) as { sources: string[]; names: string[]; mappings: string };
  const sources = raw.sources.map((source) => shownPath(context.inputs, resolve(context.liveReal, source)));
  const map = Buffer.from(JSON.stringify({ version: 3, sources, names: raw.names, mappings: raw.mappings }));
  const digest = createHash('sha256').update(map).digest('hex');
  return { code: Buffer.concat([code, Buffer.from(`${SOURCE_MAP_LINE}${digest}\n`)]), map };
}

/** esbuild's service process ended under the build (esbuild's own words for it). */
function bundlerStopped(error: unknown, errors: readonly Message[]): boolean {
  const said = [String((error as { message?: unknown }).message), ...errors.map((message) => message.text)];
  return said.some((text) => /The service (was stopped|is no longer running)/.test(text));
}

function buildError(context: BundleContext, entry: string, messages: Message[]): SandpoolError {
  const details = messages.slice(0, 5).map((message) => {
    const at = importAt(message);
    // The place, not the specifier: a tenant's specifier may spell a host path.
    const text = readOutside(context, message) ? unreachable(context, null) : message.text;
    if (at === null) return text;
    return `${shownPath(context.inputs, locate(context.liveReal, at.file))}:${at.line}:${at.column + 1}: ${text}`;
  });
  const more = messages.length > 5 ? `; and ${messages.length - 5} more` : '';
  const text = details.length === 0 ? 'the bundler produced no output' : details.join('; ');
  // No cause: esbuild's own error holds host paths, and the helper passes a cause's message on.
  const verb = context.making === 'snapshot' ? 'snapshot' : 'build';
  return snapshotBuild(`cannot ${verb} ${shownPath(context.inputs, entry)}: ${text}${more}`);
}

/**
 * Where the message points in the tenant's code. A refusal returned by our plugin points at the
 * import; one thrown points at a line of esbuild on the host, and its note at the import.
 */
function importAt(message: Message): Message['location'] {
  const triggered = message.notes.find((note) => /triggered by this import/.test(note.text));
  if (triggered !== undefined) return triggered.location;
  return message.notes.length === 0 ? message.location : null;
}

/**
 * esbuild reads package.json files itself (a link in node_modules may lead to another swarm's
 * folder), and its parse errors quote their text: a message about a file outside the accepted
 * places says only that.
 */
function readOutside(context: BundleContext, message: Message): boolean {
  const file = message.location?.file;
  if (file === undefined) return false;
  try {
    return placeOf(context.inputs, realpathSync(locate(context.liveReal, file))) === null;
  } catch {
    return true;
  }
}

function locate(base: string, file: string): string {
  // esbuild reports locations relative to absWorkingDir.
  return file.startsWith('/') ? file : join(base, file);
}
