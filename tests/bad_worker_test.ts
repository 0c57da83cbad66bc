/**
 * Misbehaving workers: a fake worker is a raw TCP client on the hub's worker
 * port that reads the request and writes exact (broken) bytes. Each case
 * checks what the consumer gets (502 naming the problem, 504, or a body
 * stream that errors once the head was sent) and that the hub then still
 * serves a request through a well-behaved worker.
 */

import assert from "node:assert/strict";
import {
  type AccessRecord,
  type HubServer,
  serveHub,
  type ServeHubOptions,
} from "../hub.ts";
import type { WorkerHandle } from "../worker.ts";
import { deadline, latin1Bytes, RawSocket, waitFor } from "./_relay.ts";
import { connectWorker } from "./_hub.ts";

const HANG = 15_000;
const dec = new TextDecoder();
const NOT_STARTED = "HTTP/1.1 408 Request Timeout\r\nx-pothead-not-started: 1" +
  "\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

interface HubCtx {
  server: HubServer;
  /** The consumer base URL. */
  url: string;
  client: Deno.HttpClient;
  /** Connects a raw worker and waits until the hub holds it idle. */
  fake(): Promise<RawSocket>;
  /** Attaches a well-behaved worker that answers "good <path>". */
  good(): WorkerHandle;
}

function goodHandler(req: Request): Response {
  return new Response(`good ${new URL(req.url).pathname}`);
}

/**
 * Runs `fn` against a fresh hub, then checks that the hub still serves a
 * request through a good worker once every fake worker is gone.
 */
async function withHub(
  options: Partial<ServeHubOptions>,
  fn: (ctx: HubCtx) => Promise<void>,
): Promise<void> {
  const server = serveHub({
    hostname: "127.0.0.1",
    port: 0,
    workerPort: 0,
    queueTimeout: HANG,
    headTimeout: HANG,
    ...options,
  });
  const client = Deno.createHttpClient({});
  const fakes: RawSocket[] = [];
  const goods: WorkerHandle[] = [];
  const url = `http://127.0.0.1:${server.addr.port}`;
  const ctx: HubCtx = {
    server,
    url,
    client,
    async fake() {
      const idle = server.hub.stats.idle;
      const w = await RawSocket.connect(server.workerAddr.port);
      fakes.push(w);
      await waitFor(() => server.hub.stats.idle > idle, "fake worker idle");
      return w;
    },
    good() {
      const w = connectWorker(goodHandler, {
        hostname: "127.0.0.1",
        port: server.workerAddr.port,
        minBackoff: 10,
        maxBackoff: 100,
      });
      goods.push(w);
      return w;
    },
  };
  try {
    await deadline(fn(ctx), HANG * 2, "case");
    for (const f of fakes) f.close();
    for (const g of goods) g.close();
    await Promise.all(goods.map((g) => g.finished));
    await waitFor(() => server.hub.stats.slots === 0, "all workers gone");
    ctx.good();
    const res = await deadline(
      fetch(`${url}/after`, { client }),
      HANG,
      "request through a good worker",
    );
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "good /after");
  } finally {
    for (const f of fakes) f.close();
    for (const g of goods) g.close();
    await Promise.all(goods.map((g) => g.finished));
    client.close();
    await server.shutdown();
  }
}

/** Reads one request (head and Content-Length body) off a fake worker. */
async function readRequest(w: RawSocket): Promise<string> {
  const head = await deadline(w.readHead(), HANG, "request head");
  assert.ok(head !== null, "hub closed the worker before sending a request");
  const m = /\r\ncontent-length: (\d+)\r\n/i.exec(head);
  if (m) await w.readExactly(Number(m[1]));
  return head;
}

/** Resolves once the hub has closed the fake worker's connection. */
async function hubCloses(w: RawSocket): Promise<void> {
  await deadline(w.readToEnd(), HANG, "hub closing the worker connection");
  assert.ok(w.eof);
}

// --- Failures before a complete head: 502 naming the problem ----------------

