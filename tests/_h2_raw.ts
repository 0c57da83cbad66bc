/**
 * A minimal raw HTTP/2 client for tests: cleartext prior knowledge
 * (h2c) or TLS with ALPN h2, frames written by hand (HPACK literals without
 * indexing only), so a test controls exactly what the server sees: HEADERS
 * without END_STREAM and no body byte, RST_STREAM at any point, no
 * WINDOW_UPDATE (a reader that stops reading).
 *
 * @module
 */

export const DATA = 0,
  HEADERS = 1,
  RST_STREAM = 3,
  SETTINGS = 4,
  PING = 6,
  GOAWAY = 7,
  WINDOW_UPDATE = 8,
  CONTINUATION = 9;
export const END_STREAM = 1, END_HEADERS = 4, ACK = 1;

export interface Frame {
  type: number;
  flags: number;
  stream: number;
  payload: Uint8Array;
}

const enc = new TextEncoder();

function hpackInt(value: number, prefixBits: number, first: number): number[] {
  const max = (1 << prefixBits) - 1;
  if (value < max) return [first | value];
  const out = [first | max];
  value -= max;
  while (value >= 128) {
    out.push((value % 128) + 128);
    value = Math.floor(value / 128);
  }
  out.push(value);
  return out;
}

/** HPACK block of literal fields without indexing (new names). */
export function hpack(fields: [string, string][]): Uint8Array {
  const out: number[] = [];
  for (const [name, value] of fields) {
    const n = enc.encode(name), v = enc.encode(value);
    out.push(0x00, ...hpackInt(n.length, 7, 0), ...n);
    out.push(...hpackInt(v.length, 7, 0), ...v);
  }
  return new Uint8Array(out);
}

export function frame(
  type: number,
  flags: number,
  stream: number,
  payload: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const f = new Uint8Array(9 + payload.length);
  const len = payload.length;
  f[0] = (len >> 16) & 0xff;
  f[1] = (len >> 8) & 0xff;
  f[2] = len & 0xff;
  f[3] = type;
  f[4] = flags;
  new DataView(f.buffer).setUint32(5, stream & 0x7fffffff);
  f.set(payload, 9);
  return f;
}

function u32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n);
  return b;
}

/** Minimal HPACK decoding of a server's header block (static table + Huffman-free literals, dynamic table tracked). */
const STATIC: [string, string][] = [
  ["", ""],
  [":authority", ""],
  [":method", "GET"],
  [":method", "POST"],
  [":path", "/"],
  [":path", "/index.html"],
  [":scheme", "http"],
  [":scheme", "https"],
  [":status", "200"],
  [":status", "204"],
  [":status", "206"],
  [":status", "304"],
  [":status", "400"],
  [":status", "404"],
  [":status", "500"],
  ["accept-charset", ""],
  ["accept-encoding", "gzip, deflate"],
  ["accept-language", ""],
  ["accept-ranges", ""],
  ["accept", ""],
  ["access-control-allow-origin", ""],
  ["age", ""],
  ["allow", ""],
  ["authorization", ""],
  ["cache-control", ""],
  ["content-disposition", ""],
  ["content-encoding", ""],
  ["content-language", ""],
  ["content-length", ""],
  ["content-location", ""],
  ["content-range", ""],
  ["content-type", ""],
  ["cookie", ""],
  ["date", ""],
  ["etag", ""],
  ["expect", ""],
  ["expires", ""],
  ["from", ""],
  ["host", ""],
  ["if-match", ""],
  ["if-modified-since", ""],
  ["if-none-match", ""],
  ["if-range", ""],
  ["if-unmodified-since", ""],
  ["last-modified", ""],
  ["link", ""],
  ["location", ""],
  ["max-forwards", ""],
  ["proxy-authenticate", ""],
  ["proxy-authorization", ""],
  ["range", ""],
  ["referer", ""],
  ["refresh", ""],
  ["retry-after", ""],
  ["server", ""],
  ["set-cookie", ""],
  ["strict-transport-security", ""],
  ["transfer-encoding", ""],
  ["user-agent", ""],
  ["vary", ""],
  ["via", ""],
  ["www-authenticate", ""],
];

