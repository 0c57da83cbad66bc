/**
 * The worker's end of one connection: an HTTP/1.1 server on a connection the
 * worker dialed. Requests are read one at a time, handed to a fetch handler
 * as `Request`s, and the handler's `Response` is written back.
 *
 * @module
 */

import {
  checkRequestTarget,
  encodeChunk,
  encodeHead,
  type Framing,
  type FramingFields,
  framingFields,
  type HeadLimits,
  keepAlive,
  parseRequestHead,
  reasonPhrase,
  requestFraming,
  type RequestHead,
} from "./_codec.ts";
import { bodyStream, writeBody, type WriteFraming } from "./_body.ts";
import { BufferedReader, type Connection, writeAll } from "./_io.ts";
import {
  asksToClose,
  CLIENT_HEADER,
  endToEnd,
  fieldPairs,
  fieldValue,
  lastForwardedFor,
  QUEUE_TIME_HEADER,
} from "./_headers.ts";
import {
  holdWait,
  PARK_DISCARD,
  PARK_OPTION,
  PARKED_RESPONSE,
  READY_RESPONSE,
  RENEW_FIELD,
  renewTime,
  STILL_PARKED_RESPONSE,
  WAIT_FIELD,
} from "./_park.ts";
import { PING_FIELD, PONG_RESPONSE } from "./_ping.ts";

/**
 * What a handler gets next to the request; the same shape as
 * `Deno.ServeHandlerInfo`, so `deno serve` handlers run unchanged.
 */
export interface WorkerHandlerInfo {
  /**
   * The consumer's address as the hub reported it (`X-Pothead-Client`, else
   * the last `X-Forwarded-For` entry), with port 0.
   */
  remoteAddr: Deno.NetAddr;
  /** Resolves when the response has been written (or failed). */
  completed: Promise<void>;
}

/** A fetch handler: the contract of `Deno.serve` and `deno serve`. */
export type FetchHandler = (
  request: Request,
  info: WorkerHandlerInfo,
) => Response | Promise<Response>;

/** Options for {@linkcode serveConnection}. */
export interface ServeConnectionOptions {
  handler: FetchHandler;
  limits: HeadLimits;
  /**
   * Aborting it drains the connection: a request in progress finishes and the
   * connection closes; an idle connection is handed back with the
   * "not started" 408 so a request crossing on the wire is not lost.
   */
  drain: AbortSignal;
  /** Receives handler errors and protocol errors. */
  onError(error: unknown, context: string): void;
  /** The hub's address, used as `remoteAddr` when no client address is known. */
  peer: Deno.NetAddr;
  /** Requests to serve before closing the connection. Default: no limit. */
  maxRequests?: number;
  /**
   * Called when a request has arrived, before it is started, with a way to
   * read how long it waited in the hub's queue (ms; NaN if not said).
   * Returning false declines it with the "not started" 408 (the hub sends
   * it to another worker): the connection is parked when `wait` is given
   * and the request left nothing unread that cannot be skipped, else
   * closed. Default: always true.
   */
  acquire?: (queuedMs: () => number) => boolean;
  /** Called after the response to an acquired request has been written. */
  release?: () => void;
  /**
   * Asked before each response is written: false sends it with
   * `Connection: close` and ends the connection; `"park"` parks the
   * connection after it (needs `wait`). Default: always true.
   */
  reuse?: () => boolean | "park";
  /**
   * Parking (see `_park.ts`): called when the hub's wait request arrives on
   * a parked connection. Resolve true to offer the connection again (the
   * wait request is answered), false to give it back (the "not started" 408
   * and close). `signal` aborts when the engine stops waiting (to renew the
   * parked connection; resolve false then); `renewMs` is the renewal time the
   * hub asked for (0: none), so the hub is heard from at least that often.
   * Without it, connections are never parked.
   */
  wait?: (signal?: AbortSignal, renewMs?: number) => Promise<boolean>;
  /**
   * Called when a hub answered a park with an ordinary request instead of
   * the wait request: it does not know parking. The request is then served
   * (or declined) as usual.
   */
  noPark?: () => void;
  /** Called when the hub's ping arrives (see `_ping.ts`). */
  heard?: () => void;
}

// The request target as it came, for the requests this engine made: their
// URL went through the URL parser (dot segments resolved, quotes encoded).
const RAW_TARGETS = new WeakMap<Request, string>();

