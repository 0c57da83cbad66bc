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
 *   one: `deno run -A --unstable-no-legacy-abort jsr:@pothead/hub`; the flag
 *   is optional and saves a `DOMException` per request).
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
  type AccessRecord,
  type FairBy,
  type FairShare,
  type HeadLimits,
  Hub,
  type HubLogRecord,
  type HubOptions,
  type HubRequestInfo,
  type HubServer,
  type HubStats,
  type Outcome,
  type PoolOptions,
  type PoolStats,
  QUEUE_TIME_HEADER,
  type QueueClassStats,
  type Route,
  serveHub,
  type ServeHubOptions,
  type WorkerIdentity,
  type WorkerStats,
} from "./hub.ts";
export {
  type BackendHandler,
  backendHandler,
  type BackendOptions,
  capacityGate,
  type CapacityOptions,
  type CapacityRoots,
  type CapacityUsage,
  connectWorker,
  type FetchHandler,
  type HandlerExport,
  loadHandler,
  NOT_STARTED_RESPONSE,
  type RecycleReason,
  type SlotGate,
  type WorkerHandle,
  type WorkerHandlerInfo,
  type WorkerOptions,
} from "./worker.ts";
export type { Connection } from "./_io.ts";

import { main } from "./_hub_cli.ts";

if (import.meta.main) Deno.exit(await main());
