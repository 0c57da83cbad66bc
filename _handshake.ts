/**
 * The Reverse HTTP (PTTH) handshake on the worker link, both ends.
 *
 * A worker may open its connection with an HTTP/1.1 request asking to
 * upgrade to reverse HTTP, in the current IETF draft's form
 * (draft-kazuho-ptth-ptth: `Upgrade: ptth`, `Connection: Upgrade`, an `ALPN`
 * field naming `http%2F1.1`) or the 2009 form (draft-lentczner-rhttp:
 * `Upgrade: PTTH/1.0`). It carries credentials (`Authorization: Bearer`)
 * and what the worker declares about itself (`Pothead-Worker-Id`,
 * `Pothead-Pool`, `Pothead-Labels`). The hub answers `101 Switching
 * Protocols`, naming itself (`Pothead-Hub-Id`), and from then on sends
 * requests on the connection, or answers 4xx and closes.
 *
 * @module
 */

import {
  DEFAULT_LIMITS,
  encodeHead,
  fieldOf,
  framingFields,
  type HeaderList,
  listTokens,
  parseRequestHead,
  parseResponseHead,
  reasonPhrase,
  type RequestHead,
} from "./_codec.ts";
import { type BufferedReader, type Connection, writeAll } from "./_io.ts";
import { PING_INTERVAL_FIELD, PING_OPTION_FIELD } from "./_ping.ts";
import { RENEW_OPTION_FIELD } from "./_park.ts";
import { HOLD_OPTION_FIELD } from "./_hold.ts";

/** What a worker declared in its handshake. */
export interface WorkerIdentity {
  /** The worker's id (groups its slots), or null if it gave none. */
  id: string | null;
  /** The pool it serves. */
  pool: string;
  /** Free-form labels, `key=value`. */
  labels: Record<string, string>;
  /** The upgrade token it asked for: `ptth` or `PTTH/1.0`. */
  protocol: string;
  /** It answers pings on idle connections (`Pothead-Ping: 1`; see `_ping.ts`). */
  ping: boolean;
  /**
   * It answers a renewing wait request on a parked connection in time
   * (`Pothead-Park-Renew: 1`; see `_park.ts`).
   */
  renew?: boolean;
  /**
   * It takes requests held ahead behind the one in progress, and their
   * revokes (`Pothead-Hold: 1`; see `_hold.ts`). The hub sends them only
   * with `holdAhead`.
   */
  hold?: boolean;
}

/** The pool plain workers and workers that name none serve. */
export const DEFAULT_POOL = "default";

const NAME = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

// What a hub accepts as a worker token (see the hub's workerTokens).
const TOKEN = /^[\x21-\x7e]{8,}$/;

/**
 * Why a worker id, pool name, label or token would be refused by a hub, or
 * null: names are 1-128 of `A-Z a-z 0-9 . _ : -` starting with a letter or
 * digit; a label value may not hold a comma (labels travel comma-separated);
 * a token is 8 or more visible ASCII characters (the message never shows it).
 */
export function identityProblem(
  identity: {
    workerId?: string;
    pool?: string;
    labels?: Record<string, string>;
    token?: string;
  },
): string | null {
  const { workerId, pool, labels = {}, token } = identity;
  if (token !== undefined && !TOKEN.test(token)) {
    // A line break would also end the handshake's Authorization field.
    return "invalid token (8 or more visible ASCII characters, no spaces or line breaks)";
  }
  if (workerId !== undefined && !NAME.test(workerId)) {
    return `invalid worker id ${JSON.stringify(workerId)}`;
  }
  if (pool !== undefined && !NAME.test(pool)) {
    return `invalid pool name ${JSON.stringify(pool)}`;
  }
  for (const [k, v] of Object.entries(labels)) {
    if (!NAME.test(k)) return `invalid label name ${JSON.stringify(k)}`;
    if (/[,\r\n]/.test(v) || v !== v.trim()) {
      return `invalid label value ${
        JSON.stringify(v)
      } (no commas, line breaks or outer spaces)`;
    }
  }
  return null;
}

