/**
 * The floor worker for the core benchmark's floor run: N raw connections to
 * `floor_hub.ts`, each answering every request head with a fixed
 * `200 hello` — no `Request`, no `Response`, no parsing beyond the blank line.
 *
 * ```sh
 * deno run -A bench/workers/floor_worker.ts 127.0.0.1:4040 4
 * ```
 *
 * @module
 */

const [address, count = "4"] = Deno.args;
const [hostname, port] = address.split(":");
const RESPONSE = new TextEncoder().encode(
  "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello",
);

async function serve(conn: Deno.Conn): Promise<void> {
  const buf = new Uint8Array(16 * 1024);
  let end = 0;
  while (true) {
    const n = await conn.read(buf.subarray(end));
    if (n === null) return;
    end += n;
    // Requests carry no body: answer each complete head.
    let at = 0;
    for (let i = 3; i < end; i++) {
      if (buf[i] === 10 && buf[i - 1] === 13 && buf[i - 2] === 10) {
        await conn.write(RESPONSE);
        at = i + 1;
      }
    }
    buf.copyWithin(0, at, end);
    end -= at;
  }
}

const conns = await Promise.all(
  Array.from(
    { length: Number(count) },
    () => Deno.connect({ hostname, port: Number(port) }),
  ),
);
console.log(`Connected to ${address} (${conns.length} connections)`);
await Promise.all(conns.map((conn) => {
  conn.setNoDelay(true);
  return serve(conn).catch(() => {}).finally(() => conn.close());
}));
