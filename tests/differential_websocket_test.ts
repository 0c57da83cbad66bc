/**
 * A seeded differential test of WebSocket traffic, straight and through the
 * hub, in both directions:
 *
 * - Consumer side: a raw client writes exact (masked) frames to Deno's own
 *   WebSocket server (`Deno.serve` and `Deno.upgradeWebSocket`, a handler
 *   that echoes every message), and to the hub whose worker runs the same
 *   handler (serve engine). What the client gets back (echoes, pongs, the
 *   close or the connection's end) must be the same, and the handler must
 *   see the same messages and close.
 * - Worker side: a raw server writes exact (unmasked) frames after a valid
 *   `101` to Deno's `WebSocket` client, once straight from a TCP listener
 *   and once as a plain worker on the hub's worker port. The client must see
 *   the same messages and close; where the reference client fails the
 *   connection, the hub must fail it too (its documented `1011`), deliver
 *   no part of the bad message, tell the worker why (`1002`, `1007`) and
 *   drop that connection.
 *
 * Sequences are valid (messages of 0 B to 300 KiB, fragmented at random,
 * pings between fragments, unsolicited pongs, a close with a code and
 * reason), end without a close, or end in one invalid frame after a valid
 * prefix. Seeds are fixed; `POTHEAD_DIFF_SEED=N` (and `POTHEAD_DIFF_CASES=N`)
 * runs one seed, to replay a failure, which names its seed and case index.
 *
 * Expected differences, each where it is judged: Deno's client and server
 * take some frames RFC 6455 forbids (an unmasked client frame, a masked
 * server frame, a close or pong over 125 bytes, a fragmented text that ends
 * inside a character), which the hub refuses from a worker; Deno's client
 * answers a 1014 close with 1002; a handler behind the hub hears a consumer
 * whose connection failed as a close with no code (Deno.serve reports the
 * failure to a handler it serves directly); the client waits for its echoes
 * before it closes, as the hub's `Deno.upgradeWebSocket` answers a close at
 * once and a message still on its way back from the worker is then lost.
 */

import assert from "node:assert/strict";
import { ENGINE, startHub, startWorker } from "./_hub.ts";
import { deadline, RawSocket, waitFor } from "./_relay.ts";
import { Rng } from "./_data.ts";

const SEEDS = Deno.env.get("POTHEAD_DIFF_SEED")
  ? [Number(Deno.env.get("POTHEAD_DIFF_SEED"))]
  : [0x5eed01, 0xc0ffee, 20261206];
const CASES_PER_SEED = Number(Deno.env.get("POTHEAD_DIFF_CASES") ?? 80);
/** Hang guard of one case on one path. */
const CASE_MS = 8_000;
/** Failing cases after which a run stops (each may wait out its guard). */
const MAX_FAILED = 10;
// The consumer side's worker runs its handler under the serve engine
// (Deno.upgradeWebSocket needs it); the worker side uses no runner, so the
// serve run covers it and the inline run skips both.
const SERVE = ENGINE !== "inline";

// --- Frames on the wire (our own encoder: it must write invalid ones) -------

const Op = { cont: 0, text: 1, binary: 2, close: 8, ping: 9, pong: 10 };

interface WireFrame {
  op: number;
  payload: Uint8Array;
  fin?: boolean;
  /** RSV1-3 as a 3-bit number. */
  rsv?: number;
  /** The masking key, or none (a server's frame). */
  mask: Uint8Array | null;
  /** The length field as sent (bytes after the mask bit), overriding. */
  length?: number[];
}

function wire(f: WireFrame): Uint8Array {
  const n = f.payload.length;
  const m = f.mask === null ? 0 : 0x80;
  const head = [((f.fin ?? true) ? 0x80 : 0) | ((f.rsv ?? 0) << 4) | f.op];
  if (f.length) head.push(m | f.length[0], ...f.length.slice(1));
  else if (n < 126) head.push(m | n);
  else if (n < 0x10000) head.push(m | 126, n >>> 8, n & 0xff);
  else {
    head.push(m | 127, 0, 0, 0, 0, n >>> 24, (n >>> 16) & 0xff);
    head.push((n >>> 8) & 0xff, n & 0xff);
  }
  if (f.mask !== null) head.push(...f.mask);
  const out = new Uint8Array(head.length + n);
  out.set(head);
  out.set(f.payload, head.length);
  if (f.mask !== null) {
    for (let i = 0; i < n; i++) out[head.length + i] ^= f.mask[i & 3];
  }
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, at), at += p.length;
  return out;
}

const enc = new TextEncoder();

const hex = (b: Uint8Array) =>
  [...b].map((x) => x.toString(16).padStart(2, "0")).join("");

function closeBody(code: number, reason: Uint8Array | string = ""): Uint8Array {
  const r = typeof reason === "string" ? enc.encode(reason) : reason;
  return concat([new Uint8Array([code >>> 8, code & 0xff]), r]);
}

/** One frame as read back, unmasked; `masked` says whether it was. */
interface ReadFrame {
  fin: boolean;
  op: number;
  payload: Uint8Array;
  masked: boolean;
  rsv: number;
}