/** A handshake the hub refuses: the status to answer and why. */
export class HandshakeError extends Error {
  /** 400, 401, 403 or 426. */
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.name = "HandshakeError";
    this.status = status;
  }
}

/**
 * Checks a handshake request head and returns what the worker declared.
 * Credentials are checked separately by {@linkcode checkToken}.
 *
 * @throws {HandshakeError} with the status to answer.
 */
export function parseHandshake(head: RequestHead): WorkerIdentity {
  const upgrade = listTokens(fieldOf(head.headers, "upgrade"));
  const protocol = upgrade.find((t) => /^ptth(\/1\.0)?$/i.test(t));
  if (protocol === undefined) {
    throw new HandshakeError(
      426,
      `Cannot accept worker: expected "Upgrade: ptth", got ${
        JSON.stringify(upgrade.join(", "))
      }`,
    );
  }
  const connection = listTokens(fieldOf(head.headers, "connection")).map((t) =>
    t.toLowerCase()
  );
  if (!connection.includes("upgrade")) {
    throw new HandshakeError(
      400,
      'Cannot accept worker: handshake lacks "Connection: Upgrade"',
    );
  }
  if (head.minor !== 1) {
    throw new HandshakeError(
      400,
      "Cannot accept worker: handshake not HTTP/1.1",
    );
  }
  let fields;
  try {
    fields = framingFields(head.headers);
  } catch (error) {
    throw new HandshakeError(400, (error as Error).message);
  }
  if (fields.chunked || fields.contentLength > 0) {
    throw new HandshakeError(400, "Cannot accept worker: handshake has a body");
  }
  const alpn = fieldOf(head.headers, "alpn");
  if (alpn !== null) {
    let protos: string[];
    try {
      protos = listTokens(alpn).map((t) => decodeURIComponent(t).toLowerCase());
    } catch {
      throw new HandshakeError(
        400,
        `Cannot accept worker: malformed ALPN ${JSON.stringify(alpn)}`,
      );
    }
    if (!protos.includes("http/1.1")) {
      throw new HandshakeError(
        400,
        `Cannot accept worker: ALPN ${
          JSON.stringify(alpn)
        } does not offer http/1.1`,
      );
    }
  }
  const id = fieldOf(head.headers, "pothead-worker-id");
  if (id !== null && !NAME.test(id)) {
    throw new HandshakeError(
      400,
      `Cannot accept worker: invalid Pothead-Worker-Id ${JSON.stringify(id)}`,
    );
  }
  const pool = fieldOf(head.headers, "pothead-pool") ?? DEFAULT_POOL;
  if (!NAME.test(pool)) {
    throw new HandshakeError(
      400,
      `Cannot accept worker: invalid Pothead-Pool ${JSON.stringify(pool)}`,
    );
  }
  const labels: Record<string, string> = {};
  for (const pair of listTokens(fieldOf(head.headers, "pothead-labels"))) {
    const eq = pair.indexOf("=");
    const k = eq < 0 ? pair : pair.slice(0, eq).trim();
    if (!NAME.test(k)) {
      throw new HandshakeError(
        400,
        `Cannot accept worker: invalid label ${JSON.stringify(pair)}`,
      );
    }
    labels[k] = eq < 0 ? "" : pair.slice(eq + 1).trim();
  }
  const ping = fieldOf(head.headers, PING_OPTION_FIELD)?.trim() === "1";
  const renew = fieldOf(head.headers, RENEW_OPTION_FIELD)?.trim() === "1";
  const hold = fieldOf(head.headers, HOLD_OPTION_FIELD)?.trim() === "1";
  return { id, pool, labels, protocol, ping, renew, hold };
}

async function digest(text: string): Promise<Uint8Array> {
  return new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)),
  );
}

/**
 * Checks the `Authorization: Bearer` credential against every valid token.
 * Both sides are hashed first and compared in full, so the time taken does
 * not depend on where they differ or on their lengths; every token is
 * compared, so it does not depend on which one matched either.
 *
 * @returns the valid token it matched.
 * @throws {HandshakeError} 401 when no bearer token was sent, 403 when it is
 *   not valid.
 */
