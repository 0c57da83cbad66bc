/**
 * The POTHEAD hub: FIFO queues of consumer requests, sent one at a time
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

import {
  DEFAULT_LIMITS,
  fieldOf,
  type HeadLimits,
  listTokens,
  reasonPhrase,
  ROUTE_HOST,
  VALID_HOST,
} from "./_codec.ts";
import {
  addressKey,
  type AddressRange,
  forwardedAddress,
  forwardedClient,
  inRanges,
  parseAddressRange,
} from "./_address.ts";
import { forwardedFieldClient, lastForwardedAddress } from "./_forwarded.ts";
import { hash32, mix32 } from "./_hash.ts";
import { AddressLogLimit, type Suppressed } from "./_log_limit.ts";
import { Latch } from "./_latch.ts";
import { bridgeWebSocket } from "./_ws_bridge.ts";
import { acceptKey, asksForWebSocket, webSocketProblem } from "./_ws_frame.ts";
import {
  CLIENT_HEADER,
  endToEnd,
  forwardRequestHeaders,
  lastForwardedFor,
  QUEUE_TIME_HEADER,
  relayedResponse,
  requestTarget,
} from "./_headers.ts";
import {
  BufferedReader,
  closeQuietly,
  type Connection,
  hasUnstableNet,
  joinBytes,
  onAbortUntil,
  writeAll,
} from "./_io.ts";
import { readAheadStream } from "./_readahead.ts";
import type {
  ReadAheadControl,
  ReadAheadOptions,
  SpillOptions,
} from "./_readahead.ts";
import { MAX_TIMER_MS, PriorityQueue, type QueueNode } from "./_queue.ts";
import { ShareLedger } from "./_share.ts";
import {
  errorText,
  type ExchangeLimits,
  HOLDABLE,
  type IncomingResponse,
  type OutgoingRequest,
  requestLines,
  startsLikeResponse,
  WorkerLinkError,
  WorkerSlot,
} from "./_slot.ts";
import {
  checkToken,
  DEFAULT_POOL,
  HandshakeError,
  parseHandshake,
  readHandshake,
  refusal,
  switchingProtocols,
  type WorkerIdentity,
} from "./_handshake.ts";
import { main } from "./_hub_cli.ts";
import { HOLD_FIELD } from "./_hold.ts";

export type { Connection } from "./_io.ts";
export type { HeadLimits } from "./_codec.ts";
export type { WorkerIdentity } from "./_handshake.ts";
export { main };
export { QUEUE_TIME_HEADER } from "./_headers.ts";

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
  | "key-full"
  | "queue-timeout"
  | "worker-error"
  | "worker-timeout"
  | "upload-timeout"
  | "too-large"
  | "abandoned"
  | "bad-request"
  | "shutting-down";

/** One finished consumer request, as given to {@linkcode HubOptions.onAccess}. */
export interface AccessRecord {
  /** The request id (X-Request-Id). */
  id: string;
  /** The pool the request was routed to. */
  pool: string;
  /** Request method. */
  method: string;
  /** Path and query. */
  path: string;
  /** Status sent to the consumer (the hub's own 502/503/504 included). */
  status: number;
  /** How the request ended. */
  outcome: Outcome;
  /**
   * Milliseconds from joining the queue to dispatch (to the final attempt),
   * or to the answer if never dispatched; -1 if it was turned away before it
   * asked for a worker (a full queue, a bad request, a shutdown, a body that
   * failed while read first). A request joins the queue on arrival, or with
   * `bufferUploads` once its streamed upload has been read.
   */
  queueMs: number;
  /** Milliseconds from dispatch to the response head; -1 if never dispatched. */
  workerMs: number;
  /** Milliseconds from arrival to the end of the response body from the worker. */
  totalMs: number;
  /** Request body bytes when known (buffered or Content-Length), else -1. */
  bytesIn: number;
  /** Response body bytes read from the worker. */
  bytesOut: number;
  /** The worker's id (or its connection's peer address), or null. */
  worker: string | null;
  /**
   * Times the request was put back for another worker (after an attempt
   * that provably did not start it), as `stats.retries` counts them.
   */
  retries: number;
  /** The request's priority class (see {@linkcode Route.priority}). */
  priority: number;
  /**
   * True when its last attempt was held ahead (see
   * {@linkcode HubOptions.holdAhead}): written behind another request;
   * absent otherwise.
   */
  held?: true;
  /**
   * The consumer's address: the peer's, or the one `X-Forwarded-For` (or
   * `Forwarded`, see {@linkcode HubOptions.forwardedField}) gives with
   * {@linkcode HubOptions.trustForwarded} or
   * {@linkcode HubOptions.trustedProxies}; null when unknown.
   */
  client: string | null;
}

/**
 * A routing rule: requests whose Host and path match go to `pool`. Rules are
 * tried in order; requests matching none go to the `default` pool.
 */
export interface Route {
  /** The pool to route to. */
  pool: string;
  /** Path prefix to match, such as `/images/`. Default: any path. */
  pathPrefix?: string;
  /** Host to match (without port, case-insensitive). Default: any host. */
  host?: string;
  /**
   * Priority class of the requests it routes: an integer from -1000 to
   * 1000. A pool's queue always serves its highest class first (first come,
   * first served within a class), so a lower class waits while a higher one
   * has anything waiting, up to the queue timeout. Default 0.
   */
  priority?: number;
}

/**
 * How fair queuing tells consumers apart (see {@linkcode HubOptions.fairBy}):
 * `"ip"`, the consumer's address (an IPv6 address by its /64 prefix, an
 * IPv4-mapped, IPv4-translated or NAT64 one as its IPv4 address); `"header:NAME"`, the value of the
 * request field NAME (missing or empty: the key `""`, one group for all such
 * requests); or a function of the request and the consumer's address (the
 * whole address `"ip"` starts from; null when unknown) that returns the key.
 */
export type FairBy =
  | "ip"
  | `header:${string}`
  | ((req: Request, clientIp: string | null) => string);

/**
 * What fair queuing shares out between keys (see
 * {@linkcode HubOptions.fairShare}): turns, one request each, or worker time.
 */
export type FairShare = "requests" | "time";

/** Limits of one pool; unset fields take the hub-wide option. */
export interface PoolOptions {
  /** Most queued requests in this pool. */
  maxQueue?: number;
  /** Milliseconds a request may wait in this pool's queue; 0 = forever. */
  queueTimeout?: number;
  /**
   * Milliseconds of waiting one priority class is worth in this pool (see
   * {@linkcode HubOptions.priorityStep}); Infinity makes its classes strict.
   */
  priorityStep?: number;
  /**
   * Fair queuing in this pool (see {@linkcode HubOptions.fairBy}); null
   * turns off a hub-wide `fairBy` for this pool.
   */
  fairBy?: FairBy | null;
  /**
   * What fair queuing shares out in this pool (see
   * {@linkcode HubOptions.fairShare}); needs `fairBy` for this pool.
   */
  fairShare?: FairShare;
  /**
   * Weights of fair-queuing keys in this pool, in place of the hub-wide
   * ones (see {@linkcode HubOptions.fairWeights}); needs `fairBy` for this
   * pool.
   */
  fairWeights?: Record<string, number>;
  /**
   * Most queued requests of one key in this pool (see
   * {@linkcode HubOptions.maxQueuePerKey}); needs `fairBy` for this pool.
   */
  maxQueuePerKey?: number;
  /**
   * Worker affinity in this pool (see {@linkcode HubOptions.affinityBy});
   * null turns a hub-wide one off for this pool.
   */
  affinityBy?: FairBy | null;
  /**
   * How long a request of this pool may wait for its affinity key's first
   * worker (see {@linkcode HubOptions.affinityWait}), in place of the
   * hub's; 0 for never.
   */
  affinityWait?: number;
  /**
   * Holding ahead in this pool (see {@linkcode HubOptions.holdAhead}), in
   * place of the hub's setting.
   */
  holdAhead?: boolean;
  /**
   * Milliseconds a worker of this pool has to send its response head (see
   * {@linkcode HubOptions.headTimeout}), in place of the hub's: a pool of
   * ten-minute transcodes and one of one-second thumbnails need different
   * ones. 0 for no limit.
   */
  headTimeout?: number;
  /**
   * Longest pause in a response body from a worker of this pool (see
   * {@linkcode HubOptions.bodyIdleTimeout}); 0 for no limit.
   */
  bodyIdleTimeout?: number;
  /**
   * Longest pause in an upload to this pool (see
   * {@linkcode HubOptions.uploadIdleTimeout}); 0 for no limit.
   */
  uploadIdleTimeout?: number;
  /**
   * Largest response body from a worker of this pool, in bytes (see
   * {@linkcode HubOptions.maxResponseBodySize}); Infinity for no limit.
   */
  maxResponseBodySize?: number;
  /**
   * Largest request body to this pool, in bytes (see
   * {@linkcode HubOptions.maxRequestBodySize}); Infinity for no limit.
   */
  maxRequestBodySize?: number;
}

/** Options for {@linkcode Hub}. Every field is optional. */
export interface HubOptions {
  /**
   * Most requests that may wait in a pool's queue. A request that finds
   * the queue full is answered 503 with `Retry-After` at once.
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
   * Fair queuing between consumers, in every pool (`pools` may set or turn
   * it off per pool): within each priority class, queued requests are
   * grouped by a key and the keys are served in turn, one request per turn,
   * each key first come first served; classes stay strict above that. So
   * one consumer with hundreds of requests queued delays another's next
   * request by at most one request per other waiting consumer. The key:
   * `"ip"`, the consumer's address (with `trustForwarded`, the last address
   * in `X-Forwarded-For`, the one the proxy in front of the hub saw, when
   * there is one; with `trustedProxies`, the last one that is not a trusted
   * proxy's; read from `Forwarded` instead with `forwardedField`);
   * `"header:NAME"`, a request field's value (missing or empty: the key
   * `""`, shared); or a function (a throw or a non-string makes the key
   * `""`, logged). A header key must come from a gateway the hub trusts,
   * or any consumer can pose as many. Unset: first come, first served, at
   * no cost.
   * @default {undefined}
   */
  fairBy?: FairBy;
  /**
   * Soft worker affinity, in every pool (`pools` may set or turn it off per
   * pool): each key (the forms of `fairBy`: `"ip"`, `"header:NAME"` or a
   * function) ranks the pool's workers by rendezvous hashing of the key and
   * the worker ids, and a request that finds idle slots goes to the idle
   * worker its key ranks highest, instead of the least loaded: the key's
   * first worker while it is idle, else its second, and so on. So requests
   * that share a model, a tenant's data or a session land where it is warm,
   * many keys spread evenly over the workers, every hub ranks alike, and a
   * worker that comes or goes moves only the keys that rank it first. By
   * default it never makes a request wait, and a slot that frees takes the
   * head of the queue whatever its key (`affinityWait` changes both). A
   * request without a key (the key `""`: its header missing or empty, say)
   * goes to the least loaded, as without affinity. Unset: no affinity, at
   * no cost.
   * @default {undefined}
   */
  affinityBy?: FairBy;
  /**
   * With `affinityBy`: milliseconds a request may wait for its key's first
   * worker when that worker is busy while others idle, instead of going at
   * once to the next idle one (where its model, say, is not loaded). When a
   * slot of that worker frees within the wait, the request takes it ahead
   * of what queued after it (a higher priority class, or with
   * `priorityStep` one aged past it, still goes first; several waiting for
   * one worker go in the queue's order); otherwise it then takes the idle
   * slot its key ranks highest, or its place in the queue by its arrival.
   * The queue timeout bounds the wait too, counted from the request's
   * arrival. Waiting requests count against `maxQueue` and `maxQueuePerKey`: past
   * them a request goes to the next idle worker at once. A worker that
   * leaves (or whose token is withdrawn) and a hub that starts to drain let
   * their waiting requests go at once (a request the leaving worker's last
   * connection gave back is put back among them in the queue's order); a
   * worker that joins and ranks first
   * for a waiting request's key takes it over (from its first free slot).
   * While requests queue (no slot idle), a slot that frees takes the oldest
   * of the first 32 requests of the queue's next class whose key ranks its
   * worker first (or that have no key), passing over the head of the queue
   * for at most this long from when a slot could first have taken it, then
   * the head (counted in `affinityPicks`); a retry at the head is not passed
   * over; not in a pool with `fairBy`, whose turns it would upset. So a key
   * queues briefly at its own worker rather than spilling over and evicting
   * other keys' warm state, and the keys stay split between the workers.
   * Set it to about what a cold start costs: a wait that runs out while the
   * worker finishes a cold job costs the request the wait and a cold start
   * both (`bench/affinity.ts`: 15 or 30 ms of wait did not pay where a cold
   * start took 60 ms, 50 and 100 ms did). It lengthens the tail while a
   * pool is nearly idle: a hot key's requests wait their turn at one
   * worker. 0: never wait, and no worker idles while a request waits.
   * @default {0}
   */
  affinityWait?: number;
  /**
   * Holding ahead (`pools` may set it per pool): while no connection of a
   * pool is idle and requests queue, the queue's head, if it is a bodiless
   * `GET`, `HEAD` or `OPTIONS` (not a WebSocket), is written down a busy
   * connection behind the request in progress (HTTP/1.1 pipelining), so its
   * worker starts it the moment that one ends, without the round trip
   * through the hub (about 0.2 ms from one job to the next against 0.55 ms
   * on our test machine). Only to workers whose runner says it takes held
   * requests (the `serve` engine), one per connection whose answer has not
   * begun, at the connection whose request started earliest, and only while
   * the pool's jobs have been finishing in the order they started (at least
   * 80% of the last ~20; requests that started within 5% of the mean
   * exchange of each other count as started together) or the queue is long:
   * a request per connection for every 5 ms of the pool's mean exchange
   * (four per connection until one has ended; the rule chosen in simulation,
   * `bench/_hold_sim.ts`). A connection that goes idle while nothing is
   * queued takes the oldest held request back (if the worker has not started
   * it), and so does a request of a higher priority class that queues behind
   * one of a lower class held; one held for two mean exchanges (four while
   * the queue is long; behind a job that runs long) is asked back as the
   * pool's exchanges end; one held behind an answer whose body is still
   * coming 250 ms after its head (a stream) is asked back then, and sent
   * elsewhere if that body is still coming 250 ms after the revoke and no
   * slow consumer held it back meanwhile (the worker will then not run it).
   * A held request's queue time is until it was written; its worker time
   * runs from then. Not with `fairBy` or `affinityBy` in the same pool
   * (refused: a held request would skip their order).
   * @default {false}
   */
  holdAhead?: boolean;
  /**
   * With `fairBy`, what the keys get equal shares of: `"requests"`, a
   * turn each, one request per turn; or `"time"`, worker time: the key
   * served next is the one whose requests have kept workers busy least
   * (each request charged, while it runs, its key's recent mean time, and
   * when its worker connection frees, what it took), so a consumer whose
   * jobs run ten times longer gets a tenth of the turns. Keys compare only
   * while they have requests queued or running: a key that comes back
   * after a spell with neither starts level with the key served last, and
   * one that had only requests running is raised to that level when it
   * queues again, if it is behind it.
   * Setting it where no pool has `fairBy` is an error.
   * @default {"requests"}
   */
  fairShare?: FairShare;
  /**
   * With `fairBy`: weights of keys by name (positive numbers; a key not
   * named weighs 1). Keys get shares in proportion to their weights: a key
   * of weight 3 is charged a third of what it uses (worker time with
   * `fairShare: "time"`, turns otherwise), so it gets three times the share
   * of a key of weight 1 while both have requests queued. `pools` may set
   * their own. Setting it where no pool has `fairBy` is an error.
   * @default {{}}
   */
  fairWeights?: Record<string, number>;
  /**
   * With `fairBy`: most requests of one key that may wait in a pool's queue
   * (over all its classes). A request whose key has that many queued, and
   * that finds no idle worker, is answered 429 with `Retry-After: 1` at once
   * and never queues. Setting it where no pool has `fairBy` is an error.
   * @default {Infinity}
   */
  maxQueuePerKey?: number;
  /**
   * Milliseconds a worker has to send the complete response head once it has
   * the request (covers the work itself), however slowly it trickles; 0 for
   * no limit. Exceeding it gives the consumer a 504 and closes that worker
   * connection.
   * @default {300000}
   */
  headTimeout?: number;
  /**
   * Milliseconds a response body may go without a byte from the worker
   * while the consumer is reading (the worker idle timeout), or without its
   * consumer taking a byte while the hub has some waiting for it (a consumer
   * that stops reading would otherwise hold the worker for ever): the body
   * is then cut; 0 for no limit. Server-sent-event streams should send
   * something more often.
   * @default {120000}
   */
  bodyIdleTimeout?: number;
  /**
   * Milliseconds a streamed upload may go without a byte from the consumer
   * while a worker waits for it; 0 for no limit. The consumer gets a 408
   * (or its response is cut) and the worker connection is closed. A small
   * body read before the request queues (`bufferRequestBody`) has the same
   * limit: 408, and the request never queues.
   * @default {60000}
   */
  uploadIdleTimeout?: number;
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
   * Largest request body from a consumer, in bytes; Infinity for no limit.
   * A larger Content-Length gets a 413 at once, before the request queues;
   * a streamed body that grows past it is cut, its worker connection closed,
   * and the consumer gets a 413 (or an errored body, if the worker's
   * response head was already forwarded).
   * @default {Infinity}
   */
  maxRequestBodySize?: number;
  /**
   * Request bodies with a Content-Length up to this size are read before the
   * request is queued, so a slow upload never holds a worker and the request
   * can be retried. Larger bodies stream.
   * @default {65536}
   */
  bufferRequestBody?: number;
  /**
   * Bytes of a worker's response body the hub reads ahead of a consumer
   * that takes it more slowly, so the worker is free for its next request
   * as soon as the rest of its response fits here, instead of waiting for
   * a slow download to finish. 0 reads at the consumer's pace. Bodies up to
   * 64 KiB with a Content-Length are always read whole.
   * @default {1048576}
   */
  responseBuffer?: number;
  /**
   * Most bytes all response bodies together may hold read ahead of their
   * consumers (see `responseBuffer`); past it, bodies go at their
   * consumers' pace until some is taken.
   * @default {67108864}
   */
  responseBufferTotal?: number;
  /**
   * A directory where a response body goes on once its `responseBuffer` is
   * full (or `responseBufferTotal` is reached), so a worker is free as soon
   * as it has sent its response, however large, to a slow consumer. Each
   * body gets temporary files that are unlinked as soon as they are open
   * (nothing is left behind): segments of a quarter of `responseSpillMax`
   * (64 KiB to 4 MiB), each closed once its consumer has read it, so the
   * disk holds what waits plus at most one segment. Needs write permission
   * there. Unset: no spilling.
   */
  responseSpillDir?: string;
  /**
   * Most bytes of one response body waiting on disk (see
   * `responseSpillDir`); past it, the body goes at its consumer's pace.
   * @default {1073741824}
   */
  responseSpillMax?: number;
  /**
   * Most bytes of all response bodies together waiting on disk (see
   * `responseSpillDir`); past it, bodies go at their consumers' pace until
   * some is taken.
   * @default {17179869184}
   */
  responseSpillTotal?: number;
  /**
   * Bytes of a streamed upload (one larger than `bufferRequestBody`, or
   * chunked) the hub reads ahead while the request waits in the queue, so
   * the worker that takes it finds that much already here instead of
   * waiting for the consumer to send it, and a consumer that leaves while
   * its upload waits is noticed (and answered) without costing a worker.
   * 0: uploads are read only when a worker asks for them.
   * @default {1048576}
   */
  requestBuffer?: number;
  /**
   * Most bytes all queued uploads together may hold read ahead (see
   * `requestBuffer`); past it, uploads wait unread until some is taken.
   * @default {67108864}
   */
  requestBufferTotal?: number;
  /**
   * A directory where an upload waiting in the queue goes on once its
   * `requestBuffer` is full (or `requestBufferTotal` is reached): a slow
   * uploader's body collects there while it waits, and the worker that
   * takes it reads it at disk speed. Temporary files as for
   * `responseSpillDir`. Unset: no spilling.
   */
  requestSpillDir?: string;
  /**
   * Most bytes of one upload waiting on disk (see `requestSpillDir`); past
   * it, the upload goes at its consumer's pace.
   * @default {1073741824}
   */
  requestSpillMax?: number;
  /**
   * Most bytes of all uploads together waiting on disk (see
   * `requestSpillDir`); past it, uploads are read no further ahead until
   * some is taken.
   * @default {17179869184}
   */
  requestSpillTotal?: number;
  /**
   * Read a streamed upload ahead before its request queues, as far as
   * `requestBuffer` (and `requestSpillDir`) allow, instead of only while it
   * waits: a worker then never waits for a slow uploader, even one that
   * arrives while workers are idle, at the cost of the upload's time before
   * it reaches one (no worker starts on it while it is still arriving).
   * Requests queue in the order their uploads are read.
   * @default {false}
   */
  bufferUploads?: boolean;
  /**
   * Pass WebSocket upgrades through to workers: the request queues like
   * any other, and a worker that answers `101` keeps that connection (one
   * of its slots) for the WebSocket's life; messages are relayed whole,
   * closes with their codes. False drops `Upgrade` as before (the worker
   * sees a plain GET).
   * @default {true}
   */
  webSockets?: boolean;
  /**
   * Largest WebSocket message a worker may send, in bytes; a larger one
   * closes the WebSocket (1009 to the worker, 1011 to the consumer). It
   * also bounds the consumer's messages waiting for a worker that does not
   * read them (1008). The consumer's own messages are bounded by Deno.
   * @default {16777216}
   */
  maxWebSocketMessage?: number;
  /** Limits on response heads and chunk lines from workers. */
  limits?: Partial<HeadLimits>;
  /**
   * Keep client-supplied `X-Forwarded-*` fields and append to them, from
   * any peer. Enable only when every peer is a proxy you trust; by default
   * they are replaced. `trustedProxies` names the proxies instead.
   * @default {false}
   */
  trustForwarded?: boolean;
  /**
   * The proxies in front of the hub whose word it takes: CIDR ranges
   * (`"10.0.0.0/8"`, `"fd00::/8"`) or single addresses. A request from one
   * of them keeps its `X-Forwarded-*` fields (appended to, as with
   * `trustForwarded`), and its consumer is the last address in
   * `X-Forwarded-For` that is not one of them, so a chain of proxies (a CDN
   * in front of a load balancer) gives the address the first of them saw;
   * from any other peer the fields are replaced and the peer is the
   * consumer. An entry that is not an address ends the walk (the consumer
   * is then the last address read, or the peer). Every address listed may
   * name any consumer: list the proxies, not networks consumers share. The
   * consumer's address is the `ip` fair-queuing key, the `fairBy`
   * function's second argument, the access record's `client` and, sent as
   * `X-Pothead-Client`, a worker handler's `info.remoteAddr`. Not with
   * `trustForwarded`.
   * @default {[]}
   */
  trustedProxies?: readonly string[];
  /**
   * Which field names the consumer behind trusted proxies
   * (`trustForwarded`, `trustedProxies`): `"x-forwarded-for"`, or
   * `"forwarded"`, the `for=` parameters of the standard `Forwarded` field
   * (RFC 7239), read the same way (from the end, skipping trusted
   * proxies; an element whose `for=` is no address, such as `unknown` or
   * `_hidden`, ends the walk). With `"forwarded"` the hub also appends its
   * own element (`for=` its peer, `proto=`, `host=`) to the `Forwarded`
   * field it sends a worker, after the consumer's when that is trusted;
   * the `X-Forwarded-*` fields are sent as always. Without
   * `trustForwarded` or `trustedProxies` no consumer's field is read and
   * `"forwarded"` only adds that element. Choose `"forwarded"` only when
   * every trusted proxy appends to `Forwarded`: many append to
   * `X-Forwarded-For` alone and pass a consumer's `Forwarded` on as it
   * came, so by default that field is never read (it is passed on from a
   * trusted peer, dropped from others).
   * @default {"x-forwarded-for"}
   */
  forwardedField?: "x-forwarded-for" | "forwarded";
  /**
   * Take a request's priority class from its `X-Pothead-Priority` field (an
   * integer from -1000 to 1000; anything else is a `400`), over its route's.
   * Enable only where whoever can reach the hub may jump its queue: behind
   * a gateway that sets or strips the field. By default it is ignored.
   * @default {false}
   */
  trustPriority?: boolean;
  /**
   * Milliseconds of waiting one priority class is worth, in every pool
   * (`pools` may set its own). Unset, classes are strict: a higher class is
   * always served first, and a lower one can wait until its queue timeout.
   * With a step, a request is served as if it had arrived `priority × step`
   * ms earlier: a request of class -10 with a step of 1000 goes ahead of
   * class-0 requests that arrive more than 10 s after it, so it never
   * starves (0: first come, first served whatever the class).
   * @default {Infinity}
   */
  priorityStep?: number;
  /**
   * How consumers reach the hub, for the `X-Forwarded-Proto` it sends. By
   * default each request's URL says so, which `Deno.serve` makes from the
   * connection, except for an absolute-form target (`GET https://h/x`):
   * that scheme is the consumer's word. {@linkcode serveHub} sets it from
   * `cert`.
   * @default {undefined}
   */
  consumerScheme?: "http" | "https";
  /**
   * Bearer tokens a worker must present in the PTTH handshake. When any is
   * set, a connection that has not passed the handshake never receives a
   * request. Several may be valid at once, for rotation.
   * @default {[]}
   */
  workerTokens?: readonly string[];
  /**
   * Without tokens the handshake is optional: milliseconds a new worker
   * connection may take to start one before it counts as a plain worker (a
   * handshake that comes later, before any request was sent, is still
   * accepted). An address whose last three connections were plain, and
   * that never sent a handshake, has its next connections taken at once.
   * 0 turns handshakes off: every connection is a plain worker.
   * @default {50}
   */
  handshakeWait?: number;
  /**
   * Milliseconds a worker has to complete its handshake, counted from the
   * connection's arrival (over TLS, the TLS handshake has its own).
   * @default {10000}
   */
  handshakeTimeout?: number;
  /**
   * Milliseconds a worker connection may stay idle before the hub pings it,
   * for workers that said in their handshake that they answer pings (the
   * worker runner does). Finds workers gone without closing their
   * connections (power loss, a dropped NAT mapping, a frozen process)
   * before a request is sent to them. 0 turns pings off.
   * @default {30000}
   */
  pingInterval?: number;
  /**
   * Milliseconds a worker has to answer a ping before its connection is
   * closed. Must be more than 0.
   * @default {10000}
   */
  pingTimeout?: number;
  /** Routing rules from Host and path to pools. */
  routes?: readonly Route[];
  /** Per-pool limits by pool name. */
  pools?: Record<string, PoolOptions>;
  /**
   * Receives log records. By default nothing is logged. A throw from it is
   * ignored.
   */
  onLog?: (record: HubLogRecord) => void;
  /**
   * Called exactly once per consumer request when it is finished: answered
   * by the hub, or the worker's response body fully read (or failed).
   * For access logs and metrics; keep it cheap, it runs on the hot path.
   * A throw from it is logged (`onLog`, level `error`).
   */
  onAccess?: (record: AccessRecord) => void;
}

