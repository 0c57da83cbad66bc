/**
 * The worker's fast engine: the handler runs under `Deno.serve` (Deno's
 * native HTTP/1.1 server) on a private loopback listener, and each hub
 * connection is relayed byte for byte to one local connection.
 *
 * Relaying bytes costs less than parsing a request and building `Request`
 * and `Response` objects in JavaScript: measured on the 4×4 trivial-handler
 * benchmark, the worker processes spent about 56 µs per request this way
 * against 126 µs with the inline engine (`_serve_conn.ts`), in the same run.
 *
 * The listener accepts only the connections this engine opened: the handler
 * wrapper looks each request's local port up and refuses any other. What
 * the inline engine does on the wire (decline with the "not started" 408,
 * `Connection: close` on the last response, hand back an idle connection on
 * drain) is done here by the wrapper and by half-closing the local
 * connection, which makes `Deno.serve` finish what it has read and close.
 *
 * @module
 */

import { type BufferedReader, type Connection, writeAll } from "./_io.ts";
import { asksToClose } from "./_headers.ts";
import {
  callHandler,
  type FetchHandler,
  forwardedAddr,
  internalError,
  NOT_STARTED_RESPONSE,
  type ServeConnectionOptions,
} from "./_serve_conn.ts";

/** What {@linkcode NativeEngine.serve} needs besides the handler. */
export type RelayOptions = Omit<ServeConnectionOptions, "handler" | "limits">;

interface Link {
  readonly options: RelayOptions;
  readonly hub: Connection;
  readonly local: Deno.TcpConn;
  served: number;
  busy: boolean;
  // No new request may start on this link.
  stopped: boolean;
  // The local connection was half-closed; the link ends when it drains.
  ending: boolean;
  // A response with `Connection: close` went out: the hub sends no more.
  announced: boolean;
}

const RELAY_BUFFER = 64 * 1024;

/**
 * One private `Deno.serve` listener for a worker, and the relays from hub
 * connections to it. Create it once per worker and {@linkcode close} it
 * when the worker has finished.
 */
export class NativeEngine {
  #handler: FetchHandler;
  #onError: (error: unknown, context: string) => void;
  #server: Deno.HttpServer<Deno.NetAddr> | null = null;
  #links = new Map<number, Link>();

  constructor(
    handler: FetchHandler,
    onError: (error: unknown, context: string) => void,
  ) {
    this.#handler = handler;
    this.#onError = onError;
  }

  /**
   * Starts the private listener. Throws when it cannot listen (for example
   * without `--allow-net` for 127.0.0.1); the caller then uses the inline
   * engine.
   */
  start(): void {
    if (this.#server !== null) return;
    this.#server = Deno.serve({
      hostname: "127.0.0.1",
      port: 0,
      onListen() {},
      onError: (error) => {
        this.#onError(error, "handler");
        return internalError();
      },
    }, (req, info) => this.#serve(req, info));
  }

  /** The private listener's port (0 before {@linkcode start}). */
  get port(): number {
    return this.#server?.addr.port ?? 0;
  }