/** Reads the next frame from `s`; null at end of stream. */
async function readFrame(s: RawSocket): Promise<ReadFrame | null> {
  try {
    const [b0, b1] = await s.readExactly(2);
    let n = b1 & 0x7f;
    if (n === 126) {
      const x = await s.readExactly(2);
      n = (x[0] << 8) | x[1];
    } else if (n === 127) {
      const x = await s.readExactly(8);
      n = x.slice(2).reduce((a, b) => a * 256 + b, 0);
    }
    const mask = (b1 & 0x80) !== 0 ? await s.readExactly(4) : null;
    const payload = await s.readExactly(n);
    if (mask !== null) {
      for (let i = 0; i < n; i++) payload[i] ^= mask[i & 3];
    }
    return {
      fin: (b0 & 0x80) !== 0,
      op: b0 & 0x0f,
      payload,
      masked: mask !== null,
      rsv: (b0 >> 4) & 7,
    };
  } catch {
    return null;
  }
}

// --- Generating sequences ------------------------------------------------------

/** A message as a digest: its type, size and a hash of its bytes. */
function digest(text: boolean, bytes: Uint8Array): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) {
    h = Math.imul(h ^ bytes[i], 0x01000193);
  }
  return `${text ? "text" : "binary"}:${bytes.length}:${
    (h >>> 0).toString(16)
  }`;
}

/**
 * How a sequence ends:
 * - `close`: a valid close frame (`code` undefined: an empty one).
 * - `eof`: the connection's end with no close frame.
 * - `invalid`: a frame RFC 6455 forbids (`code` is the close code the hub
 *   must send a worker for it).
 * - `lenient`: a frame RFC 6455 forbids that Deno accepts (an unmasked
 *   client frame, a masked server frame), then a valid close.
 */
type End = "close" | "eof" | "invalid" | "lenient";

interface Phase {
  frames: WireFrame[];
  /** Messages the peer echoes once this phase is in (the client waits). */
  messages: number;
  pongs: number;
}

interface Seq {
  seed: number;
  index: number;
  /** What the sequence ends in, for the report. */
  kind: string;
  end: End;
  phases: Phase[];
  /** The messages the valid part carries, as digests. */
  messages: string[];
  /** The payloads of the pings in the valid part. */
  pings: Uint8Array[];
  /**
   * For `close`: the code (undefined for none) and reason. For `invalid`
   * and `lenient`: the close code the hub must send a worker.
   */
  code?: number;
  reason?: string;
  /** How many random places the bytes are split at, into separate writes. */
  splits: number;
  /** An invalid ending that Deno's server and client take nonetheless. */
  denoTakes?: boolean;
}

// Characters of 1 to 4 bytes in UTF-8, and U+FEFF (a BOM, which a decoder
// strips from the start of a text by default).
const CHARS = [
  "a",
  "Z",
  " ",
  "~",
  "\u0000",
  "é",
  "ß",
  "✓",
  "€",
  "\uFEFF",
  "😀",
];

function text(rng: Rng, size: number): Uint8Array {
  let s = rng.chance(0.1) ? "\uFEFF" : "";
  while (enc.encode(s).length < Math.min(size, 64)) s += rng.pick(CHARS);
  if (size > 64) s += "x".repeat(size - 64);
  return enc.encode(s);
}

function size(rng: Rng): number {
  const r = rng.next();
  return r < 0.15
    ? 0
    : r < 0.55
    ? rng.int(1, 125)
    : r < 0.85
    ? rng.int(126, 4000)
    : r < 0.96
    ? rng.int(4001, 70_000)
    : rng.int(70_001, 300_000);
}

/** Cuts `n` bytes into 1-5 fragments at random offsets (empty ones too). */
function cuts(rng: Rng, n: number): number[] {
  if (rng.chance(0.5)) return [0, n];
  const at = [0, n];
  for (let k = rng.int(1, 4); k > 0; k--) at.push(rng.int(0, n));
  return at.sort((a, b) => a - b);
}

const VALID_CODES = [
  1000,
  1001,
  1002,
  1003,
  1007,
  1008,
  1011,
  1012,
  1013,
  1014,
  3000,
  4999,
];
const BAD_CODES = [
  1005,
  1006,
  1015,
  999,
  1004,
  2999,
  5000,
  0,
  65535,
  1016,
  2000,
];
const REASONS = [
  "",
  "bye",
  "done here",
  "héllo ✓ 😀",
  "\uFEFFbom",
  "€".repeat(41),
];
// Invalid UTF-8: a stray byte, an overlong '/', a surrogate, past U+10FFFF,
// a sequence cut at the end.
const BAD_UTF8 = [[0xff], [0xc0, 0xaf], [0xed, 0xa0, 0x80], [
  0xf4,
  0x90,
  0x80,
  0x80,
], [0xe2, 0x9c]];

