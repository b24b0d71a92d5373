import type { SandpoolIssue } from '../errors.js';
import type { SnapshotStoreOptions } from './store.js';

/** What the snapshot helper runs for the coordinator. */
export type HelperOp = 'create' | 'verify' | 'sign' | 'remove' | 'point' | 'get' | 'list' | 'live';

export interface HelperRequest {
  readonly id: number;
  readonly op: HelperOp;
  readonly options: SnapshotStoreOptions;
  readonly swarm: string;
  /** `list` and `live`: empty. */
  readonly name: string;
  /** `point` only: the snapshot whose content `name` is pointed at. */
  readonly target?: string;
}

/** Sent the moment a request arrives, before it runs: what a helper that died never took is safe to send again. */
export interface HelperReceived {
  readonly id: number;
  readonly received: true;
}

export type HelperReply =
  | { readonly id: number; readonly ok: true; readonly value: unknown }
  | {
      readonly id: number;
      readonly ok: false;
      readonly error: {
        readonly code: string | null;
        readonly message: string;
        readonly systemCode?: string | undefined;
        readonly cause?: string | undefined;
        readonly key?: string | undefined;
        readonly issues?: readonly SandpoolIssue[] | undefined;
      };
    };
