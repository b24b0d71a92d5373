// What a swarm may be named, without zod: the snapshot helper checks names on its own start path.

export const SWARM = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

/**
 * A swarm's folder sits in the root, where Node's resolution from every other swarm's files
 * looks for packages: a swarm named `node_modules` would be imported by its neighbours. Any
 * case, for file systems that ignore it. (Dot names, the store's own, fail the pattern.)
 */
export function isReservedSwarm(name: string): boolean {
  return name.length === 12 && name.toLowerCase() === 'node_modules';
}

export function isSwarmName(name: string): boolean {
  return SWARM.test(name) && !isReservedSwarm(name);
}