function generate(seed: number, count: number, client: boolean): Seq[] {
  const rng = new Rng(seed ^ (client ? 0 : 0x9e3779b9));
  const mask = () => client ? rng.bytes(4) : null;
  const frame = (op: number, payload: Uint8Array, fin = true): WireFrame => ({
    op,
    payload,
    fin,
    mask: mask(),
  });
  const out: Seq[] = [];
  for (let index = 0; index < count; index++) {
    const prefix: WireFrame[] = [];
    const messages: string[] = [];
    const pings: Uint8Array[] = [];
    const control = () => {
      if (rng.chance(0.2)) {
        const p = rng.bytes(rng.chance(0.2) ? 125 : rng.int(0, 20));
        pings.push(p);
        prefix.push(frame(Op.ping, p));
      }
      // Unsolicited pongs: both ends ignore them.
      if (rng.chance(0.08)) {
        prefix.push(frame(Op.pong, rng.bytes(rng.int(0, 8))));
      }
    };
    const nmessages = rng.chance(0.1) ? 0 : rng.int(1, 4);
    for (let m = 0; m < nmessages; m++) {
      const isText = rng.chance(0.5);
      const n = size(rng);
      const bytes = isText ? text(rng, n) : rng.bytes(n);
      messages.push(digest(isText, bytes));
      const at = cuts(rng, bytes.length);
      control();
      for (let k = 0; k + 1 < at.length; k++) {
        prefix.push(
          frame(
            k === 0 ? (isText ? Op.text : Op.binary) : Op.cont,
            bytes.subarray(at[k], at[k + 1]),
            k + 2 === at.length,
          ),
        );
        if (k + 2 < at.length) control();
      }
    }
    control();
    const seq: Seq = {
      seed,
      index,
      kind: "",
      end: "close",
      phases: [{
        frames: prefix,
        messages: messages.length,
        pongs: pings.length,
      }],
      messages,
      pings,
      splits: rng.chance(0.3) ? rng.int(1, 6) : 0,
    };
    const phase = (
      frames: WireFrame[],
      kind: string,
      end: End,
      code?: number,
    ) => {
      seq.phases.push({
        frames,
        messages: messages.length,
        pongs: pings.length,
      });
      seq.kind = kind;
      seq.end = end;
      seq.code ??= code;
    };
    const r = rng.next();
    if (r < 0.45) {
      if (rng.chance(0.15)) {
        phase([frame(Op.close, new Uint8Array(0))], "close, no code", "close");
      } else {
        seq.code = rng.pick(VALID_CODES);
        seq.reason = rng.pick(REASONS);
        phase(
          [frame(Op.close, closeBody(seq.code, seq.reason))],
          `close ${seq.code}`,
          "close",
        );
      }
    } else if (r < 0.5) {
      phase([], "eof", "eof");
    } else {
      invalid(rng, seq, frame, phase, client);
      // A close after it, for a peer that took it (Deno takes some).
      seq.phases.push({
        frames: [frame(Op.close, closeBody(1000))],
        messages: messages.length,
        pongs: pings.length,
      });
    }
    out.push(seq);
  }
  return out;
}

