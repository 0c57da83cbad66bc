/**
 * Micro-benchmarks of the worker-link codec on typical inputs:
 * `deno bench bench/codec_bench.ts`.
 *
 * @module
 */

import {
  encodeHead,
  parseChunkLine,
  parseRequestHead,
  parseResponseHead,
} from "../_codec.ts";

const enc = new TextEncoder();

// What a worker sends back for a small JSON answer.
const RESPONSE = enc.encode(
  "HTTP/1.1 200 OK\r\n" +
    "content-type: application/json; charset=utf-8\r\n" +
    "content-length: 27\r\n" +
    "cache-control: no-store\r\n" +
    "vary: accept-encoding\r\n" +
    "x-request-id: 3f1c9a52-7d0e-4b8e-9c61-2a7f0e5b9d44\r\n" +
    "\r\n",
);

// What the hub sends to a worker for a browser-ish GET.
const REQUEST_FIELDS: [string, string][] = [
  ["host", "api.example.com"],
  ["user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0"],
  ["accept", "application/json, text/plain, */*"],
  ["accept-language", "en-GB,en;q=0.7"],
  ["accept-encoding", "gzip, deflate, br"],
  ["cookie", "session=6b1e7c2f9a4d4e5f8a7b6c5d4e3f2a1b; theme=dark"],
  ["x-forwarded-for", "203.0.113.7"],
  ["x-forwarded-proto", "https"],
  ["x-forwarded-host", "api.example.com"],
  ["x-request-id", "3f1c9a52-7d0e-4b8e-9c61-2a7f0e5b9d44"],
  ["x-pothead-queue-ms", "0.4"],
];
const REQUEST_LINE = "GET /v1/items?page=2&limit=50 HTTP/1.1";
const REQUEST = encodeHead(REQUEST_LINE, REQUEST_FIELDS).buf;

const CHUNK_LINE = enc.encode("8000\r\n");
const CHUNK_LINE_EXT = enc.encode("1a2b;name=value\r\n");

Deno.bench("parseResponseHead: 200 with 5 fields", { group: "head" }, () => {
  const r = parseResponseHead(RESPONSE, 0, RESPONSE.length);
  if (r === null) throw new Error("incomplete");
});

Deno.bench("parseRequestHead: GET with 11 fields", { group: "head" }, () => {
  const r = parseRequestHead(REQUEST, 0, REQUEST.length);
  if (r === null) throw new Error("incomplete");
});

Deno.bench("encodeHead: GET with 11 fields", { group: "head" }, () => {
  encodeHead(REQUEST_LINE, REQUEST_FIELDS);
});

Deno.bench("parseChunkLine: 8000", { group: "chunk" }, () => {
  const r = parseChunkLine(CHUNK_LINE, 0, CHUNK_LINE.length, 1024);
  if (r === null || r.value !== 0x8000) throw new Error("bad parse");
});

Deno.bench("parseChunkLine: size with extension", { group: "chunk" }, () => {
  const r = parseChunkLine(CHUNK_LINE_EXT, 0, CHUNK_LINE_EXT.length, 1024);
  if (r === null || r.value !== 0x1a2b) throw new Error("bad parse");
});
