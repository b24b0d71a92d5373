import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { closed, isErrorCode, rebuilt } from '../errors.js';
import type { HelperOp, HelperRequest, TransferOp } from './helper-protocol.js';
import type { LiveStem } from './live.js';
import type { SnapshotInfo, SnapshotStoreOptions } from './store.js';

const HELPER_ENTRY = fileURLToPath(new URL('./helper-entry.js', import.meta.url));
/** The host's permission flags, which the helper keeps: it never has more rights than its host. */
const PERMISSION_FLAG = /^--(experimental-)?permission$|^--allow-/;

/** A SnapshotInfo as it crosses a process boundary (the store's helper, the server's answers). */
export const SnapshotInfoSchema = z.strictObject({
  swarm: z.string(),
  name: z.string(),
  createdAt: z.string(),
  files: z.number(),
  bytes: z.number(),
  digest: z.string(),
  signed: z.boolean(),
  stems: z.array(z.string()),
});
const Digest = z.string().regex(/^[0-9a-f]{64}$/);
const LiveStemSchema = z.strictObject({
  digest: Digest,
  failure: z
    .string()
    .max(64 * 1024)
    .nullable(),
  sha256: Digest.nullable(),
  bytes: z.number().int().nonnegative().nullable(),
});
const Received = z.strictObject({ id: z.number(), received: z.literal(true) });
const Reply = z.discriminatedUnion('ok', [
  z.strictObject({
    id: z.number(),
    ok: z.literal(true),
    value: z.union([SnapshotInfoSchema, z.array(SnapshotInfoSchema), LiveStemSchema, z.null()]),
  }),
  z.strictObject({
    id: z.number(),
    ok: z.literal(false),
    error: z.strictObject({
      code: z.string().nullable(),
      message: z.string(),
      /** A system error's code (EACCES, ENOSPC) where the error was no SandpoolError. */
      systemCode: z.string().max(64).optional(),
      /** What the error's cause said (esbuild's messages, an unsafe file). */
      cause: z.string().optional(),
      key: z.string().optional(),
      issues: z
        .array(
          z.strictObject({
            path: z.array(z.union([z.string(), z.number()])),
            message: z.string(),
            code: z.string().optional(),
          }),
        )
        .optional(),
    }),
  }),
]);
/** Everything a helper may send: an acknowledgement, or an answer. */
const FromHelper = z.union([Received, Reply]);

interface Waiting {
  readonly request: HelperRequest;
  /** The helper it was sent to: only that one's end fails it. */
  readonly child: ChildProcess;
  /** Whether the helper said it arrived: one that never arrived is safe to send to a new helper. */
  received: boolean;
  /** Whether it has been sent again already: a second loss is told, never a loop. */
  readonly resent: boolean;
  resolve(value: Answered): void;
  reject(error: Error): void;
}

type Answer = Pick<Waiting, 'resolve' | 'reject'>;
type Answered = SnapshotInfo | SnapshotInfo[] | LiveStem | null;

/**
 * The coordinator's end of the snapshot helper (see helper-entry.ts): started on first use,
 * unreferenced while nothing is asked of it, ended by `close()` once what it runs has answered.
 */
export class StoreHelper {
  private child: ChildProcess | null = null;
  private readonly waiting = new Map<number, Waiting>();
  /** Called once nothing waits: how a helper closed while busy ends. */
  private drained: Array<() => void> = [];
  private nextId = 1;
  private closed = false;

  constructor(private readonly options: SnapshotStoreOptions) {}

  /**
   * Whether to ask it: not once closed (the store still works, in the host), nor in a host
   * under the permission model without `--allow-child-process`, which cannot start it.
   */
  get available(): boolean {
    const permission = (process as { permission?: { has(scope: string): boolean } }).permission;
    return !this.closed && (permission === undefined || permission.has('child'));
  }

  run(op: 'remove', swarm: string, name: string): Promise<null>;
  run(op: 'point', swarm: string, name: string, target: string): Promise<SnapshotInfo>;
  run(op: 'list', swarm: string, name: ''): Promise<SnapshotInfo[]>;
  run(op: 'live', swarm: string, stem: string): Promise<LiveStem>;
  run(
    op: Exclude<HelperOp, 'remove' | 'point' | 'list' | 'live' | TransferOp>,
    swarm: string,
    name: string,
  ): Promise<SnapshotInfo>;
  run(op: HelperOp, swarm: string, name: string, target?: string): Promise<Answered> {
    return this.ask({ op, swarm, name, ...(target === undefined ? {} : { target }) });
  }

  /** Uploads an artifact of the root to the database, or downloads one into it (see postgres-transfer.ts). */
  transfer(op: TransferOp, swarm: string, digest: string, postgres: string): Promise<null> {
    return this.ask({ op, swarm, name: '', digest, postgres }) as Promise<null>;
  }

  private ask(what: Omit<HelperRequest, 'id' | 'options'>): Promise<Answered> {
    if (this.closed) return Promise.reject(closed()); // callers check `available` first
    const request: HelperRequest = { id: this.nextId++, options: this.options, ...what };
    return new Promise((resolve, reject) => this.send(request, { resolve, reject }, false));
  }