function invalid(
  rng: Rng,
  seq: Seq,
  frame: (op: number, payload: Uint8Array, fin?: boolean) => WireFrame,
  phase: (frames: WireFrame[], kind: string, end: End, code?: number) => void,
  client: boolean,
): void {
  const small = () => rng.bytes(rng.int(1, 10));
  const bad = () => new Uint8Array(rng.pick(BAD_UTF8));
  switch (rng.int(0, 12)) {
    case 0: {
      // Invalid UTF-8 in a text message, in one frame or across two.
      const good = text(rng, rng.int(0, 20));
      const wrong = bad();
      const last = rng.chance(0.5);
      const body = concat(last ? [good, wrong] : [wrong, good]);
      const cut = rng.int(0, body.length);
      const split = rng.chance(0.5);
      const frames = split
        ? [
          frame(Op.text, body.subarray(0, cut), false),
          frame(Op.cont, body.subarray(cut)),
        ]
        : [frame(Op.text, body)];
      phase(frames, "text not UTF-8", "invalid", 1007);
      // Deno's server and client take a fragmented text that ends inside a
      // character (and hand on the text without the cut character): the bad
      // bytes last, or alone.
      seq.denoTakes = split && (last || good.length === 0) &&
        wrong.length === 2;
      return;
    }
    case 1:
      return phase(
        [frame(Op.close, closeBody(1000, concat([enc.encode("a"), bad()])))],
        "close reason not UTF-8",
        "invalid",
        1007,
      );
    case 2: {
      const code = rng.pick(BAD_CODES);
      return phase(
        [frame(Op.close, closeBody(code, rng.pick(REASONS)))],
        `close code ${code}`,
        "invalid",
      );
    }
    case 3:
      return phase(
        [frame(Op.close, new Uint8Array([rng.int(0, 255)]))],
        "close of 1 byte",
        "invalid",
      );
    case 4: {
      const op = rng.pick([Op.ping, Op.pong, Op.close]);
      const body = op === Op.close
        ? closeBody(1000, "x".repeat(rng.int(124, 200)))
        : rng.bytes(rng.int(126, 300));
      phase(
        [frame(op, body)],
        `control frame ${op} over 125 B`,
        "invalid",
      );
      // Deno's server and client take a close frame over 125 bytes, and
      // ignore a pong as long.
      seq.denoTakes = op !== Op.ping;
      return;
    }
    case 5: {
      const op = rng.pick([Op.ping, Op.pong, Op.close]);
      const body = op === Op.close ? closeBody(1000) : small();
      return phase(
        [frame(op, body, false), frame(Op.cont, new Uint8Array(0))],
        `control frame ${op} fragmented`,
        "invalid",
      );
    }
    case 6: {
      const f = frame(
        rng.pick([Op.text, Op.binary, Op.ping]),
        enc.encode("rsv"),
      );
      f.rsv = rng.int(1, 7);
      return phase([f], `RSV ${f.rsv}`, "invalid");
    }
    case 7: {
      const op = rng.pick([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]);
      return phase([frame(op, small())], `opcode ${op}`, "invalid");
    }
    case 8: {
      // Unmasked from a client, masked from a server.
      // Binary: Deno's client skips a server's mask without applying it.
      const f = frame(Op.binary, enc.encode("odd"));
      f.mask = client ? null : rng.bytes(4);
      const kind = client ? "unmasked client frame" : "masked server frame";
      phase([f], kind, "lenient", 1002);
      // Its echo comes before the close: a close first would be answered
      // at once by the hub's Deno.upgradeWebSocket, and the echo, still on
      // its way back from the worker, lost.
      seq.phases.at(-1)!.messages++;
      return;
    }
    case 9:
      return phase(
        [frame(Op.cont, small(), rng.chance(0.5))],
        "continuation with no message",
        "invalid",
      );
    case 10:
      return phase(
        [
          frame(Op.binary, small(), false),
          frame(rng.pick([Op.text, Op.binary]), small()),
        ],
        "new message inside a fragmented one",
        "invalid",
      );
    case 11: {
      const f = frame(Op.binary, small());
      f.length = [
        127,
        0x80 | rng.int(0, 0x7f),
        0,
        0,
        0,
        0,
        0,
        0,
        f.payload.length,
      ];
      return phase([f], "64-bit length with the top bit", "invalid");
    }
    default: {
      // A fragmented message cut off by a bad frame: none of it may arrive.
      const f = frame(Op.ping, small());
      f.rsv = 4;
      return phase(
        [frame(Op.text, enc.encode("part"), false), f],
        "bad frame inside a fragmented message",
        "invalid",
      );
    }
  }
}

function describe(s: Seq): string {
  const frames = s.phases.flatMap((p) => p.frames);
  const ending = s.phases.slice(1).flatMap((p) => p.frames).map((f) =>
    hex(wire(f).subarray(0, 40))
  );
  return `seed ${s.seed} case ${s.index} (${s.kind}; ${s.messages.length} messages ` +
    `[${
      s.messages.join(", ")
    }], ${s.pings.length} pings, ${frames.length} frames; ` +
    `ends with [${ending.join(" ")}])`;
}

/** Writes `bytes` in `splits + 1` pieces at random offsets (or at once). */
async function writeSplit(
  s: RawSocket,
  bytes: Uint8Array,
  splits: number,
  rng: Rng,
): Promise<boolean> {
  const at = [0, bytes.length];
  for (let k = 0; k < splits; k++) at.push(rng.int(0, bytes.length));
  at.sort((a, b) => a - b);
  for (let k = 0; k + 1 < at.length; k++) {
    if (!(await s.write(bytes.subarray(at[k], at[k + 1])))) return false;
    if (splits > 0) await new Promise((r) => setTimeout(r, 1));
  }
  return true;
}

/** A close frame's payload as text: its code and reason, or what it is. */
function closeText(payload: Uint8Array): string {
  if (payload.length === 0) return "no code";
  if (payload.length === 1) return `1 byte ${hex(payload)}`;
  const reason = new TextDecoder().decode(payload.subarray(2));
  return `${(payload[0] << 8) | payload[1]} ${JSON.stringify(reason)}`;
}

function randomKey(rng: Rng): string {
  return btoa(String.fromCharCode(...rng.bytes(16)));
}

async function acceptFor(key: string): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-1",
    enc.encode(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"),
  );
  return btoa(String.fromCharCode(...new Uint8Array(digest)));
}

// --- Consumer side: a raw client against Deno's server ------------------------

/** What the raw client got back. */
interface ClientSeen {
  status: string;
  messages: string[];
  pongs: string[];
  /** The server's close frame, or null if none came. */
  close: string | null;
  /** The server ended the connection (not the hang guard). */
  ended: boolean;
  /** Anything RFC 6455 does not allow a server to send. */
  notes: string[];
}

/** What the handler saw (its close as "code reason clean|unclean"). */
interface HandlerSeen {
  messages: string[];
  close: string;
  errors: number;
}

const handlerSeen = new Map<
  string,
  { seen: HandlerSeen; closed: Promise<void> }
>();

