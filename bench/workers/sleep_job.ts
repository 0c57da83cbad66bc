/**
 * The many-hubs benchmark's job as a POTHEAD handler module: it sleeps for
 * the `ms` query parameter (milliseconds) and answers `ok`.
 *
 * ```sh
 * deno run -A worker.ts --connect 127.0.0.2:4040 --connect 127.0.0.3:4040 \
 *   --concurrency 1 bench/workers/sleep_job.ts
 * ```
 *
 * It keeps no queue of its own: with `--concurrency 1` the runner holds one
 * permit and declines a second request with the "not started" 408, whatever
 * hub it comes from. The handler checks that promise: `x-bench-overlap: 1`
 * marks a response whose job ran while another job of this process was
 * running (never expected with `--concurrency 1`).
 *
 * Response headers: `x-bench-worker` (this process: `BENCH_WORKER_ID`, or
 * `p<pid>`) and `x-bench-slept` (milliseconds actually slept).
 *
 * @module
 */

import { Sleeper } from "./_sleep.ts";

/** Longest job a request may ask for, in milliseconds. */
const MAX_MS = 60_000;

const ID = Deno.env.get("BENCH_WORKER_ID") ?? `p${Deno.pid}`;
const OK = new TextEncoder().encode("ok\n");

const sleeper = new Sleeper();
let running = 0;

/**
 * Sleeps for `?ms=` milliseconds (0 to 60000) and answers 200 `ok`.
 *
 * @param request the request; only its `ms` query parameter is read.
 * @returns `ok`, or 400 for a missing or invalid `ms`.
 */
export default async function handler(request: Request): Promise<Response> {
  const ms = Number(new URL(request.url).searchParams.get("ms") ?? "NaN");
  if (!(ms >= 0 && ms <= MAX_MS)) {
    return new Response(`invalid ms: expected 0 to ${MAX_MS}\n`, {
      status: 400,
    });
  }
  running++;
  const overlap = running > 1;
  const t0 = performance.now();
  try {
    await sleeper.sleep(ms);
  } finally {
    running--;
  }
  return new Response(OK, {
    headers: {
      "content-type": "text/plain",
      "x-bench-worker": ID,
      "x-bench-slept": (performance.now() - t0).toFixed(3),
      ...(overlap ? { "x-bench-overlap": "1" } : {}),
    },
  });
}
