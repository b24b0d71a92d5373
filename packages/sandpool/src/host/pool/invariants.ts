import type { Call } from '../cells/call.js';
import type { Cell } from '../cells/cell.js';
import type { Census } from '../cells/census.js';
import type { Route } from '../routes/route.js';

/** What the invariants are checked against: the pool's books, read only. */
export interface Books {
  readonly census: Census;
  readonly queued: readonly Cell[];
  readonly routes: ReadonlyMap<string, Route>;
  /** Routes of content their snapshot name no longer points to, draining. */
  readonly superseded: ReadonlySet<Route>;
  readonly maxWorkers: number;
}

/**
 * Every rule the coordinator's books must obey, recomputed from scratch (no counter is
 * trusted): the test suite checks them after every property-test step. Empty when all hold.
 */
export function violations(view: Books): string[] {
  const problems: string[] = [];
  const { census } = view;
  if (census.slotHolders > view.maxWorkers) {
    problems.push(`${census.slotHolders} keyed threads alive, above maxWorkers ${view.maxWorkers}`);
  }
  for (const phase of ['resolving', 'queued', 'starting', 'ready', 'draining', 'exiting', 'stuck'] as const) {
    for (const cell of census.cells(phase)) {
      if (cell.phase.name !== phase) problems.push(`${cell.key.text} counted as ${phase} but is ${cell.phase.name}`);
    }
  }
  const queued = new Set(view.queued);
  for (const cell of census.cells('queued'))
    if (!queued.has(cell)) problems.push(`${cell.key.text} queued, not in the queue`);
  for (const cell of queued)
    if (cell.phase.name !== 'queued') problems.push(`${cell.key.text} in the queue while ${cell.phase.name}`);
  const waiting = new Set<Call>();
  for (const phase of ['resolving', 'queued'] as const) {
    for (const cell of census.cells(phase)) for (const call of cell.waiting ?? []) waiting.add(call);
  }
  const slotWaiters = census.slotWaiters;
  if (waiting.size !== slotWaiters.size || [...waiting].some((call) => !slotWaiters.has(call))) {
    problems.push(`waitingForSlot holds ${slotWaiters.size} calls; cells without a worker hold ${waiting.size}`);
  }
  for (const route of view.superseded) {
    if (view.routes.get(route.key.text) === route)
      problems.push(`${route.key.text}: a superseded route is still routed`);
    if (route.unused) problems.push(`${route.key.text}: a superseded route holds nothing but is still kept`);
  }
  for (const [text, route] of [...view.routes].concat([...view.superseded].map((r) => [r.key.text, r] as const))) {
    if (route.unused) problems.push(`${text} holds nothing but is still routed`);
    for (const cell of [route.serving, route.candidate]) {
      if (cell === null) continue;
      const name = cell.phase.name;
      if (name === 'draining' || name === 'exiting' || name === 'ended')
        problems.push(`${text} routes to a ${name} cell`);
    }
    for (const cell of route.cells) {
      if (cell.key.text !== text || cell.phase.name === 'ended') {
        problems.push(`${text} counts a ${cell.phase.name} cell of ${cell.key.text}`);
      }
      const channel = cell.channel;
      const onChannel = channel === null ? [] : [...channel.running.calls(), ...channel.waiting];
      for (const call of [...(cell.waiting ?? []), ...onChannel]) {
        if (call.settled || call.site !== cell || call.book !== route) {
          problems.push(`${text}: ${call.fn}() is held by a cell it does not belong to, or after it settled`);
        }
      }
    }
  }
  // A cell its route does not count would hold calls nobody counts.
  for (const phase of ['resolving', 'queued', 'starting', 'ready', 'draining', 'exiting', 'stuck'] as const) {
    for (const cell of census.cells(phase)) {
      const route = view.routes.get(cell.key.text);
      const counted = route?.cells.has(cell) === true || [...view.superseded].some((r) => r.cells.has(cell));
      if (!counted) {
        problems.push(`${cell.key.text}: a ${phase} cell that no route counts`);
      }
    }
  }
  return problems;
}
