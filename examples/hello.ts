/**
 * The smallest handler: one line of text naming the path and the process
 * that answered, so you can watch requests spread over workers.
 *
 * Under POTHEAD (a hub listening for workers on 127.0.0.1:4040):
 *
 * ```sh
 * deno run --allow-net --allow-env --allow-read worker.ts \
 *   --connect 127.0.0.1:4040 --concurrency 2 examples/hello.ts
 * ```
 *
 * As a plain server: `deno serve examples/hello.ts`.
 *
 * @module
 */

export default {
  fetch(req: Request): Response {
    const { pathname } = new URL(req.url);
    return new Response(`Hello from ${pathname} (pid ${Deno.pid})\n`, {
      headers: { "content-type": "text/plain; charset=utf-8" },
    });
  },
} satisfies Deno.ServeDefaultExport;
