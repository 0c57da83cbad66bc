/**
 * Pings: how a hub finds out that a worker behind an idle connection is
 * gone without a word (its machine lost power, a NAT or a network dropped
 * the connection, the process froze). Such a connection looks idle for as
 * long as TCP keepalive takes to notice (hours with the system's defaults),
 * and a request sent on it waits for the head timeout.
 *
 * A worker that says `Pothead-Ping: 1` in its handshake gets the ping
 * request on a connection that has been idle for the hub's ping interval.
 * It answers at once with any 2xx and no body, without running its handler
 * or taking a permit; the connection is then idle again. A worker that
 * does not answer within the ping timeout has its connection closed.
 * Like parking, the ping is a request followed by its response, so nothing
 * the worker sends can cross a request of the hub. A draining worker
 * answers it with the "not started" 408 and closes.
 *
 * The other way round, the hub's 101 gives such a worker its ping interval
 * (`Pothead-Ping-Interval`, ms). An idle connection that hears nothing for
 * several intervals has lost its hub (it went away without closing), and
 * the worker hands it back (the "not started" 408, then close) and dials
 * again.
 *
 * @module
 */

import { READY_RESPONSE } from "./_park.ts";

/** The handshake field by which a worker says it answers pings. */
export const PING_OPTION_FIELD = "pothead-ping";

/**
 * The field of the hub's 101 that gives its ping interval in milliseconds,
 * to a worker that answers pings: an idle connection that hears nothing
 * for much longer than that has lost its hub.
 */
export const PING_INTERVAL_FIELD = "pothead-ping-interval";

/** The field that marks the hub's ping request. */
export const PING_FIELD = "x-pothead-ping";

const encoder = new TextEncoder();

/** What the hub sends on a connection idle for its ping interval. */
export const PING_REQUEST: Uint8Array = encoder.encode(
  `GET /.pothead/ping HTTP/1.1\r\nhost: pothead.invalid\r\n${PING_FIELD}: 1\r\n\r\n`,
);

/**
 * The worker's answer to a ping: alive, the connection stays idle (the same
 * 204 that answers the wait request).
 */
export const PONG_RESPONSE: Uint8Array = READY_RESPONSE;
