import type { ResolvedKey } from '../../key.js';
import type { SnapshotRef } from '../../store/names.js';
import { Route, type RouteContext } from './route.js';

/**
 * The routes by key text: one per key the pool serves or is starting. A route that holds
 * nothing more is forgotten (it tells the table), so a key never seen again costs nothing.
 */
export class RouteTable {
  private readonly routes = new Map<string, Route>();
  /** Routes of a snapshot name that has moved since: they hold calls until those settle. */
  private readonly superseded = new Set<Route>();
  private arrivals = 0;
  /** What every route shares; `forget` and `nextArrival` are this table's. */
  readonly context: RouteContext;

  constructor(context: Omit<RouteContext, 'forget' | 'nextArrival'>) {
    this.context = {
      ...context,
      forget: (route: Route) => {
        if (this.routes.get(route.key.text) === route) this.routes.delete(route.key.text);
        this.superseded.delete(route);
      },
      nextArrival: () => ++this.arrivals,
    };
  }

  get(key: ResolvedKey): Route | undefined {
    return this.routes.get(key.text);
  }

  /**
   * A new route for a key, serving `snapshot` (what its name points to now; null for live).
   * A route the key had for other content is superseded: it takes no call from now on.
   */
  open(key: ResolvedKey, snapshot: SnapshotRef | null = null): Route {
    const held = this.routes.get(key.text);
    if (held !== undefined) this.supersede(held);
    const route = new Route(key, this.context.book.of(key.text), this.context, snapshot);
    this.routes.set(key.text, route);
    return route;
  }

  /** The route's name points elsewhere: no call is routed to it again, and it drains. */
  supersede(route: Route): void {
    if (this.routes.get(route.key.text) !== route) return;
    this.routes.delete(route.key.text);
    this.superseded.add(route);
    route.supersede();
  }

  /** Routes draining content their name no longer points to. */
  get draining(): ReadonlySet<Route> {
    return this.superseded;
  }

  values(): IterableIterator<Route> {
    return this.routes.values();
  }

  /** By key text, for keyStats() and the invariants. */
  get byKey(): ReadonlyMap<string, Route> {
    return this.routes;
  }
}