/**
 * The origin-form target a request arrived with (path and query, as sent),
 * for a request the inline engine made; undefined for any other.
 */
export function rawTarget(request: Request): string | undefined {
  return RAW_TARGETS.get(request);
}

/** The response our runner sends to give back a connection it will not use. */
export const NOT_STARTED_RESPONSE: Uint8Array = new TextEncoder().encode(
  "HTTP/1.1 408 Request Timeout\r\nx-pothead-not-started: 1\r\n" +
    "connection: close\r\ncontent-length: 0\r\n\r\n",
);

const NO_REQUEST_BODY = new Set(["GET", "HEAD"]);
const FORBIDDEN_METHODS = new Set(["CONNECT", "TRACE", "TRACK"]);
// Unread request body the runner reads and discards to keep a connection.
const MAX_DISCARD = 1024 * 1024;

/**
 * Serves requests on `conn` until the hub closes it, a request asks to
 * close, an error makes the stream unusable, or `drain` aborts. Closes `conn`
 * before returning. Resolves with the number of requests served.
 */
export async function serveConnection(
  conn: Connection,
  options: ServeConnectionOptions,
  reader: BufferedReader = new BufferedReader(conn),
): Promise<number> {
  let served = 0;
  // One drain listener per connection, not one per request. It wakes the
  // read that waits for the next request; each wait installs its own
  // waker. (Racing every read against one pending "drained" promise would
  // leave a reaction on that promise per request for the connection's life.)
  let wake: (() => void) | null = null;
  const drain = options.drain;
  const onAbort = () => wake?.();
  if (!drain.aborted) drain.addEventListener("abort", onAbort, { once: true });
  const untilDrain = (filled: Promise<boolean>) =>
    new Promise<boolean | "drain">((resolve, reject) => {
      wake = () => resolve("drain");
      filled.then(resolve, reject);
    });
  // Parked: the next request should be the hub's wait request.
  let parked = false;
  let parks = options.wait !== undefined;
  try {
    while (true) {
      const head = await nextHead(conn, reader, options, untilDrain);
      if (head === null) break;
      if (parked) {
        parked = false;
        if (fieldValue(head.headers, WAIT_FIELD) !== null) {
          const outcome = await waitForPermit(
            conn,
            reader,
            options,
            renewTime(fieldValue(head.headers, RENEW_FIELD)),
          );
          if (outcome === "back") break;
          parked = outcome === "renew";
          continue;
        }
        parks = false;
        options.noPark?.();
      }
      // A ping has no body (one with a body is not the hub's ping: reading
      // on after the head would take its body for the next request).
      if (fieldValue(head.headers, PING_FIELD) !== null && bodiless(head)) {
        // Alive: no handler, no permit. A draining worker gives the
        // connection back instead.
        if (options.drain.aborted) {
          await writeAll(conn, NOT_STARTED_RESPONSE).catch(() => {});
          break;
        }
        options.heard?.();
        await writeAll(conn, PONG_RESPONSE);
        continue;
      }
      if (options.drain.aborted) {
        // Drained while this request crossed on the wire (or came with the
        // handshake's 101): it goes to another worker.
        await writeAll(conn, NOT_STARTED_RESPONSE).catch(() => {});
        break;
      }
      // Read here, before hubLeft needs the framing. Deno.serve answers a
      // malformed request with no handler and so no permit.
      let fields;
      let framing;
      let hostField;
      try {
        fields = framingFields(head.headers);
        framing = requestFraming(fields);
        hostField = checkRequestTarget(head);
      } catch (error) {
        options.onError(error, "request framing");
        await writeAll(conn, simpleResponse(400, true)).catch(() => {});
        break;
      }
      if (await hubLeft(reader, framing)) {
        // The hub dropped the connection right after sending this request
        // (its consumer left, or it timed the worker out): nobody would read
        // the answer, so the handler is not run, as with the serve engine.
        await writeAll(conn, NOT_STARTED_RESPONSE).catch(() => {});
        break;
      }
      if (
        options.acquire !== undefined &&
        !options.acquire(() =>
          queuedMs(fieldValue(head.headers, QUEUE_TIME_HEADER))
        )
      ) {
        if (parks && await skipBody(reader, head, options)) {
          await writeAll(conn, PARKED_RESPONSE);
          parked = true;
          continue;
        }
        await writeAll(conn, NOT_STARTED_RESPONSE).catch(() => {});
        break;
      }
      served++;
      const after = options.reuse?.() ?? true;
      const last = served >= (options.maxRequests ?? Infinity) || !after;
      const park = !last && after === "park" && parks;
      let outcome;
      let held = true;
      const release = () => {
        if (held) options.release?.();
        held = false;
      };
      try {
        outcome = await serveOne(
          conn,
          reader,
          head,
          { fields, framing, hostField },
          options,
          last,
          park,
          release,
        );
      } finally {
        release();
      }
      if (outcome === "closed") break;
      if (outcome === "end" || options.drain.aborted || last) {
        // The response went out keep-alive, so the hub may already be
        // sending its next request: the "not started" 408 answers it.
        await writeAll(conn, NOT_STARTED_RESPONSE).catch(() => {});
        break;
      }
      parked = park;
    }
  } catch (error) {
    // A connection that failed under it (the hub gone, or the worker's own
    // close) is no error to report (the serve engine's relay is silent
    // about it too).
    if (!connectionGone(error)) {
      options.onError(error, "connection");
    }
  } finally {
    drain.removeEventListener("abort", onAbort);
    try {
      conn.close();
    } catch {
      // already closed
    }
  }
  return served;
}

