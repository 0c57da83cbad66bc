import assert from "node:assert/strict";
import v8 from "node:v8";
import vm from "node:vm";
import { setImmediate } from "node:timers";
import { serveConnection } from "../_serve_conn.ts";
import { DEFAULT_LIMITS } from "../_codec.ts";
import { ScriptedConn, text } from "./_memconn.ts";
import { deadline, waitFor } from "./_wait.ts";
import type { FetchHandler } from "../_serve_conn.ts";

const PEER: Deno.NetAddr = { transport: "tcp", hostname: "127.0.0.1", port: 1 };

// The connection of the latest serve(), for tests that watch it mid-way.
let connOf: Promise<ScriptedConn> = Promise.resolve(new ScriptedConn([]));

// A request after which the engine closes the connection itself, for a
// connection that stays open meanwhile (`open`): its end of stream during
// a response would mean the hub has gone, and the response is given up
// (and right behind the request, that the request is not run).
const CLOSING = "GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";

// Serves `request` on a connection that stays open when it ends with a
// request asking to close, else ends after it.
async function serve(
  handler: FetchHandler,
  request = CLOSING,
): Promise<{ conn: ScriptedConn; errors: string[] }> {
  const conn = new ScriptedConn([request], {
    open: request.endsWith("connection: close\r\n\r\n"),
  });
  connOf = Promise.resolve(conn);
  const errors: string[] = [];
  await serveConnection(conn, {
    handler,
    limits: DEFAULT_LIMITS,
    drain: new AbortController().signal,
    onError: (error, context) => errors.push(`${context}: ${error}`),
    peer: PEER,
  });
  return { conn, errors };
}

Deno.test("a small response with Content-Length goes out in one write", async () => {
  const { conn, errors } = await serve(() =>
    new Response("hello", { headers: { "content-length": "5" } })
  );
  assert.deepEqual(errors, []);
  assert.equal(conn.writes.length, 1);
  const out = text(conn.writes[0]);
  assert.match(out, /^HTTP\/1\.1 200 OK\r\n/);
  assert.match(out, /\r\ncontent-length: 5\r\n/);
  assert.ok(out.endsWith("\r\n\r\nhello"), JSON.stringify(out));
});

Deno.test("an empty Host keeps the request's path in its URL", async () => {
  let url = "";
  const { errors } = await serve((req) => {
    url = req.url;
    return new Response("ok");
  }, "GET /e/f?q HTTP/1.1\r\nhost:\r\nconnection: close\r\n\r\n");
  assert.deepEqual(errors, []);
  assert.equal(new URL(url).pathname + new URL(url).search, "/e/f?q");
});

Deno.test("a slow body with Content-Length does not hold the head back", async () => {
  const { promise: gate, resolve: release } = Promise.withResolvers<void>();
  const served = serve(() => {
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        await gate;
        controller.enqueue(new TextEncoder().encode("late"));
        controller.close();
      },
    });
    return new Response(body, { headers: { "content-length": "4" } });
  }, CLOSING);
  const conn = await deadline(connOf, 10_000, "serving to start");
  await waitFor(() => conn.writes.length > 0, "the head to be written");
  assert.match(text(conn.writes[0]), /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\n$/);
  release();
  const { errors } = await served;
  assert.deepEqual(errors, []);
  assert.equal(text(conn.written).split("\r\n\r\n")[1], "late");
});

Deno.test("a streamed body shorter than its Content-Length ends the connection with an error", async () => {
  // (A body that is all there, a string, goes with its own length.)
  const { conn, errors } = await serve(() =>
    new Response(
      new ReadableStream<Uint8Array>({
        async pull(controller) {
          await new Promise((r) => setTimeout(r, 1));
          controller.enqueue(new TextEncoder().encode("abc"));
          controller.close();
        },
      }),
      { headers: { "content-length": "10" } },
    ), CLOSING);
  assert.ok(conn.closed);
  assert.equal(errors.length, 1);
  assert.match(errors[0], /^response: .*3 of the declared 10 bytes/);
});

Deno.test("a body of several chunks with Content-Length arrives whole", async () => {
  const parts = ["one ", "two ", "three"];
  const { conn, errors } = await serve(() => {
    const body = ReadableStream.from(
      parts.map((p) => new TextEncoder().encode(p)),
    );
    return new Response(body, { headers: { "content-length": "13" } });
  }, CLOSING);
  assert.deepEqual(errors, []);
  assert.equal(text(conn.written).split("\r\n\r\n")[1], "one two three");
});

