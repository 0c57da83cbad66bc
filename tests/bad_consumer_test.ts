/**
 * The bad-consumer half of the catalogue: malformed requests written as raw
 * bytes to the hub's consumer port. Each asserts the hub's exact answer,
 * whether the request reached a worker, and that the hub then still serves
 * a good request with its worker slot intact. (Bad worker responses are in
 * bad_worker_test.ts.)
 */

import assert from "node:assert/strict";
import { type AccessRecord, serveHub, type ServeHubOptions } from "../mod.ts";
import { connectWorker } from "./_hub.ts";
import { deadline, RawSocket, waitFor } from "./_relay.ts";

interface Case {
  name: string;
  raw: string;
  /** Expected first line of the answer; "" = connection closed, no answer. */
  status: string;
  /** The path the worker must see, or null if it must see nothing. */
  reaches: string | null;
  /** Half-close after writing (the consumer stops sending). */
  closeWrite?: boolean;
}

const H = "Host: x\r\n";
const CASES: Case[] = [
  {
    name: "garbage request line",
    raw: "HELLO\r\n\r\n",
    status: "HTTP/1.1 400 Bad Request",
    reaches: null,
  },
  {
    name: "Content-Length with Transfer-Encoding",
    raw:
      `POST /a HTTP/1.1\r\n${H}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
    status: "HTTP/1.1 400 Bad Request",
    reaches: null,
  },
  {
    name: "two different Content-Lengths",
    raw:
      `POST /a HTTP/1.1\r\n${H}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!`,
    status: "HTTP/1.1 400 Bad Request",
    reaches: null,
  },
  {
    name: "negative Content-Length",
    raw: `POST /a HTTP/1.1\r\n${H}Content-Length: -1\r\n\r\n`,
    status: "HTTP/1.1 400 Bad Request",
    reaches: null,
  },
  {
    name: "non-numeric Content-Length",
    raw: `POST /a HTTP/1.1\r\n${H}Content-Length: ten\r\n\r\n`,
    status: "HTTP/1.1 400 Bad Request",
    reaches: null,
  },
  {
    name: "overflowing Content-Length",
    raw:
      `POST /a HTTP/1.1\r\n${H}Content-Length: 99999999999999999999999\r\n\r\n`,
    status: "HTTP/1.1 400 Bad Request",
    reaches: null,
  },
  {
    name: "Transfer-Encoding gzip",
    raw: `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: gzip\r\n\r\n`,
    status: "HTTP/1.1 400 Bad Request",
    reaches: null,
  },
  {
    name: "NUL in a header value",
    raw: `GET /a HTTP/1.1\r\n${H}X-A: a\x00b\r\n\r\n`,
    status: "HTTP/1.1 400 Bad Request",
    reaches: null,
  },
  {
    name: "obsolete line folding",
    raw: `GET /a HTTP/1.1\r\n${H}X-A: a\r\n b\r\n\r\n`,
    status: "HTTP/1.1 400 Bad Request",
    reaches: null,
  },
  {
    name: "space before the colon",
    raw: `GET /a HTTP/1.1\r\n${H}X-A : b\r\n\r\n`,
    status: "HTTP/1.1 400 Bad Request",
    reaches: null,
  },
  {
    name: "oversize header line",
    raw: `GET /a HTTP/1.1\r\n${H}X-A: ${"a".repeat(500_000)}\r\n\r\n`,
    status: "HTTP/1.1 400 Bad Request",
    reaches: null,
  },
  {
    name: "200 header fields",
    raw: `GET /a HTTP/1.1\r\n${H}${
      Array.from({ length: 200 }, (_, i) => `X-${i}: v\r\n`).join("")
    }\r\n`,
    status: "HTTP/1.1 400 Bad Request",
    reaches: null,
  },
  {
    name: "100 KB request target",
    raw: `GET /${"u".repeat(100_000)} HTTP/1.1\r\n${H}\r\n`,
    status: "HTTP/1.1 400 Bad Request",
    reaches: null,
  },
  {
    name: "invalid method token",
    raw: `G@T /a HTTP/1.1\r\n${H}\r\n`,
    status: "HTTP/1.1 400 Bad Request",
    reaches: null,
  },
  {
    name: "unknown HTTP version",
    raw: `GET /a HTTP/9.9\r\n${H}\r\n`,
    status: "HTTP/1.1 400 Bad Request",
    reaches: null,
  },
  {
    name: "body shorter than its Content-Length (consumer stops sending)",
    raw: `POST /eof HTTP/1.1\r\n${H}Content-Length: 100\r\n\r\n0123456789`,
    status: "HTTP/1.1 400 Bad Request",
    reaches: null,
    closeWrite: true,
  },
  {
    name: "invalid chunk size in the body",
    raw:
      `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n`,
    status: "",
    reaches: null,
  },
  {
    name: "chunk data not followed by CRLF",
    raw:
      `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n`,
    status: "",
    reaches: null,
  },
  // Deno.serve decodes target bytes >= 0x80 as UTF-8; chars such as U+010D,
  // U+010A and U+0120 must not reach the worker link as CR, LF and SP.
  {
    name: "target whose UTF-8 would write CR LF onto the worker link",
    raw: "GET /a\u010d\u010aX-Injected:\u0120yes HTTP/1.1\r\nHost: x\r\n\r\n",
    status: "HTTP/1.1 200 OK",
    reaches: "/a%C4%8D%C4%8AX-Injected:%C4%A0yes",
  },
  {
    name: "target carrying a second request in UTF-8",
    raw:
      "GET /a\u0120HTTP/1.1\u010d\u010aHost:\u0120x\u010d\u010a\u010d\u010a" +
      "GET\u0120/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    status: "HTTP/1.1 200 OK",
    reaches:
      "/a%C4%A0HTTP/1.1%C4%8D%C4%8AHost:%C4%A0x%C4%8D%C4%8A%C4%8D%C4%8A" +
      "GET%C4%A0/smuggled",
  },
  {
    name: "UTF-8 target",
    raw: "GET /caf\u00e9 HTTP/1.1\r\nHost: x\r\n\r\n",
    status: "HTTP/1.1 200 OK",
    reaches: "/caf%C3%A9",
  },
  // Deno.serve builds the URL as scheme://Host + target: a Host with "/" or
  // "\\" would move the path the hub routes and forwards.
  {
    name: "Host with a slash",
    raw: "GET /public HTTP/1.1\r\nHost: h/admin?\r\n\r\n",
    status: "HTTP/1.1 400 Bad Request",
    reaches: null,
  },
  {
    name: "Host with a backslash",
    raw: "GET /public HTTP/1.1\r\nHost: h\\admin?\r\n\r\n",
    status: "HTTP/1.1 400 Bad Request",
    reaches: null,
  },
  // Accepted by Deno.serve and passed on re-framed (the hub writes its own
  // CRLF framing to the worker, so leniency here cannot desynchronise).
  {
    name: "bare LF line endings",
    raw: "GET /lf HTTP/1.1\nHost: x\n\n",
    status: "HTTP/1.1 200 OK",
    reaches: "/lf",
  },
  {
    name: "HTTP/1.1 without Host",
    raw: "GET /nohost HTTP/1.1\r\n\r\n",
    status: "HTTP/1.1 200 OK",
    reaches: "/nohost",
  },
  {
    name: "HTTP/1.0 request",
    raw: "GET /ten HTTP/1.0\r\n\r\n",
    status: "HTTP/1.0 200 OK",
    reaches: "/ten",
  },
  {
    name: "absolute-form target",
    raw: "GET http://example.com/abs?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
    status: "HTTP/1.1 200 OK",
    reaches: "/abs",
  },
];

async function exchange(port: number, c: Case): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const guard = setTimeout(() => conn.close(), 10_000);
  let out = "";
  try {
    try {
      await conn.write(new TextEncoder().encode(c.raw));
      if (c.closeWrite) await conn.closeWrite();
    } catch {
      // the hub may close on a huge request before reading all of it
    }
    const buf = new Uint8Array(65536);
    while (!out.includes("\r\n")) {
      const n = await conn.read(buf);
      if (n === null) break;
      out += new TextDecoder().decode(buf.subarray(0, n));
    }
  } catch {
    // reset by the hub: no answer
  } finally {
    clearTimeout(guard);
    try {
      conn.close();
    } catch {
      // closed by the guard
    }
  }
  return out.split("\r\n")[0];
}

for (const c of CASES) {
  Deno.test(`hub answers a consumer's ${c.name} exactly and keeps serving`, async () => {
    const seen: string[] = [];
    const server = serveHub({
      hostname: "127.0.0.1",
      port: 0,
      workerPort: 0,
      handshakeWait: 0,
    });
    const worker = connectWorker(async (req) => {
      if (req.body !== null) await req.arrayBuffer().catch(() => {});
      seen.push(new URL(req.url).pathname);
      return new Response("good");
    }, { port: server.workerAddr.port });
    try {
      while (server.hub.stats.idle < 1) {
        await new Promise((r) => setTimeout(r, 10));
      }
      const first = await exchange(server.addr.port, c);
      assert.equal(first, c.status);
      const res = await fetch(`http://127.0.0.1:${server.addr.port}/after`);
      assert.equal(res.status, 200);
      assert.equal(await res.text(), "good");
      assert.deepEqual(
        seen,
        c.reaches === null ? ["/after"] : [c.reaches, "/after"],
      );
      // The one worker slot is intact (or came back) and idle.
      for (let i = 0; i < 500 && server.hub.stats.idle < 1; i++) {
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(server.hub.stats.slots, 1);
      assert.equal(server.hub.stats.idle, 1);
    } finally {
      await worker.drain();
      await server.shutdown();
    }
  });
}