interface HeadCase {
  name: string;
  /** Bytes the fake worker writes once it has the request. */
  reply: string | (() => string);
  /** The consumer's whole response body must match. */
  body: RegExp;
  method?: "GET" | "POST";
  /** The fake closes its end after writing. */
  thenClose?: boolean;
  /** Whether the hub must drop the connection (default true). */
  dropped?: boolean;
}

const OK_END = "Content-Length: 0\r\n\r\n";
const INVALID = "^502 Bad Gateway: Invalid response from worker: ";

const HEAD_CASES: HeadCase[] = [
  {
    name: "a malformed status line",
    reply: "HTTP/1.1 2x0 OK\r\n" + OK_END,
    body: new RegExp(
      INVALID + 'Cannot parse status line: received "HTTP/1\\.1 2x0 OK"\\n$',
    ),
  },
  {
    name: "an HTTP/2 status line",
    reply: "HTTP/2 200\r\n" + OK_END,
    body: new RegExp(
      INVALID + 'Cannot parse status line: received "HTTP/2 200"\\n$',
    ),
  },
  {
    name: "status 600",
    reply: "HTTP/1.1 600 Beyond\r\n" + OK_END,
    body: new RegExp(INVALID + ".*\\b600\\b"),
    // The framing was fine; whether the connection stays is not asserted.
    dropped: false,
  },
  {
    name: "status 099",
    reply: "HTTP/1.1 099 Early\r\n" + OK_END,
    body: new RegExp(
      INVALID + "Cannot parse status line: status 99 is out of range\\n$",
    ),
  },
  {
    name: "bare LF line endings",
    reply: "HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    body: new RegExp(INVALID + "Cannot parse head: bare LF at byte 15\\n$"),
  },
  {
    name: "an obs-fold continuation line",
    reply: "HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\n" + OK_END,
    body: new RegExp(INVALID + "Cannot parse header: obsolete line folding"),
  },
  {
    name: "a NUL in a header value",
    reply: "HTTP/1.1 200 OK\r\nX-A: a\0b\r\n" + OK_END,
    body: new RegExp(
      INVALID + 'Cannot parse header: control character in value of "X-A"\\n$',
    ),
  },
  {
    name: "a CR in a header value",
    reply: "HTTP/1.1 200 OK\r\nX-A: a\rb\r\n" + OK_END,
    body: new RegExp(INVALID + "Cannot parse head: bare CR in "),
  },
  {
    name: "a space before the colon",
    reply: "HTTP/1.1 200 OK\r\nX-A : 1\r\n" + OK_END,
    body: new RegExp(
      INVALID + 'Cannot parse header: invalid field line "X-A : 1"\\n$',
    ),
  },
  {
    name: "a head over 64 KiB",
    reply: () => "HTTP/1.1 200 OK\r\nX-Big: " + "a".repeat(70_000),
    body: new RegExp(
      INVALID + "Cannot parse head: no end within 65536 bytes\\n$",
    ),
  },
  {
    name: "129 header fields",
    reply: () => {
      let s = "HTTP/1.1 200 OK\r\n";
      for (let i = 0; i < 129; i++) s += `X-H${i}: ${i}\r\n`;
      return s + OK_END;
    },
    body: new RegExp(
      INVALID + "Cannot parse head: more than 128 header fields\\n$",
    ),
  },
  {
    name: "both Content-Length and Transfer-Encoding",
    reply: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n" +
      "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    body:
      /^502 Bad Gateway: Cannot frame body: both Content-Length and Transfer-Encoding present\n$/,
  },
  {
    name: "two different Content-Lengths",
    reply: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n" +
      "hello!",
    body:
      /^502 Bad Gateway: Cannot frame body: conflicting Content-Length values 5 and 6\n$/,
  },
  {
    name: "a negative Content-Length",
    reply: "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    body: /^502 Bad Gateway: Cannot parse Content-Length: received "-1"\n$/,
  },
  {
    name: "a non-numeric Content-Length",
    reply: "HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
    body: /^502 Bad Gateway: Cannot parse Content-Length: received "ten"\n$/,
  },
  {
    name: "an overflowing Content-Length",
    reply: "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
    body:
      /^502 Bad Gateway: Cannot parse Content-Length: received "99999999999999999999"\n$/,
  },
  {
    name: "an unsupported Transfer-Encoding",
    reply: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
    body:
      /^502 Bad Gateway: Cannot frame body: unsupported Transfer-Encoding "gzip"\n$/,
  },
  {
    name: "a 101 Switching Protocols",
    reply: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo/1\r\n" +
      "Connection: upgrade\r\n\r\n",
    body: new RegExp(INVALID + "101 Switching Protocols to GET\\n$"),
  },
  {
    name: "17 interim responses",
    reply: () =>
      "HTTP/1.1 100 Continue\r\n\r\n".repeat(17) + "HTTP/1.1 200 OK\r\n" +
      OK_END,
    body: new RegExp(INVALID + "more than 16 interim responses\\n$"),
  },
  {
    name: "half a head and then closes",
    reply: "HTTP/1.1 200 OK\r\nContent-Le",
    thenClose: true,
    body:
      /^502 Bad Gateway: Worker closed the connection inside the response head\n$/,
  },
  {
    name: "part of a short Content-Length body and then closes",
    reply: "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc",
    thenClose: true,
    body:
      /^502 Bad Gateway: Worker connection failed: Cannot read body: connection closed after 3 of 100 body bytes\n$/,
  },
  {
    name: "nothing to a POST and closes",
    method: "POST",
    reply: "",
    thenClose: true,
    body: /^502 Bad Gateway: Worker closed the connection before responding\n$/,
  },
];

