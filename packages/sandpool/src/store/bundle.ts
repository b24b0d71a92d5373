/**
 * Bundles one stem into one self-contained ES module at snapshot time: its helpers, the
 * packages it imports from any node_modules up the tree (pnpm's links included) and relative
 * imports out of live/. What cannot be pinned fails here, with ERR_SANDPOOL_SNAPSHOT_BUILD,
 * rather than at a call months later. Runs on the coordinator only.
 */
import { extname, relative, sep } from 'node:path';
import type { Message, Plugin } from 'esbuild';
import { type SandpoolError, snapshotBuild } from '../errors.js';
import { stripTypeScript } from '../typescript/strip.js';
import { readRegularFile, UnsafeFileError } from './safe-read.js';

/**
 * Defined before the bundled code: CommonJS dependencies call `require` for node builtins,
 * and an ES module has none. It serves builtins only, so a require esbuild could not see
 * (inside a try) can never reach a file outside the snapshot.
 */
const BANNER = [
  "import { createRequire as __sandpoolCreateRequire, isBuiltin as __sandpoolIsBuiltin } from 'node:module';",
  "import { fileURLToPath as __sandpoolFileURLToPath } from 'node:url';",
  "import { dirname as __sandpoolDirnameOf } from 'node:path';",
  // CommonJS packages read __filename and __dirname (the TypeScript compiler does); in the
  // bundle they name the bundle itself (a data: URL on Node 20 has no file: a fixed name).
  "const __sandpoolFilename = import.meta.url.startsWith('file:') ? __sandpoolFileURLToPath(import.meta.url) : '/sandpool-snapshot.mjs';",
  'const __sandpoolDirname = __sandpoolDirnameOf(__sandpoolFilename);',
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
  /** Real path of the store root. */
  rootReal: string;
  swarm: string;
  /** Bytes the whole snapshot may still take; decremented as inputs are read. */
  budget: { left: number };
}

/**
 * Reads every input itself rather than letting esbuild do it: the same guards as the copy
 * (no FIFO hangs, byte bound, hard links), and no file of another swarm ends up in this one.
 */
function guardPlugin(context: BundleContext): Plugin {
  return {
    name: 'sandpool',
    setup(build) {
      build.onLoad({ filter: /.*/ }, async (args) => {
        const shown = showPath(context, args.path);
        const extension = extname(args.path);
        if (extension === '.node') {
          throw new Error(`${shown} is a native addon, which a snapshot cannot hold`);
        }
        const loader = LOADERS[extension];
        if (loader === undefined) {
          throw new Error(`${shown} is not a JavaScript, TypeScript or JSON module, which is all a snapshot holds`);
        }
        checkPlace(context, args.path, shown);
        const inLive = args.path.startsWith(context.liveReal + sep) && !isInNodeModules(args.path);
        let bytes: Buffer;
        try {
          // pnpm hard-links packages from its store: only the swarm's own files must have one name.
          bytes = await readRegularFile(args.path, { maxBytes: context.budget.left, singleLink: inLive });
        } catch (error) {
          if (error instanceof UnsafeFileError) throw new Error(`${shown} ${error.message}`);
          throw error;
        }
        context.budget.left -= bytes.length;
        // Node's own stripper, not esbuild's TypeScript: one rule (erasable syntax only) live and frozen.
        const code = loader === 'ts' ? await stripTypeScript(bytes.toString('utf8'), shown) : null;
        if (loader !== 'json' && !isInNodeModules(args.path)) {
          const computed = computedLoad(code ?? bytes.toString('utf8'), shown);
          if (computed !== null) throw new Error(computed);
        }
        return code === null ? { contents: bytes, loader } : { contents: code, loader: 'js' };
      });
    },
  };
}

function isInNodeModules(path: string): boolean {
  return path.split(sep).includes('node_modules');
}

/** Inputs may come from the swarm's folder, packages, or outside the root; never from another swarm. */
function checkPlace(context: BundleContext, path: string, shown: string): void {
  if (!path.startsWith(context.rootReal + sep) || isInNodeModules(path)) return;
  const [swarm, area] = path.slice(context.rootReal.length + 1).split(sep);
  if (swarm !== context.swarm) throw new Error(`${shown} belongs to another swarm`);
  if (area === 'snapshots') throw new Error(`${shown} is inside a snapshot`);
}

/** Paths in messages and in the bundle are relative to live/: no absolute path leaks or pins the bytes. */
function showPath(context: BundleContext, path: string): string {
  const rel = relative(context.liveReal, path).split(sep).join('/');
  return rel.startsWith('../') ? rel : `live/${rel}`;
}

/** One ES module holding the stem and everything it imports but node builtins. */
export async function bundleStem(entry: string, context: BundleContext): Promise<Buffer> {
  const { build } = await import('esbuild');
  let result: Awaited<ReturnType<typeof build>>;
  try {
    result = await build({
      entryPoints: [entry],
      absWorkingDir: context.liveReal,
      bundle: true,
      write: false,
      format: 'esm',
      platform: 'node',
      // The code runs as written: the Node that loads the snapshot is the one it was written for.
      target: 'esnext',
      logLevel: 'silent',
      legalComments: 'eof',
      banner: { js: BANNER },
      // Only free references are replaced: a module's own `const __filename` stays its own.
      define: { __filename: '__sandpoolFilename', __dirname: '__sandpoolDirname' },
      plugins: [guardPlugin(context)],
    });
  } catch (error) {
    const errors = (error as { errors?: Message[] }).errors;
    throw buildError(context, entry, errors ?? [], error);
  }
  const output = result.outputFiles?.[0];
  if (output === undefined) throw buildError(context, entry, []);
  return Buffer.from(output.contents.buffer, output.contents.byteOffset, output.contents.byteLength);
}

function buildError(context: BundleContext, entry: string, messages: Message[], cause?: unknown): SandpoolError {
  const details = messages.slice(0, 5).map((message) => {
    const at = message.location;
    const where =
      at === null ? '' : `${showPath(context, join(context.liveReal, at.file))}:${at.line}:${at.column + 1}: `;
    return `${where}${message.text}`;
  });
  const more = messages.length > 5 ? `; and ${messages.length - 5} more` : '';
  const text = details.length === 0 ? 'the bundler produced no output' : details.join('; ');
  return snapshotBuild(`cannot snapshot ${showPath(context, entry)}: ${text}${more}`, cause);
}

function join(base: string, file: string): string {
  // esbuild reports locations relative to absWorkingDir.
  return file.startsWith('/') ? file : `${base}${sep}${file}`;
}
