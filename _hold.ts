/**
 * Holding ahead, the wire protocol (the worker's half is in
 * `_serve_native.ts`): when every connection is busy and requests queue, a
 * hub may pipeline one queued bodiless request behind the request in
 * progress on a connection (HTTP/1.1 pipelining), and the worker starts it
 * the moment the one before it has been answered and its permit is back,
 * without a round trip through the hub.
 *
 * - A worker whose runner can do this says `Pothead-Hold: 1` in its
 *   handshake (our `serve` engine; the `inline` engine never does). Only
 *   such a worker may get a held request.
 * - The held request carries `X-Pothead-Hold: 1`, has no body and is not an
 *   upgrade; at most one per connection. It is answered in its turn, after
 *   the request before it, as if it had just arrived then (permit, drain
 *   and parking checks, with their "not started" 408s).
 * - The hub takes it back by writing the revoke request behind it
 *   ({@linkcode REVOKE_REQUEST}). If the held request has not started, it
 *   is answered, in its turn, the "not started" 408 with `Content-Length: 0`
 *   and the connection kept, its handler never run; and if the response to
 *   the request in progress has not begun, the worker first answers at once
 *   with the interim {@linkcode REVOKED_RESPONSE} (before that response),
 *   so the hub can send the request elsewhere without waiting for it. The
 *   revoke itself is answered `204` in its turn, after the held request's
 *   answer (whether it was taken back or had already started).
 * - A revoke the worker reads before the held request's turn means the
 *   held request never runs. So a hub whose revoke went out while the
 *   response before the held request was still coming, and which still
 *   sees that response coming a round trip later, may send the held
 *   request elsewhere without waiting for its 408 (our hub does so for a
 *   response that streams, see `_slot.ts`, `HELD_STREAM_WAIT`).
 * - A hub that closes the connection, or a worker that drains, with a
 *   request held: the held request never runs (when draining it is answered
 *   the closing "not started" 408).
 * - A response that parks the connection (`_park.ts`) before a held request
 *   still parks it if the held request is taken back; otherwise the held
 *   request's own answer decides (its response, or a declining 408).
 *
 * @module
 */

/** The handshake field by which a worker says it takes held requests. */
export const HOLD_OPTION_FIELD = "pothead-hold";

/** The field that marks a request pipelined behind the one in progress. */
export const HOLD_FIELD = "x-pothead-hold";

/** The path of the hub's revoke request. */
export const REVOKE_PATH = "/.pothead/revoke";

/**
 * The field that marks the hub's revoke request: the hub drops every
 * `X-Pothead-*` field a consumer sends, so a consumer's own request for
 * {@linkcode REVOKE_PATH} is never taken for one.
 */
export const REVOKE_FIELD = "x-pothead-revoke";

/** The field of the worker's interim answer to a revoke. */
export const REVOKED_FIELD = "x-pothead-revoked";

const encoder = new TextEncoder();

/** What the hub writes behind a held request to take it back. */
export const REVOKE_REQUEST: Uint8Array = encoder.encode(
  `GET ${REVOKE_PATH} HTTP/1.1\r\nhost: pothead.invalid\r\n${REVOKE_FIELD}: 1\r\n\r\n`,
);

/**
 * The worker's interim answer to a revoke, before the response to the
 * request in progress: the held request will not run.
 */
export const REVOKED_RESPONSE: Uint8Array = encoder.encode(
  `HTTP/1.1 150 Revoked\r\n${REVOKED_FIELD}: 1\r\n\r\n`,
);
