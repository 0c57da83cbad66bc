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

import {
  type BufferedReader,
  closeQuietly,
  type Connection,
  writeAll,
} from "./_io.ts";
import {
  asksToClose,
  CLIENT_HEADER,
  fieldPairs,
  QUEUE_TIME_HEADER,
  withEmptyFields,
} from "./_headers.ts";
import {
  holdWait,
  PARK_DISCARD,
  PARK_OPTION,
  RENEW_FIELD,
  renewTime,
  WAIT_FIELD,
} from "./_park.ts";
import { Latch } from "./_latch.ts";
import { PING_FIELD } from "./_ping.ts";
import {
  HOLD_FIELD,
  REVOKE_FIELD,
  REVOKE_PATH,
  REVOKED_RESPONSE,
} from "./_hold.ts";
import {
  callHandler,
  decodedByFetch,
  type FetchHandler,
  forwardedAddr,
  internalError,
  NOT_STARTED_RESPONSE,
  queuedMs,
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
  // Parked: the next request should be the hub's wait request.
  parked: boolean;
  // The hub may know parking (false once it answered a park with a request).
  parks: boolean;
  // Where the hub's requests start (see RequestFraming).
  requests: RequestFraming;
  // A request that asks for 100 Continue went to `Deno.serve`: the next
  // bytes #down reads are the first written for it, maybe the 100.
  expects: boolean;
  // Whether that request is taken: `Deno.serve` may send the 100 before
  // the handler runs, and #down holds it until then.
  verdict: PromiseWithResolvers<boolean> | null;
  // Aborts the signal of the request in progress (the hub dropped the link).
  abort: ((reason: Error) => void) | null;
  // The handler answered 101 (a WebSocket): the link carries it, bytes
  // unparsed, until it closes, and then calls this.
  tunnel: (() => void) | null;
  // The handler of a WebSocket handshake is running: if the hub drops the
  // link meanwhile, the local connection waits for its answer (a 101 on a
  // closed connection never ends: the handler's socket hangs, the permit
  // is never given back, and Deno.serve's shutdown waits for ever).
  upgrading: boolean;
  // A handler is running (set just before it is called, cleared when it
  // returns): no byte of its response can be on the wire yet.
  handling: boolean;
  // Holding ahead (_hold.ts): "seen" once the head of a held request has
  // gone to `Deno.serve`, "revoked" when a revoke followed it, until it
  // reaches #serve; "none" otherwise.
  held: "none" | "seen" | "revoked";
  // Resumes the held request waiting in #serve for the one before it to
  // give its permit back.
  resume: (() => void) | null;
  // Revoke requests gone to `Deno.serve` and not yet answered.
  revokes: number;
  // The hub closed the connection (or it failed): a held request must not
  // run.
  dropped: boolean;
  // The write to the hub #down has in progress, and the interim 150 one
  // going out (#down waits for it before writing on).
  writing: Promise<void> | null;
  interim: Promise<void> | null;
}

const CONTINUE = "HTTP/1.1 100 Continue\r\n\r\n";

const RELAY_BUFFER = 64 * 1024;