// Whether a request head announces no body (a malformed framing counts as
// a body: such a request is not a ping).
function bodiless(head: RequestHead): boolean {
  try {
    return requestFraming(framingFields(head.headers)).kind === "none";
  } catch {
    return false;
  }
}

// Microtask turns within which a read settles through BufferedReader.fill
// when its bytes or end are already there (Deno polls a TCP read as it
// starts it): 3 were seen; the rest is margin.
const SOON_TURNS = 8;

// Whether the hub's end of the stream (or a reset) is already there behind
// a request that is here whole: the engine reads for the next request once
// this one's body is in (the watch in serveOne), so that read is started
// now and given a few microtask turns, no timer and no extra syscall.
// Requests whose body is still coming are not checked: reading ahead would
// buffer the body.
async function hubLeft(
  reader: BufferedReader,
  framing: Framing,
): Promise<boolean> {
  if (
    framing.kind === "chunked" || framing.kind === "close" ||
    (framing.kind === "length" && reader.buffered < framing.length)
  ) return false;
  let left: boolean | undefined;
  reader.fill().then((more) => left = !more, () => left = true);
  for (let i = 0; i < SOON_TURNS && left === undefined; i++) await null;
  return left === true;
}

/** The hub's queue time field as a number of ms, or NaN. */
export function queuedMs(value: string | null): number {
  return value === null ? NaN : Number(value);
}

// Holds the hub's wait request until the worker offers the connection again
// (answered with the 204), gives it back (the 408, then close), or
// `renewMs` passes first (the parking 204: still parked). The hub sends
// nothing meanwhile: bytes or its close end the connection.
async function waitForPermit(
  conn: Connection,
  reader: BufferedReader,
  options: ServeConnectionOptions,
  renewMs: number,
): Promise<"offer" | "renew" | "back"> {
  const hub = reader.fill().then(() => {}, () => {});
  const outcome = await holdWait(options.wait!, renewMs, hub);
  if (outcome === "back" || reader.buffered > 0 || reader.eof) {
    await writeAll(conn, NOT_STARTED_RESPONSE).catch(() => {});
    return "back";
  }
  await writeAll(
    conn,
    outcome === "renew" ? STILL_PARKED_RESPONSE : READY_RESPONSE,
  );
  return outcome;
}

// Reads and drops the body of a request being declined, so the connection
// can stay: only a short body the hub sent without waiting for 100 Continue
// (for one that waits, the hub closes the connection anyway).
async function skipBody(
  reader: BufferedReader,
  head: RequestHead,
  options: ServeConnectionOptions,
): Promise<boolean> {
  let framing;
  try {
    framing = requestFraming(framingFields(head.headers));
  } catch {
    return false;
  }
  if (framing.kind === "none") return true;
  if (
    framing.kind !== "length" || framing.length > PARK_DISCARD ||
    expectsContinue(head)
  ) return false;
  const body = bodyStream(reader, framing, {
    limits: options.limits,
    onDone() {},
  });
  return body === null || await discard(body, PARK_DISCARD);
}

