/**
 * HTTP/1.1 framing on bytes (RFC 9112), shared by the hub and the worker.
 *
 * Pure functions only: no I/O and no `Deno.*` calls, so every rule here is
 * tested on byte arrays. Heads are decoded as ISO-8859-1 (one char per byte),
 * which is what `Headers` accepts as a ByteString; bodies are never decoded.
 *
 * @module
 */

/** Size limits applied while parsing a head or a chunked body. */
export interface HeadLimits {
  /** Largest head (start line, fields and the empty line) in bytes. */
  maxHeadSize: number;
  /** Most header fields in one head (trailer fields count too). */
  maxHeaders: number;
  /** Longest chunk-size line (size plus extensions) in bytes. */
  maxChunkLineSize: number;
}

/** The limits used when a caller gives none. */
export const DEFAULT_LIMITS: Readonly<HeadLimits> = Object.freeze({
  maxHeadSize: 64 * 1024,
  maxHeaders: 128,
  maxChunkLineSize: 1024,
});

/** Header fields in wire order; names lower-cased, values trimmed. */
export type HeaderList = [name: string, value: string][];

/** A parsed request head. */
export interface RequestHead {
  method: string;
  target: string;
  /** Minor HTTP version: 0 or 1. */
  minor: number;
  headers: HeaderList;
}

/** A parsed response head. */
export interface ResponseHead {
  status: number;
  reason: string;
  /** Minor HTTP version: 0 or 1. */
  minor: number;
  headers: HeaderList;
}

/** A parse result: the value and how many bytes it used. */
export interface Parsed<T> {
  value: T;
  used: number;
}

/** How a message body is delimited (RFC 9112 §6.3). */
export type Framing =
  | { kind: "none" }
  | { kind: "length"; length: number }
  | { kind: "chunked" }
  | { kind: "close" };

const CR = 13;
const LF = 10;

// RFC 9110 §5.6.2 token characters.
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// RFC 9110 §5.5 field-value: visible chars, SP, HTAB and obs-text; no CTLs.
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
const OWS_EDGES = /^[ \t]+|[ \t]+$/g;
const STATUS_LINE =
  /^HTTP\/1\.([01]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?$/;
const REQUEST_LINE =
  /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e\x80-\xff]+) HTTP\/1\.([01])$/;
const DIGITS = /^[0-9]+$/;

// RFC 3986 host: an IP literal in brackets or a reg-name (which may be
// empty).
const HOST = String.raw`(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)`;

/**
 * RFC 9112 §3.2: a Host field value is uri-host [":" port]. Anything else
 * ("/", "?", "\\" and the like) would move the boundary between authority
 * and path in a URL built from it, and so change the path a request is
 * routed and served by. Empty is allowed (a request may carry an empty Host).
 */
export const VALID_HOST: RegExp = new RegExp(`^${HOST}(?::[0-9]*)?$`);

/** A route's host: a host as in {@linkcode VALID_HOST}, not empty, no port. */
export const ROUTE_HOST: RegExp = new RegExp(`^(?!$)${HOST}$`);

const ABSOLUTE_HTTP = /^https?:\/\//i;
const ASCII_TARGET = /^[\x21-\x7e]+$/;

/**
 * Checks a parsed request's target and Host field as a server must before
 * it builds a URL from them (RFC 9112 §3.2, §3.2.3, §3.2.4): at most one
 * Host field, and a valid one; the target in origin form, absolute form
 * (http or https), or `*` for OPTIONS only; no bytes outside ASCII (a
 * sender percent-encodes them). Returns the Host field's value ("" when
 * absent); throws a `SyntaxError` saying what is wrong.
 */
