/**
 * The POTHEAD worker runner: dials the hub and serves HTTP on the
 * connections it opened, one request at a time per connection.
 *
 * {@linkcode connectWorker} runs any fetch handler (the `Deno.serve`
 * contract). Run as a program it loads a handler module, the same file that
 * `deno serve` would run:
 *
 * ```sh
 * deno run -A worker.ts --connect 127.0.0.1:4040 --concurrency 2 handler.ts
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

import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { DEFAULT_LIMITS, type HeadLimits } from "./_codec.ts";
import type { Connection } from "./_io.ts";
import {
  type FetchHandler,
  serveConnection,
} from "./_serve_conn.ts";
import {
  flagOrEnv,
  parseDuration,
  parseHostPort,
  parseInteger,
  UsageError,
  VERSION,
} from "./_cli.ts";

export type { FetchHandler, WorkerHandlerInfo } from "./_serve_conn.ts";
export { NOT_STARTED_RESPONSE } from "./_serve_conn.ts";

/** A handler module's default export: a function or an object with `fetch`. */
export type HandlerExport = FetchHandler | { fetch: FetchHandler };

/** Options for {@linkcode connectWorker}. Every field is optional. */
export interface WorkerOptions {
  /**
   * The hub's worker listener host.
   * @default {"127.0.0.1"}
   */
  hostname?: string;
  /**
   * The hub's worker listener port.
   * @default {4040}
   */
  port?: number;
  /**
   * Connections kept open to the hub, which is the most requests this worker
   * runs at once.
   * @default {1}
   */
  concurrency?: number;
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
  /** Limits on request heads and chunk lines from the hub. */
  limits?: Partial<HeadLimits>;
  /**
   * Opens one connection to the hub. By default a TCP connection with
   * no-delay and keepalive on.
   */
  connect?: (hostname: string, port: number) => Promise<Connection>;
  /** Receives handler, protocol and connection errors. Default: ignored. */
  onError?: (error: unknown, context: string) => void;
  /**
   * Adaptive capacity: awaited before each slot (re)connects to the hub, so
   * a slot is offered only when the gate opens (e.g. while CPU and memory
   * have room; see the README). With a gate, each connection carries one
   * request and then reconnects through the gate. The signal aborts when
   * the worker drains or closes. Default: no gate.
   */
  gate?: (slot: number, signal: AbortSignal) => Promise<void>;
  /** Called after each successful connection to the hub. */
  onConnect?: (slot: number) => void;
}

/** A running worker. */
export interface WorkerHandle {
  /** Resolves when every connection has ended after a drain or close. */
  readonly finished: Promise<void>;
  /** Connections open to the hub right now. */
  readonly connected: number;
  /**
   * Stops taking requests: idle connections are given back to the hub (with
   * the "not started" 408, so a request crossing on the wire goes to another
   * worker), requests in progress finish. Resolves when all have ended.
   */
  drain(): Promise<void>;
  /** Closes every connection at once; handlers see their signals abort. */
  close(): void;
}

async function tcpConnect(hostname: string, port: number): Promise<Connection> {
  const conn = await Deno.connect({ hostname, port, transport: "tcp" });
  try {
    conn.setNoDelay(true);
    conn.setKeepAlive(true);
  } catch {
    // not fatal
  }
  return conn;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
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

/**
 * Connects `concurrency` slots to a hub and serves `handler` on them, each
 * slot one request at a time, reconnecting with jittered exponential backoff
 * whenever the hub is unreachable.
 *
 * @param handler a fetch handler, or an object with a `fetch` method.
 * @param options where the hub is and how many slots to keep.
 * @returns a handle to drain or close the worker.
 * @throws {RangeError} naming an invalid option.
 */
export function connectWorker(
  handler: HandlerExport,
  options: WorkerOptions = {},
): WorkerHandle {
  const fetch = toHandler(handler);
  const hostname = options.hostname ?? "127.0.0.1";
  const port = options.port ?? 4040;
  const concurrency = options.concurrency ?? 1;
  const minBackoff = options.minBackoff ?? 100;
  const maxBackoff = options.maxBackoff ?? 5000;
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new RangeError(
      `Invalid option "concurrency": expected an integer >= 1, got ${concurrency}`,
    );
  }
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new RangeError(`Invalid option "port": got ${port}`);
  }
  if (!(minBackoff > 0) || !(maxBackoff >= minBackoff)) {
    throw new RangeError(
      `Invalid options "minBackoff"/"maxBackoff": got ${minBackoff}/${maxBackoff}`,
    );
  }
  const limits = { ...DEFAULT_LIMITS, ...options.limits };
  const connect = options.connect ?? tcpConnect;
  const onError = options.onError ?? (() => {});
  const draining = new AbortController();
  const closing = new AbortController();
  const stop = AbortSignal.any([draining.signal, closing.signal]);
  const open = new Set<Connection>();
  const peer: Deno.NetAddr = { transport: "tcp", hostname, port };

  const backoff = (failures: number) => {
    const ceiling = Math.min(maxBackoff, minBackoff * 2 ** (failures - 1));
    return ceiling / 2 + Math.random() * ceiling / 2;
  };

  async function slot(index: number): Promise<void> {
    let failures = 0;
    while (!stop.aborted) {
      let conn: Connection;
      try {
        if (options.gate !== undefined) {
          await options.gate(index, stop);
          if (stop.aborted) break;
        }
        conn = await connect(hostname, port);
      } catch (error) {
        failures++;
        onError(error, "connect");
        await sleep(backoff(failures), stop);
        continue;
      }
      if (stop.aborted) {
        conn.close();
        break;
      }
      open.add(conn);
      options.onConnect?.(index);
      const since = performance.now();
      const served = await serveConnection(conn, {
        handler: fetch,
        limits,
        drain: stop,
        onError,
        peer,
        maxRequests: options.gate === undefined ? Infinity : 1,
      });
      open.delete(conn);
      // A hub that accepts and drops connections at once gets backoff too.
      if (served === 0 && performance.now() - since < 1000) {
        failures++;
        await sleep(backoff(failures), stop);
      } else {
        failures = 0;
      }
    }
  }

  const slots: Promise<void>[] = [];
  for (let i = 0; i < concurrency; i++) slots.push(slot(i));
  const finished = Promise.all(slots).then(() => {});
  options.signal?.addEventListener("abort", () => draining.abort(), {
    once: true,
  });
  if (options.signal?.aborted) draining.abort();

  return {
    finished,
    get connected() {
      return open.size;
    },
    drain() {
      draining.abort();
      return finished;
    },
    close() {
      closing.abort();
      for (const conn of open) {
        try {
          conn.close();
        } catch {
          // already closed
        }
      }
    },
  };
}

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

