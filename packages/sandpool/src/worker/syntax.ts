/**
 * Finds where a SyntaxError from import() is: V8 names neither the file nor the line, and the
 * culprit may be any helper the agent imports. Runs only after a load failed, so the parser
 * (amaro, Node's own TypeScript stripper, which parses JavaScript too) costs nothing otherwise.
 */
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

const MODULE_FILE = /\.(?:m|c)?[jt]s$/;
const RELATIVE_SPECIFIER = /(?:\bfrom\s*|\bimport\s*\(?\s*|\brequire\s*\(\s*)(['"])(\.{1,2}\/[^'"\n]+)\1/g;
const MAX_FILES = 500;

interface ParseError {
  startLine?: unknown;
  startColumn?: unknown;
  message?: unknown;
}

export async function locateSyntaxError(error: SyntaxError, entry: string): Promise<SyntaxError | null> {
  const { transformSync } = (await import('amaro')) as unknown as {
    transformSync: (code: string, options: { mode: 'strip-only'; filename: string }) => { code: string };
  };
  const seen = new Set<string>();
  const queue = [entry];
  while (queue.length > 0 && seen.size < MAX_FILES) {
    const file = queue.shift() as string;
    if (seen.has(file) || !MODULE_FILE.test(file)) continue;
    seen.add(file);
    let source: string;
    try {
      source = await readFile(file, 'utf8');
    } catch {
      continue;
    }
    let code: string;
    try {
      code = transformSync(source, { mode: 'strip-only', filename: file }).code;
    } catch (thrown) {
      const at = thrown as ParseError;
      if (typeof at.startLine !== 'number') continue;
      const column = typeof at.startColumn === 'number' ? `:${at.startColumn + 1}` : '';
      // V8's wording for JavaScript, the stripper's for TypeScript (it names what is not erasable).
      const what = /\.(?:m|c)?ts$/.test(file) && typeof at.message === 'string' ? at.message : error.message;
      const located = new SyntaxError(`${file}:${at.startLine}${column}: ${what}`);
      return located;
    }
    for (const match of code.matchAll(RELATIVE_SPECIFIER)) {
      const specifier = match[2];
      if (specifier !== undefined) queue.push(resolve(dirname(file), specifier));
    }
  }
  return new SyntaxError(`${entry} (or a module it imports): ${error.message}`);
}