/** Echoes every message as it came; what it sees goes to `handlerSeen`. */
function echoHandler(req: Request): Response {
  const seen: HandlerSeen = { messages: [], close: "", errors: 0 };
  const closed = Promise.withResolvers<void>();
  handlerSeen.set(new URL(req.url).pathname, { seen, closed: closed.promise });
  const { socket, response } = Deno.upgradeWebSocket(req);
  socket.binaryType = "arraybuffer";
  socket.onmessage = (e) => {
    const isText = typeof e.data === "string";
    const bytes = isText
      ? enc.encode(e.data)
      : new Uint8Array(e.data as ArrayBuffer);
    seen.messages.push(digest(isText, bytes));
    if (socket.readyState === WebSocket.OPEN) socket.send(e.data);
  };
  socket.onerror = () => void seen.errors++;
  socket.onclose = (e) => {
    seen.close = `${e.code} ${JSON.stringify(e.reason)} ${
      e.wasClean ? "clean" : "unclean"
    }`;
    closed.resolve();
  };
  return response;
}

/**
 * Plays `seq` as a client on `port` at `path`: each phase's frames, then
 * waits for the echoes and pongs it calls for; at the end reads until the
 * server ends the connection (or ends it itself, for `eof`).
 */
async function playClient(
  port: number,
  path: string,
  seq: Seq,
): Promise<ClientSeen> {
  const rng = new Rng(seq.seed * 1000 + seq.index);
  const seen: ClientSeen = {
    status: "",
    messages: [],
    pongs: [],
    close: null,
    ended: false,
    notes: [],
  };
  const s = await RawSocket.connect(port);
  const expire = () => {
    seen.notes.push("hang guard");
    s.close();
  };
  let guard = setTimeout(expire, CASE_MS);
  let parts: Uint8Array[] = [];
  let kind = 0;
  // Takes one frame; false at the end of the stream.
  const take = async (): Promise<boolean> => {
    const f = await readFrame(s);
    if (f === null) {
      seen.ended = !seen.notes.includes("hang guard");
      return false;
    }
    if (f.masked) seen.notes.push("masked frame");
    if (f.rsv !== 0) seen.notes.push("RSV set");
    if (seen.close !== null) seen.notes.push(`opcode ${f.op} after the close`);
    if (f.op === Op.pong) seen.pongs.push(hex(f.payload));
    else if (f.op === Op.close) seen.close = closeText(f.payload);
    else if (f.op === Op.ping) seen.notes.push("ping");
    else {
      if (f.op !== Op.cont) kind = f.op;
      parts.push(f.payload);
      if (f.fin) {
        seen.messages.push(digest(kind === Op.text, concat(parts)));
        parts = [];
      }
    }
    return true;
  };
  try {
    const key = randomKey(rng);
    await s.write(
      `GET ${path} HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\n` +
        `upgrade: websocket\r\nsec-websocket-key: ${key}\r\n` +
        "sec-websocket-version: 13\r\n\r\n",
    );
    const head = await s.readHead();
    seen.status = head?.split("\r\n")[0] ?? "no answer";
    if (!head?.startsWith("HTTP/1.1 101 ")) return seen;
    const accept = /\r\nsec-websocket-accept: *(\S+)/i.exec(head)?.[1];
    if (accept !== await acceptFor(key)) seen.notes.push("wrong accept");
    for (const p of seq.phases) {
      await writeSplit(s, concat(p.frames.map(wire)), seq.splits, rng);
      while (seen.messages.length < p.messages || seen.pongs.length < p.pongs) {
        if (!(await take())) return seen;
      }
    }
    if (seq.end === "eof") return seen; // leaves without a close
    if (seq.end === "invalid") {
      // Deno's server does not always end a connection it failed (a pong
      // over 125 bytes), the same way straight and through the hub.
      clearTimeout(guard);
      guard = setTimeout(expire, 2000);
    }
    while (await take());
    return seen;
  } finally {
    clearTimeout(guard);
    s.close();
  }
}

async function handlerView(path: string): Promise<HandlerSeen | null> {
  const entry = handlerSeen.get(path);
  if (entry === undefined) return null;
  await deadline(entry.closed, CASE_MS, `the handler's close at ${path}`);
  handlerSeen.delete(path);
  return entry.seen;
}

/** What is wrong with the hub's side of a consumer case (empty: nothing). */
function judgeConsumer(
  seq: Seq,
  ref: ClientSeen,
  hub: ClientSeen,
  refH: HandlerSeen | null,
  hubH: HandlerSeen | null,
): string[] {
  const out: string[] = [];
  const same = (what: string, a: unknown, b: unknown) => {
    if (JSON.stringify(a) !== JSON.stringify(b)) {
      out.push(
        `${what}: straight ${JSON.stringify(a)}, hub ${JSON.stringify(b)}`,
      );
    }
  };
  // The reference must behave as the sequence says (else the test is wrong).
  if (!ref.status.startsWith("HTTP/1.1 101 ")) {
    out.push(`straight: ${ref.status}`);
  }
  const took = seq.end === "lenient" ||
    (seq.denoTakes && ref.messages.length === seq.messages.length + 1);
  const echoes = took ? ref.messages.slice(0, -1) : ref.messages;
  if (JSON.stringify(seq.messages) !== JSON.stringify(echoes)) {
    out.push(`straight echoes ${echoes} are not the messages sent`);
  }
  same("status", ref.status, hub.status);
  // What Deno takes, the client has already followed with its close: Deno
  // at the hub answers that close at once, before the worker's echo is
  // back, so the hub may lose that echo, as it does for any message a
  // consumer closes right behind (README, WebSockets under "Not done yet").
  const lostLast = took && seq.denoTakes === true &&
    hub.messages.length + 1 === ref.messages.length;
  same(
    "echoed messages",
    lostLast ? ref.messages.slice(0, -1) : ref.messages,
    hub.messages,
  );
  same("pongs", ref.pongs, hub.pongs);
  same("close frame", ref.close, hub.close);
  same("connection ended", ref.ended, hub.ended);
  same("notes", ref.notes, hub.notes);
  // The handler: the same messages, never part of a bad one.
  same("handler's messages", refH?.messages, hubH?.messages);
  if (refH && hubH && !expectedHandlerClose(seq, refH, hubH)) {
    same("handler's close", refH.close, hubH.close);
  }
  return out;
}

