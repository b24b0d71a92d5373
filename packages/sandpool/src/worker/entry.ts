/**
 * Worker entry, in a worker thread or a child process: opens the protocol's link before any
 * agent code runs (see openLink), then a blank runtime until `load` names its key's module.
 * No zod here: it would cost every worker megabytes.
 */
import { readFileSync, writeSync } from 'node:fs';
import { Socket } from 'node:net';
import { Readable } from 'node:stream';
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { isDenialList } from '../protocol/checks.js';
import { encodeFrame, FROM_CHILD_FD, FrameReader, TO_CHILD_FD } from '../protocol/frames.js';
import {
  type Deniable,
  type FromWorker,
  type LoadRequest,
  MEMORY_USAGE_SYMBOL,
  MUST_DROP,
  type ToWorker,
  type WorkerBoot,
} from '../protocol/messages.js';
import { toRemoteError } from '../protocol/remote-error.js';
import { defineAgentGlobal } from './agent-global.js';
import { Heartbeat } from './heartbeat.js';
import { HostProxy } from './host-proxy.js';
import { LoadFailure, loadAgent, preloadFor, preloadSyntax, preloadVerifier } from './load.js';
import { lockDown } from './lockdown.js';
import { OutputGate } from './output.js';
import { Runtime } from './runtime.js';

if (isMainThread) leaveLaunch();
const tid = threadId();
const link = openLink();
delete (process as { _getActiveHandles?: unknown })._getActiveHandles;
// What the coordinator's memory probe reads on Node 20 (host/memory-probe.ts) and what the
// heartbeat sends: the function as it is now, out of agent code's reach.
const memoryUsage = process.memoryUsage.bind(process);
Object.defineProperty(globalThis, Symbol.for(MEMORY_USAGE_SYMBOL), { value: memoryUsage });
const post = link.post;
if (isMainThread && process.argv.includes(MUST_DROP)) preloadSyntax();

/**
 * A child process of a root host starts as root, so Node and this runtime load wherever they
 * are installed, and drops to the uid:gid its load names (its swarm's) when the load arrives,
 * before the agent is imported: no agent code runs as root, and none can regain it. What the
 * load will import is loaded first, while it can still be read (amaro, which explains syntax
 * errors on Node 20, is not: past the drop that explanation may be missing). A child started
 * with MUST_DROP whose load names no user, or that cannot drop, exits before any agent code runs.
 */
async function dropPrivileges(request: LoadRequest): Promise<void> {
  const index = process.argv.indexOf(MUST_DROP);
  if (index < 0) return;
  process.argv.splice(index, 1);
  const [uid, gid] = request.user ?? [];
  try {
    if (!isId(uid) || !isId(gid) || process.setuid === undefined) throw new Error('no valid uid:gid given');
    await preloadFor(request);
    process.setgroups?.([]);
    process.setgid?.(gid);
    process.setuid(uid);
    if (process.getuid?.() !== uid || process.geteuid?.() !== uid) throw new Error(`still uid ${process.geteuid?.()}`);
  } catch (error) {
    process.stderr.write(`sandpool: cannot drop privileges: ${(error as Error).message}\n`);
    process.exit(1);
  }
}

function isId(value: number | undefined): value is number {
  return value !== undefined && Number.isInteger(value) && value >= 0;
}

/** The protocol's two ends in this worker, whichever kind of worker it is. */
interface Link {
  post(message: FromWorker, transfer?: ArrayBuffer[]): void;
  listen(listener: (message: ToWorker) => void): void;
}

/**
 * A thread takes its private port out of `workerData` and closes `parentPort`, so agent
 * code can neither forge protocol messages nor read the coordinator's. A child process
 * (isolation 'process') talks over its private pipes (in protocol/frames.ts's frames), which agent code in the same process could reach: there the process boundary, and
 * the checks on every message, are the guard, and what it could forge is only its own key's
 * answers. The child ends when the channel does, so a host that dies leaves no agent running.
 */
function openLink(): Link {
  if (!isMainThread) {
    const boot = workerData as Partial<WorkerBoot> | null;
    if (parentPort === null || boot?.port === undefined) {
      throw new Error('sandpool worker entry must run in a sandpool worker thread');
    }
    const port = boot.port;
    // Agent code imports the same `workerData` object and can list ref'ed handles: neither
    // may lead it to the port.
    delete boot.port;
    parentPort.close();
    // Bound now: agent code may replace MessagePort.prototype.postMessage in this thread.
    const postMessage = port.postMessage.bind(port);
    return {
      post: (message, transfer) => postMessage(message, transfer),
      listen: (listener) => port.on('message', listener),
    };
  }
  const channel = new Socket({ fd: TO_CHILD_FD, readable: true, writable: false });
  // Its stdin is the channel: `process.stdin` would open it a second time (EEXIST, in agent
  // code that only looked). It is what an ignored stdin was, a stream at its end.
  const stdin = new Readable({ read: () => stdin.push(null) });
  Object.defineProperty(process, 'stdin', { configurable: true, enumerable: true, get: () => stdin });
  const exit = (): never => process.exit(0);
  channel.on('end', exit);
  channel.on('error', exit);
  /**
   * Frames posted while a chunk of the host's is being handled: they leave together once it
   * is, in one write, so the host wakes once for the replies to a chunk of calls, not once
   * per message in it.
   */
  let held: Buffer[] | null = null;
  return {
    // A channel copies what it sends: there is nothing to transfer.
    post: (message) => {
      const frame = encodeFrame(message);
      if (held === null) writeFrame(frame);
      else held.push(frame);
    },
    listen: (listener) => {
      const reader = new FrameReader(listener as (message: unknown) => void);
      channel.on('data', (chunk: Buffer) => {
        held = [];
        try {
          reader.push(chunk);
        } catch {
          exit();
        } finally {
          const frames = held;
          held = null;
          writeFrames(frames);
        }
      });
    },
  };
}

