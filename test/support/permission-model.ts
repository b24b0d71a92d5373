import { Worker } from 'node:worker_threads';

/**
 * Whether this Node applies --allow-fs-read given in a worker's execArgv (it does on 20, 24
 * and 26; what looked unrestricted on 24 was its grant of the host's working directory to
 * every thread, which sandpool now turns off: strict-containment.test.ts). Detected the way a
 * user would see it, not read off a version.
 */
export const fsRestrictedInThreads = await new Promise<boolean>((resolve) => {
  const flag = process.allowedNodeEnvironmentFlags.has('--permission') ? '--permission' : '--experimental-permission';
  const worker = new Worker(
    "require('node:worker_threads').parentPort.postMessage(process.permission.has('fs.read', '/etc'))",
    { eval: true, execArgv: [flag, '--allow-fs-read=/nonexistent'] },
  );
  worker.once('message', (allowed: boolean) => resolve(!allowed));
  worker.once('error', () => resolve(true));
});