/**
 * Where the handler's close may differ. Deno's server that fails a
 * connection (bad input, or the client leaving with no close) reports
 * `0 "" unclean` and an error event to its handler; the hub cannot pass a
 * failure on as such (the bridge sends the worker a close frame with no
 * code, as README documents: "a consumer that leaves gives the worker a
 * close frame"), so the handler behind the hub sees `1005 "" clean`.
 */
function expectedHandlerClose(
  seq: Seq,
  ref: HandlerSeen,
  hub: HandlerSeen,
): boolean {
  if (ref.close === '0 "" unclean' && hub.close === '1005 "" clean') {
    return true;
  }
  // Deno's server takes a close frame over 125 bytes and hands its whole
  // reason to the handler; the hub passes it on in a valid close frame, the
  // reason cut to 123 bytes.
  const [code, ...reason] = ref.close.split(" ");
  return seq.denoTakes === true &&
    hub.close === `${code} ${
        JSON.stringify(
          JSON.parse(reason.slice(0, -1).join(" ")).slice(0, 123),
        )
      } clean`;
}

function tallyLine(tally: Map<string, number>): string {
  return [...tally].sort().map(([k, n]) => `  ${k}: ${n}`).join("\n");
}

Deno.test({
  name:
    `[${ENGINE}] differential: a raw client's frames to Deno's WebSocket server, straight and through the hub`,
  ignore: !SERVE,
  fn: async () => {
    const server = startHub({ pingInterval: 0 });
    const worker = startWorker(server, echoHandler, { concurrency: 2 });
    const reference = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      echoHandler,
    );
    const failures: string[] = [];
    const tally = new Map<string, number>();
    const started = performance.now();
    let total = 0;
    let failed = 0;
    let messages = 0;
    let bytes = 0;
    try {
      await waitFor(() => server.hub.stats.idle >= 1, "the worker");
      for (const seed of SEEDS) {
        if (failed === MAX_FAILED) break;
        for (const seq of generate(seed, CASES_PER_SEED, true)) {
          const name = `${seed}/${seq.index}`;
          const [ref, hub] = await deadline(
            Promise.all([
              playClient(reference.addr.port, `/ref/${name}`, seq),
              playClient(server.addr.port, `/hub/${name}`, seq),
            ]),
            CASE_MS * 2,
            describe(seq),
          );
          const [refH, hubH] = await Promise.all([
            handlerView(`/ref/${name}`),
            handlerView(`/hub/${name}`),
          ]);
          total++;
          messages += seq.messages.length;
          bytes += seq.messages.reduce(
            (n, m) => n + Number(m.split(":")[1]),
            0,
          );
          const f = judgeConsumer(seq, ref, hub, refH, hubH);
          const key = `${seq.end} ${seq.kind} => ${f.length ? "FAILED" : "ok"}`;
          tally.set(key, (tally.get(key) ?? 0) + 1);
          for (const m of f) failures.push(`${describe(seq)}\n    ${m}`);
          if (f.length > 0 && ++failed === MAX_FAILED) break;
          if (Deno.env.get("POTHEAD_DIFF_VERBOSE")) {
            console.log(
              describe(seq),
              JSON.stringify({ ref, hub, refH, hubH }),
            );
          }
        }
      }
      // Every tunnel ended, and the hub still answers.
      await waitFor(() => server.hub.stats.webSockets === 0, "tunnels ended");
      const res = await fetch(`http://127.0.0.1:${server.addr.port}/`, {
        headers: { upgrade: "websocket", connection: "Upgrade" },
      });
      assert.equal(res.status, 400);
      await res.body?.cancel();
    } finally {
      worker.close();
      await worker.finished;
      await reference.shutdown();
      await server.shutdown();
    }
    console.log(
      `consumer side: ${total} sequences (${messages} messages, ${bytes} B), ` +
        `seeds ${SEEDS.join(", ")}, ${
          Math.round(performance.now() - started)
        } ms\n${tallyLine(tally)}`,
    );
    assert.ok(total > 0);
    assert.equal(
      failures.length,
      0,
      `${failures.length} failures:\n${failures.slice(0, 100).join("\n")}`,
    );
  },
});

