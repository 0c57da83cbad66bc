/**
 * Table-driven byte tests for the HTTP/1.1 head, framing and chunk-line
 * parsers in `_codec.ts` (RFC 9112). Every valid head is also fed through a
 * {@linkcode BufferedReader} split at every byte offset and in 1-byte pieces.
 */

import assert from "node:assert/strict";
import {
  checkRequestTarget,
  DEFAULT_LIMITS,
  encodeChunk,
  encodeHead,
  encodeLines,
  findHeadEnd,
  type Framing,
  framingFields,
  type HeaderList,
  type HeadLimits,
  keepAlive,
  LAST_CHUNK,
  latin1,
  parseChunkLine,
  type Parsed,
  parseRequestHead,
  parseResponseHead,
  parseTrailers,
  requestFraming,
  type RequestHead,
  responseFraming,
  type ResponseHead,
} from "../_codec.ts";
import { BufferedReader } from "../_io.ts";
import {
  bytes,
  concat,
  pieces,
  ScriptedConn,
  splitAt,
  text,
} from "./_memconn.ts";

type HeadParser<T> = (
  buf: Uint8Array,
  start: number,
  end: number,
  limits?: HeadLimits,
  from?: number,
) => Parsed<T> | null;

type ErrorClass = typeof SyntaxError | typeof RangeError;

const NEXT = bytes("NEXT MESSAGE\r\n");

function limits(overrides: Partial<HeadLimits>): HeadLimits {
  return { ...DEFAULT_LIMITS, ...overrides };
}

/**
 * Reads one head off `pieces`: parse, resume the end-of-head scan near the
 * previous end, fill, repeat. `skip` bytes (a previous message) are consumed
 * first. The resume point is kept relative to `reader.start`, because
 * `fill()` may move the buffered bytes to the front of the buffer.
 * Returns the head and every byte left after it.
 */
async function readHead<T>(
  parse: HeadParser<T>,
  input: Uint8Array[],
  lim: HeadLimits,
  options: { readerSize?: number; skip?: number } = {},
): Promise<{ value: T; rest: Uint8Array }> {
  const conn = new ScriptedConn(input);
  const reader = new BufferedReader(conn, options.readerSize);
  let skip = options.skip ?? 0;
  for (let guard = 0; skip > 0 && guard < 100_000; guard++) {
    if (reader.buffered === 0 && !(await reader.fill())) {
      throw new Error("end of stream before head");
    }
    const n = Math.min(skip, reader.buffered);
    reader.consume(n);
    skip -= n;
  }
  let scanned = 0;
  for (let guard = 0; guard < 100_000; guard++) {
    const parsed = parse(
      reader.buf,
      reader.start,
      reader.end,
      lim,
      reader.start + scanned,
    );
    if (parsed !== null) {
      reader.consume(parsed.used);
      const rest = concat(reader.take(Infinity), conn.unread);
      return { value: parsed.value, rest };
    }
    scanned = Math.max(0, reader.buffered - 3);
    if (!(await reader.fill())) throw new Error("end of stream before head");
  }
  throw new Error("readHead: too many iterations");
}

/** Every way of feeding `data` this suite checks: 2-piece splits, 1-byte pieces. */
function* feeds(data: Uint8Array): Generator<[string, Uint8Array[]]> {
  for (let k = 0; k <= data.length; k++) {
    yield [`split at ${k}`, splitAt(data, k)];
  }
  yield ["1-byte pieces", pieces(data, 1)];
  yield ["3-byte pieces", pieces(data, 3)];
}

async function assertValidHead<T>(
  parse: HeadParser<T>,
  raw: string,
  expected: T,
  lim: HeadLimits = DEFAULT_LIMITS,
): Promise<void> {
  const head = bytes(raw);
  // Whole, alone.
  const whole = parse(head, 0, head.length, lim);
  assert.deepEqual(whole, { value: expected, used: head.length });
  // Whole, at an offset inside a larger buffer, followed by another message.
  const padded = concat(bytes("garbage"), head, NEXT);
  assert.deepEqual(parse(padded, 7, padded.length, lim), {
    value: expected,
    used: head.length,
  });
  // Every proper prefix needs more bytes and is not an error.
  for (let k = 0; k < head.length; k++) {
    assert.equal(parse(head, 0, k, lim), null, `prefix of ${k} bytes`);
  }
  // Through a BufferedReader, split everywhere; the reader stops at NEXT.
  const data = concat(head, NEXT);
  for (const [how, input] of feeds(data)) {
    const got = await readHead(parse, input, lim);
    assert.deepEqual(got.value, expected, how);
    assert.deepEqual(got.rest, NEXT, how);
  }
  // A tiny initial buffer must grow without losing bytes.
  const small = await readHead(parse, pieces(data, 5), lim, { readerSize: 8 });
  assert.deepEqual(small.value, expected);
  // After a 13000-byte previous message in a 16 KiB buffer, the next fill
  // moves the partial head to the front of the buffer.
  const prev = new Uint8Array(13_000).fill(0x61);
  const after = concat(prev, data);
  for (const k of [1, 2, 3, 4, Math.floor(head.length / 2), head.length - 1]) {
    const got = await readHead(parse, splitAt(after, prev.length + k), lim, {
      skip: prev.length,
    });
    assert.deepEqual(
      got.value,
      expected,
      `after a previous message, split ${k}`,
    );
    assert.deepEqual(got.rest, NEXT);
  }
}

async function assertInvalidHead<T>(
  parse: HeadParser<T>,
  raw: string,
  errorClass: ErrorClass,
  lim: HeadLimits = DEFAULT_LIMITS,
  message?: RegExp,
): Promise<void> {
  const head = bytes(raw);
  assert.throws(
    () => parse(head, 0, head.length, lim),
    (e: unknown) => {
      assert.ok(e instanceof errorClass, `got ${e}`);
      if (message) assert.match(e.message, message);
      return true;
    },
  );
  // Fed in pieces, the same error comes out (never a hang or a success).
  for (const [how, input] of feeds(head)) {
    await assert.rejects(
      readHead(parse, input, lim),
      (e: unknown) => {
        assert.ok(e instanceof errorClass, `${how}: got ${e}`);
        return true;
      },
    );
  }
}

