/**
 * Parking: how a worker keeps a connection to a hub that it has no permit
 * for right now, instead of closing it and dialling again later.
 *
 * A worker serving several hubs has more connections than permits. When a
 * request reaches it on a connection it cannot serve, it declines with the
 * "not started" 408 carrying the `Connection: pothead-park` option; a
 * response may carry the same option to park the connection after it. The
 * hub then sends the wait request on that connection and offers it no work;
 * the worker answers the wait request (any 2xx) when it has a permit to
 * offer, and the connection is idle again. Everything on the wire stays a
 * request followed by its response, so no message of the worker can cross
 * one of the hub. A hub that does not know the option closes the connection
 * after the 408 (as for any "not started" answer), or sends its next
 * request instead of the wait request, which tells the worker not to park
 * there.
 *
 * @module
 */

/** The `Connection` option that parks the connection after this response. */
export const PARK_OPTION = "pothead-park";

/** The field that marks the hub's wait request. */
export const WAIT_FIELD = "x-pothead-wait";

const encoder = new TextEncoder();

/** What the hub sends on a parked connection: "answer when you can serve". */
export const WAIT_REQUEST: Uint8Array = encoder.encode(
  `GET /.pothead/wait HTTP/1.1\r\nhost: pothead.invalid\r\n${WAIT_FIELD}: 1\r\n\r\n`,
);

/** The worker's "not started" 408 that keeps the connection, parked. */
export const PARKED_RESPONSE: Uint8Array = encoder.encode(
  "HTTP/1.1 408 Request Timeout\r\nx-pothead-not-started: 1\r\n" +
    `connection: ${PARK_OPTION}\r\ncontent-length: 0\r\n\r\n`,
);

/** The worker's answer to the wait request: the connection takes work again. */
export const READY_RESPONSE: Uint8Array = encoder.encode(
  "HTTP/1.1 204 No Content\r\n\r\n",
);

/** Largest request body a worker reads and drops to keep a declined connection. */
export const PARK_DISCARD = 64 * 1024;
