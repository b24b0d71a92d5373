/**
 * The one place the `fetch` capability opens connections: undici's own connector with the
 * address rule around it. The name is resolved here, once, and undici connects to that
 * address (TLS still checks the certificate against the name), so no second lookup can
 * answer differently (DNS rebinding); then the address the socket is actually connected to
 * is checked again before undici may use it. An internal address is reached only when it is
 * the listed origin's own host, written as an IP literal.
 */
import { lookup as dnsLookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { buildConnector } from 'undici';
import { accessDenied } from '../../errors.js';
import { isPublicAddress, sameAddress } from './fetch-address.js';
import type { FetchLookup } from './fetch-policy.js';

async function systemLookup(hostname: string): Promise<string[]> {
  const found = await dnsLookup(hostname, { all: true, verbatim: true });
  return found.map((entry) => entry.address);
}

/** Whether a connection for `hostname` (as in its URL, brackets removed) may go to `address`. */
function permitted(hostname: string, address: string): boolean {
  return isIP(hostname) === 0 ? isPublicAddress(address) : sameAddress(hostname, address);
}

/** The address to connect to: an IP-literal host is its own; a name's first permitted answer. */
async function addressFor(hostname: string, origin: string, lookup: FetchLookup): Promise<string> {
  if (isIP(hostname) !== 0) return hostname;
  const chosen = (await lookup(hostname)).find((address) => permitted(hostname, address));
  if (chosen === undefined) throw accessDenied(`${origin} resolves to no public address`);
  return chosen;
}

/**
 * A connector for an undici `Agent` that reaches only `allowed` origins, each at an address
 * `permitted` for it. Its refusals are `ERR_SANDPOOL_ACCESS_DENIED`, which undici hands to
 * the request unchanged; they name the origin, never the address a name resolved to.
 * `connect` is undici's, replaced only by tests that need a socket elsewhere than asked.
 */
export function guardedConnector(
  allowed: ReadonlySet<string>,
  lookup: FetchLookup = systemLookup,
  connect: buildConnector.connector = buildConnector({}),
): buildConnector.connector {
  return (options, callback) => {
    const { hostname, protocol } = options;
    const origin = `${protocol}//${options.host ?? hostname}`;
    if (!allowed.has(origin)) return callback(accessDenied(`${origin} is not an allowed origin`), null);
    addressFor(hostname, origin, lookup).then(
      (address) =>
        connect({ ...options, hostname: address }, (error, socket) => {
          if (error !== null) return callback(error, null);
          const remote = socket.remoteAddress;
          if (remote === undefined || !permitted(hostname, remote)) {
            socket.destroy();
            return callback(accessDenied(`${origin} connected to an address it may not reach`), null);
          }
          callback(null, socket);
        }),
      (error: unknown) => callback(error instanceof Error ? error : new Error(String(error)), null),
    );
  };
}
