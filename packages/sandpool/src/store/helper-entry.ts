/**
 * The snapshot helper: a child process of the coordinator that runs the store's file-heavy
 * operations (create, verify, sign, remove, point, live keys' builds, and the reads of get
 * and list) on a libuv pool and a thread of its own. In the host's
 * process they would queue behind tenants' async jobs (`crypto.pbkdf2`, `fs` reads) in the
 * one pool every thread shares. Only the coordinator talks to it, over its IPC channel.
 */
import { resolve } from 'node:path';
import { isSandpoolError } from '../errors.js';
import { DEFAULT_MAX_SNAPSHOT_BYTES } from './artifact.js';
import type { HelperReceived, HelperReply, HelperRequest } from './helper-protocol.js';
import { LiveArtifacts } from './live.js';
import type { SnapshotStore } from './store.js';

/** One store: a helper serves one pool, whose options every request repeats. */
let store: Promise<SnapshotStore> | null = null;
let live: LiveArtifacts | null = null;

async function run(request: HelperRequest): Promise<HelperReply> {
  try {
    if (request.op === 'live') {
      // The pool checked its options; the store (and the schemas it loads) waits for the first store operation.
      live ??= new LiveArtifacts(
        resolve(request.options.root),
        request.options.maxSnapshotBytes ?? DEFAULT_MAX_SNAPSHOT_BYTES,
      );
      return { id: request.id, ok: true, value: await live.get(request.swarm) };
    }
    // One store for every request, however many arrive while its module loads (it runs one build per swarm at a time).
    store ??= import('./store.js').then(({ SnapshotStore }) => new SnapshotStore(request.options));
    const opened = await store;
    const value =
      request.op === 'point'
        ? await opened.point(request.swarm, request.name, request.target ?? '')
        : request.op === 'list'
          ? await opened.list(request.swarm)
          : await opened[request.op](request.swarm, request.name);
    return { id: request.id, ok: true, value: value ?? null };
  } catch (error) {
    if (isSandpoolError(error)) {
      const { code, message, key } = error;
      // A symbol in a path cannot cross the channel; its description can.
      const issues = error.issues?.map((issue) => ({
        ...issue,
        path: issue.path.map((part) => (typeof part === 'symbol' ? String(part) : part)),
      }));
      const cause = error.cause instanceof Error ? error.cause.message : undefined;
      return { id: request.id, ok: false, error: { code, message, key, issues, cause } };
    }
    const systemCode = (error as { code?: unknown } | null)?.code;
    return {
      id: request.id,
      ok: false,
      error: {
        code: null,
        message: (error as Error | null)?.message ?? String(error),
        systemCode: typeof systemCode === 'string' ? systemCode : undefined,
      },
    };
  }
}

process.on('message', (request: HelperRequest) => {
  const received: HelperReceived = { id: request.id, received: true };
  // Run once the acknowledgement is written: one still queued here when the helper dies would
  // let the host send again a request that had begun.
  process.send?.(received, undefined, undefined, (error) => {
    if (error === null) void run(request).then((reply) => process.send?.(reply));
  });
});
// The coordinator closed the channel, or died: nothing is left to answer.
process.on('disconnect', () => process.exit(0));
// Ctrl-C or a service manager signals the whole process group: the host's own shutdown
// decides, and ends the helper by closing the channel once what it runs has answered.
process.on('SIGINT', () => {});
process.on('SIGTERM', () => {});
