/**
 * The POTHEAD worker runner: dials the hub and serves HTTP on the
 * connections it opened, one request at a time per connection.
 *
 * {@linkcode connectWorker} runs any fetch handler (the `Deno.serve`
 * contract). By default the handler runs under `Deno.serve` itself, on a
 * private loopback listener that each hub connection is relayed to (the
 * `engine` option). Run as a program it loads a handler module, the same
 * file that `deno serve` would run:
 *
 * ```sh
 * deno run -A --unstable-no-legacy-abort worker.ts \
 *   --connect 127.0.0.1:4040 --concurrency 2 handler.ts
 * ```
 *
 * @example Serve a handler through a hub
 * ```ts ignore
 * import { connectWorker } from "@pothead/hub/worker";
 *
 * const worker = connectWorker(
 *   (req) => new Response(`hello from ${new URL(req.url).pathname}\n`),
 *   { hostname: "127.0.0.1", port: 4040, concurrency: 2 },
 * );
 * Deno.addSignalListener("SIGTERM", () => worker.drain());
 * await worker.finished;
 * ```
 *
 * @module
 */

import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { DEFAULT_LIMITS, type HeadLimits } from "./_codec.ts";
import { BufferedReader, type Connection, onAbortUntil } from "./_io.ts";
import { type FetchHandler, serveConnection } from "./_serve_conn.ts";
import { NativeEngine } from "./_serve_native.ts";
import { Dialer, type Endpoint, type Target } from "./_dialer.ts";
import {
  type HandshakeOptions,
  identityProblem,
  workerHandshake,
} from "./_handshake.ts";
import { main } from "./_worker_cli.ts";

export type { FetchHandler, WorkerHandlerInfo } from "./_serve_conn.ts";
export type { HeadLimits } from "./_codec.ts";
export { NOT_STARTED_RESPONSE } from "./_serve_conn.ts";
export {
  type BackendHandler,
  backendHandler,
  type BackendOptions,
} from "./_backend.ts";
export {
  capacityGate,
  type CapacityOptions,
  type CapacityRoots,
  type CapacityUsage,
  type SlotGate,
} from "./_capacity.ts";
export { main };

/** A handler module's default export: a function or an object with `fetch`. */
export type HandlerExport = FetchHandler | { fetch: FetchHandler };

