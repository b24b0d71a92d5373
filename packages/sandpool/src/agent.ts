/**
 * Types of the `sandpool` global the worker defines before an agent's module loads. An agent
 * written in TypeScript writes `import type {} from 'sandpool/agent'`; nothing is imported at
 * run time, so the agent needs no dependency in its folder.
 *
 * Capabilities are typed by augmenting `SandpoolHost`:
 * ```ts
 * declare global {
 *   interface SandpoolHost {
 *     lookupUser(id: number): Promise<{ id: number; name: string }>;
 *   }
 * }
 * ```
 */
export {};

declare global {
  /** The host capabilities this agent expects; empty means any name, untyped. */
  interface SandpoolHost {}

  /** `sandpool.host` before any augmentation: every name is an async function of unknown result. */
  type SandpoolHostCalls = keyof SandpoolHost extends never
    ? Readonly<Record<string, (...args: unknown[]) => Promise<unknown>>>
    : Readonly<SandpoolHost>;

  interface SandpoolAgentGlobal {
    /** This worker's key in text form, e.g. `a1b2@jan/notifier_agent`. */
    readonly key: string;
    /**
     * The signal of the call running now (it follows the call through its awaits): it fires
     * on abort, timeout, a stream's consumer leaving, and close. Outside a call it is the
     * worker's own and never fires.
     */
    readonly signal: AbortSignal;
    /** Epoch ms by which the call running now must settle, or null. */
    readonly deadline: number | null;
    /**
     * The W3C `traceparent` of the call running now (its `sandpool.call` span in the host),
     * or null when the host traces nothing: an agent's own spans join the caller's trace by
     * taking it as their parent (`propagation.extract(context.active(), { traceparent })`).
     */
    readonly traceparent: string | null;
    /**
     * The capabilities the pool declared (`createPool({ host })`), each async. A name it does
     * not declare rejects with code `ERR_SANDPOOL_HOST_NOT_FOUND`; a call outside a running
     * agent call rejects with `ERR_SANDPOOL_ABORTED`.
     */
    readonly host: SandpoolHostCalls;
    /** Marks a result (or a streamed chunk) whose ArrayBuffers move to the host instead of being copied. */
    transfer<T extends object>(value: T, buffers: readonly ArrayBuffer[]): T;
  }

  var sandpool: SandpoolAgentGlobal;
}