/** The :status of a response header block, if it can be read (only indexed or literal, non-Huffman status). */
export function statusOf(block: Uint8Array): number | null {
  // :status is the first field; servers send it indexed (static 8-14) or as a literal with indexed name 8.
  let at = 0;
  // Dynamic table size updates (001xxxxx) come first.
  while (at < block.length && (block[at] & 0xe0) === 0x20) {
    const full = (block[at] & 0x1f) === 0x1f;
    at++;
    if (full) {
      while (block[at] & 0x80) at++;
      at++;
    }
  }
  block = block.subarray(at);
  const b = block[0];
  if (b & 0x80) {
    const idx = b & 0x7f;
    if (idx >= 8 && idx <= 14) return Number(STATIC[idx][1]);
    return null;
  }
  // literal with indexed name (with incremental indexing 0x40 | idx, 6-bit; without 0x00 | idx, 4-bit)
  let i = 1;
  const hl = block[i];
  const huff = (hl & 0x80) !== 0;
  const len = hl & 0x7f;
  i++;
  if (huff) return decodeHuffDigits(block.subarray(i, i + len));
  return Number(new TextDecoder().decode(block.subarray(i, i + len)));
}

// Huffman codes of '0'-'9' (RFC 7541 Appendix B): '0'..'2' 5 bits, '3'..'9' 6 bits.
const DIGIT_CODES: [number, number, string][] = [
  [0x0, 5, "0"],
  [0x1, 5, "1"],
  [0x2, 5, "2"],
  [0x19, 6, "3"],
  [0x1a, 6, "4"],
  [0x1b, 6, "5"],
  [0x1c, 6, "6"],
  [0x1d, 6, "7"],
  [0x1e, 6, "8"],
  [0x1f, 6, "9"],
];

function decodeHuffDigits(bytes: Uint8Array): number | null {
  let bits = "";
  for (const b of bytes) bits += b.toString(2).padStart(8, "0");
  let out = "";
  let pos = 0;
  while (out.length < 3) {
    let found = false;
    for (const [code, len, ch] of DIGIT_CODES) {
      if (pos + len > bits.length) continue;
      if (parseInt(bits.slice(pos, pos + len), 2) === code) {
        out += ch;
        pos += len;
        found = true;
        break;
      }
    }
    if (!found) return null;
  }
  return Number(out);
}

export class RawH2 {
  #conn: Deno.Conn;
  #buf = new Uint8Array(0);
  #frames: Frame[] = [];
  #waiters: (() => void)[] = [];
  #nextStream = 1;
  closed = false;
  readonly done: Promise<void>;
  /** Every frame received, in order. */
  readonly log: Frame[] = [];

  private constructor(conn: Deno.Conn) {
    this.#conn = conn;
    this.done = this.#readLoop();
  }