export function checkRequestTarget(head: RequestHead): string {
  let host: string | null = null;
  for (const [name, value] of head.headers) {
    if (name !== "host") continue;
    if (host !== null) throw new SyntaxError("more than one Host field");
    host = value;
  }
  if (host !== null && !VALID_HOST.test(host)) {
    throw new SyntaxError(`invalid Host field ${JSON.stringify(host)}`);
  }
  const target = head.target;
  if (!ASCII_TARGET.test(target)) {
    throw new SyntaxError("request target with bytes outside ASCII");
  }
  if (target.charCodeAt(0) === 47) return host ?? ""; // "/": origin form
  if (target === "*" && head.method === "OPTIONS") return host ?? "";
  if (!ABSOLUTE_HTTP.test(target)) {
    throw new SyntaxError(
      `request target ${
        JSON.stringify(target)
      } is neither a path nor an http(s) URL`,
    );
  }
  return host ?? "";
}

/**
 * Decodes `buf[start, end)` as ISO-8859-1, one char per byte.
 * (`TextDecoder("latin1")` is windows-1252, which maps 0x80-0x9f elsewhere.)
 */
export function latin1(buf: Uint8Array, start = 0, end = buf.length): string {
  let out = "";
  for (let i = start; i < end; i += 8192) {
    out += String.fromCharCode.apply(
      null,
      buf.subarray(i, Math.min(end, i + 8192)) as unknown as number[],
    );
  }
  return out;
}

const VISIBLE_ASCII = /^[\x21-\x7e]*$/;
const targetEncoder = new TextEncoder();

/**
 * A request target as it goes on the wire: heads are written one byte per
 * char, and a target can hold any char (`Deno.serve` hands it over with
 * bytes >= 0x80 decoded as UTF-8), so U+010D would go out as CR. Every char
 * outside visible ASCII is percent-encoded as its UTF-8 bytes, as a URL
 * parser would.
 */
export function wireTarget(target: string): string {
  if (VISIBLE_ASCII.test(target)) return target;
  let out = "";
  for (const ch of target) {
    const code = ch.codePointAt(0)!;
    if (code >= 0x21 && code <= 0x7e) {
      out += ch;
      continue;
    }
    for (const byte of targetEncoder.encode(ch)) {
      out += "%" + byte.toString(16).toUpperCase().padStart(2, "0");
    }
  }
  return out;
}

/** Encodes a string of chars <= 0xff as ISO-8859-1 bytes into `out` at `at`. */
function writeLatin1(s: string, out: Uint8Array, at: number): number {
  for (let i = 0; i < s.length; i++) out[at++] = s.charCodeAt(i);
  return at;
}

/**
 * Finds the end of a head: the index just past the first CRLF CRLF in
 * `buf[start, end)`, or -1 when more bytes are needed. Scanning resumes at
 * `from` so a head that trickles in is not rescanned from the start.
 *
 * @throws {SyntaxError} on a bare LF (not preceded by CR).
 * @throws {RangeError} when no head end lies within `maxHeadSize` bytes.
 */
export function findHeadEnd(
  buf: Uint8Array,
  start: number,
  end: number,
  maxHeadSize: number,
  from: number = start,
): number {
  const limit = Math.min(end, start + maxHeadSize);
  for (let i = Math.max(from, start); i < limit; i++) {
    if (buf[i] !== LF) continue;
    if (i === start || buf[i - 1] !== CR) {
      throw new SyntaxError(
        `Cannot parse head: bare LF at byte ${i - start}`,
      );
    }
    if (i - start >= 3 && buf[i - 2] === LF && buf[i - 3] === CR) return i + 1;
  }
  if (end - start >= maxHeadSize) {
    throw new RangeError(
      `Cannot parse head: no end within ${maxHeadSize} bytes`,
    );
  }
  return -1;
}

