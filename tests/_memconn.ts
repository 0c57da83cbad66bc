/**
 * In-memory {@linkcode Connection}s for tests: a scripted reader that yields
 * given byte pieces, and a connected pair. No sockets, no timers.
 *
 * @module
 */

import type { Connection } from "../_io.ts";

/** Encodes `s` as ISO-8859-1 bytes (one byte per char). */
export function bytes(s: string): Uint8Array {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c > 0xff) {
      throw new RangeError(`Cannot encode as latin1: char ${c} at ${i}`);
    }
    out[i] = c;
  }
  return out;
}

/** Decodes bytes as ISO-8859-1 (one char per byte). */
export function text(b: Uint8Array): string {
  let s = "";
  for (const c of b) s += String.fromCharCode(c);
  return s;
}

/** Concatenates byte arrays. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Splits `data` at the given ascending offsets (pieces may be empty). */
export function splitAt(data: Uint8Array, ...offsets: number[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  let prev = 0;
  for (const o of offsets) {
    out.push(data.slice(prev, o));
    prev = o;
  }
  out.push(data.slice(prev));
  return out;
}

/** Splits `data` into pieces of `size` bytes (the last may be shorter). */
export function pieces(data: Uint8Array, size: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < data.length; i += size) {
    out.push(data.slice(i, i + size));
  }
  return out;
}

/** Options for {@linkcode ScriptedConn}. */
export interface ScriptedConnOptions {
  /**
   * Thrown by the read after the last piece instead of returning end of
   * stream.
   */
  readError?: unknown;
  /** Largest byte count one `write` accepts (short writes); no limit by default. */
  maxWrite?: number;
  /** Thrown by every `write` when set. */
  writeError?: unknown;
  /**
   * Reads after the last piece wait until `close()` instead of returning
   * end of stream: a peer that keeps the connection open (as the hub does
   * while a response comes; its end of stream means it has gone).
   */
  open?: boolean;
}

/**
 * A connection whose reads return the given pieces in order (a piece larger
 * than the read buffer is returned over several reads; empty pieces are
 * skipped), then end of stream. Writes are recorded.
 */
export class ScriptedConn implements Connection {
  /** Each write's bytes, copied. */
  readonly writes: Uint8Array[] = [];
  /** Number of `read` calls that returned bytes. */
  reads = 0;
  /** True once `close()` was called. */
  closed = false;
  #pieces: Uint8Array[];
  #options: ScriptedConnOptions;
  // Reads waiting on an open connection (see `open`).
  #onClose: ((error: Error) => void)[] = [];

  constructor(
    pieces: Iterable<Uint8Array | string>,
    options: ScriptedConnOptions = {},
  ) {
    this.#pieces = [];
    for (const p of pieces) {
      const b = typeof p === "string" ? bytes(p) : p;
      if (b.length > 0) this.#pieces.push(b);
    }
    this.#options = options;
  }

  /** All written bytes, concatenated. */
  get written(): Uint8Array {
    return concat(...this.writes);
  }