Deno.test("a consumer gone while its body was read costs no worker connection", async () => {
  const { Hub } = await import("../hub.ts");
  const until = waitFor;
  const hub = new Hub({ handshakeWait: 0 });
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const dialed = Deno.connect({
    hostname: "127.0.0.1",
    port: (listener.addr as Deno.NetAddr).port,
  });
  const accepted = await listener.accept();
  const worker = new RawSocket(await dialed);
  try {
    hub.addWorker(accepted, "w");
    await until(() => hub.stats.idle === 1, "the worker idle");
    const abort = new AbortController();
    let body!: ReadableStreamDefaultController<Uint8Array>;
    const req = new Request("http://hub/x", {
      method: "POST",
      body: new ReadableStream<Uint8Array>({ start: (c) => void (body = c) }),
      signal: abort.signal,
      headers: { "content-length": "5" },
    });
    const res = hub.fetch(req);
    body.enqueue(new TextEncoder().encode("hello"));
    body.close();
    abort.abort(); // gone after sending its (small, buffered) body
    await res;
    assert.equal(hub.stats.abandoned, 1);
    assert.equal(hub.stats.slots, 1, "the worker connection was closed");
    assert.equal(hub.stats.idle, 1);
    assert.equal(worker.buffered, 0, "the worker got bytes");
  } finally {
    worker.close();
    listener.close();
    await hub.shutdown(0);
  }
});

