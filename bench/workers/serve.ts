/**
 * Serves a handler module directly on `Deno.serve` (the baseline the hub is
 * compared with): `deno run -A bench/workers/serve.ts HANDLER [PORT]`.
 * Prints `Listening on http://127.0.0.1:PORT/`.
 *
 * @module
 */

import { resolve } from "node:path";
import { pathToFileURL } from "node:url";

if (import.meta.main) {
  const [file, port = "0"] = Deno.args;
  if (file === undefined) {
    console.error("usage: serve.ts HANDLER [PORT]");
    Deno.exit(2);
  }
  const mod = await import(pathToFileURL(resolve(file)).href);
  const handler = typeof mod.default === "function"
    ? mod.default
    : mod.default.fetch.bind(mod.default);
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: Number(port),
    onListen(addr) {
      console.log(`Listening on http://${addr.hostname}:${addr.port}/`);
    },
  }, handler);
  const stop = () => server.shutdown();
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
  await server.finished;
  Deno.exit(0);
}