function parseFields(
  lines: string[],
  first: number,
  maxHeaders: number,
): HeaderList {
  const headers: HeaderList = [];
  for (let i = first; i < lines.length; i++) {
    const line = lines[i];
    if (line.length === 0) continue; // only the final empty line can be empty
    const c = line.charCodeAt(0);
    if (c === 32 || c === 9) {
      throw new SyntaxError(
        `Cannot parse header: obsolete line folding in ${JSON.stringify(line)}`,
      );
    }
    const colon = line.indexOf(":");
    const name = colon > 0 ? line.slice(0, colon) : "";
    if (!TOKEN.test(name)) {
      throw new SyntaxError(
        `Cannot parse header: invalid field line ${JSON.stringify(line)}`,
      );
    }
    const value = line.slice(colon + 1).replace(OWS_EDGES, "");
    if (!FIELD_VALUE.test(value)) {
      throw new SyntaxError(
        `Cannot parse header: control character in value of "${name}"`,
      );
    }
    if (headers.length >= maxHeaders) {
      throw new RangeError(
        `Cannot parse head: more than ${maxHeaders} header fields`,
      );
    }
    headers.push([name.toLowerCase(), value]);
  }
  return headers;
}

function splitHead(buf: Uint8Array, start: number, stop: number): string[] {
  // stop is just past CRLF CRLF; CR and LF elsewhere were checked by
  // findHeadEnd (LF) or are caught by the line grammars (CR).
  const lines = latin1(buf, start, stop - 4).split("\r\n");
  for (const line of lines) {
    if (line.includes("\r")) {
      throw new SyntaxError(
        `Cannot parse head: bare CR in ${JSON.stringify(line)}`,
      );
    }
  }
  return lines;
}

// Whether buf[start, end) is plain ASCII: visible chars, SP, HT and CRLF
// line ends only (findHeadEnd has ruled out a bare LF). Nearly every head
// is, and such a head parses on a fast path that needs no per-value checks.
function isPlain(buf: Uint8Array, start: number, end: number): boolean {
  for (let i = start; i < end; i++) {
    const b = buf[i];
    if (b >= 0x20 && b < 0x7f) continue;
    if (b === 9 || b === LF || (b === CR && buf[i + 1] === LF)) continue;
    return false;
  }
  return true;
}

// Token chars (RFC 9110 §5.6.2) by code: 1, or 2 for an upper-case letter.
const TCHAR = new Uint8Array(128);
for (const c of "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz") {
  TCHAR[c.charCodeAt(0)] = 1;
}
for (const c of "ABCDEFGHIJKLMNOPQRSTUVWXYZ") TCHAR[c.charCodeAt(0)] = 2;

// ASCII decodes the same as UTF-8 and as ISO-8859-1, and natively.
const ASCII = new TextDecoder();
const ENCODER = new TextEncoder();

// The fields of plain text from `at` on, or null for anything the exact
// path must judge (and name in its error): folding, a line without a
// name, a name that is not a token, too many fields.
function plainFields(
  text: string,
  at: number,
  maxHeaders: number,
): HeaderList | null {
  const headers: HeaderList = [];
  const n = text.length;
  while (at < n) {
    let eol = text.indexOf("\r\n", at);
    if (eol < 0) eol = n;
    const colon = text.indexOf(":", at);
    if (colon <= at || colon > eol) return null;
    let upper = false;
    for (let i = at; i < colon; i++) {
      const kind = TCHAR[text.charCodeAt(i)];
      if (kind === 0) return null; // also SP or HT first: folding
      if (kind === 2) upper = true;
    }
    const name = text.slice(at, colon);
    let from = colon + 1;
    let to = eol;
    while (from < to && isOws(text.charCodeAt(from))) from++;
    while (to > from && isOws(text.charCodeAt(to - 1))) to--;
    if (headers.length >= maxHeaders) return null;
    headers.push([upper ? name.toLowerCase() : name, text.slice(from, to)]);
    at = eol + 2;
  }
  return headers;
}

function isOws(c: number): boolean {
  return c === 32 || c === 9;
}