// A hub with one raw worker connection, for tests that read what the worker
// is sent.
async function rawHub(
  options: Partial<ServeHubOptions> = {},
  records: AccessRecord[] = [],
) {
  const server = serveHub({
    hostname: "127.0.0.1",
    port: 0,
    workerPort: 0,
    handshakeWait: 0,
    shutdownGrace: 300,
    onAccess: (r) => records.push(r),
    ...options,
  });
  const worker = await RawSocket.connect(server.workerAddr.port);
  await waitFor(() => server.hub.stats.idle === 1, "the worker idle");
  return { server, worker, records };
}

Deno.test("requests that declare no body reach the worker without one (no Expect, no chunked framing) on the same connection", async () => {
  const { server, worker } = await rawHub();
  try {
    for (const method of ["DELETE", "POST", "OPTIONS"]) {
      const consumer = await RawSocket.connect(server.addr.port);
      await consumer.write(`${method} /x HTTP/1.1\r\nHost: h\r\n\r\n`);
      const msg = await worker.readMessage();
      assert.ok(msg !== null);
      assert.equal(msg.start, `${method} /x HTTP/1.1`);
      const names = msg.headers.map(([n]) => n);
      for (const framing of ["expect", "transfer-encoding", "content-length"]) {
        assert.ok(!names.includes(framing), `${method} came with ${framing}`);
      }
      await worker.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
      const answer = await consumer.readMessage();
      assert.equal(answer?.status, 200);
      consumer.close();
    }
    assert.equal(worker.buffered, 0, "nothing followed the requests");
    assert.equal(server.hub.stats.slots, 1);
  } finally {
    worker.close();
    await server.shutdown();
  }
});

Deno.test("a consumer gone in the middle of its small body counts as abandoned, not as a bad request", async () => {
  const { server, worker, records } = await rawHub();
  try {
    const c = await RawSocket.connect(server.addr.port);
    await c.write(
      "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nonly ten b",
    );
    await waitFor(() => server.hub.stats.received === 1, "received");
    c.close();
    await waitFor(() => records.length === 1, "the access record");
    assert.equal(records[0].outcome, "abandoned");
    assert.equal(server.hub.stats.abandoned, 1);
  } finally {
    worker.close();
    await server.shutdown();
  }
});

Deno.test("shutdown ends within its grace while a consumer never finishes its small body, which is answered 503", async () => {
  const { server, worker } = await rawHub();
  const c = await RawSocket.connect(server.addr.port);
  try {
    await c.write(
      "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nonly ten b",
    );
    await waitFor(() => server.hub.stats.received === 1, "received");
    await deadline(server.shutdown(), 10_000, "the hub's shutdown");
    const msg = await deadline(c.readMessage(), 5000, "the consumer's answer");
    assert.equal(msg?.status, 503);
  } finally {
    c.close();
    worker.close();
  }
});
