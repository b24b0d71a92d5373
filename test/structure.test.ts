import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/**
 * The library's structure, held to the rules docs/architecture.md states: no import cycle
 * (of values or of types), the host's parts in layers whose imports only point down, and a
 * worker side that loads nothing of the host's and no zod. Read from the sources' import
 * and re-export statements.
 */
const SRC = fileURLToPath(new URL('../packages/sandpool/src/', import.meta.url));

/** The host's parts, top to bottom: a part imports only from parts below it (or itself). */
const HOST_LAYERS = [
  'pool',
  'calls',
  'routes',
  'cells',
  'slots',
  'capabilities',
  'governors',
  'workers',
  'policy',
  'telemetry',
] as const;

interface Source {
  /** Path relative to src/, e.g. `host/cells/cell.ts`. */
  readonly file: string;
  /** Files of src/ it imports, as paths relative to src/. */
  readonly local: readonly string[];
  /** Packages it imports (`zod`, `esbuild`…); `node:` builtins left out. */
  readonly packages: readonly string[];
}

function sources(): Map<string, Source> {
  const files = readdirSync(SRC, { recursive: true, encoding: 'utf8' }).filter((file) => file.endsWith('.ts'));
  const map = new Map<string, Source>();
  for (const file of files) {
    const text = readFileSync(join(SRC, file), 'utf8');
    const local: string[] = [];
    const packages: string[] = [];
    // `import … from 'x'`, `export … from 'x'`, `import 'x'`, `import('x')`, across lines.
    const specifier = /(?:\bfrom\s*|\bimport\s*\(?\s*)'([^']+)'/g;
    for (const match of text.matchAll(specifier)) {
      const spec = match[1] as string;
      if (spec.startsWith('.')) local.push(normalize(join(dirname(file), spec)).replace(/\.js$/, '.ts'));
      else if (!spec.startsWith('node:')) packages.push(spec.split('/')[0] as string);
    }
    map.set(file, { file, local, packages });
  }
  return map;
}

/** The import cycles, each as the files on it (Tarjan's strongly connected components of two files or more). */
function cycles(graph: Map<string, Source>): string[][] {
  let index = 0;
  const indexOf = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (file: string): void => {
    indexOf.set(file, index);
    low.set(file, index);
    index += 1;
    stack.push(file);
    onStack.add(file);
    for (const next of graph.get(file)?.local ?? []) {
      if (!graph.has(next)) continue;
      if (!indexOf.has(next)) {
        visit(next);
        low.set(file, Math.min(low.get(file) as number, low.get(next) as number));
      } else if (onStack.has(next)) {
        low.set(file, Math.min(low.get(file) as number, indexOf.get(next) as number));
      }
    }
    if (low.get(file) !== indexOf.get(file)) return;
    const component: string[] = [];
    for (let top = stack.pop(); top !== undefined; top = stack.pop()) {
      onStack.delete(top);
      component.push(top);
      if (top === file) break;
    }
    if (component.length > 1) found.push(component.sort());
  };
  for (const file of graph.keys()) if (!indexOf.has(file)) visit(file);
  return found;
}

function reachableFrom(graph: Map<string, Source>, entry: string): Set<string> {
  const seen = new Set<string>();
  const walk = (file: string): void => {
    if (seen.has(file)) return;
    seen.add(file);
    for (const next of graph.get(file)?.local ?? []) walk(next);
  };
  walk(entry);
  return seen;
}

function hostLayer(file: string): number | null {
  const match = /^host\/([^/]+)\//.exec(file);
  if (match === null) return null;
  return HOST_LAYERS.indexOf(match[1] as (typeof HOST_LAYERS)[number]);
}

describe('the library structure', () => {
  const graph = sources();

  it('reads every source file and the imports it makes', () => {
    expect(graph.size).toBeGreaterThan(60);
    expect(graph.get('host/pool/pool.ts')?.local).toContain('host/pool/core.ts');
  });

  it('has no import cycle, of values or of types', () => {
    expect(cycles(graph)).toEqual([]);
  });

  it('puts every file of host/ in one of its parts, and imports only point down from part to part', () => {
    const problems: string[] = [];
    for (const { file, local } of graph.values()) {
      if (!file.startsWith('host/')) continue;
      const from = hostLayer(file);
      if (from === null || from < 0) {
        problems.push(`${file} is in no part`);
        continue;
      }
      for (const target of local) {
        const to = hostLayer(target);
        if (to !== null && to < from) problems.push(`${file} imports ${target}, a part above it`);
      }
    }
    expect(problems).toEqual([]);
  });

  it('keeps the host out of the worker, the protocol, the store and the public modules', () => {
    const problems: string[] = [];
    for (const { file, local } of graph.values()) {
      if (file.startsWith('host/')) continue;
      // The facades: index.ts re-exports the pool, internal.ts what the server uses of the host.
      if (file === 'index.ts' || file === 'internal.ts') continue;
      for (const target of local) if (target.startsWith('host/')) problems.push(`${file} imports ${target}`);
    }
    expect(problems).toEqual([]);
  });

  it('loads no zod and nothing of the host in a worker, whatever the worker entry imports', () => {
    const loaded = reachableFrom(graph, 'worker/entry.ts');
    expect(loaded.size).toBeGreaterThan(5);
    expect([...loaded].filter((file) => file.startsWith('host/'))).toEqual([]);
    const withZod = [...loaded].filter((file) => graph.get(file)?.packages.includes('zod'));
    expect(withZod).toEqual([]);
  });

  it('makes every SandpoolError in the errors module', () => {
    const elsewhere = [...graph.keys()].filter(
      (file) => file !== 'errors.ts' && readFileSync(join(SRC, file), 'utf8').includes('new SandpoolError('),
    );
    expect(elsewhere).toEqual([]);
  });

  it('lists each part of host/ it checks, and no part that does not exist', () => {
    const parts = readdirSync(join(SRC, 'host'), { withFileTypes: true })
      .filter((entry) => entry.isDirectory())
      .map((entry) => entry.name)
      .sort();
    expect(parts).toEqual([...HOST_LAYERS].sort());
  });
});