// ---------------------------------------------------------------------------
// Response heads

const manyHeaders: HeaderList = [];
for (let i = 0; i < 100; i++) manyHeaders.push([`x-h${i}`, `value ${i}`]);
const manyHeadersRaw = manyHeaders.map(([n, v]) => `X-H${n.slice(3)}: ${v}\r\n`)
  .join("");

const validResponses: [string, string, ResponseHead][] = [
  [
    "status line with reason and one field",
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
    { status: 200, reason: "OK", minor: 1, headers: [["content-length", "5"]] },
  ],
  [
    "status line without reason or its space",
    "HTTP/1.1 204\r\n\r\n",
    { status: 204, reason: "", minor: 1, headers: [] },
  ],
  [
    "status line with empty reason after the space",
    "HTTP/1.1 204 \r\n\r\n",
    { status: 204, reason: "", minor: 1, headers: [] },
  ],
  [
    "HTTP/1.0",
    "HTTP/1.0 404 Not Found\r\nConnection: keep-alive\r\n\r\n",
    {
      status: 404,
      reason: "Not Found",
      minor: 0,
      headers: [["connection", "keep-alive"]],
    },
  ],
  [
    "1xx interim",
    "HTTP/1.1 100 Continue\r\n\r\n",
    { status: 100, reason: "Continue", minor: 1, headers: [] },
  ],
  [
    "largest three-digit status",
    "HTTP/1.1 999 Whatever\r\n\r\n",
    { status: 999, reason: "Whatever", minor: 1, headers: [] },
  ],
  [
    "reason with tab, colon and punctuation",
    "HTTP/1.1 500 Oops: it\tbroke (again)!\r\n\r\n",
    {
      status: 500,
      reason: "Oops: it\tbroke (again)!",
      minor: 1,
      headers: [],
    },
  ],
  [
    "obs-text 0x80-0xff in reason and values kept as latin1 chars",
    "HTTP/1.1 200 \xe9t\xe9\r\nX-Name: caf\xe9 \x80\x9f\xa0\xff\r\n\r\n",
    {
      status: 200,
      reason: "\xe9t\xe9",
      minor: 1,
      headers: [["x-name", "caf\xe9 \x80\x9f\xa0\xff"]],
    },
  ],
  [
    "OWS trimmed on both sides, inner whitespace kept, empty value",
    "HTTP/1.1 200 OK\r\nX-A:   two  words \t \r\nX-B:\tv\r\nX-C:\r\nX-D: \t \r\n\r\n",
    {
      status: 200,
      reason: "OK",
      minor: 1,
      headers: [["x-a", "two  words"], ["x-b", "v"], ["x-c", ""], ["x-d", ""]],
    },
  ],
  [
    "names lower-cased, duplicates and order kept, colon in value",
    "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSET-COOKIE: b=2\r\nLocation: http://h:8080/x\r\n\r\n",
    {
      status: 200,
      reason: "OK",
      minor: 1,
      headers: [
        ["set-cookie", "a=1"],
        ["set-cookie", "b=2"],
        ["location", "http://h:8080/x"],
      ],
    },
  ],
  [
    "every token character in a field name",
    "HTTP/1.1 200 OK\r\n!#$%&'*+-.^_`|~09AZaz: x\r\n\r\n",
    {
      status: 200,
      reason: "OK",
      minor: 1,
      headers: [["!#$%&'*+-.^_`|~09azaz", "x"]],
    },
  ],
  [
    "100 header fields",
    `HTTP/1.1 200 OK\r\n${manyHeadersRaw}\r\n`,
    { status: 200, reason: "OK", minor: 1, headers: manyHeaders },
  ],
];

for (const [name, raw, expected] of validResponses) {
  Deno.test(`parseResponseHead accepts ${name}`, async () => {
    await assertValidHead(parseResponseHead, raw, expected);
  });
}