// A head's fields from buf[start, stop) (stop just past CRLF CRLF), after
// `parseStart` has judged its start line, when it has one: the start line's
// error comes first on both paths, as on the exact one alone.
function readHead<T>(
  buf: Uint8Array,
  start: number,
  stop: number,
  maxHeaders: number,
  parseStart: ((line: string) => T) | null,
): { first: T | null; headers: HeaderList } {
  if (isPlain(buf, start, stop - 4)) {
    const text = ASCII.decode(buf.subarray(start, stop - 4));
    let at = 0;
    let first: T | null = null;
    if (parseStart !== null) {
      const eol = text.indexOf("\r\n");
      first = parseStart(eol < 0 ? text : text.slice(0, eol));
      at = eol < 0 ? text.length : eol + 2;
    }
    const headers = plainFields(text, at, maxHeaders);
    if (headers !== null) return { first, headers };
  }
  // The exact path: obs-text, control chars, anything invalid.
  const lines = splitHead(buf, start, stop);
  if (parseStart === null) {
    return { first: null, headers: parseFields(lines, 0, maxHeaders) };
  }
  const first = parseStart(lines[0]);
  return { first, headers: parseFields(lines, 1, maxHeaders) };
}

function statusLine(line: string): RegExpExecArray {
  const m = STATUS_LINE.exec(line);
  if (m === null) {
    throw new SyntaxError(
      `Cannot parse status line: received ${JSON.stringify(line)}`,
    );
  }
  const status = Number(m[2]);
  if (status < 100) {
    throw new SyntaxError(
      `Cannot parse status line: status ${status} is out of range`,
    );
  }
  return m;
}

function requestLine(line: string): RegExpExecArray {
  const m = REQUEST_LINE.exec(line);
  if (m === null) {
    throw new SyntaxError(
      `Cannot parse request line: received ${JSON.stringify(line)}`,
    );
  }
  return m;
}

/**
 * Parses a response head at `buf[start, end)`.
 *
 * @returns the head and the bytes it used, or `null` when more are needed.
 * @throws {SyntaxError} on bytes that are not a valid HTTP/1.x response head.
 * @throws {RangeError} when a size or count limit is exceeded.
 */
export function parseResponseHead(
  buf: Uint8Array,
  start: number,
  end: number,
  limits: HeadLimits = DEFAULT_LIMITS,
  from?: number,
): Parsed<ResponseHead> | null {
  const stop = findHeadEnd(buf, start, end, limits.maxHeadSize, from);
  if (stop < 0) return null;
  const { first, headers } = readHead(
    buf,
    start,
    stop,
    limits.maxHeaders,
    statusLine,
  );
  const m = first!;
  return {
    value: {
      status: Number(m[2]),
      reason: m[3] ?? "",
      minor: Number(m[1]),
      headers,
    },
    used: stop - start,
  };
}

/**
 * Parses a request head at `buf[start, end)`.
 *
 * @returns the head and the bytes it used, or `null` when more are needed.
 * @throws {SyntaxError} on bytes that are not a valid HTTP/1.x request head.
 * @throws {RangeError} when a size or count limit is exceeded.
 */
export function parseRequestHead(
  buf: Uint8Array,
  start: number,
  end: number,
  limits: HeadLimits = DEFAULT_LIMITS,
  from?: number,
): Parsed<RequestHead> | null {
  const stop = findHeadEnd(buf, start, end, limits.maxHeadSize, from);
  if (stop < 0) return null;
  const { first, headers } = readHead(
    buf,
    start,
    stop,
    limits.maxHeaders,
    requestLine,
  );
  const m = first!;
  return {
    value: { method: m[1], target: m[2], minor: Number(m[3]), headers },
    used: stop - start,
  };
}

/** What the framing-related fields of a head say, checked for conflicts. */
export interface FramingFields {
  /** The Content-Length value, or -1 when absent. */
  contentLength: number;
  /** Transfer-Encoding is present (its only accepted value is `chunked`). */
  chunked: boolean;
  /** Lower-cased tokens of all Connection fields. */
  connection: string[];
}

