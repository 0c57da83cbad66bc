/**
 * A seeded differential test of worker responses: the same raw HTTP/1.1
 * response bytes reach Deno's `fetch` (hyper, an implementation that is not
 * ours) twice, once straight from a raw TCP server and once through the hub
 * from a plain worker (a raw socket that dials the worker port and writes
 * the bytes when a request comes). Valid responses must come out the same
 * (status, end-to-end fields, body) but for the documented differences;
 * invalid ones must give the consumer a `502` or a body that errors (never
 * a clean, shorter body), must not leave the worker connection in use, and
 * must not stop the hub from serving the next case.
 *
 * Seeds are fixed; `POTHEAD_DIFF_SEED=N` (and `POTHEAD_DIFF_CASES=N`) runs
 * one seed, to replay a failure. A failure names its seed and case index.
 */

import assert from "node:assert/strict";
import { startHub } from "./_hub.ts";
import { deadline, latin1Bytes, latin1Text, RawSocket } from "./_relay.ts";
import { Rng } from "./_data.ts";

const SEEDS = Deno.env.get("POTHEAD_DIFF_SEED")
  ? [Number(Deno.env.get("POTHEAD_DIFF_SEED"))]
  : [0x5eed01, 0xc0ffee, 20261205];
const CASES_PER_SEED = Number(Deno.env.get("POTHEAD_DIFF_CASES") ?? 200);
/** Hang guard of one fetch, head and body. */
const CASE_MS = 8_000;

// --- Generating responses ------------------------------------------------------

/**
 * - `valid`: a response RFC 9112/9110 allows; the hub must give what fetch
 *   gets straight from the server, but for the documented differences.
 * - `lenient`: a sender error that recipients commonly recover from (or
 *   syntax the RFC lets a recipient accept): the hub may be stricter than
 *   fetch (a `502`), but if it answers, it must answer as fetch does.
 * - `invalid`: the hub must answer `502`, or, when the problem is in the
 *   body after the head went on, end the consumer's body with an error.
 */
type Class = "valid" | "lenient" | "invalid";

interface Case {
  seed: number;
  index: number;
  kind: string;
  cls: Class;
  method: "GET" | "HEAD";
  /** The worker's whole answer, ISO-8859-1. */
  text: string;
  /** The worker (and the reference server) close after writing. */
  close: boolean;
  /** The hub must not send another request on this connection. */
  mustDrop: boolean;
  /** A valid answer the hub must keep the connection after. */
  reusable: boolean;
  /** The hub may answer it although fetch refuses it (see the case). */
  hubMayPass: boolean;
  /** Over a limit of fetch's own: it refuses both ways; curl judges. */
  fetchLimit: boolean;
  /**
   * Offsets where the plain worker splits its write, pausing between the
   * pieces, so the hub parses heads, chunk lines and CRLFs that arrive in
   * parts (empty: one write).
   */
  splits: number[];
}

const TCHARS = "!#$%&'*+-.^_`|~0123456789" +
  "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const VCHARS = (() => {
  let s = "";
  for (let c = 0x21; c <= 0x7e; c++) s += String.fromCharCode(c);
  return s;
})();
// Names the generator must not make by chance: framing and hop-by-hop fields
// (made on purpose only), and the fields the hub sets itself.
const RESERVED = new Set([
  "content-length",
  "transfer-encoding",
  "connection",
  "keep-alive",
  "te",
  "trailer",
  "upgrade",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "x-request-id",
  "server-timing",
  "date",
  "content-encoding",
  "set-cookie",
]);

function randomCase(rng: Rng, name: string): string {
  let out = "";
  for (const ch of name) {
    out += rng.chance(0.5) ? ch.toUpperCase() : ch.toLowerCase();
  }
  return out;
}

function chars(rng: Rng, alphabet: string, lo: number, hi: number): string {
  const n = rng.int(lo, hi);
  let s = "";
  for (let i = 0; i < n; i++) s += alphabet[rng.int(0, alphabet.length - 1)];
  return s;
}

function fieldName(rng: Rng): string {
  for (;;) {
    const name = rng.chance(0.3)
      ? rng.pick([
        "Content-Type",
        "Cache-Control",
        "ETag",
        "Link",
        "Vary",
        "Location",
        "Content-Language",
        "Last-Modified",
        "Accept-Ranges",
        "WWW-Authenticate",
        "X-Frame-Options",
      ])
      : "x-" + chars(rng, TCHARS, 1, 24);
    if (
      !RESERVED.has(name.toLowerCase()) &&
      !name.toLowerCase().startsWith("x-pothead-")
    ) return randomCase(rng, name);
  }
}

function obsText(rng: Rng, lo: number, hi: number): string {
  const n = rng.int(lo, hi);
  let s = "";
  for (let i = 0; i < n; i++) s += String.fromCharCode(rng.int(0x80, 0xff));
  return s;
}

/** A field value: words, inner SP/HTAB, obs-text, OWS at the edges. */
function fieldValue(rng: Rng): string {
  const shape = rng.int(0, 9);
  if (shape === 0) return "";
  if (shape === 1) return chars(rng, " \t", 1, 3); // only whitespace
  if (shape === 2) return chars(rng, VCHARS, 1024, 4096); // long
  let v = "";
  const words = rng.int(1, 6);
  for (let i = 0; i < words; i++) {
    if (i > 0) v += chars(rng, " \t", 1, 3);
    v += rng.chance(0.2) ? obsText(rng, 1, 4) : chars(rng, VCHARS, 1, 12);
  }
  if (rng.chance(0.3)) v = chars(rng, " \t", 1, 3) + v;
  if (rng.chance(0.3)) v += chars(rng, " \t", 1, 3);
  return v;
}