export async function checkToken(
  head: RequestHead,
  valid: readonly string[],
): Promise<string> {
  const auth = fieldOf(head.headers, "authorization");
  const m = auth === null ? null : /^Bearer +(\S+)$/i.exec(auth);
  if (m === null) {
    throw new HandshakeError(
      401,
      "Cannot accept worker: no bearer token in the handshake",
    );
  }
  const given = await digest(m[1]);
  let ok = 0;
  let matched = 0;
  for (let t = 0; t < valid.length; t++) {
    const want = await digest(valid[t]);
    let diff = 0;
    for (let i = 0; i < want.length; i++) diff |= want[i] ^ given[i];
    const same = diff === 0 ? 1 : 0;
    ok |= same;
    // The last match, without a branch on which one it is.
    matched = matched * (1 - same) + t * same;
  }
  if (ok !== 1) {
    throw new HandshakeError(403, "Cannot accept worker: invalid token");
  }
  return valid[matched];
}

/**
 * The field in the hub's `101` naming the hub process (`Pothead-Hub-Id`), so
 * a worker that reaches one hub at two addresses (a name with an A and an
 * AAAA record of one dual-stack hub) serves it as one.
 */
export const HUB_ID_FIELD = "pothead-hub-id";

// Longest hub id a worker takes; a longer one is ignored, as is one with
// characters outside the visible ASCII range.
const MAX_HUB_ID = 128;
const HUB_ID = /^[\x21-\x7e]+$/;

/** What the hub says in its `101`, besides switching. */
export interface SwitchingOptions {
  /**
   * Milliseconds between pings on an idle connection, for a worker that
   * answers them (`Pothead-Ping-Interval`); 0 or absent: not sent.
   */
  pingInterval?: number;
  /** The hub's identity (`Pothead-Hub-Id`); absent: not sent. */
  hubId?: string;
}

/**
 * The hub's `101 Switching Protocols` answer: the upgrade token the worker
 * asked for, and what `options` gives.
 */
export function switchingProtocols(
  protocol: string,
  options: SwitchingOptions = {},
): Uint8Array {
  const fields: [string, string][] = [
    ["upgrade", protocol],
    ["connection", "Upgrade"],
  ];
  const pingInterval = options.pingInterval ?? 0;
  if (pingInterval > 0) {
    fields.push([PING_INTERVAL_FIELD, String(Math.ceil(pingInterval))]);
  }
  if (options.hubId !== undefined) fields.push([HUB_ID_FIELD, options.hubId]);
  const { buf, length } = encodeHead(
    "HTTP/1.1 101 Switching Protocols",
    fields,
  );
  return buf.subarray(0, length);
}

/** What a worker learns from the hub's `101`. */
export interface HubAnswer {
  /** The hub's ping interval in ms; 0 if it does not ping. */
  pingInterval: number;
  /**
   * The hub's identity; undefined from a hub that sends none (an earlier
   * version) or an unusable one.
   */
  hubId: string | undefined;
}

// Reads what the worker needs from a 101's fields.
function hubAnswer(headers: HeaderList): HubAnswer {
  const interval = Number(fieldOf(headers, PING_INTERVAL_FIELD));
  const id = fieldOf(headers, HUB_ID_FIELD)?.trim() ?? "";
  return {
    pingInterval: Number.isSafeInteger(interval) && interval > 0 ? interval : 0,
    hubId: id.length <= MAX_HUB_ID && HUB_ID.test(id) ? id : undefined,
  };
}

/** The hub's refusal: a short response that closes the connection. */
export function refusal(error: HandshakeError): Uint8Array {
  const text = `${error.message}\n`;
  const extra: [string, string][] = error.status === 401
    ? [["www-authenticate", 'Bearer realm="pothead"']]
    : error.status === 426
    ? [["upgrade", "ptth"]]
    : [];
  const reason = reasonPhrase(error.status) || "Error";
  const body = new TextEncoder().encode(text);
  const { buf, length } = encodeHead(`HTTP/1.1 ${error.status} ${reason}`, [
    ...extra,
    ["content-type", "text/plain; charset=utf-8"],
    ["content-length", String(body.length)],
    ["connection", "close"],
  ], body.length);
  buf.set(body, length);
  return buf;
}