function parseContentLength(value: string, prior: number): number {
  let n = prior;
  for (const part of value.split(",")) {
    const v = part.replace(OWS_EDGES, "");
    if (!DIGITS.test(v) || v.length > 15) {
      throw new SyntaxError(
        `Cannot parse Content-Length: received ${JSON.stringify(value)}`,
      );
    }
    const len = Number(v);
    if (n !== -1 && n !== len) {
      throw new SyntaxError(
        `Cannot frame body: conflicting Content-Length values ${n} and ${len}`,
      );
    }
    n = len;
  }
  return n;
}

/**
 * The value of field `name` (lower case) in `headers`: its lines joined
 * with ", ", or null when absent.
 */
export function fieldOf(headers: HeaderList, name: string): string | null {
  let out: string | null = null;
  for (const [n, v] of headers) {
    if (n === name) out = out === null ? v : `${out}, ${v}`;
  }
  return out;
}

/** The non-empty elements of a comma-separated field value, trimmed. */
export function listTokens(value: string | null): string[] {
  if (value === null) return [];
  return value.split(",").map((t) => t.trim()).filter((t) => t !== "");
}

/**
 * Reads Content-Length, Transfer-Encoding and Connection from a header list.
 *
 * Rejects what could desynchronise the two ends (request smuggling, RFC 9112
 * §6.3 and §11.2): differing Content-Length values, a Content-Length next to
 * Transfer-Encoding, and any transfer coding but a single final `chunked`.
 *
 * @throws {SyntaxError} on an invalid or conflicting framing field.
 */
export function framingFields(headers: HeaderList): FramingFields {
  let contentLength = -1;
  let te: string[] | null = null;
  const connection: string[] = [];
  for (const [name, value] of headers) {
    if (name === "content-length") {
      contentLength = parseContentLength(value, contentLength);
    } else if (name === "transfer-encoding") {
      te ??= [];
      for (const t of value.split(",")) {
        const v = t.replace(OWS_EDGES, "").toLowerCase();
        if (v !== "") te.push(v);
      }
    } else if (name === "connection") {
      for (const t of value.split(",")) {
        const v = t.replace(OWS_EDGES, "").toLowerCase();
        if (v !== "") connection.push(v);
      }
    }
  }
  if (te !== null) {
    if (te.length !== 1 || te[0] !== "chunked") {
      throw new SyntaxError(
        `Cannot frame body: unsupported Transfer-Encoding "${te.join(", ")}"`,
      );
    }
    if (contentLength !== -1) {
      throw new SyntaxError(
        "Cannot frame body: both Content-Length and Transfer-Encoding present",
      );
    }
  }
  return { contentLength, chunked: te !== null, connection };
}

/**
 * Decides how a request body is framed (RFC 9112 §6.3 rules 4-6): chunked,
 * by length, or absent. A request never reads until close.
 */
export function requestFraming(fields: FramingFields): Framing {
  if (fields.chunked) return { kind: "chunked" };
  if (fields.contentLength > 0) {
    return { kind: "length", length: fields.contentLength };
  }
  return { kind: "none" };
}

/**
 * Decides how a response body is framed (RFC 9112 §6.3 rules 1-7): none for
 * HEAD, 1xx, 204 and 304; then chunked, by length, or until close.
 */
export function responseFraming(
  fields: FramingFields,
  status: number,
  requestMethod: string,
): Framing {
  if (
    requestMethod === "HEAD" || status < 200 || status === 204 ||
    status === 304
  ) {
    return { kind: "none" };
  }
  if (fields.chunked) return { kind: "chunked" };
  if (fields.contentLength >= 0) {
    return fields.contentLength === 0
      ? { kind: "none" }
      : { kind: "length", length: fields.contentLength };
  }
  return { kind: "close" };
}

