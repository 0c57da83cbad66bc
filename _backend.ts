/**
 * Any HTTP/1.1 server as a worker: a fetch handler that forwards each request
 * to an existing server (a Python, Go or Java service) over a small pool of
 * keep-alive connections, so the service joins a hub unchanged.
 *
 * Each exchange runs on our own client for one connection
 * ({@linkcode WorkerSlot}) rather than `fetch`, which would decompress bodies
 * and rewrite headers: status, reason phrase, every header (each
 * `Set-Cookie`, `Content-Encoding`) and the body bytes arrive as the backend
 * sent them.
 *
 * @module
 */

import { DEFAULT_LIMITS, type HeadLimits, reasonPhrase } from "./_codec.ts";
import {
  endToEnd,
  fieldPairs,
  fieldValue,
  relayedResponse,
  splitUrl,
} from "./_headers.ts";
import type { Connection } from "./_io.ts";
import { type FetchHandler, rawTarget } from "./_serve_conn.ts";
import {
  errorText,
  type IncomingResponse,
  type OutgoingRequest,
  WorkerLinkError,
  WorkerSlot,
} from "./_slot.ts";

/** Options for {@linkcode backendHandler}. Every field is optional. */
export interface BackendOptions {
  /**
   * The `Host` header sent to the backend. By default the consumer's `Host`
   * (as the hub forwarded it) is kept, which is what virtual hosts and
   * absolute redirects on the backend expect; set this when the backend
   * serves only its own name.
   * @default {undefined}
   */
  host?: string;
  /**
   * Idle keep-alive connections kept open to the backend for the next
   * request; 0 closes each connection after one exchange.
   * @default {8}
   */
  maxIdle?: number;
  /**
   * Milliseconds an idle connection is kept before it is closed; 0 keeps it
   * until the backend closes it.
   * @default {30000}
   */
  idleTimeout?: number;
  /**
   * Milliseconds to open a connection to the backend, then 502.
   * @default {10000}
   */
  connectTimeout?: number;
  /**
   * Milliseconds the backend has to send the complete response head once it
   * has the request (covers the work itself), then 504; 0 for no limit.
   * @default {300000}
   */
  headTimeout?: number;
  /** Limits on response heads and chunk lines from the backend. */
  limits?: Partial<HeadLimits>;
  /**
   * Opens one connection to the backend. By default TCP (`http:` origins) or
   * TLS (`https:` origins) with no-delay on.
   */
  connect?: (
    hostname: string,
    port: number,
    signal: AbortSignal,
  ) => Promise<Connection>;
}

/** A fetch handler that forwards to a backend, with a way to release it. */
export interface BackendHandler extends FetchHandler {
  /** Closes the idle connections; requests after this still work, unpooled. */
  close(): void;
}

// Bodies up to this length are read whole and passed as bytes: responses,
// and requests of a declared length (sent in one write with their head).
const SMALL_BODY = 64 * 1024;

function checkOption(name: string, value: number): number {
  if (typeof value !== "number" || !(value >= 0)) {
    throw new RangeError(
      `Invalid option "${name}": expected a number >= 0, got ${value}`,
    );
  }
  return value;
}

/**
 * Makes a fetch handler that forwards every request to the HTTP/1.1 server
 * at `origin`, streaming the request and response bodies both ways.
 *
 * What is forwarded: the method, the path and query (after `origin`'s own
 * path, if it has one), every end-to-end header including the hub's
 * `X-Forwarded-*` and `X-Request-Id`, and the `Host` the consumer sent
 * (unless `options.host` is set). What comes back: the status, the reason
 * phrase, every end-to-end header as sent (each `Set-Cookie` separately,
 * `Content-Encoding` untouched) and the body bytes unchanged. Hop-by-hop
 * headers are dropped in both directions (RFC 9110 §7.6.1).
 *
 * Failures: a backend that cannot be reached or breaks before its response
 * head gives a 502 with a plain-text reason (504 when `headTimeout`
 * expires); a failure after the head errors the response body, so the
 * consumer never sees a truncated body as a success. The request's signal
 * aborting (the consumer or the hub went away) closes that backend
 * connection.
 *
 * @param origin the backend's URL, such as `http://127.0.0.1:8000`.
 * @param options pooling, timeouts and the Host header.
 * @returns a fetch handler for {@linkcode connectWorker}, with `close()` to
 *   release idle connections.
 * @throws {TypeError} when `origin` is not an `http:` or `https:` URL.
 * @throws {RangeError} naming an invalid option.
 *
 * @example Put a Python service behind a hub
 * ```ts ignore
 * import { backendHandler, connectWorker } from "@pothead/hub/worker";
 *
 * // python3 -m http.server 8000 runs next to this worker.
 * const backend = backendHandler("http://127.0.0.1:8000");
 * const worker = connectWorker(backend, { port: 4040, concurrency: 4 });
 * await worker.finished;
 * backend.close();
 * ```
 */
