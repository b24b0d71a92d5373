import { type FSWatcher, watch } from 'node:fs';
import { liveDir } from '../../store/layout.js';

const DEBOUNCE_MS = 50;

/**
 * One recursive watcher per swarm that has a live worker. A burst of writes (an editor
 * saving, a deploy copying files) becomes one reload, fired after the burst goes quiet.
 */
export class LiveWatcher {
  private readonly watchers = new Map<string, { watcher: FSWatcher; timer: NodeJS.Timeout | undefined }>();

  constructor(
    private readonly root: string,
    private readonly onChange: (swarm: string) => void,
  ) {}

  watch(swarm: string): void {
    if (this.watchers.has(swarm)) return;
    let watcher: FSWatcher;
    try {
      watcher = watch(liveDir(this.root, swarm), { recursive: true, persistent: false });
    } catch {
      return; // The folder vanished: there is nothing to reload.
    }
    const entry = { watcher, timer: undefined as NodeJS.Timeout | undefined };
    watcher.on('change', () => {
      clearTimeout(entry.timer);
      entry.timer = setTimeout(() => this.onChange(swarm), DEBOUNCE_MS);
      entry.timer.unref();
    });
    watcher.on('error', () => this.unwatch(swarm));
    this.watchers.set(swarm, entry);
  }

  unwatch(swarm: string): void {
    const entry = this.watchers.get(swarm);
    if (entry === undefined) return;
    clearTimeout(entry.timer);
    entry.watcher.close();
    this.watchers.delete(swarm);
  }

  close(): void {
    for (const swarm of [...this.watchers.keys()]) this.unwatch(swarm);
  }
}