const HELP = `POTHEAD worker ${VERSION}: serve a fetch handler through a hub.

Usage: deno run -A worker.ts --connect HOST:PORT [options] HANDLER

HANDLER is a module whose default export is a function (request, info) =>
Response or an object with a fetch method (a file that runs under
\`deno serve\` runs here unchanged).

Options (each also as the environment variable in brackets):
  --connect HOST:PORT   the hub's worker port [POTHEAD_CONNECT] (127.0.0.1:4040)
  --concurrency N       connections kept open = most requests at once
                        [POTHEAD_CONCURRENCY] (1)
  --max-backoff T       longest reconnect delay [POTHEAD_MAX_BACKOFF] (5s)
  -h, --help            show this help
  -V, --version         show the version

SIGINT or SIGTERM drains: requests in progress finish, then exit 0.
A second signal exits at once.
`;

/**
 * The worker command line. Returns the exit code.
 *
 * @param args command-line arguments, without the program name.
 */
export async function main(args: string[] = Deno.args): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        connect: { type: "string" },
        concurrency: { type: "string" },
        "max-backoff": { type: "string" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
      },
      strict: true,
      allowPositionals: true,
    });
  } catch (error) {
    console.error(`pothead-worker: ${(error as Error).message}\n\n${HELP}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (values.version) {
    console.log(`pothead-worker ${VERSION}`);
    return 0;
  }
  let target;
  let concurrency;
  let maxBackoff;
  try {
    if (positionals.length !== 1) {
      throw new UsageError(
        `expected exactly one handler module, got ${positionals.length}`,
      );
    }
    target = parseHostPort(
      flagOrEnv(values.connect, "POTHEAD_CONNECT") ?? "127.0.0.1:4040",
      "--connect",
    );
    concurrency = parseInteger(
      flagOrEnv(values.concurrency, "POTHEAD_CONCURRENCY"),
      "--concurrency",
      1,
      1,
      10_000,
    );
    maxBackoff = parseDuration(
      flagOrEnv(values["max-backoff"], "POTHEAD_MAX_BACKOFF"),
      "--max-backoff",
      5000,
    );
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`pothead-worker: ${error.message}\n\n${HELP}`);
    return 2;
  }
  let handler: FetchHandler;
  try {
    handler = await loadHandler(positionals[0]);
  } catch (error) {
    console.error(`pothead-worker: ${(error as Error).message}`);
    return 1;
  }
  let connectedOnce = false;
  let lastConnectError = "";
  const worker = connectWorker(handler, {
    ...target,
    concurrency,
    maxBackoff: Math.max(100, maxBackoff),
    onConnect() {
      if (connectedOnce) return;
      connectedOnce = true;
      console.log(
        `Connected to ${target.hostname}:${target.port} (concurrency ${concurrency})`,
      );
    },
    onError(error, context) {
      const text = (error as Error)?.message ?? String(error);
      if (context === "connect") {
        // One line per distinct failure, not one per retry.
        if (text !== lastConnectError) {
          console.error(`pothead-worker: cannot connect: ${text} (retrying)`);
        }
        lastConnectError = text;
        return;
      }
      lastConnectError = "";
      console.error(`pothead-worker: ${context}: ${text}`);
    },
  });
  let signals = 0;
  const onSignal = () => {
    if (++signals > 1) Deno.exit(1);
    console.error(
      "pothead-worker: draining (send the signal again to exit now)",
    );
    worker.drain();
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  await worker.finished;
  Deno.removeSignalListener("SIGINT", onSignal);
  Deno.removeSignalListener("SIGTERM", onSignal);
  return 0;
}

if (import.meta.main) Deno.exit(await main());
