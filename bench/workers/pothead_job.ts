/**
 * The queueing benchmark's job as a POTHEAD handler module: the same
 * one-at-a-time job as `serial_worker.ts`, for
 * `worker.ts --concurrency 1 bench/workers/pothead_job.ts`.
 *
 * `BENCH_WORKER_ID` names the worker in `x-bench-worker` (default
 * `p<pid>`); `BENCH_SERVICE_MODE` is `sleep` (default) or `cpu`.
 *
 * @module
 */

import { makeJob, parseMode } from "./serial_worker.ts";

/** The handler: runs the requested job, one at a time. */
const handler: (request: Request) => Promise<Response> = makeJob(
  Deno.env.get("BENCH_WORKER_ID") ?? `p${Deno.pid}`,
  parseMode(Deno.env.get("BENCH_SERVICE_MODE")),
);

export default handler;
