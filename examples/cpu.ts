/**
 * A CPU-bound handler: hashes a buffer in a pure-JS loop until `?ms=`
 * milliseconds (default 50, at most 60000) of CPU time are spent, then
 * answers with JSON naming the time spent and the process.
 *
 * The loop blocks the worker's event loop, as real CPU-bound work does: the
 * requests POTHEAD is built for. Two such requests on one worker process run
 * one after the other, so for parallel CPU work run one process per core
 * (each with `--concurrency 1`) rather than one process with a high
 * concurrency.
 *
 * Under POTHEAD (a hub listening for workers on 127.0.0.1:4040):
 *
 * ```sh
 * deno run --allow-net --allow-env --allow-read worker.ts \
 *   --connect 127.0.0.1:4040 examples/cpu.ts
 * curl 'localhost:8080/?ms=100'
 * ```
 *
 * As a plain server: `deno serve examples/cpu.ts`.
 *
 * @module
 */

const MAX_MS = 60_000;
const WORDS = 4096;

/** Mixes `state` into every word of `buf` once (FNV-1a style); returns the new state. */
function round(buf: Uint32Array, state: number): number {
  let h = state;
  for (let i = 0; i < buf.length; i++) {
    h = Math.imul(h ^ buf[i], 0x01000193) >>> 0;
    buf[i] = h ^ (h >>> 15);
  }
  return h;
}

/** Burns CPU for about `ms` milliseconds; returns rounds done and a digest. */
export function burn(ms: number): { rounds: number; digest: string } {
  const buf = new Uint32Array(WORDS);
  for (let i = 0; i < WORDS; i++) buf[i] = i;
  const until = performance.now() + ms;
  let state = 0x811c9dc5;
  let rounds = 0;
  // Always at least one round, so `?ms=0` still does (a little) work.
  do {
    state = round(buf, state);
    rounds++;
  } while (performance.now() < until);
  return { rounds, digest: state.toString(16).padStart(8, "0") };
}

export default {
  fetch(req: Request): Response {
    const param = new URL(req.url).searchParams.get("ms") ?? "50";
    const ms = Number(param);
    if (!/^[0-9]+(\.[0-9]+)?$/.test(param) || ms > MAX_MS) {
      return new Response(
        `Invalid ms: expected a number of milliseconds 0..${MAX_MS}, got "${param}"\n`,
        { status: 400, headers: { "content-type": "text/plain" } },
      );
    }
    const start = performance.now();
    const { rounds, digest } = burn(ms);
    const spent = performance.now() - start;
    return Response.json({
      ms: Math.round(spent * 10) / 10,
      requested: ms,
      rounds,
      digest,
      pid: Deno.pid,
    });
  },
} satisfies Deno.ServeDefaultExport;
