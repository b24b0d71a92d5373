import type { ResolvedKey } from '../../key.js';
import { Route, type RouteContext } from './route.js';

/**
 * The routes by key text: one per key the pool serves or is starting. A route that holds
 * nothing more is forgotten (it tells the table), so a key never seen again costs nothing.
 */
export class RouteTable {
  private readonly routes = new Map<string, Route>();
  private arrivals = 0;
  /** What every route shares; `forget` and `nextArrival` are this table's. */
  readonly context: RouteContext;

  constructor(context: Omit<RouteContext, 'forget' | 'nextArrival'>) {
    this.context = {
      ...context,
      forget: (route: Route) => {
        if (this.routes.get(route.key.text) === route) this.routes.delete(route.key.text);
      },
      nextArrival: () => ++this.arrivals,
    };
  }

  get(key: ResolvedKey): Route | undefined {
    return this.routes.get(key.text);
  }

  /** A new route for a key that has none. */
  open(key: ResolvedKey): Route {
    const route = new Route(key, this.context.book.of(key.text), this.context);
    this.routes.set(key.text, route);
    return route;
  }

  values(): IterableIterator<Route> {
    return this.routes.values();
  }

  /** By key text, for keyStats() and the invariants. */
  get byKey(): ReadonlyMap<string, Route> {
    return this.routes;
  }
}
