// comlink has no `exports` map and its `main` is UMD, which Node's ESM loader cannot
// name-import; its ESM build is loaded by path and typed by the package's own declarations.
declare module 'comlink/dist/esm/comlink.mjs' {
  export { releaseProxy, wrap } from 'comlink';
}
declare module 'comlink/dist/esm/node-adapter.mjs' {
  import type { Endpoint } from 'comlink';
  import type { NodeEndpoint } from 'comlink/dist/umd/node-adapter.js';
  export default function nodeEndpoint(endpoint: NodeEndpoint): Endpoint;
}