const STATUSES = [
  200,
  200,
  200,
  201,
  204,
  205,
  206,
  299,
  301,
  304,
  400,
  404,
  418,
  500,
  503,
  599,
];

function reason(rng: Rng, status: number): string {
  switch (rng.int(0, 5)) {
    case 0:
      return "";
    case 1:
      return chars(rng, VCHARS + " \t", 60, 300);
    case 2:
      return "Caf" + obsText(rng, 1, 8) + " ok";
    default:
      return status === 200 ? "OK" : "Some Reason";
  }
}

function interims(rng: Rng): string {
  if (!rng.chance(0.2)) return "";
  let s = "";
  const n = rng.int(1, 3);
  for (let i = 0; i < n; i++) {
    const status = rng.pick([100, 102, 103]);
    s += `HTTP/1.1 ${status} ${rng.pick(["", "Interim", "Early Hints"])}\r\n`;
    if (status === 103 || rng.chance(0.3)) {
      s += `Link: </style${i}.css>; rel=preload; as=style\r\n`;
      if (rng.chance(0.5)) s += `${fieldName(rng)}: ${fieldValue(rng)}\r\n`;
    }
    s += "\r\n";
  }
  return s;
}

/** Header lines (each with CRLF): random fields, repeats, cookies. */
function fieldLines(rng: Rng, max: number): string {
  const n = rng.chance(0.1) ? rng.int(30, max) : rng.int(0, 12);
  const names: string[] = [];
  let s = "";
  for (let i = 0; i < n; i++) {
    let name: string;
    if (names.length > 0 && rng.chance(0.2)) {
      name = randomCase(rng, rng.pick(names)); // a repeat, any case
    } else if (rng.chance(0.1)) {
      name = randomCase(rng, "set-cookie");
    } else {
      name = fieldName(rng);
    }
    names.push(name);
    const value = name.toLowerCase() === "set-cookie"
      ? `c${i}=${chars(rng, "abcdef0123", 1, 8)}; Path=/; HttpOnly`
      : fieldValue(rng);
    s += `${name}:${rng.chance(0.2) ? "" : " "}${value}\r\n`;
  }
  return s;
}

function randomBody(rng: Rng): string {
  const size = rng.chance(0.05)
    ? rng.int(70_000, 160_000) // over the hub's small-body size: streamed
    : rng.chance(0.2)
    ? 0
    : rng.int(1, 3000);
  let s = "";
  for (let i = 0; i < size; i++) s += String.fromCharCode(rng.int(0, 255));
  return s;
}

function chunkExt(rng: Rng): string {
  switch (rng.int(0, 5)) {
    case 0:
      return ";ext";
    case 1:
      return `;a=${chars(rng, TCHARS, 1, 8)}`;
    case 2:
      return ';q="quoted, with spaces"';
    default:
      return "";
  }
}

/** A chunked encoding of `body`, with extensions and maybe trailers. */
function chunked(rng: Rng, body: string, lastLine = "0"): string {
  let s = "";
  let at = 0;
  while (at < body.length) {
    const n = Math.min(body.length - at, rng.int(1, 5000));
    let size = n.toString(16);
    if (rng.chance(0.2)) size = size.toUpperCase();
    if (rng.chance(0.1)) size = "00" + size;
    s += size + chunkExt(rng) + "\r\n" + body.slice(at, at + n) + "\r\n";
    at += n;
  }
  s += lastLine + chunkExt(rng) + "\r\n";
  if (rng.chance(0.3)) {
    s += `X-Checksum: ${chars(rng, VCHARS, 1, 16)}\r\n`;
    if (rng.chance(0.5)) s += `${fieldName(rng)}: ${fieldValue(rng)}\r\n`;
  }
  return s + "\r\n";
}

interface Built {
  kind: string;
  cls: Class;
  method: "GET" | "HEAD";
  text: string;
  close?: boolean;
  mustDrop?: boolean;
  reusable?: boolean;
  hubMayPass?: boolean;
  fetchLimit?: boolean;
  /**
   * The answer ends with this many bytes after a complete response. They
   * go in the same write as its end: a rogue worker's bytes that come
   * after the hub has sent the next request are that request's answer, as
   * for any HTTP/1.1 client (README, "Not done yet"), so a pause there
   * would fail the next case, not this one.
   */
  strayBytes?: number;
}

