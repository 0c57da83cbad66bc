/**
 * The hub's end of one worker connection: a slot that carries one request at
 * a time. It writes the request, reads the response, and decides in one place
 * ({@linkcode WorkerSlot.send}'s `settle`) whether the connection may carry
 * another request.
 *
 * @module
 */

import {
  encodeLines,
  fieldOf,
  type Framing,
  framingFields,
  type HeaderList,
  type HeadLimits,
  headLines,
  keepAlive,
  listTokens,
  parseResponseHead,
  responseFraming,
  wireTarget,
} from "./_codec.ts";
import { bodyStream, readFixed, writeBody } from "./_body.ts";
import type { ReadAheadOptions } from "./_readahead.ts";
import { BufferedReader, type Connection, writeAll } from "./_io.ts";
import type { WorkerIdentity } from "./_handshake.ts";
import { PARK_OPTION, renewingWaitRequest, WAIT_REQUEST } from "./_park.ts";
import { PING_REQUEST } from "./_ping.ts";
import { REVOKE_REQUEST, REVOKED_FIELD } from "./_hold.ts";

/** Response header our worker runner puts on its "not started" 408. */
export const NOT_STARTED_HEADER = "x-pothead-not-started";

/** A request as the hub sends it down a worker connection. */
export interface OutgoingRequest {
  method: string;
  /** Origin-form target: path and query. */
  target: string;
  /** End-to-end fields; the slot adds the framing fields. */
  headers: [string, string][];
  /** Fields sent after `headers` (so callers add fields without a copy). */
  extraHeaders?: [string, string][];
  /** The body: bytes (replayable), a stream (sent once), or none. */
  body: Uint8Array | ReadableStream<Uint8Array> | null;
  /** Length of a stream body, or -1 when unknown (sent chunked). */
  contentLength: number;
  /**
   * For a stream body: ask for `100 Continue` and hold the body until it
   * comes (or for a second). False sends the body at once, without
   * `Expect`, for workers known not to answer it. Default true.
   */
  expectContinue?: boolean;
  /**
   * Asks the worker to switch to WebSocket (the caller put `Upgrade` and
   * `Connection` among the fields): a `101` answer then ends the exchange
   * with the connection handed over (see {@linkcode IncomingResponse.upgraded}).
   */
  upgrade?: boolean;
  /** Cache of {@linkcode requestLines}. */
  lines?: string;
  /**
   * Timeouts and body limits for this exchange, in place of the slot's own
   * (a pool's, when they differ from the hub's).
   */
  limits?: ExchangeLimits;
}

/**
 * The timeouts and body limits of one exchange: the slot's options, or a
 * request's own ({@linkcode OutgoingRequest.limits}).
 */
export type ExchangeLimits = Pick<
  SlotOptions,
  | "headTimeout"
  | "bodyIdleTimeout"
  | "uploadIdleTimeout"
  | "maxBodySize"
  | "maxUploadSize"
>;

/**
 * The part of a request head that is the same on every attempt: start
 * line, fields and framing fields (not `extraHeaders`, not the empty line),
 * as text. Cached on `req`, so the hub can build a queued request's head
 * before a slot frees and the freed slot only adds the queue time.
 */
export function requestLines(req: OutgoingRequest): string {
  return req.lines ??= headLines(
    `${req.method} ${wireTarget(req.target)} HTTP/1.1`,
    [...req.headers, ...framingOf(req)],
  );
}

// The framing fields the slot sets for `req`'s body.
function framingOf(req: OutgoingRequest): [string, string][] {
  const body = req.body;
  return body instanceof Uint8Array
    ? [["content-length", String(body.length)]]
    : body === null
    ? []
    : [
      ...(req.expectContinue === false
        ? []
        : [["expect", "100-continue"] as [string, string]]),
      req.contentLength >= 0
        ? ["content-length", String(req.contentLength)]
        : ["transfer-encoding", "chunked"],
    ];
}

/** A response as the slot read it from the worker. */
export interface IncomingResponse {
  status: number;
  reason: string;
  /** All fields as received; hop-by-hop ones are the caller's to drop. */
  headers: HeaderList;
  /** The body: bytes when small and length-framed, else a stream, or none. */
  body: Uint8Array | ReadableStream<Uint8Array> | null;
  /** Body length when known, else -1. */
  contentLength: number;
  /**
   * True for a `101` to an upgrade request: the connection now carries the
   * new protocol. The slot stays busy and does nothing more with it; its
   * `conn` and `reader` (bytes that followed the `101`) are the caller's,
   * who closes the slot when done.
   */
  upgraded?: boolean;
}

/** Why an exchange on a worker connection failed. */
export type LinkErrorCode =
  | "closed"
  | "protocol"
  | "timeout"
  | "ping-timeout"
  | "not-started"
  | "aborted"
  | "request-body"
  | "upload-timeout"
  | "upload-too-large"
  | "upload-failed"
  | "consumer-stalled";

/** An exchange on a worker connection failed; the connection is closed. */
export class WorkerLinkError extends Error {
  /** What failed. */
  readonly code: LinkErrorCode;
  /**
   * True when no byte of the request can have been processed by the worker
   * and the request may go to another worker.
   */
  readonly retryable: boolean;

  constructor(
    code: LinkErrorCode,
    message: string,
    options: { retryable?: boolean; cause?: unknown } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = "WorkerLinkError";
    this.code = code;
    this.retryable = options.retryable ?? false;
  }
}

