/**
 * WebSocket framing (RFC 6455 §5) for the hub's end of a tunnelled
 * WebSocket: the hub is the client on the worker connection, so the frames
 * it writes are masked and the frames it reads must not be. Also the checks
 * of the opening handshake (§4). Pure functions; the tunnel itself is
 * `_ws_bridge.ts`.
 *
 * @module
 */

import { listTokens } from "./_codec.ts";

/** Frame opcodes (RFC 6455 §5.2). */
export const Op = {
  continuation: 0x0,
  text: 0x1,
  binary: 0x2,
  close: 0x8,
  ping: 0x9,
  pong: 0xa,
} as const;

/** One frame as read from the wire, unmasked. */
export interface Frame {
  /** The final frame of a message (always true for control frames). */
  fin: boolean;
  opcode: number;
  payload: Uint8Array;
}

/**
 * The peer broke the protocol; `code` is the close code to answer with
 * (1002 protocol error, 1007 invalid data, 1009 too big).
 */
export class WebSocketProtocolError extends Error {
  /** The close code this error calls for. */
  readonly code: number;

  constructor(code: number, message: string) {
    super(message);
    this.name = "WebSocketProtocolError";
    this.code = code;
  }
}

/** Whether `req` asks to switch to WebSocket (`Upgrade: websocket`). */
export function asksForWebSocket(req: Request): boolean {
  return listTokens(req.headers.get("upgrade")).some((t) =>
    t.toLowerCase() === "websocket"
  );
}

/**
 * What is wrong with a WebSocket opening handshake (RFC 6455 §4.2.1), as
 * the status, message and extra fields to answer with; null when nothing
 * is.
 */
export function webSocketProblem(
  req: Request,
): [number, string, Record<string, string>?] | null {
  const h = req.headers;
  const connection = listTokens(h.get("connection")).map((t) =>
    t.toLowerCase()
  );
  const key = h.get("sec-websocket-key")?.trim() ?? "";
  if (req.method !== "GET") {
    return [400, `a WebSocket handshake must be a GET, not ${req.method}`];
  }
  const length = h.get("content-length");
  if (
    (length !== null && length.trim() !== "0") || h.has("transfer-encoding")
  ) {
    return [400, "a WebSocket handshake has no body"];
  }
  if (!connection.includes("upgrade")) {
    return [400, 'a WebSocket handshake needs "Connection: Upgrade"'];
  }
  // 16 random bytes in base64.
  if (!/^[A-Za-z0-9+/]{22}==$/.test(key)) {
    return [400, "a WebSocket handshake needs a valid Sec-WebSocket-Key"];
  }
  if (h.get("sec-websocket-version")?.trim() !== "13") {
    return [426, "this hub speaks WebSocket version 13", {
      "sec-websocket-version": "13",
    }];
  }
  return null;
}

/** The GUID of the opening handshake (RFC 6455 §1.3). */
const HANDSHAKE_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/** The `Sec-WebSocket-Accept` a server must answer `key` with. */
export async function acceptKey(key: string): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-1",
    new TextEncoder().encode(key + HANDSHAKE_GUID),
  );
  return btoa(String.fromCharCode(...new Uint8Array(digest)));
}

/**
 * Encodes one frame. With `mask` (4 bytes) the payload is masked, as a
 * client must; the input is not changed.
 */
export function encodeFrame(
  opcode: number,
  payload: Uint8Array,
  mask: Uint8Array | null,
  fin = true,
): Uint8Array {
  const n = payload.length;
  const extra = n < 126 ? 0 : n < 0x10000 ? 2 : 8;
  const headLength = 2 + extra + (mask === null ? 0 : 4);
  // Room before the frame so that its payload starts 4-byte aligned, to be
  // masked a word at a time (about 4 times faster than byte by byte).
  const pad = (4 - headLength % 4) % 4;
  const out = new Uint8Array(pad + headLength + n).subarray(pad);
  out[0] = (fin ? 0x80 : 0) | opcode;
  out[1] = (mask === null ? 0 : 0x80) |
    (extra === 0 ? n : extra === 2 ? 126 : 127);
  if (extra === 2) {
    out[2] = n >>> 8;
    out[3] = n & 0xff;
  } else if (extra === 8) {
    // Lengths fit in 53 bits; the top bytes stay zero.
    const view = new DataView(out.buffer, out.byteOffset);
    view.setUint32(2, Math.floor(n / 0x1_0000_0000));
    view.setUint32(6, n >>> 0);
  }
  out.set(payload, headLength);
  if (mask !== null) {
    out.set(mask, headLength - 4);
    const words = n >>> 2;
    // The mask as a word in this machine's byte order, like the view.
    const m = new Uint32Array(mask.slice().buffer, 0, 1)[0];
    const view = new Uint32Array(
      out.buffer,
      out.byteOffset + headLength,
      words,
    );
    for (let i = 0; i < words; i++) view[i] ^= m;
    for (let i = words * 4; i < n; i++) out[headLength + i] ^= mask[i & 3];
  }
  return out;
}