const invalidResponses: [string, string, ErrorClass, RegExp?][] = [
  [
    "non-digit status",
    "HTTP/1.1 2x0 OK\r\n\r\n",
    SyntaxError,
    /^Cannot parse status line: received "HTTP\/1\.1 2x0 OK"$/,
  ],
  ["HTTP/2 version", "HTTP/2 200 OK\r\n\r\n", SyntaxError],
  ["HTTP/2.0 version", "HTTP/2.0 200 OK\r\n\r\n", SyntaxError],
  ["HTTP/1.2 version", "HTTP/1.2 200 OK\r\n\r\n", SyntaxError],
  ["missing version", "200 OK\r\n\r\n", SyntaxError],
  ["lower-case protocol name", "http/1.1 200 OK\r\n\r\n", SyntaxError],
  ["two-digit status", "HTTP/1.1 20 OK\r\n\r\n", SyntaxError],
  ["four-digit status", "HTTP/1.1 2000 OK\r\n\r\n", SyntaxError],
  ["no space after status", "HTTP/1.1 200OK\r\n\r\n", SyntaxError],
  ["two spaces before status", "HTTP/1.1  200 OK\r\n\r\n", SyntaxError],
  ["leading space", " HTTP/1.1 200 OK\r\n\r\n", SyntaxError],
  [
    "status below 100",
    "HTTP/1.1 099 Low\r\n\r\n",
    SyntaxError,
    /status 99 is out of range/,
  ],
  ["status 000", "HTTP/1.1 000 Zero\r\n\r\n", SyntaxError],
  ["DEL in reason", "HTTP/1.1 200 O\x7fK\r\n\r\n", SyntaxError],
  ["NUL in reason", "HTTP/1.1 200 O\x00K\r\n\r\n", SyntaxError],
  ["empty head", "\r\n\r\n", SyntaxError],
  [
    "bare LF ending the status line",
    "HTTP/1.1 200 OK\nA: b\r\n\r\n",
    SyntaxError,
    /bare LF/,
  ],
  ["bare LF as the empty line", "HTTP/1.1 200 OK\r\nA: b\r\n\n", SyntaxError],
  ["bare LF only", "HTTP/1.1 200 OK\n\n", SyntaxError],
  ["LF as the first byte", "\nHTTP/1.1 200 OK\r\n\r\n", SyntaxError],
  [
    "bare CR inside a value",
    "HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n",
    SyntaxError,
    /bare CR/,
  ],
  ["bare CR before CRLF", "HTTP/1.1 200 OK\r\nA: b\r\r\n\r\n", SyntaxError],
  ["bare CR in the status line", "HTTP/1.1 200\rOK\r\n\r\n", SyntaxError],
  [
    "obs-fold with a space",
    "HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",
    SyntaxError,
    /obsolete line folding/,
  ],
  [
    "obs-fold with a tab",
    "HTTP/1.1 200 OK\r\nA: b\r\n\tc\r\n\r\n",
    SyntaxError,
  ],
  [
    "whitespace before the first field",
    "HTTP/1.1 200 OK\r\n A: b\r\n\r\n",
    SyntaxError,
  ],
  [
    "space before colon",
    "HTTP/1.1 200 OK\r\nA : b\r\n\r\n",
    SyntaxError,
    /invalid field line/,
  ],
  ["tab before colon", "HTTP/1.1 200 OK\r\nA\t: b\r\n\r\n", SyntaxError],
  ["empty field name", "HTTP/1.1 200 OK\r\n: b\r\n\r\n", SyntaxError],
  ["field line without colon", "HTTP/1.1 200 OK\r\nAb\r\n\r\n", SyntaxError],
  [
    "separator in field name",
    "HTTP/1.1 200 OK\r\nA(b): c\r\n\r\n",
    SyntaxError,
  ],
  [
    "obs-text in field name",
    "HTTP/1.1 200 OK\r\ncaf\xe9: x\r\n\r\n",
    SyntaxError,
  ],
  [
    "NUL in a value",
    "HTTP/1.1 200 OK\r\nA: b\x00c\r\n\r\n",
    SyntaxError,
    /control character in value of "A"/,
  ],
  ["SOH in a value", "HTTP/1.1 200 OK\r\nA: \x01\r\n\r\n", SyntaxError],
  ["ESC in a value", "HTTP/1.1 200 OK\r\nA: x\x1by\r\n\r\n", SyntaxError],
  ["DEL in a value", "HTTP/1.1 200 OK\r\nA: x\x7f\r\n\r\n", SyntaxError],
  [
    "VT at the end of a value",
    "HTTP/1.1 200 OK\r\nA: x\x0b\r\n\r\n",
    SyntaxError,
  ],
];

for (const [name, raw, errorClass, message] of invalidResponses) {
  Deno.test(`parseResponseHead rejects ${name}`, async () => {
    await assertInvalidHead(
      parseResponseHead,
      raw,
      errorClass,
      DEFAULT_LIMITS,
      message,
    );
  });
}

// ---------------------------------------------------------------------------
// Request heads

const validRequests: [string, string, RequestHead][] = [
  [
    "origin-form with Host",
    "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    {
      method: "GET",
      target: "/",
      minor: 1,
      headers: [["host", "example.com"]],
    },
  ],
  [
    "HTTP/1.0 with a query",
    "POST /submit?a=1&b=%20 HTTP/1.0\r\nContent-Length: 3\r\n\r\n",
    {
      method: "POST",
      target: "/submit?a=1&b=%20",
      minor: 0,
      headers: [["content-length", "3"]],
    },
  ],
  [
    "absolute-form",
    "GET http://example.com/x?y HTTP/1.1\r\n\r\n",
    { method: "GET", target: "http://example.com/x?y", minor: 1, headers: [] },
  ],
  [
    "authority-form",
    "CONNECT example.com:443 HTTP/1.1\r\n\r\n",
    { method: "CONNECT", target: "example.com:443", minor: 1, headers: [] },
  ],
  [
    "asterisk-form",
    "OPTIONS * HTTP/1.1\r\n\r\n",
    { method: "OPTIONS", target: "*", minor: 1, headers: [] },
  ],
  [
    "extension method token, case kept",
    "M-SEARCH * HTTP/1.1\r\nX: y\r\n\r\n",
    { method: "M-SEARCH", target: "*", minor: 1, headers: [["x", "y"]] },
  ],
  [
    "obs-text in target and value",
    "GET /caf\xe9 HTTP/1.1\r\nX-V: \xff\xfe\r\n\r\n",
    {
      method: "GET",
      target: "/caf\xe9",
      minor: 1,
      headers: [["x-v", "\xff\xfe"]],
    },
  ],
  [
    "100 header fields",
    `PUT /x HTTP/1.1\r\n${manyHeadersRaw}\r\n`,
    { method: "PUT", target: "/x", minor: 1, headers: manyHeaders },
  ],
];

for (const [name, raw, expected] of validRequests) {
  Deno.test(`parseRequestHead accepts ${name}`, async () => {
    await assertValidHead(parseRequestHead, raw, expected);
  });
}

const invalidRequests: [string, string, ErrorClass, RegExp?][] = [
  [
    "two spaces before the version",
    "GET /  HTTP/1.1\r\n\r\n",
    SyntaxError,
    /^Cannot parse request line: received "GET \/ {2}HTTP\/1\.1"$/,
  ],
  ["HTTP/1.2", "GET / HTTP/1.2\r\n\r\n", SyntaxError],
  ["HTTP/2.0", "GET / HTTP/2.0\r\n\r\n", SyntaxError],
  ["HTTP/0.9 request line", "GET /\r\n\r\n", SyntaxError],
  ["lower-case protocol name", "GET / http/1.1\r\n\r\n", SyntaxError],
  ["separator in method", "G(T / HTTP/1.1\r\n\r\n", SyntaxError],
  ["leading space", " GET / HTTP/1.1\r\n\r\n", SyntaxError],
  ["trailing space", "GET / HTTP/1.1 \r\n\r\n", SyntaxError],
  ["space inside target", "GET /a b HTTP/1.1\r\n\r\n", SyntaxError],
  ["tab as separator", "GET\t/ HTTP/1.1\r\n\r\n", SyntaxError],
  ["DEL in target", "GET /\x7f HTTP/1.1\r\n\r\n", SyntaxError],
  ["NUL in target", "GET /\x00 HTTP/1.1\r\n\r\n", SyntaxError],
  ["missing target", "GET HTTP/1.1\r\n\r\n", SyntaxError],
  ["empty request line", "\r\n\r\n", SyntaxError],
  ["bare LF", "GET / HTTP/1.1\nHost: x\r\n\r\n", SyntaxError],
  ["bare CR in a value", "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", SyntaxError],
  ["obs-fold", "GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", SyntaxError],
  ["space before colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n", SyntaxError],
  ["empty field name", "GET / HTTP/1.1\r\n: x\r\n\r\n", SyntaxError],
  ["NUL in a value", "GET / HTTP/1.1\r\nA: \x00\r\n\r\n", SyntaxError],
];

