/**
 * The minimal connection both ends run on, and a buffered reader over it.
 *
 * `Deno.Conn` and `Deno.TlsConn` satisfy {@linkcode Connection}; tests use
 * in-memory pairs. Nothing here depends on `Deno.*`.
 *
 * @module
 */

/** The subset of `Deno.Conn` the worker link needs. */
export interface Connection {
  /** Reads into `p`; resolves the byte count, or `null` at end of stream. */
  read(p: Uint8Array): Promise<number | null>;
  /** Writes from `p`; resolves the byte count written (may be short). */
  write(p: Uint8Array): Promise<number>;
  /** Closes both directions; pending reads reject. */
  close(): void;
}

/** Closes `conn`, ignoring that it may be closed already. */
export function closeQuietly(conn: Connection): void {
  try {
    conn.close();
  } catch {
    // already closed
  }
}

/** Writes all of `data` to `conn`, looping over short writes. */
export async function writeAll(
  conn: Connection,
  data: Uint8Array,
): Promise<void> {
  let at = 0;
  while (at < data.length) {
    at += await conn.write(at === 0 ? data : data.subarray(at));
  }
}

const MIN_READ = 16 * 1024;

/**
 * A growable read buffer over a {@linkcode Connection}.
 *
 * Bytes live in `buf[start, end)`. Only one read is in flight at a time:
 * concurrent `fill()` calls share it, which lets the hub watch an idle
 * connection for EOF and later parse the response from the same read.
 */
export class BufferedReader {
  /** The buffer; valid bytes are `buf[start, end)`. */
  buf: Uint8Array;
  /** Index of the first unconsumed byte. */
  start = 0;
  /** Index just past the last buffered byte. */
  end = 0;
  /** True once the peer has ended the stream. */
  eof = false;
  /** `performance.now()` when the read in flight started, or 0 if none. */
  readSince = 0;
  /**
   * Calls to `fill` and `readChunk` so far: a count that stands still while
   * nobody asks for bytes (a body whose reader takes nothing).
   */
  asks = 0;
  #conn: Connection;
  #pending: Promise<boolean> | null = null;

  constructor(conn: Connection, size: number = MIN_READ) {
    this.#conn = conn;
    this.buf = new Uint8Array(size);
  }

  /** Number of buffered, unconsumed bytes. */
  get buffered(): number {
    return this.end - this.start;
  }

  /** True while a read is in flight. */
  get reading(): boolean {
    return this.#pending !== null;
  }

  /** Marks `n` buffered bytes as used. */
  consume(n: number): void {
    this.start += n;
    // Rewind an empty buffer, unless a read in flight is writing at `end`.
    if (this.start === this.end && this.#pending === null) {
      this.start = this.end = 0;
    }
  }

  /** Removes and returns up to `max` buffered bytes as a copy. */
  take(max: number): Uint8Array {
    const n = Math.min(max, this.end - this.start);
    const out = this.buf.slice(this.start, this.start + n);
    this.consume(n);
    return out;
  }

  /**
   * Gives back a buffer that a large message grew past `max` bytes, once
   * what it holds fits in `max` and no read is in flight.
   */
  shrink(max: number): void {
    const n = this.end - this.start;
    if (this.buf.length <= max || n > max || this.#pending !== null) return;
    const smaller = new Uint8Array(max);
    smaller.set(this.buf.subarray(this.start, this.end));
    this.buf = smaller;
    this.start = 0;
    this.end = n;
  }

  /**
   * Reads more bytes into the buffer. Resolves `false` at end of stream.
   * Rejects with the connection's error.
   */
  fill(): Promise<boolean> {
    this.asks++;
    // #fill clears #pending itself before it settles (one promise, not a
    // `finally` chain). At end of stream the settled `false` stays cached.
    return this.#pending ??= this.#fill();
  }

  async #fill(): Promise<boolean> {
    if (this.eof) return false;
    if (this.start > 0 && this.buf.length - this.end < MIN_READ / 4) {
      this.buf.copyWithin(0, this.start, this.end);
      this.end -= this.start;
      this.start = 0;
    }
    if (this.buf.length - this.end < MIN_READ / 4) {
      const bigger = new Uint8Array(this.buf.length * 2);
      bigger.set(this.buf.subarray(0, this.end));
      this.buf = bigger;
    }
    this.readSince = performance.now();
    let n;
    try {
      n = await this.#conn.read(this.buf.subarray(this.end));
    } finally {
      this.readSince = 0;
      this.#pending = null;
    }
    if (n === null) {
      this.eof = true;
      return false;
    }
    this.end += n;
    return true;
  }

  /**
   * Returns up to `max` body bytes as a fresh array the caller may keep:
   * buffered bytes first, otherwise one read straight into a new array (no
   * copy). Resolves `null` at end of stream.
   */
  async readChunk(max: number): Promise<Uint8Array | null> {
    this.asks++;
    // Buffered bytes first: a read in flight may never complete if the peer
    // waits for our answer (a pipelined request's body is already here).
    if (this.end > this.start) return this.take(max);
    if (this.#pending !== null) await this.#pending;
    if (this.end > this.start) return this.take(max);
    if (this.eof) return null;
    const chunk = new Uint8Array(Math.min(max, 64 * 1024));
    this.readSince = performance.now();
    let n;
    try {
      n = await this.#conn.read(chunk);
    } finally {
      this.readSince = 0;
    }
    if (n === null) {
      this.eof = true;
      return null;
    }
    return chunk.subarray(0, n);
  }
}

/** `parts` joined into one array of `size` bytes (their total length). */
export function joinBytes(parts: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/**
 * Whether Deno runs with `--unstable-net`, which `SO_REUSEPORT` needs: its
 * unstable network APIs are there only then.
 */
export function hasUnstableNet(): boolean {
  return typeof (Deno as { listenDatagram?: unknown }).listenDatagram ===
    "function";
}

/**
 * Calls `onAbort` when `signal` aborts (at once if it has) until `done`
 * settles; then the listener comes off, so that a long-lived signal keeps
 * nothing that has ended reachable.
 */
export function onAbortUntil(
  signal: AbortSignal | undefined,
  onAbort: () => void,
  done: Promise<unknown>,
): void {
  if (signal === undefined) return;
  if (signal.aborted) {
    onAbort();
    return;
  }
  signal.addEventListener("abort", onAbort, { once: true });
  const forget = () => signal.removeEventListener("abort", onAbort);
  done.then(forget, forget);
}