/**
 * Whether the connection stays open after this message (RFC 9112 §9.3):
 * HTTP/1.1 unless `close` is named, HTTP/1.0 only with `keep-alive`, and
 * never after an HTTP/1.0 message with Transfer-Encoding, whose framing
 * RFC 9112 §6.1 has a recipient treat as faulty: its sender may not have
 * meant the chunks that were read.
 */
export function keepAlive(
  minor: number,
  fields: Pick<FramingFields, "connection" | "chunked">,
): boolean {
  if (fields.connection.includes("close")) return false;
  if (minor === 0 && fields.chunked) return false;
  return minor >= 1 || fields.connection.includes("keep-alive");
}

/**
 * Parses a chunk-size line (RFC 9112 §7.1) at `buf[start, end)`, ignoring
 * chunk extensions.
 *
 * @returns the chunk size and the bytes the line used, or `null` when more
 *   are needed.
 * @throws {SyntaxError} on an invalid size or line.
 * @throws {RangeError} when the line is longer than `maxLine` bytes.
 */
export function parseChunkLine(
  buf: Uint8Array,
  start: number,
  end: number,
  maxLine: number,
): Parsed<number> | null {
  // Size and extensions may take `maxLine` bytes; the CR may follow them.
  const limit = Math.min(end, start + maxLine + 1);
  let i = start;
  let size = 0;
  for (; i < limit; i++) {
    const c = buf[i];
    const d = c >= 48 && c <= 57
      ? c - 48
      : c >= 97 && c <= 102
      ? c - 87
      : c >= 65 && c <= 70
      ? c - 55
      : -1;
    if (d < 0) break;
    size = size * 16 + d;
    if (size > Number.MAX_SAFE_INTEGER) {
      throw new SyntaxError("Cannot parse chunk size: value overflows");
    }
  }
  if (i === start && i < limit) throw badChunkLine(buf, start, limit);
  for (let k = i; k < limit; k++) {
    const c = buf[k];
    if (c === CR) {
      if (k + 1 >= end) return null;
      if (buf[k + 1] !== LF) throw badChunkLine(buf, start, limit);
      // Only `;` extensions (after optional whitespace) may follow the size.
      let j = i;
      while (j < k && (buf[j] === 32 || buf[j] === 9)) j++;
      if (k !== i && buf[j] !== 59) throw badChunkLine(buf, start, limit);
      return { value: size, used: k + 2 - start };
    }
    if (c === LF || (c < 32 && c !== 9) || c === 127) {
      throw badChunkLine(buf, start, limit);
    }
  }
  if (end - start > maxLine) {
    throw new RangeError(
      `Cannot parse chunk size: line longer than ${maxLine} bytes`,
    );
  }
  return null;
}

function badChunkLine(buf: Uint8Array, start: number, limit: number) {
  return new SyntaxError(
    `Cannot parse chunk size: invalid line ${
      JSON.stringify(latin1(buf, start, Math.min(limit, start + 32)))
    }`,
  );
}

/**
 * Parses the trailer section after the last chunk: zero or more field lines
 * and an empty line. Trailer fields are validated and returned.
 *
 * @returns the fields and the bytes used, or `null` when more are needed.
 */
export function parseTrailers(
  buf: Uint8Array,
  start: number,
  end: number,
  limits: HeadLimits = DEFAULT_LIMITS,
): Parsed<HeaderList> | null {
  if (end - start < 2) return null;
  if (buf[start] === CR && buf[start + 1] === LF) {
    return { value: [], used: 2 };
  }
  const stop = findHeadEnd(buf, start, end, limits.maxHeadSize);
  if (stop < 0) return null;
  return {
    value: readHead(buf, start, stop, limits.maxHeaders, null).headers,
    used: stop - start,
  };
}

/** Checks that `buf[start, start+2)` is CRLF after chunk data. */
export function isCrlf(buf: Uint8Array, start: number): boolean {
  return buf[start] === CR && buf[start + 1] === LF;
}