for (const [name, raw, errorClass, message] of invalidRequests) {
  Deno.test(`parseRequestHead rejects ${name}`, async () => {
    await assertInvalidHead(
      parseRequestHead,
      raw,
      errorClass,
      DEFAULT_LIMITS,
      message,
    );
  });
}

// ---------------------------------------------------------------------------
// Head limits

Deno.test("parseResponseHead accepts a head of exactly maxHeadSize bytes", async () => {
  const raw = "HTTP/1.1 200 OK\r\nA: b\r\n\r\n";
  await assertValidHead(
    parseResponseHead,
    raw,
    { status: 200, reason: "OK", minor: 1, headers: [["a", "b"]] },
    limits({ maxHeadSize: raw.length }),
  );
});

Deno.test("parseResponseHead throws RangeError for a head one byte over maxHeadSize", async () => {
  const raw = "HTTP/1.1 200 OK\r\nA: b\r\n\r\n";
  await assertInvalidHead(
    parseResponseHead,
    raw,
    RangeError,
    limits({ maxHeadSize: raw.length - 1 }),
    new RegExp(`^Cannot parse head: no end within ${raw.length - 1} bytes$`),
  );
});

Deno.test("parseRequestHead throws RangeError as soon as maxHeadSize bytes arrive without an end", () => {
  const lim = limits({ maxHeadSize: 64 });
  const partial = bytes(`GET /${"a".repeat(100)}`);
  assert.equal(parseRequestHead(partial, 0, 63, lim), null);
  assert.throws(() => parseRequestHead(partial, 0, 64, lim), RangeError);
  // The limit counts from `start`, not from the buffer's beginning.
  assert.equal(parseRequestHead(partial, 10, 73, lim), null);
});

Deno.test("parseRequestHead throws RangeError for a default-limit head over 64 KiB", async () => {
  const raw = `GET / HTTP/1.1\r\nX-Big: ${"v".repeat(64 * 1024)}\r\n\r\n`;
  const head = bytes(raw);
  assert.throws(() => parseRequestHead(head, 0, head.length), RangeError);
  await assert.rejects(
    readHead(parseRequestHead, pieces(head, 4096), DEFAULT_LIMITS),
    RangeError,
  );
});

Deno.test("parseResponseHead accepts maxHeaders fields and rejects one more with RangeError", async () => {
  const lim = limits({ maxHeaders: 3 });
  const three = "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
  await assertValidHead(parseResponseHead, three, {
    status: 200,
    reason: "OK",
    minor: 1,
    headers: [["a", "1"], ["b", "2"], ["c", "3"]],
  }, lim);
  await assertInvalidHead(
    parseResponseHead,
    "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n",
    RangeError,
    lim,
    /more than 3 header fields/,
  );
});

Deno.test("parseRequestHead rejects more than the default 128 fields with RangeError", () => {
  const raw = `GET / HTTP/1.1\r\n${"A: b\r\n".repeat(129)}\r\n`;
  const head = bytes(raw);
  assert.throws(() => parseRequestHead(head, 0, head.length), RangeError);
  const ok = bytes(`GET / HTTP/1.1\r\n${"A: b\r\n".repeat(128)}\r\n`);
  assert.equal(parseRequestHead(ok, 0, ok.length)?.value.headers.length, 128);
});

// ---------------------------------------------------------------------------
// findHeadEnd

Deno.test("findHeadEnd resumes from `from` and still finds a CRLF CRLF that straddles it", () => {
  const buf = bytes("HTTP/1.1 200 OK\r\nA: b\r\n\r\nrest");
  const end = buf.indexOf(10, 20) + 3; // just past the final LF
  assert.equal(end, 25);
  for (let from = 0; from <= end - 3; from++) {
    assert.equal(findHeadEnd(buf, 0, buf.length, 1024, from), end, `${from}`);
  }
  assert.equal(findHeadEnd(buf, 0, end - 1, 1024, end - 4), -1);
});

Deno.test("findHeadEnd rejects a bare LF even when it is the first scanned byte", () => {
  const buf = bytes("xx\nyy");
  assert.throws(() => findHeadEnd(buf, 0, buf.length, 1024, 2), SyntaxError);
  assert.throws(() => findHeadEnd(buf, 2, buf.length, 1024), SyntaxError);
});

// ---------------------------------------------------------------------------
// Framing fields

function fields(...pairs: [string, string][]): HeaderList {
  return pairs.map(([n, v]) => [n.toLowerCase(), v]);
}