async function nextHead(
  conn: Connection,
  reader: BufferedReader,
  options: ServeConnectionOptions,
  untilDrain: (filled: Promise<boolean>) => Promise<boolean | "drain">,
): Promise<RequestHead | null> {
  let scanned = 0; // relative to reader.start: fill() may compact the buffer
  while (true) {
    let parsed;
    try {
      parsed = parseRequestHead(
        reader.buf,
        reader.start,
        reader.end,
        options.limits,
        reader.start + scanned,
      );
    } catch (error) {
      options.onError(error, "request head");
      const status = error instanceof RangeError ? 431 : 400;
      await writeAll(conn, simpleResponse(status, true)).catch(() => {});
      return null;
    }
    if (parsed !== null) {
      reader.consume(parsed.used);
      return parsed.value;
    }
    scanned = Math.max(0, reader.buffered - 3);
    if (options.drain.aborted) {
      await writeAll(conn, NOT_STARTED_RESPONSE).catch(() => {});
      return null;
    }
    const filled = reader.fill();
    const got = await untilDrain(filled);
    if (got === "drain") {
      filled.catch(() => {}); // rejects when conn closes below
      await writeAll(conn, NOT_STARTED_RESPONSE).catch(() => {});
      return null;
    }
    if (!got) return null; // the hub closed the connection
  }
}

function simpleResponse(status: number, close: boolean): Uint8Array {
  const text = `${status} ${reasonPhrase(status)}\n`;
  const { buf, length } = encodeHead(
    `HTTP/1.1 ${status} ${reasonPhrase(status)}`,
    [
      ["content-type", "text/plain; charset=utf-8"],
      ["content-length", String(text.length)],
      ...(close ? [["connection", "close"] as [string, string]] : []),
    ],
    text.length,
  );
  for (let i = 0; i < text.length; i++) buf[length + i] = text.charCodeAt(i);
  return buf;
}

function clientAddr(head: RequestHead, peer: Deno.NetAddr): Deno.NetAddr {
  let forwardedFor: string | null = null;
  let client: string | null = null;
  for (const [name, v] of head.headers) {
    if (name === "x-forwarded-for") forwardedFor = v;
    else if (name === CLIENT_HEADER) client = v;
  }
  return forwardedAddr(client, forwardedFor, peer);
}

/**
 * The consumer's address for a handler's `info.remoteAddr`: the hub's
 * `X-Pothead-Client` (the consumer behind proxies it trusts), else the last
 * entry of the `X-Forwarded-For` value the hub appended to (its peer), else
 * `peer` (no hub: a plain client).
 */
export function forwardedAddr(
  client: string | null,
  forwardedFor: string | null,
  peer: Deno.NetAddr,
): Deno.NetAddr {
  const address = client ?? lastForwardedFor(forwardedFor);
  return address === null
    ? peer
    : { transport: "tcp", hostname: address, port: 0 };
}

/**
 * Runs `handler` the way both engines do: a throw, a rejection, anything
 * but a `Response` or an error response (`Response.error()`) is reported to
 * `onError` and answered with a 500.
 */
export async function callHandler(
  handler: FetchHandler,
  request: Request,
  info: WorkerHandlerInfo,
  onError: (error: unknown, context: string) => void,
): Promise<Response> {
  try {
    const response = await handler(request, info);
    if (!(response instanceof Response)) {
      throw new TypeError(
        `Handler returned ${describe(response)}, expected a Response`,
      );
    }
    // Refused as Deno.serve refuses it (its status 0 is no HTTP status).
    if (response.type === "error") {
      throw new TypeError(
        "Handler returned an error response (Response.error())",
      );
    }
    // Refused before the head goes out, as Deno.serve refuses a used body.
    // Checked here, not left to Deno.serve: it finds a locked body only
    // after it has taken the response's fields, and its 500 then carried
    // them too (two content-type fields).
    const spent = spentBody(response);
    if (spent !== null) {
      throw new TypeError(
        `Cannot send the handler's response: its body is already ${spent}`,
      );
    }
    return response;
  } catch (error) {
    onError(error, "handler");
    return internalError();
  }
}

