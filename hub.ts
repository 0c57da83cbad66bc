/**
 * The POTHEAD hub: one FIFO queue of consumer requests, sent one at a time
 * down idle worker connections.
 *
 * {@linkcode Hub} is the logic as a fetch handler plus a method to attach
 * worker connections; {@linkcode serveHub} runs it on two listeners
 * (consumers on `Deno.serve`, workers on `Deno.listen`). Run as a program it
 * is the hub CLI (`deno run -A hub.ts --help`).
 *
 * @example Mount a hub inside your own server
 * ```ts ignore
 * import { Hub } from "@pothead/hub/hub";
 *
 * const hub = new Hub({ maxQueue: 1000 });
 * const workers = Deno.listen({ port: 4040 });
 * (async () => {
 *   for await (const conn of workers) hub.addWorker(conn);
 * })();
 * Deno.serve({ port: 8080 }, (req, info) => hub.fetch(req, info));
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { DEFAULT_LIMITS, type HeadLimits, reasonPhrase } from "./_codec.ts";
import { forwardRequestHeaders, responseHeaders } from "./_headers.ts";
import type { Connection } from "./_io.ts";
import { type QueueNode, WaitQueue } from "./_queue.ts";
import {
  errorText,
  type IncomingResponse,
  type OutgoingRequest,
  WorkerLinkError,
  WorkerSlot,
} from "./_slot.ts";
import {
  flagOrEnv,
  formatAddr,
  parseDuration,
  parseInteger,
  UsageError,
  VERSION,
} from "./_cli.ts";

export type { Connection } from "./_io.ts";

/** Request header that tells the worker how long the request was queued. */
export const QUEUE_TIME_HEADER = "x-pothead-queue-ms";

/** A structured log record from the hub. */
export interface HubLogRecord {
  /** Severity. */
  level: "debug" | "info" | "warn" | "error";
  /** What happened, in a few words. */
  msg: string;
  /** Related values: request id, worker peer, error text. */
  [field: string]: unknown;
}

/** How a consumer request ended, for access logs and metrics. */
export type Outcome =
  | "ok"
  | "body-error"
  | "queue-full"
  | "queue-timeout"
  | "worker-error"
  | "worker-timeout"
  | "abandoned"
  | "bad-request"
  | "shutting-down";

/** One finished consumer request, as given to {@linkcode HubOptions.onAccess}. */
export interface AccessRecord {
  /** The request id (X-Request-Id). */
  id: string;
  /** Request method. */
  method: string;
  /** Path and query. */
  path: string;
  /** Status sent to the consumer (the hub's own 502/503/504 included). */
  status: number;
  /** How the request ended. */
  outcome: Outcome;
  /** Milliseconds from arrival to dispatch (to the final attempt), or to the answer if never dispatched. */
  queueMs: number;
  /** Milliseconds from dispatch to the response head; -1 if never dispatched. */
  workerMs: number;
  /** Milliseconds from arrival to the end of the response body from the worker. */
  totalMs: number;
  /** Request body bytes when known (buffered or Content-Length), else -1. */
  bytesIn: number;
  /** Response body bytes read from the worker. */
  bytesOut: number;
  /** The worker connection's peer address, or null. */
  worker: string | null;
  /** Times the request was sent again to another worker. */
  retries: number;
}

/** Options for {@linkcode Hub}. Every field is optional. */
export interface HubOptions {
  /**
   * Most requests that may wait in the queue. A request that finds the
   * queue full is answered 503 with `Retry-After` at once.
   * @default {10000}
   */
  maxQueue?: number;
  /**
   * Milliseconds a request may wait in the queue before it is answered 503
   * with `Retry-After`; 0 waits forever.
   * @default {30000}
   */
  queueTimeout?: number;
  /**
   * Milliseconds a worker has to send the complete response head once it has
   * the request (covers the work itself); 0 for no limit. Exceeding it gives
   * the consumer a 504 and closes that worker connection.
   * @default {300000}
   */
  headTimeout?: number;
  /**
   * How many times a request may go to another worker when the first one
   * provably did not process it (see the README's retry rule).
   * @default {2}
   */
  maxRetries?: number;
  /**
   * Largest response body from a worker, in bytes; a larger one gives 502
   * (or an errored body). Infinity for no limit.
   * @default {Infinity}
   */
  maxResponseBodySize?: number;
  /**
   * Request bodies with a Content-Length up to this size are read before the
   * request is queued, so a slow upload never holds a worker and the request
   * can be retried. Larger bodies stream.
   * @default {65536}
   */
  bufferRequestBody?: number;
  /** Limits on response heads and chunk lines from workers. */
  limits?: Partial<HeadLimits>;
  /**
   * Keep client-supplied `X-Forwarded-*` fields and append to them. Enable
   * only behind a proxy you trust; by default they are replaced.
   * @default {false}
   */
  trustForwarded?: boolean;
  /** Receives log records. By default nothing is logged. */
  onLog?: (record: HubLogRecord) => void;
  /**
   * Called exactly once per consumer request when it is finished: answered
   * by the hub, or the worker's response body fully read (or failed).
   * For access logs and metrics; keep it cheap, it runs on the hot path.
   */
  onAccess?: (record: AccessRecord) => void;
}