  /**
   * Serves requests arriving on `conn` until it ends, with the contract of
   * `serveConnection`: closes `conn` before returning and resolves with the
   * number of requests served. Bytes already buffered in `reader` (requests
   * that followed a handshake) are served first.
   */
  async serve(
    conn: Connection,
    options: RelayOptions,
    reader?: BufferedReader,
  ): Promise<number> {
    this.start();
    let local: Deno.TcpConn;
    try {
      local = await Deno.connect({
        hostname: "127.0.0.1",
        port: this.#server!.addr.port,
      });
      local.setNoDelay(true);
    } catch (error) {
      this.#onError(error, "connection");
      closeQuietly(conn);
      return 0;
    }
    const key = (local.localAddr as Deno.NetAddr).port;
    const link: Link = {
      options,
      hub: conn,
      local,
      served: 0,
      busy: false,
      stopped: false,
      ending: false,
      announced: false,
    };
    this.#links.set(key, link);
    const drain = options.drain;
    const onDrain = () => {
      if (!link.busy) this.#end(link);
    };
    drain.addEventListener("abort", onDrain, { once: true });
    try {
      if (reader !== undefined && reader.buffered > 0) {
        const early = reader.buf.slice(reader.start, reader.end);
        reader.consume(early.length);
        await writeAll(local, early);
      }
      if (drain.aborted) this.#end(link);
      await Promise.all([this.#up(link), this.#down(link)]);
    } catch (error) {
      this.#onError(error, "connection");
    } finally {
      drain.removeEventListener("abort", onDrain);
      this.#links.delete(key);
      closeQuietly(local);
      closeQuietly(conn);
    }
    return link.served;
  }

  /** Stops the listener once every link has ended. */
  async close(): Promise<void> {
    const server = this.#server;
    this.#server = null;
    for (const link of this.#links.values()) {
      closeQuietly(link.hub);
      closeQuietly(link.local);
    }
    if (server !== null) await server.shutdown();
  }

  // Hub to local: request bytes. Once the link is stopped, bytes that arrive
  // are a request crossing on the wire; they are not forwarded (the "not
  // started" 408 written at the end answers them).
  async #up(link: Link): Promise<void> {
    const buf = new Uint8Array(RELAY_BUFFER);
    try {
      while (true) {
        const n = await link.hub.read(buf);
        if (n === null || link.ending) break;
        await writeAll(link.local, buf.subarray(0, n));
      }
    } catch {
      // the hub connection failed or was closed under us
    }
    if (!link.ending) {
      // The hub dropped the connection: close the local side too, so a
      // handler still running sees its request signal abort.
      closeQuietly(link.local);
    }
  }

  // Local to hub: response bytes, until `Deno.serve` closes the connection.
  async #down(link: Link): Promise<void> {
    const buf = new Uint8Array(RELAY_BUFFER);
    try {
      while (true) {
        const n = await link.local.read(buf);
        if (n === null) break;
        await writeAll(link.hub, buf.subarray(0, n));
      }
      if (link.ending && !link.announced) {
        // Every response is out; this tells the hub the connection is not
        // taking work, and answers a request that crossed on the wire.
        await writeAll(link.hub, NOT_STARTED_RESPONSE).catch(() => {});
      }
    } catch {
      // either side failed
    }
    closeQuietly(link.hub);
  }

  // Takes no more requests on `link`: half-closing the local connection
  // makes `Deno.serve` answer what it has already read, then close.
  #end(link: Link): void {
    link.stopped = true;
    if (link.ending) return;
    link.ending = true;
    link.local.closeWrite().catch(() => closeQuietly(link.local));
  }

  async #serve(req: Request, info: Deno.ServeHandlerInfo): Promise<Response> {
    const link = this.#links.get((info.remoteAddr as Deno.NetAddr).port);
    if (link === undefined) {
      // Not one of our relays: the listener is private.
      const from = info.remoteAddr as Deno.NetAddr;
      this.#onError(
        new Error(
          `Refused a request from ${from.hostname}:${from.port} on the private listener`,
        ),
        "engine",
      );
      return new Response("403 Forbidden\n", {
        status: 403,
        headers: { "content-type": "text/plain; charset=utf-8" },
      });
    }
    const options = link.options;
    if (
      link.stopped || options.drain.aborted ||
      (options.acquire !== undefined && !options.acquire())
    ) {
      link.announced = true;
      this.#end(link);
      return notStarted();
    }
    link.busy = true;
    link.served++;
    const last = link.served >= (options.maxRequests ?? Infinity);
    const response = await callHandler(this.#handler, httpsAware(req), {
      remoteAddr: forwardedAddr(
        req.headers.get("x-forwarded-for"),
        options.peer,
      ),
      completed: info.completed,
    }, this.#onError);
    const close = last || options.drain.aborted ||
      (options.reuse !== undefined && !options.reuse()) ||
      asksToClose(response.headers);
    // Nothing after this request may start, even one already pipelined.
    if (close) link.stopped = true;
    const done = () => {
      link.busy = false;
      options.release?.();
      if (close || options.drain.aborted) this.#end(link);
    };
    info.completed.then(done, done);
    if (!close) return response;
    link.announced = true;
    return withClose(response);
  }
}

function closeQuietly(conn: Connection): void {
  try {
    conn.close();
  } catch {
    // already closed
  }
}

function notStarted(): Response {
  return new Response(null, {
    status: 408,
    headers: { "x-pothead-not-started": "1", connection: "close" },
  });
}

// `Connection: close` on a response, copying it if its headers are
// immutable (a `fetch` response, `Response.redirect`).
function withClose(res: Response): Response {
  try {
    res.headers.set("connection", "close");
    return res;
  } catch {
    const headers = new Headers(res.headers);
    headers.set("connection", "close");
    return new Response(res.body, {
      status: res.status,
      statusText: res.statusText,
      headers,
    });
  }
}

// `Deno.serve` builds an http: URL; the hub says when the consumer used TLS.
function httpsAware(req: Request): Request {
  if (
    req.headers.get("x-forwarded-proto") !== "https" ||
    !req.url.startsWith("http:")
  ) return req;
  return new Request("https:" + req.url.slice(5), req);
}