for (const c of HEAD_CASES) {
  Deno.test(`hub answers 502 when a worker sends ${c.name}`, async () => {
    await withHub({}, async ({ url, client, fake }) => {
      const w = await fake();
      const method = c.method ?? "GET";
      const pending = fetch(`${url}/case`, {
        method,
        body: method === "POST" ? "payload" : undefined,
        client,
      });
      const head = await readRequest(w);
      assert.match(head, new RegExp(`^${method} /case HTTP/1\\.1\\r\\n`));
      await w.write(typeof c.reply === "function" ? c.reply() : c.reply);
      if (c.thenClose) w.close();
      const res = await deadline(pending, HANG, "consumer response");
      assert.equal(res.status, 502);
      assert.equal(res.headers.get("x-pothead-error"), "1");
      assert.match(await res.text(), c.body);
      if ((c.dropped ?? true) && !c.thenClose) await hubCloses(w);
    });
  });
}

// --- Failures after the head: the consumer's body stream errors -------------

interface BodyCase {
  name: string;
  reply: string | (() => string);
  thenClose?: boolean;
  /** Body bytes the consumer gets before the error. */
  before: string;
  error: RegExp;
}

const BODY_CASES: BodyCase[] = [
  {
    name: "an invalid chunk size",
    reply: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n",
    before: "",
    error: /^Cannot parse chunk size: invalid line "zz/,
  },
  {
    name: "chunk data not followed by CRLF",
    reply: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
      "5\r\nhelloXX0\r\n\r\n",
    before: "hello",
    error: /^Cannot parse chunk: data not followed by CRLF$/,
  },
  {
    name: "a chunk-size line over 1024 bytes",
    reply: () =>
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;" +
      "x".repeat(2000) + "\r\na\r\n0\r\n\r\n",
    before: "",
    error: /^Cannot parse chunk size: line longer than 1024 bytes$/,
  },
  {
    name: "a chunked body cut short",
    reply: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    thenClose: true,
    before: "hel",
    error: /^Cannot read body: connection closed inside a chunk$/,
  },
  {
    name: "a long Content-Length body cut short",
    reply: "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789",
    thenClose: true,
    before: "0123456789",
    error:
      /^Cannot read body: connection closed after 10 of 100000 body bytes$/,
  },
];