/** Counters and gauges of a {@linkcode Hub}. */
export interface HubStats {
  /** Requests waiting in the queue. */
  queued: number;
  /** Milliseconds the oldest queued request has waited (0 if none). */
  oldestWaitMs: number;
  /** Worker connections attached. */
  slots: number;
  /** Worker connections waiting for a request. */
  idle: number;
  /** Worker connections carrying a request. */
  busy: number;
  /** Consumer requests received. */
  received: number;
  /** Requests answered by a worker (any status). */
  answered: number;
  /** Requests sent to another worker after a provably unstarted attempt. */
  retries: number;
  /** Requests answered 503 because the queue was full. */
  rejectedFull: number;
  /** Requests answered 503 because they waited longer than queueTimeout. */
  timedOutQueued: number;
  /** Requests that failed at a worker (502/504 or an errored body). */
  failed: number;
  /** Queued requests whose consumer left before a worker was free. */
  abandoned: number;
}

/** What {@linkcode Hub.fetch} accepts as its second argument. */
export interface HubRequestInfo {
  /** The consumer's address (as `Deno.serve` passes it). */
  remoteAddr?: { hostname?: string } | Deno.Addr;
}

interface Pending {
  req: Request;
  out: OutgoingRequest;
  id: string;
  since: number;
  attempts: number;
  path: string;
  queueMs: number;
  workerMs: number;
  node: QueueNode<Pending> | null;
  resolve(res: Response): void;
  onAbort: (() => void) | null;
}

const DEFAULTS = {
  maxQueue: 10_000,
  queueTimeout: 30_000,
  headTimeout: 300_000,
  maxRetries: 2,
  maxResponseBodySize: Infinity,
  bufferRequestBody: 64 * 1024,
};

// Response bodies up to this length are read whole and passed as bytes.
const SMALL_BODY = 64 * 1024;
const REQUEST_ID = /^[\x21-\x7e]{1,200}$/;

function checkOption(name: string, value: number, min: number): number {
  if (typeof value !== "number" || Number.isNaN(value) || value < min) {
    throw new RangeError(
      `Invalid option "${name}": expected a number >= ${min}, got ${value}`,
    );
  }
  return value;
}

/**
 * The hub: a fetch handler that queues requests and a place to attach worker
 * connections. No listeners of its own; see {@linkcode serveHub}.
 *
 * @example Send a request through a hub without sockets on the consumer side
 * ```ts ignore
 * const hub = new Hub();
 * hub.addWorker(await Deno.connect({ port: 9000 })); // a worker's connection
 * const res = await hub.fetch(new Request("http://hub/hello"));
 * ```
 */