const validFraming: [
  string,
  HeaderList,
  { contentLength: number; chunked: boolean; connection: string[] },
][] = [
  ["no framing fields", [], {
    contentLength: -1,
    chunked: false,
    connection: [],
  }],
  [
    "one Content-Length",
    fields(["Content-Length", "5"]),
    { contentLength: 5, chunked: false, connection: [] },
  ],
  [
    "Content-Length 0",
    fields(["Content-Length", "0"]),
    { contentLength: 0, chunked: false, connection: [] },
  ],
  [
    "the same Content-Length twice",
    fields(["Content-Length", "5"], ["Content-Length", "5"]),
    { contentLength: 5, chunked: false, connection: [] },
  ],
  [
    "a Content-Length list of equal values",
    fields(["Content-Length", "5, 5"], ["Content-Length", "5 ,5"]),
    { contentLength: 5, chunked: false, connection: [] },
  ],
  [
    "leading zeros",
    fields(["Content-Length", "007"]),
    { contentLength: 7, chunked: false, connection: [] },
  ],
  [
    "a 15-digit Content-Length",
    fields(["Content-Length", "999999999999999"]),
    { contentLength: 999999999999999, chunked: false, connection: [] },
  ],
  [
    "chunked in any case",
    fields(["Transfer-Encoding", "Chunked"]),
    { contentLength: -1, chunked: true, connection: [] },
  ],
  [
    "chunked with surrounding empty list elements",
    fields(["Transfer-Encoding", " , chunked ,"]),
    { contentLength: -1, chunked: true, connection: [] },
  ],
  [
    "Connection tokens from several fields, lower-cased",
    fields(["Connection", "Keep-Alive, X-Foo"], ["connection", " CLOSE ,"]),
    {
      contentLength: -1,
      chunked: false,
      connection: ["keep-alive", "x-foo", "close"],
    },
  ],
];

for (const [name, headers, expected] of validFraming) {
  Deno.test(`framingFields accepts ${name}`, () => {
    assert.deepEqual(framingFields(headers), expected);
  });
}

const invalidFraming: [string, HeaderList, RegExp][] = [
  [
    "Content-Length with Transfer-Encoding",
    fields(["Content-Length", "5"], ["Transfer-Encoding", "chunked"]),
    /both Content-Length and Transfer-Encoding/,
  ],
  [
    "Transfer-Encoding before Content-Length",
    fields(["Transfer-Encoding", "chunked"], ["Content-Length", "0"]),
    /both Content-Length and Transfer-Encoding/,
  ],
  [
    "two different Content-Lengths",
    fields(["Content-Length", "5"], ["Content-Length", "6"]),
    /conflicting Content-Length values 5 and 6/,
  ],
  [
    "a Content-Length list of different values",
    fields(["Content-Length", "5, 6"]),
    /conflicting/,
  ],
  [
    "a negative Content-Length",
    fields(["Content-Length", "-1"]),
    /Content-Length/,
  ],
  [
    "a signed Content-Length",
    fields(["Content-Length", "+5"]),
    /Content-Length/,
  ],
  ["a hex Content-Length", fields(["Content-Length", "0x5"]), /Content-Length/],
  [
    "a decimal Content-Length",
    fields(["Content-Length", "5.0"]),
    /Content-Length/,
  ],
  ["an empty Content-Length", fields(["Content-Length", ""]), /Content-Length/],
  ["an empty list element", fields(["Content-Length", "5,"]), /Content-Length/],
  [
    "spaces inside a length",
    fields(["Content-Length", "5 5"]),
    /Content-Length/,
  ],
  [
    "a 16-digit Content-Length",
    fields(["Content-Length", "1000000000000000"]),
    /Content-Length/,
  ],
  [
    "a 16-digit Content-Length of leading zeros",
    fields(["Content-Length", "0000000000000005"]),
    /Content-Length/,
  ],
  [
    "gzip",
    fields(["Transfer-Encoding", "gzip"]),
    /unsupported Transfer-Encoding "gzip"/,
  ],
  ["identity", fields(["Transfer-Encoding", "identity"]), /unsupported/],
  [
    "chunked twice in one field",
    fields(["Transfer-Encoding", "chunked, chunked"]),
    /unsupported/,
  ],
  [
    "chunked in two fields",
    fields(["Transfer-Encoding", "chunked"], ["Transfer-Encoding", "chunked"]),
    /unsupported/,
  ],
  [
    "gzip then chunked",
    fields(["Transfer-Encoding", "gzip, chunked"]),
    /unsupported/,
  ],
  [
    "chunked then gzip",
    fields(["Transfer-Encoding", "chunked, gzip"]),
    /unsupported/,
  ],
  [
    "an empty Transfer-Encoding",
    fields(["Transfer-Encoding", ""]),
    /unsupported/,
  ],
];

for (const [name, headers, message] of invalidFraming) {
  Deno.test(`framingFields rejects ${name}`, () => {
    assert.throws(() => framingFields(headers), (e: unknown) => {
      assert.ok(e instanceof SyntaxError, `got ${e}`);
      assert.match(e.message, message);
      return true;
    });
  });
}

const requestFramingCases: [string, HeaderList, Framing][] = [
  ["no body fields", [], { kind: "none" }],
  ["Content-Length 0", fields(["Content-Length", "0"]), { kind: "none" }],
  ["Content-Length 10", fields(["Content-Length", "10"]), {
    kind: "length",
    length: 10,
  }],
  ["chunked", fields(["Transfer-Encoding", "chunked"]), { kind: "chunked" }],
];

for (const [name, headers, expected] of requestFramingCases) {
  Deno.test(`requestFraming with ${name} is ${expected.kind}`, () => {
    assert.deepEqual(requestFraming(framingFields(headers)), expected);
  });
}

const responseFramingCases: [string, HeaderList, number, string, Framing][] = [
  ["HEAD with a length", fields(["Content-Length", "10"]), 200, "HEAD", {
    kind: "none",
  }],
  ["HEAD with chunked", fields(["Transfer-Encoding", "chunked"]), 200, "HEAD", {
    kind: "none",
  }],
  ["100", [], 100, "GET", { kind: "none" }],
  ["101", fields(["Content-Length", "4"]), 101, "GET", { kind: "none" }],
  ["199", [], 199, "GET", { kind: "none" }],
  ["204 with chunked", fields(["Transfer-Encoding", "chunked"]), 204, "GET", {
    kind: "none",
  }],
  ["304 with a length", fields(["Content-Length", "10"]), 304, "GET", {
    kind: "none",
  }],
  ["200 with chunked", fields(["Transfer-Encoding", "chunked"]), 200, "GET", {
    kind: "chunked",
  }],
  ["200 with a length", fields(["Content-Length", "10"]), 200, "POST", {
    kind: "length",
    length: 10,
  }],
  ["200 with length 0", fields(["Content-Length", "0"]), 200, "GET", {
    kind: "none",
  }],
  ["200 without length", [], 200, "GET", { kind: "close" }],
  ["404 without length", [], 404, "GET", { kind: "close" }],
  ["205 without length", [], 205, "GET", { kind: "close" }],
];

