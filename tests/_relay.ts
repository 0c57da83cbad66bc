/**
 * Test helpers on raw TCP: dumb relays that pipe bytes between sockets
 * without looking at them, and a raw socket that writes exact bytes and reads
 * HTTP/1.1 messages back. Used to put implementations that are not ours
 * (`Deno.serve`, `fetch`, curl) on either end of the worker link.
 *
 * @module
 */

const LOOPBACK = "127.0.0.1";

function closeQuietly(c: { close(): void }): void {
  try {
    c.close();
  } catch {
    // already closed
  }
}

/** Copies bytes from `from` to `to` until end of stream or an error. */
async function pump(from: Deno.Conn, to: Deno.Conn): Promise<void> {
  const buf = new Uint8Array(64 * 1024);
  try {
    while (true) {
      const n = await from.read(buf);
      if (n === null) return;
      let at = 0;
      while (at < n) at += await to.write(buf.subarray(at, n));
    }
  } catch {
    // either side closed: the pair ends
  }
}

/**
 * Pipes `a` and `b` both ways. When either direction ends, both connections
 * close (no half-close: an HTTP peer that ends its side is done with the
 * connection). Resolves once both directions have stopped.
 */
export async function pipeBoth(a: Deno.Conn, b: Deno.Conn): Promise<void> {
  const stop = () => {
    closeQuietly(a);
    closeQuietly(b);
  };
  await Promise.all([pump(a, b).finally(stop), pump(b, a).finally(stop)]);
}

/** A relay that dialed both ends itself. */
export interface DialRelay {
  /** Connection pairs opened so far (never reopened). */
  readonly pairs: number;
  /** Closes every connection and waits for all pipes to stop. */
  close(): Promise<void>;
}

/**
 * Dials `count` connections to `hub` (the hub's worker port) and, for each,
 * one to `server` (any HTTP/1.1 server), and pipes them together: the
 * original POTHEAD protocol, where a worker is anything that connects and
 * then speaks HTTP/1.1 server. Connections are never reopened, so a pair that
 * closes stays closed.
 */
export async function dialRelay(
  hub: Deno.NetAddr,
  server: Deno.NetAddr,
  count: number,
): Promise<DialRelay> {
  const conns: Deno.Conn[] = [];
  const pipes: Promise<void>[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const s = await Deno.connect({ hostname: LOOPBACK, port: server.port });
      conns.push(s);
      const h = await Deno.connect({ hostname: LOOPBACK, port: hub.port });
      conns.push(h);
      pipes.push(pipeBoth(h, s));
    }
  } catch (error) {
    for (const c of conns) closeQuietly(c);
    await Promise.all(pipes);
    throw error;
  }
  return {
    pairs: pipes.length,
    async close() {
      for (const c of conns) closeQuietly(c);
      await Promise.all(pipes);
    },
  };
}

/** A relay that listens on two ports and pairs what connects to them. */
export interface PairingRelay {
  /** Where workers dial (they wait there until a client arrives). */
  readonly workerAddr: Deno.NetAddr;
  /** Where HTTP clients connect. */
  readonly clientAddr: Deno.NetAddr;
  /** Client connections accepted so far. */
  readonly clients: number;
  /** Worker connections accepted so far. */
  readonly workers: number;
  /** Stops both listeners, closes every connection, waits for the pipes. */
  close(): Promise<void>;
}

/**
 * Listens on two loopback ports: worker connections to `workerAddr` wait in
 * a FIFO; each client connection to `clientAddr` is paired with the next
 * waiting worker connection (or waits for one) and the two are piped both
 * ways. This puts a real HTTP client directly on a worker's connection.
 */
export function pairingRelay(): PairingRelay {
  const workerListener = Deno.listen({ hostname: LOOPBACK, port: 0 });
  const clientListener = Deno.listen({ hostname: LOOPBACK, port: 0 });
  const waitingWorkers: Deno.Conn[] = [];
  const waitingClients: Deno.Conn[] = [];
  const open = new Set<Deno.Conn>();
  const pipes = new Set<Promise<void>>();
  let clients = 0;
  let workers = 0;

  const pair = () => {
    while (waitingWorkers.length > 0 && waitingClients.length > 0) {
      const w = waitingWorkers.shift()!;
      const c = waitingClients.shift()!;
      const p = pipeBoth(c, w).finally(() => {
        open.delete(c);
        open.delete(w);
        pipes.delete(p);
      });
      pipes.add(p);
    }
  };
  const accept = async (
    listener: Deno.Listener,
    onConn: (c: Deno.Conn) => void,
  ) => {
    try {
      for await (const c of listener) {
        open.add(c);
        onConn(c);
        pair();
      }
    } catch {
      // listener closed
    }
  };
  const loops = Promise.all([
    accept(workerListener, (c) => {
      workers++;
      waitingWorkers.push(c);
    }),
    accept(clientListener, (c) => {
      clients++;
      waitingClients.push(c);
    }),
  ]);
  return {
    workerAddr: workerListener.addr as Deno.NetAddr,
    clientAddr: clientListener.addr as Deno.NetAddr,
    get clients() {
      return clients;
    },
    get workers() {
      return workers;
    },
    async close() {
      closeQuietly(workerListener);
      closeQuietly(clientListener);
      await loops;
      for (const c of open) closeQuietly(c);
      waitingWorkers.length = 0;
      waitingClients.length = 0;
      await Promise.all([...pipes]);
    },
  };
}

export { deadline, waitFor } from "./_wait.ts";

