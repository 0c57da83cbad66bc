/**
 * The standard `Forwarded` field (RFC 7239): pure functions on strings that
 * read the consumer's address from its `for=` parameters and write the
 * hub's own element.
 *
 * @module
 */

import {
  addressFamily,
  type AddressRange,
  inRanges,
  walkTrusted,
} from "./_address.ts";

// RFC 9110 §5.6.2 tchar, by char code.
const TCHAR = new Uint8Array(128);
for (const c of "!#$%&'*+-.^_`|~") TCHAR[c.charCodeAt(0)] = 1;
for (let c = 48; c <= 57; c++) TCHAR[c] = 1;
for (let c = 65; c <= 90; c++) TCHAR[c] = TCHAR[c + 32] = 1;

const COMMA = 44;
const SEMICOLON = 59;
const EQUALS = 61;
const DQUOTE = 34;
const BACKSLASH = 92;

function isTchar(c: number): boolean {
  return c < 128 && TCHAR[c] === 1;
}

function isSpace(c: number): boolean {
  return c === 32 || c === 9;
}

/** One element of a `Forwarded` field: lower-case names to plain values. */
export type ForwardedElement = ReadonlyMap<string, string>;

/**
 * The elements of a `Forwarded` value (RFC 7239 §4), in order: each a map
 * of its parameters (names lower-case, quoted strings unquoted), or null
 * when it is malformed (a character out of place, a name twice, a quoted
 * string that never closes). Empty list elements are left out. Never
 * throws, and takes time linear in the value's length, whatever it holds.
 *
 * Elements are split on "," and parameters on ";" outside quoted strings;
 * whitespace is allowed around both (RFC 9110 lists allow it around ","
 * and some proxies write "; "), not around "=".
 *
 * A quoted string that never closes makes only its own element malformed:
 * the elements after it are read as if its quote were any bad character.
 * Otherwise a consumer's stray `"` on the left would swallow the elements
 * trusted proxies appended after it, and hide the consumer's address.
 */
export function parseForwarded(value: string): (ForwardedElement | null)[] {
  const out: (ForwardedElement | null)[] = [];
  const n = value.length;
  // From here on no quoted string closes: once one opened at q runs to the
  // end, one opened at any later quote does too (the scan from q read that
  // quote as escaped and went on in the same state), so none is scanned
  // twice.
  let unclosed = n;
  // The index just past the quoted string opening at `at`, or -1.
  const quotedEnd = (at: number): number => {
    if (at >= unclosed) return -1;
    for (let i = at + 1; i < n; i++) {
      const c = value.charCodeAt(i);
      if (c === DQUOTE) return i + 1;
      if (c === BACKSLASH) i++;
    }
    unclosed = at;
    return -1;
  };
  let i = 0;
  while (i < n) {
    while (i < n && isSpace(value.charCodeAt(i))) i++;
    if (i === n) break;
    if (value.charCodeAt(i) === COMMA) {
      i++;
      continue;
    }
    const params = new Map<string, string>();
    let ok = true;
    // One element: pairs (possibly empty) separated by ";".
    while (i < n) {
      let c = value.charCodeAt(i);
      if (c === COMMA) break;
      if (c === SEMICOLON || isSpace(c)) {
        i++;
        continue;
      }
      const start = i;
      while (i < n && isTchar(value.charCodeAt(i))) i++;
      if (i === start || i === n || value.charCodeAt(i) !== EQUALS) {
        ok = false;
        break;
      }
      const name = value.slice(start, i).toLowerCase();
      i++;
      let text: string;
      if (i < n && value.charCodeAt(i) === DQUOTE) {
        const end = quotedEnd(i);
        if (end < 0) {
          i++; // past the quote, which is then any bad character
          ok = false;
          break;
        }
        text = unquote(value, i + 1, end - 1);
        i = end;
      } else {
        const from = i;
        while (i < n && isTchar(value.charCodeAt(i))) i++;
        text = value.slice(from, i);
        if (text === "") ok = false; // a token has a character at least
      }
      if (params.has(name)) ok = false; // RFC 7239 §4: once per element
      params.set(name, text);
      while (i < n && isSpace(value.charCodeAt(i))) i++;
      c = i < n ? value.charCodeAt(i) : COMMA;
      if (c !== SEMICOLON && c !== COMMA) {
        ok = false;
        break;
      }
      if (!ok) break;
    }
    if (!ok) i = nextComma(value, i, quotedEnd);
    out.push(ok ? params : null);
  }
  return out;
}