/** Gauges of one pool. */
export interface PoolStats {
  /** The pool's name. */
  name: string;
  /** Requests waiting in its queue. */
  queued: number;
  /**
   * Distinct fair-queuing keys with requests waiting (see
   * {@linkcode HubOptions.fairBy}); 0 in a pool without it.
   */
  keys: number;
  /** Milliseconds the oldest queued request has waited (0 if none). */
  oldestWaitMs: number;
  /**
   * Requests waiting for their affinity key's first worker, outside the
   * queue (see {@linkcode HubOptions.affinityWait}).
   */
  waiting: number;
  /** Worker connections serving it. */
  slots: number;
  /** Of those, waiting for a request. */
  idle: number;
  /**
   * Of those, parked by their worker: kept open, but taking no request until
   * the worker offers it again (a worker busy for another hub).
   */
  parked: number;
  /** Of those, carrying a request. */
  busy: number;
  /**
   * Requests held ahead now: written behind a busy connection's request,
   * not yet begun (see {@linkcode HubOptions.holdAhead}).
   */
  held: number;
  /** Requests held ahead so far (each time one was). */
  heldTotal: number;
  /**
   * Take-backs asked for so far: a connection went idle with nothing
   * queued while a request was held elsewhere, a request of a higher
   * priority class queued behind one held, a request had been held for
   * two mean exchanges (four in a long queue), or the response before a
   * held request was still coming 250 ms after its head (a stream).
   */
  takeBacks: number;
  /** Distinct workers (by id, or by address for plain workers). */
  workers: number;
  /**
   * The queue by priority class, highest first: class 0 always, and every
   * other class while it holds a request.
   */
  classes: QueueClassStats[];
  /**
   * Whether the hub's options name it: the default pool, a route's pool or
   * one configured in {@linkcode HubOptions.pools}. A pool only workers
   * name gets no request (no route leads to it).
   */
  named: boolean;
}

/** One priority class of a pool's queue, in {@linkcode PoolStats.classes}. */
export interface QueueClassStats {
  /** The class (see {@linkcode Route.priority}). */
  priority: number;
  /** Requests of this class waiting. */
  queued: number;
  /** Milliseconds its oldest request has waited (0 if none). */
  oldestWaitMs: number;
}

/** One worker as the hub sees it: its slots grouped by worker id. */
export interface WorkerStats {
  /** The worker's id, or `addr:<ip>` for plain workers. */
  id: string;
  /** The pool it serves. */
  pool: string;
  /** Its connections. */
  slots: number;
  /** Of those, carrying a request. */
  busy: number;
  /** Labels from its handshake. */
  labels: Record<string, string>;
}

/** Counters and gauges of a {@linkcode Hub}. */
export interface HubStats {
  /** True once `shutdown()` has begun: the hub takes no new requests. */
  draining: boolean;
  /** Requests waiting, over all pools. */
  queued: number;
  /** Milliseconds the oldest queued request has waited (0 if none). */
  oldestWaitMs: number;
  /** Worker connections attached. */
  slots: number;
  /** Worker connections waiting for a request. */
  idle: number;
  /** Worker connections parked by their worker (busy for another hub). */
  parked: number;
  /** Worker connections carrying a request. */
  busy: number;
  /**
   * Response body bytes read from workers and not yet taken by their
   * consumers (see `responseBuffer`).
   */
  responseBuffered: number;
  /**
   * Response body bytes waiting on disk for their consumers (see
   * `responseSpillDir`).
   */
  responseSpilled: number;
  /**
   * Upload bytes read from consumers ahead of the workers that will take
   * them (see `requestBuffer`).
   */
  requestBuffered: number;
  /**
   * Upload bytes waiting on disk for their workers (see
   * `requestSpillDir`).
   */
  requestSpilled: number;
  /** WebSockets open through the hub (each holds one worker connection). */
  webSockets: number;
  /** Consumer requests received. */
  received: number;
  /** Requests answered by a worker (any status). */
  answered: number;
  /** Requests sent to another worker after a provably unstarted attempt. */
  retries: number;
  /**
   * Requests with an affinity key that found idle slots and went to the
   * worker their key ranks first (see {@linkcode HubOptions.affinityBy}).
   */
  affinityHits: number;
  /**
   * Requests that found idle slots, but their key's first worker busy, and
   * went to the idle one it ranks highest; and those whose wait for it
   * (see {@linkcode HubOptions.affinityWait}) ended without it, which then
   * went to an idle slot or queued.
   */
  affinityMisses: number;
  /**
   * Requests that waited for their affinity key's first worker (see
   * {@linkcode HubOptions.affinityWait}); those it took count as hits.
   */
  affinityWaits: number;
  /** Of those, the ones whose wait ran out (counted as misses). */
  affinityWaitTimeouts: number;
  /**
   * Queued requests that a freed slot took ahead of the head of the queue,
   * its worker being their key's first, or they having no key (see
   * {@linkcode HubOptions.affinityWait}).
   */
  affinityPicks: number;
  /** Requests answered 503 because the queue was full. */
  rejectedFull: number;
  /**
   * Requests answered 429 because their key had `maxQueuePerKey` requests
   * queued already.
   */
  rejectedKeyFull: number;
  /** Requests answered 503 because they waited longer than queueTimeout. */
  timedOutQueued: number;
  /** Requests that failed at a worker (502/504 or an errored body). */
  failed: number;
  /**
   * Requests whose consumer left before its response was whole: before the
   * head, or while the body came (access records: outcome `abandoned`).
   */
  abandoned: number;
  /** Worker handshakes refused (bad or missing token, malformed). */
  handshakesRefused: number;
  /** Pings sent on idle worker connections (see `pingInterval`). */
  pings: number;
  /** Worker connections closed because a ping went unanswered. */
  pingTimeouts: number;
  /** Per-pool gauges. */
  pools: PoolStats[];
  /** Per-worker gauges. */
  workers: WorkerStats[];
}

/** What {@linkcode Hub.fetch} accepts as its second argument. */
export interface HubRequestInfo {
  /** The consumer's address (as `Deno.serve` passes it). */
  remoteAddr?: { hostname?: string } | Deno.Addr;
}

/**
 * One consumer request in the hub. It is its own abort listener (an object
 * with `handleEvent`), so a queued request costs no closure.
 */
class Pending {
  out: OutgoingRequest | null = null;
  pool!: Pool;
  attempts = 0;
  retried = 0;
  // Times it was put back for another worker (stats.retries counts them).
  resent = 0;
  queueMs = 0;
  workerMs = -1;
  // It asked for a worker (went to one, queued or waited for its own):
  // from then on its queue time counts; turned away before, it has none.
  sought = false;
  node: QueueNode<Pending> | null = null;
  watching = false;
  clientIp: string | null = null;
  /** The consumer's address, once worked out (see Hub.#consumerAddress). */
  client: string | null | undefined = undefined;
  /** Its fair-queuing key, once its pool has needed it (see fairBy). */
  key: string | null = null;
  /**
   * The hash of its worker-affinity key (affinityBy), once worked out: -1
   * not yet, -2 no key (the key "").
   */
  affinity = -1;
  /**
   * The worker its affinity key ranks first, as of its pool's
   * `workersChanged` count `firstOf` (see Hub.#firstGroup).
   */
  first: Group | null = null;
  firstOf = -1;
  /**
   * When a freed slot first could have taken it as the head of its queue
   * (-1: not yet), for the bound on passing it over (see Hub.#pick).
   */
  headAt = -1;
  /** The worker it waits for (see affinityWait), and until when. */
  waitingFor: Group | null = null;
  waitNode: QueueNode<Pending> | null = null;
  waitTimer: ReturnType<typeof setTimeout> | undefined = undefined;
  /** Its priority class in the queue (see Route.priority). */
  priority = 0;
  /** The host asked for (see requestTarget). */
  host = "";
  /** Path and query (origin form), as the worker is sent it. */
  path = "/";
  body: Uint8Array | ReadableStream<Uint8Array> | null = null;
  // Its upload as read ahead (requestBuffer), and the stream's control:
  // cancelled when the request is settled unless a worker connection is
  // reading it.
  upload:
    | { stream: ReadableStream<Uint8Array>; control: ReadAheadControl }
    | null = null;
  // Its upload is being read before it queues (bufferUploads).
  uploading = false;
  // performance.now() of the last upload byte read ahead.
  uploadAt = 0;
  // When it joined the queue's order: its arrival, or for an upload read
  // first (bufferUploads) the end of that read. Its queue timeout and
  // queue time count from here.
  queuedSince: number;
  // Its upload was read ahead past maxRequestBodySize while a worker had
  // it: if that worker gives it back, it is answered 413, not resent.
  tooLarge = false;
  // A WebSocket opening handshake, passed on to the worker.
  webSocket = false;
  // Its last attempt was held ahead (holdAhead).
  held = false;
  // Its upload's read ahead failed while a worker had it: answered when
  // that worker gives it back or fails taking it, not resent.
  uploadFailed: { error: unknown } | null = null;
  contentLength = -1;
  resolve!: (res: Response) => void;
  #id: string | null;
  constructor(
    readonly onAbandon: (p: Pending) => void,
    readonly req: Request,
    id: string | null,
    readonly since: number,
  ) {
    this.#id = id;
    this.queuedSince = since;
  }
  /** The consumer's X-Request-Id, or one made when first needed. */
  get id(): string {
    return this.#id ??= crypto.randomUUID();
  }
  handleEvent(): void {
    this.onAbandon(this);
  }
}

// What a pool holds against maxQueue, and a key against maxQueuePerKey:
// the queue, and the requests waiting for their worker (affinityWait),
// which queue if their wait runs out.
function poolWaiting(pool: Pool): number {
  return pool.queue.size + pool.waiting;
}

function keyWaiting(pool: Pool, key: string): number {
  return pool.queue.sizeOf(key) + (pool.waitingKeys.get(key) ?? 0);
}

// Whether `node`, the request the queue would give a freed slot (its head,
// or one picked by affinity from the head's class), goes before `waiter`,
// which waits for that slot's worker: by the queue's own order of its
// classes, when its class is higher than the waiter's (strict classes),
// or, with a priorityStep, when the class's oldest request joined earlier
// less its class's worth (a tie to the higher class); in the waiter's own
// class, when it joined before the waiter did (a retry put back, say: the
// waiter came before any request that joined while it waited).
function goesBefore(
  pool: Pool,
  node: QueueNode<Pending>,
  waiter: Pending,
): boolean {
  const priority = node.priority;
  const step = pool.priorityStep;
  if (priority !== waiter.priority && step === Infinity) {
    return priority > waiter.priority;
  }
  // The class's oldest (the head of a fair class may be younger), unless
  // the node is a pick from the waiter's own class.
  const since = priority === waiter.priority && node !== pool.queue.head
    ? node.since
    : pool.queue.classes().find((c) => c.priority === priority)
      ?.oldestSince ?? node.since;
  if (priority === waiter.priority) return since < waiter.queuedSince;
  const at = since - priority * step;
  const waiterAt = waiter.queuedSince - waiter.priority * step;
  return at < waiterAt || (at === waiterAt && priority > waiter.priority);
}

// Whether `a` goes before `b` in their pool's queue order: the higher
// class, or with a priorityStep the one that joined earlier less its
// class's worth (a tie to the higher class); in one class, the older.
function precedes(pool: Pool, a: Pending, b: Pending): boolean {
  const step = pool.priorityStep;
  if (a.priority === b.priority) return a.queuedSince < b.queuedSince;
  if (step === Infinity) return a.priority > b.priority;
  const at = a.queuedSince - a.priority * step;
  const bt = b.queuedSince - b.priority * step;
  return at < bt || (at === bt && a.priority > b.priority);
}

// The path a route matches: as a worker's URL parser will resolve it, so
// "/images/../admin" (or "%2e%2e", or "\\" for "/") is not routed into the
// pool of "/images/" to be served there as "/admin".
function routedPath(path: string): string {
  if (!/[.\\]|%2e/i.test(path)) return path;
  try {
    return new URL("http://h" + path).pathname;
  } catch {
    return path;
  }
}

// Whether a failed read of a consumer's body means the consumer went away
// (Deno reports it so, without aborting the request's signal).
function consumerGone(error: unknown): boolean {
  const e = Deno.errors;
  return error instanceof e.BadResource || error instanceof e.ConnectionReset ||
    error instanceof e.UnexpectedEof || error instanceof e.Interrupted ||
    error instanceof e.BrokenPipe;
}

// A consumer that sent no body byte for the upload idle timeout before its
// request queued.
class UploadStalled extends Error {}

// Calls `onStall` once `idle` ms (0: never) pass with no new byte (the time
// of the last one is `lastByte()`); returns the function that stops
// watching.
function watchStall(
  idle: number,
  lastByte: () => number,
  onStall: (error: UploadStalled) => void,
): () => void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const watch = () => {
    const left = lastByte() + idle - performance.now();
    if (left > 0) timer = setTimeout(watch, left);
    else {
      onStall(
        new UploadStalled(`Consumer sent no request body byte for ${idle} ms`),
      );
    }
  };
  if (idle > 0) timer = setTimeout(watch, idle);
  return () => clearTimeout(timer);
}

// Reads a small body whole. No byte for `idle` ms (0: no limit) cancels it:
// a consumer that stops sending must not hold its request, unseen in any
// gauge, before it even queues.
async function bytesUnlessStalled(
  body: ReadableStream<Uint8Array>,
  idle: number,
): Promise<Uint8Array> {
  const reader = body.getReader();
  const parts: Uint8Array[] = [];
  let size = 0;
  let last = performance.now();
  let stalled: UploadStalled | undefined;
  const stop = watchStall(idle, () => last, (error) => {
    stalled = error;
    reader.cancel(error).catch(() => {});
  });
  try {
    while (true) {
      const { done, value } = await reader.read();
      // A cancelled read ends as if the body had.
      if (stalled !== undefined) throw stalled;
      if (done) break;
      parts.push(value);
      size += value.length;
      last = performance.now();
    }
  } catch (error) {
    throw stalled ?? error;
  } finally {
    stop();
  }
  return parts.length === 1 ? parts[0] : joinBytes(parts, size);
}

