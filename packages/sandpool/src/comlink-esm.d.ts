// comlink has no `exports` map and its `main` is UMD, which Node's ESM loader cannot name-import;
// its ESM build is loaded by path and typed by the package's own declarations.
declare module 'comlink/dist/esm/comlink.mjs' {
  export { expose, releaseProxy, wrap } from 'comlink';
}
