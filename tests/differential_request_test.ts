/**
 * A seeded differential test of what a handler sees: the same raw HTTP/1.1
 * request bytes go over TCP to a plain `Deno.serve` running an echo handler
 * (the reference: Deno's own server, not our code) and to a hub whose worker
 * runs the same handler with the engine under test (`POTHEAD_ENGINE`).
 *
 * Where the reference refuses a request, the hub must refuse it the same way
 * and send nothing to its worker. Where the reference's handler ran, the
 * handler behind the hub must see the same method, URL, fields and body,
 * apart from the differences listed in `normalise` and `EXPECTED` (each says
 * why), and the consumer must get that handler's status and body.
 *
 * A failure prints the seed and case index; `DIFF_SEED=n DIFF_CASES=k` runs
 * one seed alone, `DIFF_VERBOSE=1` prints every case.
 */

import assert from "node:assert/strict";
import { startHub, startWorker } from "./_hub.ts";
import {
  deadline,
  latin1Bytes,
  latin1Text,
  RawSocket,
  waitFor,
} from "./_relay.ts";
import { Rng, sha256 } from "./_data.ts";
import { ENGINE } from "./_hub.ts";

const SEEDS = Deno.env.get("DIFF_SEED") !== undefined
  ? [Number(Deno.env.get("DIFF_SEED"))]
  : [0x5eed, 0xc0ffee, 20261206];
const CASES_PER_SEED = Number(Deno.env.get("DIFF_CASES") ?? 150);
const VERBOSE = Deno.env.get("DIFF_VERBOSE") === "1";
// One case's whole exchange; a server that neither answers nor closes by
// then counts as "hung" (the same on both sides is still agreement).
const CASE_DEADLINE = 4_000;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

// --- Seeded generator --------------------------------------------------------

const TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz" +
  "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const VCHARS = Array.from(
  { length: 0x7e - 0x21 + 1 },
  (_, i) => String.fromCharCode(0x21 + i),
).join("");
// Names with a meaning of their own to some hop; random names skip them
// (cases add them on purpose where they are meant).
const SPECIAL = new Set([
  "host",
  "content-length",
  "transfer-encoding",
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "upgrade",
  "expect",
  "x-request-id",
  "x-forwarded-for",
  "x-forwarded-proto",
  "x-forwarded-host",
  "forwarded",
  "x-want-status",
  "content-type",
]);

function tokenName(r: Rng): string {
  for (;;) {
    let name = "";
    const n = r.int(1, r.chance(0.1) ? 40 : 14);
    for (let i = 0; i < n; i++) name += TCHARS[r.below(TCHARS.length)];
    const low = name.toLowerCase();
    if (!SPECIAL.has(low) && !low.startsWith("x-pothead-")) return name;
  }
}

/** A valid field value (RFC 9110 §5.5), as latin1 text. */
function fieldValue(r: Rng): string {
  switch (r.below(9)) {
    case 0:
      return "";
    case 1: // long
      return Array.from(
        { length: r.int(500, 4000) },
        () => VCHARS[r.below(VCHARS.length)],
      ).join("");
    case 2: // obs-text
      return "a" + Array.from(
        { length: r.int(1, 8) },
        () => String.fromCharCode(r.int(0x80, 0xff)),
      ).join("") + "z";
    case 3: // list with commas and inner whitespace
      return ["a", "b c", " d ", "e\t f", "", "g"].slice(0, r.int(1, 6))
        .join(r.pick([",", ", ", " ,", ",,"]));
    case 4: // leading and trailing whitespace (not part of the value)
      return r.pick([" ", "\t", " \t "]) + "pad ded" +
        r.pick([" ", "\t", "  "]);
    case 5:
      return `"quoted, \\"string\\""; q=0.5`;
    default: {
      let s = "";
      const n = r.int(1, 30);
      for (let i = 0; i < n; i++) {
        s += r.chance(0.1)
          ? r.pick([" ", "\t"])
          : VCHARS[r.below(VCHARS.length)];
      }
      return s.trim() === "" ? "x" : s.replace(/^[ \t]+|[ \t]+$/g, "") ||
        "x";
    }
  }
}

const SEGMENTS = [
  "a",
  "B",
  "%20",
  "%2F",
  "%2e%2E",
  "%7e",
  "%C3%A9",
  ";p=1",
  "x;y",
  ":",
  "a:b",
  "@",
  "!$&'()*+,=",
  "~user",
  "",
  "..",
  ".",
  "-._~",
  "index.html",
];
const QUERIES = [
  "",
  "?",
  "?a=1&b=2",
  "?q=?x?",
  "?x=/y//z",
  "?%20=%zz",
  "?a=b;c=d",
  "?@:!$&'()*+,;=",
  "?=&&=",
  "??",
  "?/..",
];

function originTarget(r: Rng): string {
  const n = r.int(0, 5);
  let path = "";
  for (let i = 0; i < n; i++) path += "/" + r.pick(SEGMENTS);
  if (path === "" || r.chance(0.15)) path = "/" + path;
  if (r.chance(0.1)) path = "//" + path.replace(/^\/+/, "");
  return path + r.pick(QUERIES);
}