async function readUntilError(
  body: ReadableStream<Uint8Array>,
): Promise<{ got: string; error: unknown }> {
  const reader = body.getReader();
  let got = "";
  for (let i = 0; i < 10_000; i++) {
    try {
      const { done, value } = await deadline(reader.read(), HANG, "body read");
      if (done) return { got, error: undefined };
      got += dec.decode(value);
    } catch (error) {
      return { got, error };
    }
  }
  throw new Error("body did not end");
}

for (const c of BODY_CASES) {
  Deno.test(`hub errors the consumer's body when a worker sends ${c.name}`, async () => {
    await withHub({}, async ({ server, fake }) => {
      const w = await fake();
      const pending = server.hub.fetch(new Request("http://hub.test/case"));
      await readRequest(w);
      await w.write(typeof c.reply === "function" ? c.reply() : c.reply);
      if (c.thenClose) w.close();
      const res = await deadline(pending, HANG, "consumer response");
      assert.equal(res.status, 200);
      const { got, error } = await readUntilError(res.body!);
      assert.equal(got, c.before);
      assert.ok(error instanceof Error, `body ended without an error`);
      assert.match(error.message, c.error);
      if (!c.thenClose) await hubCloses(w);
    });
  });
}

Deno.test("hub gives an HTTP consumer a failed body when a worker cuts a body short", async () => {
  await withHub({}, async ({ url, client, fake }) => {
    const w = await fake();
    const pending = fetch(`${url}/case`, { client });
    await readRequest(w);
    await w.write(
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    );
    const res = await deadline(pending, HANG, "consumer response");
    assert.equal(res.status, 200);
    w.close();
    await assert.rejects(deadline(res.bytes(), HANG, "consumer body"));
  });
});

// --- Timeouts: 504 ------------------------------------------------------------

Deno.test("hub answers 504 when a worker never answers within headTimeout", async () => {
  await withHub({ headTimeout: 300 }, async ({ url, client, fake }) => {
    const w = await fake();
    const pending = fetch(`${url}/case`, { client });
    await readRequest(w);
    const res = await deadline(pending, HANG, "consumer response");
    assert.equal(res.status, 504);
    assert.equal(
      await res.text(),
      "504 Gateway Timeout: Worker sent no complete response head within 300 ms\n",
    );
    await hubCloses(w);
  });
});

Deno.test("hub answers 504 when a worker trickles its head past headTimeout", async () => {
  await withHub({ headTimeout: 300 }, async ({ url, client, fake }) => {
    const w = await fake();
    let settled = false;
    const pending = fetch(`${url}/case`, { client }).finally(() => {
      settled = true;
    });
    await readRequest(w);
    const head = "HTTP/1.1 200 OK\r\nX-Pad: " + "p".repeat(100) + "\r\n" +
      OK_END;
    // One byte every 100 ms: the whole head would take over 13 s.
    for (let i = 0; i < head.length && !settled; i++) {
      if (!(await w.write(head[i]))) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const res = await deadline(pending, HANG, "consumer response");
    assert.equal(res.status, 504);
    assert.equal(
      await res.text(),
      "504 Gateway Timeout: Worker sent no complete response head within 300 ms\n",
    );
    await hubCloses(w);
  });
});

// --- Interim responses --------------------------------------------------------

Deno.test("hub passes the final response after two 100 Continue and keeps the connection", async () => {
  await withHub({}, async ({ url, client, fake }) => {
    const w = await fake();
    const first = fetch(`${url}/one`, { client });
    await readRequest(w);
    await w.write(
      "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n" +
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    );
    const res = await deadline(first, HANG, "first response");
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "ok");
    // Same connection, next request.
    const second = fetch(`${url}/two`, { client });
    const head = await readRequest(w);
    assert.match(head, /^GET \/two HTTP\/1\.1\r\n/);
    await w.write(
      "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n" +
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok2",
    );
    const res2 = await deadline(second, HANG, "second response");
    assert.equal(await res2.text(), "ok2");
  });
});

Deno.test("hub accepts exactly 16 interim responses before the final one", async () => {
  await withHub({}, async ({ url, client, fake }) => {
    const w = await fake();
    const pending = fetch(`${url}/case`, { client });
    await readRequest(w);
    await w.write(
      "HTTP/1.1 100 Continue\r\n\r\n".repeat(16) +
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    );
    const res = await deadline(pending, HANG, "consumer response");
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "ok");
  });
});