/** Options for {@linkcode connectWorker}. Every field is optional. */
export interface WorkerOptions {
  /**
   * The hub's worker listener host (when `hubs` is not given).
   * @default {"127.0.0.1"}
   */
  hostname?: string;
  /**
   * The hub's worker listener port (when `hubs` is not given).
   * @default {4040}
   */
  port?: number;
  /**
   * Several hubs as `host:port`. Names resolve to all their A and AAAA
   * records, re-resolved every `resolveInterval`; the worker offers its free
   * slots to every hub (see the README, "Many hubs"). Addresses of one name
   * that reach the same hub (by the id it sends in the handshake) are served
   * as one.
   */
  hubs?: readonly string[];
  /**
   * Most requests this worker runs at once (and connections it keeps open
   * to each hub while idle).
   * @default {1}
   */
  concurrency?: number;
  /**
   * Requests after which the worker drains by itself, as on
   * {@linkcode WorkerHandle.drain}: it starts no more (the hub sends them
   * to other workers), finishes those in progress, and `finished`
   * resolves, so the process can exit and its supervisor start a fresh one.
   * For handlers that leak memory or handles from request to request
   * (native libraries, long-lived caches). 0: never.
   * @default {0}
   */
  maxRequests?: number;
  /**
   * With `maxRequests`: up to this many more, drawn once at random when the
   * worker starts, so workers started together do not all drain together.
   * @default {0}
   */
  maxRequestsJitter?: number;
  /**
   * Bytes of resident memory (RSS) past which the worker drains by itself,
   * as with `maxRequests`: checked each time a request ends, so a handler
   * that leaks is recycled before the machine runs short. 0: never.
   * @default {0}
   */
  maxRss?: number;
  /**
   * Called once when the worker begins to drain by itself (`maxRequests`
   * or `maxRss`), with why.
   */
  onRecycle?: (reason: RecycleReason) => void;
  /** Aborting it drains the worker (see {@linkcode WorkerHandle.drain}). */
  signal?: AbortSignal;
  /**
   * First reconnect delay in milliseconds; it doubles per failure, with
   * jitter, up to `maxBackoff`.
   * @default {100}
   */
  minBackoff?: number;
  /**
   * Longest reconnect delay in milliseconds.
   * @default {5000}
   */
  maxBackoff?: number;
  /**
   * Milliseconds between DNS re-resolutions of hub names; 0 resolves once.
   * @default {5000}
   */
  resolveInterval?: number;
  /** DNS server to ask instead of the system's (e.g. for tests). */
  nameServer?: { ipAddr: string; port?: number };
  /** Connect with TLS; the certificate must match the hub's name. */
  tls?: boolean;
  /** Extra PEM root certificates for TLS (a private CA). */
  caCerts?: readonly string[];
  /**
   * Bearer token for the PTTH handshake. Giving a token, `workerId`,
   * `pool` or `labels` makes the worker open each connection with the
   * handshake; otherwise it is a plain worker (the original protocol).
   * A function is called for each connection the worker opens, so a
   * rotated secret is used from the next one on (the hub ends connections
   * whose token it withdrew, and the worker redials); a token it returns
   * that no hub would take fails that connection, which is retried.
   */
  token?: string | (() => string);
  /** Worker id sent in the handshake; groups this worker's slots. */
  workerId?: string;
  /** Pool to serve, sent in the handshake. */
  pool?: string;
  /** Labels sent in the handshake. */
  labels?: Record<string, string>;
  /**
   * How requests reach the handler:
   * - `"serve"`: `Deno.serve` on a private loopback listener (127.0.0.1,
   *   random port, refusing connections it did not open), with each hub
   *   connection relayed to it byte for byte. Deno's native server parses
   *   and builds the `Request`; about half the CPU per request of `"inline"`.
   * - `"inline"`: our own HTTP/1.1 server in JavaScript on the hub
   *   connection itself; opens no listener.
   * - `"auto"`: `"serve"` if the listener can start (it needs net
   *   permission for 127.0.0.1), else `"inline"` (reported to `onError`).
   * @default {"auto"}
   */
  engine?: "auto" | "serve" | "inline";
  /**
   * Limits on request heads and chunk lines from the hub (the inline
   * engine; `Deno.serve` applies its own).
   */
  limits?: Partial<HeadLimits>;
  /**
   * Opens one connection to the hub. By default TCP (or TLS) with no-delay
   * and keepalive on.
   */
  connect?: (hostname: string, port: number) => Promise<Connection>;
  /**
   * Adaptive capacity: awaited before a connection beyond the first (at
   * each hub) opens, so the worker offers another slot only when the gate
   * opens (e.g. while CPU and memory have room; see `capacityGate`). With
   * a gate, each connection carries one request and then reconnects
   * through the gate. The signal aborts when the worker drains or closes.
   * Default: no gate.
   */
  gate?: (slot: number, signal: AbortSignal) => Promise<void>;
  /**
   * Receives handler, protocol and connection errors. Default: ignored. A
   * throw from it is ignored too.
   */
  onError?: (error: unknown, context: string) => void;
  /**
   * Called after each successful connection to a hub. A throw from it goes
   * to `onError` (context `"onConnect"`); the connection serves.
   */
  onConnect?: (hub: string) => void;
}

/** A running worker. */
export interface WorkerHandle {
  /** Resolves when every connection has ended after a drain or close. */
  readonly finished: Promise<void>;
  /** Connections open to hubs right now. */
  readonly connected: number;
  /** Requests in progress right now. */
  readonly active: number;
  /**
   * Stops taking requests: idle and parked connections are given back to
   * the hub (with the "not started" 408, so a request crossing on the wire
   * goes to another worker), requests in progress finish. Resolves when all
   * have ended.
   */
  drain(): Promise<void>;
  /** Closes every connection at once; handlers see their signals abort. */
  close(): void;
}

function toHandler(handler: HandlerExport): FetchHandler {
  if (typeof handler === "function") return handler;
  if (handler !== null && typeof handler?.fetch === "function") {
    return handler.fetch.bind(handler);
  }
  throw new TypeError(
    "Cannot use handler: expected a function (request) => Response or an object with a fetch method",
  );
}

function parseTarget(text: string): Target {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):([0-9]{1,5})$/.exec(text.trim());
  const port = m === null ? NaN : Number(m[3]);
  if (m === null || port < 1 || port > 65535) {
    throw new TypeError(
      `Invalid option "hubs": expected host:port, got ${JSON.stringify(text)}`,
    );
  }
  return { hostname: m[1] ?? m[2], port };
}