export class Hub {
  #maxQueue: number;
  #headTimeout: number;
  #maxRetries: number;
  #maxBody: number;
  #bufferBody: number;
  #limits: HeadLimits;
  #trust: boolean;
  #log: (record: HubLogRecord) => void;
  #onAccess: ((record: AccessRecord) => void) | undefined;
  #queue: WaitQueue<Pending>;
  #idle = new Set<WorkerSlot>();
  #slots = new Set<WorkerSlot>();
  #closed = false;
  #stats = {
    received: 0,
    answered: 0,
    retries: 0,
    rejectedFull: 0,
    timedOutQueued: 0,
    failed: 0,
    abandoned: 0,
  };

  /** Makes a hub; throws `RangeError` naming any invalid option. */
  constructor(options: HubOptions = {}) {
    this.#maxQueue = checkOption(
      "maxQueue",
      options.maxQueue ?? DEFAULTS.maxQueue,
      0,
    );
    const queueTimeout = checkOption(
      "queueTimeout",
      options.queueTimeout ?? DEFAULTS.queueTimeout,
      0,
    );
    this.#headTimeout = checkOption(
      "headTimeout",
      options.headTimeout ?? DEFAULTS.headTimeout,
      0,
    );
    this.#maxRetries = checkOption(
      "maxRetries",
      options.maxRetries ?? DEFAULTS.maxRetries,
      0,
    );
    this.#maxBody = checkOption(
      "maxResponseBodySize",
      options.maxResponseBodySize ?? DEFAULTS.maxResponseBodySize,
      0,
    );
    this.#bufferBody = checkOption(
      "bufferRequestBody",
      options.bufferRequestBody ?? DEFAULTS.bufferRequestBody,
      0,
    );
    this.#limits = { ...DEFAULT_LIMITS, ...options.limits };
    for (const [k, v] of Object.entries(this.#limits)) checkOption(k, v, 1);
    this.#trust = options.trustForwarded ?? false;
    this.#log = options.onLog ?? (() => {});
    this.#onAccess = options.onAccess;
    this.#queue = new WaitQueue<Pending>({
      timeout: queueTimeout,
      onTimeout: (p) => {
        p.node = null;
        this.#stats.timedOutQueued++;
        this.#fail(
          p,
          "queue-timeout",
          503,
          `request waited ${queueTimeout} ms in the queue without a free worker`,
          {
            "retry-after": String(Math.max(1, Math.ceil(queueTimeout / 1000))),
          },
        );
      },
    });
  }

  /** A snapshot of the hub's counters and gauges. */
  get stats(): HubStats {
    const head = this.#queue.head;
    return {
      queued: this.#queue.size,
      oldestWaitMs: head ? performance.now() - head.since : 0,
      slots: this.#slots.size,
      idle: this.#idle.size,
      busy: this.#slots.size - this.#idle.size,
      ...this.#stats,
    };
  }

  /**
   * Attaches a worker connection: from now on it is one slot that carries one
   * request at a time. The hub owns and eventually closes it.
   *
   * @param conn the connection the worker opened (a `Deno.Conn`, or anything
   *   with `read`, `write` and `close`).
   * @param peer a label for logs, such as the remote address.
   */
  addWorker(conn: Connection, peer = "worker"): void {
    if (this.#closed) {
      conn.close();
      return;
    }
    const slot = new WorkerSlot(conn, peer, {
      limits: this.#limits,
      headTimeout: this.#headTimeout,
      maxBodySize: this.#maxBody,
      smallBody: SMALL_BODY,
      onIdle: (s) => this.#offer(s),
      onClose: (s, reason) => {
        this.#idle.delete(s);
        this.#slots.delete(s);
        this.#log({
          level: "debug",
          msg: "worker connection closed",
          worker: s.peer,
          slot: s.id,
          served: s.served,
          reason: errorText(reason),
        });
      },
    });
    this.#slots.add(slot);
    this.#log({
      level: "debug",
      msg: "worker connection attached",
      worker: peer,
      slot: slot.id,
    });
    this.#offer(slot);
  }

  /**
   * Handles one consumer request: queues it, sends it to the next free
   * worker connection, and resolves with that worker's response. Never
   * rejects: failures become 502, 503 or 504 responses (see the README).
   */
  async fetch(req: Request, info?: HubRequestInfo): Promise<Response> {
    this.#stats.received++;
    const since = performance.now();
    const given = req.headers.get("x-request-id");
    const id = given !== null && REQUEST_ID.test(given)
      ? given
      : crypto.randomUUID();
    const url = new URL(req.url);
    const path = url.pathname + url.search;
    const { promise, resolve } = Promise.withResolvers<Response>();
    const pending: Pending = {
      req,
      out: null!,
      id,
      since,
      attempts: 0,
      path,
      queueMs: 0,
      workerMs: -1,
      node: null,
      resolve,
      onAbort: null,
    };
    if (this.#closed) {
      this.#fail(pending, "shutting-down", 503, "hub is shutting down");
      return promise;
    }
    const remote = info?.remoteAddr as { hostname?: string } | undefined;
    const headers = forwardRequestHeaders(req.headers, {
      clientIp: remote?.hostname ?? null,
      proto: url.protocol === "https:" ? "https" : "http",
      host: req.headers.get("host") ?? url.host,
      requestId: id,
      trustForwarded: this.#trust,
    });
    let body: Uint8Array | ReadableStream<Uint8Array> | null = null;
    let contentLength = -1;
    if (req.body !== null) {
      const declared = req.headers.get("content-length");
      contentLength = declared !== null && /^[0-9]{1,15}$/.test(declared)
        ? Number(declared)
        : -1;
      if (contentLength >= 0 && contentLength <= this.#bufferBody) {
        try {
          body = await req.bytes();
        } catch (error) {
          this.#fail(
            pending,
            "bad-request",
            400,
            `cannot read request body: ${errorText(error)}`,
          );
          return promise;
        }
      } else {
        body = req.body;
      }
    }
    pending.out = {
      method: req.method,
      target: path,
      headers,
      body,
      contentLength,
    };
    const slot = this.#takeIdle();
    if (slot !== undefined) {
      this.#dispatch(pending, slot);
    } else if (this.#queue.size >= this.#maxQueue) {
      this.#stats.rejectedFull++;
      this.#fail(
        pending,
        "queue-full",
        503,
        `queue is full (${this.#maxQueue} requests waiting)`,
        { "retry-after": "1" },
      );
    } else {
      this.#enqueue(pending, false);
    }
    return promise;
  }

  /**
   * Stops taking requests: queued ones are answered 503, idle worker
   * connections are closed, and requests in progress may finish. Resolves
   * when no request is in progress any more or after `grace` milliseconds,
   * then closes every remaining worker connection.
   */
  async shutdown(grace = 30_000): Promise<void> {
    this.#closed = true;
    for (const p of this.#queue.drain()) {
      this.#fail(p, "shutting-down", 503, "hub is shutting down");
    }
    for (const slot of [...this.#idle]) slot.close("hub shutting down");
    const deadline = performance.now() + grace;
    while (this.#slots.size > this.#idle.size && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
      for (const slot of [...this.#idle]) slot.close("hub shutting down");
    }
    for (const slot of [...this.#slots]) slot.close("hub shut down");
  }

  #takeIdle(): WorkerSlot | undefined {
    // The longest-idle connection first, which spreads work over workers.
    for (const slot of this.#idle) {
      this.#idle.delete(slot);
      return slot;
    }
    return undefined;
  }

  #enqueue(p: Pending, front: boolean): void {
    p.node = front
      ? this.#queue.unshift(p, p.since)
      : this.#queue.push(p, p.since);
    if (p.onAbort === null) {
      // A consumer that leaves while queued never reaches a worker.
      p.onAbort = () => {
        if (p.node !== null && this.#queue.delete(p.node)) {
          p.node = null;
          this.#stats.abandoned++;
          this.#fail(p, "abandoned", 499, "consumer went away");
        }
      };
      p.req.signal.addEventListener("abort", p.onAbort, { once: true });
    }
  }

  #unwatch(p: Pending): void {
    if (p.onAbort !== null) {
      p.req.signal.removeEventListener("abort", p.onAbort);
      p.onAbort = null;
    }
  }

  // Answers with the hub's own error response and records it.
  #fail(
    p: Pending,
    outcome: Outcome,
    status: number,
    message: string,
    extra?: Record<string, string>,
  ): void {
    this.#unwatch(p);
    const now = performance.now();
    if (p.workerMs < 0) p.queueMs = now - p.since;
    this.#record(p, status, outcome, now, 0, null);
    p.resolve(errorResponse(status, message, p.id, extra));
  }

  #record(
    p: Pending,
    status: number,
    outcome: Outcome,
    now: number,
    bytesOut: number,
    worker: string | null,
  ): void {
    const onAccess = this.#onAccess;
    if (onAccess === undefined) return;
    const body = p.out?.body;
    onAccess({
      id: p.id,
      method: p.req.method,
      path: p.path,
      status,
      outcome,
      queueMs: p.queueMs,
      workerMs: p.workerMs,
      totalMs: now - p.since,
      bytesIn: body instanceof Uint8Array
        ? body.length
        : body === null || body === undefined
        ? 0
        : p.out.contentLength,
      bytesOut,
      worker,
      retries: Math.max(0, p.attempts - 1),
    });
  }

  // A slot is free: give it the head of the queue, or park it as idle.
  #offer(slot: WorkerSlot): void {
    slot.idle();
    if (slot.state !== "idle") return;
    if (this.#closed) {
      slot.close("hub shutting down");
      return;
    }
    const node = this.#queue.shift();
    if (node === null) {
      this.#idle.add(slot);
      return;
    }
    node.value.node = null;
    this.#dispatch(node.value, slot);
  }

  #dispatch(p: Pending, slot: WorkerSlot): void {
    p.attempts++;
    const sentAt = performance.now();
    p.queueMs = sentAt - p.since;
    const out = {
      ...p.out,
      headers: [
        ...p.out.headers,
        [QUEUE_TIME_HEADER, p.queueMs.toFixed(1)],
      ] as [string, string][],
    };
    slot.send(out, p.req.signal, (status, bytes, error) => {
      if (p.workerMs < 0) p.workerMs = performance.now() - sentAt;
      this.#record(
        p,
        status,
        error === undefined ? "ok" : "body-error",
        performance.now(),
        bytes,
        slot.peer,
      );
    }).then((res) => {
      this.#stats.answered++;
      if (p.workerMs < 0) p.workerMs = performance.now() - sentAt;
      this.#unwatch(p);
      p.resolve(this.#toResponse(p, res));
    }, (error) => this.#failed(p, slot, error));
  }

  #failed(p: Pending, slot: WorkerSlot, error: unknown): void {
    const e = error instanceof WorkerLinkError
      ? error
      : new WorkerLinkError("protocol", errorText(error), { cause: error });
    if (e.code === "aborted" || p.req.signal.aborted) {
      this.#stats.abandoned++;
      this.#fail(p, "abandoned", 499, "consumer went away");
      return;
    }
    if (e.retryable && p.attempts <= this.#maxRetries && !this.#closed) {
      this.#stats.retries++;
      this.#log({
        level: "info",
        msg: "retrying request on another worker",
        id: p.id,
        worker: slot.peer,
        attempt: p.attempts,
        reason: e.message,
      });
      const next = this.#takeIdle();
      if (next !== undefined) this.#dispatch(p, next);
      else this.#enqueue(p, true);
      return;
    }
    this.#stats.failed++;
    this.#log({
      level: "warn",
      msg: "worker failed",
      id: p.id,
      worker: slot.peer,
      code: e.code,
      reason: e.message,
    });
    p.workerMs = performance.now() - p.since - p.queueMs;
    const timeout = e.code === "timeout";
    this.#fail(
      p,
      timeout ? "worker-timeout" : "worker-error",
      timeout ? 504 : 502,
      e.message,
    );
  }

  #toResponse(p: Pending, res: IncomingResponse): Response {
    const headers = responseHeaders(res.headers);
    if (p.out.method === "HEAD" || res.status === 304) {
      // No body on the wire, but the length describes the representation.
      for (const [n, v] of res.headers) {
        if (n === "content-length") headers.set(n, v);
      }
    } else if (res.contentLength >= 0 && res.body instanceof ReadableStream) {
      headers.set("content-length", String(res.contentLength));
    }
    headers.set("x-request-id", p.id);
    headers.append(
      "server-timing",
      `queue;dur=${p.queueMs.toFixed(2)}, worker;dur=${p.workerMs.toFixed(2)}`,
    );
    try {
      return new Response(res.body as BodyInit | null, {
        status: res.status,
        statusText: res.reason,
        headers,
      });
    } catch (error) {
      // e.g. a status outside 200..599, which `Response` cannot carry.
      if (res.body instanceof ReadableStream) res.body.cancel().catch(() => {});
      this.#stats.failed++;
      return errorResponse(
        502,
        `Invalid response from worker: ${errorText(error)}`,
        p.id,
      );
    }
  }
}