/** Encodes a string of chars <= 0xff as the same bytes (ISO-8859-1). */
export function latin1Bytes(s: string): Uint8Array {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0xff;
  return out;
}

/** Decodes bytes one char per byte (ISO-8859-1). */
export function latin1Text(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < b.length; i += 8192) {
    s += String.fromCharCode(...b.subarray(i, i + 8192));
  }
  return s;
}

/** A parsed HTTP/1.1 message read by {@linkcode RawSocket}. */
export interface RawMessage {
  /** The start line. */
  start: string;
  /** Status code (responses) or 0 (requests). */
  status: number;
  /** Fields in wire order, names lower-cased. */
  headers: [string, string][];
  /** The body bytes (de-chunked). */
  body: Uint8Array;
}

/**
 * A TCP socket for tests that write exact bytes: reads are buffered so heads
 * and bodies can be taken off one at a time. A read error counts as end of
 * stream.
 */
export class RawSocket {
  /** The underlying connection. */
  readonly conn: Deno.Conn;
  #buf = new Uint8Array(0);
  #eof = false;
  #closed = false;

  constructor(conn: Deno.Conn) {
    this.conn = conn;
  }

  /** Connects to a loopback port. */
  static async connect(port: number): Promise<RawSocket> {
    return new RawSocket(await Deno.connect({ hostname: LOOPBACK, port }));
  }

  /** True once the peer ended the stream (or the socket failed). */
  get eof(): boolean {
    return this.#eof;
  }

  /** Bytes read but not yet taken. */
  get buffered(): number {
    return this.#buf.length;
  }

  async #fill(): Promise<boolean> {
    if (this.#eof) return false;
    const chunk = new Uint8Array(64 * 1024);
    let n: number | null;
    try {
      n = await this.conn.read(chunk);
    } catch {
      n = null;
    }
    if (n === null) {
      this.#eof = true;
      return false;
    }
    const next = new Uint8Array(this.#buf.length + n);
    next.set(this.#buf);
    next.set(chunk.subarray(0, n), this.#buf.length);
    this.#buf = next;
    return true;
  }

  #take(n: number): Uint8Array {
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.slice(n);
    return out;
  }

  /** Writes all of `data`; resolves false if the peer is gone. */
  async write(data: string | Uint8Array): Promise<boolean> {
    const bytes = typeof data === "string" ? latin1Bytes(data) : data;
    try {
      let at = 0;
      while (at < bytes.length) at += await this.conn.write(bytes.subarray(at));
      return true;
    } catch {
      return false;
    }
  }

  /** Reads up to and including the next CRLF CRLF; null at end of stream. */
  async readHead(): Promise<string | null> {
    for (let guard = 0; guard < 100_000; guard++) {
      const text = latin1Text(this.#buf);
      const at = text.indexOf("\r\n\r\n");
      if (at >= 0) return latin1Text(this.#take(at + 4));
      if (!(await this.#fill())) return null;
    }
    throw new Error("RawSocket.readHead: no head end");
  }

  /** Reads exactly `n` bytes; rejects at end of stream. */
  async readExactly(n: number): Promise<Uint8Array> {
    while (this.#buf.length < n) {
      if (!(await this.#fill())) {
        throw new Error(
          `RawSocket: stream ended after ${this.#buf.length} of ${n} bytes`,
        );
      }
    }
    return this.#take(n);
  }

  async #readLine(): Promise<string> {
    while (true) {
      const text = latin1Text(this.#buf);
      const at = text.indexOf("\r\n");
      if (at >= 0) return latin1Text(this.#take(at + 2)).slice(0, -2);
      if (!(await this.#fill())) {
        throw new Error("RawSocket: stream ended inside a line");
      }
    }
  }

  /**
   * Reads one message: the head, then a body framed by Content-Length or
   * chunked (none when `noBody`, for HEAD, 1xx, 204 and 304).
   * Resolves null at end of stream before a head.
   */
  async readMessage(noBody = false): Promise<RawMessage | null> {
    const head = await this.readHead();
    if (head === null) return null;
    const lines = head.slice(0, -4).split("\r\n");
    const start = lines[0];
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(start);
    const status = m ? Number(m[1]) : 0;
    const headers: [string, string][] = lines.slice(1).map((l) => {
      const i = l.indexOf(":");
      return [l.slice(0, i).toLowerCase(), l.slice(i + 1).trim()];
    });
    const get = (n: string) => headers.find(([k]) => k === n)?.[1];
    let body: Uint8Array = new Uint8Array(0);
    const skip = noBody || (status >= 100 && status < 200) || status === 204 ||
      status === 304;
    if (!skip && get("transfer-encoding")?.toLowerCase() === "chunked") {
      const parts: Uint8Array[] = [];
      for (let guard = 0; guard < 1_000_000; guard++) {
        const size = parseInt(await this.#readLine(), 16);
        if (size === 0) {
          while ((await this.#readLine()) !== "");
          break;
        }
        parts.push(await this.readExactly(size));
        await this.readExactly(2);
      }
      body = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      let at = 0;
      for (const p of parts) body.set(p, at), at += p.length;
    } else if (!skip && get("content-length") !== undefined) {
      body = await this.readExactly(Number(get("content-length")));
    }
    return { start, status, headers, body };
  }

  /** Reads until end of stream; returns what was not yet taken. */
  async readToEnd(): Promise<Uint8Array> {
    for (let guard = 0; guard < 100_000 && (await this.#fill()); guard++);
    return this.#take(this.#buf.length);
  }

  /** Closes the socket (idempotent). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeQuietly(this.conn);
  }
}
