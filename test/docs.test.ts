import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/**
 * Every code block of the docs is run, written as a file for the blocks after it, or
 * marked as a fragment, so an example cannot rot unnoticed:
 *   <!-- fragment -->            (or `<!-- fragment: why -->`) the block is not run
 *   <!-- file: path/in/project --> the block is written there, for later blocks to use
 *   a `js` block                 runs as an ES module with `sandpool`, `@sandpool/server` and
 *                                `@sandpool/cli` installed, in a temp folder per document, and must exit 0
 */
const WORKSPACE = fileURLToPath(new URL('../', import.meta.url));
const DOCS = ['README.md', 'docs/running-as-a-service.md', 'packages/sandpool/README.md', 'packages/cli/README.md'];

interface Block {
  readonly line: number;
  readonly lang: string;
  readonly code: string;
  readonly marker: { kind: 'fragment' } | { kind: 'file'; path: string } | null;
}

function blocksOf(text: string): Block[] {
  const lines = text.split('\n');
  const blocks: Block[] = [];
  for (let at = 0; at < lines.length; at += 1) {
    const open = /^```(\S*)\s*$/.exec(lines[at] ?? '');
    if (open === null) continue;
    const start = at;
    const body: string[] = [];
    for (at += 1; at < lines.length && lines[at] !== '```'; at += 1) body.push(lines[at] ?? '');
    const previous = (lines[start - 1] ?? '').trim();
    const file = /^<!-- file: (\S+) -->$/.exec(previous)?.[1];
    const marker =
      file !== undefined
        ? { kind: 'file' as const, path: file }
        : /^<!-- fragment(:.*)? -->$/.test(previous)
          ? { kind: 'fragment' as const }
          : null;
    blocks.push({ line: start + 1, lang: open[1] ?? '', code: `${body.join('\n')}\n`, marker });
  }
  return blocks;
}

function node(file: string, cwd: string): Promise<{ status: number | null; output: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [file], { cwd, timeout: 120_000 }, (error, stdout, stderr) => {
      resolve({
        status: error === null ? 0 : typeof error.code === 'number' ? error.code : null,
        output: stdout + stderr,
      });
    });
  });
}

describe.each(DOCS)('%s', (doc) => {
  // Each runnable block is a node process of its own, run one after another: on a loaded machine that takes a while.
  it('has every code block run, written as a file, or marked as a fragment; the runnable ones exit 0', {
    timeout: 180_000,
  }, async () => {
    const blocks = blocksOf(await readFile(join(WORKSPACE, doc), 'utf8'));
    expect(blocks.length).toBeGreaterThan(0);
    const unmarked = blocks.filter((block) => block.marker === null && block.lang !== 'js');
    expect(unmarked.map((block) => `${doc}:${block.line} (${block.lang || 'no language'})`)).toEqual([]);

    const project = await mkdtemp(join(tmpdir(), 'sandpool-docs-'));
    try {
      await mkdir(join(project, 'node_modules'));
      await mkdir(join(project, 'node_modules', '@sandpool'));
      await symlink(join(WORKSPACE, 'packages', 'sandpool'), join(project, 'node_modules', 'sandpool'));
      await symlink(join(WORKSPACE, 'packages', 'server'), join(project, 'node_modules', '@sandpool', 'server'));
      await symlink(join(WORKSPACE, 'packages', 'cli'), join(project, 'node_modules', '@sandpool', 'cli'));
      // The Telemetry example sets OpenTelemetry up as an application does, with the SDK the tests use.
      await mkdir(join(project, 'node_modules', '@opentelemetry'));
      for (const name of ['api', 'context-async-hooks', 'sdk-trace-base']) {
        const from = join(WORKSPACE, 'test', 'node_modules', '@opentelemetry', name);
        await symlink(from, join(project, 'node_modules', '@opentelemetry', name));
      }
      await writeFile(join(project, 'package.json'), '{"type":"module"}\n');
      for (const block of blocks) {
        if (block.marker?.kind === 'fragment') continue;
        if (block.marker?.kind === 'file') {
          await mkdir(dirname(join(project, block.marker.path)), { recursive: true });
          await writeFile(join(project, block.marker.path), block.code);
          continue;
        }
        const file = join(project, `block-${block.line}.mjs`);
        await writeFile(file, block.code);
        const result = await node(file, project);
        expect({ where: `${doc}:${block.line}`, ...result }).toMatchObject({ status: 0 });
      }
    } finally {
      await rm(project, { recursive: true, force: true });
    }
  });
});

describe('the block reader', () => {
  it('sees markers only on the line right before a block', () => {
    const text = [
      '<!-- fragment -->',
      '```sh',
      'x',
      '```',
      '',
      '<!-- file: a.mjs -->',
      '```js',
      'y',
      '```',
      '```js',
      'z',
      '```',
    ];
    expect(blocksOf(text.join('\n')).map((block) => block.marker)).toEqual([
      { kind: 'fragment' },
      { kind: 'file', path: 'a.mjs' },
      null,
    ]);
  });
});
