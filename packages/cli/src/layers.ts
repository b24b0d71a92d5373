/** The sandbox layers process keys get, as `stats().sandbox` and the server's answers carry them (the reasons left out). */
export interface HeldLayers {
  readonly namespaces: boolean;
  readonly uidPerSwarm: boolean;
  readonly cgroups: string | null;
  readonly network: string;
  readonly userns: string | null;
}

/** Those layers in words: the ones held, then the network a cell reaches. */
export function describeLayers(layers: HeldLayers): string {
  const held = [
    layers.namespaces ? 'namespaces' : null,
    layers.uidPerSwarm ? 'a uid per swarm' : null,
    layers.cgroups === null ? null : `cgroups ${layers.cgroups}`,
    layers.userns === null ? null : `no user namespaces (${layers.userns})`,
  ].filter((layer) => layer !== null);
  return `${held.length === 0 ? 'no sandbox layer' : held.join(', ')}, network ${layers.network}`;
}