// --- Worker side: raw server frames to Deno's WebSocket client ----------------

/** What Deno's client saw. */
interface ClientEvents {
  opened: boolean;
  messages: string[];
  /** "code reason clean|unclean" */
  close: string;
  errors: number;
}

/** What the raw server read back from the client (or the hub). */
interface ServerSeen {
  pongs: string[];
  /** The close frame it got, or null. */
  close: string | null;
  /** The peer ended the connection (not the hang guard, not us). */
  ended: boolean;
  notes: string[];
}

/** Opens Deno's client on `url`; `done` resolves once it has closed. */
function openClient(url: string): {
  seen: ClientEvents;
  done: Promise<void>;
} {
  const seen: ClientEvents = {
    opened: false,
    messages: [],
    close: "",
    errors: 0,
  };
  const done = Promise.withResolvers<void>();
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => seen.opened = true;
  ws.onmessage = (e) => {
    const isText = typeof e.data === "string";
    const bytes = isText
      ? enc.encode(e.data)
      : new Uint8Array(e.data as ArrayBuffer);
    seen.messages.push(digest(isText, bytes));
  };
  ws.onerror = () => void seen.errors++;
  ws.onclose = (e) => {
    seen.close = `${e.code} ${JSON.stringify(e.reason)} ${
      e.wasClean ? "clean" : "unclean"
    }`;
    done.resolve();
  };
  return { seen, done: done.promise };
}

/**
 * Plays `seq` as a server on `s`: reads the handshake, answers `101` with
 * the frames after it, then reads what comes back until the peer ends the
 * connection (for `eof`, ends it at once).
 */
async function playServer(
  s: RawSocket,
  seq: Seq,
  guardMs: number,
  peerClosed?: Promise<void>,
): Promise<ServerSeen> {
  const rng = new Rng(seq.seed * 1000 + seq.index);
  const seen: ServerSeen = { pongs: [], close: null, ended: false, notes: [] };
  const guard = setTimeout(() => {
    seen.notes.push("hang guard");
    s.close();
  }, guardMs);
  // Deno's client that fails a connection does not always end it (a pong
  // over 125 bytes): shortly after its close event, the server gives up.
  let after: ReturnType<typeof setTimeout> | undefined;
  peerClosed?.then(() => {
    after = setTimeout(() => {
      seen.notes.push("ended by the server after the client's close");
      s.close();
    }, 200);
  });
  try {
    const head = await s.readHead();
    const key = /\r\nsec-websocket-key: *(\S+)/i.exec(head ?? "")?.[1];
    if (key === undefined) {
      seen.notes.push(`no handshake: ${head?.split("\r\n")[0]}`);
      return seen;
    }
    const answer =
      "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n" +
      `connection: Upgrade\r\nsec-websocket-accept: ${await acceptFor(
        key,
      )}\r\n\r\n`;
    const frames = seq.phases.flatMap((p) => p.frames).map(wire);
    await writeSplit(
      s,
      concat([enc.encode(answer), ...frames]),
      seq.splits,
      rng,
    );
    // The end of the stream, with what the peer sends still read (a close
    // with unread bytes would be a reset, which can lose the last frames).
    if (seq.end === "eof") await s.conn.closeWrite().catch(() => {});
    for (;;) {
      const f = await readFrame(s);
      if (f === null) break;
      if (!f.masked) seen.notes.push("unmasked frame");
      if (seen.close !== null) {
        seen.notes.push(`opcode ${f.op} after the close`);
      }
      if (f.op === Op.pong) seen.pongs.push(hex(f.payload));
      else if (f.op === Op.close) seen.close = closeText(f.payload);
      else seen.notes.push(`opcode ${f.op}`);
    }
    seen.ended = seen.notes.length === 0;
    return seen;
  } finally {
    clearTimeout(guard);
    s.close();
    await peerClosed;
    clearTimeout(after);
  }
}

const LOST = '1011 "worker connection lost" clean';
const BROKE = '1011 "worker broke the WebSocket protocol" clean';