// How many ended links' local ports are remembered (see NativeEngine.#ended):
// far more than can end between Deno.serve reading a request and calling
// its handler.
const ENDED_KEPT = 1024;

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
  // Local ports of links that have ended, most recent last (at most
  // ENDED_KEPT): Deno.serve may still call the handler for a request it
  // read just before the hub dropped the link. Not an intruder's.
  #ended = new Set<number>();

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
      parked: false,
      parks: options.wait !== undefined,
      requests: null!, // below: it reports to the link
      expects: false,
      verdict: null,
      abort: null,
      tunnel: null,
      upgrading: false,
      handling: false,
      held: "none",
      resume: null,
      revokes: 0,
      dropped: false,
      writing: null,
      interim: null,
    };
    link.requests = new RequestFraming((mark) => this.#mark(link, mark));
    this.#links.set(key, link);
    const drain = options.drain;
    const onDrain = () => {
      if (!link.busy) this.#end(link);
      // A WebSocket has no end to wait for: its handler hears the drain on
      // its request's signal, and may close (say with 1001) when it likes.
      else if (link.tunnel !== null) {
        link.abort?.(new Error("Worker is draining"));
      }
    };
    drain.addEventListener("abort", onDrain, { once: true });
    try {
      if (reader !== undefined && reader.buffered > 0) {
        const early = reader.buf.slice(reader.start, reader.end);
        reader.consume(early.length);
        this.#follow(link, early);
        await writeAll(local, early);
      }
      if (drain.aborted) this.#end(link);
      const up = this.#up(link);
      await Promise.all([up, this.#down(link, up)]);
    } catch (error) {
      this.#onError(error, "connection");
    } finally {
      drain.removeEventListener("abort", onDrain);
      link.tunnel?.();
      this.#links.delete(key);
      this.#ended.delete(key);
      this.#ended.add(key);
      if (this.#ended.size > ENDED_KEPT) {
        this.#ended.delete(this.#ended.values().next().value!);
      }
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
    let first = true;
    let failure: unknown = null;
    try {
      while (true) {
        const n = await link.hub.read(buf);
        if (n === null || link.ending) break;
        if (first) {
          first = false;
          // Deno.serve would answer it 400 without a word.
          this.#answered(buf.subarray(0, n));
        }
        this.#follow(link, buf.subarray(0, n));
        await writeAll(link.local, buf.subarray(0, n));
      }
    } catch (error) {
      // the hub connection failed or was closed under us
      failure = error;
    }
    if (!link.ending) {
      link.dropped = true;
      link.resume?.();
      // The hub dropped the connection: close the local side too, and abort
      // the signal of a handler still running (Deno.serve does not always:
      // not while the request body is being read, nor, under
      // --unstable-no-legacy-abort, in the middle of a streamed response).
      // A handshake's answer ends #down (writing to the closed hub), and
      // the link with it.
      closeQuietly(link.upgrading ? link.hub : link.local);
      link.abort?.(
        failure === null
          ? new Error("Hub closed the connection")
          // Closed here: the worker's own close() (or drain) cut it.
          : failure instanceof Deno.errors.BadResource ||
              failure instanceof Deno.errors.Interrupted
          ? new Error("Worker closed the connection")
          : failure instanceof Error
          ? failure
          : new Error(String(failure)),
      );
    }
  }

  // Reports a hub that answers instead of sending a request: one that
  // requires a handshake refusing a worker that sent none (--plain).
  #answered(bytes: Uint8Array): void {
    if (!startsWith(bytes, "HTTP/")) return;
    let end = 0;
    const max = Math.min(bytes.length, 80);
    while (end < max && bytes[end] >= 0x20 && bytes[end] < 0x7f) end++;
    const line = String.fromCharCode(...bytes.subarray(0, end));
    this.#onError(
      new Error(
        `Hub answered ${
          JSON.stringify(line)
        } instead of sending a request (a hub with worker tokens refuses workers without a handshake)`,
      ),
      "connection",
    );
  }

  // Notes a request asking for 100 Continue in bytes about to go to
  // `Deno.serve`. The hub sends a request only once the previous response
  // has reached it, so what #down reads next is the start of its answer.
  #follow(link: Link, bytes: Uint8Array): void {
    if (link.tunnel !== null) return;
    if (link.requests.push(bytes)) {
      link.verdict = Promise.withResolvers();
      link.expects = true;
    }
  }

  // Local to hub: response bytes, until `Deno.serve` closes the connection.
  // A 100 Continue goes on only for a request the worker takes: the hub
  // would send the body of one it declines, and could not send it elsewhere.
  // It is looked for only where one can be: response bodies may hold the
  // same bytes.
  async #down(link: Link, up: Promise<void>): Promise<void> {
    // The hub gone: no verdict is coming (nor needed). A latch: `up` lives
    // as long as the link, and a race against it per upload would keep each
    // race (_latch.ts).
    const gone = new Latch();
    const open = () => gone.open();
    up.then(open, open);
    const buf = new Uint8Array(RELAY_BUFFER);
    try {
      while (true) {
        const n = await link.local.read(buf);
        if (n === null) break;
        let chunk = buf.subarray(0, n);
        if (link.expects) {
          link.expects = false;
          if (startsWith(chunk, CONTINUE)) {
            const taken = await gone.race(link.verdict!.promise);
            if (!taken) chunk = chunk.subarray(CONTINUE.length);
          }
        }
        if (chunk.length > 0) {
          // An interim 150 goes whole between two responses (#revoked).
          if (link.interim !== null) await link.interim;
          const writing = link.writing = writeAll(link.hub, chunk);
          await writing;
          link.writing = null;
        }
      }
      if (link.ending && (!link.announced || link.held !== "none")) {
        // Every response is out; this tells the hub the connection is not
        // taking work, and answers a request that crossed on the wire (or
        // one held behind a last response, which Deno.serve leaves unread).
        await writeAll(link.hub, NOT_STARTED_RESPONSE).catch(() => {});
      }
    } catch {
      // either side failed
    }
    closeQuietly(link.hub);
  }

  // The relay saw the head of a held request, or of a revoke, go by.
  #mark(link: Link, mark: "hold" | "revoke"): void {
    if (mark === "hold") {
      link.held = "seen";
      return;
    }
    link.revokes++;
    // Nothing held, or it has started: the revoke is just answered.
    if (link.held !== "seen") return;
    link.held = "revoked";
    // A handler running is that of the request before the held one (they
    // run in order): the hub hears at once, before its response, that the
    // held request will not run. Not before a 101 nor inside a tunnel.
    if (link.handling && !link.upgrading && link.tunnel === null) {
      this.#revoked(link);
    }
  }

  // Writes the interim 150 to the hub, after any write #down has in
  // progress (the tail of an earlier response: the one being handled has
  // written nothing yet).
  #revoked(link: Link): void {
    const before = link.writing ?? link.interim ?? Promise.resolve();
    const interim = before.then(() => writeAll(link.hub, REVOKED_RESPONSE))
      // A hub that is gone fails #down's next write too.
      .catch(() => {});
    link.interim = interim;
    interim.then(() => {
      if (link.interim === interim) link.interim = null;
    });
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
    const port = (info.remoteAddr as Deno.NetAddr).port;
    const link = this.#links.get(port);
    if (link === undefined && this.#ended.has(port)) {
      // The hub left after sending it: nobody would read the answer, so
      // the handler is not run.
      return notStarted();
    }
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
    if (link.revokes > 0 && req.headers.has(REVOKE_FIELD)) {
      // After the held request it came behind, answered or started.
      link.revokes--;
      return new Response(null, { status: 204 });
    }
    // Whether the 100 Continue Deno.serve sent for it may go on (#down).
    // (The verdict is this request's if it asked for one: #follow saw its
    // head before Deno.serve did.)
    const decide = (taken: boolean) => link.verdict?.resolve(taken);
    if (
      link.held !== "none" && req.headers.has(HOLD_FIELD) &&
      req.body === null && !req.headers.has("upgrade")
    ) {
      // Held (_hold.ts): Deno.serve calls this once the response before it
      // is out, but maybe before that request's permit is back.
      if (link.busy && !link.dropped) {
        await new Promise<void>((resolve) => link.resume = resolve);
        link.resume = null;
      }
      const revoked = link.held === "revoked";
      link.held = "none";
      // Nobody would read its answer.
      if (link.dropped) return notStarted();
      if (revoked && !link.stopped && !options.drain.aborted) {
        return takenBack();
      }
      // Sent before the hub read that the request before it parked the
      // link (taken back, it stays parked): that hub knows parking, and this
      // request is answered as one just arrived (declined with the park 408
      // if no permit is free).
      link.parked = false;
    }
    if (link.parked) {
      link.parked = false;
      if (req.headers.has(WAIT_FIELD)) return await this.#wait(link, req);
      link.parks = false;
      options.noPark?.();
    }
    if (link.stopped || options.drain.aborted) {
      decide(false);
      link.announced = true;
      this.#end(link);
      return notStarted();
    }
    // Alive (see _ping.ts): no handler, no permit.
    if (req.headers.has(PING_FIELD) && req.body === null) {
      options.heard?.();
      return new Response(null, { status: 204 });
    }
    if (
      options.acquire !== undefined &&
      !options.acquire(() => queuedMs(req.headers.get(QUEUE_TIME_HEADER)))
    ) {
      decide(false);
      if (link.parks && await skippable(req)) {
        link.parked = true;
        return parked();
      }
      link.announced = true;
      this.#end(link);
      return notStarted();
    }
    decide(true);
    link.busy = true;
    link.served++;
    const last = link.served >= (options.maxRequests ?? Infinity);
    // `Deno.upgradeWebSocket` takes only the request Deno.serve made.
    link.upgrading = req.headers.has("upgrade");
    const [request, abort] = abortable(asHandlerSees(req), link.upgrading);
    link.abort = abort;
    link.handling = true;
    const response = await callHandler(this.#handler, request, {
      remoteAddr: forwardedAddr(
        req.headers.get(CLIENT_HEADER),
        req.headers.get("x-forwarded-for"),
        options.peer,
      ),
      completed: info.completed,
    }, this.#onError);
    link.handling = false;
    link.upgrading = false;
    if (response.status === 101) {
      // A WebSocket: it holds the link, and the request its permit, until
      // it closes (`completed` resolves once the 101 is out). Begun as the
      // worker drains: it hears so once open.
      if (options.drain.aborted) {
        info.completed.then(() => abort(new Error("Worker is draining")));
      }
      link.stopped = true;
      link.tunnel = () => {
        link.tunnel = null;
        link.abort = null;
        link.busy = false;
        options.release?.();
      };
      return response;
    }
    const after = options.reuse?.() ?? true;
    // Deno.serve sends a 205 with no length and keeps the connection, which
    // the hub must read as a body that lasts until the close (RFC 9112
    // §6.3): closing after it ends that body at once.
    const close = last || options.drain.aborted || !after ||
      response.status === 205 || asksToClose(response.headers);
    // Nothing after this request may start, even one already pipelined.
    if (close) link.stopped = true;
    const park = !close && after === "park" && link.parks;
    const done = () => {
      if (link.abort === abort) link.abort = null;
      link.busy = false;
      options.release?.();
      if (close || options.drain.aborted) this.#end(link);
      link.resume?.();
    };
    info.completed.then(done, done);
    if (park) {
      link.parked = true;
      return withConnection(response, PARK_OPTION);
    }
    if (!close) return response;
    link.announced = true;
    return withConnection(response, "close");
  }

  // Holds the hub's wait request until the worker offers the link again
  // (204), or gives it back (the 408, and the link ends). The hub closing
  // the connection meanwhile aborts the request's signal. A hub that asks
  // for renewal gets the parking 204 in time if no permit came (_park.ts).
  async #wait(link: Link, req: Request): Promise<Response> {
    const signal = req.signal;
    const gone = new Promise<void>((resolve) => {
      if (signal.aborted) resolve();
      signal.addEventListener("abort", () => resolve(), { once: true });
    });
    const outcome = await holdWait(
      link.options.wait!,
      renewTime(req.headers.get(RENEW_FIELD)),
      gone,
    );
    if (outcome === "back" || link.stopped || link.options.drain.aborted) {
      link.announced = true;
      this.#end(link);
      return notStarted();
    }
    if (outcome === "renew") {
      link.parked = true;
      return new Response(null, {
        status: 204,
        headers: { connection: PARK_OPTION },
      });
    }
    return new Response(null, { status: 204 });
  }
}