// Deno marks a response whose body fetch() decoded (gzip, br…) on its
// internal record; Deno.serve then leaves out the Content-Encoding and
// Content-Length, which describe the bytes on the wire, not the body. The
// record is found by its slot's name; without it, nothing is left out.
const INNER_RESPONSE = Object.getOwnPropertySymbols(new Response()).find(
  (s) => s.description === "response",
);

/**
 * Whether `res` is a `fetch` response whose body was decoded: its
 * Content-Encoding and Content-Length fields do not describe its body, and
 * `Deno.serve` does not send them.
 */
export function decodedByFetch(res: Response): boolean {
  const inner = innerRecord(res) as { bodyDecoded?: unknown } | null;
  return inner?.bodyDecoded === true;
}

// Deno's internal record of `res`, or null where it cannot be found.
function innerRecord(res: Response): object | null {
  if (INNER_RESPONSE === undefined) return null;
  const inner = (res as unknown as Record<symbol, unknown>)[INNER_RESPONSE];
  return typeof inner === "object" ? inner : null;
}

// Whether `res`'s body was read or its stream locked (a reader taken), or
// null. Deno's internal record is looked at first: a string or bytes body
// that nobody touched has no body record yet, and asking `bodyUsed` or
// `body` would build one (a stream, for `body`), which costs Deno.serve
// time on its fast path. Without the record, through the public getters.
function spentBody(res: Response): "read" | "locked" | null {
  const inner = innerRecord(res);
  if (inner === null) {
    if (res.bodyUsed) return "read";
    return res.body?.locked ? "locked" : null;
  }
  const body = (inner as { body?: { streamOrStatic?: unknown } | null }).body;
  if (body === null || body === undefined) return null;
  if (res.bodyUsed) return "read";
  const stream = body.streamOrStatic;
  return stream instanceof ReadableStream && stream.locked ? "locked" : null;
}

/** What either engine answers when the handler fails. */
export function internalError(): Response {
  return new Response("500 Internal Server Error\n", {
    status: 500,
    headers: { "content-type": "text/plain; charset=utf-8" },
  });
}

