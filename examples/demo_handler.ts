/**
 * The demo's handler: one pool of workers serves every path, so this routes
 * by path to the other examples: `/cpu` (CPU-bound work, `?ms=`), `/sse`
 * (server-sent events, `?n=` and `?interval=`), anything else to hello.
 *
 * Under POTHEAD: `deno task demo` starts a hub and two workers running it.
 * As a plain server: `deno serve examples/demo_handler.ts`.
 *
 * @module
 */

import cpu from "./cpu.ts";
import hello from "./hello.ts";
import sse from "./sse.ts";

function under(pathname: string, prefix: string): boolean {
  return pathname === prefix || pathname.startsWith(prefix + "/");
}

export default {
  fetch(req: Request): Response {
    const { pathname } = new URL(req.url);
    if (under(pathname, "/cpu")) return cpu.fetch(req);
    if (under(pathname, "/sse")) return sse.fetch(req);
    return hello.fetch(req);
  },
} satisfies Deno.ServeDefaultExport;
