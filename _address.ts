/**
 * Consumer addresses as fair-queuing keys: pure functions on strings.
 *
 * @module
 */

/**
 * An `X-Forwarded-For` entry's address: some proxies add the consumer's
 * port ("10.0.0.1:51234", "[2001:db8::1]:443"), which is no part of who it
 * is.
 */
export function addressOnly(entry: string): string {
  if (entry.charCodeAt(0) === 91) { // "["
    const end = entry.indexOf("]");
    return end > 1 ? entry.slice(1, end) : entry;
  }
  const colon = entry.indexOf(":");
  // Two colons or more: an IPv6 address without a port.
  return colon > 0 && colon === entry.lastIndexOf(":")
    ? entry.slice(0, colon)
    : entry;
}

/**
 * The key of a consumer's address: an IPv4 address whole; an IPv6 address
 * by its first 64 bits, as `"2001:db8:0:1::/64"`, because one subscriber
 * is given at least a /64 (RFC 6177) and could otherwise take a new key for
 * every request; an IPv6 address that stands for an IPv4 one as that IPv4
 * address: IPv4-mapped (`::ffff:192.0.2.1`, what a dual-stack listener
 * reports), IPv4-translated (`::ffff:0:192.0.2.1`, RFC 7915) and the NAT64
 * well-known prefix (`64:ff9b::192.0.2.1`, RFC 6052), which would
 * otherwise put every IPv4 consumer behind a translator in one key.
 * Anything else that is not an IPv6 address is returned as it is.
 */
export function addressKey(address: string): string {
  if (address.indexOf(":") < 0) return address;
  const groups = ipv6Groups(address);
  if (groups === null) return address;
  if (embedsIpv4(groups)) {
    return `${groups[6] >> 8}.${groups[6] & 255}.${groups[7] >> 8}.${
      groups[7] & 255
    }`;
  }
  return `${groups.slice(0, 4).map((g) => g.toString(16)).join(":")}::/64`;
}

// Whether the first 96 bits are a prefix whose last 32 bits are an IPv4
// address: ::ffff:0:0/96, ::ffff:0:0:0/96 or 64:ff9b::/96.
function embedsIpv4(g: number[]): boolean {
  if (g[2] !== 0 || g[3] !== 0) return false;
  if (g[0] === 0x64 && g[1] === 0xff9b) return g[4] === 0 && g[5] === 0;
  if (g[0] !== 0 || g[1] !== 0) return false;
  return (g[4] === 0 && g[5] === 0xffff) || (g[4] === 0xffff && g[5] === 0);
}

const HEX_GROUP = /^[0-9A-Fa-f]{1,4}$/;
const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

// The eight 16-bit groups of an IPv6 address in text (RFC 4291 §2.2: "::"
// once, an IPv4 address in the last 32 bits, a zone after "%"), or null.
function ipv6Groups(text: string): number[] | null {
  const zone = text.indexOf("%");
  if (zone >= 0) text = text.slice(0, zone);
  const halves = text.split("::");
  if (halves.length > 2) return null;
  const parse = (part: string, last: boolean): number[] | null => {
    if (part === "") return [];
    const out: number[] = [];
    const pieces = part.split(":");
    for (let i = 0; i < pieces.length; i++) {
      const piece = pieces[i];
      if (HEX_GROUP.test(piece)) {
        out.push(parseInt(piece, 16));
        continue;
      }
      const v4 = last && i === pieces.length - 1 ? IPV4.exec(piece) : null;
      if (v4 === null) return null;
      const b = v4.slice(1).map(Number);
      if (b.some((n) => n > 255)) return null;
      out.push((b[0] << 8) | b[1], (b[2] << 8) | b[3]);
    }
    return out;
  };
  const head = parse(halves[0], halves.length === 1);
  if (head === null) return null;
  if (halves.length === 1) return head.length === 8 ? head : null;
  const tail = parse(halves[1], true);
  if (tail === null || head.length + tail.length > 7) return null;
  return [
    ...head,
    ...new Array(8 - head.length - tail.length).fill(0),
    ...tail,
  ];
}

/**
 * 4 for an IPv4 address, 6 for an IPv6 one without a zone, else null (a
 * name, a port, brackets, spaces).
 */
export function addressFamily(text: string): 4 | 6 | null {
  if (text.indexOf(":") < 0) {
    return IPV4.test(text) && addressGroups(text) !== null ? 4 : null;
  }
  return text.indexOf("%") < 0 && ipv6Groups(text) !== null ? 6 : null;
}

/**
 * A range of addresses, as in a CIDR block: the first `prefix` bits of
 * `groups`. IPv4 ranges are held as IPv4-mapped IPv6 (`::ffff:0:0/96`), so
 * a dual-stack listener's peer `::ffff:10.0.0.1` is in `10.0.0.0/8`.
 */
export interface AddressRange {
  /** The eight 16-bit groups of the network address, host bits zero. */
  groups: number[];
  /** How many leading bits must match, 0 to 128. */
  prefix: number;
}

