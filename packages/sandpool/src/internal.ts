/**
 * What sandpool's own packages (the server) use of it beyond its API, at `sandpool/internal`:
 * kept out of `sandpool`'s .d.ts and README, and free to change in any release.
 */

export { type HostPlace, hostPaths, type Redact } from './host/cells/host-paths.js';
export { deliveredCall, deliveredStream } from './host/pool/delivered.js';
