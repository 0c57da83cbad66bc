/**
 * POTHEAD: a reverse-HTTP hub that load-balances expensive, non-concurrent
 * HTTP requests.
 *
 * Consumers send ordinary HTTP requests to the hub. Workers dial *out* to the
 * hub's worker port and act as the HTTP server on the connection they opened;
 * each connection carries one request at a time. The hub keeps one FIFO queue
 * and sends its head down the next idle worker connection, so a worker takes
 * exactly as much work as the connections it keeps open, and no request waits
 * inside a busy worker while another worker idles.
 *
 * - {@linkcode serveHub} / {@linkcode Hub}: the hub (run this module to start
 *   one: `deno run -A jsr:@pothead/hub`).
 * - {@linkcode connectWorker}: serve any fetch handler as a worker.
 *
 * @example A hub and a worker in one process
 * ```ts ignore
 * import { connectWorker, serveHub } from "@pothead/hub";
 *
 * const hub = serveHub({ port: 8080, workerPort: 4040 });
 * const worker = connectWorker(() => new Response("hello\n"), {
 *   port: hub.workerAddr.port,
 *   concurrency: 4,
 * });
 * const res = await fetch("http://127.0.0.1:8080/");
 * console.log(await res.text()); // "hello"
 * await worker.drain();
 * await hub.shutdown();
 * ```
 *
 * @module
 */

export {
  Hub,
  type HubLogRecord,
  type HubOptions,
  type HubRequestInfo,
  type HubServer,
  type HubStats,
  QUEUE_TIME_HEADER,
  serveHub,
  type ServeHubOptions,
} from "./hub.ts";
export {
  connectWorker,
  type FetchHandler,
  type HandlerExport,
  loadHandler,
  type WorkerHandle,
  type WorkerHandlerInfo,
  type WorkerOptions,
} from "./worker.ts";
export type { Connection } from "./_io.ts";

import { main } from "./hub.ts";

if (import.meta.main) Deno.exit(await main());