  static async connect(
    port: number,
    tls?: { caCerts: string[] },
  ): Promise<RawH2> {
    const conn = tls
      ? await Deno.connectTls({
        hostname: "localhost",
        port,
        caCerts: tls.caCerts,
        alpnProtocols: ["h2"],
      })
      : await Deno.connect({ hostname: "127.0.0.1", port });
    const h = new RawH2(conn);
    await h.write(enc.encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
    // No dynamic table: every field the server sends is a literal or in
    // the static table, which statusOf reads.
    await h.write(frame(SETTINGS, 0, 0, new Uint8Array([0, 1, 0, 0, 0, 0])));
    return h;
  }

  async write(bytes: Uint8Array): Promise<void> {
    let off = 0;
    while (off < bytes.length) {
      off += await this.#conn.write(bytes.subarray(off));
    }
  }

  async #readLoop(): Promise<void> {
    const chunk = new Uint8Array(65536);
    try {
      while (true) {
        const n = await this.#conn.read(chunk);
        if (n === null) break;
        const joined = new Uint8Array(this.#buf.length + n);
        joined.set(this.#buf);
        joined.set(chunk.subarray(0, n), this.#buf.length);
        this.#buf = joined;
        while (this.#buf.length >= 9) {
          const len = (this.#buf[0] << 16) | (this.#buf[1] << 8) | this.#buf[2];
          if (this.#buf.length < 9 + len) break;
          const f: Frame = {
            type: this.#buf[3],
            flags: this.#buf[4],
            stream: new DataView(this.#buf.buffer, this.#buf.byteOffset)
              .getUint32(5) & 0x7fffffff,
            payload: this.#buf.slice(9, 9 + len),
          };
          this.#buf = this.#buf.slice(9 + len);
          if (f.type === SETTINGS && !(f.flags & ACK)) {
            await this.write(frame(SETTINGS, ACK, 0));
          }
          if (f.type === PING && !(f.flags & ACK)) {
            await this.write(frame(PING, ACK, 0, f.payload));
          }
          this.log.push(f);
          this.#frames.push(f);
          for (const w of this.#waiters.splice(0)) w();
        }
      }
    } catch {
      // closed
    } finally {
      this.closed = true;
      for (const w of this.#waiters.splice(0)) w();
    }
  }

  /** Waits (at most `ms`) for a frame matching `pred` (received at any time). */
  async waitFrame(
    pred: (f: Frame) => boolean,
    ms = 10_000,
  ): Promise<Frame | null> {
    const end = performance.now() + ms;
    while (true) {
      const f = this.log.find(pred);
      if (f !== undefined) return f;
      if (this.closed) return null;
      const left = end - performance.now();
      if (left <= 0) return null;
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        timer = setTimeout(r, left);
      });
      clearTimeout(timer);
    }
  }

  /** Opens a stream with HEADERS (one frame); returns its id. */
  async request(
    fields: [string, string][],
    endStream: boolean,
  ): Promise<number> {
    const id = this.#nextStream;
    this.#nextStream += 2;
    await this.write(
      frame(
        HEADERS,
        END_HEADERS | (endStream ? END_STREAM : 0),
        id,
        hpack(fields),
      ),
    );
    return id;
  }

  async data(stream: number, bytes: Uint8Array, end: boolean): Promise<void> {
    await this.write(frame(DATA, end ? END_STREAM : 0, stream, bytes));
  }

  async trailers(stream: number, fields: [string, string][]): Promise<void> {
    await this.write(
      frame(HEADERS, END_HEADERS | END_STREAM, stream, hpack(fields)),
    );
  }

  async reset(stream: number, code = 8 /* CANCEL */): Promise<void> {
    await this.write(frame(RST_STREAM, 0, stream, u32(code)));
  }

  async windowUpdate(stream: number, increment: number): Promise<void> {
    await this.write(frame(WINDOW_UPDATE, 0, stream, u32(increment)));
  }

  /** The status of the stream's first response HEADERS, once it comes. */
  async status(stream: number, ms = 10_000): Promise<number | null> {
    const f = await this.waitFrame(
      (f) => f.stream === stream && f.type === HEADERS,
      ms,
    );
    return f === null ? null : statusOf(f.payload);
  }

  /** Bytes of DATA received on a stream so far, and whether it ended. */
  received(stream: number): { bytes: number; ended: boolean; reset: boolean } {
    let bytes = 0, ended = false, reset = false;
    for (const f of this.log) {
      if (f.stream !== stream) continue;
      if (f.type === DATA) bytes += f.payload.length;
      if ((f.type === DATA || f.type === HEADERS) && f.flags & END_STREAM) {
        ended = true;
      }
      if (f.type === RST_STREAM) reset = true;
    }
    return { bytes, ended, reset };
  }

  #closedConn = false;

  close(): void {
    if (this.#closedConn) return;
    this.#closedConn = true;
    try {
      this.#conn.close();
    } catch {
      // closed
    }
  }
}

/** A request's pseudo-header fields (http, authority `localhost`) and more. */
export function requestHead(
  method: string,
  path: string,
  extra: [string, string][] = [],
): [string, string][] {
  return [
    [":method", method],
    [":scheme", "http"],
    [":authority", "localhost"],
    [":path", path],
    ...extra,
  ];
}