// Serves one request; resolves "reuse" when the connection can carry
// another, "closed" when it cannot and the hub knows (the response said
// `Connection: close`, or the connection failed), and "end" when the
// response went out keep-alive but the connection cannot go on (part of the
// request body is unread).
async function serveOne(
  conn: Connection,
  reader: BufferedReader,
  head: RequestHead,
  checked: { fields: FramingFields; framing: Framing; hostField: string },
  options: ServeConnectionOptions,
  last: boolean,
  park: boolean,
  release: () => void,
): Promise<"reuse" | "closed" | "end"> {
  const { fields, framing, hostField } = checked;
  if (framing.kind !== "none" && expectsContinue(head)) {
    // The request is accepted: ask the hub for its body (RFC 9110 §10.1.1).
    try {
      await writeAll(conn, CONTINUE);
    } catch (error) {
      if (!connectionGone(error)) options.onError(error, "response");
      return "closed";
    }
  }
  const controller = new AbortController();
  let bodyDone = framing.kind === "none";
  // Set once the response is out: the request is over, and the connection
  // ending later (an idle one handed back on drain) does not abort it.
  let answered = false;
  // Once the request body is read, a read for the next request doubles as a
  // watch: end of stream means the hub dropped the connection, so the
  // handler's signal aborts.
  const watch = () => {
    reader.fill().then((more) => {
      if (!more && !answered) {
        controller.abort(new Error("Hub closed the connection"));
      }
    }, (error) => {
      if (!answered) controller.abort(error);
    });
  };
  let body = bodyStream(reader, framing, {
    limits: options.limits,
    onDone(error, _bytes, cancelled) {
      // The handler cancelling its own body is no reason to abort (nor is
      // it with Deno.serve); the unread rest only ends the connection.
      if (cancelled) return;
      if (error !== undefined) {
        controller.abort(error);
        return;
      }
      bodyDone = true;
      if (!options.drain.aborted) watch();
    },
  });
  if (
    body !== null && framing.kind === "length" &&
    reader.buffered >= framing.length && !options.drain.aborted
  ) {
    // The whole body is here already: watch for the hub dropping the
    // connection now, whether or not the handler reads the body (a larger
    // body is watched by its own reads: reading ahead would buffer it).
    watch();
  }
  // `new Request` refuses these methods, Deno.serve hands them over: the
  // request is made as a GET and given its own method.
  const upper = head.method.toUpperCase();
  const forbidden = FORBIDDEN_METHODS.has(upper);
  // `new Request` takes "get" as GET too: no body either way.
  const bodiless = NO_REQUEST_BODY.has(upper);
  if (body !== null && (forbidden || bodiless)) {
    // `Request` cannot carry a GET or HEAD body; read and drop it.
    if (!(await discard(body))) return "closed";
    body = null;
  } else if (body === null && !forbidden && !bodiless) {
    // Deno.serve gives every request but a GET or HEAD a body stream, an
    // empty one when none was sent: handlers may rely on it.
    body = new ReadableStream({ start: (c) => c.close() });
  }

  let request: Request;
  try {
    // An empty Host (which the hub passes on) would make "http:///x",
    // whose host the URL parser takes from the path.
    const host = hostField || "localhost";
    let proto = "http";
    let expect = false;
    for (const [n, v] of head.headers) {
      if (n === "x-forwarded-proto" && v === "https") proto = v;
      else if (n === "expect") expect = true;
    }
    // A string, not a URL object: Request parses it once anyway.
    const target = head.target;
    const url = target.charCodeAt(0) === 47 // "/"
      ? `${proto}://${host}${target}`
      : target === "*"
      ? `${proto}://${host}/`
      : target;
    request = new Request(url, {
      method: forbidden ? "GET" : head.method,
      // The hub's Expect was answered here, not the handler's business
      // (see withoutExpect in _serve_native.ts).
      headers: expect
        ? head.headers.filter(([n]) => n !== "expect")
        : head.headers,
      body,
      signal: controller.signal,
    });
    if (forbidden) {
      Object.defineProperty(request, "method", { value: head.method });
    }
    if (target.charCodeAt(0) === 47) RAW_TARGETS.set(request, target);
  } catch (error) {
    options.onError(error, "request");
    await writeAll(conn, simpleResponse(400, true)).catch(() => {});
    return "closed";
  }
  const { promise: completed, resolve: complete } = Promise.withResolvers<
    void
  >();
  let response = await callHandler(options.handler, request, {
    remoteAddr: clientAddr(head, options.peer),
    completed,
  }, options.onError);
  if (response.status === 101) {
    // From Deno.upgradeWebSocket: its socket is tied to a connection
    // Deno.serve owns, which this one is not.
    options.onError(
      new Error(
        "Cannot switch to WebSocket: the worker's inline engine cannot give its connection to Deno.upgradeWebSocket (use the serve engine)",
      ),
      "handler",
    );
    response = internalError();
  }

  let reuse = keepAlive(head.minor, fields) &&
    !options.drain.aborted && !last && !asksToClose(response.headers);
  const connection = reuse ? park ? PARK_OPTION : null : "close";
  try {
    try {
      await writeResponse(
        conn,
        head.method,
        response,
        connection,
        controller.signal,
      );
    } catch (error) {
      if (!(error instanceof Unsent)) throw error;
      // The body failed before the head went out: a 500, as for a handler
      // that throws (dropping the connection unanswered would make the hub
      // run an idempotent request again elsewhere).
      options.onError(error.cause, "handler");
      await writeResponse(conn, head.method, internalError(), connection);
    }
  } catch (error) {
    // The hub dropped the connection (its consumer left mid-response: the
    // watch saw the end, or a write failed), or the worker's own close cut
    // it: no fault to report, and the serve engine's relay says nothing.
    const gone = connectionGone(error) ||
      (controller.signal.aborted && error === controller.signal.reason);
    controller.abort(error);
    if (!gone) options.onError(error, "response");
    complete();
    return "closed";
  }
  answered = true;
  complete();
  if (!reuse) return "closed";
  if (!bodyDone && body !== null) {
    // The handler did not read the whole upload: skip the rest if it is
    // short, else end the connection. Its permit goes back first, as with
    // Deno.serve: the rest may come at the consumer's pace.
    release();
    reuse = !body.locked && await discard(body, MAX_DISCARD);
  }
  return reuse && bodyDone ? "reuse" : "end";
}

// Whether `error` is a connection's failure: the peer gone, or the
// connection closed under the operation.
function connectionGone(error: unknown): boolean {
  return error instanceof Deno.errors.BrokenPipe ||
    error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.ConnectionAborted ||
    error instanceof Deno.errors.NotConnected ||
    error instanceof Deno.errors.BadResource ||
    error instanceof Deno.errors.Interrupted;
}

