import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { eventually, installCleanup, openPool } from './support/pool.js';
import { counterAgent, makeRoot } from './support/root.js';

installCleanup();

const run = promisify(execFile);

describe('worker output', () => {
  it('reaches onOutput one line at a time, labelled with the key', async () => {
    const root = await makeRoot({
      ...(await counterAgent('a')),
      'a/live/talker.mjs': `
        export function talk() {
          console.log('first line');
          process.stdout.write('partial ');
          process.stdout.write('line\\nlast without newline');
          console.error('to stderr');
          return 'said';
        }`,
    });
    const lines: string[] = [];
    const pool = openPool({ root, onOutput: (key, stream, text) => lines.push(`${stream} ${key} ${text}`) });
    expect(await pool.call('a/talker', 'talk')).toBe('said');
    await eventually(() => lines.length === 3);
    expect(lines).toEqual(['stdout a/talker first line', 'stdout a/talker partial line', 'stderr a/talker to stderr']);
    await pool.close();
    // The unfinished line is flushed when the worker ends.
    expect(lines).toContain('stdout a/talker last without newline');
  });
});

describe('the host process', () => {
  it('exits by itself while idle and spare workers are alive', async () => {
    const root = await makeRoot(await counterAgent('a'));
    const script = `
      import { createPool } from 'sandpool';
      const pool = createPool({ root: ${JSON.stringify(root)}, spareWorkers: 2, loadTimeoutMs: 60_000 });
      await pool.call('a/notifier_agent', 'notify', ['x']);
      await pool.remote('a/notifier_agent').add(1, 2);
      console.log(JSON.stringify(pool.stats()));
    `;
    // Kept alive by its workers, it would wait for their idle timeout (60 s) or forever: the
    // bound is far below that, and far above a start and a call on a loaded machine.
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], {
      cwd: new URL('.', import.meta.url).pathname,
      timeout: 40_000,
    });
    expect(JSON.parse(stdout)).toMatchObject({ workers: 1, idle: 1 });
  });

  it("warns once when the host runs with --max-old-space-size, which overrides the workers' caps", async () => {
    const root = await makeRoot(await counterAgent('a'));
    const script = `
      import { createPool } from 'sandpool';
      createPool({ root: ${JSON.stringify(root)}, spareWorkers: 0 });
      createPool({ root: ${JSON.stringify(root)}, spareWorkers: 0 });
    `;
    const options = { cwd: new URL('.', import.meta.url).pathname, timeout: 40_000 };
    const capped = await run(
      process.execPath,
      ['--max-old-space-size=512', '--input-type=module', '-e', script],
      options,
    );
    expect(capped.stderr.match(/SANDPOOL_HEAP_CAP_OVERRIDDEN/g)).toHaveLength(1);
    const plain = await run(process.execPath, ['--input-type=module', '-e', script], options);
    expect(plain.stderr).not.toContain('SANDPOOL_HEAP_CAP_OVERRIDDEN');
  });
});