function validResponse(rng: Rng): Built {
  const method = rng.chance(0.15) ? "HEAD" : "GET";
  const status = rng.pick(STATUSES);
  const http10 = rng.chance(0.1);
  let head = interims(rng) +
    `HTTP/1.${http10 ? 0 : 1} ${status} ${reason(rng, status)}\r\n`;
  head += fieldLines(rng, 70);
  let closeAsked = false;
  const keepAlive10 = http10 && rng.chance(0.5);
  if (keepAlive10) head += `Connection: ${randomCase(rng, "keep-alive")}\r\n`;
  else if (rng.chance(0.1)) {
    // A hop-by-hop field, and one that Connection names: both are dropped.
    const named = "x-hop-" + chars(rng, "abc", 1, 4);
    head += `Keep-Alive: timeout=5\r\n${named}: secret\r\n`;
    closeAsked = rng.chance(0.3);
    head += `Connection: ${randomCase(rng, named)}${
      closeAsked ? ", close" : ""
    }\r\n`;
  }
  const body = randomBody(rng);
  const noBody = status === 204 || status === 304;
  let framing: string;
  // No Content-Length on a 204 (RFC 9110 §8.6), and none but 0 on a 205,
  // whose GET would have no content either (§15.3.6).
  if (method === "HEAD" && status === 204) {
    framing = "none";
  } else if (method === "HEAD" && status === 205) {
    framing = rng.pick(["empty-length", "chunked", "none"]);
  } else if (method === "HEAD") {
    framing = rng.pick(["length", "chunked", "none"]);
  } else if (noBody) {
    framing = status === 304 && rng.chance(0.5) ? "length" : "none";
  } else if (status === 205) {
    framing = rng.pick(["empty-length", "empty-chunked"]);
  } else {
    framing = http10
      ? rng.pick(["length", "close"])
      : rng.pick(["length", "length", "chunked", "chunked", "close"]);
  }
  // No Transfer-Encoding in HTTP/1.0 (RFC 9112 §6.1; a lenient case).
  if (http10 && framing === "chunked") framing = "length";
  if (http10 && framing === "empty-chunked") framing = "empty-length";
  let text: string;
  const bodiless = method === "HEAD" || noBody;
  switch (framing) {
    case "length":
      text = head + `Content-Length: ${body.length}\r\n\r\n` +
        (bodiless ? "" : body);
      break;
    case "chunked":
      text = head + "Transfer-Encoding: chunked\r\n\r\n" +
        (bodiless ? "" : chunked(rng, body));
      break;
    case "empty-length":
      text = head + "Content-Length: 0\r\n\r\n";
      break;
    case "empty-chunked":
      text = head + "Transfer-Encoding: chunked\r\n\r\n" +
        (bodiless ? "" : "0\r\n\r\n");
      break;
    case "close":
      text = head + "\r\n" + body;
      break;
    default:
      text = head + "\r\n";
  }
  const close = framing === "close";
  return {
    kind: `valid ${method} ${status} ${framing}${http10 ? " http/1.0" : ""}`,
    cls: "valid",
    method,
    text,
    close,
    reusable: !close && (!http10 || keepAlive10) && !closeAsked,
  };
}

const OK_HEAD = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n";

/** Responses recipients may accept or refuse. */
const LENIENT_KINDS = 14;

/** Lenient case `pick` (0 to LENIENT_KINDS - 1), its details random. */
function lenientResponse(rng: Rng, pick: number): Built {
  const body = chars(rng, VCHARS, 1, 200);
  // The body of a response that has none is stray bytes after it.
  const stray = { mustDrop: true, strayBytes: body.length };
  const b = (kind: string, text: string, extra: Partial<Built> = {}) => ({
    kind,
    cls: "lenient" as Class,
    method: "GET" as const,
    text,
    ...extra,
  });
  switch (pick) {
    case 0:
      return b(
        "equal Content-Length twice",
        OK_HEAD + `Content-Length: ${body.length}\r\n` +
          `content-length: ${body.length}\r\n\r\n${body}`,
      );
    case 1:
      return b(
        "Content-Length: n, n",
        OK_HEAD + `Content-Length: ${body.length}, ${body.length}\r\n\r\n` +
          body,
      );
    case 2:
      return b(
        "204 with a body",
        "HTTP/1.1 204 No Content\r\nX-Kind: nc\r\n" +
          `Content-Length: ${body.length}\r\n\r\n${body}`,
        stray,
      );
    case 3:
      return b(
        "304 with a body",
        'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n' +
          `Content-Length: ${body.length}\r\n\r\n${body}`,
        stray,
      );
    case 4:
      return b(
        "HEAD answered with a body",
        OK_HEAD + `Content-Length: ${body.length}\r\n\r\n${body}`,
        { method: "HEAD", ...stray },
      );
    case 5:
      return b(
        "205 with a body",
        `HTTP/1.1 205 Reset Content\r\nContent-Length: ${body.length}\r\n\r\n` +
          body,
      );
    case 6:
      return b(
        "status line without the SP before an empty reason",
        `HTTP/1.1 200\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
      );
    case 7:
      return b(
        "HTTP/1.2 status line",
        `HTTP/1.2 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
      );
    case 8:
      return b(
        "bare LF line ends",
        `HTTP/1.1 200 OK\nContent-Length: ${body.length}\n\n${body}`,
      );
    case 9: {
      // RFC 9112 §6.1: a recipient MUST treat an HTTP/1.0 message with
      // Transfer-Encoding as if its framing were faulty, and close the
      // connection after processing it. fetch refuses it; the hub may
      // process it, but must not use the connection again, even when the
      // worker asks to keep it alive.
      const keep = rng.chance(0.5);
      return b(
        `HTTP/1.0 with chunked${keep ? " and keep-alive" : ""}`,
        "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n" +
          (keep ? "Connection: keep-alive\r\n" : "") + "\r\n" +
          chunked(rng, body),
        { close: !keep, mustDrop: true, hubMayPass: true },
      );
    }
    case 11:
      // Bytes after a complete response: not a response to anything, so
      // the hub must not read them as the next one.
      return b(
        "stray bytes after a complete response",
        OK_HEAD + `Content-Length: ${body.length}\r\n\r\n${body}` +
          "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        { mustDrop: true, strayBytes: 41 },
      );
    case 12:
      // Over the hub's limit of 16 interim responses (fetch has none).
      return b(
        "17 interim responses",
        "HTTP/1.1 100 Continue\r\n\r\n".repeat(17) + OK_HEAD +
          `Content-Length: ${body.length}\r\n\r\n${body}`,
      );
    case 13: {
      // Over hyper's 100 fields, and for 129 over the hub's 128 (a 502).
      // Expected difference: fetch takes no more than 100 fields, so it
      // refuses the hub's answer to 101 as it refuses the server's; curl
      // compares those.
      const n = rng.pick([101, 129]);
      let fields = "";
      for (let i = 0; i < n; i++) fields += `X-F${i}: ${i}\r\n`;
      return b(
        `${n} fields`,
        OK_HEAD + fields + `Content-Length: ${body.length}\r\n\r\n${body}`,
        { fetchLimit: n <= 128 },
      );
    }
    default:
      return b(
        "BWS before a chunk extension",
        OK_HEAD + "Transfer-Encoding: chunked\r\n\r\n" +
          `${body.length.toString(16)} ;a=b\r\n${body}\r\n0\r\n\r\n`,
      );
  }
}