/** Why a worker began to drain by itself (see `WorkerOptions.onRecycle`). */
export type RecycleReason =
  | {
    /** It had started `maxRequests` requests (jitter included). */
    why: "requests";
    /** Requests it had started. */
    requests: number;
  }
  | {
    /** Its resident memory was over `maxRss` when a request ended. */
    why: "rss";
    /** Its resident memory then, in bytes. */
    rss: number;
    /** Requests it had started. */
    requests: number;
  };

/**
 * Connects to one or more hubs and serves `handler` there, at most
 * `concurrency` requests at a time, reconnecting with jittered exponential
 * backoff whenever a hub is unreachable.
 *
 * @param handler a fetch handler, or an object with a `fetch` method.
 * @param options where the hubs are and how many requests to run at once.
 * @returns a handle to drain or close the worker.
 * @throws {RangeError} or {TypeError} naming an invalid option.
 */
export function connectWorker(
  handler: HandlerExport,
  options: WorkerOptions = {},
): WorkerHandle {
  const fetch = toHandler(handler);
  const concurrency = options.concurrency ?? 1;
  const minBackoff = options.minBackoff ?? 100;
  const resolveInterval = options.resolveInterval ?? 5000;
  if (!(resolveInterval >= 0)) {
    throw new RangeError(
      `Invalid option "resolveInterval": expected a number >= 0, got ${resolveInterval}`,
    );
  }
  const maxBackoff = options.maxBackoff ?? 5000;
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new RangeError(
      `Invalid option "concurrency": expected an integer >= 1, got ${concurrency}`,
    );
  }
  for (const name of ["maxRequests", "maxRequestsJitter", "maxRss"] as const) {
    const value = options[name] ?? 0;
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new RangeError(
        `Invalid option "${name}": expected an integer >= 0, got ${value}`,
      );
    }
  }
  // The request that drains the worker; Infinity for none.
  const lastRequest = (options.maxRequests ?? 0) === 0
    ? Infinity
    : options.maxRequests! +
      Math.floor(Math.random() * ((options.maxRequestsJitter ?? 0) + 1));
  let started = 0;
  const maxRss = options.maxRss ?? 0;
  // Drains once, for the first reason that comes.
  let recycling = false;
  const recycle = (reason: RecycleReason) => {
    if (recycling || draining.signal.aborted) return;
    recycling = true;
    // It drains whatever the callback does: it runs in a microtask or in
    // an engine's release, where a throw would crash the process or leave
    // the worker declining every request without draining.
    try {
      options.onRecycle?.(reason);
    } catch (error) {
      onError(error, "recycle");
    }
    draining.abort();
  };
  const targets = options.hubs !== undefined
    ? options.hubs.map(parseTarget)
    : [{
      hostname: options.hostname ?? "127.0.0.1",
      port: options.port ?? 4040,
    }];
  if (targets.length === 0) {
    throw new TypeError('Invalid option "hubs": no hub given');
  }
  for (const t of targets) {
    if (!Number.isInteger(t.port) || t.port < 1 || t.port > 65535) {
      throw new RangeError(`Invalid option "port": got ${t.port}`);
    }
  }
  if (!(minBackoff > 0) || !(maxBackoff >= minBackoff)) {
    throw new RangeError(
      `Invalid options "minBackoff"/"maxBackoff": got ${minBackoff}/${maxBackoff}`,
    );
  }
  const limits = { ...DEFAULT_LIMITS, ...options.limits };
  // A callback that throws must not take the worker with it: onError is
  // called from engines and the dialer, where a throw lost the slot (or the
  // connection, from onConnect) and never reached the user either.
  const userOnError = options.onError;
  const onError = (error: unknown, context: string) => {
    try {
      userOnError?.(error, context);
    } catch {
      // nowhere left to report it
    }
  };
  const handshake: Omit<HandshakeOptions, "host"> | null =
    options.token !== undefined || options.workerId !== undefined ||
      options.pool !== undefined || options.labels !== undefined
      ? {
        token: undefined,
        workerId: options.workerId,
        pool: options.pool,
        labels: options.labels,
        // Both engines answer the hub's pings on idle connections, and
        // renew parked ones when the hub asks (_park.ts).
        ping: true,
        renew: true,
      }
      : null;
  const engine = options.engine ?? "auto";
  if (engine !== "auto" && engine !== "serve" && engine !== "inline") {
    throw new TypeError(
      `Invalid option "engine": expected "auto", "serve" or "inline", got ${
        JSON.stringify(engine)
      }`,
    );
  }
  const tokenOf = options.token;
  if (handshake !== null) {
    let token: string | undefined;
    try {
      token = typeof tokenOf === "function" ? tokenOf() : tokenOf;
    } catch (error) {
      throw new TypeError(
        `Invalid option "token": the function threw: ${
          error instanceof Error ? error.message : String(error)
        }`,
        { cause: error },
      );
    }
    const problem = identityProblem({ ...handshake, token });
    if (problem !== null) throw new TypeError(`Invalid option: ${problem}`);
  }
  let native: NativeEngine | null = null;
  if (engine !== "inline") {
    native = new NativeEngine(fetch, onError);
    try {
      native.start();
    } catch (error) {
      if (engine === "serve") throw error;
      native = null;
      onError(
        new Error(
          `Cannot start the Deno.serve engine, using the inline engine: ${
            error instanceof Error ? error.message : String(error)
          }`,
          { cause: error },
        ),
        "engine",
      );
    }
  }
  const draining = new AbortController();
  const closing = new AbortController();

  // `signal` aborting cuts a connect or a TLS handshake in progress.
  const open = async (
    endpoint: Endpoint,
    signal: AbortSignal,
  ): Promise<Connection> => {
    if (options.connect !== undefined) {
      return await options.connect(endpoint.address, endpoint.port);
    }
    const tcp = await Deno.connect({
      hostname: endpoint.address,
      port: endpoint.port,
      transport: "tcp",
      signal,
    });
    try {
      tcp.setNoDelay(true);
      tcp.setKeepAlive(true);
    } catch {
      // not fatal
    }
    if (!options.tls) return tcp;
    let tls: Deno.TlsConn | undefined;
    const cut = () => {
      try {
        (tls ?? tcp).close();
      } catch {
        // already closed, or startTls took over the TCP connection
      }
    };
    signal.addEventListener("abort", cut, { once: true });
    try {
      // Dial the resolved address but verify the certificate against the
      // name the user gave.
      tls = await Deno.startTls(tcp, {
        hostname: endpoint.name,
        caCerts: options.caCerts && [...options.caCerts],
      });
      signal.throwIfAborted();
      // The handshake is lazy; finish it here so a bad certificate is a
      // connect failure (with backoff), not a broken connection.
      await tls.handshake();
      return tls;
    } catch (error) {
      cut();
      throw error;
    } finally {
      signal.removeEventListener("abort", cut);
    }
  };

  const dialer = new Dialer(
    {
      targets,
      concurrency,
      resolveInterval,
      minBackoff,
      maxBackoff,
      resolve: async (name) => {
        if (name === "localhost") return ["127.0.0.1"];
        // A lookup still out when the worker stops is abandoned, not
        // left running (the dialer does not wait for one that hangs).
        const opts = {
          signal: AbortSignal.any([draining.signal, closing.signal]),
          ...(options.nameServer ? { nameServer: options.nameServer } : {}),
        };
        const found: string[] = [];
        const errors: unknown[] = [];
        for (const type of ["A", "AAAA"] as const) {
          try {
            found.push(...await Deno.resolveDns(name, type, opts));
          } catch (error) {
            errors.push(error);
          }
        }
        if (found.length === 0 && errors.length === 2) throw errors[0];
        return found;
      },
      async connect(endpoint) {
        // A hub that accepts and never answers (frozen, or not a hub), at
        // the TLS handshake or at ours, or a host that drops the SYN, must
        // not hold this connection, or the worker's close(), for ever.
        const cut = new AbortController();
        const timer = setTimeout(
          () => cut.abort(new Error(`no answer within ${CONNECT_TIMEOUT} ms`)),
          CONNECT_TIMEOUT,
        );
        const onClose = () => cut.abort(new Error("worker closed"));
        closing.signal.addEventListener("abort", onClose, { once: true });
        if (closing.signal.aborted) onClose();
        try {
          // A drain cuts it too until the hub can have sent anything.
          const conn = await open(
            endpoint,
            AbortSignal.any([cut.signal, draining.signal]),
          );
          if (handshake === null) return conn;
          // Not on drain from here: a 101 and a request may already be on
          // their way.
          const stop = () => {
            try {
              conn.close();
            } catch {
              // already closed
            }
          };
          cut.signal.addEventListener("abort", stop, { once: true });
          try {
            const reader = new BufferedReader(conn);
            const token = typeof tokenOf === "function" ? tokenOf() : tokenOf;
            if (typeof tokenOf === "function") {
              const problem = identityProblem({ token });
              if (problem !== null) throw new Error(problem);
            }
            const answer = await workerHandshake(conn, reader, {
              ...handshake,
              // Only the Deno.serve engine takes held requests (_hold.ts).
              hold: native !== null,
              token,
              host: endpoint.name,
            });
            // Requests that followed the 101 at once are in `reader`.
            return Object.assign(conn, {
              [READER]: reader,
              [PING_INTERVAL]: answer.pingInterval,
              [HUB_ID]: answer.hubId,
            });
          } catch (error) {
            stop();
            throw error;
          } finally {
            cut.signal.removeEventListener("abort", stop);
          }
        } catch (error) {
          throw cut.signal.reason ?? error;
        } finally {
          clearTimeout(timer);
          closing.signal.removeEventListener("abort", onClose);
        }
      },
      // A hub that pings and has not for three intervals (two seconds more
      // for short ones) is gone, though the connection looks open.
      silence(conn) {
        const interval = (conn as { [PING_INTERVAL]?: number })[PING_INTERVAL];
        return interval ? Math.max(3 * interval, interval + 2000) : 0;
      },
      // Learned in the handshake; a plain worker learns none.
      hubId(conn) {
        return (conn as { [HUB_ID]?: string })[HUB_ID];
      },
      serve(conn, endpoint, hooks) {
        const reader = (conn as { [READER]?: BufferedReader })[READER];
        const link = {
          drain: hooks.withdraw,
          onError,
          peer: {
            transport: "tcp" as const,
            hostname: endpoint.address,
            port: endpoint.port,
          },
          maxRequests: options.gate === undefined ? Infinity : 1,
          acquire: lastRequest === Infinity && maxRss === 0
            ? hooks.acquire
            : (queuedMs: () => number) => {
              // Past the last request (its drain is on its way): declined,
              // so the hub sends it to another worker.
              if (started >= lastRequest || !hooks.acquire(queuedMs)) {
                return false;
              }
              if (++started === lastRequest) {
                queueMicrotask(() =>
                  recycle({ why: "requests", requests: started })
                );
              }
              return true;
            },
          release: maxRss === 0 ? hooks.release : () => {
            // Before the release: a permit freed by a worker about to drain
            // must not be offered to the hubs first (a wasted round trip).
            const rss = Deno.memoryUsage().rss;
            if (rss > maxRss) recycle({ why: "rss", rss, requests: started });
            hooks.release();
          },
          reuse: hooks.reuse,
          wait: hooks.wait,
          noPark: hooks.noPark,
          heard: hooks.heard,
        };
        if (native !== null) return native.serve(conn, link, reader);
        return serveConnection(
          conn,
          { ...link, handler: fetch, limits },
          reader,
        );
      },
      gate: options.gate,
      onError,
      onConnect: (e) => {
        try {
          options.onConnect?.(e.key);
        } catch (error) {
          onError(error, "onConnect");
        }
      },
    },
    draining.signal,
    closing.signal,
  );

  const finished = dialer.run().finally(() => native?.close());
  onAbortUntil(options.signal, () => draining.abort(), finished);

  return {
    finished,
    get connected() {
      return dialer.connected;
    },
    get active() {
      return dialer.inUse;
    },
    drain() {
      draining.abort();
      return finished;
    },
    close() {
      closing.abort();
    },
  };
}