/** A response body that failed before any byte of the response was written. */
class Unsent extends Error {
  constructor(cause: unknown) {
    super("Cannot send the response: its body failed", { cause });
  }
}

// Largest first body chunk copied next to the head for one write.
const COALESCE_MAX = 64 * 1024;

const CONTINUE = new TextEncoder().encode("HTTP/1.1 100 Continue\r\n\r\n");

function expectsContinue(head: RequestHead): boolean {
  for (const [name, value] of head.headers) {
    if (name === "expect" && /^\s*100-continue\s*$/i.test(value)) return true;
  }
  return false;
}

async function discard(
  body: ReadableStream<Uint8Array>,
  max = Infinity,
): Promise<boolean> {
  let total = 0;
  const r = body.getReader();
  try {
    while (true) {
      const { done, value } = await r.read();
      if (done) return true;
      total += value.length;
      if (total > max) {
        r.cancel().catch(() => {});
        return false;
      }
    }
  } catch {
    return false;
  }
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (typeof value === "object") {
    return `an object (${value.constructor?.name ?? "Object"})`;
  }
  return typeof value;
}

async function writeResponse(
  conn: Connection,
  method: string,
  res: Response,
  connection: string | null,
  signal?: AbortSignal,
): Promise<void> {
  const status = res.status;
  let all = fieldPairs(res.headers);
  if (decodedByFetch(res)) {
    all = all.filter(([n]) =>
      n !== "content-encoding" && n !== "content-length"
    );
  }
  const fields = endToEnd(all);
  if (connection !== null) fields.push(["connection", connection]);
  const start = `HTTP/1.1 ${status} ${res.statusText || reasonPhrase(status)}`;
  const noBody = method === "HEAD" || status === 204 || status === 304;
  const declared = fieldValue(all, "content-length");
  let length = declared !== null && /^[0-9]{1,15}$/.test(declared)
    ? Number(declared)
    : -1;
  if (noBody || res.body === null) {
    if (method === "HEAD" && length < 0 && status !== 204 && status !== 304) {
      // The length a GET would be sent with, as Deno.serve says it.
      length = await readyLength(res.body);
    } else if (res.body !== null) res.body.cancel().catch(() => {});
    if (noBody) {
      if (method === "HEAD" && length >= 0 && status !== 204) {
        fields.push(["content-length", String(length)]);
      }
    } else {
      fields.push(["content-length", "0"]);
    }
    const { buf, length: n } = encodeHead(start, fields);
    await writeAll(conn, buf.subarray(0, n));
    return;
  }
  const reader = res.body.getReader();
  try {
    // A body that is all there already (a string or bytes: one chunk, then
    // the end) goes with its own length in one write, as Deno.serve sends
    // it, whatever Content-Length the handler gave (one copied from another
    // response, whose body the handler rewrote, is stale).
    let first: Uint8Array | undefined;
    // The read after `first` (or the first read), still to be written.
    let next: Promise<ReadableStreamReadResult<Uint8Array>> | undefined;
    let whole = false;
    try {
      const soon = await readSoonData(reader);
      if ("pending" in soon) next = soon.pending;
      else if (soon.result.done) whole = true;
      else {
        first = soon.result.value;
        const after = await readSoonData(reader);
        if ("pending" in after) next = after.pending;
        else if (after.result.done) whole = true;
        else next = Promise.resolve(after.result);
      }
    } catch (error) {
      throw new Unsent(error);
    }
    if (whole) {
      const size = first?.length ?? 0;
      fields.push(["content-length", String(size)]);
      const { buf, length: n } = encodeHead(start, fields, size);
      if (first !== undefined) buf.set(first, n);
      await writeAll(conn, buf.subarray(0, n + size));
      return;
    }
    // A stream that goes quiet (an event stream between events) is given
    // up once the request's signal aborts: the hub dropped the connection
    // (its consumer left) or the worker closed. Its cancel then runs, as
    // Deno.serve cancels it, and the permit comes back.
    const rest = {
      read() {
        const read = next ?? reader.read().then(asBytes);
        next = undefined;
        return signal === undefined ? read : unlessAborted(read, signal);
      },
    };
    // Otherwise a stream: by the declared length, else chunked with each
    // chunk flushed at once (server-sent events). A first chunk that is
    // already there goes out in the same write as the head (a small
    // response is one segment, so the hub wakes once); with none there yet
    // (an event stream, a long poll) the head goes now, as Deno.serve sends
    // it, so the consumer sees the response.
    const framing: WriteFraming = length >= 0
      ? { kind: "length", length }
      : { kind: "chunked" };
    if (length >= 0) fields.push(["content-length", String(length)]);
    else fields.push(["transfer-encoding", "chunked"]);
    const coalesce = first === undefined
      ? undefined
      : length < 0
      ? encodeChunk(first)
      : first.length <= length && first.length <= COALESCE_MAX
      ? first
      : undefined;
    const extra = coalesce?.length ?? 0;
    const { buf, length: n } = encodeHead(start, fields, extra);
    if (coalesce !== undefined) buf.set(coalesce, n);
    await writeAll(conn, buf.subarray(0, n + extra));
    await writeBody(
      conn,
      rest,
      framing,
      coalesce === undefined ? first : undefined,
      coalesce === undefined || length < 0 ? 0 : first!.length,
    );
  } catch (error) {
    reader.cancel(error).catch(() => {});
    throw error;
  }
}

