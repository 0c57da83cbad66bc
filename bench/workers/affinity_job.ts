/**
 * The affinity benchmark's job as a POTHEAD handler module, for
 * `worker.ts --concurrency 1 bench/workers/affinity_job.ts`: a worker that
 * keeps the last few "models" it used loaded, like an inference server with
 * room for C models in memory.
 *
 * A request names its model in `x-bench-model`. A loaded model costs the
 * request's own service time (`x-service-ms` or `ms`, as for
 * `serial_worker.ts`: the warm cost); one not loaded costs `BENCH_COLD_MS`
 * (default 60: the load and the run) and then joins the loaded ones,
 * evicting the least recently used past `BENCH_MODEL_SLOTS` (default 2).
 * Both wait on a timer (`Sleeper`), so CPU does not decide the result. A
 * request without a model (the warm-up) just takes its service time.
 *
 * The answer carries `x-bench-cache` (`warm`, `cold` or `none`) beside the
 * queueing job's timings (`x-bench-worker`, `x-bench-arrived`,
 * `x-bench-started`, `x-bench-finished`). `BENCH_WORKER_ID` names the
 * worker (default `p<pid>`).
 *
 * @module
 */

import { Sleeper } from "./_sleep.ts";
import { requestedMs } from "./serial_worker.ts";

const OK = new TextEncoder().encode("ok\n");

function clock(): number {
  return performance.timeOrigin + performance.now();
}

/** What a worker of this job is configured with. */
export interface ModelCacheOptions {
  /** Models kept loaded at once. */
  slots: number;
  /** Cost of a request whose model is not loaded, ms. */
  coldMs: number;
}

/**
 * Reads {@linkcode ModelCacheOptions} from `BENCH_MODEL_SLOTS` and
 * `BENCH_COLD_MS`.
 *
 * @throws {RangeError} on a bad value.
 */
export function optionsFromEnv(
  env: (name: string) => string | undefined = (n) => Deno.env.get(n),
): ModelCacheOptions {
  const slots = Number(env("BENCH_MODEL_SLOTS") ?? "2");
  const coldMs = Number(env("BENCH_COLD_MS") ?? "60");
  if (!Number.isInteger(slots) || slots < 1 || slots > 1000) {
    throw new RangeError(`Invalid BENCH_MODEL_SLOTS: got ${slots}`);
  }
  if (!(coldMs >= 0 && coldMs <= 600_000)) {
    throw new RangeError(`Invalid BENCH_COLD_MS: got ${coldMs}`);
  }
  return { slots, coldMs };
}

/**
 * An LRU set of loaded models.
 */
export class ModelCache {
  readonly #slots: number;
  // Insertion order is recency: least recently used first.
  readonly #loaded = new Set<string>();

  constructor(slots: number) {
    this.#slots = slots;
  }

  /**
   * Uses `model`: returns whether it was loaded, and makes it the most
   * recently used (loading it, and evicting the least recently used past
   * the bound, if it was not).
   */
  use(model: string): boolean {
    const warm = this.#loaded.delete(model);
    this.#loaded.add(model);
    if (this.#loaded.size > this.#slots) {
      this.#loaded.delete(this.#loaded.values().next().value!);
    }
    return warm;
  }

  /** The loaded models, least recently used first. */
  get loaded(): string[] {
    return [...this.#loaded];
  }
}

/**
 * Makes the job: a fetch handler that runs one request at a time (the
 * worker has one slot) with a warm or a cold cost.
 *
 * @param id the worker id reported in `x-bench-worker`.
 * @param options models kept loaded, and the cold cost.
 * @returns the handler.
 */
export function makeAffinityJob(
  id: string,
  options: ModelCacheOptions,
): (request: Request) => Promise<Response> {
  const sleeper = new Sleeper();
  const cache = new ModelCache(options.slots);
  let tail: Promise<void> = Promise.resolve();
  return async (request) => {
    const arrived = clock();
    const ms = requestedMs(request);
    if (ms === null) {
      return new Response("invalid service time\n", { status: 400 });
    }
    const model = request.headers.get("x-bench-model");
    const previous = tail;
    const { promise: done, resolve: release } = Promise.withResolvers<void>();
    tail = done;
    try {
      await previous;
      if (request.signal.aborted) {
        return new Response("abandoned\n", { status: 499 });
      }
      const started = clock();
      const state = model === null
        ? "none"
        : cache.use(model)
        ? "warm"
        : "cold";
      await sleeper.sleep(state === "cold" ? options.coldMs : ms);
      const finished = clock();
      return new Response(OK, {
        headers: {
          "content-type": "text/plain",
          "content-length": String(OK.length),
          "x-bench-worker": id,
          "x-bench-arrived": arrived.toFixed(3),
          "x-bench-started": started.toFixed(3),
          "x-bench-finished": finished.toFixed(3),
          "x-bench-cache": state,
        },
      });
    } finally {
      release();
    }
  };
}

/** The handler: the job with the environment's options. */
const handler: (request: Request) => Promise<Response> = makeAffinityJob(
  Deno.env.get("BENCH_WORKER_ID") ?? `p${Deno.pid}`,
  optionsFromEnv(),
);

export default handler;