for (const [name, headers, status, method, expected] of responseFramingCases) {
  Deno.test(`responseFraming for ${name} is ${expected.kind}`, () => {
    assert.deepEqual(
      responseFraming(framingFields(headers), status, method),
      expected,
    );
  });
}

const keepAliveCases: [string, number, HeaderList, boolean][] = [
  ["HTTP/1.1 by default", 1, [], true],
  ["HTTP/1.1 with close", 1, fields(["Connection", "close"]), false],
  [
    "HTTP/1.1 with Close among tokens",
    1,
    fields(["Connection", "x, Close"]),
    false,
  ],
  ["HTTP/1.1 with keep-alive", 1, fields(["Connection", "keep-alive"]), true],
  ["HTTP/1.0 by default", 0, [], false],
  ["HTTP/1.0 with Keep-Alive", 0, fields(["Connection", "Keep-Alive"]), true],
  [
    "HTTP/1.0 with keep-alive and close",
    0,
    fields(["Connection", "keep-alive"], ["Connection", "close"]),
    false,
  ],
  ["HTTP/1.0 with another token", 0, fields(["Connection", "upgrade"]), false],
  [
    "HTTP/1.0 with keep-alive and Transfer-Encoding",
    0,
    fields(["Connection", "keep-alive"], ["Transfer-Encoding", "chunked"]),
    false,
  ],
  [
    "HTTP/1.1 with Transfer-Encoding",
    1,
    fields(["Transfer-Encoding", "chunked"]),
    true,
  ],
];

for (const [name, minor, headers, expected] of keepAliveCases) {
  Deno.test(`keepAlive is ${expected} for ${name}`, () => {
    assert.equal(keepAlive(minor, framingFields(headers)), expected);
  });
}

// ---------------------------------------------------------------------------
// Chunk-size lines

type ChunkLineResult = { value: number; used: number } | null | ErrorClass;

const chunkLines: [string, string, number, ChunkLineResult][] = [
  ["zero", "0\r\n", 1024, { value: 0, used: 3 }],
  ["one digit", "5\r\n", 1024, { value: 5, used: 3 }],
  ["lower-case hex", "a\r\n", 1024, { value: 10, used: 3 }],
  ["upper-case hex", "A\r\n", 1024, { value: 10, used: 3 }],
  ["mixed-case hex", "fF\r\n", 1024, { value: 255, used: 4 }],
  ["several digits", "1aB2\r\n", 1024, { value: 0x1ab2, used: 6 }],
  ["leading zeros", "000010\r\n", 1024, { value: 16, used: 8 }],
  ["2^53 - 1", "1fffffffffffff\r\n", 1024, {
    value: Number.MAX_SAFE_INTEGER,
    used: 16,
  }],
  ["extensions", '5;a=b;c="d"\r\n', 1024, { value: 5, used: 13 }],
  ["an extension without a value", "5;a\r\n", 1024, { value: 5, used: 5 }],
  ["a quoted extension with an escape", '5;a="x \\" y"\r\n', 1024, {
    value: 5,
    used: 14,
  }],
  ["BWS before ';'", "5 ;a=b\r\n", 1024, { value: 5, used: 8 }],
  ["tabs before ';'", "5\t\t;a\r\n", 1024, { value: 5, used: 7 }],
  ["need more: nothing", "", 1024, null],
  ["need more: digits only", "12", 1024, null],
  ["need more: CR without LF", "5\r", 1024, null],
  ["need more: inside an extension", "5;a=b", 1024, null],
  ["no digits", "\r\n", 1024, SyntaxError],
  ["an extension without a size", ";a=b\r\n", 1024, SyntaxError],
  ["a non-hex letter", "g\r\n", 1024, SyntaxError],
  ["0x prefix", "0x5\r\n", 1024, SyntaxError],
  ["a minus sign", "-1\r\n", 1024, SyntaxError],
  ["a plus sign", "+1\r\n", 1024, SyntaxError],
  ["leading space", " 5\r\n", 1024, SyntaxError],
  ["garbage after a space", "5 garbage\r\n", 1024, SyntaxError],
  ["garbage right after the size", "5garbage\r\n", 1024, SyntaxError],
  ["trailing whitespace only", "5 \r\n", 1024, SyntaxError],
  ["bare LF", "5\n", 1024, SyntaxError],
  ["bare LF inside an extension", "5;a\nb\r\n", 1024, SyntaxError],
  ["CR followed by another byte", "5\rx", 1024, SyntaxError],
  ["NUL inside an extension", "5;a\x00\r\n", 1024, SyntaxError],
  ["DEL inside an extension", "5;a\x7f\r\n", 1024, SyntaxError],
  ["a size of 2^53", "20000000000000\r\n", 1024, SyntaxError],
  ["a 20-digit size", "ffffffffffffffffffff\r\n", 1024, SyntaxError],
  ["a long line", `5;${"a".repeat(30)}\r\n`, 16, RangeError],
  ["a long line without CR yet", `5;${"a".repeat(30)}`, 16, RangeError],
  ["a long run of zeros", `${"0".repeat(20)}5\r\n`, 16, RangeError],
  ["exactly maxLine bytes before CRLF", "5;aaaaaa\r\n", 8, {
    value: 5,
    used: 10,
  }],
  ["maxLine bytes without CR yet", "5;aaaaaa", 8, null],
  ["maxLine + 1 bytes before CRLF", "5;aaaaaaa\r\n", 8, RangeError],
  ["maxLine + 1 bytes without CR", "5;aaaaaaa", 8, RangeError],
];