export function backendHandler(
  origin: string,
  options: BackendOptions = {},
): BackendHandler {
  let url: URL;
  try {
    url = new URL(origin);
  } catch {
    throw new TypeError(
      `Cannot use backend: expected a URL like http://127.0.0.1:8000, got "${origin}"`,
    );
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError(
      `Cannot use backend "${origin}": expected an http: or https: URL`,
    );
  }
  if (url.search !== "" || url.hash !== "" || url.username !== "") {
    throw new TypeError(
      `Cannot use backend "${origin}": expected no query, fragment or credentials`,
    );
  }
  const tls = url.protocol === "https:";
  // URL keeps the brackets of an IPv6 literal; Deno.connect wants it bare.
  const hostname = url.hostname.replace(/^\[(.*)\]$/, "$1");
  const port = url.port !== "" ? Number(url.port) : tls ? 443 : 80;
  const prefix = url.pathname === "/" ? "" : url.pathname.replace(/\/$/, "");
  const label = url.href;
  const maxIdle = checkOption("maxIdle", options.maxIdle ?? 8);
  const idleTimeout = checkOption("idleTimeout", options.idleTimeout ?? 30_000);
  const connectTimeout = checkOption(
    "connectTimeout",
    options.connectTimeout ?? 10_000,
  );
  const headTimeout = checkOption(
    "headTimeout",
    options.headTimeout ?? 300_000,
  );
  const limits = { ...DEFAULT_LIMITS, ...options.limits };
  const connect = options.connect ?? (tls ? tlsConnect : tcpConnect);
  const host = options.host;

  // Idle connections, the most recently used last (reused first: it is the
  // least likely to have been closed by the backend's own idle timeout).
  const idle: WorkerSlot[] = [];
  const timers = new Map<WorkerSlot, ReturnType<typeof setTimeout>>();
  // What to undo when the exchange on a slot ends.
  const cleanups = new Map<WorkerSlot, () => void>();

  const unpark = (slot: WorkerSlot) => {
    const at = idle.indexOf(slot);
    if (at >= 0) idle.splice(at, 1);
    const timer = timers.get(slot);
    if (timer !== undefined) clearTimeout(timer), timers.delete(slot);
  };
  const endExchange = (slot: WorkerSlot) => {
    const cleanup = cleanups.get(slot);
    if (cleanup !== undefined) cleanups.delete(slot), cleanup();
  };
  // Set once the backend has taken a streamed body without a 100 Continue,
  // unless it has answered one before (then its server speaks Expect and
  // only that handler did not read the body).
  let noContinue = false;
  let answersContinue = false;
  const slotOptions = {
    limits,
    headTimeout,
    ownHeadTimer: true,
    maxBodySize: Infinity,
    smallBody: SMALL_BODY,
    onIdle(slot: WorkerSlot) {
      endExchange(slot);
      if (idle.length >= maxIdle) {
        slot.close(new Error("Idle connection pool is full"));
        return;
      }
      // Watch the idle connection: the backend closing it removes it.
      slot.idle();
      if (slot.state !== "idle") return;
      idle.push(slot);
      if (idleTimeout > 0) {
        timers.set(
          slot,
          setTimeout(() => {
            timers.delete(slot);
            slot.close(new Error("Idle connection timed out"));
          }, idleTimeout),
        );
      }
    },
    onClose(slot: WorkerSlot) {
      unpark(slot);
      endExchange(slot);
    },
    // A backend that took a streamed body without answering 100 Continue
    // (Python's http.server at its default HTTP/1.0, say) gets the next ones
    // at once instead of after the slot's one-second wait.
    onContinueSeen(_slot: WorkerSlot, seen: boolean, refused?: boolean) {
      if (seen) answersContinue = true;
      if (refused) answersContinue = false;
      noContinue = !answersContinue;
    },
  };

  async function open(signal: AbortSignal): Promise<WorkerSlot> {
    // Deno.connect closes the connection whenever its signal aborts, so it
    // gets a controller that only the connect phase can abort.
    const controller = new AbortController();
    const timer = setTimeout(
      () =>
        controller.abort(
          new Error(`no connection within ${connectTimeout} ms`),
        ),
      connectTimeout,
    );
    const onAbort = () => controller.abort(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      const conn = await connect(hostname, port, controller.signal);
      return new WorkerSlot(conn, label, slotOptions);
    } catch (error) {
      throw controller.signal.aborted && !signal.aborted
        ? controller.signal.reason
        : error;
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
    }
  }

  const handler = async (request: Request): Promise<Response> => {
    const signal = request.signal;
    const out = outgoing(
      request,
      prefix,
      host ?? request.headers.get("host") ?? url.host,
      maxIdle === 0,
    );
    if (
      out.body instanceof ReadableStream && out.contentLength > 0 &&
      out.contentLength <= SMALL_BODY
    ) {
      // Small and of known length: sent with the head in one write, with no
      // Expect round trip, and replayable for the retry below.
      try {
        out.body = await new Response(out.body).bytes();
      } catch (error) {
        return failure(400, "cannot read the request body", error);
      }
    }
    if (out.body instanceof ReadableStream) out.expectContinue = !noContinue;
    // One retry, for a reused connection the backend closed just as the
    // request went out: nothing was received and the request is replayable.
    for (let attempt = 0;; attempt++) {
      let slot: WorkerSlot | undefined;
      while ((slot = idle.pop()) !== undefined && slot.state !== "idle") {
        unpark(slot);
      }
      const reused = slot !== undefined;
      if (slot !== undefined) unpark(slot);
      else {
        try {
          slot = await open(signal);
        } catch (error) {
          if (request.body !== null) request.body.cancel().catch(() => {});
          return failure(502, `cannot connect to ${label}`, error);
        }
        slot.idle();
      }
      const s = slot;
      const onAbort = () =>
        s.close(
          new WorkerLinkError("aborted", "Consumer went away", {
            cause: signal.reason,
          }),
        );
      // Held until the response body ends: the slot's own listener stops
      // once the request body is written.
      signal.addEventListener("abort", onAbort, { once: true });
      cleanups.set(s, () => signal.removeEventListener("abort", onAbort));
      if (signal.aborted) onAbort();
      let res: IncomingResponse;
      try {
        res = await s.send(out, signal);
      } catch (error) {
        endExchange(s);
        if (
          attempt === 0 && error instanceof WorkerLinkError &&
          error.retryable && !signal.aborted &&
          (reused || error.code === "not-started")
        ) {
          // Resent once: a reused connection the backend closed as the
          // request went out, or a 417 to our Expect (now left out).
          if (out.body instanceof ReadableStream) {
            out.expectContinue = !noContinue;
            out.lines = undefined;
          }
          continue;
        }
        if (out.body instanceof ReadableStream) {
          out.body.cancel().catch(() => {});
        }
        const timeout = error instanceof WorkerLinkError &&
          error.code === "timeout";
        return failure(timeout ? 504 : 502, `backend ${label} failed`, error);
      }
      return toResponse(out.method, res);
    }
  };
  return Object.assign(handler, {
    close() {
      for (const slot of idle.splice(0)) {
        unpark(slot);
        slot.close(new Error("Backend handler closed"));
      }
    },
  });
}

