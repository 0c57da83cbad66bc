/**
 * Reverse-proxy header rules (RFC 9110 §7.6): hop-by-hop fields are dropped
 * in both directions and forwarding fields are set by the hub.
 *
 * @module
 */

import { framingFields } from "./_codec.ts";
import { forwardedElement } from "./_forwarded.ts";

// RFC 9110 §7.6.1 plus the fields older proxies treat as hop-by-hop.
// content-length is here because each hop frames its own body.
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "content-length",
  // The hub answers the consumer's expectation itself and sets its own.
  "expect",
]);

/**
 * The fields of `headers` as pairs, in its iteration order (names sorted
 * and lower-case, repeats combined, Set-Cookie kept apart). Read with
 * `forEach`, which measured 2-4 times cheaper than the iterator in Deno:
 * this runs for every request on both ends of the worker link.
 */
export function fieldPairs(headers: Headers): [string, string][] {
  const out: [string, string][] = [];
  headers.forEach((value, name) => {
    out.push([name, value]);
  });
  return out;
}

/** The value of the first field called `name` (lower-case), or null. */
export function fieldValue(
  fields: readonly (readonly [string, string])[],
  name: string,
): string | null {
  for (const field of fields) if (field[0] === name) return field[1];
  return null;
}

/**
 * Whether a handler's response asks for the connection to end after it: a
 * `close` token in its `Connection` field. Both worker engines honour it as
 * `Deno.serve` does; the hub then gets the connection back by a reconnect,
 * the original POTHEAD's way for a worker to pace itself.
 */
export function asksToClose(headers: Headers): boolean {
  const value = headers.get("connection");
  if (value === null) return false;
  for (const t of value.split(",")) {
    if (t.trim().toLowerCase() === "close") return true;
  }
  return false;
}

/**
 * The end-to-end fields of `fields` (lower-case names): everything but the
 * fixed hop-by-hop list and the fields any `Connection` field names.
 */
export function endToEnd(
  fields: readonly [string, string][],
): [string, string][] {
  let named: Set<string> | null = null;
  for (const [name, value] of fields) {
    if (name !== "connection") continue;
    for (const t of value.split(",")) {
      const v = t.trim().toLowerCase();
      if (v !== "") (named ??= new Set()).add(v);
    }
  }
  const out: [string, string][] = [];
  for (const [name, value] of fields) {
    if (HOP_BY_HOP.has(name) || named?.has(name)) continue;
    out.push([name, value]);
  }
  return out;
}

/** Request header that tells the worker how long the request was queued. */
export const QUEUE_TIME_HEADER = "x-pothead-queue-ms";

/**
 * Request header that names the consumer when it is not the hub's peer
 * (behind proxies the hub trusts: `trustedProxies`, `trustForwarded`); the
 * worker runner makes it a handler's `info.remoteAddr`.
 */
export const CLIENT_HEADER = "x-pothead-client";

/** Lower-case names of the forwarding fields the hub sets itself. */
export const FORWARDED_FIELDS: ReadonlySet<string> = new Set([
  "x-forwarded-for",
  "x-forwarded-proto",
  "x-forwarded-host",
  "forwarded",
]);

/** What the hub knows about a consumer request, for the forwarding fields. */
export interface ForwardInfo {
  /** The consumer's address, when known. */
  clientIp: string | null;
  /** `http` or `https`: how the consumer reached the hub. */
  proto: string;
  /** The host the consumer asked for (see {@linkcode requestTarget}). */
  host: string;
  /** The request id to send on. */
  requestId: string;
  /** Keep client-supplied X-Forwarded-* fields and append to them. */
  trustForwarded: boolean;
  /**
   * Append the hub's own element to `Forwarded` (the hub's
   * `forwardedField: "forwarded"`); else that field is passed on when
   * trusted and dropped when not.
   */
  appendForwarded?: boolean;
}

/**
 * The last address of an `X-Forwarded-For` value, the one its last proxy
 * saw (those before it are the client's own word); null if it has none.
 */
export function lastForwardedFor(value: string | null): string | null {
  if (value === null) return null;
  const last = value.slice(value.lastIndexOf(",") + 1).trim();
  return last === "" ? null : last;
}

/** The prefix of the worker link protocol's request fields. */
export const LINK_FIELD_PREFIX = "x-pothead-";

