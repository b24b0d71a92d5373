import { closed, invalidArguments } from '../../errors.js';
import { issuesOf } from '../../issues.js';
import { type ResolvedKey, resolveKey } from '../../key.js';
import { type InvalidateSelector, InvalidateSelectorSchema } from '../../options.js';
import type { InvalidateReport } from '../../types.js';
import type { Backoff } from './backoff.js';
import type { ReloadOutcome } from './route.js';
import type { RouteTable } from './table.js';

/**
 * Reloads the matching keys blue-green (`snapshot` omitted means live); resolves once the old
 * workers are gone, or have stayed because the new code failed to load. Throws INVALID_KEY
 * for a bad selector, CLOSED once the pool is closing.
 */
export async function reloadMatching(
  table: RouteTable,
  backoff: Backoff,
  selector: InvalidateSelector,
  closing: () => boolean,
): Promise<InvalidateReport> {
  const parsed = InvalidateSelectorSchema.safeParse(selector);
  if (!parsed.success) throw invalidArguments('invalidate selector', issuesOf(parsed.error));
  if (closing()) throw closed();
  const { swarm, stem } = parsed.data;
  const snapshot = parsed.data.snapshot ?? null;
  const matches = (key: ResolvedKey): boolean =>
    key.swarm === swarm && key.snapshot === snapshot && (stem === undefined || key.stem === stem);
  backoff.resetWhere((text) => matches(resolveKey(text)));
  const reloads: Promise<[string, ReloadOutcome]>[] = [];
  for (const route of table.values()) {
    if (!matches(route.key)) continue;
    const reload = route.reload();
    if (reload !== null) reloads.push(reload.then((outcome) => [route.key.text, outcome]));
  }
  const report: InvalidateReport = { reloaded: [], failed: [] };
  for (const [key, outcome] of await Promise.all(reloads)) {
    if (outcome.ok) report.reloaded.push(key);
    else report.failed.push({ key, error: outcome.error });
  }
  return report;
}