/** What is wrong with the hub's side of a worker case (empty: nothing). */
function judgeWorker(
  seq: Seq,
  ref: ClientEvents,
  hub: ClientEvents,
  refS: ServerSeen,
  hubS: ServerSeen,
): string[] {
  const out: string[] = [];
  const same = (what: string, a: unknown, b: unknown) => {
    if (JSON.stringify(a) !== JSON.stringify(b)) {
      out.push(
        `${what}: expected ${JSON.stringify(a)}, got ${JSON.stringify(b)}`,
      );
    }
  };
  same("opened", [true, true], [ref.opened, hub.opened]);
  same(
    "hub's messages (never a part of a bad one)",
    seq.messages,
    hub.messages,
  );
  same("notes of the plain worker", [], hubS.notes);
  same("the hub dropped the worker connection", true, hubS.ended);
  // Every ping before the end or the bad frame is answered (after the
  // connection's end, what is still queued need not go out).
  if (seq.end !== "eof") same("hub's pongs", seq.pings.map(hex), hubS.pongs);
  const code = (close: string | null) => close?.split(" ")[0];
  if (seq.end === "close") {
    same("straight messages", seq.messages, ref.messages);
    same("close", ref.close, hub.close);
    same("pongs", refS.pongs, hubS.pongs);
    // The hub echoes the close code alone (RFC 6455 §5.5.1 asks no more),
    // Deno's client the reason too. Deno's client answers a 1014
    // (registered after RFC 6455) with 1002, though it reports 1014; the
    // hub echoes 1014.
    const echoed = seq.code === 1014 && code(refS.close) === "1002"
      ? "1014"
      : code(refS.close);
    same("close echoed to the worker", echoed, code(hubS.close));
  } else if (seq.end === "eof") {
    // Deno's client reports a lost connection as `0 "" unclean`; the hub
    // closes the consumer's WebSocket with 1011 (README).
    same("straight messages", seq.messages, ref.messages);
    same("straight close", '0 "" unclean', ref.close);
    same("close", LOST, hub.close);
  } else {
    // The reference fails the connection (or, for a masked server frame,
    // takes it: Deno's client does not check the mask bit); the hub fails
    // it with 1011 and tells the worker why.
    const lenient = seq.end === "lenient";
    const took = ref.messages.length === seq.messages.length + 1;
    same(
      "straight messages",
      seq.messages,
      lenient || (seq.denoTakes && took)
        ? ref.messages.slice(0, -1)
        : ref.messages,
    );
    if (lenient) same("straight close", '1000 "" clean', ref.close);
    else if (!seq.denoTakes) same("straight close", '0 "" unclean', ref.close);
    // Else Deno's client took what the hub refuses (README: a malformed
    // frame, text that is not UTF-8, is a broken protocol): a close frame
    // over 125 bytes, a pong as long, a fragmented text ending inside a
    // character.
    same("close", BROKE, hub.close);
    same(
      "close sent to the worker",
      String(seq.code ?? 1002),
      code(hubS.close),
    );
  }
  return out;
}

Deno.test({
  name:
    `[${ENGINE}] differential: a raw server's frames to Deno's WebSocket client, straight and through the hub`,
  ignore: !SERVE,
  fn: async () => {
    const server = startHub({ pingInterval: 0, handshakeWait: 0 });
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const failures: string[] = [];
    const tally = new Map<string, number>();
    const started = performance.now();
    let total = 0;
    let failed = 0;
    let messages = 0;
    let bytes = 0;
    try {
      for (const seed of SEEDS) {
        if (failed === MAX_FAILED) break;
        for (const seq of generate(seed, CASES_PER_SEED, false)) {
          const straight = async () => {
            const client = openClient(
              `ws://127.0.0.1:${(listener.addr as Deno.NetAddr).port}/`,
            );
            const s = new RawSocket(await listener.accept());
            // Deno's client answers at once; the guard is short for the
            // cases where it keeps a failed connection open.
            const server = await playServer(s, seq, 2000, client.done);
            await deadline(client.done, CASE_MS, "the straight client's close");
            return [client.seen, server] as const;
          };
          const through = async () => {
            const w = await RawSocket.connect(server.workerAddr.port);
            await waitFor(
              () => server.hub.stats.idle === 1,
              "the plain worker",
            );
            const client = openClient(`ws://127.0.0.1:${server.addr.port}/`);
            const seen = await playServer(w, seq, CASE_MS);
            await deadline(client.done, CASE_MS, "the hub client's close");
            await waitFor(
              () =>
                server.hub.stats.webSockets === 0 &&
                server.hub.stats.slots === 0,
              "the tunnel ended",
            );
            return [client.seen, seen] as const;
          };
          const [[ref, refS], [hub, hubS]] = await deadline(
            Promise.all([straight(), through()]),
            CASE_MS * 2,
            describe(seq),
          );
          total++;
          messages += seq.messages.length;
          bytes += seq.messages.reduce(
            (n, m) => n + Number(m.split(":")[1]),
            0,
          );
          const f = judgeWorker(seq, ref, hub, refS, hubS);
          const key = `${seq.end} ${seq.kind} => ${f.length ? "FAILED" : "ok"}`;
          tally.set(key, (tally.get(key) ?? 0) + 1);
          for (const m of f) failures.push(`${describe(seq)}\n    ${m}`);
          if (f.length > 0 && ++failed === MAX_FAILED) break;
          if (Deno.env.get("POTHEAD_DIFF_VERBOSE")) {
            console.log(
              describe(seq),
              JSON.stringify({ ref, hub, refS, hubS }),
            );
          }
        }
      }
    } finally {
      listener.close();
      await server.shutdown();
    }
    console.log(
      `worker side: ${total} sequences (${messages} messages, ${bytes} B), ` +
        `seeds ${SEEDS.join(", ")}, ${
          Math.round(performance.now() - started)
        } ms\n${tallyLine(tally)}`,
    );
    assert.ok(total > 0);
    assert.equal(
      failures.length,
      0,
      `${failures.length} failures:\n${failures.slice(0, 100).join("\n")}`,
    );
  },
});