// `promise`, or its signal's reason once that aborts first.
function unlessAborted<T>(
  promise: Promise<T>,
  signal: AbortSignal,
): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() =>
      signal.removeEventListener("abort", onAbort)
    );
  });
}

/**
 * The length of a body that is all there already (none, or one chunk ready
 * at once: a string or bytes), else -1; the body is dropped.
 */
async function readyLength(
  body: ReadableStream<Uint8Array> | null,
): Promise<number> {
  if (body === null) return 0;
  const reader = body.getReader();
  try {
    const first = await readSoon(reader);
    if (!("result" in first)) return -1;
    if (first.result.done) return 0;
    const next = await readSoon(reader);
    return "result" in next && next.result.done
      ? first.result.value.length
      : -1;
  } catch {
    return -1;
  } finally {
    reader.cancel().catch(() => {});
  }
}

/**
 * `result`, if its chunk is a `Uint8Array`; anything else is refused, as
 * `Deno.serve` refuses it (a string written as it was went out as NUL
 * bytes).
 */
function asBytes(
  result: ReadableStreamReadResult<Uint8Array>,
): ReadableStreamReadResult<Uint8Array> {
  const value: unknown = result.value;
  if (result.done || value instanceof Uint8Array) return result;
  throw new TypeError(
    `Cannot send the response body: a chunk is ${
      describe(value)
    }, expected a Uint8Array`,
  );
}

/**
 * {@linkcode readSoon}, refusing a chunk that is not bytes
 * ({@linkcode asBytes}) and passing over empty chunks that are there:
 * written as the first chunk of a chunked body, one would end it.
 */
async function readSoonData(
  reader: ReadableStreamDefaultReader<Uint8Array>,
): ReturnType<typeof readSoon> {
  while (true) {
    const soon = await readSoon(reader);
    if ("pending" in soon) {
      const pending = soon.pending.then(asBytes);
      // Awaited only after the head is written: not an unhandled rejection.
      pending.catch(() => {});
      return { pending };
    }
    const result = asBytes(soon.result);
    if (result.done || result.value.length > 0) return { result };
  }
}

/**
 * Starts a read and gives its result if it settles within a few microtask
 * turns (a body that is already in memory), else the read still in flight.
 */
async function readSoon(
  reader: ReadableStreamDefaultReader<Uint8Array>,
): Promise<
  | { result: ReadableStreamReadResult<Uint8Array> }
  | { pending: Promise<ReadableStreamReadResult<Uint8Array>> }
> {
  let result: ReadableStreamReadResult<Uint8Array> | undefined;
  let failed = false;
  let error: unknown;
  // A stream errored with no reason still needs an error to report.
  const pending = reader.read().catch((e) => {
    throw e ?? new Error("body stream errored");
  });
  pending.then((r) => (result = r), (e) => {
    failed = true;
    error = e;
  });
  for (let i = 0; i < 3 && result === undefined && !failed; i++) await null;
  if (failed) throw error;
  return result !== undefined ? { result } : { pending };
}