// Closes connections still being set up (a handshake in progress) and waits
// for their setup to settle; each setup removes its own entry.
async function closeAndSettle(
  setups: Map<Connection, Promise<void>>,
): Promise<void> {
  for (const conn of setups.keys()) closeQuietly(conn);
  await Promise.all(setups.values());
}

// A body stream that may turn out empty: null if it ends before its first
// byte, else a stream of the same bytes (the first chunk was read to know).
// No first byte for `idle` ms (0: no limit) cancels it, as a small body's
// read: an HTTP/2 upload of unknown length must not wait, unseen in any
// gauge, for a byte that never comes.
async function bodyOrNull(
  body: ReadableStream<Uint8Array>,
  idle: number,
): Promise<ReadableStream<Uint8Array> | null> {
  const reader = body.getReader();
  const since = performance.now();
  let stalled: UploadStalled | undefined;
  const stop = watchStall(idle, () => since, (error) => {
    stalled = error;
    reader.cancel(error).catch(() => {});
  });
  while (true) {
    let chunk;
    try {
      chunk = await reader.read();
      // A cancelled read ends as if the body had.
      if (stalled !== undefined) throw stalled;
    } catch (error) {
      stop();
      throw stalled ?? error;
    }
    const { done, value } = chunk;
    if (done || value.length > 0) stop();
    if (done) return null;
    if (value.length === 0) continue;
    let first: Uint8Array | null = value;
    return new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (first !== null) {
          controller.enqueue(first);
          first = null;
          return;
        }
        const next = await reader.read();
        if (next.done) controller.close();
        else controller.enqueue(next.value);
      },
      cancel: (reason) => reader.cancel(reason),
    });
  }
}

interface Group {
  key: string;
  // Its key's hash, for worker affinity (see #takeIdle).
  hash: number;
  // Requests waiting for this worker (affinityWait), in the order of the
  // pool's queue; made for the first.
  waiters: PriorityQueue<Pending> | null;
  // Its connections whose token was withdrawn while busy: they close when
  // free, so once all are, no request waits for it.
  leaving: number;
  busy: number;
  // Its requests sent and not yet answered or given back: once its last
  // connection closed, its waiters go after these (see #returned).
  sending: number;
  slots: number;
  idle: Set<WorkerSlot>;
  labels: Record<string, string>;
  // Took a streamed upload without ever answering 100 Continue: its uploads
  // go at once, without Expect, instead of after a second's wait.
  noContinue: boolean;
  // Has answered 100 Continue: its server speaks Expect, so an upload it
  // took without one (a handler that did not read that body) does not mark it.
  answersContinue: boolean;
}

// What a busy slot's request was charged when it started (see #settle).
interface Charge {
  ledger: ShareLedger;
  key: string;
  estimate: number;
  since: number;
}

interface Pool {
  name: string;
  queueTimeout: number;
  // Its timeouts and body limits (the hub's unless its options set some).
  limits: Required<ExchangeLimits>;
  queue: PriorityQueue<Pending>;
  maxQueue: number;
  // Fair queuing: the key of a request (null: first come, first served),
  // and how many of one key may wait.
  keyOf: ((p: Pending) => string) | null;
  maxQueuePerKey: number;
  // Worker affinity: a request's key (see #takeIdle), and how long a
  // request may wait for its key's first worker (0: never).
  affinityOf: ((p: Pending) => string) | null;
  affinityWait: number;
  // Requests waiting so, in their groups' waiters; with fairBy, by key
  // (counted against maxQueuePerKey).
  waiting: number;
  waitingKeys: Map<string, number>;
  // Its queue's priorityStep (Infinity: strict classes).
  priorityStep: number;
  // A freed slot may pick from the queue by affinity (see #pick).
  picks: boolean;
  // Counts workers joining and leaving, so that a request's first worker,
  // once worked out, is known to be current (see #firstGroup).
  workersChanged: number;
  // workersChanged when the waiting requests last had their first workers
  // worked out (see #rehome).
  waitersAt: number;
  // Fair queuing by worker time: what each key has used.
  ledger: ShareLedger | null;
  // Holding ahead (null: off).
  hold: HoldState | null;
  groups: Map<string, Group>;
  idle: number;
  // Idle slots taken out for a ping: still counted as idle in the stats.
  pinging: number;
  parked: number;
  slots: number;
}

// A pool's holding ahead (see HubOptions.holdAhead and Hub.#holdAhead).
interface HoldState {
  // Its busy slots, and when their requests started, in that order (a Map
  // keeps the order of insertion): the first is the one to hold behind,
  // and an exchange ends in start order when its slot is first.
  started: Map<WorkerSlot, number>;
  // The mean exchange, ms, over about the last 20 (-1: none has ended).
  meanMs: number;
  // The share of exchanges that ended in the order they started: an
  // average over about the last 20 (1: no other busy connection of the
  // pool had started its request earlier).
  inOrder: number;
  held: number;
  total: number;
  takeBacks: number;
}

// The hold rule (bench/_hold_sim.ts, chosen in simulation): hold while
// this share of exchanges ends in start order, or while the queue is long:
// a request per connection for every HOLD_QUEUE_MS of the mean exchange
// (HOLD_QUEUE_FACTOR per connection until one has ended). Longer jobs need
// a longer queue: the gap holding saves is a smaller share of them, and a
// request held behind one that runs long waits all of it out.
const HOLD_IN_ORDER = 0.8;
const HOLD_QUEUE_MS = 5;
const HOLD_QUEUE_FACTOR = 4;
const HOLD_SAME_START = 0.05;
// A request held this many mean exchanges waits behind a job that runs
// long (one of the rare long ones of a mix, or a stream's late head): it is
// asked back, and the interim 150 puts it at the front of the queue.
const HOLD_MAX_WAIT = 2;
// The same while the queue is long (the long-queue arm's test holds): a
// request asked back there is held again behind another job, so it gains
// only behind a job far longer than the rest, and each take-back costs its
// connection a hand-over (it holds nothing more until its exchange ends).
const HOLD_MAX_WAIT_LONG = 4;

// Whether `pool`'s queue is long by the hold rule: a request per
// connection for every HOLD_QUEUE_MS of the mean exchange.
function longQueue(pool: Pool, hold: HoldState): boolean {
  return pool.queue.size >=
    (hold.meanMs < 0
      ? HOLD_QUEUE_FACTOR * pool.slots
      : pool.slots * hold.meanMs / HOLD_QUEUE_MS);
}

// How long shutdown waits, after the grace, for WebSockets still open to
// finish the close handshake it starts (a close round trip on a live link
// takes milliseconds; a link that does not answer is then cut).
const WEBSOCKET_CLOSE_WAIT = 1000;

// How long serveHub's shutdown waits, after the hub's grace, for the
// consumer side to flush its answers.
const FLUSH_AFTER_SHUTDOWN = 1000;

const DEFAULTS = {
  maxQueue: 10_000,
  queueTimeout: 30_000,
  headTimeout: 300_000,
  bodyIdleTimeout: 120_000,
  uploadIdleTimeout: 60_000,
  maxRetries: 2,
  maxResponseBodySize: Infinity,
  maxRequestBodySize: Infinity,
  bufferRequestBody: 64 * 1024,
  responseBuffer: 1024 * 1024,
  responseBufferTotal: 64 * 1024 * 1024,
  responseSpillMax: 1024 * 1024 * 1024,
  responseSpillTotal: 16 * 1024 * 1024 * 1024,
  requestBuffer: 1024 * 1024,
  requestBufferTotal: 64 * 1024 * 1024,
  requestSpillMax: 1024 * 1024 * 1024,
  requestSpillTotal: 16 * 1024 * 1024 * 1024,
  maxWebSocketMessage: 16 * 1024 * 1024,
  handshakeWait: 50,
  handshakeTimeout: 10_000,
  pingInterval: 30_000,
  pingTimeout: 10_000,
  affinityWait: 0,
};

// Response bodies up to this length are read whole and passed as bytes.
const SMALL_BODY = 64 * 1024;
// How far down the queue a freed slot looks for a request of its own keys
// (see Hub.#pick).
const PICK_WINDOW = 32;
// Peer addresses remembered (see Hub.#accept), and how many plain
// connections in a row, with no handshake ever, make an address known plain.
const MAX_PLAIN_PEERS = 4096;

const PLAIN_AFTER = 3;
// Refused worker handshakes are logged in full once per address and
// window, the rest summed up (anyone who reaches the worker port could
// otherwise write thousands of lines a second); at most this many
// addresses per window, the others counted together.
const REFUSAL_LOG_WINDOW = 10_000;
const REFUSAL_LOG_ADDRESSES = 100;

// How a worker connection became a slot (logged at debug level).
type Attached =
  | "handshake"
  | "late handshake"
  | "plain"
  | "plain, after waiting"
  | "plain, address known";

// The spill settings for `dir` (undefined: none); throws TypeError naming
// the option when it is not an existing directory.
function spillOptions(
  option: string,
  dir: string | undefined,
  max: number,
  total: number,
  onError: (error: unknown) => void,
): SpillOptions | undefined {
  if (dir === undefined || max === 0 || total === 0) return undefined;
  const bad = (why: string) =>
    new TypeError(`Invalid option "${option}": ${why}`);
  if (typeof dir !== "string" || dir === "") {
    throw bad(`expected a directory path, got ${JSON.stringify(dir)}`);
  }
  let info;
  try {
    info = Deno.statSync(dir);
  } catch (error) {
    throw bad(`cannot use "${dir}": ${errorText(error)}`);
  }
  if (!info.isDirectory) throw bad(`"${dir}" is not a directory`);
  return { dir, max, total, held: 0, onError };
}

// The summary line of events an AddressLogLimit did not log one by one.
function suppressedRecord(msg: string, s: Suppressed): HubLogRecord {
  return {
    level: "warn",
    msg,
    worker: s.address ?? "other addresses",
    count: s.count,
    within: `${s.windowMs / 1000}s`,
  };
}

// The address part of a peer written as `host:port`.
function peerHost(peer: string): string {
  const colon = peer.lastIndexOf(":");
  return colon < 0 ? peer : peer.slice(0, colon);
}
const REQUEST_ID = /^[\x21-\x7e]{1,200}$/;
const POOL_NAME = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

// Priority classes: routes set them, and so may consumers with trustPriority.
const PRIORITY_FIELD = "x-pothead-priority";
const MAX_PRIORITY = 1000;
function validPriority(value: unknown): value is number {
  return Number.isInteger(value) && Math.abs(value as number) <= MAX_PRIORITY;
}

// fairBy: "ip", "header:" and a field name (an RFC 9110 token), a
// function, or null/undefined for none.
const FIELD_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
function checkFairBy(name: string, value: unknown): FairBy | null {
  if (value === undefined || value === null) return null;
  if (
    typeof value === "function" || value === "ip" ||
    (typeof value === "string" && value.startsWith("header:") &&
      FIELD_NAME.test(value.slice(7)))
  ) return value as FairBy;
  throw new TypeError(
    `Invalid option "${name}": expected "ip", "header:NAME" (NAME a field name) or a function, got ${
      JSON.stringify(value)
    }`,
  );
}

function checkTrustedProxies(
  value: unknown,
  trustForwarded: boolean,
): AddressRange[] | null {
  if (value === undefined) return null;
  if (!Array.isArray(value) || value.some((v) => typeof v !== "string")) {
    throw new TypeError(
      'Invalid option "trustedProxies": expected an array of address ranges like "10.0.0.0/8"',
    );
  }
  if (value.length === 0) return null;
  if (trustForwarded) {
    throw new TypeError(
      'Invalid options: "trustedProxies" names the proxies to trust, "trustForwarded" trusts every peer; set one',
    );
  }
  try {
    return value.map(parseAddressRange);
  } catch (error) {
    throw new TypeError(
      `Invalid option "trustedProxies": ${(error as Error).message}`,
    );
  }
}

function checkFairShare(name: string, value: unknown): FairShare {
  if (value === undefined || value === "requests" || value === "time") {
    return value ?? "requests";
  }
  throw new TypeError(
    `Invalid option "${name}": expected "requests" or "time", got ${
      JSON.stringify(value)
    }`,
  );
}

// fairWeights: an object of key names to positive finite numbers; null
// when unset.
function checkWeights(
  name: string,
  value: unknown,
): Map<string, number> | null {
  if (value === undefined) return null;
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new TypeError(
      `Invalid option "${name}": expected an object of key names to weights, got ${
        JSON.stringify(value)
      }`,
    );
  }
  const weights = new Map<string, number>();
  for (const [key, weight] of Object.entries(value)) {
    if (
      typeof weight !== "number" || !(weight > 0) || !Number.isFinite(weight)
    ) {
      throw new RangeError(
        `Invalid option "${name}": the weight of ${
          JSON.stringify(key)
        } must be a number above 0, got ${JSON.stringify(weight)}`,
      );
    }
    weights.set(key, weight);
  }
  return weights;
}

function checkTokens(tokens: readonly string[]): void {
  for (const t of tokens) {
    if (typeof t !== "string" || !/^[\x21-\x7e]{8,}$/.test(t)) {
      throw new TypeError(
        'Invalid option "workerTokens": each token must be 8 or more visible ASCII characters',
      );
    }
  }
}

function checkOption(name: string, value: number, min: number): number {
  if (typeof value !== "number" || Number.isNaN(value) || value < min) {
    // Quoted unless a number: "10" from a JSON config is not 10.
    const got = typeof value === "number" ? value : JSON.stringify(value);
    throw new RangeError(
      `Invalid option "${name}": expected a number >= ${min}, got ${got}`,
    );
  }
  return value;
}

// Options that count requests: a whole number (or Infinity, no limit).
const COUNTS = new Set(["maxQueue", "maxRetries", "maxQueuePerKey"]);

// Options that set a timer: setTimeout takes at most 2^31 - 1 ms, and a
// longer delay fires at once (over and over, for a queue's timer).
const TIMERS = new Set([
  "queueTimeout",
  "headTimeout",
  "bodyIdleTimeout",
  "uploadIdleTimeout",
  "handshakeWait",
  "handshakeTimeout",
  "pingInterval",
  "pingTimeout",
  "affinityWait",
]);
function checkTimer(name: string, value: number): number {
  checkOption(name, value, 0);
  if (value > MAX_TIMER_MS) {
    throw new RangeError(
      `Invalid option "${name}": ${value} ms is longer than the longest timer (${MAX_TIMER_MS} ms, about 24.8 days)`,
    );
  }
  return value;
}

// The keys a route and a pool may have: a misspelled one (from a JSON
// config) would otherwise be dropped without a word, and a route without
// its condition would match every request.
const ROUTE_KEYS = new Set(["pool", "host", "pathPrefix", "priority"]);
const POOL_KEYS = new Set([
  "maxQueue",
  "queueTimeout",
  "priorityStep",
  "fairBy",
  "fairShare",
  "fairWeights",
  "maxQueuePerKey",
  "affinityBy",
  "affinityWait",
  "holdAhead",
  "headTimeout",
  "bodyIdleTimeout",
  "uploadIdleTimeout",
  "maxResponseBodySize",
  "maxRequestBodySize",
]);
function checkKeys(
  name: string,
  value: object,
  known: Set<string>,
): void {
  for (const key of Object.keys(value)) {
    if (!known.has(key)) {
      throw new TypeError(
        `Invalid option "${name}": unknown key ${JSON.stringify(key)} (known: ${
          [...known].join(", ")
        })`,
      );
    }
  }
}
function checkHoldAhead(name: string, value: unknown): boolean {
  if (value === undefined) return false;
  if (typeof value !== "boolean") {
    throw new TypeError(
      `Invalid option "${name}": expected true or false, got ${
        JSON.stringify(value)
      }`,
    );
  }
  return value;
}