// `value` without the empty last elements an empty field line leaves in a
// list ("a, " from "a" and ""). A loop, not a regular expression: a long
// run of commas must not cost time squared.
function withoutEmptyTail(value: string): string {
  let end = value.length;
  while (end > 0) {
    const c = value.charCodeAt(end - 1);
    if (c !== 44 && c !== 32 && c !== 9) break; // ",", SP, HT
    end--;
  }
  return end === value.length ? value : value.slice(0, end);
}

/**
 * Builds the fields the hub sends to a worker: the consumer's end-to-end
 * fields (without any `X-Pothead-*` field, which only the hub may send),
 * X-Forwarded-For/-Proto/-Host (client-supplied ones dropped unless
 * trusted), with `info.appendForwarded` a `Forwarded` field ending in the
 * hub's element (see {@linkcode forwardedElement}), and X-Request-Id. Host
 * is `info.host`, in the place of the consumer's field if it sent one.
 */
export function forwardRequestHeaders(
  headers: Headers,
  info: ForwardInfo,
): [string, string][] {
  let out = endToEnd(fieldPairs(headers));
  let priorFor: string | null = null;
  let priorProto: string | null = null;
  let priorHost: string | null = null;
  let priorForwarded: string | null = null;
  const append = info.appendForwarded ?? false;
  let hasHost = false;
  let spaced = false;
  let w = 0;
  for (let r = 0; r < out.length; r++) {
    const field = out[r];
    const name = field[0];
    if (field[1].charCodeAt(field[1].length - 1) === 32) spaced = true;
    // The link protocol's own fields (ping, wait, queue time) are the hub's
    // to send: one from a consumer would make the worker skip its handler.
    if (name === "x-request-id" || name.startsWith(LINK_FIELD_PREFIX)) {
      continue;
    }
    if (name === "host") {
      hasHost = true;
      // An absolute-form target named another host (RFC 9112 §3.2.2).
      if (field[1] !== info.host) out[r] = ["host", info.host];
    }
    if (FORWARDED_FIELDS.has(name)) {
      if (!info.trustForwarded) continue;
      const value = withoutEmptyTail(field[1]);
      if (name === "x-forwarded-for") priorFor = value;
      else if (name === "x-forwarded-proto") priorProto = value;
      else if (name === "x-forwarded-host") priorHost = value;
      else if (append) priorForwarded = value;
      if (name !== "forwarded" || append) continue;
    }
    out[w++] = out[r];
  }
  out.length = w;
  if (spaced) out = withEmptyFields(out);
  if (!hasHost && info.host !== "") out.push(["host", info.host]);
  if (append) {
    const own = forwardedElement(info.clientIp, info.proto, info.host);
    out.push(["forwarded", priorForwarded ? `${priorForwarded}, ${own}` : own]);
  }
  const chain = [priorFor, info.clientIp].filter((v) => v).join(", ");
  if (chain !== "") out.push(["x-forwarded-for", chain]);
  out.push(["x-forwarded-proto", priorProto ?? info.proto]);
  if (priorHost ?? info.host) {
    out.push(["x-forwarded-host", priorHost ?? info.host]);
  }
  out.push(["x-request-id", info.requestId]);
  return out;
}

/**
 * `fields` with every value that ends in ", " split back into the fields it
 * was combined from. `Headers` joins repeated fields with ", ", so an empty
 * last one leaves "a, " (from "a" and ""); on the wire that space is
 * whitespace around the value, which the worker drops ("a,"). Sent as "a"
 * and an empty field line, the worker's `Headers` joins them back into
 * "a, ". (`Headers` trims each value, so no other value ends in a space.)
 */
export function withEmptyFields(
  fields: [string, string][],
): [string, string][] {
  const out: [string, string][] = [];
  for (const [name, value] of fields) {
    let end = value.length;
    let empty = 0;
    while (
      end >= 2 && value.charCodeAt(end - 1) === 32 &&
      value.charCodeAt(end - 2) === 44
    ) {
      end -= 2;
      empty++;
    }
    out.push([name, value.slice(0, end)]);
    for (; empty > 0; empty--) out.push([name, ""]);
  }
  return out;
}

/**
 * Splits a request URL as `Deno.serve` builds it (scheme://Host + the target
 * as sent) without the URL parser, which would resolve dot segments and
 * re-encode. Holds for a Host without "/" (the hub refuses others).
 */
export function splitUrl(url: string): { authority: string; path: string } {
  const from = url.indexOf("//") + 2;
  let end = from;
  while (end < url.length) {
    const c = url.charCodeAt(end);
    if (c === 0x2f || c === 0x3f || c === 0x23) break; // "/", "?", "#"
    end++;
  }
  const rest = url.slice(end);
  // An absolute-form target may have a query and no path: "http://h?q".
  return {
    authority: url.slice(from, end),
    path: rest === "" || rest[0] === "#"
      ? "/"
      : rest[0] === "?"
      ? `/${rest}`
      : rest,
  };
}

