/**
 * Which IP addresses the `fetch` capability may connect to. The ranges come from ipaddr.js
 * (the table express and proxy-addr rely on); the rule is an allowlist, not a blocklist: an
 * address is public only when ipaddr.js calls it plain `unicast` and, for IPv6, it lies in
 * the global unicast block 2000::/3. Everything else (private, loopback, link-local and so
 * the metadata address 169.254.169.254, unique-local, CGNAT, multicast, unspecified,
 * reserved, NAT64 and 6to4 prefixes that embed an IPv4 address) is internal.
 */
import ipaddr from 'ipaddr.js';

const GLOBAL_UNICAST = ipaddr.IPv6.parseCIDR('2000::/3');

/** The address in one form per host: IPv4-mapped IPv6 (`::ffff:127.0.0.1`) becomes the IPv4 it maps. */
function canonical(address: string): ipaddr.IPv4 | ipaddr.IPv6 | null {
  if (!ipaddr.isValid(address)) return null;
  return ipaddr.process(address);
}

/** Whether `address` is an IP address on the public internet; `false` for anything unparseable. */
export function isPublicAddress(address: string): boolean {
  const ip = canonical(address);
  if (ip === null) return false;
  if (ip.range() !== 'unicast') return false;
  return ip.kind() === 'ipv4' || ip.match(GLOBAL_UNICAST);
}

/** Whether two textual addresses name the same host (`::ffff:7f00:1` and `127.0.0.1` do). */
export function sameAddress(a: string, b: string): boolean {
  const left = canonical(a);
  const right = canonical(b);
  return left !== null && right !== null && left.kind() === right.kind() && left.toString() === right.toString();
}