// --- Connections that end or talk out of turn ---------------------------------

Deno.test("hub retries a GET on another worker when the first closes before responding", async () => {
  await withHub({}, async ({ server, url, client, fake, good }) => {
    const w = await fake();
    const pending = fetch(`${url}/case`, { client });
    await readRequest(w);
    w.close();
    await waitFor(() => server.hub.stats.retries === 1, "retry");
    good();
    const res = await deadline(pending, HANG, "consumer response");
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "good /case");
  });
});

Deno.test("hub drops a worker connection closed while idle and waits for another", async () => {
  await withHub({}, async ({ server, url, client, fake, good }) => {
    const w = await fake();
    w.close();
    await waitFor(() => server.hub.stats.slots === 0, "slot removed");
    const pending = fetch(`${url}/case`, { client });
    await waitFor(() => server.hub.stats.queued === 1, "request queued");
    good();
    const res = await deadline(pending, HANG, "consumer response");
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "good /case");
  });
});

Deno.test("hub drops a worker connection that sends bytes while idle", async () => {
  await withHub({}, async ({ server, url, client, fake, good }) => {
    const w = await fake();
    await w.write("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    await hubCloses(w);
    await waitFor(() => server.hub.stats.slots === 0, "slot removed");
    const pending = fetch(`${url}/case`, { client });
    await waitFor(() => server.hub.stats.queued === 1, "request queued");
    good();
    const res = await deadline(pending, HANG, "consumer response");
    assert.equal(await res.text(), "good /case");
  });
});

Deno.test("hub answers and then drops a worker that sends bytes after its response", async () => {
  await withHub({}, async ({ server, url, client, fake }) => {
    const w = await fake();
    const pending = fetch(`${url}/case`, { client });
    await readRequest(w);
    await w.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA");
    const res = await deadline(pending, HANG, "consumer response");
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "ok");
    await hubCloses(w);
    await waitFor(() => server.hub.stats.slots === 0, "slot removed");
  });
});

Deno.test("hub answers 204 without a body when a worker sends one, then drops it", async () => {
  await withHub({}, async ({ server, url, client, fake }) => {
    const w = await fake();
    const pending = fetch(`${url}/case`, { client });
    await readRequest(w);
    await w.write(
      "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-Kind: nc\r\n\r\nhello",
    );
    const res = await deadline(pending, HANG, "consumer response");
    assert.equal(res.status, 204);
    assert.equal(res.headers.get("x-kind"), "nc");
    assert.equal(res.body, null);
    // "hello" is not a body of a 204: it is stray bytes, so the link goes.
    await hubCloses(w);
    await waitFor(() => server.hub.stats.slots === 0, "slot removed");
  });
});

Deno.test("hub retries a request on another worker after a not-started 408", async () => {
  await withHub({}, async ({ server, url, client, fake, good }) => {
    const w = await fake();
    good();
    await waitFor(() => server.hub.stats.idle === 2, "both workers idle");
    // The fake has been idle longest, so it gets the request first.
    const pending = fetch(`${url}/case`, {
      method: "POST",
      body: "replayable",
      client,
    });
    const head = await readRequest(w);
    assert.match(head, /^POST \/case HTTP\/1\.1\r\n/);
    await w.write(NOT_STARTED);
    const res = await deadline(pending, HANG, "consumer response");
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "good /case");
    assert.equal(server.hub.stats.retries, 1);
    await hubCloses(w);
  });
});

Deno.test("hub passes the worker's bytes through unchanged for a valid reply", async () => {
  // Control case: the fake worker itself is sound, so the failures above are
  // the bytes' fault, not the harness's.
  await withHub({}, async ({ url, client, fake }) => {
    const w = await fake();
    const pending = fetch(`${url}/case`, { client });
    await readRequest(w);
    await w.write(
      latin1Bytes(
        "HTTP/1.1 201 Created\r\nX-A: caf\xe9\r\nTransfer-Encoding: chunked" +
          "\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
      ),
    );
    const res = await deadline(pending, HANG, "consumer response");
    assert.equal(res.status, 201);
    assert.equal(res.headers.get("x-a"), "caf\xe9");
    assert.equal(await res.text(), "abc");
  });
});