function outgoing(
  request: Request,
  prefix: string,
  host: string,
  close: boolean,
): OutgoingRequest {
  // The target as the consumer sent it: a URL parser would resolve dot
  // segments and re-encode, which changes the resource (or a signature).
  const target = rawTarget(request) ?? splitUrl(request.url).path;
  // Expect is the slot's to send: it asks for 100 Continue itself before a
  // streamed body, and a body already read needs none.
  const all = fieldPairs(request.headers);
  const headers = endToEnd(all)
    .filter(([name]) => name !== "host" && name !== "expect");
  // Host goes first, as clients send it (RFC 9112 §3.2).
  const fields: [string, string][] = [["host", host], ...headers];
  if (close) fields.push(["connection", "close"]);
  let body: ReadableStream<Uint8Array> | null = request.body;
  let contentLength = -1;
  if (body !== null) {
    const declared = fieldValue(all, "content-length");
    if (declared !== null && /^[0-9]{1,15}$/.test(declared)) {
      contentLength = Number(declared);
    }
  }
  if (contentLength === 0 && body !== null) {
    body.cancel().catch(() => {});
    body = null;
  }
  return {
    method: request.method,
    target: prefix + target,
    headers: fields,
    body,
    contentLength,
  };
}

function toResponse(method: string, res: IncomingResponse): Response {
  try {
    return relayedResponse(res, method);
  } catch (error) {
    // A status `Response` cannot carry (outside 200..599), or a body on a
    // null-body status.
    return failure(502, "invalid response from backend", error);
  }
}

function failure(status: number, what: string, error: unknown): Response {
  return new Response(
    `${status} ${reasonPhrase(status)}: ${what}: ${errorText(error)}\n`,
    {
      status,
      headers: { "content-type": "text/plain; charset=utf-8" },
    },
  );
}

async function tcpConnect(
  hostname: string,
  port: number,
  signal: AbortSignal,
): Promise<Connection> {
  const conn = await Deno.connect({ hostname, port, signal });
  try {
    conn.setNoDelay(true);
  } catch {
    // not fatal
  }
  return conn;
}

function tlsConnect(
  hostname: string,
  port: number,
  signal: AbortSignal,
): Promise<Connection> {
  // Deno.connectTls takes no signal: abort by closing once it connects.
  const pending = Deno.connectTls({ hostname, port });
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    pending.then((conn) => {
      signal.removeEventListener("abort", onAbort);
      if (signal.aborted) conn.close();
      else resolve(conn);
    }, (error) => {
      signal.removeEventListener("abort", onAbort);
      reject(error);
    });
  });
}