// Reads and drops the body of a request being declined, so the link can
// stay: only a short body sent without waiting for 100 Continue (reading
// one that waits would make Deno.serve send the 100 and start the upload).
async function skippable(req: Request): Promise<boolean> {
  if (req.body === null) return true;
  const length = Number(req.headers.get("content-length") ?? NaN);
  if (!(length <= PARK_DISCARD) || req.headers.has("expect")) return false;
  try {
    await req.arrayBuffer();
    return true;
  } catch {
    return false;
  }
}

/**
 * Follows the framing of the requests the hub sends (a head, then a body by
 * Content-Length or chunked) without copying them, to tell when a request
 * that asks for 100 Continue has been sent whole up to its body.
 * `Deno.serve` answers one with the 100 unless it declares an empty body.
 * It also reports the heads of held requests and of revokes (_hold.ts) as
 * they end, however the bytes were split.
 */
export class RequestFraming {
  // "head": a head or the blank lines before one; "length" and "data": body
  // or chunk bytes (#left of them); "size": a chunk-size line, or the line
  // end after a chunk; "trailer": trailer lines; "lost": bytes that do not
  // parse (Deno.serve refuses them and closes).
  #state: "head" | "length" | "size" | "data" | "trailer" | "lost" = "head";
  #left = 0;
  // The start of a line that goes on in the next bytes.
  #line = "";
  // Whether the next byte starts a line, and whether the text of the line
  // in progress matters (most lines of a head are only looked through).
  #atStart = true;
  #keep = true;
  // The current head: lines so far, and what its fields say.
  #lines = 0;
  #length = 0;
  #chunked = false;
  #expect = false;
  // How many bytes of the line in progress matched #pattern: REVOKE_LINE
  // (the request line), HOLD_NAME or REVOKE_NAME (a field); -1 when it did
  // not or is not compared.
  #matched = -1;
  #pattern = REVOKE_LINE;
  // The current head is a held request's, or the revoke's (its line and its
  // field).
  #hold = false;
  #revokeLine = false;
  #revokeField = false;
  #onMark: (mark: "hold" | "revoke") => void;