/**
 * Serialises a head: a start line, header fields and the empty line, as
 * ISO-8859-1 bytes, with room for `extra` more bytes after it (so a small
 * body can go out in the same write). `more` fields follow `headers`, so a
 * caller adds fields without copying its list.
 *
 * @returns the buffer and the length of the head in it.
 */
export function encodeHead(
  startLine: string,
  headers: Iterable<readonly [string, string]>,
  extra = 0,
  more: readonly (readonly [string, string])[] = [],
): { buf: Uint8Array; length: number } {
  return encodeLines(headLines(startLine, headers), more, extra);
}

/**
 * The text of a start line and fields, each line ending in CRLF, without
 * the empty line that ends a head: a head's part that can be built ahead
 * of time and finished by {@linkcode encodeLines}. A string, not bytes:
 * one byte buffer per head is allocated only when it is sent.
 */
export function headLines(
  startLine: string,
  headers: Iterable<readonly [string, string]>,
): string {
  let text = startLine + "\r\n";
  for (const [name, value] of headers) text += name + ": " + value + "\r\n";
  return text;
}

/**
 * Encodes `lines` (from {@linkcode headLines}), then the `more` fields and
 * the empty line, as ISO-8859-1 bytes, with room for `extra` more bytes.
 * The bytes go into the start of `into` when they fit (a caller's reusable
 * buffer: allocating a typed array costs more than encoding a head), else
 * into a new buffer.
 *
 * @returns the buffer (exactly head and `extra` long) and the head's length.
 */
export function encodeLines(
  lines: string,
  more: readonly (readonly [string, string])[] = [],
  extra = 0,
  into?: Uint8Array,
): { buf: Uint8Array; length: number } {
  let text = lines;
  for (const [name, value] of more) text += name + ": " + value + "\r\n";
  text += "\r\n";
  const size = text.length + extra;
  const buf = into !== undefined && size <= into.length
    ? into.subarray(0, size)
    : new Uint8Array(size);
  return { buf, length: writeText(text, buf, 0) };
}

// ASCII (nearly every head) is encoded natively; a char 0x80-0xff, which
// UTF-8 would write as two bytes, sends the string to writeLatin1.
function writeText(s: string, out: Uint8Array, at: number): number {
  const done = ENCODER.encodeInto(s, out.subarray(at, at + s.length));
  if (done.read === s.length && done.written === s.length) {
    return at + s.length;
  }
  return writeLatin1(s, out, at);
}

/** Encodes one chunk of a chunked body: size line, data and CRLF. */
export function encodeChunk(data: Uint8Array): Uint8Array {
  const size = data.length.toString(16);
  const out = new Uint8Array(size.length + 4 + data.length);
  const at = writeLatin1(size, out, 0);
  out[at] = CR;
  out[at + 1] = LF;
  out.set(data, at + 2);
  out[at + 2 + data.length] = CR;
  out[at + 3 + data.length] = LF;
  return out;
}

/** The last chunk and an empty trailer section. */
export const LAST_CHUNK: Uint8Array = new Uint8Array([48, 13, 10, 13, 10]);

/** Standard reason phrases for the statuses POTHEAD writes itself. */
export function reasonPhrase(status: number): string {
  return REASONS[status] ?? "";
}

const REASONS: Record<number, string> = {
  100: "Continue",
  200: "OK",
  201: "Created",
  202: "Accepted",
  204: "No Content",
  206: "Partial Content",
  301: "Moved Permanently",
  302: "Found",
  303: "See Other",
  304: "Not Modified",
  307: "Temporary Redirect",
  308: "Permanent Redirect",
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  409: "Conflict",
  410: "Gone",
  411: "Length Required",
  413: "Content Too Large",
  414: "URI Too Long",
  415: "Unsupported Media Type",
  422: "Unprocessable Content",
  426: "Upgrade Required",
  429: "Too Many Requests",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};