// Longest wait for a connection to open: TCP, TLS and the handshake.
const CONNECT_TIMEOUT = 10_000;

const READER = Symbol("reader");
const PING_INTERVAL = Symbol("pingInterval");
const HUB_ID = Symbol("hubId");

/**
 * Imports a handler module and returns its fetch handler: the default export
 * if it is a function, or its `fetch` method (the `deno serve` convention).
 *
 * @param specifier a file path (relative to the working directory) or URL.
 * @throws {TypeError} naming what the module exports instead.
 */
export async function loadHandler(specifier: string): Promise<FetchHandler> {
  const url = /^[a-z][a-z0-9+.-]+:/i.test(specifier)
    ? specifier
    : pathToFileURL(resolve(specifier)).href;
  const mod = await import(url);
  const d = mod.default;
  if (typeof d === "function") return d as FetchHandler;
  if (d !== null && typeof d === "object" && typeof d.fetch === "function") {
    return d.fetch.bind(d) as FetchHandler;
  }
  const found = d === undefined
    ? `no default export (exports: ${Object.keys(mod).join(", ") || "none"})`
    : `a default export of type ${d === null ? "null" : typeof d}${
      d !== null && typeof d === "object"
        ? ` with keys ${Object.keys(d).join(", ") || "none"}`
        : ""
    }`;
  throw new TypeError(
    `Cannot use handler module "${specifier}": found ${found}; expected a default export that is a function (request) => Response or an object with a fetch method`,
  );
}

if (import.meta.main) Deno.exit(await main());