/** What a consumer's request asks for: see {@linkcode requestTarget}. */
export interface RequestTarget {
  /** The authority of the request's URL. */
  authority: string;
  /** The path and query (origin form), what the worker is sent. */
  path: string;
  /** The host asked for: the Host field, or the target's authority. */
  host: string;
  /** The consumer sent an absolute-form target (`GET http://h/x`). */
  absolute: boolean;
}

/**
 * Reads what a request asks for from the URL `Deno.serve` made for it and
 * its Host field. For an origin-form target (`GET /x`) Deno.serve writes
 * its own scheme, the Host field as sent and the target; an absolute-form
 * target (`GET http://h/x`) it keeps as sent, and then the target's
 * authority is the host asked for and the Host field is ignored (RFC 9112
 * §3.2.2). Check the Host field first: once it is a valid host, a URL that
 * does not start with it has an absolute-form target.
 */
export function requestTarget(
  url: string,
  hostField: string | null,
): RequestTarget {
  const { authority, path } = splitUrl(url);
  if (hostField === null || hostField === "" || hostField === authority) {
    return { authority, path, host: hostField ?? authority, absolute: false };
  }
  return { authority, path, host: authority, absolute: true };
}

/** A response read off a connection, as {@linkcode relayedHeaders} needs it. */
export interface Relayed {
  status: number;
  reason: string;
  headers: [string, string][];
  contentLength: number;
  body: Uint8Array | ReadableStream<Uint8Array> | null;
}

/**
 * The fields for relaying a response read off a connection: its end-to-end
 * fields, plus Content-Length where the receiving server should keep it (the
 * length of a HEAD or 304 response's representation, or of a streamed body
 * of known size). Pairs, not `Headers`: `Response` checks them once.
 */
export function relayedHeaders(
  res: Relayed,
  method: string,
): [string, string][] {
  const fields = endToEnd(res.headers);
  if (method === "HEAD" || res.status === 304) {
    // No body on the wire, but the length describes the representation.
    // (The slot has checked these fields: "5, 5" is 5.)
    const length = framingFields(res.headers).contentLength;
    if (length >= 0) fields.push(["content-length", String(length)]);
  } else if (res.contentLength >= 0 && res.body instanceof ReadableStream) {
    fields.push(["content-length", String(res.contentLength)]);
  }
  return fields;
}

// Statuses a `Response` may not have a body with (Fetch's null body status,
// less 101 and 103, which never reach it).
const NULL_BODY_STATUS = new Set([204, 205, 304]);

/**
 * The `Response` relaying `res`: its {@linkcode relayedHeaders}, with the
 * relaying side's `set` fields replacing any of the same names and its
 * `append` fields added.
 *
 * @throws {RangeError} or {TypeError} when `Response` cannot carry it (e.g.
 * a status outside 200..599); a body stream is cancelled first.
 */
export function relayedResponse(
  res: Relayed,
  method: string,
  set: [string, string][] = [],
  append: [string, string][] = [],
): Response {
  let fields = relayedHeaders(res, method);
  if (set.length > 0) {
    fields = fields.filter(([name]) => !set.some(([own]) => own === name));
  }
  fields.push(...set, ...append);
  // A 205 has no content (RFC 9110 §15.3.6); one a worker sent anyway was
  // read off the link, and is dropped here (`Response` would refuse it).
  let body = res.body;
  if (res.status === 205 && body !== null) {
    // The slot reads a streamed one off itself; this drops a small one.
    if (body instanceof ReadableStream) body.cancel().catch(() => {});
    body = null;
    fields = fields.filter(([name]) => name !== "content-length");
  } else if (
    method === "HEAD" && !NULL_BODY_STATUS.has(res.status) &&
    !fields.some(([name]) => name === "content-length")
  ) {
    // A HEAD answered without a length (its GET would be chunked): with no
    // body at all, Deno.serve would tell the consumer `content-length: 0`.
    // Not for a status that can have no content: `Response` refuses any
    // body with it, even an empty stream.
    body = new ReadableStream({ start: (c) => c.close() });
  }
  try {
    return new Response(body as BodyInit | null, {
      status: res.status,
      statusText: res.reason,
      headers: fields,
    });
  } catch (error) {
    if (res.body instanceof ReadableStream) res.body.cancel().catch(() => {});
    throw error;
  }
}
