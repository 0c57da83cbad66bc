/**
 * Handler for the slow-clients benchmark: `POST /upload` reads the whole
 * request body, then works 20 ms, and answers `<bytes> <ms>`, the second
 * figure being how long it waited for the body; `GET /download?bytes=N`
 * works 20 ms and answers N bytes (with Content-Length) in 64 KiB chunks.
 *
 * @module
 */

import { download } from "./stream.ts";

const WORK_MS = 20;

const work = () => new Promise((r) => setTimeout(r, WORK_MS));

/** Reads uploads, generates downloads, each after 20 ms of "work". */
export default async function handler(req: Request): Promise<Response> {
  const url = new URL(req.url);
  if (url.pathname === "/upload") {
    const start = performance.now();
    let total = 0;
    if (req.body !== null) {
      for await (const chunk of req.body) total += chunk.length;
    }
    const waited = performance.now() - start;
    await work();
    return new Response(`${total} ${waited.toFixed(1)}`);
  }
  if (url.pathname === "/download") {
    const size = Number(url.searchParams.get("bytes") ?? "0");
    await work();
    return download(size);
  }
  return new Response("not found\n", { status: 404 });
}