/**
 * A plain-text error response from the hub itself. 499 is not sent (the
 * consumer is gone); it only settles the request's promise.
 */
function errorResponse(
  status: number,
  message: string,
  id: string,
  extra: Record<string, string> = {},
): Response {
  return new Response(`${status} ${reasonPhrase(status)}: ${message}\n`, {
    status: status === 499 ? 503 : status,
    headers: {
      "content-type": "text/plain; charset=utf-8",
      "x-request-id": id,
      "x-pothead-error": "1",
      ...extra,
    },
  });
}

/** Options for {@linkcode serveHub}. */
export interface ServeHubOptions extends HubOptions {
  /**
   * Address both listeners bind to.
   * @default {"0.0.0.0"}
   */
  hostname?: string;
  /**
   * Consumer port; 0 picks a free one.
   * @default {8080}
   */
  port?: number;
  /**
   * Worker port; 0 picks a free one.
   * @default {4040}
   */
  workerPort?: number;
  /** Aborting it shuts the hub down (see {@linkcode Hub.shutdown}). */
  signal?: AbortSignal;
  /**
   * Milliseconds requests in progress get to finish on shutdown.
   * @default {30000}
   */
  shutdownGrace?: number;
}

/** A running hub with its two listeners. */
export interface HubServer {
  /** The hub itself, for stats and direct use. */
  readonly hub: Hub;
  /** The consumer listener's address. */
  readonly addr: Deno.NetAddr;
  /** The worker listener's address. */
  readonly workerAddr: Deno.NetAddr;
  /** Resolves once both listeners have stopped. */
  readonly finished: Promise<void>;
  /** Stops both listeners and shuts the hub down gracefully. */
  shutdown(): Promise<void>;
}

