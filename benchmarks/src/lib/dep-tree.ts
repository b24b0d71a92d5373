import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface DepTree {
  /** Package names, as the stem imports them. */
  packages: string[];
  /** JavaScript files written (package.json files not counted). */
  files: number;
  bytes: number;
  /** What the stem's `check()` must return: every module ran. */
  expected: number;
}

/**
 * `packages` packages under `<root>/node_modules`, each an index and `modulesPer - 1` modules
 * it imports: a dependency tree of `packages × modulesPer` files that every cold start must
 * resolve, read and compile. Half are ES modules, half CommonJS, as in a real tree. Each
 * module is used, so a bundler cannot drop it.
 */
export async function writeDepTree(root: string, packages: number, modulesPer: number): Promise<DepTree> {
  const names: string[] = [];
  let files = 0;
  let bytes = 0;
  let expected = 0;
  const write = async (path: string, text: string, counted = true): Promise<void> => {
    await writeFile(path, text);
    if (!counted) return;
    files += 1;
    bytes += Buffer.byteLength(text);
  };
  for (let p = 0; p < packages; p += 1) {
    const name = `dep-${String(p).padStart(2, '0')}`;
    const esm = p % 2 === 0;
    const dir = join(root, 'node_modules', name);
    await mkdir(join(dir, 'lib'), { recursive: true });
    await write(
      join(dir, 'package.json'),
      `${JSON.stringify({ name, version: '1.0.0', type: esm ? 'module' : 'commonjs', main: 'index.js' })}\n`,
      false,
    );
    const members: string[] = [];
    for (let m = 1; m < modulesPer; m += 1) {
      const member = `m${String(m).padStart(3, '0')}`;
      members.push(member);
      const seed = p * 1000 + m;
      expected += seed;
      await write(join(dir, 'lib', `${member}.js`), moduleSource(name, member, seed, esm));
    }
    const index = esm
      ? [
          ...members.map((member) => `import * as ${member} from './lib/${member}.js';`),
          `const all = [${members.join(', ')}];`,
          'export function total() { return all.reduce((sum, mod) => sum + mod.seed(), 0); }',
          '',
        ]
      : [
          `const all = [${members.map((member) => `require('./lib/${member}.js')`).join(', ')}];`,
          'exports.total = function total() { return all.reduce((sum, mod) => sum + mod.seed(), 0); };',
          '',
        ];
    await write(join(dir, 'index.js'), index.join('\n'));
    names.push(name);
  }
  return { packages: names, files, bytes, expected };
}

function moduleSource(pkg: string, member: string, seed: number, esm: boolean): string {
  const body = [
    `const NAME = '${pkg}/${member}';`,
    `const TABLE = [${Array.from({ length: 16 }, (_, i) => (seed * 31 + i * 7) % 997).join(', ')}];`,
    'function mix(x) {',
    '  let y = x;',
    '  for (let i = 0; i < TABLE.length; i += 1) y = (y * 33 + TABLE[i]) % 1000003;',
    '  return y;',
    '}',
    'function describe() {',
    '  return { name: NAME, size: TABLE.length, first: TABLE[0], last: TABLE[TABLE.length - 1] };',
    '}',
    'class Entry {',
    '  constructor(value) { this.value = value; }',
    '  get mixed() { return mix(this.value); }',
    "  toString() { return NAME + ':' + this.value; }",
    '}',
    `function seed() { return ${seed}; }`,
  ];
  const exports = esm
    ? ['export { mix, describe, Entry, seed };']
    : ['module.exports = { mix, describe, Entry, seed };'];
  return `${[...body, ...exports, ''].join('\n')}`;
}

/** The stem: imports every package, runs each module once, answers add(a, b). */
export function depStemSource(tree: DepTree): string {
  return [
    ...tree.packages.map((name, i) => `import * as p${i} from '${name}';`),
    `const CHECK = [${tree.packages.map((_, i) => `p${i}`).join(', ')}].reduce((sum, p) => sum + (p.total ?? p.default.total)(), 0);`,
    'export function add(a, b) { return a + b; }',
    'export function check() { return CHECK; }',
    '',
  ].join('\n');
}