/** Responses the hub must refuse (or cut, once the head went on). */
const INVALID_KINDS = 20;

/** Invalid case `pick` (0 to INVALID_KINDS - 1), its details random. */
function invalidResponse(rng: Rng, pick: number): Built {
  // Now and then over the hub's small-body size, so the head has gone on
  // (streamed) when the problem comes.
  const big = rng.chance(0.3);
  const body = big
    ? chars(rng, VCHARS, 70_000, 150_000)
    : chars(rng, VCHARS, 5, 200);
  const cl = `Content-Length: ${body.length}\r\n`;
  const te = "Transfer-Encoding: chunked\r\n";
  const b = (kind: string, text: string, extra: Partial<Built> = {}) => ({
    kind,
    cls: "invalid" as Class,
    method: "GET" as const,
    text,
    mustDrop: true,
    ...extra,
  });
  const ctl = rng.pick(["\0", "\r", "\n", "\x01", "\x7f", "\x1b"]);
  switch (pick) {
    case 0: {
      const line = rng.pick([
        "HTTP/1.1 2OO OK",
        "HTTP/1.1 20 OK",
        "HTTP/1.1 2000 OK",
        "HTTP/1.1  200 OK",
        "http/1.1 200 OK",
        "HTTP/2 200",
        "HTTP/1.1 -200 OK",
        "ICY 200 OK",
        "HTTP/1.1 200 O\x00K",
        "HTTP/1.1",
      ]);
      return b(
        `bad status line ${JSON.stringify(line)}`,
        `${line}\r\n${cl}\r\n${body}`,
      );
    }
    case 1: {
      const status = rng.pick([0, 99, 600, 999]);
      return b(
        `status ${status}`,
        `HTTP/1.1 ${String(status).padStart(3, "0")} Odd\r\n${cl}\r\n${body}`,
        // The framing is sound: whether the connection stays is the hub's.
        { mustDrop: status < 100 },
      );
    }
    case 2: {
      const size = rng.pick([
        "zz",
        "-1",
        "0x5",
        " 5",
        "5 5",
        "fffffffffffffffffffff",
        "",
        "+5",
      ]);
      // After some good chunks when the body is big.
      const good = big ? chunked(rng, body).slice(0, -5) : "";
      return b(
        `bad chunk size ${JSON.stringify(size)}${big ? " after chunks" : ""}`,
        OK_HEAD + te + `\r\n${good}${size}\r\nabcde\r\n0\r\n\r\n`,
      );
    }
    case 3:
      return b(
        "Content-Length and Transfer-Encoding",
        OK_HEAD + (rng.chance(0.5) ? cl + te : te + cl) + "\r\n" +
          chunked(rng, body),
      );
    case 4:
      return b(
        "conflicting Content-Length",
        OK_HEAD +
          (rng.chance(0.5)
            ? `${cl}Content-Length: ${body.length + 1}\r\n`
            : `Content-Length: ${body.length}, ${body.length - 1}\r\n`) +
          "\r\n" + body + "x",
      );
    case 5: {
      const v = rng.pick(["+5", "5.0", "0x5", "", "1e3", " 5 5", "5;"]);
      return b(
        `bad Content-Length ${JSON.stringify(v)}`,
        OK_HEAD + `Content-Length: ${v}\r\n\r\n` + body,
      );
    }
    case 6: {
      const cut = rng.int(0, body.length - 1);
      return b(
        `body shorter than Content-Length${big ? " (big)" : ""}, then close`,
        OK_HEAD + cl + "\r\n" + body.slice(0, cut),
        { close: true },
      );
    }
    case 7: {
      // Cut anywhere before its end, the last chunk's CRLF included.
      const full = chunked(rng, body);
      const cut = rng.int(0, full.length - 1);
      return b(
        `chunked body cut${big ? " (big)" : ""}, then close`,
        OK_HEAD + te + "\r\n" + full.slice(0, cut),
        { close: true },
      );
    }
    case 8:
      return b(
        `control char ${JSON.stringify(ctl)} in a value`,
        OK_HEAD + `X-Bad: a${ctl}b\r\n` + cl + "\r\n" + body,
      );
    case 9:
      return b(
        "space before the colon",
        OK_HEAD + "X-Bad : 1\r\n" + cl + "\r\n" + body,
      );
    case 10:
      return b(
        "a field line without a colon",
        OK_HEAD + "X-Bad 1\r\n" + cl + "\r\n" + body,
      );
    case 11:
      return b(
        "obs-fold continuation",
        OK_HEAD + "X-Fold: one\r\n" + rng.pick([" ", "\t"]) + "two\r\n" + cl +
          "\r\n" + body,
      );
    case 12:
      return b("empty field name", OK_HEAD + ": x\r\n" + cl + "\r\n" + body);
    case 13: {
      const name = rng.pick(["X(A)", "X\xe9", "X A", 'X"A', "X@A", "X/A"]);
      return b(
        `invalid field name ${JSON.stringify(name)}`,
        OK_HEAD + `${name}: 1\r\n` + cl + "\r\n" + body,
      );
    }
    case 14: {
      const v = rng.pick([
        "gzip",
        "gzip, chunked",
        "chunked, chunked",
        "identity",
        "chunked;q=1",
        "chunkedx",
      ]);
      return b(
        `Transfer-Encoding ${JSON.stringify(v)}`,
        OK_HEAD + `Transfer-Encoding: ${v}\r\n\r\n` + chunked(rng, body),
      );
    }
    case 15:
      return b(
        "101 to a GET",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo/1\r\n" +
          "Connection: upgrade\r\n\r\n" + body,
      );
    case 16:
      return b(
        "chunk data not followed by CRLF",
        OK_HEAD + te + `\r\n${body.length.toString(16)}\r\n${body}XX0\r\n\r\n`,
      );
    case 17:
      return b(
        "obs-fold in a trailer",
        OK_HEAD + te + `\r\n${body.length.toString(16)}\r\n${body}\r\n` +
          "0\r\nX-T: a\r\n b\r\n\r\n",
      );
    case 18:
      return b(
        `control char ${JSON.stringify(ctl)} in a reason phrase`,
        `HTTP/1.1 200 O${ctl}K\r\n` + cl + "\r\n" + body,
      );
    default:
      return b(
        "close inside the head",
        OK_HEAD + "X-Half: yes\r\nContent-Le",
        { close: true },
      );
  }
}

