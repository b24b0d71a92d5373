import { randomBytes } from 'node:crypto';
import { rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Message } from 'esbuild';
import { badConfig } from './failure.js';

const JAVASCRIPT = new Set(['.mjs', '.js', '.cjs']);
const TYPESCRIPT = new Set(['.ts', '.mts', '.cts']);

/**
 * The default export of a `--config` module (awaited, so it may be a promise). JavaScript is
 * imported as it is. TypeScript is compiled by esbuild on every Node line, so one config
 * behaves alike on all of them: Node 20 strips no types, and Node's own stripping takes only
 * erasable syntax and no `.ts` imports. The config and its relative imports become one
 * module, packages left for Node to resolve; it is written beside the file (so imports and
 * `import.meta.url` resolve as from the file itself), imported, and removed. Anything that
 * keeps the file from loading is a usage error naming the file.
 */
export async function loadConfig(file: string): Promise<unknown> {
  const path = resolve(file);
  const extension = extname(path);
  if (!JAVASCRIPT.has(extension) && !TYPESCRIPT.has(extension)) {
    throw badConfig(`--config ${file}: expected a .mjs, .js, .cjs, .ts, .mts or .cts file`);
  }
  const info = await stat(path).catch(() => null);
  if (info === null || !info.isFile()) throw badConfig(`--config ${file}: no such file`);
  const loaded = TYPESCRIPT.has(extension) ? await importTypeScript(path, file) : await importModule(path, file);
  if (loaded.default === undefined) throw badConfig(`--config ${file}: no default export`);
  try {
    return await loaded.default;
  } catch (error) {
    throw badConfig(`--config ${file}: its default export rejected: ${describe(error)}`, error);
  }
}

async function importModule(path: string, file: string): Promise<{ default?: unknown }> {
  try {
    return (await import(pathToFileURL(path).href)) as { default?: unknown };
  } catch (error) {
    throw badConfig(`--config ${file}: ${describe(error)}`, error);
  }
}

async function importTypeScript(path: string, file: string): Promise<{ default?: unknown }> {
  const { build } = await import('esbuild');
  let code: string;
  try {
    const result = await build({
      entryPoints: [path],
      bundle: true,
      packages: 'external',
      platform: 'node',
      format: 'esm',
      target: 'node20',
      write: false,
      sourcemap: 'inline',
      logLevel: 'silent',
    });
    code = result.outputFiles[0]?.text ?? '';
  } catch (error) {
    throw badConfig(`--config ${file}: ${firstBuildError(error) ?? describe(error)}`, error);
  }
  const compiled = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.mjs`);
  try {
    await writeFile(compiled, code, { flag: 'wx', mode: 0o600 });
  } catch (error) {
    throw badConfig(`--config ${file}: cannot write its compiled module beside it: ${describe(error)}`, error);
  }
  try {
    return await importModule(compiled, file);
  } finally {
    await rm(compiled, { force: true });
  }
}

/** esbuild's first error, with where it is: what an operator fixes first. */
function firstBuildError(error: unknown): string | null {
  const errors = (error as { errors?: Message[] } | null)?.errors;
  const first = Array.isArray(errors) ? errors[0] : undefined;
  if (first === undefined) return null;
  const where =
    first.location === null ? '' : `${first.location.file}:${first.location.line}:${first.location.column}: `;
  return `${where}${first.text}`;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
