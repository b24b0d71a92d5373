/**
 * TypeScript by Node's own rule: erasable syntax only, stripped to whitespace so every line
 * and column stays where it was. amaro is the stripper Node itself embeds; it runs on the
 * coordinator only (about 7 MB, loaded on first use), never in a worker.
 */
import { moduleLoad } from '../errors.js';

interface AmaroError {
  code?: unknown;
  message?: unknown;
  startLine?: unknown;
  startColumn?: unknown;
}

type Transform = (code: string, options: { mode: 'strip-only'; filename?: string }) => { code: string };
let transform: Transform | null = null;

/** Strips `source`; a syntax or non-erasable construct fails with MODULE_LOAD naming `shown:line:column`. */
export async function stripTypeScript(source: string, shown: string): Promise<string> {
  if (transform === null) {
    let amaro: { transformSync: Transform };
    try {
      amaro = (await import('amaro')) as unknown as { transformSync: Transform };
    } catch (cause) {
      // An optional dependency: its engines field says Node 22, so an --engine-strict install
      // on Node 20 (the only Node that needs it) leaves it out.
      throw moduleLoad(
        `${shown}: TypeScript agents on this Node need the optional package amaro (npm install amaro)`,
        undefined,
        cause,
      );
    }
    transform = amaro.transformSync;
  }
  try {
    return transform(source, { mode: 'strip-only', filename: shown }).code;
  } catch (error) {
    throw moduleLoad(describeStripError(error, shown), undefined, error);
  }
}

export function describeStripError(error: unknown, shown: string): string {
  const e = (typeof error === 'object' && error !== null ? error : {}) as AmaroError;
  const line = typeof e.startLine === 'number' ? e.startLine : null;
  const column = typeof e.startColumn === 'number' ? e.startColumn + 1 : null;
  const where = line === null ? shown : `${shown}:${line}${column === null ? '' : `:${column}`}`;
  const message = typeof e.message === 'string' ? e.message : String(error);
  const hint =
    e.code === 'UnsupportedSyntax'
      ? ' (only erasable TypeScript runs: no enums, namespaces or parameter properties, as with Node’s own type stripping)'
      : '';
  return `${where}: ${message}${hint}`;
}