Deno.test("a worker that answers in full without reading a streamed upload loses that connection, not the slot for ever", async () => {
  const { RawSocket } = await import("./_relay.ts");
  const { startHub } = await import("./_hub.ts");
  const server = startHub();
  const worker = await RawSocket.connect(server.workerAddr.port);
  const consumer = await RawSocket.connect(server.addr.port);
  try {
    const until = performance.now() + 10_000;
    while (server.hub.stats.idle !== 1 && performance.now() < until) {
      await new Promise((r) => setTimeout(r, 10));
    }
    // A chunked upload that goes on (the consumer keeps sending).
    await consumer.write(
      "POST /up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n" +
        "5\r\nhello\r\n",
    );
    await worker.readHead();
    await worker.write(
      "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone",
    );
    const head = await consumer.readHead();
    assert.match(head ?? "", /^HTTP\/1\.1 200 /);
    // The worker reads nothing more, and the consumer keeps uploading.
    for (let i = 0; i < 5; i++) {
      await consumer.write(`400\r\n${"x".repeat(1024)}\r\n`).catch(() => false);
    }
    const until2 = performance.now() + 15_000; // the 5 s linger
    while (server.hub.stats.slots !== 0 && performance.now() < until2) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(server.hub.stats.slots, 0, "the connection was kept");
    assert.equal(server.hub.stats.busy, 0);
  } finally {
    consumer.close();
    worker.close();
    await server.shutdown();
  }
});

Deno.test("a HEAD answered without a length (chunked) reaches the consumer without content-length: 0; one with '5, 5' as 5", async () => {
  await withHub({}, async (ctx) => {
    const w = await ctx.fake();
    for (
      const [answer, want] of [
        ["transfer-encoding: chunked", null],
        ["content-length: 5, 5", "5"],
      ] as const
    ) {
      const res = fetch(`${ctx.url}/h`, { method: "HEAD", client: ctx.client });
      const head = await w.readHead();
      assert.match(head ?? "", /^HEAD \/h HTTP\/1\.1\r\n/);
      await w.write(
        `HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n${answer}\r\n\r\n`,
      );
      const got = await res;
      assert.equal(got.status, 200);
      assert.equal(got.headers.get("content-length"), want, answer);
      await got.body?.cancel();
    }
    assert.equal(ctx.server.hub.stats.slots, 1);
  });
});

Deno.test("a 205 sent with a chunked body reaches the consumer without it, and the worker keeps its connection", async () => {
  await withHub({}, async (ctx) => {
    const w = await ctx.fake();
    const first = fetch(`${ctx.url}/reset`, { client: ctx.client });
    await w.readHead();
    await w.write(
      "HTTP/1.1 205 Reset Content\r\ntransfer-encoding: chunked\r\n\r\n" +
        "5\r\nhello\r\n0\r\n\r\n",
    );
    const res = await first;
    assert.equal(res.status, 205);
    assert.equal(await res.text(), "");
    // The same connection carries the next request.
    const second = fetch(`${ctx.url}/next`, { client: ctx.client });
    const head = await w.readHead();
    assert.match(head ?? "", /^GET \/next HTTP\/1\.1\r\n/);
    await w.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    assert.equal(await (await second).text(), "ok");
    assert.equal(ctx.server.hub.stats.failed, 0);
    assert.equal(ctx.server.hub.stats.slots, 1);
  });
});