const HOSTS = [
  "example.com",
  "EXAMPLE.com:8080",
  "127.0.0.1:1",
  "[::1]:8080",
  "xn--bcher-kva.example",
  "h_o-st.example:80",
  "a.b.c.d.e",
];

const METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
const ODD_METHODS = [
  "M-SEARCH",
  "FOO",
  "PROPFIND",
  "get",
  "head",
  "Post",
  "patch",
  "X.Y_Z!",
];

/** One generated request. */
interface Case {
  /** What kind of case it is, for the summary. */
  kind: string;
  /** The exact bytes to send (latin1 text), or a head and body. */
  head: string;
  body: Uint8Array;
  /** Send the head, wait for a 100 (or anything) before the body. */
  awaitContinue: boolean;
  method: string;
  /** The target was in absolute form, with this authority. */
  absolute: string | null;
  /** Expected hub-only refusal (see EXPECTED), or null. */
  hubRefuses: string | null;
}

function bodyBytes(r: Rng, n: number): Uint8Array {
  const out = new Uint8Array(n);
  const seed = r.below(256);
  for (let i = 0; i < n; i++) out[i] = (i * 131 + seed + (i >> 7)) & 0xff;
  return out;
}

function chunked(r: Rng, body: Uint8Array, trailers: boolean): Uint8Array {
  let text = "";
  let at = 0;
  while (at < body.length) {
    const size = Math.min(
      body.length - at,
      r.int(1, r.chance(0.3) ? 20000 : 300),
    );
    const ext = r.pick(["", "", "", ";a=b", ";x", ';q="s t"', " ;e=1"]);
    const hex = r.chance(0.3)
      ? size.toString(16).toUpperCase()
      : size.toString(16);
    text += (r.chance(0.1) ? "0" : "") + hex + ext + "\r\n" +
      latin1Text(body.subarray(at, at + size)) + "\r\n";
    at += size;
  }
  text += "0" + r.pick(["", ";end=1"]) + "\r\n";
  if (trailers) text += "X-Trailer-One: 1\r\nx-t2: two words\r\n";
  return latin1Bytes(text + "\r\n");
}

/** Generates a valid request. */
function validCase(r: Rng): Case {
  const fields: [string, string][] = [];
  let kind = "plain";
  const http10 = r.chance(0.08);
  const method = r.chance(0.15) ? r.pick(ODD_METHODS) : r.pick(METHODS);
  let target = originTarget(r);
  let absolute: string | null = null;
  let hubRefuses: string | null = null;
  const host = r.pick(HOSTS);
  if (r.chance(0.1)) {
    absolute = r.pick(HOSTS);
    const scheme = r.pick(["http", "https"]);
    const rest = r.pick([target, target, "", "?q=1"]);
    target = `${scheme}://${absolute}${rest}`;
    kind = "absolute-form";
  }
  const noHost = http10 ? r.chance(0.5) : false;
  if (!noHost) fields.push([r.pick(["Host", "host", "HOST"]), host]);
  const n = r.chance(0.1) ? r.int(30, 80) : r.int(0, 8);
  for (let i = 0; i < n; i++) fields.push([tokenName(r), fieldValue(r)]);
  // Duplicates of a field already there, in another case.
  if (fields.length > 1 && r.chance(0.3)) {
    for (let i = r.int(1, 3); i > 0; i--) {
      const [name] = fields[r.int(1, fields.length - 1)];
      const flip = r.chance(0.5) ? name.toUpperCase() : name.toLowerCase();
      fields.splice(r.int(1, fields.length), 0, [flip, fieldValue(r)]);
    }
  }
  if (r.chance(0.1)) {
    fields.push(["Cookie", "a=1"], ["Cookie", "b=2"]);
  }
  if (r.chance(0.05)) fields.push(["Set-Cookie", "x=1"], ["Set-Cookie", "y=2"]);
  if (r.chance(0.1)) {
    // Forwarding and link fields a consumer may not set (the hub drops them).
    fields.push(r.pick([
      ["X-Forwarded-For", "203.0.113.9"],
      ["Forwarded", "for=203.0.113.9"],
      ["X-Request-Id", "not a uuid"],
      ["X-Request-Id", crypto.randomUUID()],
      ["X-Pothead-Queue-Ms", "99"],
      ["X-Forwarded-Host", "evil.example"],
    ] as [string, string][]));
  }
  let connection: string | null = null;
  if (r.chance(0.25)) {
    connection = r.pick([
      "keep-alive",
      "close",
      "Keep-Alive, X-Hop",
      "x-hop",
      "TE, close",
      "upgrade",
    ]);
    fields.push(["Connection", connection]);
    if (/x-hop/i.test(connection)) fields.push(["X-Hop", "secret"]);
    if (/te/i.test(connection)) fields.push(["TE", "trailers"]);
    if (/upgrade/i.test(connection)) fields.push(["Upgrade", "foo/2"]);
    kind = kind === "plain" ? "connection" : kind;
  }
  if (r.chance(0.05)) fields.push(["Keep-Alive", "timeout=5"]);
  if (r.chance(0.05)) fields.push(["Proxy-Authorization", "Basic eDp5"]);
  if (r.chance(0.15)) {
    fields.push([
      "X-Want-Status",
      String(r.pick([201, 202, 203, 404, 418, 500, 503])),
    ]);
  }
  if (r.chance(0.05)) fields.push(["Content-Type", "application/x-odd"]);

  let body: Uint8Array = new Uint8Array(0);
  let wire: Uint8Array = new Uint8Array(0);
  let awaitContinue = false;
  const bodyKind = r.below(10);
  if (bodyKind >= 5) {
    const size = r.chance(0.1)
      ? r.int(65 * 1024, 100 * 1024)
      : r.chance(0.2)
      ? 0
      : r.int(1, 5000);
    body = bodyBytes(r, size);
    if (bodyKind >= 8 && !http10) {
      fields.push([
        r.pick(["Transfer-Encoding", "transfer-encoding"]),
        "chunked",
      ]);
      const trailers = r.chance(0.3);
      if (trailers) fields.push(["Trailer", "X-Trailer-One"]);
      wire = chunked(r, body, trailers);
      kind = kind === "plain" ? "chunked" : kind;
    } else {
      fields.push([r.pick(["Content-Length", "content-length"]), String(size)]);
      wire = body;
      kind = kind === "plain" ? "content-length" : kind;
    }
    if (!http10 && r.chance(0.25)) {
      fields.push(["Expect", r.pick(["100-continue", "100-Continue"])]);
      awaitContinue = r.chance(0.5);
      kind = "expect";
    }
  }
  if (http10) kind = "http/1.0";
  if (method !== method.toUpperCase() || ODD_METHODS.includes(method)) {
    kind = kind === "plain" ? "odd-method" : kind;
  }
  // Shuffle the order a little: Host need not come first.
  if (fields.length > 2 && r.chance(0.2)) {
    const i = r.below(fields.length);
    const j = r.below(fields.length);
    [fields[i], fields[j]] = [fields[j], fields[i]];
  }
  const head = `${method} ${target} HTTP/1.${http10 ? 0 : 1}\r\n` +
    fields.map(([k, v]) => `${k}:${r.chance(0.8) ? " " : ""}${v}\r\n`)
      .join("") +
    "\r\n";
  if (absolute !== null && !validHost(absolute)) hubRefuses = "authority";
  return {
    kind,
    head,
    body: wire,
    awaitContinue,
    method,
    absolute,
    hubRefuses,
  };
}