for (const [name, raw, maxLine, expected] of chunkLines) {
  Deno.test(`parseChunkLine: ${name}`, () => {
    const line = bytes(raw);
    if (typeof expected === "function") {
      assert.throws(
        () => parseChunkLine(line, 0, line.length, maxLine),
        (e: unknown) => {
          assert.ok(e instanceof expected, `got ${e}`);
          return true;
        },
      );
      // At an offset, inside a larger buffer.
      const padded = concat(bytes("zz"), line);
      assert.throws(
        () => parseChunkLine(padded, 2, padded.length, maxLine),
        expected,
      );
      return;
    }
    assert.deepEqual(parseChunkLine(line, 0, line.length, maxLine), expected);
    // More bytes after an incomplete line would complete or break it.
    if (expected === null) return;
    const padded = concat(bytes("zz"), line, bytes("abc\r\n"));
    assert.deepEqual(
      parseChunkLine(padded, 2, padded.length, maxLine),
      expected,
    );
    for (let k = 0; k < line.length; k++) {
      assert.equal(parseChunkLine(line, 0, k, maxLine), null, `prefix ${k}`);
    }
  });
}

// ---------------------------------------------------------------------------
// Trailers

const trailerCases: [
  string,
  string,
  { value: HeaderList; used: number } | null | ErrorClass,
][] = [
  ["no trailers", "\r\n", { value: [], used: 2 }],
  ["need more: empty", "", null],
  ["need more: CR only", "\r", null],
  ["need more: a field without the empty line", "A: b\r\n", null],
  ["two trailer fields", "Digest: x\r\nExpires: y \r\n\r\n", {
    value: [["digest", "x"], ["expires", "y"]],
    used: 26,
  }],
  ["an invalid trailer field", "A : b\r\n\r\n", SyntaxError],
  ["a bare LF", "A: b\n\r\n", SyntaxError],
  ["a NUL in a trailer value", "A: \x00\r\n\r\n", SyntaxError],
];

for (const [name, raw, expected] of trailerCases) {
  Deno.test(`parseTrailers: ${name}`, () => {
    const buf = concat(bytes(raw));
    if (typeof expected === "function") {
      assert.throws(() => parseTrailers(buf, 0, buf.length), expected);
    } else {
      assert.deepEqual(parseTrailers(buf, 0, buf.length), expected);
    }
  });
}

Deno.test("parseTrailers enforces maxHeaders with RangeError", () => {
  const buf = bytes("A: 1\r\nB: 2\r\n\r\n");
  assert.throws(
    () => parseTrailers(buf, 0, buf.length, limits({ maxHeaders: 1 })),
    RangeError,
  );
});

// ---------------------------------------------------------------------------
// Encoders

Deno.test("encodeHead output parses back to the same response head", () => {
  const headers: [string, string][] = [
    ["content-type", "text/plain; charset=utf-8"],
    ["x-latin1", "caf\xe9 \x80\xff"],
    ["x-empty", ""],
  ];
  const { buf, length } = encodeHead("HTTP/1.1 200 OK", headers, 7);
  assert.equal(buf.length, length + 7);
  assert.equal(
    text(buf.subarray(0, length)),
    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n" +
      "x-latin1: caf\xe9 \x80\xff\r\nx-empty: \r\n\r\n",
  );
  assert.deepEqual(parseResponseHead(buf, 0, length), {
    value: { status: 200, reason: "OK", minor: 1, headers },
    used: length,
  });
});

Deno.test("encodeHead output parses back to the same request head", () => {
  const { buf, length } = encodeHead("DELETE /a/b?c HTTP/1.0", []);
  assert.equal(buf.length, length);
  assert.deepEqual(parseRequestHead(buf, 0, length), {
    value: { method: "DELETE", target: "/a/b?c", minor: 0, headers: [] },
    used: length,
  });
});

for (const size of [1, 15, 16, 255, 256, 4096, 65536]) {
  Deno.test(`encodeChunk of ${size} bytes parses back with parseChunkLine`, () => {
    const data = new Uint8Array(size);
    for (let i = 0; i < size; i++) data[i] = (i * 7) & 0xff;
    const out = encodeChunk(data);
    const line = parseChunkLine(out, 0, out.length, 1024);
    assert.deepEqual(line, { value: size, used: size.toString(16).length + 2 });
    assert.equal(text(out.subarray(0, line!.used)), `${size.toString(16)}\r\n`);
    assert.deepEqual(out.subarray(line!.used, line!.used + size), data);
    assert.equal(text(out.subarray(line!.used + size)), "\r\n");
  });
}

Deno.test("LAST_CHUNK is a zero-size line and an empty trailer section", () => {
  assert.equal(text(LAST_CHUNK), "0\r\n\r\n");
  const line = parseChunkLine(LAST_CHUNK, 0, LAST_CHUNK.length, 1024);
  assert.deepEqual(line, { value: 0, used: 3 });
  assert.deepEqual(parseTrailers(LAST_CHUNK, 3, LAST_CHUNK.length), {
    value: [],
    used: 2,
  });
});

Deno.test("latin1 maps every byte 0x00-0xff to the char with the same code", () => {
  const all = new Uint8Array(256);
  for (let i = 0; i < 256; i++) all[i] = i;
  const s = latin1(all);
  assert.equal(s.length, 256);
  for (let i = 0; i < 256; i++) assert.equal(s.charCodeAt(i), i);
  assert.deepEqual(bytes(s), all);
  assert.equal(latin1(all, 0x41, 0x44), "ABC");
  assert.equal(latin1(all, 5, 5), "");
});

Deno.test("latin1 decodes buffers longer than its 8192-byte step", () => {
  const big = new Uint8Array(20_000);
  for (let i = 0; i < big.length; i++) big[i] = i % 251;
  const s = latin1(big);
  assert.equal(s.length, big.length);
  assert.deepEqual(bytes(s), big);
  assert.deepEqual(bytes(latin1(big, 8000, 16500)), big.subarray(8000, 16500));
});

Deno.test("every byte 0x80-0xff in a value survives encodeHead and parseResponseHead", () => {
  let value = "";
  for (let c = 0x80; c <= 0xff; c++) value += String.fromCharCode(c);
  const { buf, length } = encodeHead("HTTP/1.1 200 OK", [["x-all", value]]);
  const parsed = parseResponseHead(buf, 0, length);
  assert.deepEqual(parsed?.value.headers, [["x-all", value]]);
});