  private send(request: HelperRequest, answer: Answer, resent: boolean): void {
    // One whose channel has closed is ending: its exit fails only what was sent to it.
    const child = this.child?.connected === true ? this.child : this.start();
    const entry: Waiting = { request, child, received: false, resent, resolve: answer.resolve, reject: answer.reject };
    this.waiting.set(request.id, entry);
    this.referenced(true);
    // EPIPE: the helper died before the host saw its channel close. Its close fails or resends
    // what was sent to it; until then it must not be asked again.
    child.send(request, (error) => error !== null && this.forget(child));
  }

  /** A helper that cannot be trusted to answer is ended, and never asked again. */
  private forget(child: ChildProcess): void {
    if (this.child === child) this.child = null;
    child.kill('SIGKILL');
  }

  /**
   * Ends the helper: now when idle, or once what it runs has answered. close() does not wait
   * for a create, as a pool never waited for one it ran itself (it keeps the host alive until
   * it answers, as it would in the host); it waits for a live key's build, for `buildWaitMs`
   * at most: one that never ends (esbuild reading a FIFO in the tenant's folder) ends with the
   * helper then. After it, the store runs in the host.
   */
  async close(buildWaitMs = Number.POSITIVE_INFINITY): Promise<void> {
    this.closed = true;
    const child = this.child;
    if (child === null) return;
    if (this.waiting.size > 0) {
      // Not once ended: a helper killed below has no channel to end.
      this.drained.push(() => child.connected && child.disconnect());
      // A live key's build is the pool's own work, not a caller's: it is done, writes and all, when close() is.
      const building = [...this.waiting.values()].some((entry) => entry.request.op === 'live');
      if (building && !(await this.drainedWithin(buildWaitMs))) await this.kill(child);
      return;
    }
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.ref(); // close() waits for its exit, so the exit must keep the host alive
      child.disconnect();
      await exited;
    }
  }

  /** Whether what the helper runs answered within `ms`. */
  private async drainedWithin(ms: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const drained = new Promise<boolean>((resolve) => this.drained.push(() => resolve(true)));
    const late = new Promise<boolean>((resolve) => {
      if (Number.isFinite(ms)) timer = setTimeout(resolve, ms, false);
    });
    try {
      return await Promise.race([drained, late]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Ends a helper now, and resolves once it has exited (what it ran fails; see fail()). */
  private async kill(child: ChildProcess): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    this.forget(child);
    await exited;
  }

  private start(): ChildProcess {
    const flags = process.execArgv.filter((flag) => PERMISSION_FLAG.test(flag));
    const child = spawn(process.execPath, [...flags, HELPER_ENTRY], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      serialization: 'advanced',
    });
    this.child = child;
    child.on('message', (raw: unknown) => this.answer(child, raw));
    // A spawn that failed: no close may follow, and nothing was received.
    child.on('error', (error) => {
      this.forget(child);
      this.fail(child, new Error(`the snapshot helper process failed (${error.message})`, { cause: error }));
    });
    child.on('exit', () => {
      if (this.child === child) this.child = null;
    });
    // Close, not exit: it comes once the channel is read to its end, so every `received` the
    // helper sent before it died has been counted.
    child.on('close', (code, signal) => {
      this.fail(child, new Error(`the snapshot helper process ended (${signal ?? `exit ${code}`}) before it answered`));
    });
    return child;
  }

  private answer(child: ChildProcess, raw: unknown): void {
    const parsed = FromHelper.safeParse(raw);
    if (!parsed.success) {
      this.forget(child);
      return; // its close fails what was sent to it
    }
    const reply = parsed.data;
    const waiting = this.waiting.get(reply.id);
    if (waiting?.child !== child) return;
    if ('received' in reply) {
      waiting.received = true;
      return;
    }
    this.waiting.delete(reply.id);
    if (reply.ok) waiting.resolve(reply.value);
    else waiting.reject(errorOf(reply.error));
    if (this.waiting.size === 0) this.idle();
  }

  /**
   * What was sent to a helper that ended fails, except what it never received: that goes once
   * to a new helper, as it cannot have run.
   */
  private fail(child: ChildProcess, error: Error): void {
    for (const [id, entry] of this.waiting) {
      if (entry.child !== child) continue;
      this.waiting.delete(id);
      if (!entry.received && !entry.resent && !this.closed) this.send(entry.request, entry, true);
      else entry.reject(error);
    }
    if (this.waiting.size === 0) this.idle();
  }

  private idle(): void {
    this.referenced(false);
    for (const resolve of this.drained.splice(0)) resolve();
  }

  /** A helper with nothing to answer must not keep the host's process alive. */
  private referenced(on: boolean): void {
    const child = this.child;
    if (child === null) return;
    for (const handle of [child, child.channel]) {
      const ref = handle as { ref?: () => void; unref?: () => void } | null | undefined;
      if (on) ref?.ref?.();
      else ref?.unref?.();
    }
  }
}

type ReplyError = Extract<z.infer<typeof Reply>, { ok: false }>['error'];

function errorOf(error: ReplyError): Error {
  const code = error.code;
  if (!isErrorCode(code)) {
    const plain = new Error(error.message);
    if (error.systemCode !== undefined) Object.assign(plain, { code: error.systemCode });
    return plain;
  }
  return rebuilt(code, error.message, {
    ...(error.cause === undefined ? {} : { cause: new Error(error.cause) }),
    ...(error.key === undefined ? {} : { key: error.key }),
    ...(error.issues === undefined
      ? {}
      : {
          issues: error.issues.map(({ path, message, code }) =>
            code === undefined ? { path, message } : { path, message, code },
          ),
        }),
  });
}