Deno.test("a 205 whose body the worker cuts is counted once: one access record, one failure", async () => {
  const records: AccessRecord[] = [];
  await withHub({ onAccess: (r) => records.push(r) }, async (ctx) => {
    const w = await ctx.fake();
    const res = fetch(`${ctx.url}/reset`, { client: ctx.client });
    await w.readHead();
    await w.write(
      "HTTP/1.1 205 Reset Content\r\ntransfer-encoding: chunked\r\n\r\n" +
        "5\r\nhello\r\n",
    );
    w.close();
    const got = await res;
    await got.body?.cancel();
    await waitFor(() => ctx.server.hub.stats.slots === 0, "fake worker gone");
    assert.equal(records.length, 1, JSON.stringify(records));
    assert.equal(records[0].status, got.status);
    assert.equal(ctx.server.hub.stats.failed, 1);
  });
});

Deno.test("a HEAD answered 205 without a length reaches the consumer as that 205, not a 502", async () => {
  await withHub({}, async (ctx) => {
    const w = await ctx.fake();
    for (const framing of ["transfer-encoding: chunked\r\n", ""]) {
      const res = fetch(`${ctx.url}/reset`, {
        method: "HEAD",
        client: ctx.client,
      });
      const head = await w.readHead();
      assert.match(head ?? "", /^HEAD \/reset HTTP\/1\.1\r\n/);
      await w.write(
        `HTTP/1.1 205 Reset Content\r\n${framing}x-kind: r\r\n\r\n`,
      );
      const got = await deadline(res, HANG, "consumer response");
      assert.equal(got.status, 205, framing);
      assert.equal(got.headers.get("x-kind"), "r");
      assert.equal(got.headers.get("x-pothead-error"), null);
      await got.body?.cancel();
    }
    assert.equal(ctx.server.hub.stats.slots, 1);
  });
});

Deno.test("an HTTP/1.0 response with Transfer-Encoding is relayed, but its connection is not used again, even with keep-alive", async () => {
  // RFC 9112 §6.1: its framing is to be treated as faulty, and the
  // connection closed after it.
  await withHub({}, async (ctx) => {
    const w = await ctx.fake();
    const res = fetch(`${ctx.url}/old`, { client: ctx.client });
    await readRequest(w);
    await w.write(
      "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n" +
        "Connection: keep-alive\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    const got = await deadline(res, HANG, "consumer response");
    assert.equal(got.status, 200);
    assert.equal(await got.text(), "hello");
    await hubCloses(w);
    await waitFor(() => ctx.server.hub.stats.slots === 0, "slot removed");
  });
});

// A worker may answer before it has read the request body (an early 413),
// and then read no more of it, or close. An upload read whole while queued
// goes as bytes, larger than the sockets hold: 16 MiB here (Linux's send
// buffer grows to 4 MiB at most, and a receive buffer nobody reads stays
// small), so the hub is still writing it when the answer comes.
for (const closes of [false, true]) {
  Deno.test(`a worker's early answer to a large upload sent as bytes reaches the consumer (worker ${closes ? "closes" : "keeps the connection, unread"})`, async () => {
    const size = 16 << 20;
    await withHub({
      bufferUploads: true,
      requestBuffer: size * 2,
      requestBufferTotal: size * 2,
      // Well under the case's deadline: a hub deaf to the answer gives 504.
      headTimeout: 5000,
    }, async ({ url, client, fake }) => {
      const w = await fake();
      const pending = fetch(`${url}/up`, {
        method: "POST",
        body: new Uint8Array(size),
        client,
      });
      const head = await deadline(w.readHead(), HANG, "request head");
      assert.match(head ?? "", new RegExp(`content-length: ${size}\\r\\n`));
      assert.doesNotMatch(head ?? "", /expect:/i, "not sent as bytes");
      await w.write(
        "HTTP/1.1 413 Content Too Large\r\nconnection: close\r\n" +
          "content-length: 9\r\n\r\ntoo large",
      );
      if (closes) w.close();
      const res = await deadline(pending, HANG, "consumer response");
      assert.equal(res.headers.get("x-pothead-error"), null);
      assert.equal(res.status, 413);
      assert.equal(await res.text(), "too large");
      // The rest of the body still goes out (read off here), then the
      // connection closes, as the answer said.
      if (!closes) await hubCloses(w);
    });
  });
}