Deno.test("a body of unknown length that is one ready chunk gets Content-Length", async () => {
  const { conn, errors } = await serve(() => new Response("hi there"));
  assert.deepEqual(errors, []);
  assert.equal(conn.writes.length, 1);
  const out = text(conn.writes[0]);
  assert.match(out, /\r\ncontent-length: 8\r\n/);
  assert.doesNotMatch(out, /transfer-encoding/);
  assert.ok(out.endsWith("\r\n\r\nhi there"));
});

Deno.test("a streamed body of unknown length goes out chunked, first chunk at once", async () => {
  const { promise: gate, resolve: release } = Promise.withResolvers<void>();
  const encoder = new TextEncoder();
  let step = 0;
  const served = serve(() =>
    new Response(
      new ReadableStream<Uint8Array>({
        async pull(controller) {
          if (step++ === 0) {
            controller.enqueue(encoder.encode("data: 1\n\n"));
            return;
          }
          await gate;
          controller.enqueue(encoder.encode("data: 2\n\n"));
          controller.close();
        },
      }),
    ), CLOSING);
  const conn = await deadline(connOf, 10_000, "serving to start");
  await waitFor(() => conn.writes.length > 0, "the first chunk");
  const head = text(conn.writes[0]);
  assert.match(head, /\r\ntransfer-encoding: chunked\r\n/);
  assert.ok(
    head.endsWith("\r\n\r\n9\r\ndata: 1\n\n\r\n"),
    JSON.stringify(head),
  );
  release();
  const { errors } = await served;
  assert.deepEqual(errors, []);
  assert.ok(
    text(conn.written).endsWith("9\r\ndata: 2\n\n\r\n0\r\n\r\n"),
    JSON.stringify(text(conn.written)),
  );
});

Deno.test("a body stream that errors with no reason is reported as an error", async () => {
  let step = 0;
  const { conn, errors } = await serve(() =>
    new Response(
      new ReadableStream<Uint8Array>({
        async pull(controller) {
          if (step++ === 0) controller.enqueue(new Uint8Array([97]));
          else {
            // After the head (one that fails before it gets a 500).
            await new Promise((r) => setTimeout(r, 1));
            controller.error(undefined);
          }
        },
      }),
    ), CLOSING);
  assert.ok(conn.closed);
  assert.equal(errors.length, 1);
  assert.match(errors[0], /^response: Error: body stream errored/);
});