/**
 * Runs a hub: consumers on `Deno.serve` at `port`, workers on `Deno.listen`
 * at `workerPort`.
 *
 * @example
 * ```ts ignore
 * import { serveHub } from "@pothead/hub";
 *
 * const server = serveHub({ port: 8080, workerPort: 4040 });
 * console.log(`consumers: ${server.addr.port}, workers: ${server.workerAddr.port}`);
 * ```
 */
export function serveHub(options: ServeHubOptions = {}): HubServer {
  const hostname = options.hostname ?? "0.0.0.0";
  const hub = new Hub(options);
  const listener = Deno.listen({
    hostname,
    port: options.workerPort ?? 4040,
    transport: "tcp",
  });
  const abort = new AbortController();
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({
      hostname,
      port: options.port ?? 8080,
      signal: abort.signal,
      onListen() {},
    }, (req, info) => hub.fetch(req, info));
  } catch (error) {
    listener.close();
    throw error;
  }
  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        try {
          conn.setNoDelay(true);
          conn.setKeepAlive(true);
        } catch {
          // not fatal: the connection works without them
        }
        const ra = conn.remoteAddr;
        hub.addWorker(conn, `${ra.hostname}:${ra.port}`);
      }
    } catch (error) {
      if (!(error instanceof Deno.errors.BadResource)) throw error;
    }
  })();
  let stopping: Promise<void> | null = null;
  const shutdown = () =>
    stopping ??= (async () => {
      try {
        listener.close();
      } catch {
        // already closed
      }
      const draining = hub.shutdown(options.shutdownGrace ?? 30_000);
      abort.abort();
      await draining;
      await server.finished;
      await accepting;
    })();
  options.signal?.addEventListener("abort", () => shutdown(), { once: true });
  return {
    hub,
    addr: server.addr,
    workerAddr: listener.addr as Deno.NetAddr,
    finished: Promise.all([server.finished, accepting]).then(() => {}),
    shutdown,
  };
}

