/**
 * A hub and in-process workers on loopback with test-friendly settings:
 * ports picked by the system, a short shutdown grace, fast reconnects.
 *
 * @module
 */

import { type HubServer, serveHub, type ServeHubOptions } from "../hub.ts";
import {
  connectWorker as connect,
  type FetchHandler,
  type HandlerExport,
  type WorkerHandle,
  type WorkerOptions,
} from "../worker.ts";

/**
 * The worker engine under test: `POTHEAD_ENGINE` (`serve`, `inline` or
 * `auto`), the variable the worker CLI reads too. The test task runs the
 * suite once with each engine.
 */
export const ENGINE = (Deno.env.get("POTHEAD_ENGINE") ??
  "auto") as NonNullable<WorkerOptions["engine"]>; // connectWorker checks it

/** `connectWorker` with the engine under test unless the test names one. */
export function connectWorker(
  handler: HandlerExport,
  options: WorkerOptions = {},
): WorkerHandle {
  return connect(handler, { engine: ENGINE, ...options });
}

/** Starts a hub on 127.0.0.1 with free ports; `options` override. */
export function startHub(options: ServeHubOptions = {}): HubServer {
  return serveHub({
    hostname: "127.0.0.1",
    port: 0,
    workerPort: 0,
    shutdownGrace: 1000,
    ...options,
  });
}

/** Connects an in-process worker to `server` (concurrency 1 by default). */
export function startWorker(
  server: HubServer,
  handler: FetchHandler,
  options: { concurrency?: number; onConnect?: (hub: string) => void } = {},
): WorkerHandle {
  return connectWorker(handler, {
    hostname: "127.0.0.1",
    port: server.workerAddr.port,
    concurrency: options.concurrency ?? 1,
    minBackoff: 10,
    maxBackoff: 100,
    onConnect: options.onConnect,
  });
}
