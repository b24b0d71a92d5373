import type { ResolvedKey } from '../key.js';
import type { Cell } from './cell.js';

/** Routing state of one key: the cell serving it and, during a reload, the one replacing it. */
export class KeyState {
  serving: Cell | null = null;
  candidate: Cell | null = null;
  /** Calls waiting and running, across every cell of the key. */
  pending = 0;
  /** Cells retired by a reload that have not exited yet. */
  replaced = 0;
  private reloadWaiters: Array<() => void> = [];

  constructor(readonly key: ResolvedKey) {}

  get unused(): boolean {
    return this.pending === 0 && this.serving === null && this.candidate === null && this.replaced === 0;
  }

  /** Resolves once the reloads now in flight have settled (see `settleReloads`). */
  waitForReload(): Promise<void> {
    return new Promise((resolve) => {
      this.reloadWaiters.push(resolve);
      this.settleReloads();
    });
  }

  /**
   * A reload has settled when no candidate is loading, the serving cell owes no reload of
   * its own, and every cell it replaced has exited (or the new code failed and the old stays).
   */
  settleReloads(): void {
    if (this.reloadWaiters.length === 0) return;
    if (this.candidate !== null || this.serving?.staleOnReady === true || this.replaced > 0) return;
    const waiters = this.reloadWaiters;
    this.reloadWaiters = [];
    for (const resolve of waiters) resolve();
  }
}