/** Generates a request that is invalid, or at the edge of the grammar. */
function invalidCase(r: Rng): Case {
  const host = "Host: example.com\r\n";
  const variants: [string, string, string?][] = [
    [
      "bad chunk size",
      `POST /c HTTP/1.1\r\n${host}Transfer-Encoding: chunked\r\n\r\n`,
      "zz\r\nabc\r\n0\r\n\r\n",
    ],
    [
      "chunk too short",
      `POST /c HTTP/1.1\r\n${host}Transfer-Encoding: chunked\r\n\r\n`,
      "5\r\nabc\r\n0\r\n\r\n",
    ],
    [
      "chunk size overflow",
      `POST /c HTTP/1.1\r\n${host}Transfer-Encoding: chunked\r\n\r\n`,
      "fffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    ],
    [
      "CL and TE",
      `POST /c HTTP/1.1\r\n${host}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n`,
      "3\r\nabc\r\n0\r\n\r\n",
    ],
    [
      "TE gzip, chunked",
      `POST /c HTTP/1.1\r\n${host}Transfer-Encoding: gzip, chunked\r\n\r\n`,
      "3\r\nabc\r\n0\r\n\r\n",
    ],
    [
      "TE chunked twice",
      `POST /c HTTP/1.1\r\n${host}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n`,
      "3\r\nabc\r\n0\r\n\r\n",
    ],
    [
      "TE identity",
      `POST /c HTTP/1.1\r\n${host}Transfer-Encoding: identity\r\n\r\n`,
      "",
    ],
    ["space in name", `GET / HTTP/1.1\r\n${host}Bad Name: x\r\n\r\n`],
    ["quote in name", `GET / HTTP/1.1\r\n${host}Bad"Name: x\r\n\r\n`],
    ["paren in name", `GET / HTTP/1.1\r\n${host}Bad(n): x\r\n\r\n`],
    ["empty name", `GET / HTTP/1.1\r\n${host}: x\r\n\r\n`],
    ["no colon", `GET / HTTP/1.1\r\n${host}NoColon\r\n\r\n`],
    ["NUL in value", `GET / HTTP/1.1\r\n${host}X-A: a\x00b\r\n\r\n`],
    ["CR in value", `GET / HTTP/1.1\r\n${host}X-A: a\rb\r\n\r\n`],
    ["LF in value", `GET / HTTP/1.1\r\n${host}X-A: a\nb\r\n\r\n`],
    ["DEL in value", `GET / HTTP/1.1\r\n${host}X-A: a\x7fb\r\n\r\n`],
    ["control in value", `GET / HTTP/1.1\r\n${host}X-A: a\x01b\r\n\r\n`],
    ["space before colon", `GET / HTTP/1.1\r\n${host}X-A : x\r\n\r\n`],
    ["obs-fold", `GET / HTTP/1.1\r\n${host}X-A: x\r\n  y\r\n\r\n`],
    [
      "two CLs differ",
      `POST /c HTTP/1.1\r\n${host}Content-Length: 3\r\nContent-Length: 4\r\n\r\n`,
      "abcd",
    ],
    [
      "two CLs same",
      `POST /c HTTP/1.1\r\n${host}Content-Length: 3\r\nContent-Length: 3\r\n\r\n`,
      "abc",
    ],
    [
      "CL list",
      `POST /c HTTP/1.1\r\n${host}Content-Length: 3, 3\r\n\r\n`,
      "abc",
    ],
    [
      "CL plus sign",
      `POST /c HTTP/1.1\r\n${host}Content-Length: +3\r\n\r\n`,
      "abc",
    ],
    ["CL negative", `POST /c HTTP/1.1\r\n${host}Content-Length: -1\r\n\r\n`],
    ["CL hex", `POST /c HTTP/1.1\r\n${host}Content-Length: 0x3\r\n\r\n`, "abc"],
    ["missing Host 1.1", `GET /nohost HTTP/1.1\r\nX-A: 1\r\n\r\n`],
    ["two Hosts", `GET / HTTP/1.1\r\n${host}Host: other.example\r\n\r\n`],
    ["empty Host", `GET /e HTTP/1.1\r\nHost:\r\n\r\n`],
    ["Host with path", `GET /e HTTP/1.1\r\nHost: a/b\r\n\r\n`],
    ["Host with space", `GET /e HTTP/1.1\r\nHost: a b\r\n\r\n`],
    ["Host with userinfo", `GET /e HTTP/1.1\r\nHost: u@a\r\n\r\n`],
    ["bare LF line ends", `GET /lf HTTP/1.1\nHost: example.com\nX-A: 1\n\n`],
    ["space in target", `GET /a b HTTP/1.1\r\n${host}\r\n`],
    ["two spaces", `GET  / HTTP/1.1\r\n${host}\r\n`],
    ["lower-case version", `GET / http/1.1\r\n${host}\r\n`],
    ["HTTP/1.2", `GET / HTTP/1.2\r\n${host}\r\n`],
    ["HTTP/2.0", `GET / HTTP/2.0\r\n${host}\r\n`],
    ["no version", `GET /\r\n${host}\r\n`],
    ["bad method char", `GE(T / HTTP/1.1\r\n${host}\r\n`],
    ["obs-text in target", `GET /caf\xe9?q=\xff HTTP/1.1\r\n${host}\r\n`],
    ["UTF-8 in target", `GET /caf\xc3\xa9 HTTP/1.1\r\n${host}\r\n`],
    [
      "quote and braces in target",
      `GET /a"b{c}|d^e\`f HTTP/1.1\r\n${host}\r\n`,
    ],
    ["fragment in target", `GET /a#frag HTTP/1.1\r\n${host}\r\n`],
    ["asterisk form", `OPTIONS * HTTP/1.1\r\n${host}\r\n`],
    ["authority form", `CONNECT example.com:443 HTTP/1.1\r\n${host}\r\n`],
    [
      "absolute with userinfo",
      `GET http://u:p@example.com/x HTTP/1.1\r\n${host}\r\n`,
    ],
    ["absolute no host", `GET http:///x HTTP/1.1\r\n${host}\r\n`],
    ["absolute odd scheme", `GET ftp://example.com/x HTTP/1.1\r\n${host}\r\n`],
    ["TRACE", `TRACE /t HTTP/1.1\r\n${host}\r\n`],
    [
      "too many fields",
      `GET / HTTP/1.1\r\n${host}` +
      Array.from({ length: 130 }, (_, i) => `X-F${i}: ${i}\r\n`).join("") +
      "\r\n",
    ],
    [
      "huge field",
      `GET / HTTP/1.1\r\n${host}X-Big: ${"b".repeat(100_000)}\r\n\r\n`,
    ],
    ["leading CRLF", `\r\nGET /lead HTTP/1.1\r\n${host}\r\n`],
    [
      "GET with CL body",
      `GET /gb HTTP/1.1\r\n${host}Content-Length: 5\r\n\r\n`,
      "hello",
    ],
    [
      "HEAD with chunked body",
      `HEAD /hb HTTP/1.1\r\n${host}Transfer-Encoding: chunked\r\n\r\n`,
      "5\r\nhello\r\n0\r\n\r\n",
    ],
    [
      "1.0 chunked",
      `POST /c10 HTTP/1.0\r\n${host}Transfer-Encoding: chunked\r\n\r\n`,
      "3\r\nabc\r\n0\r\n\r\n",
    ],
    [
      "chunk ext with CTL",
      `POST /c HTTP/1.1\r\n${host}Transfer-Encoding: chunked\r\n\r\n`,
      "3;a=\x01\r\nabc\r\n0\r\n\r\n",
    ],
    [
      "bad trailer",
      `POST /c HTTP/1.1\r\n${host}Transfer-Encoding: chunked\r\n\r\n`,
      "3\r\nabc\r\n0\r\nBad Trailer\r\n\r\n",
    ],
    [
      "Expect other",
      `POST /c HTTP/1.1\r\n${host}Expect: 200-ok\r\nContent-Length: 3\r\n\r\n`,
      "abc",
    ],
    [
      "Upgrade websocket no key",
      `GET /ws HTTP/1.1\r\n${host}Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n`,
    ],
    [
      "Connection names Host",
      `GET /c HTTP/1.1\r\n${host}Connection: host\r\n\r\n`,
    ],
    [
      "Connection names Content-Length",
      `POST /c HTTP/1.1\r\n${host}Connection: content-length\r\nContent-Length: 3\r\n\r\n`,
      "abc",
    ],
  ];
  const [kind, head, body] = r.pick(variants);
  const m = /^(\S*) (\S*)/.exec(head.replace(/^\r\n/, ""));
  const absolute = /^[a-z][a-z0-9+.-]*:\/\/([^/?#]*)/i.exec(m?.[2] ?? "")?.[1];
  return {
    kind: `invalid: ${kind}`,
    head,
    body: latin1Bytes(body ?? ""),
    awaitContinue: false,
    method: m?.[1] ?? "",
    absolute: absolute ?? null,
    hubRefuses: absolute !== undefined && !validHost(absolute)
      ? "authority"
      : null,
  };
}

function generate(seed: number, count: number): Case[] {
  const r = new Rng(seed);
  return Array.from(
    { length: count },
    () => r.chance(0.3) ? invalidCase(r) : validCase(r),
  );
}

// --- The handler and what it saw ---------------------------------------------

/** What the echo handler saw of one request. */
interface Seen {
  method: string;
  url: string;
  headers: [string, string][];
  bodyNull: boolean;
  bodyLength: number;
  bodySha256: string;
  bodyError: string | null;
}

/** The echo handler H; `log` collects what each call saw. */
function echoHandler(log: Seen[]): (req: Request) => Promise<Response> {
  return async (req) => {
    const seen: Seen = {
      method: req.method,
      url: req.url,
      headers: [...req.headers],
      bodyNull: req.body === null,
      bodyLength: 0,
      bodySha256: "",
      bodyError: null,
    };
    log.push(seen);
    if (req.body !== null) {
      try {
        const bytes = await req.bytes();
        seen.bodyLength = bytes.length;
        seen.bodySha256 = await sha256(bytes);
      } catch (error) {
        seen.bodyError = String(error);
      }
    }
    const want = Number(req.headers.get("x-want-status") ?? 200);
    return new Response(JSON.stringify(seen), {
      status: want,
      headers: { "content-type": "application/json", "x-echo": "1" },
    });
  };
}

// --- Sending a case ----------------------------------------------------------

/** What a client saw: a final response, or a close (or nothing) without one. */
type Outcome =
  | { kind: "response"; status: number; body: Uint8Array; head: string }
  | { kind: "closed" }
  | { kind: "hung" };

async function exchange(port: number, c: Case): Promise<Outcome> {
  const sock = await RawSocket.connect(port);
  const timer = setTimeout(() => sock.close(), CASE_DEADLINE);
  const started = performance.now();
  try {
    // Methods are case-sensitive: only "HEAD" has a bodiless response.
    const noBody = c.method === "HEAD";
    if (c.awaitContinue) {
      await sock.write(c.head);
      const first = await sock.readMessage(noBody);
      if (first === null) return { kind: "closed" };
      if (first.status !== 100) {
        return {
          kind: "response",
          status: first.status,
          body: first.body,
          head: first.start,
        };
      }
      await sock.write(c.body);
    } else {
      const all = new Uint8Array(c.head.length + c.body.length);
      all.set(latin1Bytes(c.head));
      all.set(c.body, c.head.length);
      await sock.write(all);
    }
    for (let i = 0; i < 20; i++) {
      let msg;
      try {
        msg = await sock.readMessage(noBody);
      } catch {
        msg = null; // cut inside a message
      }
      if (msg === null) {
        return performance.now() - started >= CASE_DEADLINE
          ? { kind: "hung" }
          : { kind: "closed" };
      }
      if (msg.status >= 200 || msg.status === 0) {
        return {
          kind: "response",
          status: msg.status,
          body: msg.body,
          head: msg.start,
        };
      }
    }
    throw new Error("more than 20 interim responses");
  } finally {
    clearTimeout(timer);
    sock.close();
  }
}

// --- Comparing ---------------------------------------------------------------

const NORMALISED_METHODS = new Set([
  "DELETE",
  "GET",
  "HEAD",
  "OPTIONS",
  "POST",
  "PUT",
]);

/** A view of {@linkcode Seen} reduced to what must match. */
interface Normalised {
  method: string;
  url: string;
  headers: [string, string][];
  body: unknown;
}

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
]);

/**
 * What a handler saw, reduced to what the hub promises to pass on. Written
 * here independently of `_headers.ts`, so a slip there shows.
 */
function normalise(
  s: Seen,
  side: "reference" | "hub",
  ports: { reference: number; hub: number },
  c: Case,
): Normalised {
  const self = (text: string) =>
    text.replace(
      new RegExp(
        `(127\\.0\\.0\\.1|localhost):(${ports.reference}|${ports.hub})`,
        "g",
      ),
      "SELF",
    );
  let url = self(s.url);
  let headers = s.headers.map(([n, v]): [string, string] => [n, self(v)]);
  const named = new Set<string>();
  for (const [n, v] of headers) {
    if (n !== "connection") continue;
    for (const t of v.split(",")) named.add(t.trim().toLowerCase());
  }
  headers = headers.filter(([n]) =>
    // Hop-by-hop fields and those Connection names: dropped by the hub
    // (RFC 9110 §7.6.1), each hop frames its own body.
    !HOP_BY_HOP.has(n) && !named.has(n) &&
    // Framing: the hub frames the body itself (Content-Length or chunked,
    // its choice); the body bytes are compared instead.
    n !== "content-length" &&
    // Answered before the handler (README, Worker CLI); Deno.serve shows it.
    n !== "expect" &&
    // Set by the hub (README, "The hub adds"); checked in hubFields.
    n !== "x-forwarded-for" && n !== "x-forwarded-proto" &&
    n !== "x-forwarded-host" && n !== "forwarded" && n !== "x-request-id" &&
    !n.startsWith("x-pothead-")
  );
  if (side === "reference") {
    // Any byte outside visible ASCII in the target is percent-encoded as
    // UTF-8 (README, the worker link protocol); Deno.serve decodes it.
    url = percentEncode(url);
    // An absolute-form target's authority is the Host the worker gets, and
    // its scheme is not passed on (README, the worker link protocol).
    if (c.absolute !== null) {
      // Origin form needs a path: "http://h?q" goes as "/?q".
      url = url.replace(/^[a-z][a-z0-9+.-]*:/i, "http:")
        .replace(/^(http:\/\/[^/?#]*)(?=\?|$)/, "$1/");
      headers = headers.filter(([n]) => n !== "host");
      headers.push(["host", new URL(url).host === "" ? "" : authorityOf(url)]);
    }
    // No Host field (HTTP/1.0): the hub sends the host it was asked for,
    // which is its own address, as the URL says.
    if (!headers.some(([n]) => n === "host")) {
      headers.push(["host", authorityOf(url)]);
    }
    headers.sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0);
  }
  if (ENGINE === "inline") {
    // The inline engine builds `new Request(url)`: the URL parser resolves
    // dot segments and percent-encodes what it must (a Deno limitation;
    // Deno.serve's own Request keeps the target as sent).
    url = new URL(url).href;
  }
  let body: unknown = {
    null: s.bodyNull,
    length: s.bodyLength,
    sha256: s.bodySha256,
    error: s.bodyError !== null,
  };
  let method = s.method;
  if (ENGINE === "inline" && NORMALISED_METHODS.has(method.toUpperCase())) {
    // `new Request` upper-cases these six methods whatever their case
    // (Fetch standard); Deno.serve's own Request keeps "Post" as sent. The
    // inline engine cannot make a Request without it (a Deno limitation).
    method = method.toUpperCase();
    if ((method === "GET" || method === "HEAD") && method !== c.method) {
      // ... and so cannot carry a body for "get" or "head", which
      // Deno.serve gives one (an empty one when none was sent).
      body = "none: a GET or HEAD Request has no body";
    }
  }
  if (ENGINE === "inline" && ["TRACE", "TRACK"].includes(method)) {
    // `new Request` refuses these methods: the inline engine makes the
    // request as a GET (no body) and gives it its own method, where
    // Deno.serve gives an empty body stream.
    body = "none: made as a GET";
  }
  if (s.headers.some(([n, v]) => n === "host" && v === "")) {
    // An empty Host: each server puts its own address in the URL (the
    // serve engine's private listener, the inline engine "localhost").
    url = url.replace(/^(https?:\/\/)(localhost(:[0-9]+)?|SELF)\//i, "$1SELF/");
  }
  return { method, url, headers, body };
}

const utf8 = new TextEncoder();

function percentEncode(url: string): string {
  let out = "";
  for (const ch of url) {
    const code = ch.codePointAt(0)!;
    if (code > 0x20 && code < 0x7f) out += ch;
    else {
      for (const b of utf8.encode(ch)) {
        out += "%" + b.toString(16).toUpperCase().padStart(2, "0");
      }
    }
  }
  return out;
}

const cut = (v: unknown) => {
  const s = JSON.stringify(v);
  return s.length > 160 ? s.slice(0, 160) + "…" : s;
};

/** What differs between two normalised views, briefly. */
function differences(a: Normalised, b: Normalised): string[] {
  const out: string[] = [];
  for (const key of Object.keys(a) as (keyof Normalised)[]) {
    if (key === "headers") continue;
    if (JSON.stringify(a[key]) !== JSON.stringify(b[key])) {
      out.push(`${key}: reference ${cut(a[key])}, hub ${cut(b[key])}`);
    }
  }
  const max = Math.max(a.headers.length, b.headers.length);
  for (let i = 0; i < max; i++) {
    if (JSON.stringify(a.headers[i]) !== JSON.stringify(b.headers[i])) {
      out.push(
        `header #${i}: reference ${cut(a.headers[i])}, hub ${
          cut(b.headers[i])
        }`,
      );
      break;
    }
  }
  return out;
}

function authorityOf(url: string): string {
  const from = url.indexOf("//") + 2;
  const m = /^[^/?#]*/.exec(url.slice(from))!;
  return m[0];
}

/** The fields the hub sets itself (README, "The hub adds"). */
function hubFields(s: Seen, c: Case): string[] {
  const problems: string[] = [];
  const get = (n: string) =>
    s.headers.filter(([k]) => k === n).map(([, v]) => v);
  if (get("x-forwarded-for").join() !== "127.0.0.1") {
    problems.push(`x-forwarded-for ${JSON.stringify(get("x-forwarded-for"))}`);
  }
  if (get("x-forwarded-proto").join() !== "http") {
    problems.push(
      `x-forwarded-proto ${JSON.stringify(get("x-forwarded-proto"))}`,
    );
  }
  const host = s.headers.find(([k]) => k === "host")?.[1] ?? "";
  if (get("x-forwarded-host").join() !== host) {
    problems.push(
      `x-forwarded-host ${
        JSON.stringify(get("x-forwarded-host"))
      } for host ${host}`,
    );
  }
  const id = get("x-request-id");
  const given = /\r\nX-Request-Id: ([^\r]*)\r\n/i.exec(c.head)?.[1];
  if (
    id.length !== 1 || !UUID.test(id[0]) ||
    (given !== undefined && UUID.test(given) && id[0] !== given)
  ) {
    problems.push(`x-request-id ${JSON.stringify(id)} (sent ${given})`);
  }
  const queued = get("x-pothead-queue-ms");
  if (queued.length !== 1 || !/^[0-9]+\.[0-9]$/.test(queued[0])) {
    problems.push(`x-pothead-queue-ms ${JSON.stringify(queued)}`);
  }
  if (get("forwarded").length !== 0) problems.push("forwarded passed on");
  if (s.headers.some(([k]) => k === "expect")) {
    problems.push("handler saw Expect");
  }
  return problems;
}

function describe(o: Outcome): string {
  if (o.kind !== "response") return o.kind;
  return `${o.status} ${JSON.stringify(latin1Text(o.body).slice(0, 100))}`;
}

function show(c: Case): string {
  const text = c.head + latin1Text(c.body);
  return JSON.stringify(text.length > 300 ? text.slice(0, 300) + "…" : text);
}

/** Compares one case; returns what differs (empty when all is well). */
function compare(
  c: Case,
  ref: Outcome,
  hub: Outcome,
  refSeen: Seen[],
  hubSeen: Seen[],
  ports: { reference: number; hub: number },
): string[] {
  const out: string[] = [];
  if (refSeen.length > 1) {
    out.push(`reference handler ran ${refSeen.length} times`);
  }
  if (hubSeen.length > 1) {
    out.push(`worker handler ran ${hubSeen.length} times`);
  }
  if (refSeen.length === 0) {
    // Refused by Deno.serve before any handler: the hub's front is
    // Deno.serve, so the same refusal, and nothing reaches a worker.
    if (hubSeen.length !== 0) {
      out.push("worker saw a request the reference refused");
    }
    if (describe(ref) !== describe(hub)) {
      out.push(
        `refusal differs: reference ${describe(ref)}, hub ${describe(hub)}`,
      );
    }
    return out;
  }
  const r = refSeen[0];
  if (
    c.hubRefuses !== null ||
    r.headers.some(([n, v]) => n === "host" && !validHost(v))
  ) {
    // The hub answers 400 to a Host (or absolute-form authority) that is
    // not host[:port] (README, the worker link protocol): it routes on it.
    if (hub.kind !== "response" || hub.status !== 400 || hubSeen.length !== 0) {
      out.push(
        `expected the hub's 400 for the host, got ${
          describe(hub)
        }, worker ran ${hubSeen.length}`,
      );
    }
    return out;
  }
  const tokens = (name: string) =>
    r.headers.filter(([n]) => n === name).flatMap(([, v]) =>
      v.toLowerCase().split(",").map((t) => t.trim())
    );
  if (
    tokens("upgrade").includes("websocket") &&
    tokens("connection").includes("upgrade")
  ) {
    // A WebSocket handshake the hub cannot pass on (these have no valid
    // Sec-WebSocket-Key) is answered at once (README, "WebSockets").
    if (hub.kind !== "response" || hub.status !== 400 || hubSeen.length !== 0) {
      out.push(
        `expected the hub's 400 for the handshake, got ${
          describe(hub)
        }, worker ran ${hubSeen.length}`,
      );
    }
    return out;
  }
  if (r.method === "CONNECT") {
    // Not settled (reported, not fixed): the hub has no tunnel and sends a
    // CONNECT on in origin form ("CONNECT / HTTP/1.1", invalid by RFC 9112
    // §3.2.3) with the target's authority as Host. The serve engine's
    // Deno.serve refuses that with 400; the inline engine runs the handler.
    // Only check that the consumer gets an answer and nothing runs twice.
    if (hub.kind !== "response") out.push(`CONNECT: hub ${describe(hub)}`);
    if (hubSeen.length === 1 && hubSeen[0].method !== "CONNECT") {
      out.push(`CONNECT: worker saw ${hubSeen[0].method}`);
    }
    return out;
  }
  if (r.bodyError !== null) {
    // A malformed body found after the head: Deno.serve's handler sees the
    // body fail; the hub answers 400 (README, "What the consumer sees"),
    // whether or not the head had reached a worker.
    if (hub.kind !== "response" || hub.status !== 400) {
      out.push(`malformed body: expected the hub's 400, got ${describe(hub)}`);
    }
    if (hubSeen.length === 1 && hubSeen[0].bodyError === null) {
      out.push("worker's handler read the malformed body without an error");
    }
    return out;
  }
  if (hubSeen.length !== 1) {
    out.push(
      `worker handler ran ${hubSeen.length} times, reference once (hub answered ${
        describe(hub)
      })`,
    );
    return out;
  }
  const h = hubSeen[0];
  out.push(...differences(
    normalise(r, "reference", ports, c),
    normalise(h, "hub", ports, c),
  ));
  out.push(...hubFields(h, c));
  // The consumer gets the handler's answer.
  const want = Number(
    h.headers.find(([n]) => n === "x-want-status")?.[1] ?? 200,
  );
  const wantBody = c.method === "HEAD" ? "" : JSON.stringify(h);
  if (
    hub.kind !== "response" || hub.status !== want ||
    new TextDecoder().decode(hub.body) !== wantBody
  ) {
    out.push(`consumer got ${describe(hub)}, handler answered ${want}`);
  }
  if (ref.kind !== "response" || ref.status !== want) {
    out.push(`reference consumer got ${describe(ref)}`);
  }
  return out;
}

const VALID_HOST =
  /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?$/;
function validHost(v: string): boolean {
  return VALID_HOST.test(v);
}

// --- The test ----------------------------------------------------------------

Deno.test(`differential: what a handler sees, hub (engine ${ENGINE}) vs Deno.serve`, async () => {
  const refSeen: Seen[] = [];
  const hubSeen: Seen[] = [];
  const reference = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    echoHandler(refSeen),
  );
  const server = startHub();
  const worker = startWorker(server, echoHandler(hubSeen));
  const started = performance.now();
  const kinds = new Map<string, number>();
  const fates = new Map<string, number>();
  const failures: string[] = [];
  let total = 0;
  try {
    await waitFor(
      () => server.hub.stats.idle === 1,
      "the worker's slot",
      10_000,
    );
    const ports = { reference: reference.addr.port, hub: server.addr.port };
    for (const seed of SEEDS) {
      const cases = generate(seed, CASES_PER_SEED);
      for (let i = 0; i < cases.length; i++) {
        const c = cases[i];
        total++;
        kinds.set(c.kind, (kinds.get(c.kind) ?? 0) + 1);
        refSeen.length = 0;
        hubSeen.length = 0;
        const ref = await deadline(
          exchange(ports.reference, c),
          CASE_DEADLINE * 2,
          "reference",
        );
        const hub = await deadline(
          exchange(ports.hub, c),
          CASE_DEADLINE * 2,
          "hub",
        );
        // The worker's slot must be back before the next case, so that a
        // handler call is counted for the case that made it.
        await waitFor(
          () => server.hub.stats.idle === 1,
          "the worker's slot back",
          10_000,
        );
        const diffs = compare(c, ref, hub, [...refSeen], [...hubSeen], ports);
        const fate = refSeen.length === 0
          ? "refused before the handler"
          : hubSeen.length === 0
          ? "refused by the hub only"
          : "handled";
        fates.set(fate, (fates.get(fate) ?? 0) + 1);
        if (VERBOSE || diffs.length > 0) {
          const line = `seed ${seed} case ${i} (${c.kind}) ${show(c)}\n` +
            `  reference: ${describe(ref)}\n  hub:       ${describe(hub)}` +
            diffs.map((d) => `\n  DIFF ${d}`).join("");
          if (diffs.length > 0) failures.push(line);
          else console.log(line);
        }
      }
    }
  } finally {
    worker.close();
    await worker.finished;
    await server.shutdown();
    await reference.shutdown();
  }
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  console.log(
    `differential (${ENGINE}): ${total} cases, seeds ${
      SEEDS.join(", ")
    }, ${seconds} s; ` +
      [...fates, ...[...kinds].sort()].map(([k, n]) => `${k}: ${n}`)
        .join("; "),
  );
  assert.ok(total >= SEEDS.length * CASES_PER_SEED);
  assert.equal(
    failures.length,
    0,
    `${failures.length} of ${total} cases differ:\n${
      failures.slice(0, 15).join("\n")
    }`,
  );
});