/** Options for {@linkcode WorkerSlot}. */
export interface SlotOptions {
  limits: HeadLimits;
  /** Milliseconds for the whole response head to arrive; 0 for no limit. */
  headTimeout: number;
  /** Largest response body in bytes; `Infinity` for no limit. */
  maxBodySize: number;
  /** Bodies up to this length are read whole and handed over as bytes. */
  smallBody: number;
  /**
   * How far a larger response body is read ahead of its consumer (see
   * `bodyStream`); unset reads it at the consumer's pace.
   */
  readAhead?: ReadAheadOptions;
  /** Called when an exchange ended and the slot may carry another request. */
  onIdle(slot: WorkerSlot): void;
  /** Called once when the connection is closed, for whatever reason. */
  onClose(slot: WorkerSlot, reason: unknown): void;
  /**
   * Called when a connection that never carried a request and has no
   * identity sends bytes while idle (a late handshake). Without it, such
   * bytes close the connection.
   */
  onFirstBytes?: (slot: WorkerSlot) => void;
  /**
   * Called when the final answer to a streamed upload has arrived: whether
   * the worker sent `100 Continue` (false only when it took the body that
   * the slot sent after waiting, without ever answering 100).
   */
  onContinueSeen?: (slot: WorkerSlot, seen: boolean, refused?: boolean) => void;
  /**
   * Called when the worker parked the connection (see `_park.ts`): the slot
   * has sent the wait request and calls `onIdle` once the worker answers it.
   * Without it, the park option is ignored and a declining 408 closes the
   * connection.
   */
  onPark?: (slot: WorkerSlot) => void;
  /**
   * For workers that renew parked connections (their handshake says so):
   * ask for an answer every `every` ms, and close the connection when none
   * comes `timeout` ms after that.
   */
  parkRenew?: { every: number; timeout: number };
  /**
   * Milliseconds a response body may go without a byte from the worker
   * while the hub waits for one; 0 for no limit.
   */
  bodyIdleTimeout?: number;
  /**
   * Milliseconds a streamed request body may go without a byte from the
   * consumer; 0 for no limit.
   */
  uploadIdleTimeout?: number;
  /**
   * Largest streamed request body in bytes; the upload is cut, and the
   * connection closed, at the first byte over it.
   * @default {Infinity}
   */
  maxUploadSize?: number;
  /**
   * Arm a timer per request for `headTimeout`. The hub does not: it checks
   * deadlines in one periodic sweep ({@linkcode WorkerSlot.checkStalled}).
   */
  ownHeadTimer?: boolean;
  /**
   * Called when a held request (see {@linkcode WorkerSlot.hold}) becomes
   * the exchange in progress: the one before it ended and kept the
   * connection.
   */
  onTurn?: (slot: WorkerSlot) => void;
  /**
   * Called when the slot itself asks a held request back, because the
   * response before it is still coming {@linkcode HELD_STREAM_WAIT} ms
   * after its head.
   */
  onTakeBack?: (slot: WorkerSlot) => void;
}

// A request written behind the exchange in progress (holding ahead,
// `_hold.ts`), until it becomes the exchange in progress itself.
interface Held {
  req: OutgoingRequest;
  signal: AbortSignal | undefined;
  onEnd: OnEnd | undefined;
  // A revoke went out behind it, and when (performance.now()).
  revoked: boolean;
  revokedAt: number;
  // The worker said (interim 150) that it will not run it.
  givenBack: boolean;
  // Its promise is settled (given back, or its consumer left): its answer
  // is still read in its turn, and dropped.
  done: boolean;
  resolve: (res: IncomingResponse) => void;
  reject: (error: unknown) => void;
  onAbort: () => void;
}

type OnEnd = (
  status: number,
  bytes: number,
  error?: unknown,
  cancelled?: boolean,
) => void;

const MAX_INTERIM = 16;

/**
 * How long, in ms, the body of a response may still be coming after its
 * head before a request held behind it is asked back (an event stream, or
 * a download at a slow consumer's pace: its end cannot be foreseen), and
 * then how long after the revoke it is sent elsewhere. A worker starts a
 * held request only once the response before it is out; one still coming
 * this long after the revoke went out, read by the hub as it came, was
 * still going out when the revoke arrived (on a link whose round trip is
 * shorter), so the worker will not run the held request. The interim 150
 * cannot say so once a response has begun.
 */
export const HELD_STREAM_WAIT = 250;

// A pause in reading a response body at least this long (ms) is its reader
// holding it back, not the hub's own work between two reads.
const HELD_BACK_PAUSE = 20;

// Request heads up to this size (with a small body) are encoded into one
// buffer per slot; most are a few hundred bytes.
const HEAD_SCRATCH = 2048;
// How long a streamed body waits for 100 Continue before it is sent anyway
// (RFC 9110 §10.1.1 lets a client stop waiting).
const CONTINUE_WAIT = 1000;
// How long the rest of a request body may take to go out once the worker
// has answered in full.
const LINGER = 5000;
// Least time between wait requests on a connection whose worker renews
// unasked (see #park).
const PARK_RESEND_GAP = 1000;
/** The methods of requests that may be held (see {@linkcode WorkerSlot.hold}). */
export const HOLDABLE: ReadonlySet<string> = new Set([
  "GET",
  "HEAD",
  "OPTIONS",
]);

const IDEMPOTENT = new Set([
  "GET",
  "HEAD",
  "OPTIONS",
  "TRACE",
  "PUT",
  "DELETE",
]);

let nextId = 1;

/**
 * Where a slot is: waiting for a request, carrying one, parked by the worker
 * (no request until it answers the wait request), or closed.
 */
export type SlotState = "idle" | "busy" | "parked" | "closed";

/** One worker connection on the hub. */
export class WorkerSlot {
  /** A process-unique number, for logs. */
  readonly id: number = nextId++;
  /** Where the connection comes from, for logs. */
  readonly peer: string;
  #conn: Connection;
  #reader: BufferedReader;
  // Where request heads are encoded: allocating a typed array per request
  // costs more than encoding a head.
  #scratch: Uint8Array | undefined;

  /** The connection (for a handshake that comes late). */
  get conn(): Connection {
    return this.#conn;
  }

  /** Its reader, holding any bytes not yet consumed. */
  get reader(): BufferedReader {
    return this.#reader;
  }

  /** Takes the identity a late handshake declared. */
  adopt(identity: WorkerIdentity): void {
    this.identity = identity;
  }

  #options: SlotOptions;
  // Those of the exchange in progress (or the last one).
  #limits: ExchangeLimits;
  #state: SlotState = "busy";
  #closeReason: unknown = undefined;
  /** Requests carried so far. */
  served = 0;
  /** `performance.now()` when the slot last became idle and waiting. */
  idleSince = 0;
  /**
   * True once a handshake crossed this connection's first request (the hub
   * had taken it for a plain worker).
   */
  handshakeCrossed = false;
  /** The worker's declared identity (from the handshake), or null. */
  identity: WorkerIdentity | null;
  #inBody = false;
  // The reader's asks when the sweeper last saw them move during a response
  // body, and when (see checkStalled).
  #bodyAsks = -1;
  #bodyAsksSince = 0;
  #uploadSince = 0;
  // When the write of upload bytes to the worker in progress began (0: none).
  #takeSince = 0;
  #headDeadline = 0;
  // Holding ahead: the exchange in progress is a bodiless consumer request
  // or one whose bytes body is out (no streamed upload, no upgrade), so one
  // may go behind it; the
  // request held behind it; whether the answer to a revoke is still to be
  // read (after the held request's); and whether a response that parked
  // the connection came before the held request now in progress (it
  // parks it still if that one was taken back).
  #holdable = false;
  #held: Held | null = null;
  #revokeOwed = false;
  #parkBehind = false;