function checkCount(name: string, value: number, min: number): number {
  checkOption(name, value, min);
  if (!Number.isInteger(value) && value !== Infinity) {
    throw new RangeError(
      `Invalid option "${name}": expected a whole number >= ${min}, got ${value}`,
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
 * import { Hub } from "@pothead/hub";
 *
 * const hub = new Hub();
 * hub.addWorker(await Deno.connect({ port: 9000 })); // a worker's connection
 * const res = await hub.fetch(new Request("http://hub/hello"));
 * ```
 */
export class Hub {
  #opts: Required<
    Omit<
      HubOptions,
      | "onLog"
      | "onAccess"
      | "limits"
      | "routes"
      | "pools"
      | "responseSpillDir"
      | "requestSpillDir"
      | "consumerScheme"
      | "fairBy"
      | "affinityBy"
      | "fairShare"
      | "fairWeights"
      | "maxQueuePerKey"
      | "priorityStep"
      | "trustedProxies"
      | "forwardedField"
    >
  >;
  // Parsed trustedProxies; null when none are named.
  #trustedProxies: AddressRange[] | null;
  // forwardedField is "forwarded": the consumer is read from, and the hub
  // appends to, the standard Forwarded field.
  #forwardedStandard: boolean;
  #fairBy: FairBy | null;
  #affinityBy: FairBy | null;
  #fairShare: FairShare;
  #fairWeights: Map<string, number> | null;
  // Pools' own weights, checked and made into maps once.
  #poolWeights = new Map<string, Map<string, number>>();
  #maxQueuePerKey: number;
  #priorityStep: number;
  #scheme: "http" | "https" | null;
  #limits: HeadLimits;
  #routes: Route[];
  #poolOptions: Record<string, PoolOptions>;
  #log: (record: HubLogRecord) => void;
  #onAccess: ((record: AccessRecord) => void) | undefined;
  #pools = new Map<string, Pool>();
  // Pools the options name (and the default): kept when they have no
  // worker. Any other pool is one only workers named, which no request can
  // reach, and it goes with its last worker.
  #namedPools = new Set<string>([DEFAULT_POOL]);
  #slots = new Set<WorkerSlot>();
  // The token each handshake passed with (never logged), so that a token
  // withdrawn later ends the connections that came with it.
  #tokenOf = new WeakMap<WorkerIdentity, string>();
  // Slots whose token was withdrawn while they carried a request: closed
  // when it ends, instead of taking another.
  #withdrawn = new Set<WorkerSlot>();
  #busy = new Set<WorkerSlot>();
  // Busy slots of pools that share by time: whose request each runs.
  #charges = new Map<WorkerSlot, Charge>();
  // Holding ahead: the request held behind each slot (oldest first).
  #heldOn = new Map<WorkerSlot, Pending>();
  // Slots the worker parked: attached, but taking no request until it says.
  #parked = new Set<WorkerSlot>();
  // Idle slots whose ping is out: the stats count them as idle.
  #pinging = new Set<WorkerSlot>();
  #slotGroup = new Map<WorkerSlot, Group>();
  // Per peer address: how many of its new connections in a row turned out
  // to be plain workers, or -1 once it sent a handshake (see #accept).
  #plainPeers = new Map<string, number>();
  // Connections still in setup (handshake wait, token check): shutdown
  // closes them and waits for their setup to end.
  #settingUp = new Map<Connection, Promise<void>>();
  #refusalLog = new AddressLogLimit(
    REFUSAL_LOG_WINDOW,
    REFUSAL_LOG_ADDRESSES,
    (s) => this.#log(suppressedRecord("more worker handshakes refused", s)),
  );
  #sweeper: ReturnType<typeof setInterval> | undefined;
  #pinger: ReturnType<typeof setInterval> | undefined;
  #abandonFn = (p: Pending) => this.#abandon(p);
  #closing = false;
  #closed = false;
  // Another hub takes over on the same ports: free connections go back to
  // their workers as soon as nothing here waits for them.
  #handingOver = false;
  // When shutdown()'s grace ends (the earliest any call gave), and its one
  // run, which every call waits for.
  #drainEnd = Infinity;
  #shutting: Promise<void> | null = null;
  // Opens when the grace of shutdown() ends: body reads stop waiting. A
  // latch, not a promise: a race against a promise that lives as long as the
  // hub would keep every request body read (_latch.ts).
  #whenClosed = new Latch();
  // How far response bodies are read ahead of slow consumers: the memory
  // budget and spill directory all slots share (bodyStream decides from
  // them whether a body reads ahead at all).
  #readAhead: ReadAheadOptions;
  // Aborted when shutdown's grace is over: response bodies still read
  // ahead of their consumers are cut.
  #cutHeld = new AbortController();
  // How far queued uploads are read ahead (null: not at all).
  #uploadAhead: ReadAheadOptions | null;
  // Requests whose (small) body is being read before they queue.
  #reading = 0;
  // WebSockets open, and what tells them the hub is going away.
  #webSockets = 0;
  #goingAway = new AbortController();
  /**
   * This hub's identity, random, made when it is constructed: sent in the
   * `101` of the worker handshake (`Pothead-Hub-Id`) so that a worker
   * reaching it at two addresses (a name with an A and an AAAA record)
   * serves it as one hub. A hub that takes over another's ports has its
   * own.
   */
  readonly id: string = crypto.randomUUID();
  #stats = {
    received: 0,
    answered: 0,
    retries: 0,
    affinityHits: 0,
    affinityMisses: 0,
    affinityWaits: 0,
    affinityWaitTimeouts: 0,
    affinityPicks: 0,
    rejectedFull: 0,
    rejectedKeyFull: 0,
    timedOutQueued: 0,
    failed: 0,
    abandoned: 0,
    handshakesRefused: 0,
    pings: 0,
    pingTimeouts: 0,
  };

  /** Makes a hub; throws `RangeError` or `TypeError` naming an invalid option. */
  constructor(options: HubOptions = {}) {
    const numbers = {} as Record<keyof typeof DEFAULTS, number>;
    for (const key of Object.keys(DEFAULTS) as (keyof typeof DEFAULTS)[]) {
      const value = options[key] ?? DEFAULTS[key];
      numbers[key] = COUNTS.has(key)
        ? checkCount(key, value, 0)
        : TIMERS.has(key)
        ? checkTimer(key, value)
        : checkOption(key, value, 0);
    }
    if (numbers.pingTimeout <= 0) {
      throw new RangeError(
        'Invalid option "pingTimeout": expected a number of milliseconds above 0',
      );
    }
    this.#limits = { ...DEFAULT_LIMITS, ...options.limits };
    for (const [k, v] of Object.entries(this.#limits)) checkOption(k, v, 1);
    const tokens = options.workerTokens ?? [];
    checkTokens(tokens);
    const scheme = options.consumerScheme;
    if (scheme !== undefined && scheme !== "http" && scheme !== "https") {
      throw new TypeError(
        'Invalid option "consumerScheme": it must be "http" or "https"',
      );
    }
    this.#scheme = scheme ?? null;
    this.#trustedProxies = checkTrustedProxies(
      options.trustedProxies,
      options.trustForwarded ?? false,
    );
    const field = options.forwardedField;
    if (
      field !== undefined && field !== "x-forwarded-for" &&
      field !== "forwarded"
    ) {
      throw new TypeError(
        `Invalid option "forwardedField": expected "x-forwarded-for" or "forwarded", got ${
          JSON.stringify(field)
        }`,
      );
    }
    this.#forwardedStandard = field === "forwarded";
    this.#opts = {
      ...numbers,
      trustForwarded: options.trustForwarded ?? false,
      trustPriority: options.trustPriority ?? false,
      bufferUploads: options.bufferUploads ?? false,
      webSockets: options.webSockets ?? true,
      holdAhead: checkHoldAhead("holdAhead", options.holdAhead),
      workerTokens: [...tokens],
    };
    const spill = (
      option: "responseSpillDir" | "requestSpillDir",
      max: number,
      total: number,
      what: string,
    ) =>
      spillOptions(option, options[option], max, total, (error) =>
        this.#log({
          level: "warn",
          msg: `cannot spill ${what} to disk`,
          dir: options[option],
          reason: errorText(error),
        }));
    this.#readAhead = {
      limit: numbers.responseBuffer,
      budget: { max: numbers.responseBufferTotal, held: 0 },
      spill: spill(
        "responseSpillDir",
        numbers.responseSpillMax,
        numbers.responseSpillTotal,
        "a response body",
      ),
      signal: this.#cutHeld.signal,
    };
    const uploadSpill = spill(
      "requestSpillDir",
      numbers.requestSpillMax,
      numbers.requestSpillTotal,
      "an upload",
    );
    this.#uploadAhead = numbers.requestBuffer > 0 || uploadSpill !== undefined
      ? {
        limit: numbers.requestBuffer,
        budget: { max: numbers.requestBufferTotal, held: 0 },
        spill: uploadSpill,
      }
      : null;
    this.#routes = (options.routes ?? []).map((r) => {
      if (r === null || typeof r !== "object") {
        throw new TypeError(
          `Invalid option "routes": expected objects, got ${JSON.stringify(r)}`,
        );
      }
      checkKeys("routes", r, ROUTE_KEYS);
      if (typeof r.pool !== "string" || !POOL_NAME.test(r.pool)) {
        throw new TypeError(
          `Invalid option "routes": invalid pool name ${
            JSON.stringify(r.pool)
          }`,
        );
      }
      for (const key of ["host", "pathPrefix"] as const) {
        if (r[key] !== undefined && typeof r[key] !== "string") {
          throw new TypeError(
            `Invalid option "routes": ${key} must be a string, got ${
              JSON.stringify(r[key])
            }`,
          );
        }
      }
      // Matched against the request's host without its port, and its path.
      if (r.host !== undefined && !ROUTE_HOST.test(r.host)) {
        throw new TypeError(
          `Invalid option "routes": host must be a host name without a port, got ${
            JSON.stringify(r.host)
          }`,
        );
      }
      if (r.pathPrefix !== undefined && !r.pathPrefix.startsWith("/")) {
        throw new TypeError(
          `Invalid option "routes": pathPrefix must start with "/", got ${
            JSON.stringify(r.pathPrefix)
          }`,
        );
      }
      if (r.priority !== undefined && !validPriority(r.priority)) {
        throw new TypeError(
          `Invalid option "routes": priority must be an integer from ${-MAX_PRIORITY} to ${MAX_PRIORITY}, got ${
            JSON.stringify(r.priority)
          }`,
        );
      }
      return { ...r, host: r.host?.toLowerCase() };
    });
    const pools: unknown = options.pools ?? {};
    // A JSON config can hold anything: spreading an array or a string would
    // make pools named "0", "1"...
    if (typeof pools !== "object" || pools === null || Array.isArray(pools)) {
      throw new TypeError(
        `Invalid option "pools": expected an object by pool name, got ${
          JSON.stringify(pools)
        }`,
      );
    }
    this.#poolOptions = { ...pools as Record<string, PoolOptions> };
    this.#fairBy = checkFairBy("fairBy", options.fairBy);
    this.#affinityBy = checkFairBy("affinityBy", options.affinityBy);
    this.#fairShare = checkFairShare("fairShare", options.fairShare);
    this.#fairWeights = checkWeights("fairWeights", options.fairWeights);
    this.#maxQueuePerKey = options.maxQueuePerKey === undefined
      ? Infinity
      : checkCount("maxQueuePerKey", options.maxQueuePerKey, 1);
    this.#priorityStep = options.priorityStep === undefined
      ? Infinity
      : checkOption("priorityStep", options.priorityStep, 0);
    let fairPools = 0;
    let affinityPools = 0;
    // Pools that take the hub-wide weights: with fairBy, without their own.
    let weightedPools = 0;
    for (const [name, p] of Object.entries(this.#poolOptions)) {
      if (!POOL_NAME.test(name)) {
        throw new TypeError(
          `Invalid option "pools": invalid pool name ${JSON.stringify(name)}`,
        );
      }
      if (typeof p !== "object" || p === null || Array.isArray(p)) {
        throw new TypeError(
          `Invalid option "pools": pool "${name}" must be an object, got ${
            JSON.stringify(p)
          }`,
        );
      }
      checkKeys(`pools.${name}`, p, POOL_KEYS);
      if (p.maxQueue !== undefined) {
        checkCount(`pools.${name}.maxQueue`, p.maxQueue, 0);
      }
      if (p.queueTimeout !== undefined) {
        checkTimer(`pools.${name}.queueTimeout`, p.queueTimeout);
      }
      if (p.priorityStep !== undefined) {
        checkOption(`pools.${name}.priorityStep`, p.priorityStep, 0);
      }
      for (
        const key of [
          "headTimeout",
          "bodyIdleTimeout",
          "uploadIdleTimeout",
        ] as const
      ) {
        if (p[key] !== undefined) checkTimer(`pools.${name}.${key}`, p[key]);
      }
      for (
        const key of ["maxResponseBodySize", "maxRequestBodySize"] as const
      ) {
        if (p[key] !== undefined) {
          checkOption(`pools.${name}.${key}`, p[key], 0);
        }
      }
      const fairBy = p.fairBy === undefined
        ? this.#fairBy
        : checkFairBy(`pools.${name}.fairBy`, p.fairBy);
      const affinityBy = p.affinityBy === undefined
        ? this.#affinityBy
        : checkFairBy(`pools.${name}.affinityBy`, p.affinityBy);
      if (affinityBy !== null) affinityPools++;
      if (p.affinityWait !== undefined) {
        checkTimer(`pools.${name}.affinityWait`, p.affinityWait);
        // A wait with nothing to wait for would be ignored without a word.
        if (p.affinityWait > 0 && affinityBy === null) {
          throw new TypeError(
            `Invalid option "pools.${name}.affinityWait": it is how long a request waits for its key's worker, and pool "${name}" has no affinityBy`,
          );
        }
      }
      if (fairBy !== null) fairPools++;
      const holdAhead = p.holdAhead === undefined
        ? this.#opts.holdAhead
        : checkHoldAhead(`pools.${name}.holdAhead`, p.holdAhead);
      if (holdAhead && (fairBy !== null || affinityBy !== null)) {
        throw new TypeError(
          `Invalid option "pools.${name}.holdAhead": not with ${
            fairBy !== null ? "fairBy" : "affinityBy"
          } in the same pool (a held request would skip its order)`,
        );
      }
      if (p.maxQueuePerKey !== undefined) {
        checkCount(`pools.${name}.maxQueuePerKey`, p.maxQueuePerKey, 1);
        if (fairBy === null) {
          throw new TypeError(
            `Invalid option "pools.${name}.maxQueuePerKey": it limits each fair-queuing key, and pool "${name}" has no fairBy`,
          );
        }
      }
      if (p.fairShare !== undefined) {
        checkFairShare(`pools.${name}.fairShare`, p.fairShare);
        if (fairBy === null) {
          throw new TypeError(
            `Invalid option "pools.${name}.fairShare": it shares the workers between fair-queuing keys, and pool "${name}" has no fairBy`,
          );
        }
      }
      if (p.fairWeights !== undefined) {
        this.#poolWeights.set(
          name,
          checkWeights(`pools.${name}.fairWeights`, p.fairWeights)!,
        );
        if (fairBy === null) {
          throw new TypeError(
            `Invalid option "pools.${name}.fairWeights": it weighs fair-queuing keys, and pool "${name}" has no fairBy`,
          );
        }
      } else if (fairBy !== null) weightedPools++;
    }
    // Unnamed pools (routes, workers' own) take the hub-wide options.
    if (
      this.#opts.holdAhead &&
      (this.#fairBy !== null || this.#affinityBy !== null)
    ) {
      throw new TypeError(
        `Invalid option "holdAhead": not with ${
          this.#fairBy !== null ? "fairBy" : "affinityBy"
        } (a held request would skip its order)`,
      );
    }
    // A per-key limit where nothing is keyed is a mistake, not a no-op.
    if (
      options.maxQueuePerKey !== undefined && this.#fairBy === null &&
      fairPools === 0
    ) {
      throw new TypeError(
        'Invalid option "maxQueuePerKey": it limits each fair-queuing key, and no pool has fairBy',
      );
    }
    if (
      numbers.affinityWait > 0 && this.#affinityBy === null &&
      affinityPools === 0
    ) {
      throw new TypeError(
        'Invalid option "affinityWait": it is how long a request waits for its key\'s worker, and no pool has affinityBy',
      );
    }
    // Unnamed pools (routes, workers' own) take the hub-wide options.
    if (this.#fairBy !== null) weightedPools++;
    if (this.#fairWeights !== null && weightedPools === 0) {
      throw new TypeError(
        'Invalid option "fairWeights": it weighs fair-queuing keys, and no pool has fairBy (without weights of its own)',
      );
    }
    if (
      options.fairShare !== undefined && this.#fairBy === null &&
      fairPools === 0
    ) {
      throw new TypeError(
        'Invalid option "fairShare": it shares the workers between fair-queuing keys, and no pool has fairBy',
      );
    }
    // Bound, so that `hub.fetch` can be handed over as a fetch handler on
    // its own (`Deno.serve(hub.fetch)`, `export default { fetch: hub.fetch }`).
    this.fetch = this.fetch.bind(this);
    this.#log = quietLog(options.onLog);
    this.#onAccess = options.onAccess;
    for (const r of this.#routes) this.#namedPools.add(r.pool);
    for (const name of Object.keys(this.#poolOptions)) {
      this.#namedPools.add(name);
    }
    this.#pool(DEFAULT_POOL);
    for (const r of this.#routes) this.#pool(r.pool);
  }

  /** A snapshot of the hub's counters and gauges. */
  get stats(): HubStats {
    let queued = 0;
    let oldest = 0;
    let idle = 0;
    const now = performance.now();
    const pools: PoolStats[] = [];
    const workers: WorkerStats[] = [];
    for (const pool of this.#pools.values()) {
      const oldestSince = pool.queue.oldestSince;
      const wait = oldestSince === null ? 0 : now - oldestSince;
      queued += pool.queue.size;
      idle += pool.idle + pool.pinging;
      oldest = Math.max(oldest, wait);
      pools.push({
        name: pool.name,
        queued: pool.queue.size,
        keys: pool.queue.keys,
        oldestWaitMs: wait,
        waiting: pool.waiting,
        slots: pool.slots,
        idle: pool.idle + pool.pinging,
        parked: pool.parked,
        busy: pool.slots - pool.idle - pool.pinging - pool.parked,
        held: pool.hold?.held ?? 0,
        heldTotal: pool.hold?.total ?? 0,
        takeBacks: pool.hold?.takeBacks ?? 0,
        workers: pool.groups.size,
        classes: pool.queue.classes().map((c) => ({
          priority: c.priority,
          queued: c.size,
          oldestWaitMs: c.oldestSince === null ? 0 : now - c.oldestSince,
        })),
        named: this.#namedPools.has(pool.name),
      });
      for (const g of pool.groups.values()) {
        workers.push({
          id: g.key,
          pool: pool.name,
          slots: g.slots,
          busy: g.busy,
          // A copy: a snapshot the caller changes must not change the hub's.
          labels: { ...g.labels },
        });
      }
    }
    return {
      draining: this.#closing,
      queued,
      oldestWaitMs: oldest,
      slots: this.#slots.size,
      idle,
      parked: this.#parked.size,
      busy: this.#slots.size - idle - this.#parked.size,
      responseBuffered: this.#readAhead.budget.held,
      responseSpilled: this.#readAhead.spill?.held ?? 0,
      requestBuffered: this.#uploadAhead?.budget.held ?? 0,
      requestSpilled: this.#uploadAhead?.spill?.held ?? 0,
      webSockets: this.#webSockets,
      ...this.#stats,
      pools,
      workers,
    };
  }

  // The pool's timeouts and body limits, each the hub's unless it has its own.
  #poolLimits(options: PoolOptions): Required<ExchangeLimits> {
    const hub = this.#opts;
    return {
      headTimeout: options.headTimeout ?? hub.headTimeout,
      bodyIdleTimeout: options.bodyIdleTimeout ?? hub.bodyIdleTimeout,
      uploadIdleTimeout: options.uploadIdleTimeout ?? hub.uploadIdleTimeout,
      maxBodySize: options.maxResponseBodySize ?? hub.maxResponseBodySize,
      maxUploadSize: options.maxRequestBodySize ?? hub.maxRequestBodySize,
    };
  }

  #pool(name: string): Pool {
    let pool = this.#pools.get(name);
    if (pool !== undefined) return pool;
    const limits = this.#poolOptions[name] ?? {};
    const queueTimeout = limits.queueTimeout ?? this.#opts.queueTimeout;
    const keyOf = this.#keyFunction(
      limits.fairBy === undefined ? this.#fairBy : limits.fairBy,
      "fairBy",
    );
    const weights = this.#poolWeights.get(name) ?? this.#fairWeights;
    // By time, or weighted turns: a ledger; plain turns: the rotation.
    const byTime = (limits.fairShare ?? this.#fairShare) === "time";
    const ledger = keyOf !== null && (byTime || weights !== null)
      ? new ShareLedger({
        weightOf: weights === null ? undefined : (k) => weights.get(k) ?? 1,
        per: byTime ? "time" : "request",
      })
      : null;
    const affinityOf = this.#keyFunction(
      limits.affinityBy === undefined ? this.#affinityBy : limits.affinityBy,
      "affinityBy",
    );
    const affinityWait = limits.affinityWait ?? this.#opts.affinityWait;
    const priorityStep = limits.priorityStep ?? this.#priorityStep;
    const created: Pool = {
      name,
      queueTimeout,
      limits: this.#poolLimits(limits),
      maxQueue: limits.maxQueue ?? this.#opts.maxQueue,
      keyOf,
      maxQueuePerKey: limits.maxQueuePerKey ?? this.#maxQueuePerKey,
      affinityOf,
      affinityWait,
      waiting: 0,
      waitingKeys: new Map(),
      priorityStep,
      picks: affinityOf !== null && affinityWait > 0 && keyOf === null,
      workersChanged: 0,
      waitersAt: 0,
      ledger,
      hold: (limits.holdAhead ?? this.#opts.holdAhead)
        ? {
          started: new Map(),
          meanMs: -1,
          inOrder: 0,
          held: 0,
          total: 0,
          takeBacks: 0,
        }
        : null,
      groups: new Map(),
      idle: 0,
      pinging: 0,
      parked: 0,
      slots: 0,
      queue: new PriorityQueue<Pending>({
        // The hub sets a request's key before it queues (#rejectIfFull,
        // #enqueue); without fairBy the classes are plain FIFOs.
        keyOf: keyOf === null ? undefined : (p) => p.key ?? "",
        ledger: ledger ?? undefined,
        step: priorityStep,
        timeout: queueTimeout,
        onTimeout: (p) => {
          p.node = null;
          this.#stats.timedOutQueued++;
          this.#fail(
            p,
            "queue-timeout",
            503,
            `request waited ${queueTimeout} ms in the queue of pool "${name}" without a free worker`,
            {
              "retry-after": String(
                Math.max(1, Math.ceil(queueTimeout / 1000)),
              ),
            },
          );
        },
      }),
    };
    this.#pools.set(name, created);
    pool = created;
    return pool;
  }

  // How a pool with this fairBy (or affinityBy, `option`) keys its
  // requests; null for none.
  #keyFunction(
    fairBy: FairBy | null,
    option: "fairBy" | "affinityBy",
  ): ((p: Pending) => string) | null {
    if (fairBy === null) return null;
    if (fairBy === "ip") {
      return (p) => addressKey(this.#consumerAddress(p) ?? "");
    }
    if (typeof fairBy === "string") {
      const field = fairBy.slice("header:".length).toLowerCase();
      return (p) => p.req.headers.get(field) ?? "";
    }
    return (p) => {
      try {
        const key = fairBy(p.req, this.#consumerAddress(p));
        if (typeof key === "string") return key;
        throw new TypeError(`expected a string, got ${typeof key}`);
      } catch (error) {
        // The request still queues: with the others the function failed for.
        this.#log({
          level: "warn",
          msg: `${option} function failed: the request takes the key ""`,
          id: p.id,
          reason: errorText(error),
        });
        return "";
      }
    };
  }

  // The first route the request matches, or null (the default pool).
  #route(hostAsked: string, path: string): Route | null {
    if (this.#routes.length === 0) return null;
    const host = hostAsked.replace(/:[0-9]+$/, "").toLowerCase();
    const q = path.indexOf("?");
    const pathname = routedPath(q < 0 ? path : path.slice(0, q));
    for (const r of this.#routes) {
      if (r.host !== undefined && r.host !== host) continue;
      if (r.pathPrefix !== undefined && !pathname.startsWith(r.pathPrefix)) {
        continue;
      }
      return r;
    }
    return null;
  }

  /**
   * Replaces the worker tokens (see {@linkcode HubOptions.workerTokens}),
   * for rotation without a restart: new handshakes are checked against
   * these. Connections that came with a token no longer listed (or with
   * none, if the hub had no tokens before) are ended: at once when they
   * carry no request, after their request otherwise (a job in progress is
   * never cut). Their workers redial, and must then present a listed token.
   *
   * @param tokens the valid tokens; at least one (an empty list would shut
   *   out every worker, and a hub cannot go back to taking any).
   * @returns how many connections were ended or will end after their
   *   request.
   * @throws {TypeError} when a token is not 8 or more visible ASCII
   *   characters, or the list is empty.
   */
  setWorkerTokens(tokens: readonly string[]): number {
    if (!Array.isArray(tokens) || tokens.length === 0) {
      throw new TypeError(
        "Invalid worker tokens: give at least one (an empty list would refuse every worker)",
      );
    }
    checkTokens(tokens);
    this.#opts.workerTokens = [...tokens];
    let ended = 0;
    for (const slot of [...this.#slots]) {
      // One in a late handshake is checked when its handshake ends.
      if (!this.#slotGroup.has(slot)) continue;
      if (this.#admits(slot.identity)) continue;
      ended++;
      if (slot.state === "busy" && !this.#pinging.has(slot)) {
        if (!this.#withdrawn.has(slot)) {
          this.#withdrawn.add(slot);
          this.#slotGroup.get(slot)!.leaving++;
        }
      } else {
        slot.close(new WorkerLinkError("closed", "its token was withdrawn"));
      }
    }
    // No request waits for a worker that is only finishing its last jobs.
    for (const pool of this.#pools.values()) {
      pool.workersChanged++;
      for (const group of pool.groups.values()) {
        if (group.leaving === group.slots) this.#releaseWaiters(group);
      }
    }
    this.#log({
      level: "info",
      msg: "worker tokens replaced",
      tokens: tokens.length,
      ended,
    });
    return ended;
  }

  // Whether a connection may carry requests under the tokens valid now.
  #admits(identity: WorkerIdentity | null): boolean {
    const tokens = this.#opts.workerTokens;
    if (tokens.length === 0) return true;
    const token = identity === null ? undefined : this.#tokenOf.get(identity);
    return token !== undefined && tokens.includes(token);
  }

  /**
   * Attaches a worker connection: from now on it is one slot that carries one
   * request at a time. The hub owns and eventually closes it. With worker
   * tokens set, the connection must first pass the PTTH handshake.
   *
   * @param conn the connection the worker opened (a `Deno.Conn`, or anything
   *   with `read`, `write` and `close`).
   * @param peer a label for logs, such as the remote address.
   * @param arrived when the connection came (`performance.now()`): the
   *   handshake timeout runs from then, so time spent before this call (a
   *   TLS handshake, say) counts against it. Defaults to now.
   */
  addWorker(
    conn: Connection,
    peer = "worker",
    arrived: number = performance.now(),
  ): void {
    // While draining, workers may still (re)connect to serve the queue.
    // serveHub's shutdown may have closed this one already (its TLS
    // handshake ended as shutdown closed those in progress).
    if (this.#closed) {
      closeQuietly(conn);
      return;
    }
    const setup = this.#accept(conn, peer, arrived).catch((error) => {
      closeQuietly(conn);
      // A connection the hub closed at shutdown fails its setup: not news.
      if (this.#closed) return;
      this.#log({
        level: "warn",
        msg: "worker connection failed during setup",
        worker: peer,
        reason: errorText(error),
      });
    }).finally(() => this.#settingUp.delete(conn));
    this.#settingUp.set(conn, setup);
  }

  async #accept(
    conn: Connection,
    peer: string,
    arrived: number,
  ): Promise<void> {
    // One bound on the whole handshake, from the connection's arrival: a
    // fresh timeout at its first byte (or after TLS) let a slow one take
    // twice as long.
    const until = arrived + this.#opts.handshakeTimeout;
    const reader = new BufferedReader(conn);
    const required = this.#opts.workerTokens.length > 0;
    const host = peerHost(peer);
    // An address whose last connections all proved plain has the next ones
    // taken at once: a plain worker that reconnects for every request (the
    // original POTHEAD's way) would otherwise wait handshakeWait each time.
    const known = !required &&
      (this.#plainPeers.get(host) ?? 0) >= PLAIN_AFTER;
    const wait = required
      ? Math.max(1, until - performance.now())
      : known
      ? 0
      : this.#opts.handshakeWait;
    let identity: WorkerIdentity | null = null;
    let how: Attached = known ? "plain, address known" : "plain";
    if (wait > 0) {
      const first = reader.fill();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const got = await Promise.race([
        first.then((more) => (more ? "data" : "eof"), () => "eof"),
        new Promise<"timeout">((r) =>
          timer = setTimeout(() => r("timeout"), wait)
        ),
      ]);
      clearTimeout(timer);
      if (got === "eof") {
        closeQuietly(conn);
        return;
      }
      if (got === "timeout" && required) {
        this.#refuse(
          conn,
          peer,
          new HandshakeError(401, "Cannot accept worker: no handshake"),
        );
        return;
      }
      if (got === "timeout") {
        how = "plain, after waiting";
        this.#rememberPlain(host);
      }
      if (got === "data") {
        if (startsLikeResponse(reader)) {
          // A worker handing back a connection it no longer wants (the
          // "not started" 408) before the hub used it.
          closeQuietly(conn);
          return;
        }
        identity = await this.#handshake(conn, reader, peer, until);
        if (identity === null) return;
        how = "handshake";
        this.#handshakeFrom(host);
      }
    }
    if (this.#closed) {
      closeQuietly(conn);
      return;
    }
    this.#attach(conn, peer, reader, identity, how);
  }

  // Counts a plain connection from `host`, unless it has also sent a
  // handshake.
  #rememberPlain(host: string): void {
    const seen = this.#plainPeers.get(host) ?? 0;
    if (seen >= 0) this.#notePeer(host, Math.min(seen + 1, PLAIN_AFTER));
  }

  // An address with handshake workers always waits for the handshake, so
  // at most one handshake ever crosses a request there.
  #handshakeFrom(host: string): void {
    this.#notePeer(host, -1);
  }

  // Bounded, oldest forgotten first: the map only saves waits.
  #notePeer(host: string, value: number): void {
    this.#plainPeers.delete(host);
    this.#plainPeers.set(host, value);
    if (this.#plainPeers.size > MAX_PLAIN_PEERS) {
      this.#plainPeers.delete(this.#plainPeers.keys().next().value!);
    }
  }

  // Reads and answers the handshake; refuses it if it is not whole by
  // `until` (performance.now()).
  async #handshake(
    conn: Connection,
    reader: BufferedReader,
    peer: string,
    until: number,
  ): Promise<WorkerIdentity | null> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      const head = await Promise.race([
        readHandshake(reader),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new HandshakeError(
                  408,
                  "Cannot accept worker: handshake too slow",
                ),
              ),
            Math.max(0, until - performance.now()),
          );
        }),
      ]);
      if (head === null) {
        closeQuietly(conn);
        return null;
      }
      const identity = parseHandshake(head);
      if (this.#opts.workerTokens.length > 0) {
        this.#tokenOf.set(
          identity,
          await checkToken(head, this.#opts.workerTokens),
        );
      }
      if (reader.buffered > 0) {
        throw new HandshakeError(
          400,
          "Cannot accept worker: bytes after the handshake",
        );
      }
      await writeAll(
        conn,
        switchingProtocols(identity.protocol, {
          pingInterval: identity.ping ? this.#opts.pingInterval : 0,
          hubId: this.id,
        }),
      );
      this.#log({
        level: "debug",
        msg: "worker handshake accepted",
        worker: identity.id ?? peer,
        pool: identity.pool,
      });
      return identity;
    } catch (error) {
      // Shutdown closed it mid-handshake: nothing to refuse.
      if (this.#closed) {
        closeQuietly(conn);
        return null;
      }
      const e = error instanceof HandshakeError
        ? error
        : new HandshakeError(400, `Cannot accept worker: ${errorText(error)}`);
      this.#refuse(conn, peer, e);
      return null;
    } finally {
      clearTimeout(timer);
    }
  }

  #refuse(conn: Connection, peer: string, error: HandshakeError): void {
    this.#stats.handshakesRefused++;
    // The message never contains the token, only what was wrong.
    if (this.#refusalLog.admit(peerHost(peer))) {
      this.#log({
        level: "warn",
        msg: "worker handshake refused",
        worker: peer,
        status: error.status,
        reason: error.message,
      });
    }
    writeAll(conn, refusal(error)).catch(() => {}).finally(() => {
      closeQuietly(conn);
    });
  }

  #attach(
    conn: Connection,
    peer: string,
    reader: BufferedReader,
    identity: WorkerIdentity | null,
    how: Attached,
  ): void {
    // Its token was withdrawn while it shook hands.
    if (!this.#admits(identity)) {
      this.#log({
        level: "info",
        msg: "worker connection closed: its token was withdrawn",
        peer,
      });
      conn.close();
      return;
    }
    const slot = new WorkerSlot(
      conn,
      peer,
      {
        limits: this.#limits,
        headTimeout: this.#opts.headTimeout,
        bodyIdleTimeout: this.#opts.bodyIdleTimeout,
        uploadIdleTimeout: this.#opts.uploadIdleTimeout,
        maxBodySize: this.#opts.maxResponseBodySize,
        maxUploadSize: this.#opts.maxRequestBodySize,
        smallBody: SMALL_BODY,
        readAhead: this.#readAhead,
        onIdle: (s) => this.#offer(s),
        onTurn: (s) => this.#turn(s),
        onTakeBack: (s) => {
          const p = this.#heldOn.get(s);
          if (p !== undefined) p.pool.hold!.takeBacks++;
        },
        onPark: (s) => this.#park(s),
        parkRenew: this.#opts.pingInterval > 0
          ? {
            every: this.#opts.pingInterval,
            timeout: this.#opts.pingTimeout,
          }
          : undefined,
        onClose: (s, reason) => this.#detach(s, reason),
        onFirstBytes: (s) => this.#lateHandshake(s),
        onContinueSeen: (s, seen, refused) =>
          this.#continueSeen(s, seen, refused),
      },
      reader,
      identity,
    );
    this.#slots.add(slot);
    this.#register(slot, how);
    if (identity?.ping === true) this.#startPinger();
    this.#offer(slot);
  }

  // Pings the connections that have been idle for the ping interval, of
  // workers that answer pings (see _ping.ts).
  #startPinger(): void {
    const interval = this.#opts.pingInterval;
    if (this.#pinger !== undefined || interval <= 0 || this.#closed) return;
    // A quarter of the interval late at most (and at most 1 s).
    const every = Math.max(10, Math.min(1000, interval / 4));
    this.#pinger = setInterval(() => {
      const now = performance.now();
      for (const slot of this.#slots) {
        if (
          slot.state !== "idle" || slot.identity?.ping !== true ||
          now - slot.idleSince < interval
        ) continue;
        const group = this.#slotGroup.get(slot);
        if (group === undefined || !group.idle.delete(slot)) continue;
        const pool = this.#pool(slot.identity.pool);
        pool.idle--;
        pool.pinging++;
        this.#pinging.add(slot);
        this.#stats.pings++;
        // Its ending, if it ends, is counted and logged on detach.
        slot.ping(this.#opts.pingTimeout);
      }
    }, every);
    // Pings alone do not keep a process alive.
    Deno.unrefTimer(this.#pinger);
  }

  #continueSeen(slot: WorkerSlot, seen: boolean, refused = false): void {
    const group = this.#slotGroup.get(slot);
    if (group === undefined) return;
    if (seen) group.answersContinue = true;
    else if (refused) group.answersContinue = false;
    else if (group.answersContinue) return;
    if (group.noContinue === !seen) return;
    group.noContinue = !seen;
    this.#log({
      level: "debug",
      msg: seen
        ? "worker answers 100 Continue; its uploads wait for it"
        : "worker does not answer 100 Continue; its uploads start at once",
      worker: group.key,
    });
  }

  // Books a slot into its pool and worker group.
  #register(slot: WorkerSlot, how: Attached): void {
    const identity = slot.identity;
    const pool = this.#pool(identity?.pool ?? DEFAULT_POOL);
    const key = identity?.id ?? `addr:${peerHost(slot.peer)}`;
    let group = pool.groups.get(key);
    if (group === undefined) {
      group = {
        key,
        hash: hash32(key),
        waiters: null,
        leaving: 0,
        busy: 0,
        sending: 0,
        slots: 0,
        idle: new Set(),
        labels: identity?.labels ?? {},
        noContinue: false,
        answersContinue: false,
      };
      pool.groups.set(key, group);
    }
    // A group made, or one whose connections were all leaving joined by a
    // new one: requests' first workers are worked out afresh.
    pool.workersChanged++;
    group.slots++;
    pool.slots++;
    this.#slotGroup.set(slot, group);
    this.#log({
      level: "debug",
      msg: "worker connection attached",
      worker: key,
      peer: slot.peer,
      pool: pool.name,
      slot: slot.id,
      how,
    });
  }

  // The reverse of #register; returns the group the slot was in.
  #unregister(slot: WorkerSlot): Group | undefined {
    const withdrawn = this.#withdrawn.delete(slot);
    const group = this.#slotGroup.get(slot);
    if (group === undefined) return undefined;
    if (withdrawn) group.leaving--;
    const pool = this.#pool(slot.identity?.pool ?? DEFAULT_POOL);
    this.#slotGroup.delete(slot);
    pool.hold?.started.delete(slot);
    if (group.idle.delete(slot)) pool.idle--;
    if (this.#parked.delete(slot)) pool.parked--;
    if (this.#pinging.delete(slot)) pool.pinging--;
    this.#free(slot, group);
    group.slots--;
    pool.slots--;
    pool.workersChanged++;
    if (group.slots === 0) {
      pool.groups.delete(group.key);
      // Its worker is gone: what waited for it goes elsewhere now, but
      // after a request it gave back with its last connection, which joined
      // before them (see #returned).
      if (group.sending === 0) this.#releaseWaiters(group);
    }
    if (
      pool.slots === 0 && pool.queue.size === 0 &&
      !this.#namedPools.has(pool.name)
    ) {
      // Without tokens anyone can name a pool: made-up names must not pile up.
      this.#pools.delete(pool.name);
    }
    return group;
  }

  #detach(slot: WorkerSlot, reason: unknown): void {
    this.#slots.delete(slot);
    // Taken for plain, but a handshake crossed its first request: the
    // address has handshake workers, so its next connections wait again.
    if (slot.handshakeCrossed) this.#handshakeFrom(peerHost(slot.peer));
    const group = this.#unregister(slot);
    const pool = this.#pools.get(slot.identity?.pool ?? DEFAULT_POOL);
    if (pool !== undefined) this.#strand(pool);
    if (group === undefined) return;
    // A worker silent to a ping is news (gone without a word); any other
    // close is routine.
    const silent = reason instanceof WorkerLinkError &&
      reason.code === "ping-timeout";
    if (silent) this.#stats.pingTimeouts++;
    if (
      reason instanceof WorkerLinkError && reason.code === "consumer-stalled"
    ) {
      // Not the worker's fault, but worth a line: a consumer kept a worker.
      this.#log({
        level: "info",
        msg: "response cut: its consumer stopped reading",
        worker: group.key,
        peer: slot.peer,
        reason: reason.message,
      });
      return;
    }
    this.#log({
      level: silent ? "warn" : "debug",
      msg: silent
        ? "worker connection closed: it did not answer a ping"
        : "worker connection closed",
      worker: group.key,
      peer: slot.peer,
      slot: slot.id,
      served: slot.served,
      reason: errorText(reason),
    });
  }

  // A connection taken for a plain worker spoke first, before it carried
  // any request: a handshake that came after the hub stopped waiting, or
  // the worker handing the connection back. No request can be on it.
  async #lateHandshake(slot: WorkerSlot): Promise<void> {
    this.#unregister(slot);
    if (this.#opts.handshakeWait === 0 || startsLikeResponse(slot.reader)) {
      slot.close(
        new WorkerLinkError("closed", "Worker gave the connection back"),
      );
      return;
    }
    // Timed from its first byte: until then it was a plain worker's idle
    // connection, not a handshake.
    const identity = await this.#handshake(
      slot.conn,
      slot.reader,
      slot.peer,
      performance.now() + this.#opts.handshakeTimeout,
    );
    if (identity === null) {
      slot.close(new WorkerLinkError("closed", "handshake refused"));
      return;
    }
    if (this.#closed || slot.state === "closed") {
      slot.close("hub shut down");
      return;
    }
    if (!this.#admits(identity)) {
      slot.close(new WorkerLinkError("closed", "its token was withdrawn"));
      return;
    }
    slot.adopt(identity);
    this.#handshakeFrom(peerHost(slot.peer));
    this.#register(slot, "late handshake");
    if (identity.ping) this.#startPinger();
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
    const pending = new Pending(
      this.#abandonFn,
      req,
      given !== null && REQUEST_ID.test(given) ? given : null,
      since,
    );
    const promise = new Promise<Response>((r) => pending.resolve = r);
    const remote = info?.remoteAddr as { hostname?: string } | undefined;
    pending.clientIp = remote?.hostname ?? null;
    const hostField = req.headers.get("host");
    const target = requestTarget(req.url, hostField);
    pending.host = target.host;
    pending.path = target.path;
    const route = this.#route(target.host, target.path);
    pending.pool = this.#pool(route?.pool ?? DEFAULT_POOL);
    pending.priority = route?.priority ?? 0;
    if (hostField !== null && !VALID_HOST.test(hostField)) {
      this.#fail(pending, "bad-request", 400, "invalid Host header");
      return promise;
    }
    if (req.method === "CONNECT") {
      // A tunnel would hold a worker connection for as long as the consumer
      // likes; workers are origin servers, and no worker can answer one.
      this.#fail(
        pending,
        "bad-request",
        501,
        "CONNECT is not supported: the hub is a reverse proxy, not a tunnel",
      );
      return promise;
    }
    // The host asked for comes from the target unless it is the Host field
    // (checked above): an absolute-form target, or one without a Host field
    // (HTTP/1.0, where Deno.serve's own address is valid).
    if (target.host !== hostField && !VALID_HOST.test(target.host)) {
      this.#fail(
        pending,
        "bad-request",
        400,
        "invalid authority in the request target",
      );
      return promise;
    }
    if (this.#opts.trustPriority) {
      const asked = req.headers.get(PRIORITY_FIELD);
      if (asked !== null) {
        const priority = /^\s*[+-]?[0-9]{1,4}\s*$/.test(asked)
          ? Number(asked)
          : NaN;
        if (!validPriority(priority)) {
          this.#fail(
            pending,
            "bad-request",
            400,
            `invalid ${PRIORITY_FIELD}: an integer from ${-MAX_PRIORITY} to ${MAX_PRIORITY}`,
          );
          return promise;
        }
        pending.priority = priority;
      }
    }
    if (this.#closing && !this.#servesLate(pending.pool, req)) {
      // Deno.serve's shutdown, which closes idle keep-alive connections, may
      // be held for open WebSockets or uploads (serveHub): a consumer must not keep
      // sending on this connection for the rest of the grace.
      this.#fail(pending, "shutting-down", 503, "hub is shutting down", {
        connection: "close",
      });
      return promise;
    }
    if (this.#opts.webSockets && asksForWebSocket(req)) {
      const problem = webSocketProblem(req);
      if (problem !== null) {
        const [status, message, extra] = problem;
        this.#fail(pending, "bad-request", status, message, extra);
        return promise;
      }
      pending.webSocket = true;
    }
    if (req.body !== null) {
      const declared = req.headers.get("content-length");
      const length = declared !== null && /^[0-9]{1,15}$/.test(declared)
        ? Number(declared)
        : -1;
      pending.contentLength = length;
      const max = pending.pool.limits.maxUploadSize;
      if (length > max) {
        this.#fail(
          pending,
          "too-large",
          413,
          `request body of ${length} bytes is larger than the limit of ${max} bytes`,
        );
        return promise;
      }
      const read = length >= 0 && length <= this.#opts.bufferRequestBody
        ? () =>
          bytesUnlessStalled(
            req.body!,
            pending.pool.limits.uploadIdleTimeout,
          )
        : length < 0 && !req.headers.has("transfer-encoding")
        // Declares no body: over HTTP/1.1 it has none, yet Deno.serve gives
        // it an (empty) stream; over HTTP/2 one may follow.
        ? () => bodyOrNull(req.body!, pending.pool.limits.uploadIdleTimeout)
        : null;
      if (read === null) pending.body = req.body;
      else if (!(await this.#readBody(pending, read))) return promise;
      const ahead = this.#uploadAhead;
      if (
        this.#opts.bufferUploads && ahead !== null &&
        pending.body instanceof ReadableStream
      ) {
        // A request the queue will refuse is refused before its upload.
        if (this.#rejectIfFull(pending)) return promise;
        if (!(await this.#readUploadFirst(pending, ahead))) return promise;
      }
    }
    const pool = pending.pool;
    if (req.signal.aborted) {
      // Gone while its body was read: it must not cost a worker connection.
      this.#gone(pending);
      return promise;
    }
    const slot = this.#takeIdle(pool, pending, true);
    if (slot === null) {
      // It waits for its key's first worker (affinityWait).
      pending.sought = true;
    } else if (slot !== undefined) {
      pending.sought = true;
      this.#dispatch(pending, slot);
    } else if (!this.#rejectIfFull(pending)) {
      pending.sought = true;
      this.#enqueue(pending, false);
    }
    return promise;
  }

  // Answers 503 when the request's pool has no idle slot and a full queue,
  // or 429 when its key (fairBy) has its most requests queued already.
  #rejectIfFull(p: Pending): boolean {
    const pool = p.pool;
    if (pool.idle > 0) return false;
    if (pool.keyOf !== null) {
      const key = p.key ??= pool.keyOf(p);
      if (keyWaiting(pool, key) >= pool.maxQueuePerKey) {
        this.#stats.rejectedKeyFull++;
        // The key is not echoed: it may be another consumer's secret.
        this.#fail(
          p,
          "key-full",
          429,
          `too many requests of this consumer are waiting in the queue of pool "${pool.name}" (at most ${pool.maxQueuePerKey})`,
          { "retry-after": "1" },
        );
        return true;
      }
    }
    if (poolWaiting(pool) < pool.maxQueue) return false;
    this.#stats.rejectedFull++;
    this.#fail(
      p,
      "queue-full",
      503,
      `queue of pool "${pool.name}" is full (${pool.maxQueue} requests waiting)`,
      { "retry-after": "1" },
    );
    return true;
  }

  // Reads (part of) a request's body before it queues; false if the request
  // was answered instead. Counted, so that shutdown waits for it like a
  // queued request, but only until its grace ends.
  async #readBody(
    p: Pending,
    read: () => Promise<Uint8Array | ReadableStream<Uint8Array> | null>,
  ): Promise<boolean> {
    this.#reading++;
    try {
      const body = await this.#whenClosed.race(read());
      if (body !== undefined && !this.#closed) {
        p.body = body;
        return true;
      }
      this.#fail(p, "shutting-down", 503, "hub is shutting down");
    } catch (error) {
      this.#bodyFailed(p, error);
    } finally {
      this.#reading--;
    }
    return false;
  }

  // Reads a streamed upload ahead before its request queues (bufferUploads),
  // until it has all of it or no more room; false if the request was
  // answered instead. No byte for the upload idle timeout is a 408, as for
  // a small body.
  async #readUploadFirst(
    p: Pending,
    options: ReadAheadOptions,
  ): Promise<boolean> {
    this.#reading++;
    p.uploading = true;
    p.uploadAt = performance.now();
    const paused = Promise.withResolvers<void>();
    const stop = watchStall(
      p.pool.limits.uploadIdleTimeout,
      () => p.uploadAt,
      (error) => {
        if (!p.uploading) return;
        p.uploading = false;
        this.#bodyFailed(p, error);
        paused.resolve();
      },
    );
    try {
      this.#readUploadAhead(p, options, paused.resolve);
      await this.#whenClosed.race(paused.promise);
      // Answered meanwhile: failed, too large, stalled or gone.
      if (!p.uploading) return false;
      p.uploading = false;
      if (this.#closed) {
        this.#fail(p, "shutting-down", 503, "hub is shutting down");
        return false;
      }
      // It queues now, behind uploads read before it, and neither its queue
      // timeout nor its queue time counts the upload's time.
      p.queuedSince = performance.now();
      return true;
    } finally {
      stop();
      this.#reading--;
    }
  }

  // Answers a request whose body failed before any worker had it.
  #bodyFailed(p: Pending, error: unknown): void {
    if (this.#closing) {
      this.#fail(p, "shutting-down", 503, "hub is shutting down");
    } else if (p.req.signal.aborted) this.#gone(p);
    else if (error instanceof UploadStalled) {
      this.#fail(p, "upload-timeout", 408, error.message);
    } else if (consumerGone(error)) {
      // Gone, or it only stopped sending (a half-close looks the same):
      // abandoned, but answered in case it still reads.
      this.#stats.abandoned++;
      this.#fail(
        p,
        "abandoned",
        400,
        "the request body ended early: the consumer stopped sending it",
      );
    } else {
      this.#fail(
        p,
        "bad-request",
        400,
        `cannot read request body: ${errorText(error)}`,
      );
    }
  }

  // Reads a queued upload ahead (requestBuffer). Whatever a queued upload's
  // read finds wrong (the consumer left, too large, a malformed chunk) is
  // answered at once and the request leaves the queue; once a worker has
  // it, it is answered when that worker gives it back or fails taking it.
  #readUploadAhead(
    p: Pending,
    options: ReadAheadOptions,
    onPause?: () => void,
  ): void {
    const reader = (p.body as ReadableStream<Uint8Array>).getReader();
    const max = p.pool.limits.maxUploadSize;
    let total = 0;
    // Takes the request out of the queue, or out of reading before it
    // queues; false if it is in neither (a worker has it, or it is settled).
    const unqueue = () => {
      if (p.uploading) {
        p.uploading = false;
        return true;
      }
      if (p.node === null || !p.pool.queue.delete(p.node)) return false;
      p.node = null;
      return true;
    };
    const read = async () => {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (error) {
        if (unqueue()) this.#bodyFailed(p, error);
        else p.uploadFailed = { error };
        throw error;
      }
      if (chunk.done) return null;
      p.uploadAt = performance.now();
      total += chunk.value.length;
      if (total > max) {
        p.tooLarge = true;
        if (unqueue()) this.#tooLarge(p);
      }
      return chunk.value;
    };
    const control: ReadAheadControl = { onPause };
    const stream = readAheadStream(read, options, (reason) => {
      reader.cancel(reason).catch(() => {});
    }, control);
    p.body = stream;
    p.upload = { stream, control };
    if (p.out !== null) p.out.body = stream;
  }

  #tooLarge(p: Pending): void {
    this.#fail(
      p,
      "too-large",
      413,
      `request body is larger than the limit of ${p.pool.limits.maxUploadSize} bytes`,
    );
  }

  // The consumer left: counted, and its request settled (nothing is sent).
  #gone(p: Pending, worker: string | null = null): void {
    this.#stats.abandoned++;
    this.#fail(p, "abandoned", 499, "consumer went away", undefined, worker);
  }

  #abandon(p: Pending): void {
    if (p.waitingFor !== null) {
      this.#unwait(p);
      this.#gone(p);
    } else if (p.node !== null && p.pool.queue.delete(p.node)) {
      p.node = null;
      this.#gone(p);
    }
  }

  // The request as it goes to a worker; built at dispatch (or just before,
  // for the queue head) so that queued requests hold only the consumer's
  // Request.
  #outgoing(p: Pending): OutgoingRequest {
    if (p.out !== null) return p.out;
    let headers = forwardRequestHeaders(p.req.headers, {
      clientIp: p.clientIp,
      proto: this.#scheme ??
        (p.req.url.slice(0, 6).toLowerCase() === "https:" ? "https" : "http"),
      host: p.host,
      requestId: p.id,
      trustForwarded: this.#trustsForwarded(p),
      appendForwarded: this.#forwardedStandard,
    });
    if (p.webSocket) {
      // Messages cross the hub whole, so no extension (compression) is
      // offered to the worker; the consumer gets none either.
      headers = headers.filter(([name]) => name !== "sec-websocket-extensions");
      headers.push(["connection", "Upgrade"], ["upgrade", "websocket"]);
    }
    // Behind trusted proxies the consumer is not the peer the hub appended
    // to X-Forwarded-For: say who it is, for a handler's info.remoteAddr.
    const client = this.#consumerAddress(p);
    if (client !== null && client !== p.clientIp) {
      headers.push([CLIENT_HEADER, client]);
    }
    return p.out = {
      method: p.req.method,
      target: p.path,
      headers,
      body: p.body,
      contentLength: p.contentLength,
      upgrade: p.webSocket,
      limits: p.pool.limits,
    };
  }

  /**
   * Drains the hub: new requests get 503 at once; queued requests still go
   * to workers as slots free up; requests in progress may finish, and open
   * WebSockets may end by themselves. After `grace` milliseconds, requests
   * still queued are answered 503, WebSockets still open are closed with
   * 1001 on both sides, and every worker connection is closed (cutting what
   * is still in progress). Responses read ahead of slow consumers (see
   * {@linkcode HubOptions.responseBuffer}) go on from memory or disk until
   * the grace ends, and are cut then; the promise resolves when nothing is
   * left.
   *
   * With `handOver` (another hub has taken the ports over, see
   * {@linkcode ServeHubOptions.reusePort}), open WebSockets are closed with
   * 1001 at once, and each worker connection is closed as soon as it is
   * free while its pool has nothing queued, so that its worker dials the
   * other hub instead of idling here until the drain ends. A request that
   * still arrives is served while a connection of its pool is busy here,
   * and gets the 503 otherwise; so does what a pool left with no worker
   * connection here still has queued, at once.
   *
   * Called again, it resolves when the first call's shutdown is done (never
   * before, even after the grace), and only shortens the grace: the drain
   * ends at the earliest end any call gave it. A call with `handOver` before
   * the grace ends starts the hand-over if the first did not.
   */
  async shutdown(
    grace = 30_000,
    options: { handOver?: boolean } = {},
  ): Promise<void> {
    if (!this.#closed) {
      this.#closing = true;
      this.#drainEnd = Math.min(this.#drainEnd, performance.now() + grace);
      // Nothing waits for a worker of its choice while the hub drains.
      for (const pool of this.#pools.values()) {
        for (const group of pool.groups.values()) this.#releaseWaiters(group);
      }
      if (options.handOver && !this.#handingOver) {
        this.#handingOver = true;
        this.#goingAway.abort();
        for (const slot of [...this.#slots]) {
          if (!this.#busy.has(slot)) this.#handBack(slot);
        }
        for (const pool of this.#pools.values()) this.#strand(pool);
      }
    }
    await (this.#shutting ??= this.#drain());
  }

  // shutdown()'s one run: the drain until #drainEnd, then the close.
  async #drain(): Promise<void> {
    const queued = () => {
      let n = 0;
      for (const pool of this.#pools.values()) n += pool.queue.size;
      return n;
    };
    const sleep = () => new Promise((r) => setTimeout(r, 20));
    while (
      (queued() > 0 || this.#busy.size > 0 || this.#reading > 0 ||
        this.#webSockets > 0) &&
      performance.now() < this.#drainEnd
    ) await sleep();
    // The grace is over: what still waits in the queue is answered now,
    // and no slot that frees takes anything more.
    this.#closed = true;
    this.#whenClosed.open();
    for (const pool of this.#pools.values()) {
      for (const p of pool.queue.drain()) {
        p.node = null;
        this.#fail(p, "shutting-down", 503, "hub is shutting down");
      }
    }
    // A WebSocket session is work in progress like any request: it had the
    // grace to end. Those still open hear 1001 on both sides now; their
    // close handshakes get a moment before the worker connections close.
    this.#goingAway.abort();
    const closing = performance.now() + WEBSOCKET_CLOSE_WAIT;
    while (this.#webSockets > 0 && performance.now() < closing) await sleep();
    for (const slot of [...this.#slots]) slot.close("hub shut down");
    // Connections still in their handshake would otherwise linger until
    // its timeout (a token check in progress, a worker slow to send it).
    await closeAndSettle(this.#settingUp);
    // Responses read ahead of slow consumers (responseBuffer) go on from
    // memory or disk for the rest of the grace; then they are cut.
    const held = () =>
      this.#readAhead.budget.held + (this.#readAhead.spill?.held ?? 0);
    while (held() > 0 && performance.now() < this.#drainEnd) await sleep();
    this.#cutHeld.abort(new Error("hub shut down before the consumer read it"));
    this.#stopSweeper();
    clearInterval(this.#pinger);
    this.#pinger = undefined;
    this.#refusalLog.close();
  }

  // An idle slot for `p` (undefined: none idle). With `mayWait`, a request
  // whose key's first worker is busy while others idle may instead wait
  // for it (affinityWait): then null, and it is in that worker's waiters.
  // `count`: affinity hits and misses are counted here.
  #takeIdle(
    pool: Pool,
    p?: Pending,
    mayWait = false,
    count = true,
  ): WorkerSlot | null | undefined {
    if (pool.idle === 0) return undefined;
    let best: Group | undefined;
    if (p !== undefined && pool.affinityOf !== null) {
      // Rendezvous (highest random weight) hashing: each worker scores the
      // key, and the idle one scoring highest takes it. A request without
      // a key (the key "", as when its header is missing) has nothing to
      // keep warm: rather than pile onto the worker "" ranks first, it
      // takes the least loaded, as without affinity, and is not counted.
      const first = this.#firstGroup(pool, p);
      if (first !== null) {
        let bestScore = -1;
        for (const g of pool.groups.values()) {
          if (g.idle.size === 0) continue;
          const score = mix32(p.affinity ^ g.hash);
          if (score > bestScore) {
            best = g;
            bestScore = score;
          }
        }
      }
      if (best === first) {
        if (count) this.#stats.affinityHits++;
      } else if (best !== undefined) {
        if (mayWait && this.#mayWait(pool, p)) {
          this.#wait(p, first!);
          return null;
        }
        if (count) this.#stats.affinityMisses++;
      }
    }
    // Otherwise the worker with the fewest requests in progress, so slots
    // of several workers share the load evenly.
    if (best === undefined) {
      for (const g of pool.groups.values()) {
        if (g.idle.size > 0 && (best === undefined || g.busy < best.busy)) {
          best = g;
          if (g.busy === 0) break;
        }
      }
    }
    if (best === undefined) return undefined;
    for (const slot of best.idle) {
      best.idle.delete(slot);
      pool.idle--;
      return slot;
    }
    return undefined;
  }

  // Whether `p` may wait for its key's first worker: the pool waits, the
  // hub is not draining, and the waiting requests, counted with the queue,
  // leave room under maxQueue (and maxQueuePerKey for its key).
  #mayWait(pool: Pool, p: Pending): boolean {
    if (pool.affinityWait === 0 || this.#closing) return false;
    if (poolWaiting(pool) >= pool.maxQueue) return false;
    if (pool.keyOf === null) return true;
    return keyWaiting(pool, p.key ??= pool.keyOf(p)) < pool.maxQueuePerKey;
  }

  // `p` found idle slots but its key's first worker busy: it waits for that
  // worker's next free slot (see #offer), up to the pool's affinityWait.
  #wait(p: Pending, group: Group): void {
    const pool = p.pool;
    p.waitingFor = group;
    // Ordered as the pool's queue orders, so that #offer serves the waiter
    // the queue would serve first; no timeout: each has its own timer.
    group.waiters ??= this.#waiters(pool);
    p.waitNode = group.waiters.push(p, p.queuedSince, p.priority);
    pool.waiting++;
    if (pool.keyOf !== null) {
      const key = p.key!;
      pool.waitingKeys.set(key, (pool.waitingKeys.get(key) ?? 0) + 1);
    }
    this.#stats.affinityWaits++;
    // The queue timeout bounds the wait too, counted from the request's
    // arrival: then it takes an idle slot after all, or queues and times out.
    let wait = pool.affinityWait;
    if (pool.queueTimeout > 0) {
      const left = pool.queueTimeout - (performance.now() - p.queuedSince);
      wait = Math.max(0, Math.min(wait, left));
    }
    // (At most MAX_TIMER_MS: affinityWait is checked against it.)
    p.waitTimer = setTimeout(() => this.#endWait(p), wait);
    this.#watch(p);
  }

  // A worker's waiters, ordered as the pool's queue orders, so that #offer
  // serves the waiter the queue would serve first; no timeout: each waiter
  // has its own timer.
  #waiters(pool: Pool): PriorityQueue<Pending> {
    return new PriorityQueue<Pending>({
      timeout: 0,
      onTimeout: () => {},
      step: pool.priorityStep,
    });
  }

  // Takes `p` out of its worker's waiters.
  #unwait(p: Pending): void {
    const group = p.waitingFor;
    if (group === null) return;
    p.waitingFor = null;
    clearTimeout(p.waitTimer);
    group.waiters!.delete(p.waitNode!);
    p.waitNode = null;
    const pool = p.pool;
    pool.waiting--;
    if (pool.keyOf !== null) {
      const key = p.key!;
      const n = pool.waitingKeys.get(key)! - 1;
      if (n === 0) pool.waitingKeys.delete(key);
      else pool.waitingKeys.set(key, n);
    }
  }

  // Its wait ran out (or its worker left or its token was withdrawn, or the
  // hub began shutting down): counted as a miss, it takes the idle slot its
  // key ranks highest, else its place in the queue, by its arrival.
  #endWait(p: Pending, timedOut = true): void {
    this.#unwait(p);
    if (timedOut) this.#stats.affinityWaitTimeouts++;
    this.#stats.affinityMisses++;
    if ((this.#closing && p.webSocket) || this.#closed) {
      // As for a queued one: no worker connection spent on a WebSocket the
      // hub would close at once. Past the grace nothing is queued any more:
      // a worker's waiters let go after the request its last connection
      // gave back (see #returned) may come after the queue was emptied.
      this.#fail(p, "shutting-down", 503, "hub is shutting down");
      return;
    }
    const slot = this.#takeIdle(p.pool, p, false, false);
    if (slot) this.#dispatch(p, slot);
    else this.#enqueue(p, true);
  }

  // Workers came or went while requests waited: each waits from now on for
  // its key's first worker as of now (a worker that joined may rank first),
  // with what is left of its wait. Its place among that worker's waiters
  // is by its arrival, as in the queue.
  #rehome(pool: Pool): void {
    pool.waitersAt = pool.workersChanged;
    const all: Pending[] = [];
    for (const group of pool.groups.values()) {
      if (group.waiters !== null) all.push(...group.waiters.drain());
    }
    for (const p of all) {
      const first = this.#firstGroup(pool, p) ?? p.waitingFor!;
      first.waiters ??= this.#waiters(pool);
      p.waitNode = first.waiters.push(p, p.queuedSince, p.priority);
      p.waitingFor = first;
    }
  }

  // Releases every request waiting for `group`'s worker (see #endWait).
  #releaseWaiters(group: Group): void {
    const waiters = group.waiters;
    if (waiters === null) return;
    for (let head = waiters.head; head !== null; head = waiters.head) {
      this.#endWait(head.value, false);
    }
  }

  // A request that is not being served is answered when its consumer leaves.
  #watch(p: Pending): void {
    if (!p.watching) {
      p.watching = true;
      p.req.signal.addEventListener("abort", p, { once: true });
      if (p.req.signal.aborted) this.#abandon(p);
    }
  }

  #enqueue(p: Pending, front: boolean): void {
    const ahead = this.#uploadAhead;
    if (
      ahead !== null && p.upload === null &&
      p.body instanceof ReadableStream && !p.body.locked
    ) this.#readUploadAhead(p, ahead);
    const queue = p.pool.queue;
    const since = p.queuedSince;
    // A retry of a request that went to an idle worker at once.
    if (p.pool.keyOf !== null) p.key ??= p.pool.keyOf(p);
    p.node = front
      ? queue.unshift(p, since, p.priority)
      : queue.push(p, since, p.priority);
    if (p.node === queue.head) this.#prepareHead(p.pool);
    // A consumer that leaves while queued never reaches a worker.
    this.#watch(p);
    if (p.pool.hold !== null) {
      this.#holdAhead(p.pool);
      this.#passHeld(p);
    }
    // Handing over, the last connection of its pool may have gone (while
    // its body was read, or the one that declined it).
    this.#strand(p.pool);
  }

  #unwatch(p: Pending): void {
    if (p.watching) {
      p.watching = false;
      p.req.signal.removeEventListener("abort", p);
    }
  }

  // Answers with the hub's own error response and records it.
  #fail(
    p: Pending,
    outcome: Outcome,
    status: number,
    message: string,
    extra?: Record<string, string>,
    worker: string | null = null,
  ): void {
    this.#unwatch(p);
    const now = performance.now();
    if (p.workerMs < 0) p.queueMs = p.sought ? now - p.queuedSince : -1;
    this.#record(p, status, outcome, now, 0, worker);
    p.resolve(errorResponse(status, message, p.id, extra));
  }

  #record(
    p: Pending,
    status: number,
    outcome: Outcome,
    now: number,
    bytesOut: number,
    worker: string | null,
    bytesIn?: number,
  ): void {
    // Settled: what was read ahead and not sent goes.
    this.#dropReadAhead(p);
    const onAccess = this.#onAccess;
    if (onAccess === undefined) return;
    const body = p.body;
    // A throw here would leave the consumer without its response (this
    // runs in the response's path) and escape as an unhandled rejection.
    try {
      const record: AccessRecord = {
        id: p.id,
        pool: p.pool.name,
        method: p.req.method,
        path: p.path,
        status,
        outcome,
        queueMs: p.queueMs,
        workerMs: p.workerMs,
        totalMs: now - p.since,
        bytesIn: bytesIn ??
          (body instanceof Uint8Array
            ? body.length
            : body === null || body === undefined
            ? 0
            : p.contentLength),
        bytesOut,
        worker,
        // Counted when resent, as stats.retries: a request put back that then
        // timed out in the queue was retried without a second attempt.
        retries: p.resent,
        priority: p.priority,
        client: this.#consumerAddress(p),
      };
      if (p.held) record.held = true;
      onAccess(record);
    } catch (error) {
      this.#log({
        level: "error",
        msg: "onAccess failed",
        reason: errorText(error),
      });
    }
  }

  // Whether a request's X-Forwarded-* fields are kept: from every peer with
  // trustForwarded, from the trusted proxies with trustedProxies.
  #trustsForwarded(p: Pending): boolean {
    if (this.#trustedProxies === null) return this.#opts.trustForwarded;
    return p.clientIp !== null && inRanges(p.clientIp, this.#trustedProxies);
  }

  // The consumer's address: the peer, or behind trusted proxies the address
  // the first of them saw (with trustForwarded, the last one in
  // X-Forwarded-For, or in Forwarded with forwardedField "forwarded"; those
  // before it are the consumer's word). The "ip" key is made of it by
  // addressKey (an IPv6 /64 is one consumer).
  #consumerAddress(p: Pending): string | null {
    if (p.client !== undefined) return p.client;
    if (this.#trustedProxies === null && !this.#opts.trustForwarded) {
      return p.client = p.clientIp;
    }
    const standard = this.#forwardedStandard;
    const field = p.req.headers.get(
      standard ? "forwarded" : "x-forwarded-for",
    );
    let client = p.clientIp;
    if (this.#trustedProxies !== null) {
      client = standard
        ? forwardedFieldClient(p.clientIp, field, this.#trustedProxies)
        : forwardedClient(p.clientIp, field, this.#trustedProxies);
    } else if (field !== null) {
      // Only an address: not "unknown" or other text, which would reach a
      // handler's info.remoteAddr.
      let address: string | null;
      if (standard) address = lastForwardedAddress(field);
      else {
        const last = lastForwardedFor(field);
        address = last === null ? null : forwardedAddress(last);
      }
      if (address !== null) client = address;
    }
    return p.client = client;
  }

  // Ends a request's upload read-ahead unless a worker connection is
  // sending it (that connection ends it itself).
  #dropReadAhead(p: Pending): void {
    const stream = p.upload?.stream;
    p.upload = null;
    if (stream !== undefined && !stream.locked) stream.cancel().catch(() => {});
  }

  // A busy slot is no longer (it is free again, parked or gone).
  #free(slot: WorkerSlot, group: Group): void {
    if (!this.#busy.delete(slot)) return;
    group.busy--;
    if (this.#charges.size > 0) this.#settle(slot);
  }

  // Fair queuing by time: the time a slot was busy with a request is
  // charged to the request's key.
  #settle(slot: WorkerSlot): void {
    const charge = this.#charges.get(slot);
    if (charge === undefined) return;
    this.#charges.delete(slot);
    const { ledger, key } = charge;
    ledger.finish(key, charge.estimate, performance.now() - charge.since);
    ledger.release(key);
  }

  // The worker parked a slot: it carries nothing until the worker offers it.
  #park(slot: WorkerSlot): void {
    const group = this.#slotGroup.get(slot);
    if (group === undefined || this.#parked.has(slot)) return;
    // Its token was withdrawn during the request it answered or declined:
    // parked, it would stay for as long as its worker is busy elsewhere.
    if (this.#withdrawn.has(slot)) {
      slot.close(new WorkerLinkError("closed", "its token was withdrawn"));
      return;
    }
    this.#free(slot, group);
    const pool = this.#pool(slot.identity?.pool ?? DEFAULT_POOL);
    if (pool.hold !== null) this.#ended(pool, slot);
    if (this.#pinging.delete(slot)) pool.pinging--;
    this.#parked.add(slot);
    pool.parked++;
    if (this.#handingOver) this.#handBack(slot);
  }

  // Handing over, a request that still reaches this hub (on a connection
  // it had accepted before it stopped listening) is served while its pool
  // has a worker connection here that will take it: one busy now frees
  // into a queue that is not empty, so it is not given back first.
  #servesLate(pool: Pool, req: Request): boolean {
    return this.#handingOver && !this.#closed &&
      pool.slots - pool.parked > 0 &&
      !(this.#opts.webSockets && asksForWebSocket(req));
  }

  // While handing over: a free connection whose pool has nothing queued
  // goes back to its worker (closed), which dials the other hub. Returns
  // whether it did.
  #handBack(slot: WorkerSlot): boolean {
    const pool = this.#pool(slot.identity?.pool ?? DEFAULT_POOL);
    if (pool.queue.size > 0) return false;
    slot.close("hub handed over");
    return true;
  }

  // Handing over, no worker connection joins this hub any more: a pool
  // with none left here answers what it has queued with 503 at once (as a
  // request that arrives late), instead of holding it to its queue
  // timeout or the end of the grace while the other hub has the workers.
  #strand(pool: Pool): void {
    if (!this.#handingOver || this.#closed || pool.slots > 0) return;
    if (pool.queue.size === 0) return;
    for (const p of pool.queue.drain()) {
      p.node = null;
      this.#fail(p, "shutting-down", 503, "hub is shutting down", {
        connection: "close",
      });
    }
  }

  // A slot is free: give it the head of its pool's queue, or keep it idle.
  #offer(slot: WorkerSlot): void {
    const group = this.#slotGroup.get(slot);
    if (group === undefined) return;
    if (this.#withdrawn.has(slot)) {
      slot.close(new WorkerLinkError("closed", "its token was withdrawn"));
      return;
    }
    this.#free(slot, group);
    const pool = this.#pool(slot.identity?.pool ?? DEFAULT_POOL);
    if (pool.hold !== null) this.#ended(pool, slot);
    if (this.#parked.delete(slot)) pool.parked--;
    if (this.#pinging.delete(slot)) pool.pinging--;
    if (pool.waiting > 0 && pool.waitersAt !== pool.workersChanged) {
      this.#rehome(pool);
    }
    const waiter = group.waiters?.head?.value ?? null;
    // An idle connection is watched only if it is going to wait.
    slot.idle(this.#closed || (pool.queue.size === 0 && waiter === null));
    if (slot.state !== "idle") return;
    if (this.#closed) {
      slot.close("hub shut down");
      return;
    }
    const head = pool.queue.head;
    // What the queue gives this slot: its head, or with picks (see #pick)
    // maybe a later request of this worker's keys.
    const next = head !== null && pool.picks
      ? this.#pick(pool, group, head)
      : head;
    if (waiter !== null && (next === null || !goesBefore(pool, next, waiter))) {
      // It waited for this worker: it goes unless the queue holds a request
      // it would serve first.
      this.#unwait(waiter);
      this.#stats.affinityHits++;
      this.#dispatch(waiter, slot);
      return;
    }
    const before = next === null ? null : this.#waitsBefore(pool, group, next);
    if (before !== null) {
      this.#unwait(before);
      this.#stats.affinityMisses++;
      this.#dispatch(before, slot);
      return;
    }
    let node = next;
    if (node === head) {
      // Shifted, not deleted: a fair queue moves its turns on a shift.
      pool.queue.shift();
    } else if (node !== null) {
      pool.queue.delete(node);
      this.#stats.affinityPicks++;
    }
    // While the hub shuts down a WebSocket would open only to be closed by
    // the hub: its handshake gets 503 without costing a worker anything.
    while (node !== null && this.#closing && node.value.webSocket) {
      node.value.node = null;
      this.#fail(node.value, "shutting-down", 503, "hub is shutting down");
      node = pool.queue.shift();
    }
    if (node === null) {
      // Handing over, nothing is left for it here (what waited, if
      // anything, were handshakes, answered above).
      if (this.#handingOver && this.#handBack(slot)) return;
      group.idle.add(slot);
      pool.idle++;
      // Idle with nothing to do while a request is held elsewhere.
      if (pool.hold !== null && pool.hold.held > 0) this.#takeBack(pool);
      return;
    }
    node.value.node = null;
    this.#dispatch(node.value, slot);
    this.#prepareHead(pool);
  }

  // The request the queue gives `group`'s freed slot, `node`, goes to a
  // worker its key does not rank first, while requests wait (outside the
  // queue) for the worker it does: the first of those, if it goes before
  // `node` in the queue's order, takes the slot instead, and `node` keeps
  // its place. Either way the key starts cold here; so the older one does.
  #waitsBefore(
    pool: Pool,
    group: Group,
    node: QueueNode<Pending>,
  ): Pending | null {
    if (pool.waiting === 0) return null;
    const first = this.#firstGroup(pool, node.value);
    if (first === null || first === group) return null;
    const waiter = first.waiters?.head?.value ?? null;
    if (waiter === null || goesBefore(pool, node, waiter)) return null;
    return waiter;
  }

  // With affinityWait, a freed slot may take, instead of the head of the
  // queue, the oldest of the first PICK_WINDOW requests of the head's class
  // whose key ranks its worker first (or that has no key), so that under a
  // backlog, too, each worker keeps to its keys. A head is passed over so
  // for at most affinityWait from the first time a slot could have taken
  // it, and a retry (put back after a decline or a failure) not at all.
  // Not in a fair pool, whose turns a request taken out of order would
  // upset. Returns the node, still queued.
  #pick(
    pool: Pool,
    group: Group,
    head: QueueNode<Pending>,
  ): QueueNode<Pending> {
    const first = head.value;
    if (first.attempts > 0) return head;
    const now = performance.now();
    if (first.headAt < 0) first.headAt = now;
    if (now - first.headAt >= pool.affinityWait) return head;
    // The window is the head's class: the nodes after it are of it.
    let node: QueueNode<Pending> | null = head;
    for (let i = 0; node !== null && i < PICK_WINDOW; i++) {
      const top = this.#firstGroup(pool, node.value);
      if (top === group || top === null) return node;
      node = node.next;
    }
    return head;
  }

  // The worker `p`'s key ranks first (null: it has no key), as of the
  // pool's current workers; a worker whose every connection is leaving
  // (its token withdrawn) ranks no key. Kept on the request until a worker
  // comes or goes.
  #firstGroup(pool: Pool, p: Pending): Group | null {
    if (p.affinity === -1) {
      const key = pool.affinityOf!(p);
      p.affinity = key === "" ? -2 : hash32(key);
    }
    if (p.affinity < 0) return null;
    if (p.firstOf === pool.workersChanged && p.first !== null) return p.first;
    let top = -1;
    let first: Group | null = null;
    for (const g of pool.groups.values()) {
      if (g.leaving === g.slots) continue;
      const score = mix32(p.affinity ^ g.hash);
      if (score > top) {
        top = score;
        first = g;
      }
    }
    p.first = first;
    p.firstOf = pool.workersChanged;
    return first;
  }

  // Encodes the request at the head of the queue ahead of time, so the next
  // slot to free sends it without building it first. Only the head: queued
  // requests otherwise hold nothing but the consumer's Request (a former
  // head that a higher class overtook keeps what was encoded for it).
  #prepareHead(pool: Pool): void {
    const head = pool.queue.head;
    if (head !== null) requestLines(this.#outgoing(head.value));
  }

  // Sends `p` down `slot`: idle, or with `held` busy, behind the request in
  // progress there (see #holdAhead).
  #dispatch(p: Pending, slot: WorkerSlot, held = false): void {
    const group = this.#slotGroup.get(slot)!;
    if (!held) {
      this.#busy.add(slot);
      group.busy++;
      this.#startSweeper();
    }
    p.attempts++;
    const sentAt = performance.now();
    const hold = p.pool.hold;
    if (hold !== null) {
      p.held = held;
      // (A WebSocket's slot is not a job that ends in any order.)
      if (!held) {
        if (!p.webSocket) {
          hold.started.delete(slot);
          hold.started.set(slot, sentAt);
        }
      } else {
        hold.held++;
        hold.total++;
        this.#heldOn.set(slot, p);
      }
    }
    const ledger = p.pool.ledger;
    if (ledger !== null) {
      const key = p.key ??= p.pool.keyOf!(p);
      ledger.hold(key);
      this.#settle(slot);
      this.#charges.set(slot, {
        ledger,
        key,
        estimate: ledger.start(key),
        since: sentAt,
      });
    }
    p.queueMs = sentAt - p.queuedSince;
    if (p.upload !== null) this.#wholeUpload(p);
    const out = this.#outgoing(p);
    out.extraHeaders = held
      ? [[QUEUE_TIME_HEADER, p.queueMs.toFixed(1)], [HOLD_FIELD, "1"]]
      : [[QUEUE_TIME_HEADER, p.queueMs.toFixed(1)]];
    if (out.body instanceof ReadableStream) {
      const expect = !group.noContinue;
      if ((out.expectContinue ?? true) !== expect) {
        out.expectContinue = expect;
        out.lines = undefined; // the cached head has the other framing
      }
    }
    const worker = group.key;
    group.sending++;
    const onEnd = (
      status: number,
      bytes: number,
      error?: unknown,
      cancelled?: boolean,
    ) => {
      if (p.workerMs < 0) p.workerMs = performance.now() - sentAt;
      // A body cut by the worker (or a timeout) failed; one the consumer
      // stopped reading (abandoned: the worker did nothing wrong), or the
      // end of the shutdown grace cut, did not.
      const consumerLeft = cancelled ||
        (error instanceof WorkerLinkError &&
          (error.code === "aborted" || error.code === "upload-failed" ||
            error.code === "consumer-stalled"));
      const outcome: Outcome = error === undefined
        ? "ok"
        : consumerLeft && !this.#closed
        ? "abandoned"
        : "body-error";
      if (outcome === "abandoned") this.#stats.abandoned++;
      if (error !== undefined && !consumerLeft && !this.#closed) {
        this.#stats.failed++;
        this.#log({
          level: "warn",
          msg: "response body cut",
          id: p.id,
          worker,
          bytes,
          reason: errorText(error),
        });
      }
      this.#record(p, status, outcome, performance.now(), bytes, worker);
    };
    const sent = held
      ? slot.hold(out, p.req.signal, onEnd)
      : slot.send(out, p.req.signal, onEnd);
    sent.then((res) => {
      this.#returned(group);
      // An upload the worker had not begun to take when it answered never
      // will be sent, however long the answer streams.
      this.#dropReadAhead(p);
      if (p.workerMs < 0) p.workerMs = performance.now() - sentAt;
      this.#unwatch(p);
      if (res.upgraded) {
        this.#tunnel(p, slot, res, worker);
        return;
      }
      this.#stats.answered++;
      p.resolve(this.#toResponse(p, res));
    }, (error) => {
      // Given back before its turn (a held request's turn: #turn).
      if (held && this.#heldOn.get(slot) === p) {
        this.#heldOn.delete(slot);
        hold!.held--;
      }
      try {
        this.#failed(p, group, error);
      } finally {
        this.#returned(group);
      }
    });
    // A busy slot more: one may be held behind it.
    if (hold !== null && !held) this.#holdAhead(p.pool);
  }

  // Holding ahead: while the pool has no idle slot and requests queue, and
  // its jobs end in the order they started or many wait (HOLD_IN_ORDER,
  // HOLD_QUEUE_MS), the head of its queue, if it may be held, goes
  // behind the busy slot that began its request earliest and holds none.
  #holdAhead(pool: Pool): void {
    const hold = pool.hold!;
    if (this.#closing) return;
    // Bounded: each turn takes a request from the queue, or returns.
    while (pool.idle === 0 && pool.queue.head !== null) {
      if (hold.inOrder < HOLD_IN_ORDER && !longQueue(pool, hold)) return;
      const p = pool.queue.head.value;
      if (p.body !== null || p.webSocket || !HOLDABLE.has(p.req.method)) {
        return;
      }
      // Every busy slot holds one already (a deep queue): no scan.
      if (hold.held >= hold.started.size) return;
      let at: WorkerSlot | undefined;
      for (const slot of hold.started.keys()) {
        if (slot.canHold && !this.#withdrawn.has(slot)) {
          at = slot;
          break;
        }
      }
      if (at === undefined) return;
      pool.queue.shift();
      p.node = null;
      this.#dispatch(p, at, true);
      this.#prepareHead(pool);
    }
  }

  // An exchange on a slot of a holding pool ended (it freed, parked, or
  // went on with its held request): in start order if no other busy slot
  // of the pool began its request earlier.
  #ended(pool: Pool, slot: WorkerSlot): void {
    const hold = pool.hold!;
    const started = hold.started.get(slot);
    // Not from a request (attached, ping).
    if (started === undefined) return;
    // In order unless a busy connection began its request more than
    // HOLD_SAME_START of the mean exchange before this one: requests that
    // started together (a burst) end in either order, and holding behind
    // either costs about the same.
    // The first entry began earliest (this slot's own, if it is first).
    const earliest: number = hold.started.values().next().value!;
    const first =
      started - earliest <= HOLD_SAME_START * Math.max(hold.meanMs, 0) ? 1 : 0;
    hold.started.delete(slot);
    hold.inOrder += (first - hold.inOrder) / 20;
    const now = performance.now();
    const took = now - started;
    hold.meanMs = hold.meanMs < 0
      ? took
      : hold.meanMs + (took - hold.meanMs) / 20;
    if (hold.held > 0) this.#boundHeld(pool, now);
  }

  // Held requests of `pool` that have waited HOLD_MAX_WAIT mean exchanges
  // (HOLD_MAX_WAIT_LONG in a long queue) are asked back; checked as the
  // pool's exchanges end (while none ends, a held request waits no longer
  // than the queue would have it).
  #boundHeld(pool: Pool, now: number): void {
    const hold = pool.hold!;
    const heldBefore = now -
      (longQueue(pool, hold) ? HOLD_MAX_WAIT_LONG : HOLD_MAX_WAIT) *
        hold.meanMs;
    // In the order they were held: once one is younger, the rest are too.
    for (const [slot, p] of this.#heldOn) {
      if (p.pool !== pool) continue;
      // When it was written behind the other.
      if (p.queuedSince + p.queueMs > heldBefore) return;
      if (slot.takeBack()) hold.takeBacks++;
    }
  }

  // A held request's turn came: the request before it ended on that slot.
  #turn(slot: WorkerSlot): void {
    const p = this.#heldOn.get(slot);
    if (p === undefined) return;
    this.#heldOn.delete(slot);
    const pool = p.pool;
    pool.hold!.held--;
    this.#ended(pool, slot);
    pool.hold!.started.set(slot, performance.now());
    this.#holdAhead(pool);
  }

  // `p` has joined the queue ahead of a request of another class held in
  // its pool (a higher priority class, or one aged past it): the request
  // held last that `p` goes before is taken back, so `p` runs first (it is
  // put back at the front of its class, behind `p`). Within a class the
  // order is the queue's: a request put back at its front (declined) does
  // not take back one held after it.
  #passHeld(p: Pending): void {
    const pool = p.pool;
    if (p.node === null || pool.hold!.held === 0) return;
    let passed: WorkerSlot | undefined;
    for (const [slot, h] of this.#heldOn) {
      if (
        h.pool === pool && h.priority !== p.priority && precedes(pool, p, h)
      ) passed = slot;
    }
    if (passed?.takeBack()) pool.hold!.takeBacks++;
  }

  // A slot of the pool went idle with nothing queued: the oldest request
  // held in the pool is asked back (if its worker has not started it, it
  // is put back at the front of the queue and this slot takes it).
  #takeBack(pool: Pool): void {
    for (const [slot, p] of this.#heldOn) {
      if (p.pool === pool && slot.takeBack()) {
        pool.hold!.takeBacks++;
        return;
      }
    }
  }

  // A request sent to `group`'s worker was answered, or given back and
  // answered or put back. Once none is out and the worker's last
  // connection has closed, its waiters are let go: so a request put back
  // takes an idle slot, or its place in the queue, before those that come
  // after it (those that come before it went first, see #releaseAhead).
  #returned(group: Group): void {
    if (--group.sending === 0 && group.slots === 0) {
      this.#releaseWaiters(group);
    }
  }

  // `p` is put back, given back by `group`'s worker: if that worker's last
  // connection has closed, its waiters that go before `p` in the queue's
  // order are let go first (a higher class that came while `p` was there).
  #releaseAhead(group: Group, p: Pending): void {
    const waiters = group.waiters;
    if (group.slots > 0 || waiters === null) return;
    for (
      let head = waiters.head;
      head !== null && precedes(p.pool, head.value, p);
      head = waiters.head
    ) this.#endWait(head.value, false);
  }

  // An upload read ahead to its end, all in memory, goes as bytes: in one
  // write with its head and no 100 Continue round trip, and, like a small
  // body, it can be sent again if a worker declines it or fails before
  // taking it.
  #wholeUpload(p: Pending): void {
    const bytes = p.upload!.control.takeWhole?.() ?? null;
    if (bytes === null) return;
    p.upload = null;
    p.body = bytes;
    p.contentLength = bytes.length;
    if (p.out !== null) {
      p.out.body = bytes;
      p.out.contentLength = bytes.length;
      p.out.lines = undefined; // framed by length now
    }
  }

  #failed(p: Pending, group: Group, error: unknown): void {
    const worker = group.key;
    const e = error instanceof WorkerLinkError
      ? error
      : new WorkerLinkError("protocol", errorText(error), { cause: error });
    // The consumer's upload failed while a worker had the request: read
    // ahead while the worker held it, or read by its connection (an error
    // of the consumer's own body unless it was read ahead).
    const upload = p.uploadFailed ??
      (e.code === "upload-failed" && p.body === p.req.body
        ? { error: e.cause }
        : null);
    const malformed = upload !== null && !p.req.signal.aborted &&
      !consumerGone(upload.error);
    // Ended at the worker, not in the queue: the record keeps the queue
    // time of the dispatch and names the worker, which may have run it.
    const atWorker = () =>
      p.workerMs = performance.now() - p.queuedSince - p.queueMs;
    if (
      !malformed &&
      (e.code === "aborted" || e.code === "upload-failed" ||
        upload !== null || p.req.signal.aborted)
    ) {
      atWorker();
      this.#gone(p, worker);
      return;
    }
    if (this.#closed) {
      // Cut by the end of the shutdown grace: not the worker's failure.
      atWorker();
      this.#fail(
        p,
        "shutting-down",
        503,
        "hub is shutting down",
        undefined,
        worker,
      );
      return;
    }
    if (malformed) {
      // A 400, as for a malformed body found before dispatch; never resent.
      atWorker();
      this.#fail(
        p,
        "bad-request",
        400,
        `cannot read request body: ${errorText(upload.error)}`,
        undefined,
        worker,
      );
      return;
    }
    // A "not started" decline is provably safe to resend and is what busy
    // multi-hub workers do routinely, so it does not count against
    // maxRetries. A request that keeps being declined is still bounded by
    // its queue timeout, measured from when it first queued.
    const again = e.code === "not-started" ||
      ++p.retried <= this.#opts.maxRetries;
    const timeout = p.pool.queueTimeout;
    if (
      e.retryable && again && !this.#closed && timeout > 0 &&
      performance.now() - p.queuedSince >= timeout
    ) {
      this.#stats.timedOutQueued++;
      this.#fail(
        p,
        "queue-timeout",
        503,
        `request waited ${timeout} ms without a worker that would take it`,
        { "retry-after": String(Math.max(1, Math.ceil(timeout / 1000))) },
      );
      return;
    }
    if (e.retryable && again && !this.#closed) {
      if (p.tooLarge) {
        // Found too large while the worker held it: the next one would get
        // it whole as bytes, past the limit the body stream enforces.
        this.#tooLarge(p);
        return;
      }
      this.#stats.retries++;
      p.resent++;
      this.#log({
        // Declines are routine for workers serving several hubs.
        level: e.code === "not-started" ? "debug" : "info",
        msg: "retrying request on another worker",
        id: p.id,
        worker,
        attempt: p.attempts,
        reason: e.message,
      });
      this.#releaseAhead(group, p);
      const next = this.#takeIdle(p.pool);
      if (next) this.#dispatch(p, next);
      else this.#enqueue(p, true);
      return;
    }
    atWorker();
    if (e.code === "upload-too-large") {
      // The consumer's fault, not the worker's.
      this.#log({ level: "info", msg: "request body too large", id: p.id });
      this.#fail(p, "too-large", 413, e.message, undefined, worker);
      return;
    }
    this.#stats.failed++;
    this.#log({
      level: "warn",
      msg: "worker failed",
      id: p.id,
      worker,
      code: e.code,
      reason: e.message,
    });
    const [outcome, status]: [Outcome, number] = e.code === "timeout"
      ? ["worker-timeout", 504]
      : e.code === "upload-timeout"
      ? ["upload-timeout", 408]
      : ["worker-error", 502];
    this.#fail(p, outcome, status, e.message, undefined, worker);
  }

  // A worker's 101 to a WebSocket handshake: checked, then the consumer's
  // request is upgraded and the two are joined until either side closes.
  // The slot stays busy all that time and is closed at the end (the worker
  // dials a new connection).
  async #tunnel(
    p: Pending,
    slot: WorkerSlot,
    res: IncomingResponse,
    worker: string,
  ): Promise<void> {
    const offered = listTokens(p.req.headers.get("sec-websocket-protocol"));
    const protocol = fieldOf(res.headers, "sec-websocket-protocol")?.trim();
    const expected = await acceptKey(
      p.req.headers.get("sec-websocket-key")!.trim(),
    );
    const problem =
      fieldOf(res.headers, "sec-websocket-accept")?.trim() !== expected
        ? "a wrong Sec-WebSocket-Accept"
        : fieldOf(res.headers, "sec-websocket-extensions") !== null
        ? "an extension the hub did not offer"
        : protocol !== undefined && !offered.includes(protocol)
        ? `a subprotocol the consumer did not offer (${
          JSON.stringify(protocol)
        })`
        : null;
    if (p.req.signal.aborted) {
      // Gone while the answer was checked: upgrading now could leave Deno
      // with a handshake it never finishes.
      slot.close(new WorkerLinkError("aborted", "Consumer went away"));
      this.#gone(p, worker);
      return;
    }
    let upgraded: { socket: WebSocket; response: Response } | undefined;
    let refusal = "";
    if (problem === null && !this.#closing) {
      try {
        upgraded = Deno.upgradeWebSocket(
          p.req,
          protocol === undefined ? {} : { protocol },
        );
      } catch (error) {
        refusal = errorText(error);
      }
    }
    if (upgraded === undefined) {
      slot.close(new WorkerLinkError("closed", "WebSocket not opened"));
      if (problem !== null) {
        this.#stats.failed++;
        const message = `Invalid response from worker: 101 with ${problem}`;
        this.#log({
          level: "warn",
          msg: "worker failed",
          id: p.id,
          worker,
          reason: message,
        });
        this.#fail(p, "worker-error", 502, message, undefined, worker);
      } else if (this.#closing) {
        this.#fail(p, "shutting-down", 503, "hub is shutting down");
      } else {
        // hub.fetch called by a server other than Deno.serve.
        this.#fail(
          p,
          "worker-error",
          501,
          `cannot upgrade this request to a WebSocket here: ${refusal}`,
          undefined,
          worker,
        );
      }
      return;
    }
    this.#stats.answered++;
    const { socket, response } = upgraded;
    try {
      // The worker's own fields (a cookie, say) go on; Deno made the
      // handshake's.
      for (const [name, value] of endToEnd(res.headers)) {
        if (!name.startsWith("sec-websocket-")) {
          response.headers.append(name, value);
        }
      }
      response.headers.set("x-request-id", p.id);
    } catch {
      // immutable in some Deno version: the id is in the access log
    }
    p.resolve(response);
    this.#webSockets++;
    const result = await bridgeWebSocket(socket, slot.conn, slot.reader, {
      maxMessage: this.#opts.maxWebSocketMessage,
      maxBacklog: this.#opts.maxWebSocketMessage,
      signal: this.#goingAway.signal,
    });
    this.#webSockets--;
    slot.close(new WorkerLinkError("closed", "WebSocket closed"));
    this.#log({
      level: "debug",
      msg: "websocket closed",
      id: p.id,
      worker,
      by: result.closedBy,
      code: result.code,
      reason: result.reason,
    });
    this.#record(
      p,
      101,
      "ok",
      performance.now(),
      result.fromWorker,
      worker,
      result.toWorker,
    );
  }

  #toResponse(p: Pending, res: IncomingResponse): Response {
    try {
      // The hub's request id replaces any the worker sent.
      return relayedResponse(res, p.req.method, [["x-request-id", p.id]], [[
        "server-timing",
        `queue;dur=${p.queueMs.toFixed(2)}, worker;dur=${
          p.workerMs.toFixed(2)
        }`,
      ]]);
    } catch (error) {
      // e.g. a status outside 200..599, which `Response` cannot carry.
      this.#stats.failed++;
      return errorResponse(
        502,
        `Invalid response from worker: ${errorText(error)}`,
        p.id,
      );
    }
  }

  // Late heads, stalled bodies and stalled uploads are found by one coarse
  // periodic check of busy slots, so no request pays for a timer of its
  // own. It runs only while some slot is busy.
  #startSweeper(): void {
    if (this.#sweeper !== undefined) return;
    const limits = [this.#opts, ...Object.values(this.#poolOptions)].flatMap(
      (o) => [o.headTimeout, o.bodyIdleTimeout, o.uploadIdleTimeout],
    ).filter((t) => t !== undefined && t > 0) as number[];
    if (limits.length === 0) return;
    // Precise to a quarter of the shortest limit (and at most 1 s late).
    const every = Math.max(10, Math.min(1000, ...limits.map((t) => t / 4)));
    this.#sweeper = setInterval(() => {
      if (this.#busy.size === 0) {
        this.#stopSweeper();
        return;
      }
      const now = performance.now();
      for (const slot of [...this.#busy]) slot.checkStalled(now);
    }, every);
  }

  #stopSweeper(): void {
    if (this.#sweeper !== undefined) {
      clearInterval(this.#sweeper);
      this.#sweeper = undefined;
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

// onLog as the hub calls it: a log callback that throws (a closed file, a
// record it cannot serialize) must not break the request or shutdown that
// logged, and there is nowhere left to report it.
function quietLog(
  onLog: ((record: HubLogRecord) => void) | undefined,
): (record: HubLogRecord) => void {
  if (onLog === undefined) return () => {};
  return (record) => {
    try {
      onLog(record);
    } catch {
      // ignored, as documented
    }
  };
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
  /** PEM certificate chain for TLS on the consumer listener (with `key`). */
  cert?: string;
  /** PEM private key for TLS on the consumer listener. */
  key?: string;
  /** PEM certificate chain for TLS on the worker listener (with `workerKey`). */
  workerCert?: string;
  /** PEM private key for TLS on the worker listener. */
  workerKey?: string;
  /** Aborting it shuts the hub down (see {@linkcode Hub.shutdown}). */
  signal?: AbortSignal;
  /**
   * Milliseconds queued and in-progress requests, and open WebSockets, get
   * to finish on shutdown.
   * @default {30000}
   */
  shutdownGrace?: number;
  /**
   * Listen on both ports with `SO_REUSEPORT` (Linux; Deno needs
   * `--unstable-net`), so that a new hub can start on the same ports while
   * this one runs: a restart or upgrade that refuses no connection. The
   * kernel spreads new connections over the hubs listening. On shutdown
   * such a hub hands over: it stops listening on both ports at once (new
   * consumers and reconnecting workers reach the other hub), closes open
   * WebSockets with 1001 at once, and gives each worker connection back as
   * soon as it is free while its pool has nothing queued (see
   * {@linkcode Hub.shutdown}), while what it had queued and in progress
   * finishes here. Without it, shutdown keeps the worker port open, and
   * the consumer port while WebSockets are open or request bodies are
   * still arriving, until the drain ends. (Handing over, an upload still
   * arriving when the listener closes is cut: Deno.serve's shutdown ends
   * its body.)
   * @default {false}
   */
  reusePort?: boolean;
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
 * (or `Deno.listenTls`) at `workerPort`. Both listen when it returns.
 *
 * @throws {RangeError} or {TypeError} naming an invalid option, as
 *   {@linkcode Hub}'s constructor does.
 * @throws {Deno.errors.AddrInUse} (or the listener's other error), its
 *   message naming the listener and address that failed.
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
  if ((options.cert === undefined) !== (options.key === undefined)) {
    throw new TypeError('Invalid options: "cert" and "key" go together');
  }
  if (
    (options.workerCert === undefined) !== (options.workerKey === undefined)
  ) {
    throw new TypeError(
      'Invalid options: "workerCert" and "workerKey" go together',
    );
  }
  const log = quietLog(options.onLog);
  if (options.shutdownGrace !== undefined) {
    checkOption("shutdownGrace", options.shutdownGrace, 0);
  }
  const hub = new Hub({
    ...options,
    consumerScheme: options.consumerScheme ??
      (options.cert !== undefined ? "https" : "http"),
  });
  const workerPort = options.workerPort ?? 4040;
  const tls = options.workerCert !== undefined;
  // Anyone can fail a TLS handshake as often as they can connect.
  const tlsFailures = new AddressLogLimit(
    REFUSAL_LOG_WINDOW,
    REFUSAL_LOG_ADDRESSES,
    (s) => log(suppressedRecord("more worker TLS handshakes failed", s)),
  );
  const reusePort = options.reusePort === true;
  if (reusePort && !hasUnstableNet()) {
    throw new TypeError(
      "Invalid options: reusePort needs Deno's --unstable-net flag",
    );
  }
  // Which listener failed, on which address: "Address already in use" alone
  // does not say whether the consumer or the worker port is taken.
  const cannotListen = (what: string, port: number, error: unknown) => {
    const e = error as Error;
    e.message =
      `Cannot listen for ${what} on ${hostname}:${port}: ${e.message}`;
    return e;
  };
  let listener: Deno.Listener;
  try {
    listener = tls
      ? Deno.listenTls({
        hostname,
        port: workerPort,
        cert: options.workerCert!,
        key: options.workerKey!,
        transport: "tcp",
        ...(reusePort ? { reusePort } : {}),
      })
      : Deno.listen({
        hostname,
        port: workerPort,
        transport: "tcp",
        ...(reusePort ? { reusePort } : {}),
      });
  } catch (error) {
    throw cannotListen("workers", workerPort, error);
  }
  let server: Deno.HttpServer<Deno.NetAddr>;
  // Requests with a body not yet answered: Deno.serve's shutdown makes the
  // rest of a body it is still reading unreadable (BadResource), which
  // would cut uploads the drain lets finish.
  let uploading = 0;
  try {
    server = Deno.serve({
      hostname,
      port: options.port ?? 8080,
      onListen() {},
      ...(reusePort ? { reusePort } : {}),
      ...(options.cert !== undefined
        ? { cert: options.cert, key: options.key! }
        : {}),
      // Only a response body that errors comes here (a worker cut it, or
      // the end of the grace): the consumer sees its connection cut, the
      // hub has logged why, and Deno would print a stack trace for each.
      onError(error) {
        log({
          level: "debug",
          msg: "response to a consumer cut",
          reason: errorText(error),
        });
        return new Response(null, { status: 500 });
      },
    }, (req, info) => {
      const answer = hub.fetch(req, info).catch((error) => {
        // Not expected: the hub answers every request itself.
        log({
          level: "error",
          msg: "request failed in the hub",
          reason: errorText(error),
        });
        return new Response("internal error in the hub\n", { status: 500 });
      });
      if (req.body === null) return answer;
      uploading++;
      return answer.finally(() => uploading--);
    });
  } catch (error) {
    listener.close();
    throw cannotListen("consumers", options.port ?? 8080, error);
  }
  let stopping: Promise<void> | null = null;
  // Worker connections still in their TLS handshake: shutdown ends them
  // (once it has, their failures are not news).
  const inTls = new Map<Deno.Conn, Promise<void>>();
  let tlsCut = false;
  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        try {
          (conn as Deno.TcpConn).setNoDelay?.(true);
          (conn as Deno.TcpConn).setKeepAlive?.(true);
        } catch {
          // not fatal: the connection works without them
        }
        const arrived = performance.now();
        const ra = conn.remoteAddr as Deno.NetAddr;
        const peer = `${ra.hostname}:${ra.port}`;
        if (!tls) {
          hub.addWorker(conn, peer);
          continue;
        }
        // Finish TLS before the connection can become a slot: a client that
        // never completes it must not receive requests.
        const timeout = options.handshakeTimeout ?? 10_000;
        let timer: ReturnType<typeof setTimeout> | undefined;
        const shaking = Promise.race([
          (conn as Deno.TlsConn).handshake(),
          new Promise((_, reject) => {
            timer = setTimeout(
              () => reject(new Error(`no TLS handshake within ${timeout} ms`)),
              timeout,
            );
          }),
        ]).then(() => hub.addWorker(conn, peer, arrived), (error) => {
          // Closed by shutdown: not a failure to report. One that fails
          // while the hub drains still is.
          if (!tlsCut && tlsFailures.admit(ra.hostname)) {
            log({
              level: "warn",
              msg: "worker TLS handshake failed",
              worker: peer,
              reason: errorText(error),
            });
          }
          closeQuietly(conn);
        }).finally(() => {
          clearTimeout(timer);
          inTls.delete(conn);
        });
        inTls.set(conn, shaking);
      }
    } catch (error) {
      if (!(error instanceof Deno.errors.BadResource)) throw error;
    }
  })();
  const shutdown = () =>
    stopping ??= (async () => {
      // server.shutdown() stops accepting and waits for responses in
      // progress (aborting a serve signal would cut them); the hub's drain
      // lets them finish and answers what is still queued after the grace.
      // The worker listener stays open meanwhile: workers that reconnect
      // help drain the queue.
      // Deno.serve's shutdown closes upgraded WebSockets at once, and cuts
      // request bodies still arriving, so while any WebSocket is open or
      // any request with a body unanswered it waits: they get the hub's
      // grace to end (new requests meanwhile get the hub's 503), and the
      // hub closes those left with 1001 before Deno.serve would.
      // Handing over (reusePort), both listeners close at once: another hub
      // listens on the same ports. Deno.serve's shutdown tells consumers'
      // WebSockets 1001; the hub tells the workers' sides.
      const grace = options.shutdownGrace ?? 30_000;
      const closeListener = () => {
        try {
          listener.close();
        } catch {
          // already closed
        }
      };
      if (reusePort) closeListener();
      let drained = false;
      const draining = hub.shutdown(grace, { handOver: reusePort })
        .finally(() => drained = true);
      const serving = (async () => {
        while (
          !reusePort && (hub.stats.webSockets > 0 || uploading > 0) &&
          !drained
        ) {
          await new Promise((r) => setTimeout(r, 20));
        }
        await server.shutdown();
      })();
      await draining;
      closeListener();
      tlsCut = true;
      await closeAndSettle(inTls);
      // Every request has its answer by now; what Deno.serve still waits
      // for is flushing them, or a consumer that never finishes a request
      // body (it waits for that for ever): bounded, so the process can exit.
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        serving,
        new Promise((r) => timer = setTimeout(r, FLUSH_AFTER_SHUTDOWN)),
      ]);
      clearTimeout(timer);
      await accepting;
      // One accepted as the listener closed joined after the first cut.
      await closeAndSettle(inTls);
      tlsFailures.close();
    })();
  // Shutdown does not fail; a bug in it is reported, not left unhandled.
  const stopOnAbort = () =>
    shutdown().catch((error) =>
      log({
        level: "error",
        msg: "shutdown failed",
        reason: errorText(error),
      })
    );
  const finished = Promise.all([server.finished, accepting]).then(() => {});
  onAbortUntil(options.signal, stopOnAbort, finished);
  return {
    hub,
    addr: server.addr,
    workerAddr: listener.addr as Deno.NetAddr,
    finished,
    shutdown,
  };
}

if (import.meta.main) Deno.exit(await main());