/**
 * Parses one frame from `buf[start..end)`: null when more bytes are needed,
 * else the frame and how many bytes it used. A frame's payload may be up to
 * `maxPayload` bytes (a control frame at most 125, whatever `maxPayload`).
 *
 * @param masked whether frames must be masked (a server reading a client)
 *   or must not be (a client reading a server).
 * @throws {WebSocketProtocolError} on a frame RFC 6455 does not allow here.
 */
export function parseFrame(
  buf: Uint8Array,
  start: number,
  end: number,
  maxPayload: number,
  masked = false,
): { frame: Frame; used: number } | null {
  if (end - start < 2) return null;
  const b0 = buf[start];
  const b1 = buf[start + 1];
  if ((b0 & 0x70) !== 0) {
    // No extension was negotiated, so no reserved bit may be set.
    throw new WebSocketProtocolError(1002, "frame has a reserved bit set");
  }
  const fin = (b0 & 0x80) !== 0;
  const opcode = b0 & 0x0f;
  const control = (opcode & 0x8) !== 0;
  if (
    opcode !== Op.continuation && opcode !== Op.text &&
    opcode !== Op.binary && opcode !== Op.close && opcode !== Op.ping &&
    opcode !== Op.pong
  ) {
    throw new WebSocketProtocolError(1002, `unknown opcode ${opcode}`);
  }
  if ((b1 & 0x80) !== 0 !== masked) {
    throw new WebSocketProtocolError(
      1002,
      masked ? "frame is not masked" : "frame from a server is masked",
    );
  }
  let length = b1 & 0x7f;
  let at = start + 2;
  if (control && (!fin || length > 125)) {
    throw new WebSocketProtocolError(
      1002,
      "control frame is fragmented or longer than 125 bytes",
    );
  }
  if (length === 126) {
    if (end - at < 2) return null;
    length = (buf[at] << 8) | buf[at + 1];
    at += 2;
  } else if (length === 127) {
    if (end - at < 8) return null;
    const high = (buf[at] << 24 | buf[at + 1] << 16 | buf[at + 2] << 8 |
      buf[at + 3]) >>> 0;
    const low = (buf[at + 4] << 24 | buf[at + 5] << 16 | buf[at + 6] << 8 |
      buf[at + 7]) >>> 0;
    if (high >= 0x80000000) {
      throw new WebSocketProtocolError(
        1002,
        "frame length has its top bit set",
      );
    }
    length = high * 0x1_0000_0000 + low;
    at += 8;
  }
  // Data frames only: a control frame (at most 125 bytes, above) may come
  // between the fragments of a message that is nearly at its limit.
  if (!control && length > maxPayload) {
    throw new WebSocketProtocolError(
      1009,
      `frame of ${length} bytes is over the limit of ${maxPayload}`,
    );
  }
  let mask: Uint8Array | null = null;
  if (masked) {
    if (end - at < 4) return null;
    mask = buf.subarray(at, at + 4);
    at += 4;
  }
  if (end - at < length) return null;
  // A copy: the caller's buffer is reused for the next reads.
  const payload = buf.slice(at, at + length);
  if (mask !== null) {
    for (let i = 0; i < length; i++) payload[i] ^= mask[i & 3];
  }
  return { frame: { fin, opcode, payload }, used: at + length - start };
}

/**
 * The payload of a close frame: none without a code, else the code and
 * the reason (cut to fit the 125 bytes of a control frame).
 */
export function closePayload(code?: number, reason = ""): Uint8Array {
  if (code === undefined) return new Uint8Array(0);
  let text = new TextEncoder().encode(reason);
  if (text.length > 123) {
    // Cut on a character boundary: a continuation byte is 10xxxxxx.
    let cut = 123;
    while (cut > 0 && (text[cut] & 0xc0) === 0x80) cut--;
    text = text.subarray(0, cut);
  }
  const out = new Uint8Array(2 + text.length);
  out[0] = code >>> 8;
  out[1] = code & 0xff;
  out.set(text, 2);
  return out;
}

/**
 * Reads a close frame's payload: its code (undefined when it has none) and
 * reason.
 *
 * @throws {WebSocketProtocolError} for a one-byte payload, a code that may
 *   not be sent, or a reason that is not UTF-8.
 */
export function parseClose(
  payload: Uint8Array,
): { code: number | undefined; reason: string } {
  if (payload.length === 0) return { code: undefined, reason: "" };
  if (payload.length === 1) {
    throw new WebSocketProtocolError(1002, "close frame of one byte");
  }
  const code = (payload[0] << 8) | payload[1];
  if (!sendableCloseCode(code)) {
    throw new WebSocketProtocolError(1002, `close code ${code} is not allowed`);
  }
  let reason;
  try {
    // ignoreBOM keeps a leading U+FEFF, which is part of the reason.
    reason = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(
      payload.subarray(2),
    );
  } catch {
    throw new WebSocketProtocolError(1007, "close reason is not UTF-8");
  }
  return { code, reason };
}

/**
 * Whether `code` may appear in a close frame (RFC 6455 §7.4): 1000-1003,
 * 1007-1011 (and 1012-1014, registered since), and 3000-4999. 1005, 1006
 * and 1015 only report what happened locally.
 */
export function sendableCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
    (code >= 3000 && code <= 4999);
}