  /** `onMark` hears of each held request's and revoke's head as it ends. */
  constructor(onMark: (mark: "hold" | "revoke") => void = () => {}) {
    this.#onMark = onMark;
  }

  /** Follows `bytes`; true if a head asking for 100 Continue ended in them. */
  push(bytes: Uint8Array): boolean {
    let asks = false;
    let i = 0;
    while (i < bytes.length && this.#state !== "lost") {
      if (this.#state === "length" || this.#state === "data") {
        const n = Math.min(this.#left, bytes.length - i);
        i += n;
        this.#left -= n;
        if (this.#left === 0) {
          this.#state = this.#state === "data" ? "size" : "head";
        }
        continue;
      }
      if (this.#atStart) {
        this.#atStart = false;
        const first = bytes[i];
        this.#keep = this.#state !== "head" || this.#matters(first);
        // The request line may be the revoke's, and a field that starts
        // with "x" one of ours: compared as they come, not read as text.
        this.#matched = !this.#keep && this.#state === "head" &&
            (this.#lines === 0 ? first === 0x47 : (first | 0x20) === 0x78) // G, x
          ? 0
          : -1;
        this.#pattern = this.#lines === 0 ? REVOKE_LINE : HOLD_NAME;
      }
      const lf = bytes.indexOf(LF, i);
      const end = lf < 0 ? bytes.length : lf;
      if (this.#matched >= 0) i = this.#match(bytes, i, end);
      if (this.#keep) {
        // Only a field's name and the start of its value matter here.
        const keep = Math.min(
          end,
          i + Math.max(0, MAX_LINE - this.#line.length),
        );
        this.#line += String.fromCharCode(...bytes.subarray(i, keep));
      }
      if (lf < 0) break;
      i = lf + 1;
      this.#atStart = true;
      if (!this.#keep) {
        // The request line, or a field that does not matter.
        if (this.#lines++ === 0 && this.#matched >= REVOKE_LINE.length - 1) {
          this.#revokeLine = true; // with or without its CR
        }
        continue;
      }
      const line = this.#line.endsWith("\r")
        ? this.#line.slice(0, -1)
        : this.#line;
      this.#line = "";
      if (this.#onLine(line)) asks = true;
    }
    return asks;
  }

  // Compares `bytes[i, end)` of the line in progress with the pattern it
  // may be, from where the earlier bytes left off; returns where the rest of
  // the line starts. A field found to be one of ours is read on as text
  // (its value).
  #match(bytes: Uint8Array, i: number, end: number): number {
    const line = this.#lines === 0;
    let pattern = this.#pattern;
    let m = this.#matched;
    for (; i < end && m < pattern.length; i++, m++) {
      // Field names are case-insensitive (a mismatch of |0x20 on CR or the
      // like only lets the comparison go on: the whole name must match).
      const b = line ? bytes[i] : bytes[i] | 0x20;
      if (b === pattern.charCodeAt(m)) continue;
      if (m === NAMES_DIFFER && b === REVOKE_NAME.charCodeAt(m)) {
        this.#pattern = pattern = REVOKE_NAME; // the same up to here
        continue;
      }
      this.#matched = -1;
      return end;
    }
    if (line) {
      this.#matched = i < end ? -1 : m; // more than the revoke's line
      return end;
    }
    this.#matched = m;
    if (m === pattern.length) {
      this.#matched = -1;
      this.#keep = true;
      this.#line = pattern;
    }
    return i;
  }

  // Whether a head line starting with `first` is read as text: a blank line,
  // and fields that may be Content-Length, Transfer-Encoding or Expect.
  #matters(first: number): boolean {
    if (first === CR || first === LF) return true;
    if (this.#lines === 0) return false; // the request line
    const lower = first | 0x20;
    return lower === 0x63 || lower === 0x74 || lower === 0x65; // c, t, e
  }

  #onLine(line: string): boolean {
    if (this.#state === "size") {
      if (line === "") return false; // the line end after a chunk's data
      const size = parseInt(line, 16);
      if (!(size >= 0)) this.#state = "lost";
      else if (size === 0) this.#state = "trailer";
      else {
        this.#left = size;
        this.#state = "data";
      }
      return false;
    }
    if (this.#state === "trailer") {
      if (line === "") this.#state = "head";
      return false;
    }
    if (line !== "") {
      // The request line, then fields.
      if (this.#lines++ === 0) return false;
      const colon = line.indexOf(":");
      const name = line.slice(0, Math.max(colon, 0)).toLowerCase();
      const value = line.slice(colon + 1).trim().toLowerCase();
      if (name === "content-length") {
        this.#length = Number(value);
        if (!Number.isSafeInteger(this.#length)) this.#state = "lost";
      } else if (name === "transfer-encoding") {
        this.#chunked = value.endsWith("chunked");
      } else if (name === "expect") this.#expect = value === "100-continue";
      else if (name === HOLD_FIELD) this.#hold = value === "1";
      else if (name === REVOKE_FIELD) this.#revokeField = value === "1";
      return false;
    }
    if (this.#lines === 0) return false; // a blank line before a request
    const bodiless = !this.#chunked && this.#length === 0;
    if (this.#hold && bodiless) this.#onMark("hold");
    if (this.#revokeLine && this.#revokeField && bodiless) {
      this.#onMark("revoke");
    }
    this.#hold = this.#revokeLine = this.#revokeField = false;
    const asks = this.#expect && (this.#chunked || this.#length > 0);
    this.#state = this.#chunked ? "size" : this.#length > 0 ? "length" : "head";
    this.#left = this.#length;
    this.#lines = 0;
    this.#length = 0;
    this.#chunked = false;
    this.#expect = false;
    return asks;
  }
}

const LF = 10;
const CR = 13;
const MAX_LINE = 256;
// What the lines of our own requests start with (see RequestFraming); the
// two names are the same up to where they differ.
const REVOKE_LINE = `GET ${REVOKE_PATH} HTTP/1.1\r`;
const HOLD_NAME = `${HOLD_FIELD}:`;
const REVOKE_NAME = `${REVOKE_FIELD}:`;
const NAMES_DIFFER = "x-pothead-".length;

function startsWith(chunk: Uint8Array, ascii: string): boolean {
  if (chunk.length < ascii.length) return false;
  for (let i = 0; i < ascii.length; i++) {
    if (chunk[i] !== ascii.charCodeAt(i)) return false;
  }
  return true;
}

function parked(): Response {
  return new Response(null, {
    status: 408,
    headers: { "x-pothead-not-started": "1", connection: PARK_OPTION },
  });
}

// A held request taken back before it started (_hold.ts): declined, and
// the link goes on.
function takenBack(): Response {
  return new Response(null, {
    status: 408,
    headers: { "x-pothead-not-started": "1", "content-length": "0" },
  });
}

function notStarted(): Response {
  return new Response(null, {
    status: 408,
    headers: { "x-pothead-not-started": "1", connection: "close" },
  });
}

// A `Connection` field on a response, copying it if its headers are
// immutable (a `fetch` response, `Response.redirect`). The copy of a body
// that fetch decoded leaves out the fields Deno.serve would have.
function withConnection(res: Response, value: string): Response {
  try {
    res.headers.set("connection", value);
    return res;
  } catch {
    const headers = new Headers(res.headers);
    headers.set("connection", value);
    if (decodedByFetch(res)) {
      headers.delete("content-encoding");
      headers.delete("content-length");
    }
    return new Response(res.body, {
      status: res.status,
      statusText: res.statusText,
      headers,
    });
  }
}

const SIGNAL = Object.getOwnPropertyDescriptor(Request.prototype, "signal")!
  .get!;

// What `abortable` keeps for one request, on the request itself.
class Abortable {
  #req: Request;
  #own: boolean;
  #controller: AbortController | undefined;
  #combined: AbortSignal | undefined;
  #reason: Error | undefined;

  constructor(req: Request, own: boolean) {
    this.#req = req;
    this.#own = own;
  }

  signal(): AbortSignal {
    if (this.#combined === undefined) {
      this.#controller = new AbortController();
      if (this.#reason !== undefined) this.#controller.abort(this.#reason);
      this.#combined = this.#own
        ? this.#controller.signal
        : AbortSignal.any([SIGNAL.call(this.#req), this.#controller.signal]);
    }
    return this.#combined;
  }

  abort(reason: Error): void {
    if (this.#reason !== undefined) return;
    this.#reason = reason;
    this.#controller?.abort(reason);
  }
}

const ABORTABLE = Symbol("abortable");

// One getter for every request. A getter made per request (a closure) gives
// each request a map of its own in V8, kept in the old generation until a
// full GC and keeping the closure, and what it holds, alive through every
// scavenge meanwhile: at a few thousand requests a second the worker's
// scavenges took 5-15 ms instead of a tenth of that.
function signalOf(this: Request): AbortSignal {
  const state = (this as { [ABORTABLE]?: Abortable })[ABORTABLE];
  return state === undefined ? SIGNAL.call(this) : state.signal();
}

/**
 * `req` with a signal that also aborts through the function returned. The
 * combined signal is made only if the handler looks at it. With `own`, the
 * signal is only that one: for a WebSocket handshake, whose own signal
 * Deno.serve (without `--unstable-no-legacy-abort`) aborts once the 101 is
 * out, and whose end the link sees anyway.
 */
export function abortable(
  req: Request,
  own = false,
): [Request, (reason: Error) => void] {
  const state = new Abortable(req, own);
  Object.defineProperty(req, ABORTABLE, { value: state });
  Object.defineProperty(req, "signal", { configurable: true, get: signalOf });
  return [req, (reason) => state.abort(reason)];
}

// The request as the handler sees it, changed in place: Deno.serve's own
// request, not a copy. A copy would take over the body stream, and
// Deno.serve would then no longer discard a body the handler leaves unread
// (the link stalls until a timeout); and `new Request` refuses TRACE and
// TRACK. What changes:
// - the URL's scheme: `Deno.serve` builds an http: URL, and the hub says
//   when the consumer used TLS;
// - the `Expect` field: the hub asks for 100 Continue on every streamed
//   upload, and the runner (here Deno.serve) answers it: it is not the
//   handler's business, and a handler run by Deno.serve for the consumer
//   itself would not see it unless the consumer sent one.
// `clone()` gives a clone changed the same way; `new Request(req)` reads
// Deno's own fields, as they came.
function asHandlerSees(req: Request): Request {
  let changed = false;
  if (
    req.headers.get("x-forwarded-proto") === "https" &&
    req.url.startsWith("http:")
  ) {
    // Parsed, as `new Request` would: the host lower-cased.
    const url = new URL("https:" + req.url.slice(5)).href;
    Object.defineProperty(req, "url", { configurable: true, value: url });
    changed = true;
  }
  if (req.headers.has("expect")) {
    // As pairs: a `Headers` gives "one, " (from "one" and "") whole, which
    // would lose its space.
    const headers = new Headers(
      withEmptyFields(fieldPairs(req.headers))
        .filter(([name]) => name !== "expect"),
    );
    Object.defineProperty(req, "headers", {
      configurable: true,
      value: headers,
    });
    changed = true;
  }
  if (changed) {
    Object.defineProperty(req, "clone", {
      configurable: true,
      value: () => asHandlerSees(CLONE.call(req)),
    });
  }
  return req;
}

const CLONE = Request.prototype.clone;