  /**
   * @param reader a reader already used on `conn` (for the handshake); one
   *   is made otherwise.
   */
  constructor(
    conn: Connection,
    peer: string,
    options: SlotOptions,
    reader?: BufferedReader,
    identity: WorkerIdentity | null = null,
  ) {
    this.#conn = conn;
    this.peer = peer;
    this.#options = options;
    this.#limits = options;
    this.#reader = reader ?? new BufferedReader(conn);
    this.identity = identity;
  }

  /**
   * Closes the connection if the response head is late, or a response body
   * or a streamed upload has been stalled longer than its idle timeout. Called periodically by the hub
   * for busy slots; returns whether it closed.
   */
  checkStalled(now: number): boolean {
    if (this.#state !== "busy") return false;
    if (this.#headDeadline > 0 && now >= this.#headDeadline) {
      this.close(
        new WorkerLinkError(
          "timeout",
          `Worker sent no complete response head within ${this.#limits.headTimeout} ms`,
        ),
      );
      return true;
    }
    const { headTimeout, bodyIdleTimeout = 0, uploadIdleTimeout = 0 } =
      this.#limits;
    // A worker that stops taking the upload (frozen, or a handler that
    // neither reads its body nor answers) has the head timeout to move.
    if (
      headTimeout > 0 && this.#takeSince > 0 &&
      now - this.#takeSince >= headTimeout
    ) {
      this.close(
        new WorkerLinkError(
          "timeout",
          `Worker took no request body byte for ${headTimeout} ms`,
        ),
      );
      return true;
    }
    const since = this.#reader.readSince;
    if (
      this.#inBody && bodyIdleTimeout > 0 && since > 0 &&
      now - since > bodyIdleTimeout
    ) {
      this.close(
        new WorkerLinkError(
          "timeout",
          `Worker sent no body byte for ${bodyIdleTimeout} ms`,
        ),
      );
      return true;
    }
    // No read in flight and none asked for: the body waits for its consumer
    // (directly, or through a full read-ahead), which holds this worker for
    // as long as it takes nothing. The same idle time, then it is cut.
    if (this.#inBody && bodyIdleTimeout > 0 && since === 0) {
      const asks = this.#reader.asks;
      if (asks !== this.#bodyAsks) {
        this.#bodyAsks = asks;
        this.#bodyAsksSince = now;
      } else if (now - this.#bodyAsksSince > bodyIdleTimeout) {
        this.close(
          new WorkerLinkError(
            "consumer-stalled",
            `Consumer took no response body byte for ${bodyIdleTimeout} ms`,
          ),
        );
        return true;
      }
    } else {
      this.#bodyAsks = -1;
    }
    if (
      uploadIdleTimeout > 0 && this.#uploadSince > 0 &&
      now - this.#uploadSince > uploadIdleTimeout
    ) {
      this.close(
        new WorkerLinkError(
          "upload-timeout",
          `Consumer sent no request body byte for ${uploadIdleTimeout} ms`,
        ),
      );
      return true;
    }
    return false;
  }

  /** `idle`, `busy`, `parked` or `closed`. */
  get state(): SlotState {
    return this.#state;
  }

  /**
   * Marks the slot idle and, with `watch`, watches the connection: the
   * worker closing it or sending anything while idle removes it at once.
   * Without `watch` the caller sends the next request right away, and that
   * exchange's own read sees whatever the worker does.
   */
  idle(watch = true): void {
    if (this.#state === "closed") return;
    if (this.#reader.buffered > 0) {
      // A worker that drains hands an idle connection back with the "not
      // started" 408, which may come in the same read as its last response.
      this.close(
        startsLikeHandBack(this.#reader)
          ? new WorkerLinkError("closed", "Worker gave the connection back")
          : new WorkerLinkError(
            "protocol",
            "Worker sent bytes after its response",
          ),
      );
      return;
    }
    this.#state = "idle";
    // Unwatched, the slot takes its next request at once: no clock read
    // on that hot path (idleSince matters to pings of waiting slots only).
    if (!watch) return;
    this.idleSince = performance.now();
    this.#reader.fill().then((more) => {
      if (this.#state !== "idle") return; // now busy: the bytes are its response
      const first = this.#options.onFirstBytes;
      if (more && this.served === 0 && this.identity === null && first) {
        first(this);
        return;
      }
      if (more && startsLikeResponse(this.#reader)) {
        this.close(
          new WorkerLinkError("closed", "Worker gave the connection back"),
        );
        return;
      }
      this.close(
        more
          ? new WorkerLinkError(
            "protocol",
            "Worker sent bytes on an idle connection",
          )
          : new WorkerLinkError("closed", "Worker closed an idle connection"),
      );
    }, (error) => {
      if (this.#state === "idle") this.close(error);
    });
  }

  /**
   * Whether a request may be held behind the exchange in progress (see
   * {@linkcode hold}): the worker takes held requests, and the slot is
   * busy with a consumer request without a body or whose bytes body is
   * out (not a streamed upload, not an upgrade), with nothing held behind
   * it nor a revoke's answer to read.
   */
  get canHold(): boolean {
    return this.#holdable && this.#held === null && !this.#revokeOwed &&
      this.#state === "busy" && this.identity?.hold === true;
  }

  /**
   * Holding ahead (`_hold.ts`): writes bodiless `req` now, behind the
   * exchange in progress, marked held (the caller puts `X-Pothead-Hold: 1`
   * among its extra fields). Once that exchange ends and keeps the
   * connection, `req` becomes the exchange in progress (`onTurn`), as if
   * {@linkcode send} had sent it then: its head timeout starts then. It
   * fails retryable, "not started", when taken back ({@linkcode takeBack});
   * as a request whose connection closed if the connection ends first (the
   * worker may have started it); and "aborted" at once if `signal` aborts
   * before its turn: it is then taken back, and its answer read and
   * dropped, without closing the connection.
   */
  hold(
    req: OutgoingRequest,
    signal?: AbortSignal,
    onEnd?: OnEnd,
  ): Promise<IncomingResponse> {
    if (!this.canHold || req.body !== null || req.upgrade === true) {
      return Promise.reject(
        new WorkerLinkError("not-started", "Cannot hold a request here", {
          retryable: true,
        }),
      );
    }
    const { promise, resolve, reject } = Promise.withResolvers<
      IncomingResponse
    >();
    const held: Held = {
      req,
      signal,
      onEnd,
      revoked: false,
      revokedAt: 0,
      givenBack: false,
      done: false,
      resolve,
      reject,
      onAbort: () => {
        if (held.done) return;
        held.done = true;
        reject(
          new WorkerLinkError("aborted", "Consumer went away", {
            cause: signal?.reason,
          }),
        );
        // The connection carries another consumer's request: not closed.
        if (!held.revoked) this.#revoke(held);
      },
    };
    this.#held = held;
    // Its own buffer: the slot's scratch one may still be the request's in
    // progress.
    const { buf } = encodeLines(requestLines(req), req.extraHeaders);
    this.#write(buf);
    if (signal?.aborted) held.onAbort();
    else signal?.addEventListener("abort", held.onAbort, { once: true });
    return promise;
  }

  /**
   * Asks the worker to give the held request back (the revoke request goes
   * behind it): it then fails retryable, "not started", and the
   * connection stays. Returns false when there is none to take back (or
   * it is being taken back already).
   */
  takeBack(): boolean {
    const held = this.#held;
    if (held === null || held.revoked || this.#state !== "busy") return false;
    this.#revoke(held);
    return true;
  }

  #revoke(held: Held): void {
    held.revoked = true;
    held.revokedAt = performance.now();
    this.#revokeOwed = true;
    this.#write(REVOKE_REQUEST);
  }

  // Writes behind the exchange in progress, in order: its own bodiless
  // request's head (#writeRequest), a held request, then its revoke.
  #writing: Promise<void> = Promise.resolve();
  #write(bytes: Uint8Array): void {
    this.#writing = this.#writing.then(() => writeAll(this.#conn, bytes))
      .catch((error) => {
        this.close(
          new WorkerLinkError("closed", `Cannot write: ${errorText(error)}`),
        );
      });
  }

  // The interim 150 (`_hold.ts`): the worker will not run the held request,
  // which fails now (retryable: the hub sends it elsewhere at once); its
  // 408 is still read in its turn.
  #givenBack(): void {
    const held = this.#held;
    if (held === null || !held.revoked || held.givenBack) {
      throw new WorkerLinkError(
        "protocol",
        "Invalid response from worker: it gave back a request it did not hold",
      );
    }
    held.givenBack = true;
    if (held.done) return;
    held.done = true;
    held.signal?.removeEventListener("abort", held.onAbort);
    held.reject(
      new WorkerLinkError("not-started", "Held request taken back", {
        retryable: true,
      }),
    );
  }

  // The response before `held` was still coming HELD_STREAM_WAIT ms after
  // the revoke went out behind it, so the worker will not run it: it fails
  // now, retryable, as after the interim 150 (which the worker cannot send
  // once that response has begun), and goes elsewhere. Its answer, the
  // "not started" 408, is read and dropped in its turn.
  #release(held: Held): void {
    held.done = true;
    held.signal?.removeEventListener("abort", held.onAbort);
    held.reject(
      new WorkerLinkError(
        "not-started",
        `Held request taken back: the response before it was still coming ${HELD_STREAM_WAIT} ms after the revoke`,
        { retryable: true },
      ),
    );
  }

  // The exchange in progress ended and kept the connection, with a request
  // held behind it or a revoke's answer to read: those are read in order,
  // then the slot parks (`parkAfter`) or is offered again.
  #next(parkAfter: boolean): void {
    const held = this.#held;
    if (held !== null) {
      this.#held = null;
      held.signal?.removeEventListener("abort", held.onAbort);
      this.#parkBehind = parkAfter;
      if (held.done) {
        // Given back or abandoned: its answer (a 408, or the response of one
        // that had started) is read and dropped.
        this.#run(held.req, undefined, undefined, held).then((res) => {
          if (res.body instanceof ReadableStream) {
            res.body.pipeTo(new WritableStream()).catch(() => {});
          }
        }, () => {});
        return;
      }
      const sent = this.#run(held.req, held.signal, held.onEnd, held);
      // After #run began: the slot is busy with it, and may hold another.
      this.#options.onTurn?.(this);
      sent.then(held.resolve, held.reject);
      return;
    }
    if (this.#revokeOwed) {
      this.#readRevoke(parkAfter);
      return;
    }
    if (parkAfter) this.#park();
    else this.#options.onIdle(this);
  }

  // Reads the revoke's answer, an empty 204 (after the held request's).
  async #readRevoke(parkAfter: boolean): Promise<void> {
    this.#revokeOwed = false;
    const timeout = this.#limits.headTimeout;
    this.#headDeadline = timeout > 0 ? performance.now() + timeout : 0;
    try {
      const head = await this.#readHead("GET", () => {});
      this.#headDeadline = 0;
      if (this.#state !== "busy") return;
      const fields = framingFields(head.headers);
      if (
        head.status !== 204 || !keepAlive(head.minor, fields) ||
        fields.chunked || fields.contentLength > 0
      ) {
        throw new WorkerLinkError(
          "protocol",
          `Invalid response from worker: ${head.status} to a revoke`,
        );
      }
      if (parkAfter) this.#park();
      else this.#options.onIdle(this);
    } catch (error) {
      this.close(error);
    }
  }

  /** Closes the connection; pending work on it fails with `reason`. */
  close(reason?: unknown): void {
    if (this.#state === "closed") return;
    this.#state = "closed";
    this.#closeReason = reason;
    this.#holdable = false;
    const held = this.#held;
    if (held !== null) {
      this.#held = null;
      held.signal?.removeEventListener("abort", held.onAbort);
      if (!held.done) {
        held.done = true;
        // The worker starts a held request only once the response before it
        // is out, which the hub may not have read whole: maybe started.
        held.reject(
          new WorkerLinkError(
            "closed",
            `Connection ended before the held request's turn: ${
              errorText(reason)
            }`,
            { retryable: IDEMPOTENT.has(held.req.method), cause: reason },
          ),
        );
      }
    }
    try {
      this.#conn.close();
    } catch {
      // already closed by the peer or runtime
    }
    this.#options.onClose(this, reason);
  }

  /**
   * Sends `req` and resolves with the response head and a body. The body
   * stream errors if the worker fails after the head. `signal` aborting (the
   * consumer left) closes the connection.
   *
   * @throws {WorkerLinkError} when no valid response head arrives.
   */
  send(
    req: OutgoingRequest,
    signal?: AbortSignal,
    onEnd?: OnEnd,
  ): Promise<IncomingResponse> {
    if (this.#state !== "idle") {
      return Promise.reject(
        new WorkerLinkError("closed", "Worker connection is not idle", {
          retryable: true,
        }),
      );
    }
    this.#state = "busy";
    return this.#run(req, signal, onEnd, null);
  }

  // The exchange of `req`: written here, or already written when it was
  // `held` behind the one before.
  async #run(
    req: OutgoingRequest,
    signal: AbortSignal | undefined,
    onEnd: OnEnd | undefined,
    held: Held | null,
  ): Promise<IncomingResponse> {
    this.served++;
    // A bodiless request (not an upgrade) may have one held behind it at
    // once: that one is written after its head (see #write).
    this.#holdable = req.body === null && req.upgrade !== true;
    const opts = this.#options;
    const limits = this.#limits = req.limits ?? opts;
    const streamed = req.body instanceof ReadableStream;
    // A streamed body is sent only once the worker asks for it (100
    // Continue) or after CONTINUE_WAIT; until then the request can still go
    // to another worker.
    let bodyStarted = false;
    let continued = false;
    let startBody: () => void = () => {};
    let continueTimer: ReturnType<typeof setTimeout> | undefined;
    const replayable = () => !streamed || !bodyStarted;

    let requestDone = !streamed;
    // The rest of a bytes body could not be written: the worker is gone.
    let writeFailed = false;
    let responseDone = false;
    let reusable = false;
    let parkAfter = false;
    const onAbort = () =>
      this.close(
        new WorkerLinkError("aborted", "Consumer went away", {
          cause: signal?.reason,
        }),
      );
    // The one place that decides whether the connection carries another
    // request: response read to its end, request written to its end, and
    // neither side asked to close.
    let headTimer: ReturnType<typeof setTimeout> | undefined;
    let linger: ReturnType<typeof setTimeout> | undefined;
    let heldTimer: ReturnType<typeof setTimeout> | undefined;
    const cleanup = () => {
      this.#holdable = false;
      this.#headDeadline = 0;
      clearTimeout(headTimer);
      clearTimeout(linger);
      clearTimeout(heldTimer);
      clearTimeout(continueTimer);
      signal?.removeEventListener("abort", onAbort);
    };
    const settle = (error?: unknown) => {
      if (error !== undefined) {
        cleanup();
        this.close(error);
        return;
      }
      if (
        responseDone && !requestDone && this.#state === "busy" &&
        linger === undefined
      ) {
        // The worker answered in full before taking the whole request body.
        // It may still read the rest; if it has not within LINGER, it never
        // will, and a pump blocked on it would hold this slot for ever.
        linger = setTimeout(() => {
          if (requestDone || this.#state !== "busy") return;
          cleanup();
          this.close(
            new WorkerLinkError(
              "closed",
              `Worker answered but had not taken the rest of the request body ${LINGER} ms later`,
            ),
          );
        }, LINGER);
        return;
      }
      // Only when both directions are done: a request body that finished
      // first must leave the head deadline and the consumer watch running.
      if (!responseDone || !requestDone || this.#state !== "busy") return;
      cleanup();
      if (!reusable) {
        this.close(new WorkerLinkError("closed", "Connection: close"));
      } else if (this.#held !== null || this.#revokeOwed) {
        this.#next(parkAfter);
      } else if (parkAfter) this.#park();
      else opts.onIdle(this);
    };
    if (signal?.aborted) {
      onAbort();
      throw this.#failure(false, false);
    }
    signal?.addEventListener("abort", onAbort, { once: true });
    // Checked by the hub's periodic sweep (checkStalled): no timer per request.
    // The head timeout is the worker's time to answer once it has the whole
    // request: a streamed upload starts it when its last byte went out
    // (a stalled upload is the upload idle timeout's business).
    let headSeen = false;
    const startHeadClock = () => {
      if (headSeen || limits.headTimeout <= 0 || this.#state !== "busy") {
        return;
      }
      this.#headDeadline = performance.now() + limits.headTimeout;
      if (opts.ownHeadTimer) {
        clearTimeout(headTimer);
        headTimer = setTimeout(
          () => this.checkStalled(performance.now()),
          limits.headTimeout,
        );
      }
    };
    this.#headDeadline = 0;
    if (!streamed) startHeadClock();

    let head;
    try {
      const start = held !== null
        ? null
        : await this.#writeRequest(req, (error) => {
          if (error === undefined) {
            requestDone = true;
            if (streamed) startHeadClock();
            settle();
          } else {
            settle(
              error instanceof WorkerLinkError ? error : new WorkerLinkError(
                "request-body",
                `Cannot forward request body: ${errorText(error)}`,
                { cause: error },
              ),
            );
          }
        });
      // A bytes body written whole: one may go behind it.
      if (start === null && req.body instanceof Uint8Array) {
        this.#holdable = this.#state === "busy" && req.upgrade !== true;
      }
      if (start instanceof Uint8Array) {
        requestDone = false;
        writeAll(this.#conn, start).then(() => {
          requestDone = true;
          // (settle below clears it if the exchange ends with this write.)
          this.#holdable = this.#state === "busy" && req.upgrade !== true &&
            !headSeen;
          settle();
        }, (error) => {
          if (headSeen || this.#state !== "busy") {
            settle(error);
            return;
          }
          // The worker stopped reading: it may have answered first (an
          // early 413) and closed. That answer is read, and the connection
          // goes after it; no answer fails the read as a close does.
          writeFailed = true;
          requestDone = true;
        });
      } else if (start !== null) {
        startBody = () => {
          if (bodyStarted || this.#state !== "busy") return;
          bodyStarted = true;
          clearTimeout(continueTimer);
          start();
        };
        if (req.expectContinue === false) startBody();
        else continueTimer = setTimeout(startBody, CONTINUE_WAIT);
      }
      head = await this.#readHead(req.method, () => {
        continued = true;
        startBody();
      }, req.upgrade === true);
    } catch (error) {
      const received = this.#reader.buffered > 0;
      settle(error);
      const failure = this.#failure(
        !received && replayable(),
        IDEMPOTENT.has(req.method),
        error,
      );
      if (failure.retryable && !replayable()) {
        throw new WorkerLinkError(failure.code, failure.message, {
          cause: failure,
        });
      }
      throw failure;
    }
    headSeen = true;
    this.#headDeadline = 0;
    clearTimeout(headTimer);
    // The answer has begun: its end is not foreseen (a body may stream for
    // as long as the worker likes), so nothing more is held behind it.
    this.#holdable = false;
    // A worker that took a body it never said 100 to, is one that does not
    // answer Expect: its next uploads need not wait for it.
    if (streamed && (continued || (bodyStarted && head.status < 400))) {
      opts.onContinueSeen?.(this, continued);
    }
    const bodyWithheld = streamed && !bodyStarted;
    if (bodyWithheld) {
      // A final answer before the worker asked for the body: the body is
      // not sent, and the connection cannot carry another request.
      clearTimeout(continueTimer);
      requestDone = true;
    }
    if (head.status === 417 && bodyWithheld) {
      // The worker refuses the Expect the slot added (RFC 9110 §10.1.1:
      // repeat the request without it). Nothing was processed.
      opts.onContinueSeen?.(this, false, true);
      const e = new WorkerLinkError(
        "not-started",
        "Worker refused Expect: 100-continue (417); resending without it",
        { retryable: true },
      );
      settle(e);
      throw e;
    }

    if (head.status === 101) {
      // Only an upgrade request gets here with one (#readHead).
      const to = listTokens(fieldOf(head.headers, "upgrade"))
        .map((t) => t.toLowerCase());
      if (!to.includes("websocket")) {
        const e = new WorkerLinkError(
          "protocol",
          `Invalid response from worker: 101 to ${
            JSON.stringify(to.join(", "))
          }, not websocket`,
        );
        settle(e);
        throw e;
      }
      // The connection is the caller's now: no deadline, no consumer watch.
      cleanup();
      return {
        status: 101,
        reason: head.reason,
        headers: head.headers,
        body: null,
        contentLength: 0,
        upgraded: true,
      };
    }
    let fields;
    let framing: Framing;
    try {
      fields = framingFields(head.headers);
      framing = responseFraming(fields, head.status, req.method);
    } catch (error) {
      const e = new WorkerLinkError("protocol", errorText(error), {
        cause: error,
      });
      settle(e);
      throw e;
    }
    if (head.status > 599) {
      const e = new WorkerLinkError(
        "protocol",
        `Invalid response from worker: status ${head.status} is out of range`,
      );
      settle(e);
      throw e;
    }
    const parks = opts.onPark !== undefined &&
      fields.connection.includes(PARK_OPTION);
    const notStarted = head.status === 408 &&
      hasField(head.headers, NOT_STARTED_HEADER);
    // Nothing of the exchange is left on the wire: the request went out
    // whole (no stream body) and the answer has no body.
    const empty = !streamed && keepAlive(head.minor, fields) &&
      (framing.kind === "none" ||
        (framing.kind === "length" && framing.length === 0));
    if (held?.givenBack && !notStarted) {
      const e = new WorkerLinkError(
        "protocol",
        `Worker answered ${head.status} to a held request it had given back`,
      );
      settle(e);
      throw e;
    }
    if (notStarted) {
      const e = new WorkerLinkError(
        "not-started",
        "Worker declined the request before starting it",
        { retryable: replayable() },
      );
      if (held?.revoked && empty && !parks) {
        // Taken back (_hold.ts): the connection goes on, parked still if
        // the response before it parked it. The hub hears of it first, so
        // the request is back at the queue's front before this connection,
        // idle again, takes the next one.
        const park = this.#parkBehind;
        cleanup();
        held.reject(e);
        this.#next(park);
      } else if (parks && empty) {
        cleanup();
        // A request held behind this one is answered as one just arrived.
        if (this.#held !== null || this.#revokeOwed) this.#next(true);
        else this.#park();
      } else {
        settle(e);
      }
      throw e;
    }
    reusable = keepAlive(head.minor, fields) &&
      framing.kind !== "close" && !bodyWithheld && !writeFailed;
    parkAfter = parks;
    const contentLength = framing.kind === "length"
      ? framing.length
      : framing.kind === "none"
      ? 0
      : -1;
    if (contentLength > limits.maxBodySize) {
      const e = new WorkerLinkError(
        "protocol",
        `Worker response body of ${contentLength} bytes is over the limit of ${limits.maxBodySize}`,
      );
      settle(e);
      throw e;
    }
    let body: Uint8Array | ReadableStream<Uint8Array> | null = null;
    if (framing.kind === "length" && framing.length <= opts.smallBody) {
      this.#inBody = true; // a stall here is a body stall too
      try {
        // Usually the whole body came with the head: no await for it.
        const reader = this.#reader;
        body = reader.buffered >= framing.length
          ? reader.take(framing.length)
          : await readFixed(reader, framing.length);
        this.#inBody = false;
      } catch (error) {
        this.#inBody = false;
        const e = this.#failure(false, false, error);
        settle(e);
        throw e;
      }
      responseDone = true;
      settle();
      onEnd?.(head.status, body.length);
    } else {
      this.#inBody = true;
      this.#bodyAsks = -1;
      // Whether the hub waits for the worker's next bytes of this body now,
      // and when it last began to after a pause of HELD_BACK_PAUSE or more
      // (its reader, a slow consumer, held it back).
      let waiting = false;
      let pausedSince = performance.now();
      let heldBackUntil = pausedSince;
      // Watched only with a request held behind this answer (none can be
      // held once it has begun): no clock reads per chunk otherwise.
      const watch = this.#held !== null && !this.#held.done;
      body = bodyStream(this.#reader, framing, {
        onWait: watch
          ? (now) => {
            const t = performance.now();
            if (now && t - pausedSince >= HELD_BACK_PAUSE) heldBackUntil = t;
            if (!now) pausedSince = t;
            waiting = now;
          }
          : undefined,
        limits: opts.limits,
        maxBodySize: limits.maxBodySize,
        readAhead: opts.readAhead,
        onDone: (error, bytes, cancelled) => {
          this.#inBody = false;
          if (error === undefined) {
            responseDone = true;
            settle();
          } else {
            settle(this.#closeReason ?? error);
          }
          onEnd?.(
            head.status,
            bytes,
            error === undefined ? undefined : this.#closeReason ?? error,
            cancelled,
          );
        },
      });
      // A request held behind a body that keeps coming is asked back, then
      // sent elsewhere (HELD_STREAM_WAIT); one that ends first clears this.
      // Sent elsewhere only if the hub has read the body as it came since
      // the revoke went out: then bytes the worker sent before it had the
      // revoke, its response's end among them, would have come. (While a
      // slow consumer holds the body back, the worker may have sent all of
      // it and started the held request: that one waits.)
      const checkHeld = () => {
        heldTimer = undefined;
        const held = this.#held;
        if (
          responseDone || this.#state !== "busy" || held === null || held.done
        ) return;
        if (!held.revoked) {
          this.#revoke(held);
          this.#options.onTakeBack?.(this);
        }
        const now = performance.now();
        const left = held.revokedAt + HELD_STREAM_WAIT - now;
        if (left > 0) heldTimer = setTimeout(checkHeld, left);
        else if (waiting && heldBackUntil < held.revokedAt) {
          this.#release(held);
        } else heldTimer = setTimeout(checkHeld, HELD_STREAM_WAIT);
      };
      if (watch) heldTimer = setTimeout(checkHeld, HELD_STREAM_WAIT);
    }
    if (head.status === 205 && body instanceof ReadableStream) {
      // A 205 has no content (RFC 9110 §15.3.6): one a worker sent anyway is
      // read off before the answer goes on, so the exchange ends with it
      // and the connection stays usable. One cut short has been reported
      // to `onEnd` and closed the connection; the 205 still stands (it has
      // no content), so the request is answered and counted once.
      await body.pipeTo(new WritableStream()).catch(() => {});
      body = null;
    }
    return {
      status: head.status,
      reason: head.reason,
      headers: head.headers,
      body,
      contentLength,
    };
  }

  /**
   * Sends the ping request on this idle connection (see `_ping.ts`): the
   * slot is busy until the worker answers, then offered again through
   * `onIdle`. No answer within `timeout` ms, or anything but an empty 2xx,
   * closes the connection (the reason reaches `onClose`; code
   * `ping-timeout` when no answer came).
   */
  async ping(timeout: number): Promise<void> {
    if (this.#state !== "idle") return;
    this.#state = "busy";
    const timer = setTimeout(() => {
      this.close(
        new WorkerLinkError(
          "ping-timeout",
          `Worker did not answer a ping in ${timeout} ms`,
        ),
      );
    }, timeout);
    try {
      const alive = await this.#exchange(
        PING_REQUEST,
        "busy",
        "a ping",
        "Worker gave the connection back when pinged",
      );
      if (alive !== false) this.#options.onIdle(this);
    } catch (error) {
      this.close(error);
    } finally {
      clearTimeout(timer);
    }
  }

  // Sends a request of the hub's own (a ping, the wait request) and reads
  // the answer: "ok" for a bodiless 2xx that keeps the connection, "park"
  // if it also parks it again (a renewed wait); any other answer closes it
  // (a 408 is the worker giving it back). False too if the slot left state
  // `during` meanwhile (closed).
  async #exchange(
    request: Uint8Array,
    during: SlotState,
    what: string,
    gaveBack: string,
  ): Promise<"ok" | "park" | false> {
    await writeAll(this.#conn, request);
    const head = await this.#readHead("GET", () => {});
    if (this.#state !== during) return false;
    const fields = framingFields(head.headers);
    if (
      head.status < 200 || head.status > 299 ||
      !keepAlive(head.minor, fields) || fields.chunked ||
      fields.contentLength > 0
    ) {
      this.close(
        new WorkerLinkError(
          "closed",
          head.status === 408
            ? gaveBack
            : `Worker answered ${what} with ${head.status}`,
        ),
      );
      return false;
    }
    return fields.connection.includes(PARK_OPTION) ? "park" : "ok";
  }

  // The worker keeps this connection but offers it no work yet: the wait
  // request asks it to answer when it does. It may stay parked as long as
  // the worker is busy elsewhere; a worker that renews (see _park.ts) is
  // asked to answer at least every ping interval, and one that does not
  // answer within the ping timeout after that loses the connection, as an
  // idle one that misses a ping.
  async #park(): Promise<void> {
    this.#state = "parked";
    this.#options.onPark?.(this);
    const renew = this.identity?.renew === true
      ? this.#options.parkRenew
      : undefined;
    const request = renew === undefined
      ? WAIT_REQUEST
      : renewingWaitRequest(renew.every);
    // A worker that answers "still parked" at once (sooner than the renewal
    // it was asked for, or unasked) would have wait requests go back to
    // back: one such connection cost the hub half a CPU, ~18 000 a second.
    // The next one goes out no sooner than this after the last.
    const gap = renew === undefined ? PARK_RESEND_GAP : renew.every / 2;
    try {
      while (this.#state === "parked") {
        const sent = performance.now();
        const timer = renew === undefined ? undefined : setTimeout(() => {
          this.close(
            new WorkerLinkError(
              "ping-timeout",
              `Worker did not renew a parked connection in ${
                renew.every + renew.timeout
              } ms`,
            ),
          );
        }, renew.every + renew.timeout);
        let answer;
        try {
          answer = await this.#exchange(
            request,
            "parked",
            "the wait request",
            "Worker gave a parked connection back",
          );
        } finally {
          clearTimeout(timer);
        }
        if (answer === "ok") this.#options.onIdle(this);
        if (answer !== "park") return;
        const early = sent + gap - performance.now();
        if (early > 0 && !(await this.#quietFor(early))) return;
      }
    } catch (error) {
      this.close(error);
    }
  }

  // Waits `ms` with nothing asked of the worker, watching the connection
  // as an idle one is watched: false (and closed) if the worker closed it
  // or sent anything meanwhile, or the hub closed it.
  async #quietFor(ms: number): Promise<boolean> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const got = await Promise.race([
      // The read stays in flight for the next exchange (fill() is shared).
      this.#reader.fill().then((more) => more ? "bytes" : "end", () => "end"),
      new Promise<"quiet">((r) => timer = setTimeout(() => r("quiet"), ms)),
    ]);
    clearTimeout(timer);
    if (got === "quiet") return this.#state === "parked";
    this.close(
      new WorkerLinkError(
        got === "bytes" ? "protocol" : "closed",
        got === "bytes"
          ? "Worker sent bytes on a parked connection"
          : "Worker closed a parked connection",
      ),
    );
    return false;
  }

  // Writes the head (and a bytes body). For a stream body, returns the
  // function that starts sending it; the caller decides when. For a bytes
  // body, returns what the first write left, for the caller to send.
  async #writeRequest(
    req: OutgoingRequest,
    onBodyDone: (error?: unknown) => void,
  ): Promise<(() => void) | Uint8Array | null> {
    const body = req.body;
    // The head goes into this slot's own buffer: its next request is
    // written only after this write has completed and the answer been read.
    const { buf, length } = encodeLines(
      requestLines(req),
      req.extraHeaders,
      body instanceof Uint8Array ? body.length : 0,
      this.#scratch ??= new Uint8Array(HEAD_SCRATCH),
    );
    if (body instanceof Uint8Array) {
      // Head and body in one write, which takes what the socket can. What
      // it leaves goes out while the answer is read, as a streamed body
      // does: a worker may answer before it has read a large body (an
      // early 413) and then never read the rest, or close.
      buf.set(body, length);
      const n = await this.#conn.write(buf);
      return n < buf.length ? buf.subarray(n) : null;
    }
    if (body === null) {
      // A request held behind this one is written after this write.
      await (this.#writing = writeAll(this.#conn, buf));
      return null;
    }
    await writeAll(this.#conn, buf);
    return () => this.#pump(req, body, onBodyDone);
  }

  #pump(
    req: OutgoingRequest,
    body: ReadableStream<Uint8Array>,
    onBodyDone: (error?: unknown) => void,
  ): void {
    const reader = body.getReader();
    const limit = this.#limits.maxUploadSize ?? Infinity;
    let sent = 0;
    const tracked = {
      read: async () => {
        this.#uploadSince = performance.now();
        let chunk;
        try {
          chunk = await reader.read();
        } catch (error) {
          // The consumer's body failed: it went away mid-upload, or sent a
          // malformed body (the hub tells which); not the worker's fault.
          throw new WorkerLinkError(
            "upload-failed",
            `Consumer's request body failed: ${errorText(error)}`,
            { cause: error },
          );
        } finally {
          this.#uploadSince = 0;
        }
        if (!chunk.done && (sent += chunk.value.length) > limit) {
          throw new WorkerLinkError(
            "upload-too-large",
            `Request body is larger than the limit of ${limit} bytes`,
          );
        }
        return chunk;
      },
    };
    // Upload bytes go out through a connection that times each write: one
    // that blocks (the worker's socket buffer is full) counts towards the
    // head timeout, which otherwise starts only after the last byte.
    const conn = this.#conn;
    const own = this.#options.ownHeadTimer;
    const headTimeout = this.#limits.headTimeout;
    const timed = {
      read: (p: Uint8Array) => conn.read(p),
      write: async (p: Uint8Array) => {
        this.#takeSince = performance.now();
        const timer = own && headTimeout > 0
          ? setTimeout(
            () => this.checkStalled(performance.now()),
            headTimeout,
          )
          : undefined;
        try {
          return await conn.write(p);
        } finally {
          this.#takeSince = 0;
          clearTimeout(timer);
        }
      },
      close: () => conn.close(),
    };
    writeBody(
      timed,
      tracked,
      req.contentLength >= 0
        ? { kind: "length", length: req.contentLength }
        : { kind: "chunked" },
    ).then(() => onBodyDone(), (error) => {
      reader.cancel(error).catch(() => {});
      onBodyDone(this.#closeReason ?? error);
    });
  }

  async #readHead(
    method: string,
    onContinue: () => void,
    upgrade = false,
  ) {
    const reader = this.#reader;
    const limits = this.#options.limits;
    let interim = 0;
    let scanned = 0; // relative to reader.start: fill() may compact the buffer
    while (true) {
      let parsed;
      try {
        parsed = parseResponseHead(
          reader.buf,
          reader.start,
          reader.end,
          limits,
          reader.start + scanned,
        );
      } catch (error) {
        if (this.served === 1 && interim === 0 && looksLikeRequest(reader)) {
          // A handshake that came after the hub took this connection for a
          // plain worker: the worker got our request where it expected a
          // 101, so it cannot have started it.
          this.handshakeCrossed = true;
          throw new WorkerLinkError(
            "not-started",
            "Worker sent a handshake after the hub had sent a request",
            { retryable: true, cause: error },
          );
        }
        throw new WorkerLinkError(
          "protocol",
          `Invalid response from worker: ${errorText(error)}`,
          { cause: error },
        );
      }
      if (parsed === null) {
        scanned = Math.max(0, reader.buffered - 3);
        if (!(await reader.fill())) {
          throw new WorkerLinkError(
            "closed",
            reader.buffered > 0
              ? "Worker closed the connection inside the response head"
              : "Worker closed the connection before responding",
          );
        }
        continue;
      }
      reader.consume(parsed.used);
      scanned = 0;
      const status = parsed.value.status;
      if (status >= 200) return parsed.value;
      if (status === 100) onContinue();
      else if (
        status === 150 && hasField(parsed.value.headers, REVOKED_FIELD)
      ) {
        this.#givenBack();
      }
      if (status === 101) {
        if (upgrade) return parsed.value;
        throw new WorkerLinkError(
          "protocol",
          `Invalid response from worker: 101 Switching Protocols to ${method}`,
        );
      }
      if (++interim > MAX_INTERIM) {
        throw new WorkerLinkError(
          "protocol",
          `Invalid response from worker: more than ${MAX_INTERIM} interim responses`,
        );
      }
    }
  }

  // Maps a failure before the head to the error the hub acts on.
  #failure(
    nothingSent: boolean,
    idempotent: boolean,
    error?: unknown,
  ): WorkerLinkError {
    const reason = this.#closeReason ?? error;
    if (reason instanceof WorkerLinkError) {
      if (reason.code === "closed" && nothingSent && idempotent) {
        return new WorkerLinkError(reason.code, reason.message, {
          retryable: true,
          cause: reason,
        });
      }
      return reason;
    }
    return new WorkerLinkError(
      "closed",
      `Worker connection failed: ${errorText(reason)}`,
      { retryable: nothingSent && idempotent, cause: reason },
    );
  }
}

function looksLikeRequest(reader: BufferedReader): boolean {
  const n = Math.min(reader.buffered, 16);
  const text = String.fromCharCode(
    ...reader.buf.subarray(reader.start, reader.start + n),
  );
  return /^[A-Z]+ \//.test(text);
}

/** Whether the buffered bytes start like a response (`HTTP/`). */
export function startsLikeResponse(reader: BufferedReader): boolean {
  return reader.buffered >= 5 &&
    String.fromCharCode(
        ...reader.buf.subarray(reader.start, reader.start + 5),
      ) === "HTTP/";
}

// The "not started" 408 a draining worker hands an idle connection back with.
function startsLikeHandBack(reader: BufferedReader): boolean {
  const n = Math.min(reader.buffered, 13);
  const text = String.fromCharCode(
    ...reader.buf.subarray(reader.start, reader.start + n),
  );
  return /^HTTP\/1\.[01] 408 $/.test(text);
}

function hasField(headers: HeaderList, name: string): boolean {
  for (const [n] of headers) if (n === name) return true;
  return false;
}

/** The message of an error, or its string form. */
export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