/** Up to 12 split offsets, half of them between a CR and its LF. */
function splitPoints(rng: Rng, text: string): number[] {
  const crs: number[] = [];
  for (let i = text.indexOf("\r"); i >= 0; i = text.indexOf("\r", i + 1)) {
    crs.push(i + 1);
  }
  const out = new Set<number>();
  const n = rng.int(1, 12);
  for (let i = 0; i < n; i++) {
    out.add(
      crs.length > 0 && rng.chance(0.5)
        ? rng.pick(crs)
        : rng.int(1, Math.max(1, text.length - 1)),
    );
  }
  return [...out].filter((at) => at > 0 && at < text.length).sort((a, b) =>
    a - b
  );
}

function generate(seed: number, count: number): Case[] {
  const rng = new Rng(seed);
  const out: Case[] = [];
  let previousBad = false;
  // Kinds of lenient and invalid cases take turns, so every kind comes up
  // in a run; their details are random.
  let lenient = seed % LENIENT_KINDS;
  let invalid = seed % INVALID_KINDS;
  for (let index = 0; index < count; index++) {
    // Every invalid or lenient case is followed by a valid one: the hub
    // must still serve after it.
    const roll = rng.next();
    const built: Built = previousBad || roll < 0.45
      ? validResponse(rng)
      : roll < 0.65
      ? lenientResponse(rng, lenient++ % LENIENT_KINDS)
      : invalidResponse(rng, invalid++ % INVALID_KINDS);
    previousBad = built.cls !== "valid";
    out.push({
      seed,
      index,
      kind: built.kind,
      cls: built.cls,
      method: built.method,
      text: built.text,
      close: built.close ?? false,
      mustDrop: built.mustDrop ?? false,
      reusable: built.reusable ?? false,
      hubMayPass: built.hubMayPass ?? false,
      fetchLimit: built.fetchLimit ?? false,
      splits: rng.chance(0.25)
        ? splitPoints(rng, built.text)
          .filter((at) => at < built.text.length - (built.strayBytes ?? 0))
        : [],
    });
  }
  return out;
}

// --- The two paths ---------------------------------------------------------------

/** What a consumer's fetch made of a response. */
interface Outcome {
  /** fetch rejected before a response (the message). */
  error?: string;
  status?: number;
  statusText?: string;
  headers?: [string, string][];
  body?: Uint8Array;
  /** Reading the body failed (the message). */
  bodyError?: string;
  /** The hang guard fired. */
  timedOut?: boolean;
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

async function outcome(
  url: string,
  method: string,
  client: Deno.HttpClient,
): Promise<Outcome> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), CASE_MS);
  try {
    let res: Response;
    try {
      res = await fetch(url, {
        method,
        client,
        redirect: "manual",
        // Without it Deno.serve (the hub's consumer side) may compress a
        // response, which fetch then decodes: not the worker's bytes.
        headers: { "accept-encoding": "identity" },
        signal: ac.signal,
      });
    } catch (error) {
      return { error: message(error), timedOut: ac.signal.aborted };
    }
    const out: Outcome = {
      status: res.status,
      statusText: res.statusText,
      headers: [...res.headers],
      body: new Uint8Array(0),
    };
    if (res.body !== null) {
      try {
        out.body = await res.bytes();
      } catch (error) {
        out.bodyError = message(error);
        await res.body.cancel().catch(() => {});
      }
    }
    out.timedOut = ac.signal.aborted;
    return out;
  } finally {
    clearTimeout(timer);
  }
}

