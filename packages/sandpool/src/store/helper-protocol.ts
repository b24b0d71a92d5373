import type { SandpoolIssue } from '../errors.js';
import type { SnapshotStoreOptions } from './store.js';

/** What the snapshot helper runs for the coordinator. */
export type HelperOp = 'create' | 'verify' | 'sign' | 'remove' | 'point' | 'get' | 'list' | 'live' | TransferOp;

/** An artifact's bytes to or from the fleet's database (see postgres-transfer.ts). */
export type TransferOp = 'upload' | 'download';

export interface HelperRequest {
  readonly id: number;
  readonly op: HelperOp;
  readonly options: SnapshotStoreOptions;
  readonly swarm: string;
  /** `list` and transfers: empty; `live`: the stem a key starts. */
  readonly name: string;
  /** `point` only: the snapshot whose content `name` is pointed at. */
  readonly target?: string;
  /** Transfers only (`name` empty): the artifact, and the database's connection string. */
  readonly digest?: string;
  readonly postgres?: string;
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