const HELP =
  `POTHEAD hub ${VERSION}: a queue of HTTP requests for workers that dial in.

Usage: deno run -A jsr:@pothead/hub [options]

Options (each also as the environment variable in brackets):
  --hostname ADDR       address to bind both listeners [POTHEAD_HOSTNAME] (0.0.0.0)
  --port N              consumer HTTP port [POTHEAD_PORT] (8080)
  --worker-port N       worker port [POTHEAD_WORKER_PORT] (4040)
  --max-queue N         most queued requests; more get 503 [POTHEAD_MAX_QUEUE] (10000)
  --queue-timeout T     longest wait in the queue, then 503; 0 = forever
                        [POTHEAD_QUEUE_TIMEOUT] (30s)
  --head-timeout T      time a worker has to start its response, then 504;
                        0 = forever [POTHEAD_HEAD_TIMEOUT] (300s)
  --max-retries N       resends of a request a worker provably did not start
                        [POTHEAD_MAX_RETRIES] (2)
  --shutdown-grace T    time requests in progress get on SIGTERM
                        [POTHEAD_SHUTDOWN_GRACE] (30s)
  --trust-forwarded     keep client X-Forwarded-* fields [POTHEAD_TRUST_FORWARDED]
  --log-level L         debug, info, warn or error [POTHEAD_LOG_LEVEL] (info)
  -h, --help            show this help
  -V, --version         show the version

Durations: 500ms, 30s, 2m, or a bare number of seconds.
`;

