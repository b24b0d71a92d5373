import { getHeapStatistics } from 'node:v8';

let warned = false;

/**
 * A host started with --max-old-space-size imposes it on its workers too (nodejs/node#43991),
 * so the pool's per-worker heap cap may not be the one in force. Say so once per process.
 */
export function warnIfHeapCapOverridden(limits: { maxOldGenerationSizeMb?: number | undefined }): void {
  if (warned) return;
  const flags = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)];
  const flag = flags.find((arg) => arg.startsWith('--max-old-space-size') || arg.startsWith('--max_old_space_size'));
  if (flag === undefined) return;
  warned = true;
  const hostMb = Math.round(getHeapStatistics().heap_size_limit / 2 ** 20);
  process.emitWarning(
    `the host runs with ${flag} (heap limit ${hostMb} MB), which overrides the workers' ` +
      `maxOldGenerationSizeMb ${limits.maxOldGenerationSizeMb ?? ''} (nodejs/node#43991)`,
    { code: 'SANDPOOL_HEAP_CAP_OVERRIDDEN' },
  );
}
