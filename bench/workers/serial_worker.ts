/**
 * The backend of the queueing benchmark: an HTTP server that runs ONE job at
 * a time, like a single-threaded transcoder. Requests that arrive while a job
 * runs wait inside it, in arrival order (an in-process FIFO mutex). HAProxy
 * and nginx forward to it; POTHEAD runs the same job through
 * `pothead_job.ts`.
 *
 * A job lasts the milliseconds named by the `x-service-ms` header or the
 * `ms` query parameter. In `sleep` mode it waits on a timer (so 16 workers
 * fit on a 2-core machine); in `cpu` mode it spins for that long.
 *
 * Every response carries the worker's own timings, on its own clock
 * (`performance.timeOrigin + performance.now()`, milliseconds):
 * `x-bench-worker` (id), `x-bench-arrived` (handler called),
 * `x-bench-started` (job began: the worker was free), `x-bench-finished`
 * (job done, response handed back).
 *
 * ```sh
 * deno run --allow-net --allow-env bench/workers/serial_worker.ts --port 0 --id w0
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Sleeper } from "./_sleep.ts";

/** How a job spends its service time. */
export type ServiceMode = "sleep" | "cpu";

const OK = new TextEncoder().encode("ok\n");

/** Longest job a request may ask for, in milliseconds. */
const MAX_SERVICE_MS = 600_000;

function clock(): number {
  return performance.timeOrigin + performance.now();
}

function spin(ms: number): void {
  const end = performance.now() + ms;
  // Bounded by the clock; MAX_SERVICE_MS caps ms.
  while (performance.now() < end) { /* burn */ }
}

/** Reads the requested service time from a request, or null if invalid. */
export function requestedMs(request: Request): number | null {
  const header = request.headers.get("x-service-ms");
  const text = header ?? new URL(request.url).searchParams.get("ms") ?? "0";
  const ms = Number(text);
  return Number.isFinite(ms) && ms >= 0 && ms <= MAX_SERVICE_MS ? ms : null;
}

/**
 * Makes the benchmark job: a fetch handler that runs one request at a time
 * in arrival order and reports its timings in response headers.
 *
 * @param id the worker id reported in `x-bench-worker`.
 * @param mode `sleep` (timer) or `cpu` (spin).
 * @returns the handler.
 */
export function makeJob(
  id: string,
  mode: ServiceMode,
): (request: Request) => Promise<Response> {
  const sleeper = new Sleeper();
  let tail: Promise<void> = Promise.resolve();
  return async (request) => {
    const arrived = clock();
    const ms = requestedMs(request);
    if (ms === null) {
      return new Response("invalid service time\n", { status: 400 });
    }
    const previous = tail;
    const { promise: done, resolve: release } = Promise.withResolvers<void>();
    tail = done;
    try {
      await previous;
      // A request whose consumer left while it waited is not worth running.
      if (request.signal.aborted) {
        return new Response("abandoned\n", { status: 499 });
      }
      const started = clock();
      if (mode === "cpu") spin(ms);
      else await sleeper.sleep(ms);
      const finished = clock();
      return new Response(OK, {
        headers: {
          "content-type": "text/plain",
          "content-length": String(OK.length),
          "x-bench-worker": id,
          "x-bench-arrived": arrived.toFixed(3),
          "x-bench-started": started.toFixed(3),
          "x-bench-finished": finished.toFixed(3),
        },
      });
    } finally {
      release();
    }
  };
}

/** Parses the `--mode` value. */
export function parseMode(text: string | undefined): ServiceMode {
  const mode = text ?? "sleep";
  if (mode !== "sleep" && mode !== "cpu") {
    throw new TypeError(
      `Invalid service mode: expected "sleep" or "cpu", got "${mode}"`,
    );
  }
  return mode;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      hostname: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "0" },
      id: { type: "string", default: `w${Deno.pid}` },
      mode: { type: "string" },
    },
    strict: true,
  });
  const handler = makeJob(values.id, parseMode(values.mode));
  const server = Deno.serve({
    hostname: values.hostname,
    port: Number(values.port),
    onListen: ({ hostname, port }) =>
      console.log(`Listening on http://${hostname}:${port}/`),
  }, handler);
  const stop = () => server.shutdown();
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
  await server.finished;
  return 0;
}

if (import.meta.main) Deno.exit(await main());