const LEVELS = ["debug", "info", "warn", "error"];

/**
 * The hub command line. Returns the exit code.
 *
 * @param args command-line arguments, without the program name.
 */
export async function main(args: string[] = Deno.args): Promise<number> {
  let values;
  try {
    values = parseArgs({
      args,
      options: {
        hostname: { type: "string" },
        port: { type: "string" },
        "worker-port": { type: "string" },
        "max-queue": { type: "string" },
        "queue-timeout": { type: "string" },
        "head-timeout": { type: "string" },
        "max-retries": { type: "string" },
        "shutdown-grace": { type: "string" },
        "trust-forwarded": { type: "boolean" },
        "log-level": { type: "string" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (error) {
    console.error(`pothead: ${errorText(error)}\n\n${HELP}`);
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (values.version) {
    console.log(`pothead ${VERSION}`);
    return 0;
  }
  let options: ServeHubOptions;
  let level: number;
  try {
    const v = (flag: string, env: string) =>
      flagOrEnv(values[flag as keyof typeof values] as string | undefined, env);
    const levelName = v("log-level", "POTHEAD_LOG_LEVEL") ?? "info";
    level = LEVELS.indexOf(levelName);
    if (level < 0) {
      throw new UsageError(
        `Invalid --log-level: expected one of ${
          LEVELS.join(", ")
        }, got "${levelName}"`,
      );
    }
    const trust = values["trust-forwarded"] ??
      /^(1|true|yes)$/i.test(
        flagOrEnv(undefined, "POTHEAD_TRUST_FORWARDED") ?? "",
      );
    options = {
      hostname: v("hostname", "POTHEAD_HOSTNAME") ?? "0.0.0.0",
      port: parseInteger(v("port", "POTHEAD_PORT"), "--port", 8080, 0, 65535),
      workerPort: parseInteger(
        v("worker-port", "POTHEAD_WORKER_PORT"),
        "--worker-port",
        4040,
        0,
        65535,
      ),
      maxQueue: parseInteger(
        v("max-queue", "POTHEAD_MAX_QUEUE"),
        "--max-queue",
        DEFAULTS.maxQueue,
      ),
      queueTimeout: parseDuration(
        v("queue-timeout", "POTHEAD_QUEUE_TIMEOUT"),
        "--queue-timeout",
        DEFAULTS.queueTimeout,
      ),
      headTimeout: parseDuration(
        v("head-timeout", "POTHEAD_HEAD_TIMEOUT"),
        "--head-timeout",
        DEFAULTS.headTimeout,
      ),
      maxRetries: parseInteger(
        v("max-retries", "POTHEAD_MAX_RETRIES"),
        "--max-retries",
        DEFAULTS.maxRetries,
      ),
      shutdownGrace: parseDuration(
        v("shutdown-grace", "POTHEAD_SHUTDOWN_GRACE"),
        "--shutdown-grace",
        30_000,
      ),
      trustForwarded: trust,
      onLog: (record) => {
        if (LEVELS.indexOf(record.level) < level) return;
        const { level: lv, msg, ...fields } = record;
        const extra = Object.entries(fields)
          .map(([k, val]) => `${k}=${JSON.stringify(val)}`)
          .join(" ");
        console.error(
          `${new Date().toISOString()} ${lv} ${msg}${extra ? " " + extra : ""}`,
        );
      },
    };
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`pothead: ${error.message}`);
    return 2;
  }
  let server: HubServer;
  try {
    server = serveHub(options);
  } catch (error) {
    console.error(`pothead: cannot listen: ${errorText(error)}`);
    return 1;
  }
  console.log(`Listening on ${formatAddr("http", server.addr)} (consumers)`);
  console.log(`Listening on ${formatAddr("tcp", server.workerAddr)} (workers)`);
  let signals = 0;
  const { promise: stopped, resolve: stop } = Promise.withResolvers<void>();
  const onSignal = () => {
    if (++signals > 1) Deno.exit(1);
    console.error("pothead: shutting down (send the signal again to exit now)");
    server.shutdown().then(stop);
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  await stopped;
  Deno.removeSignalListener("SIGINT", onSignal);
  Deno.removeSignalListener("SIGTERM", onSignal);
  return 0;
}

if (import.meta.main) Deno.exit(await main());