/**
 * A child in a cell was started from its entry's folder, its flags in NODE_OPTIONS (so that no
 * host path is on its command line: see the host's Cage.command): it goes back to `/`, and the
 * flags stay out of the environment agent code and its children see.
 */
function leaveLaunch(): void {
  delete process.env.NODE_OPTIONS;
  try {
    process.chdir('/');
  } catch {
    // Not in a cell's folder tree (a child without one started at `/` already).
  }
}

/** Frames this small together leave in one write; larger ones (a result's bytes) are not copied to join them. */
const JOINED_BYTES = 64 * 1024;

function writeFrames(frames: readonly Buffer[]): void {
  let bytes = 0;
  for (const frame of frames) bytes += frame.length;
  if (frames.length > 1 && bytes <= JOINED_BYTES) return writeFrame(Buffer.concat(frames, bytes));
  for (const frame of frames) writeFrame(frame);
}

/** A whole frame out (or frames joined); a host that has gone ends the child. */
function writeFrame(frame: Buffer): void {
  for (let at = 0; at < frame.length; ) {
    try {
      at += writeSync(FROM_CHILD_FD, frame, at);
    } catch (error) {
      // Agent code may have made the pipe non-blocking: wait for room as a blocking write would.
      if ((error as NodeJS.ErrnoException).code !== 'EAGAIN') process.exit(0);
      Atomics.wait(PAUSE, 0, 0, 1);
    }
  }
}

const PAUSE = new Int32Array(new SharedArrayBuffer(4));

const output = new OutputGate(post);

const runtime = new Runtime(post);
let heartbeat: Heartbeat | null = null;
const host = new HostProxy(post);
let loading = false;
const lockedAtBoot = bootStrictSpare();

/**
 * A strict spare (see WorkerBoot) does now what its load would, while it waits for its key:
 * it loads the verifier and applies its denials. Its key's load must name the same denials.
 */
function bootStrictSpare(): readonly Deniable[] | null {
  const boot = isMainThread ? null : (workerData as Partial<WorkerBoot> | null);
  if (boot?.verifies !== true) return null;
  const { deny } = boot;
  // Agent code imports this object: it finds nothing of how its worker booted.
  delete boot.verifies;
  delete boot.deny;
  if (!isDenialList(deny)) throw new Error('sandpool: a strict spare booted with a malformed denial list');
  preloadVerifier();
  lockDown(deny);
  return deny;
}

link.listen((message) => {
  switch (message.t) {
    case 'calls':
      heartbeat?.quicken();
      return runtime.onCalls(message.calls, message.shared === true, message.trace ?? null);
    case 'cancel':
      return runtime.cancel(message.id, message.why);
    case 'out-ack':
      return output.acknowledge(message.bytes);
    case 'beat':
      return heartbeat?.requested();
    case 'stream':
      heartbeat?.quicken();
      return runtime.onStream(message);
    case 'credit':
      return runtime.credit(message.id, message.n);
    case 'host-done':
      return host.answer(message);
    case 'host-chunk':
      return host.chunk(message);
    case 'host-end':
      return host.end(message);
    case 'load':
      if (loading) return;
      loading = true;
      return void onLoad(message);
  }
});

/**
 * This thread's kernel id, for the coordinator's CPU accounting and priorities; read now,
 * before agent code could fake the file. Strict permissions grant exactly this file.
 */
function threadId(): number {
  try {
    return Number(readFileSync('/proc/thread-self/stat', 'latin1').split(' ', 1)[0]) || 0;
  } catch {
    return 0; // not Linux, or not granted: the worker goes unaccounted
  }
}

async function onLoad(request: LoadRequest): Promise<void> {
  if (isMainThread) await dropPrivileges(request);
  try {
    if (request.deny !== undefined && !isDenialList(request.deny)) throw new Error('a malformed denial list');
    const deny = request.deny ?? [];
    if (lockedAtBoot === null) lockDown(deny);
    else if (deny.length !== lockedAtBoot.length || deny.some((name, i) => name !== lockedAtBoot[i])) {
      throw new Error("a load whose denials are not its spare's");
    }
  } catch (error) {
    // No agent runs under a lockdown that did not take.
    post({ t: 'load-failed', code: 'ERR_SANDPOOL_MODULE_LOAD', error: toRemoteError(error) });
    return;
  }
  defineAgentGlobal(request.key, host.api);
  const { heartbeatMs, idleHeartbeatMs } = request;
  if (heartbeatMs !== undefined && heartbeatMs > 0) {
    const busy = (): boolean => runtime.busy;
    heartbeat = new Heartbeat(post, memoryUsage, busy, heartbeatMs, idleHeartbeatMs ?? heartbeatMs);
  }
  try {
    runtime.setModule(await loadAgent(request));
    post({ t: 'ready', tid });
  } catch (error) {
    if (error instanceof LoadFailure) post({ t: 'load-failed', code: error.code, error: toRemoteError(error.failure) });
    else post({ t: 'load-failed', code: 'ERR_SANDPOOL_MODULE_LOAD', error: toRemoteError(error) });
  }
}