// Heads of plain ASCII take a fast path; one obs-text byte anywhere sends
// the same head down the exact path. An obs-text reason phrase changes
// nothing about the fields, so both paths must give the same fields or the
// same error for every head, valid or not.
Deno.test("plain and obs-text heads parse to the same fields or the same error (seeded mutations)", () => {
  let seed = 0x9e3779b9;
  const random = (n: number) => {
    seed = (Math.imul(seed ^ (seed >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    return seed % n;
  };
  const NAMES = ["Content-Type", "x-id", "ACCEPT", "a", "X_Y.z~1", "vary"];
  const VALUES = ["text/plain", " padded\t", "", "a, b;q=0.5", "\t x \t"];
  // Bytes a mutation writes: the dangerous ones and some ordinary ones.
  const MUTANTS = [0, 9, 10, 13, 32, 58, 0x7f, 0x41, 0x7a, 0x22, 0x2c, 0x1f];
  const outcome = (head: Uint8Array, limit: number) => {
    try {
      const parsed = parseResponseHead(
        head,
        0,
        head.length,
        limits({ maxHeaders: limit }),
      );
      return parsed === null ? "incomplete" : parsed.value.headers;
    } catch (error) {
      return `${(error as Error).name}: ${(error as Error).message}`;
    }
  };
  let fast = 0;
  for (let round = 0; round < 3000; round++) {
    let fields = "";
    const count = 1 + random(5);
    for (let i = 0; i < count; i++) {
      fields += `${NAMES[random(NAMES.length)]}:${
        VALUES[random(VALUES.length)]
      }\r\n`;
    }
    const body = bytes(fields);
    // Mutate up to two bytes of the fields (never the head's end).
    for (let m = random(3); m > 0; m--) {
      body[random(body.length - 2)] = MUTANTS[random(MUTANTS.length)];
    }
    const plain = concat(bytes("HTTP/1.1 200 OK\r\n"), body, bytes("\r\n"));
    const exact = concat(bytes("HTTP/1.1 200 \xe9K\r\n"), body, bytes("\r\n"));
    const limit = 1 + random(6);
    const a = outcome(plain, limit);
    assert.deepEqual(a, outcome(exact, limit), text(plain));
    if (Array.isArray(a)) fast++;
  }
  // Most rounds must be valid heads, or the fast path went untested.
  assert.ok(fast > 1000, `only ${fast} valid heads`);
});

Deno.test("encodeLines writes into the caller's buffer when head and extra fit, else into a new one", () => {
  const into = new Uint8Array(64);
  const lines = "GET / HTTP/1.1\r\nhost: a\r\n";
  const fits = encodeLines(lines, [["x-b", "1"]], 3, into);
  assert.equal(fits.buf.buffer, into.buffer);
  assert.equal(fits.buf.length, fits.length + 3);
  assert.equal(
    text(fits.buf.subarray(0, fits.length)),
    "GET / HTTP/1.1\r\nhost: a\r\nx-b: 1\r\n\r\n",
  );
  const big = encodeLines(lines, [["x-b", "y".repeat(64)]], 0, into);
  assert.notEqual(big.buf.buffer, into.buffer);
  assert.equal(big.buf.length, big.length);
  assert.ok(text(big.buf).endsWith(`x-b: ${"y".repeat(64)}\r\n\r\n`));
  // A value with obs-text is written byte for byte, not as UTF-8.
  const latin = encodeLines(
    "GET / HTTP/1.1\r\n",
    [["x-c", "caf\xe9"]],
    0,
    into,
  );
  assert.equal(text(latin.buf), "GET / HTTP/1.1\r\nx-c: caf\xe9\r\n\r\n");
});

// RFC 9112 §3.2 (one valid Host), §3.2.3 (authority form only for CONNECT),
// §3.2.4 (asterisk form only for OPTIONS); bytes, as the parser gives them.
function checkTarget(raw: string): string {
  const buf = bytes(raw);
  const head = parseRequestHead(buf, 0, buf.length)!.value;
  return checkRequestTarget(head);
}

for (
  const [name, raw, host] of [
    [
      "origin form",
      "GET /a?b HTTP/1.1\r\nHost: h.example:8080\r\n\r\n",
      "h.example:8080",
    ],
    ["an empty Host", "GET / HTTP/1.1\r\nHost:\r\n\r\n", ""],
    ["no Host (HTTP/1.0)", "GET / HTTP/1.0\r\n\r\n", ""],
    ["an IPv6 Host", "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", "[::1]:80"],
    ["absolute form", "GET HTTP://h/x HTTP/1.1\r\nHost: h\r\n\r\n", "h"],
    ["OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", "h"],
  ] as const
) {
  Deno.test(`checkRequestTarget accepts ${name}`, () => {
    assert.equal(checkTarget(raw), host);
  });
}

for (
  const [name, raw, message] of [
    [
      "two Host fields",
      "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
      /more than one Host/,
    ],
    [
      "a Host with a path",
      "GET /x HTTP/1.1\r\nHost: evil.example/admin?\r\n\r\n",
      /invalid Host/,
    ],
    [
      "a Host with a backslash",
      "GET /x HTTP/1.1\r\nHost: a\\b\r\n\r\n",
      /invalid Host/,
    ],
    [
      "authority form on GET",
      "GET evil.example:443 HTTP/1.1\r\nHost: h\r\n\r\n",
      /neither a path nor/,
    ],
    [
      "another scheme",
      "GET javascript:alert(1) HTTP/1.1\r\nHost: h\r\n\r\n",
      /neither a path nor/,
    ],
    ["* on GET", "GET * HTTP/1.1\r\nHost: h\r\n\r\n", /neither a path nor/],
    [
      "a byte past ASCII",
      "GET /\xff HTTP/1.1\r\nHost: h\r\n\r\n",
      /outside ASCII/,
    ],
  ] as const
) {
  Deno.test(`checkRequestTarget refuses ${name}`, () => {
    assert.throws(() => checkTarget(raw), message);
  });
}