/** One request head off `sock`, with the case index it asks for. */
async function nextCase(sock: RawSocket): Promise<number | null> {
  const head = await sock.readHead();
  if (head === null) return null;
  const m = /^(?:GET|HEAD) \/case\/(\d+) HTTP\/1\.1\r\n/.exec(head);
  if (m === null) throw new Error(`unexpected request ${JSON.stringify(head)}`);
  return Number(m[1]);
}

/**
 * The reference: a raw TCP server that answers each connection's request
 * with the case's bytes and closes (one request per connection, so no case
 * can leave a connection in a state that affects the next).
 */
function referenceServer(cases: () => Case[]) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open = new Set<RawSocket>();
  const handlers = new Set<Promise<void>>();
  const serve = async (sock: RawSocket) => {
    try {
      const index = await nextCase(sock);
      if (index !== null) await sock.write(latin1Bytes(cases()[index].text));
    } finally {
      sock.close();
      open.delete(sock);
    }
  };
  const loop = (async () => {
    try {
      for await (const conn of listener) {
        const sock = new RawSocket(conn);
        open.add(sock);
        const p = serve(sock).catch(() => {}).finally(() => handlers.delete(p));
        handlers.add(p);
      }
    } catch {
      // listener closed
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    async close() {
      listener.close();
      await loop;
      for (const s of open) s.close();
      await Promise.all([...handlers]);
    },
  };
}

/** Writes a case's bytes, in its pieces with a pause between them. */
async function writeCase(sock: RawSocket, c: Case): Promise<void> {
  const bytes = latin1Bytes(c.text);
  let at = 0;
  for (const split of c.splits) {
    if (!(await sock.write(bytes.subarray(at, split)))) return;
    at = split;
    await new Promise((r) => setTimeout(r, 2));
  }
  await sock.write(bytes.subarray(at));
}

/**
 * A plain worker: one connection at a time to the hub's worker port; it
 * answers each request with its case's bytes, closes after a case that
 * says so, and dials again whenever its connection ends. It records where
 * the hub reused a connection it must have dropped, or dropped one it
 * should have kept.
 */
function plainWorker(port: number, cases: () => Case[]) {
  let stopped = false;
  let current: RawSocket | null = null;
  const reusedAfter: Case[] = [];
  const droppedAfter: Case[] = [];
  let connections = 0;
  const loop = (async () => {
    while (!stopped) {
      let sock: RawSocket;
      try {
        sock = await RawSocket.connect(port);
      } catch {
        await new Promise((r) => setTimeout(r, 20));
        continue;
      }
      connections++;
      current = sock;
      (sock.conn as Deno.TcpConn).setNoDelay(true); // pieces go as pieces
      let last: Case | null = null;
      try {
        while (!stopped) {
          const index = await nextCase(sock);
          if (index === null) {
            if (last?.reusable && !stopped) droppedAfter.push(last);
            break;
          }
          if (last?.mustDrop) reusedAfter.push(last);
          last = cases()[index];
          await writeCase(sock, last);
          if (last.close) break;
        }
      } finally {
        sock.close();
        current = null;
      }
    }
  })();
  return {
    reusedAfter,
    droppedAfter,
    get connections() {
      return connections;
    },
    async close() {
      stopped = true;
      current?.close();
      await loop;
    },
  };
}

// --- Comparing ------------------------------------------------------------------

// Fields that are not the worker's to compare: framing and hop-by-hop fields
// (each hop frames its own body; README "What the consumer sees"), and what
// the hub or Deno.serve add: X-Request-Id (the hub's replaces the worker's),
// Server-Timing, Date.
const NOT_COMPARED = new Set([
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
  "x-request-id",
  "server-timing",
  "date",
]);

/** The fields to compare: without NOT_COMPARED and what Connection names. */
function compared(headers: [string, string][]): [string, string][] {
  const named = new Set<string>();
  for (const [n, v] of headers) {
    if (n !== "connection") continue;
    for (const t of v.split(",")) named.add(t.trim().toLowerCase());
  }
  return headers.filter(([n]) => !NOT_COMPARED.has(n) && !named.has(n));
}

function field(headers: [string, string][] | undefined, name: string) {
  return headers?.find(([n]) => n === name)?.[1] ?? null;
}

function sameBytes(a: Uint8Array | undefined, b: Uint8Array | undefined) {
  if (a === undefined || b === undefined) return a === b;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function isHubError(o: Outcome): boolean {
  return o.status === 502 && field(o.headers, "x-pothead-error") === "1";
}

/**
 * The differences between what fetch got straight (`ref`) and through the
 * hub (`hub`) for a response both accepted; empty when they agree.
 */
function differences(c: Case, ref: Outcome, hub: Outcome): string[] {
  const out: string[] = [];
  if (ref.status !== hub.status) {
    out.push(`status ${ref.status} vs ${hub.status}`);
  }
  const a = JSON.stringify(compared(ref.headers ?? []));
  const b = JSON.stringify(compared(hub.headers ?? []));
  if (a !== b) out.push(`fields ${a.slice(0, 600)} vs ${b.slice(0, 600)}`);
  if ((ref.bodyError === undefined) !== (hub.bodyError === undefined)) {
    out.push(`body error ${ref.bodyError} vs ${hub.bodyError}`);
  } else if (ref.bodyError === undefined && !sameBytes(ref.body, hub.body)) {
    out.push(`body of ${ref.body?.length} vs ${hub.body?.length} bytes`);
  }
  // Content-Length: each hop frames its own body, but where there is none
  // on the wire (HEAD) it describes the representation and must stay.
  // Expected difference: not on a 304 or 205, where Deno.serve drops it
  // (the hub passes it on; a plain Deno.serve drops it the same way).
  const hubLength = field(hub.headers, "content-length");
  if (c.method === "HEAD" && ref.status !== 304 && ref.status !== 205) {
    const refLength = field(ref.headers, "content-length");
    if (refLength !== hubLength) {
      out.push(`content-length ${refLength} vs ${hubLength}`);
    }
  } else if (
    hubLength !== null && hub.bodyError === undefined &&
    Number(hubLength) !== hub.body?.length
  ) {
    out.push(`content-length ${hubLength} for ${hub.body?.length} bytes`);
  }
  return out;
}

function describe(c: Case): string {
  const shown = c.text.length > 400
    ? c.text.slice(0, 400) + `…(${c.text.length} bytes)`
    : c.text;
  return `seed ${c.seed} case ${c.index} [${c.cls}] ${c.kind} ${c.method}` +
    `${c.splits.length > 0 ? ` split at ${c.splits.join(",")}` : ""}: ` +
    JSON.stringify(shown);
}

function brief(o: Outcome): string {
  if (o.error !== undefined) return `error ${o.error}`;
  return `${o.status}${o.bodyError ? ` body error ${o.bodyError}` : ""}` +
    ` (${o.body?.length} bytes)`;
}

/**
 * Judges one case; returns the failures (empty when it passes) and how it
 * went, for the summary.
 */
function judge(
  c: Case,
  ref: Outcome,
  hub: Outcome,
): { failures: string[]; how: string } {
  if (hub.timedOut || ref.timedOut) {
    return { failures: ["hang: a fetch hit its deadline"], how: "hang" };
  }
  if (hub.error !== undefined && c.fetchLimit && ref.error !== undefined) {
    return { failures: [], how: "over fetch's limits both ways" };
  }
  if (hub.error !== undefined) {
    // The hub answers every consumer; a rejected fetch is its failure.
    return { failures: [`fetch to the hub failed: ${hub.error}`], how: "" };
  }
  const refOk = ref.error === undefined;
  if (isHubError(hub)) {
    if (c.cls === "valid") {
      return {
        failures: [`hub refused a valid response: ${latin1Text(hub.body!)}`],
        how: "",
      };
    }
    return {
      failures: [],
      how: !refOk
        ? "both refuse"
        : ref.bodyError !== undefined
        ? "hub 502, fetch's body errors"
        : "hub 502, fetch accepts",
    };
  }
  if (c.cls === "invalid") {
    // Only a body error after the head went on may stand in for the 502.
    if (hub.bodyError === undefined) {
      return {
        failures: [`hub passed an invalid response: ${brief(hub)}`],
        how: "",
      };
    }
    return { failures: [], how: "hub body error" };
  }
  if (!refOk) {
    // Looser than fetch on something fetch refuses: a failure unless the
    // case says why the hub may (valid responses fetch refuses are listed).
    if (c.cls === "valid" || c.hubMayPass) {
      return { failures: [], how: "fetch refuses, hub passes" };
    }
    return {
      failures: [`hub passed what fetch refuses (${ref.error}): ${brief(hub)}`],
      how: "",
    };
  }
  const diff = differences(c, ref, hub);
  return { failures: diff, how: diff.length === 0 ? "same" : "" };
}

// --- curl, a second client --------------------------------------------------------

const CURL = "/usr/bin/curl";
const HAS_CURL = (() => {
  try {
    return Deno.statSync(CURL).isFile;
  } catch {
    return false;
  }
})();
if (!HAS_CURL) {
  console.warn(`differential_response_test: no ${CURL}, curl checks skipped`);
}

interface CurlOutcome {
  /** curl's exit code: 0 only for a response read to its framed end. */
  code: number;
  /** The final status, 0 when no head came. */
  status: number;
  body: Uint8Array;
}

async function curlGet(url: string): Promise<CurlOutcome> {
  // Heads (and trailers) to stderr, the body alone to stdout.
  const out = await new Deno.Command(CURL, {
    args: ["-sS", "-D", "/dev/stderr", "--max-time", "5"]
      .concat("-H", "accept-encoding: identity", url),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  // Every head is there, interim ones too: the last is the final one.
  const text = latin1Text(out.stderr);
  let at = 0;
  let status = 0;
  for (let i = 0; i < 20; i++) {
    const end = text.indexOf("\r\n\r\n", at);
    const m = /^HTTP\/[\d.]+ (\d{3})/.exec(text.slice(at));
    if (end < 0 || m === null) break;
    status = Number(m[1]);
    at = end + 4;
    if (status >= 200) break;
  }
  return { code: out.code, status, body: out.stdout };
}

/**
 * Which cases also go to curl: every one whose body errored through the
 * hub (a second client must see a broken message too, not a clean end),
 * and a sample of GETs that came through whole. Not a 205: Deno.serve
 * sends it without a length on a kept connection, and curl waits for a
 * body until the close (README, "Not done yet").
 */
function wantsCurl(c: Case, hub: Outcome): boolean {
  if (c.fetchLimit) return true;
  if (c.method !== "GET" || hub.status === 205 || isHubError(hub)) {
    return false;
  }
  return hub.bodyError !== undefined || c.index % 4 === 0;
}

async function curlCheck(
  c: Case,
  ref: Outcome,
  hub: Outcome,
  refPort: number,
  hubPort: number,
): Promise<string[]> {
  const path = `/case/${c.index}`;
  const viaHub = await curlGet(`http://127.0.0.1:${hubPort}${path}`);
  if (hub.bodyError !== undefined) {
    return viaHub.code === 0
      ? [`curl read a clean ${viaHub.body.length}-byte body through the hub`]
      : [];
  }
  const out: string[] = [];
  if (viaHub.code !== 0) {
    out.push(`curl through the hub: exit ${viaHub.code}, ${viaHub.status}`);
  } else if (hub.error === undefined && viaHub.status !== hub.status) {
    out.push(`curl through the hub: status ${viaHub.status}`);
  } else if (hub.error === undefined && !sameBytes(viaHub.body, hub.body)) {
    out.push(`curl through the hub: a body of ${viaHub.body.length} bytes`);
  }
  // Straight from the server curl must agree too, where fetch did (or
  // where fetch's own limits kept it from judging).
  if ((c.cls === "valid" && ref.error === undefined) || c.fetchLimit) {
    const straight = await curlGet(`http://127.0.0.1:${refPort}${path}`);
    if (
      straight.code !== 0 || straight.status !== viaHub.status ||
      !sameBytes(straight.body, viaHub.body)
    ) {
      out.push(
        `curl straight: exit ${straight.code}, ${straight.status}, ` +
          `${straight.body.length} bytes; through the hub ${viaHub.status}, ` +
          `${viaHub.body.length} bytes`,
      );
    }
  }
  return out;
}

// --- The test --------------------------------------------------------------------

Deno.test("differential: worker responses through the hub against fetch straight from the server", async () => {
  let cases: Case[] = [];
  const server = startHub({
    handshakeWait: 0, // every connection is a plain worker at once
    pingInterval: 0,
    headTimeout: CASE_MS / 2,
    bodyIdleTimeout: CASE_MS / 2,
    queueTimeout: CASE_MS / 2,
  });
  const reference = referenceServer(() => cases);
  const worker = plainWorker(server.workerAddr.port, () => cases);
  // Straight: one connection per request (the server closes after each).
  const refClient = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
  const hubClient = Deno.createHttpClient({});
  const failures: string[] = [];
  const tally = new Map<string, number>();
  const kinds = new Map<string, number>();
  const started = performance.now();
  let total = 0;
  let curled = 0;
  try {
    for (const seed of SEEDS) {
      cases = generate(seed, CASES_PER_SEED);
      for (const c of cases) {
        const path = `/case/${c.index}`;
        const [ref, hub] = await deadline(
          Promise.all([
            outcome(
              `http://127.0.0.1:${reference.port}${path}`,
              c.method,
              refClient,
            ),
            outcome(
              `http://127.0.0.1:${server.addr.port}${path}`,
              c.method,
              hubClient,
            ),
          ]),
          CASE_MS * 2,
          describe(c),
        );
        total++;
        const { failures: f, how } = judge(c, ref, hub);
        const key = `${c.cls}: ${how || "FAILED"}`;
        tally.set(key, (tally.get(key) ?? 0) + 1);
        const kind = `${c.cls} ${
          c.cls === "valid" && how === "same" ? "" : c.kind
        } => ${how || "FAILED"}`;
        kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
        if (HAS_CURL && f.length === 0 && wantsCurl(c, hub)) {
          curled++;
          f.push(
            ...await deadline(
              curlCheck(c, ref, hub, reference.port, server.addr.port),
              CASE_MS * 2,
              `curl: ${describe(c)}`,
            ),
          );
        }
        for (const m of f) {
          failures.push(
            `${describe(c)}\n    ${m}\n    straight: ${brief(ref)}\n` +
              `    hub: ${brief(hub)}\n    after: ${
                c.index > 0 ? describe(cases[c.index - 1]).slice(0, 300) : "-"
              }`,
          );
        }
      }
    }
  } finally {
    await worker.close();
    await reference.close();
    refClient.close();
    hubClient.close();
    await server.shutdown();
  }
  for (const c of worker.reusedAfter) {
    failures.push(`${describe(c)}\n    hub sent another request after it`);
  }
  for (const c of worker.droppedAfter) {
    failures.push(`${describe(c)}\n    hub dropped the connection after it`);
  }
  const summary = [...tally].sort().map(([k, n]) => `  ${k}: ${n}`).join(
    "\n",
  );
  console.log(
    `differential: ${total} cases, seeds ${SEEDS.join(", ")}, ` +
      `${worker.connections} worker connections, ${curled} checked with curl, ` +
      `${Math.round(performance.now() - started)} ms\n${summary}`,
  );
  if (Deno.env.get("POTHEAD_DIFF_VERBOSE")) {
    console.log([...kinds].sort().map(([k, n]) => `  ${k}: ${n}`).join("\n"));
  }
  assert.ok(total > 0);
  assert.equal(
    failures.length,
    0,
    `${failures.length} failures:\n${failures.slice(0, 15).join("\n")}`,
  );
});