// An address as eight 16-bit groups (IPv4 as IPv4-mapped IPv6), or null.
function addressGroups(text: string): number[] | null {
  const v4 = IPV4.exec(text);
  if (v4 !== null) {
    const b = v4.slice(1).map(Number);
    if (b.some((n) => n > 255)) return null;
    return [0, 0, 0, 0, 0, 0xffff, (b[0] << 8) | b[1], (b[2] << 8) | b[3]];
  }
  return text.indexOf(":") < 0 ? null : ipv6Groups(text);
}

/**
 * Parses `"10.0.0.0/8"`, `"fd00::/8"` or a single address (a /32 or /128)
 * into a range. Bits past the prefix are ignored (`10.1.2.3/8` is
 * `10.0.0.0/8`).
 *
 * @throws {TypeError} naming the text when it is not one.
 */
export function parseAddressRange(text: string): AddressRange {
  const slash = text.indexOf("/");
  const address = (slash < 0 ? text : text.slice(0, slash)).trim();
  const groups = addressGroups(address);
  const v4 = IPV4.test(address);
  const max = v4 ? 32 : 128;
  const bits = slash < 0 ? String(max) : text.slice(slash + 1).trim();
  const prefix = Number(bits);
  if (
    groups === null || !/^[0-9]{1,3}$/.test(bits) || prefix > max ||
    address.indexOf("%") >= 0
  ) {
    throw new TypeError(
      `Invalid address range ${
        JSON.stringify(text)
      }: expected an IPv4 or IPv6 address, optionally with a prefix length ("10.0.0.0/8", "fd00::/8")`,
    );
  }
  const total = v4 ? prefix + 96 : prefix;
  return { groups: masked(groups, total), prefix: total };
}

// `groups` with every bit past the first `prefix` cleared.
function masked(groups: number[], prefix: number): number[] {
  return groups.map((g, i) => {
    const keep = Math.min(16, Math.max(0, prefix - i * 16));
    return keep === 16 ? g : g & (0xffff << (16 - keep)) & 0xffff;
  });
}

/**
 * Whether `address` (IPv4 or IPv6, without a port) is in any of `ranges`.
 * Anything that is not an address is in none.
 */
export function inRanges(
  address: string,
  ranges: readonly AddressRange[],
): boolean {
  const groups = addressGroups(address);
  if (groups === null) return false;
  for (const range of ranges) {
    const mine = masked(groups, range.prefix);
    if (mine.every((g, i) => g === range.groups[i])) return true;
  }
  return false;
}

/**
 * An `X-Forwarded-For` entry's address (see {@linkcode addressOnly}) when
 * it is an IPv4 or IPv6 address without a zone, else null: what goes on as
 * the consumer's address (a handler's `info.remoteAddr`, the access log)
 * must be an address, never whatever text a header held ("unknown", a
 * zone, spaces, quotes).
 */
export function forwardedAddress(entry: string): string | null {
  const address = addressOnly(entry.trim());
  return address.indexOf("%") < 0 && addressGroups(address) !== null
    ? address
    : null;
}

/**
 * The consumer's address behind trusted proxies. A request from a peer
 * outside `trusted` is the peer's own (whatever `X-Forwarded-For` says).
 * From a trusted peer, `X-Forwarded-For` is read from its end, where each
 * trusted proxy appended the address it saw: the first address that is not
 * a trusted proxy's is the consumer's (those before it are that consumer's
 * own word). When every address is a trusted proxy's, the first one is
 * taken; with no `X-Forwarded-For`, the peer. An entry that is not an
 * address ("unknown", garbage) ends the walk as in nginx's
 * `real_ip_recursive`: the consumer is then the last address read (a
 * trusted proxy's), or the peer; what comes before it is not taken.
 *
 * @param peer the connection's peer address, or null when unknown.
 * @param forwardedFor the request's `X-Forwarded-For` value, if any.
 * @param trusted the proxies whose word is taken.
 */
export function forwardedClient(
  peer: string | null,
  forwardedFor: string | null,
  trusted: readonly AddressRange[],
): string | null {
  if (peer === null || forwardedFor === null || !inRanges(peer, trusted)) {
    return peer;
  }
  return walkTrusted(peer, forwardedFor.split(","), xffEntry, trusted);
}

// An X-Forwarded-For entry for walkTrusted: undefined when empty.
function xffEntry(entry: string): string | null | undefined {
  const trimmed = entry.trim();
  return trimmed === "" ? undefined : forwardedAddress(trimmed);
}

/**
 * The walk both forwarding fields share (see {@linkcode forwardedClient}),
 * from a trusted `peer`: `entries` from the last, each read by `address`
 * (an address; null for one that is not, which ends the walk; undefined
 * for an empty one, skipped). The first address outside `trusted` is the
 * consumer; else the last address read, or the peer.
 */
export function walkTrusted<T>(
  peer: string,
  entries: readonly T[],
  address: (entry: T) => string | null | undefined,
  trusted: readonly AddressRange[],
): string {
  let first: string | null = null;
  for (let i = entries.length - 1; i >= 0; i--) {
    const read = address(entries[i]);
    if (read === undefined) continue;
    if (read === null) break;
    first = read;
    if (!inRanges(first, trusted)) return first;
  }
  return first ?? peer;
}
