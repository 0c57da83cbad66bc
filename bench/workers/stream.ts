/**
 * Handlers for the streaming benchmark: `POST /upload` reads and discards
 * the request body and answers with its length; `GET /download?bytes=N`
 * answers with N bytes (with Content-Length) generated in 64 KiB chunks.
 *
 * @module
 */

const CHUNK = new Uint8Array(64 * 1024).fill(120);

/** Counts uploads and generates downloads. */
export default async function handler(req: Request): Promise<Response> {
  const url = new URL(req.url);
  if (url.pathname === "/upload") {
    let total = 0;
    if (req.body !== null) {
      for await (const chunk of req.body) total += chunk.length;
    }
    return new Response(String(total));
  }
  if (url.pathname === "/download") {
    return download(Number(url.searchParams.get("bytes") ?? "0"));
  }
  return new Response("not found\n", { status: 404 });
}

/** A response of `size` bytes with its Content-Length, made as it is read. */
export function download(size: number): Response {
  let left = size;
  // The same bytes each time: nothing here keeps a chunk after enqueuing.
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (left <= 0) {
        controller.close();
        return;
      }
      const n = Math.min(left, CHUNK.length);
      controller.enqueue(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n));
      left -= n;
    },
  }, { highWaterMark: 0 });
  return new Response(body, {
    headers: { "content-length": String(size) },
  });
}