  /** Bytes not yet read. */
  get unread(): Uint8Array {
    return concat(...this.#pieces);
  }

  read(p: Uint8Array): Promise<number | null> {
    if (this.closed) {
      return Promise.reject(new Deno.errors.BadResource("Connection closed"));
    }
    const piece = this.#pieces.shift();
    if (piece === undefined) {
      if (this.#options.open) {
        return new Promise((_, reject) => this.#onClose.push(reject));
      }
      if (this.#options.readError !== undefined) {
        return Promise.reject(this.#options.readError);
      }
      return Promise.resolve(null);
    }
    const n = Math.min(p.length, piece.length);
    p.set(piece.subarray(0, n));
    if (n < piece.length) this.#pieces.unshift(piece.subarray(n));
    this.reads++;
    return Promise.resolve(n);
  }

  write(p: Uint8Array): Promise<number> {
    if (this.closed) {
      return Promise.reject(new Deno.errors.BadResource("Connection closed"));
    }
    if (this.#options.writeError !== undefined) {
      return Promise.reject(this.#options.writeError);
    }
    const n = Math.min(p.length, this.#options.maxWrite ?? Infinity);
    this.writes.push(p.slice(0, n));
    return Promise.resolve(n);
  }

  close(): void {
    this.closed = true;
    for (const reject of this.#onClose.splice(0)) {
      reject(new Deno.errors.BadResource("Connection closed"));
    }
  }
}

/** Options for {@linkcode memPair}. */
export interface MemPairOptions {
  /** Largest byte count one `write` accepts (short writes); no limit by default. */
  maxWrite?: number;
}

interface Waiter {
  resolve(): void;
  reject(error: unknown): void;
}

class Pipe {
  chunks: Uint8Array[] = [];
  ended = false;
  waiter: Waiter | null = null;

  wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.resolve();
  }
}

/**
 * One end of an in-memory pair. Behaves like a `Deno.Conn`: reads wait for
 * the peer's writes and resolve `null` once the peer closed (or called
 * `closeWrite()`) and everything was read; `close()` rejects a pending read
 * of this end; writing to a closed peer rejects with `BrokenPipe`.
 */
export class MemConn implements Connection {
  /** True once `close()` was called. */
  closed = false;
  #in: Pipe;
  #out: Pipe;
  #peerClosed: () => boolean;
  #maxWrite: number;

  constructor(
    inPipe: Pipe,
    outPipe: Pipe,
    peerClosed: () => boolean,
    maxWrite: number,
  ) {
    this.#in = inPipe;
    this.#out = outPipe;
    this.#peerClosed = peerClosed;
    this.#maxWrite = maxWrite;
  }

  async read(p: Uint8Array): Promise<number | null> {
    while (true) {
      if (this.closed) throw new Deno.errors.BadResource("Connection closed");
      const chunk = this.#in.chunks[0];
      if (chunk !== undefined) {
        const n = Math.min(p.length, chunk.length);
        p.set(chunk.subarray(0, n));
        if (n === chunk.length) this.#in.chunks.shift();
        else this.#in.chunks[0] = chunk.subarray(n);
        return n;
      }
      if (this.#in.ended) return null;
      if (this.#in.waiter !== null) {
        throw new Deno.errors.Busy("Another read is pending");
      }
      await new Promise<void>((resolve, reject) => {
        this.#in.waiter = { resolve, reject };
      });
    }
  }

  write(p: Uint8Array): Promise<number> {
    if (this.closed) {
      return Promise.reject(new Deno.errors.BadResource("Connection closed"));
    }
    if (this.#out.ended) {
      return Promise.reject(
        new Deno.errors.BrokenPipe(
          this.#peerClosed() ? "Peer closed" : "Write side closed",
        ),
      );
    }
    const n = Math.min(p.length, this.#maxWrite);
    if (n > 0) this.#out.chunks.push(p.slice(0, n));
    this.#out.wake();
    return Promise.resolve(n);
  }

  /** Ends this end's writing direction: the peer reads end of stream. */
  closeWrite(): void {
    this.#out.ended = true;
    this.#out.wake();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.closeWrite();
    // Nothing will read what the peer writes any more.
    this.#in.ended = true;
    this.#in.chunks = [];
    const w = this.#in.waiter;
    this.#in.waiter = null;
    w?.reject(new Deno.errors.Interrupted("Connection closed during read"));
  }
}

/** Makes two connected in-memory connections. */
export function memPair(options: MemPairOptions = {}): [MemConn, MemConn] {
  const ab = new Pipe();
  const ba = new Pipe();
  const max = options.maxWrite ?? Infinity;
  const pair: MemConn[] = [];
  pair.push(new MemConn(ba, ab, () => pair[1].closed, max));
  pair.push(new MemConn(ab, ba, () => pair[0].closed, max));
  return [pair[0], pair[1]];
}

/** Reads from `conn` until end of stream; returns all bytes. */
export async function readAll(conn: Connection): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(4096);
  for (let i = 0; i < 1_000_000; i++) {
    const n = await conn.read(buf);
    if (n === null) return concat(...parts);
    parts.push(buf.slice(0, n));
  }
  throw new Error("readAll: too many reads");
}

/**
 * Reads from `conn` until a blank line; returns what it read (a request
 * head, as a worker sees it). Throws if the stream ends first.
 */
export async function readHead(conn: Connection): Promise<string> {
  let got = "";
  const buf = new Uint8Array(4096);
  while (!got.includes("\r\n\r\n")) {
    const n = await conn.read(buf);
    if (n === null) throw new Error(`Cannot read a head: ended after ${got}`);
    got += text(buf.subarray(0, n));
  }
  return got;
}
