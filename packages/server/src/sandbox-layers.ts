import type { SandboxLayers } from 'sandpool';

/** The sandbox layers process keys get, as the server tells them: which, without why one is missing (the reasons name host paths). */
export type PublicLayers = Omit<SandboxLayers, 'missing'> | null;

export function publicLayers(layers: SandboxLayers | null): PublicLayers {
  if (layers === null) return null;
  const { namespaces, uidPerSwarm, cgroups, network, userns } = layers;
  return { namespaces, uidPerSwarm, cgroups, network, userns };
}
