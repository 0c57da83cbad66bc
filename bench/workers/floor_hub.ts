/**
 * The floor of POTHEAD's design in Deno, for the core benchmark: a
 * `Deno.serve` front that hands each request to a pooled raw worker
 * connection (`Deno.listen`) and relays the answer, with nothing else — no
 * header rules, no timeouts, no retries, no metrics, a fixed request head.
 * Only for `floor_worker.ts`, whose answers always carry Content-Length.
 *
 * ```sh
 * deno run -A bench/workers/floor_hub.ts   # prints both listening addresses
 * ```
 *
 * @module
 */

interface Link {
  conn: Deno.Conn;
  buf: Uint8Array<ArrayBuffer>;
}

const idle: Link[] = [];
const waiting: ((link: Link) => void)[] = [];
const encoder = new TextEncoder();

function release(link: Link): void {
  const next = waiting.shift();
  if (next !== undefined) next(link);
  else idle.push(link);
}

// Reads one Content-Length response; returns its body.
async function readResponse(link: Link): Promise<Uint8Array<ArrayBuffer>> {
  let end = 0;
  while (true) {
    const n = await link.conn.read(link.buf.subarray(end));
    if (n === null) throw new Error("worker closed the connection");
    end += n;
    const text = new TextDecoder().decode(link.buf.subarray(0, end));
    const head = text.indexOf("\r\n\r\n");
    if (head < 0) continue;
    const m = /\r\ncontent-length: *(\d+)/i.exec(text.slice(0, head));
    const length = m === null ? 0 : Number(m[1]);
    if (end >= head + 4 + length) {
      return link.buf.slice(head + 4, head + 4 + length);
    }
  }
}

const workers = Deno.listen({ hostname: "127.0.0.1", port: 0 });
const server = Deno.serve({
  hostname: "127.0.0.1",
  port: 0,
  onListen({ port }) {
    console.log(`Listening on http://127.0.0.1:${port}/ (consumers)`);
    console.log(
      `Listening on tcp://127.0.0.1:${workers.addr.port}/ (workers)`,
    );
  },
}, async (req) => {
  const link = idle.pop() ??
    await new Promise<Link>((resolve) => waiting.push(resolve));
  const path = req.url.slice(req.url.indexOf("/", 8));
  try {
    await link.conn.write(
      encoder.encode(`GET ${path} HTTP/1.1\r\nhost: floor\r\n\r\n`),
    );
    const body = await readResponse(link);
    release(link);
    return new Response(body, { headers: { "content-type": "text/plain" } });
  } catch (error) {
    link.conn.close();
    return new Response(`${error}\n`, { status: 502 });
  }
});

Deno.addSignalListener("SIGTERM", () => {
  workers.close();
  server.shutdown();
  Deno.exit(0);
});

for await (const conn of workers) {
  conn.setNoDelay(true);
  release({ conn, buf: new Uint8Array(16 * 1024) });
}