// A connection that sends the next request only after each response, as
// the hub does (a moment later), for as many requests as asked, and keeps nothing it wrote.
class OneAtATime {
  #left: number;
  #request = new TextEncoder().encode("GET /x HTTP/1.1\r\nhost: a\r\n\r\n");
  #waiting: { buf: Uint8Array; resolve: (n: number | null) => void } | null =
    null;
  #ready = 1;
  served = 0;
  constructor(requests: number) {
    this.#left = requests;
  }
  read(buf: Uint8Array): Promise<number | null> {
    if (this.#ready === 0) {
      return new Promise((resolve) => this.#waiting = { buf, resolve });
    }
    this.#ready--;
    return Promise.resolve(this.#next(buf));
  }
  #next(buf: Uint8Array): number | null {
    if (this.#left-- <= 0) return null;
    buf.set(this.#request);
    return this.#request.length;
  }
  write(p: Uint8Array): Promise<number> {
    this.served++;
    const waiting = this.#waiting;
    this.#waiting = null;
    if (waiting === null) this.#ready++;
    // Later, as over a network: the runner then waits for the next request
    // with nothing buffered, which is where a drain wait is set up.
    else setImmediate(() => waiting.resolve(this.#next(waiting.buf)));
    return Promise.resolve(p.length);
  }
  close(): void {
    this.#waiting?.resolve(null);
    this.#waiting = null;
  }
}

function forceGc(): () => void {
  // node:v8 turns the flag on at run time; node:vm hands out the function.
  v8.setFlagsFromString("--expose-gc");
  return vm.runInNewContext("gc") as () => void;
}

Deno.test("a long-lived connection keeps no memory per request it served", async () => {
  const gc = forceGc();
  const heapAfter = async (conn: OneAtATime, requests: number) => {
    await waitFor(
      () => conn.served >= requests,
      `${requests} requests served`,
      60_000,
    );
    // Twice, with a task between: Deno's request signals are released by a
    // FinalizationRegistry whose cleanup runs as a task after a collection.
    gc();
    await new Promise((resolve) => setTimeout(resolve, 10));
    gc();
    return Deno.memoryUsage().heapUsed;
  };
  // Measured while the connection is still open: what it holds is freed
  // when it closes.
  const conn = new OneAtATime(24_000);
  const done = serveConnection(conn, {
    handler: () => new Response("ok"),
    limits: DEFAULT_LIMITS,
    // Never aborted: the connection's drain wait lives as long as it does.
    drain: new AbortController().signal,
    onError: (error) => {
      throw error;
    },
    peer: PEER,
  });
  const before = await heapAfter(conn, 2_000);
  const after = await heapAfter(conn, 22_000);
  assert.equal(await done, 24_000);
  // A leak of even 100 bytes per request would be 2 MB here (the one this
  // guards against was about 300).
  assert.ok(
    after - before < 1_000_000,
    `heap grew by ${after - before} bytes over 20 000 requests`,
  );
});

Deno.test("a request with the ping field and a body is not a ping: its body is not read as the next request", async () => {
  const seen: string[] = [];
  const smuggled = "GET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n";
  const { conn, errors } = await serve(
    async (req) => {
      seen.push(
        `${req.method} ${new URL(req.url).pathname} ${await req.text()}`,
      );
      return new Response("ok");
    },
    `POST /p HTTP/1.1\r\nhost: a\r\nx-pothead-ping: 1\r\ncontent-length: ${smuggled.length}\r\n\r\n` +
      smuggled +
      "GET /after HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
  );
  assert.deepEqual(errors, []);
  assert.deepEqual(seen, [
    `POST /p ${smuggled}`,
    "GET /after ",
  ]);
  assert.equal(
    conn.writes.map(text).join("").match(/HTTP\/1\.1 200/g)?.length,
    2,
  );
});

for (
  const [name, request] of [
    [
      "two Host fields",
      "GET /x HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\n\r\n",
    ],
    [
      "a Host that holds a path",
      "GET /x HTTP/1.1\r\nhost: evil.example/admin?\r\n\r\n",
    ],
    [
      "an authority-form target on GET",
      "GET evil.example:443 HTTP/1.1\r\nhost: h\r\n\r\n",
    ],
    [
      "a byte past ASCII in the target",
      "GET /\xff HTTP/1.1\r\nhost: h\r\n\r\n",
    ],
  ]
) {
  Deno.test(`a request with ${name} is refused with 400 before the handler runs`, async () => {
    let called = false;
    const { conn, errors } = await serve(() => {
      called = true;
      return new Response("ok");
    }, request);
    assert.equal(called, false);
    assert.match(text(conn.writes[0]), /^HTTP\/1\.1 400 /);
    assert.equal(errors.length, 1, errors.join("; "));
    assert.ok(conn.closed, "the connection is closed");
  });
}

Deno.test("a request whole before the hub's end of stream or reset is not run; one whose body is still coming is", async () => {
  // The hub wrote it and dropped the connection at once (its consumer left,
  // or it timed the worker out): nobody would read the answer.
  const whole = [
    "GET /get HTTP/1.1\r\nhost: a\r\n\r\n",
    "POST /post HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nhi",
  ];
  for (const request of whole) {
    for (const readError of [undefined, new Deno.errors.ConnectionReset()]) {
      const ran: string[] = [];
      const conn = new ScriptedConn([request], { readError });
      const errors: string[] = [];
      const served = await serveConnection(conn, {
        handler: (req) => {
          ran.push(req.url);
          return new Response("ok");
        },
        limits: DEFAULT_LIMITS,
        drain: new AbortController().signal,
        onError: (error, context) => errors.push(`${context}: ${error}`),
        peer: PEER,
        acquire: () => {
          ran.push("acquire");
          return true;
        },
      });
      const what = `${request.split(" ", 2)[1]} ${readError ?? "end"}`;
      assert.deepEqual(ran, [], what);
      assert.equal(served, 0, what);
      assert.deepEqual(errors, [], what);
      assert.ok(conn.closed, what);
      // Answered "not started", to nobody, as the serve engine does.
      assert.match(
        text(conn.written),
        /^HTTP\/1\.1 408 .*x-pothead-not-started/s,
      );
    }
  }
  // Its body cut short: the handler had started (as with Deno.serve), and
  // its body errors.
  let read = "";
  const conn = new ScriptedConn([
    "POST /cut HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nhi",
  ]);
  await serveConnection(conn, {
    handler: async (req) => {
      read = await req.text().catch((e) => `failed: ${e.name}`);
      return new Response("ok");
    },
    limits: DEFAULT_LIMITS,
    drain: new AbortController().signal,
    onError: () => {},
    peer: PEER,
  });
  assert.match(read, /^failed/);
});
