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
 * Renewal: a worker that says so in its handshake (`Pothead-Park-Renew: 1`)
 * answers a wait request that carries `X-Pothead-Renew: <ms>` within that
 * time even without a permit, with a 204 that parks the connection again
 * (`Connection: pothead-park`); the hub then sends the wait request anew.
 * So a hub hears from a parked connection as often as from a pinged idle
 * one, and one whose worker vanished without a word is closed as soon.
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

/** The wait request's field: answer within this many ms, parked or not. */
export const RENEW_FIELD = "x-pothead-renew";

/** The handshake field of a worker that answers `RENEW_FIELD` in time. */
export const RENEW_OPTION_FIELD = "pothead-park-renew";

/**
 * The wait request asking for an answer within `renewMs` ms (a worker that
 * has no permit by then answers {@linkcode STILL_PARKED_RESPONSE}).
 */
export function renewingWaitRequest(renewMs: number): Uint8Array {
  return encoder.encode(
    `GET /.pothead/wait HTTP/1.1\r\nhost: pothead.invalid\r\n${WAIT_FIELD}: 1\r\n` +
      `${RENEW_FIELD}: ${Math.ceil(renewMs)}\r\n\r\n`,
  );
}

/** The worker's answer to a renewing wait request when it still has no permit. */
export const STILL_PARKED_RESPONSE: Uint8Array = encoder.encode(
  `HTTP/1.1 204 No Content\r\nconnection: ${PARK_OPTION}\r\n\r\n`,
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

/** Smallest renewal time a worker honours; a smaller one is raised to it. */
const MIN_RENEW = 10;

/**
 * The renewal time a wait request asks for (its `X-Pothead-Renew` value in
 * ms), or 0 when it asks for none (a hub that does not renew).
 */
export function renewTime(value: string | null): number {
  if (value === null) return 0;
  const ms = Number(value.trim());
  return Number.isFinite(ms) && ms > 0 ? Math.max(MIN_RENEW, ms) : 0;
}

/**
 * Worker side: holds the hub's wait request. Resolves `"offer"` when `wait`
 * offers the connection again, `"renew"` when `renewMs` (> 0) passes first
 * (answer {@linkcode STILL_PARKED_RESPONSE}), `"back"` when `wait` gives the
 * connection back or `gone` settles (the hub closed it).
 */
export async function holdWait(
  wait: (signal?: AbortSignal, renewMs?: number) => Promise<boolean>,
  renewMs: number,
  gone: Promise<unknown>,
): Promise<"offer" | "renew" | "back"> {
  const stop = new AbortController();
  const offer = wait(stop.signal, renewMs);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const renew = renewMs > 0
    ? new Promise<"renew">((r) => timer = setTimeout(() => r("renew"), renewMs))
    : new Promise<never>(() => {});
  const first = await Promise.race([
    offer,
    renew,
    gone.then(() => "gone" as const, () => "gone" as const),
  ]);
  clearTimeout(timer);
  if (first === true) return "offer";
  if (first === false) return "back";
  stop.abort();
  // A permit may have woken the wait just as it stopped: it counts.
  if (await offer) return "offer";
  return first === "renew" ? "renew" : "back";
}