/** What a worker sends in its handshake. */
export interface HandshakeOptions {
  /** The hub's host name, for the Host field. */
  host: string;
  /** A bearer token, if the hub requires one. */
  token?: string;
  /** Worker id; groups this worker's slots at the hub. */
  workerId?: string;
  /** Pool to serve. */
  pool?: string;
  /** Labels, sent as `key=value` pairs. */
  labels?: Record<string, string>;
  /** Says the worker answers pings (`Pothead-Ping: 1`). */
  ping?: boolean;
  /** Says the worker renews parked connections (`Pothead-Park-Renew: 1`). */
  renew?: boolean;
  /** Says the worker takes held requests (`Pothead-Hold: 1`; `_hold.ts`). */
  hold?: boolean;
}

/** Encodes a worker's handshake request (draft-kazuho-ptth-ptth form). */
export function encodeHandshake(options: HandshakeOptions): Uint8Array {
  const fields: [string, string][] = [
    ["host", options.host],
    ["upgrade", "ptth"],
    ["connection", "Upgrade"],
    ["alpn", "http%2F1.1"],
  ];
  if (options.token !== undefined) {
    fields.push(["authorization", `Bearer ${options.token}`]);
  }
  if (options.workerId !== undefined) {
    fields.push(["pothead-worker-id", options.workerId]);
  }
  if (options.pool !== undefined) fields.push(["pothead-pool", options.pool]);
  const labels = Object.entries(options.labels ?? {});
  if (labels.length > 0) {
    fields.push([
      "pothead-labels",
      labels.map(([k, v]) => `${k}=${v}`).join(", "),
    ]);
  }
  if (options.ping === true) fields.push([PING_OPTION_FIELD, "1"]);
  if (options.renew === true) fields.push([RENEW_OPTION_FIELD, "1"]);
  if (options.hold === true) fields.push([HOLD_OPTION_FIELD, "1"]);
  const { buf, length } = encodeHead("GET / HTTP/1.1", fields);
  return buf.subarray(0, length);
}

/**
 * Worker side: sends the handshake on `conn` and reads the hub's answer.
 * Bytes after the 101 stay in `reader` (they are the first request).
 * Resolves with what the 101 said (ping interval, hub id).
 *
 * @throws {Error} naming the hub's status and message when refused.
 */
export async function workerHandshake(
  conn: Connection,
  reader: BufferedReader,
  options: HandshakeOptions,
): Promise<HubAnswer> {
  await writeAll(conn, encodeHandshake(options));
  while (true) {
    const parsed = parseResponseHead(
      reader.buf,
      reader.start,
      reader.end,
      DEFAULT_LIMITS,
    );
    if (parsed !== null) {
      reader.consume(parsed.used);
      const head = parsed.value;
      if (head.status === 101) return hubAnswer(head.headers);
      const fields = framingFields(head.headers);
      let text = "";
      if (fields.contentLength > 0 && fields.contentLength < 4096) {
        while (reader.buffered < fields.contentLength && await reader.fill());
        text = new TextDecoder().decode(
          reader.take(fields.contentLength),
        ).trim();
      }
      throw new Error(
        `Hub refused the handshake: ${head.status} ${head.reason}${
          text ? `: ${text}` : ""
        }`,
      );
    }
    if (!(await reader.fill())) {
      throw new Error("Hub closed the connection during the handshake");
    }
  }
}

/**
 * Hub side: reads a handshake request head from `reader`.
 * Resolves `null` if the connection ends first.
 */
export async function readHandshake(
  reader: BufferedReader,
): Promise<RequestHead | null> {
  while (true) {
    const parsed = parseRequestHead(
      reader.buf,
      reader.start,
      reader.end,
      { ...DEFAULT_LIMITS, maxHeadSize: 8 * 1024 },
    );
    if (parsed !== null) {
      reader.consume(parsed.used);
      return parsed.value;
    }
    if (!(await reader.fill())) return null;
  }
}