// The index of the next "," outside quoted strings from `i`, or the end;
// a quote that never closes counts as any other character.
function nextComma(
  value: string,
  i: number,
  quotedEnd: (at: number) => number,
): number {
  while (i < value.length) {
    const c = value.charCodeAt(i);
    if (c === COMMA) return i;
    if (c === DQUOTE) {
      const end = quotedEnd(i);
      i = end < 0 ? i + 1 : end;
    } else i++;
  }
  return i;
}

// The text of a quoted string between its quotes, escapes resolved.
// (Only between them: a search to the value's end for each of many quoted
// strings would cost time squared.)
function unquote(value: string, from: number, to: number): string {
  let out = "";
  let piece = from;
  for (let i = from; i < to; i++) {
    if (value.charCodeAt(i) !== BACKSLASH) continue;
    out += value.slice(piece, i);
    piece = ++i; // the escaped character is kept as it is
  }
  return out + value.slice(piece, to);
}

const PORT = /^(?:[0-9]{1,5}|_[A-Za-z0-9._-]+)$/;

/**
 * The address a `for=` (or `by=`) node names (RFC 7239 §6): an IPv4
 * address or a bracketed IPv6 one, either with an optional port or
 * obfuscated port (`192.0.2.1:8080`, `[2001:db8::1]:_p1`), given without
 * brackets or port; null for `unknown`, an obfuscated name (`_hidden`) and
 * anything else, so that no text but an address is taken as a consumer's.
 */
export function nodeAddress(node: string): string | null {
  let host = node;
  let port = "";
  if (node.charCodeAt(0) === 91) { // "["
    const end = node.indexOf("]");
    if (end < 0) return null;
    host = node.slice(1, end);
    if (addressFamily(host) !== 6) return null;
    port = node.slice(end + 1);
  } else {
    const colon = node.indexOf(":");
    if (colon >= 0) {
      host = node.slice(0, colon);
      port = node.slice(colon);
    }
    if (addressFamily(host) !== 4) return null;
  }
  if (port === "") return host;
  return port.charCodeAt(0) === 58 && PORT.test(port.slice(1)) ? host : null;
}

// An element's for= address for walkTrusted: null (the walk ends) for a
// malformed element, one without for=, or a node that is no address.
function elementAddress(element: ForwardedElement | null): string | null {
  const node = element?.get("for");
  return node === undefined ? null : nodeAddress(node);
}

/**
 * The consumer's address from a `Forwarded` value, as
 * {@linkcode forwardedClient} reads `X-Forwarded-For`: from a peer outside
 * `trusted`, the peer; else the elements' `for=` addresses from the last,
 * skipping trusted proxies', and the first that is not one is the
 * consumer. An element without a `for=` address (none, `unknown`,
 * obfuscated, malformed) ends the walk: the consumer is then the last
 * address read (a trusted proxy's), or the peer.
 *
 * @param peer the connection's peer address, or null when unknown.
 * @param forwarded the request's `Forwarded` value (field lines joined
 * with ", "), if any.
 * @param trusted the proxies whose word is taken.
 */
export function forwardedFieldClient(
  peer: string | null,
  forwarded: string | null,
  trusted: readonly AddressRange[],
): string | null {
  if (peer === null || forwarded === null || !inRanges(peer, trusted)) {
    return peer;
  }
  return walkTrusted(peer, parseForwarded(forwarded), elementAddress, trusted);
}

/**
 * The `for=` address of a `Forwarded` value's last element, the one the
 * proxy in front appended; null when it has none (no element, no `for=`,
 * not an address, malformed).
 */
export function lastForwardedAddress(forwarded: string | null): string | null {
  if (forwarded === null) return null;
  const elements = parseForwarded(forwarded);
  return elements.length === 0
    ? null
    : elementAddress(elements[elements.length - 1]);
}

// A parameter value: a token as it is, anything else a quoted string.
function paramValue(text: string): string {
  let token = text !== "";
  for (let i = 0; token && i < text.length; i++) {
    token = isTchar(text.charCodeAt(i));
  }
  return token ? text : `"${text.replace(/["\\]/g, "\\$&")}"`;
}

/**
 * The element the hub appends to `Forwarded` for a request it forwards:
 * `for=` its peer (IPv6 as `"[2001:db8::1]"`, `unknown` when not known),
 * `proto=` and `host=` (left out when empty), each quoted when it is not
 * a token.
 */
export function forwardedElement(
  peer: string | null,
  proto: string,
  host: string,
): string {
  const node = peer === null || peer === ""
    ? "unknown"
    : peer.indexOf(":") >= 0
    ? `[${peer}]`
    : peer;
  let element = `for=${paramValue(node)};proto=${paramValue(proto)}`;
  if (host !== "") element += `;host=${paramValue(host)}`;
  return element;
}
