// Where the two worker engines differed from each other or from Deno.serve
// (found by review). Each test runs through a hub under the engine under
// test (POTHEAD_ENGINE), so both engines are held to the same behaviour.
import assert from "node:assert/strict";
import { connectWorker, ENGINE, startHub } from "./_hub.ts";
import type { HubServer, ServeHubOptions } from "../hub.ts";
import type { FetchHandler, WorkerHandle } from "../worker.ts";
import { deadline, waitFor } from "./_wait.ts";
import { RawSocket } from "./_relay.ts";

interface Setup {
  server: HubServer;
  worker: WorkerHandle;
  url: string;
  // Hub connections the worker opened, and errors it reported.
  connects: () => number;
  errors: string[];
}

async function withWorker(
  handler: FetchHandler,
  fn: (s: Setup) => Promise<void>,
  hubOptions: ServeHubOptions = {},
): Promise<void> {
  const server = startHub(hubOptions);
  let connects = 0;
  const errors: string[] = [];
  const worker = connectWorker(handler, {
    hostname: "127.0.0.1",
    port: server.workerAddr.port,
    minBackoff: 10,
    maxBackoff: 100,
    onConnect: () => connects++,
    onError: (error, context) => errors.push(`${context}: ${error}`),
  });
  try {
    await waitFor(() => server.hub.stats.idle === 1, "the worker's slot");
    await fn({
      server,
      worker,
      url: `http://127.0.0.1:${server.addr.port}`,
      connects: () => connects,
      errors,
    });
  } finally {
    worker.close();
    await worker.finished;
    await server.shutdown();
  }
}

Deno.test(`[${ENGINE}] a handler that cancels its request body does not see its signal abort`, async () => {
  await withWorker(async (req) => {
    await req.body?.cancel();
    // Let an abort, if one were coming, land.
    await new Promise((r) => setTimeout(r, 50));
    return new Response(`aborted=${req.signal.aborted}`);
  }, async ({ url }) => {
    const res = await fetch(url, { method: "POST", body: "hello" });
    assert.equal(await res.text(), "aborted=false");
  });
});

Deno.test(`[${ENGINE}] a request answered in full does not see its signal abort when its idle connection ends later`, async () => {
  // Aborts after the response was written. (Without
  // --unstable-no-legacy-abort, Deno.serve aborts every signal as its
  // response completes; that one comes before.)
  let late = 0;
  await withWorker((req, info) => {
    let answered = false;
    req.signal.addEventListener("abort", () => answered && late++);
    info.completed.then(() => answered = true);
    return new Response("ok");
  }, async ({ url, worker }) => {
    assert.equal(await (await fetch(url)).text(), "ok");
    // The drain hands the idle connection back: it ends after the request.
    await deadline(worker.drain(), 10_000, "the drain");
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(late, 0);
  });
});

for (const https of [false, true]) {
  Deno.test(
    `[${ENGINE}] a TRACE request reaches the handler and the connection stays${
      https ? " (the consumer on https)" : ""
    }`,
    async () => {
      // On https the serve engine once copied the request into one with an
      // https URL, which `new Request` refuses for TRACE: a 500, and the
      // permit was never given back.
      await withWorker(
        (req) =>
          new Response(
            `${req.method} ${new URL(req.url).protocol}${
              new URL(req.url).pathname
            } clone ${new URL(req.clone().url).protocol}`,
          ),
        async ({ server, connects, errors, worker }) => {
          const proto = https ? "https:" : "http:";
          for (const line of ["TRACE /t HTTP/1.1", "GET /g HTTP/1.1"]) {
            const c = await RawSocket.connect(server.addr.port);
            try {
              await c.write(
                `${line}\r\nHost: h\r\nX-Forwarded-Proto: ${
                  https ? "https" : "http"
                }\r\n\r\n`,
              );
              const m = await deadline(c.readMessage(), 10_000, "the response");
              assert.equal(m?.status, 200, line);
              const [method, path] = line.split(" ");
              assert.equal(
                new TextDecoder().decode(m!.body),
                `${method} ${proto}${path} clone ${proto}`,
              );
            } finally {
              c.close();
            }
          }
          await waitFor(() => worker.active === 0, "the permits back");
          assert.equal(connects(), 1);
          assert.deepEqual(errors, []);
        },
        { trustForwarded: true },
      );
    },
  );
}

Deno.test(`[${ENGINE}] a lower-case get or head, with or without a body, reaches the handler`, async () => {
  // Methods are case-sensitive and Deno.serve hands these over; `Request`
  // upper-cases them (the inline engine's "GET"), so no body may go with.
  await withWorker(
    async (req) => {
      const body = req.body === null ? "none" : (await req.bytes()).length;
      return new Response(`${req.method.toUpperCase()} ${body}`);
    },
    async ({ server, connects, errors }) => {
      for (const method of ["get", "head"]) {
        for (const body of ["", "content-length: 3\r\n\r\nabc"]) {
          const c = await RawSocket.connect(server.addr.port);
          try {
            await c.write(
              `${method} /m HTTP/1.1\r\nHost: h\r\n${body || "\r\n"}`,
            );
            const m = await deadline(c.readMessage(), 10_000, "the response");
            assert.equal(m?.status, 200, `${method} ${body}`);
            assert.match(
              new TextDecoder().decode(m!.body),
              new RegExp(`^${method.toUpperCase()} `),
            );
          } finally {
            c.close();
          }
        }
      }
      assert.equal(connects(), 1);
      assert.deepEqual(errors, []);
    },
  );
});

Deno.test(`[${ENGINE}] a HEAD response tells the length the GET's body would have`, async () => {
  await withWorker(
    () => new Response("hello"),
    async ({ server }) => {
      const c = await RawSocket.connect(server.addr.port);
      try {
        await c.write("HEAD / HTTP/1.1\r\nHost: h\r\n\r\n");
        const m = await deadline(c.readMessage(true), 10_000, "the response");
        assert.equal(m?.status, 200);
        const length = m!.headers.find(([n]) => n === "content-length");
        assert.equal(length?.[1], "5");
      } finally {
        c.close();
      }
    },
  );
});

Deno.test(`[${ENGINE}] a streamed response's head goes out before its first chunk is ready`, async () => {
  const first = Promise.withResolvers<void>();
  await withWorker(
    () =>
      new Response(
        new ReadableStream<Uint8Array>({
          async start(c) {
            await first.promise;
            c.enqueue(new TextEncoder().encode("data: late\n\n"));
            c.close();
          },
        }),
        { headers: { "content-type": "text/event-stream" } },
      ),
    async ({ url }) => {
      try {
        // The head arrives while the handler still holds the first event.
        const res = await deadline(fetch(url), 5000, "the response head");
        assert.equal(res.status, 200);
        first.resolve();
        assert.equal(await res.text(), "data: late\n\n");
      } finally {
        first.resolve();
      }
    },
  );
});

// What a response body may begin with: the bytes of an interim 100.
const LOOKS_LIKE_100 = "HTTP/1.1 100 Continue\r\n\r\nthis body quotes a 100\n";

Deno.test(`[${ENGINE}] a response body that begins like a 100 Continue goes through whole, after a streamed upload too`, async () => {
  const server = startHub({ bodyIdleTimeout: 3000 });
  const bytes = new TextEncoder().encode(LOOKS_LIKE_100);
  const worker = connectWorker(async (req) => {
    if (req.method === "POST") {
      return new Response(`got ${(await req.arrayBuffer()).byteLength}`);
    }
    // Written after the head, which goes out on its own.
    return new Response(
      new ReadableStream<Uint8Array>({
        async pull(c) {
          await new Promise((r) => setTimeout(r, 50));
          c.enqueue(bytes);
          c.close();
        },
      }),
      { headers: { "content-length": String(bytes.length) } },
    );
  }, {
    hostname: "127.0.0.1",
    port: server.workerAddr.port,
    minBackoff: 10,
    maxBackoff: 100,
  });
  const url = `http://127.0.0.1:${server.addr.port}/`;
  const get = async () => {
    const res = await deadline(fetch(url), 10_000, "the response head");
    return await deadline(res.text(), 10_000, "the response body");
  };
  try {
    await waitFor(() => server.hub.stats.idle === 1, "the worker's slot");
    assert.equal(await get(), LOOKS_LIKE_100);
    // A streamed upload (chunked, with Expect: 100-continue) in between.
    const upload = new ReadableStream<Uint8Array>({
      start(c) {
        for (let i = 0; i < 3; i++) c.enqueue(new Uint8Array(50_000));
        c.close();
      },
    });
    const res = await deadline(
      fetch(url, { method: "POST", body: upload }),
      10_000,
      "the upload's response",
    );
    assert.equal(await res.text(), "got 150000");
    assert.equal(await get(), LOOKS_LIKE_100);
  } finally {
    worker.close();
    await worker.finished;
    await server.shutdown();
  }
});

Deno.test(`[${ENGINE}] a response whose body was already read or is locked gives a 500, once, and the connection stays`, async () => {
  let runs = 0;
  await withWorker(async (req) => {
    runs++;
    const res = new Response("body");
    if (new URL(req.url).pathname === "/used") await res.text();
    else res.body!.getReader();
    return res;
  }, async ({ url, connects, errors }) => {
    for (const path of ["/used", "/locked"]) {
      const res = await deadline(fetch(url + path), 10_000, path);
      assert.equal(res.status, 500, path);
      assert.equal(res.headers.get("x-pothead-error"), null, path);
      await res.body?.cancel();
    }
    // Run once each (a GET the worker dropped unanswered would be resent).
    assert.equal(runs, 2);
    assert.equal(connects(), 1);
    assert.equal(errors.length, 2, errors.join("\n"));
    assert.match(errors[0], /^handler: .*body/);
  });
});

Deno.test(`[${ENGINE}] the 500 for a used or locked body carries only its own fields: one content-type, none of the handler's`, async () => {
  await withWorker(async (req) => {
    const res = new Response("body", {
      headers: { "content-type": "application/json", "set-cookie": "a=1" },
    });
    if (new URL(req.url).pathname === "/used") await res.text();
    else res.body!.getReader();
    return res;
  }, async ({ server }) => {
    for (const path of ["/used", "/locked"]) {
      // Read off the wire: Headers would join two fields into one.
      const c = await RawSocket.connect(server.addr.port);
      try {
        await c.write(
          `GET ${path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n`,
        );
        const answer = await deadline(c.readMessage(), 10_000, path);
        assert.equal(answer?.status, 500, path);
        const types = answer.headers.filter(([name]) =>
          name === "content-type"
        );
        assert.deepEqual(
          types,
          [["content-type", "text/plain; charset=utf-8"]],
          path,
        );
        assert.ok(
          !answer.headers.some(([name]) => name === "set-cookie"),
          path,
        );
      } finally {
        c.conn.close();
      }
    }
  });
});

Deno.test(`[${ENGINE}] a handler that returns fetch()'s response for a gzip upstream sends the decoded body without its Content-Encoding and Content-Length`, async () => {
  const text = "hello gzip world\n".repeat(200);
  const gzip = new Uint8Array(
    await new Response(
      new Blob([text]).stream().pipeThrough(new CompressionStream("gzip")),
    ).arrayBuffer(),
  );
  const upstream = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () =>
      new Response(gzip, {
        headers: {
          "content-encoding": "gzip",
          "content-type": "text/plain",
          "set-cookie": "a=1",
        },
      }),
  );
  const origin = `http://127.0.0.1:${upstream.addr.port}`;
  try {
    // Without and with a gate: then every response goes with
    // `Connection: close`, which the runner adds to a copy of it.
    for (const gate of [undefined, () => Promise.resolve()]) {
      const server = startHub();
      const worker = connectWorker((req) =>
        // `/raw`: fetch does not decode when asked for no coding.
        new URL(req.url).pathname === "/raw"
          ? fetch(origin, { headers: { "accept-encoding": "identity" } })
          : fetch(origin), {
        hostname: "127.0.0.1",
        port: server.workerAddr.port,
        minBackoff: 10,
        maxBackoff: 100,
        gate,
      });
      try {
        await waitFor(() => server.hub.stats.idle >= 1, "the worker's slot");
        const res = await deadline(
          // Not decoded again here: the consumer asks for no coding.
          fetch(`http://127.0.0.1:${server.addr.port}/`, {
            headers: { "accept-encoding": "identity" },
          }),
          10_000,
          "the response",
        );
        const what = gate ? "with a gate" : "without a gate";
        assert.equal(res.status, 200, what);
        assert.equal(res.headers.get("content-encoding"), null, what);
        assert.equal(res.headers.get("set-cookie"), "a=1", what);
        assert.equal(
          await deadline(res.text(), 10_000, "the body"),
          text,
          what,
        );
        const raw = await deadline(
          fetch(`http://127.0.0.1:${server.addr.port}/raw`, {
            headers: { "accept-encoding": "identity" },
          }),
          10_000,
          "the raw response",
        );
        assert.equal(raw.headers.get("content-encoding"), "gzip", what);
        assert.deepEqual(new Uint8Array(await raw.arrayBuffer()), gzip, what);
      } finally {
        worker.close();
        await worker.finished;
        await server.shutdown();
      }
    }
  } finally {
    await upstream.shutdown();
  }
});

Deno.test(`[${ENGINE}] a string body goes with its own length whatever Content-Length the handler copied`, async () => {
  // As when a handler rewrites a fetched body and passes the upstream's
  // headers on: Deno.serve sends a body it has whole with its real length.
  await withWorker(
    (req) =>
      new Response("plain body", {
        headers: { "content-length": new URL(req.url).searchParams.get("cl")! },
      }),
    async ({ url, connects, errors }) => {
      for (const cl of ["3", "30", "0"]) {
        const res = await deadline(fetch(`${url}/?cl=${cl}`), 10_000, cl);
        assert.equal(res.status, 200, cl);
        assert.equal(res.headers.get("content-length"), "10", cl);
        assert.equal(
          await deadline(res.text(), 10_000, "the body"),
          "plain body",
        );
      }
      assert.equal(connects(), 1);
      assert.deepEqual(errors, []);
    },
  );
});

Deno.test(`[${ENGINE}] a 205 reaches the consumer at once and the worker takes the next request`, async () => {
  // Deno.serve sends a 205 with no length on a kept connection, which the
  // hub must read as a body that lasts until the close (RFC 9112 §6.3).
  await withWorker(
    (req) =>
      new URL(req.url).pathname === "/reset"
        ? new Response(null, { status: 205 })
        : new Response("next"),
    async ({ url, errors }) => {
      const reset = await deadline(fetch(`${url}/reset`), 10_000, "the 205");
      assert.equal(reset.status, 205);
      assert.equal(await deadline(reset.text(), 10_000, "its end"), "");
      const next = await deadline(fetch(`${url}/next`), 10_000, "the next");
      assert.equal(await next.text(), "next");
      assert.deepEqual(errors, []);
    },
  );
});

Deno.test(`[${ENGINE}] a streamed body whose first chunk is empty arrives whole`, async () => {
  await withWorker(
    () =>
      new Response(
        new ReadableStream<Uint8Array>({
          async pull(c) {
            c.enqueue(new Uint8Array(0));
            await new Promise((r) => setTimeout(r, 20));
            c.enqueue(new TextEncoder().encode("after the empty one"));
            c.close();
          },
        }),
      ),
    async ({ url, connects, errors }) => {
      for (let i = 0; i < 2; i++) {
        const res = await deadline(fetch(url), 10_000, "the response");
        assert.equal(
          await deadline(res.text(), 10_000, "the body"),
          "after the empty one",
        );
      }
      assert.equal(connects(), 1);
      assert.deepEqual(errors, []);
    },
  );
});

Deno.test(`[${ENGINE}] a response body with a chunk that is not bytes never reaches the consumer as a success`, async () => {
  // A common slip in event streams: enqueueing a string. Deno.serve refuses
  // it; it must not go out as some other bytes.
  await withWorker(
    () =>
      new Response(
        new ReadableStream<string>({
          pull(c) {
            c.enqueue("data: a string\n\n");
            c.close();
          },
        }) as unknown as ReadableStream<Uint8Array>,
      ),
    async ({ url, errors }) => {
      const res = await deadline(fetch(url), 10_000, "the response");
      if (res.status === 200) {
        await assert.rejects(deadline(res.text(), 10_000, "the body"));
      } else await res.body?.cancel();
      assert.match(errors.join("\n"), /ArrayBufferView|Uint8Array/);
    },
  );
});

Deno.test(`[${ENGINE}] a response body that fails at once runs the handler once, and the worker serves the next request`, async () => {
  let runs = 0;
  await withWorker(
    (req) => {
      runs++;
      if (new URL(req.url).pathname === "/ok") return new Response("ok");
      return new Response(
        new ReadableStream<Uint8Array>({
          pull(c) {
            c.error(new Error("no body after all"));
          },
        }),
      );
    },
    async ({ url, errors }) => {
      const res = await deadline(fetch(url), 10_000, "the response");
      if (res.status === 200) {
        await assert.rejects(deadline(res.text(), 10_000, "the body"));
      } else {
        assert.equal(res.status, 500);
        await res.body?.cancel();
      }
      // A GET the worker dropped unanswered would have been resent.
      assert.equal(runs, 1);
      assert.match(errors.join("\n"), /no body after all/);
      const ok = await deadline(fetch(`${url}/ok`), 10_000, "the next");
      assert.equal(await ok.text(), "ok");
    },
  );
});

Deno.test(`[${ENGINE}] a handler that returns Response.error() gives a 500, once`, async () => {
  let runs = 0;
  await withWorker(() => {
    runs++;
    return Response.error();
  }, async ({ url, errors }) => {
    const res = await deadline(fetch(url), 10_000, "the response");
    assert.equal(res.status, 500);
    assert.equal(res.headers.get("x-pothead-error"), null);
    await res.body?.cancel();
    assert.equal(runs, 1);
    assert.equal(errors.length, 1, errors.join("\n"));
    assert.match(errors[0], /^handler: .*error/i);
  });
});

Deno.test(`[${ENGINE}] a request without a body has request.body null only for GET and HEAD, as with Deno.serve`, async () => {
  const handler: FetchHandler = async (req) => {
    const text = req.body === null ? "null" : `stream:${await req.text()}`;
    return new Response(text, { headers: { "x-body": text } });
  };
  const methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"];
  const probe = async (base: string) => {
    const seen: Record<string, string | null> = {};
    for (const method of methods) {
      const res = await fetch(`${base}/m`, { method });
      seen[method] = res.headers.get("x-body");
      await res.body?.cancel();
    }
    return seen;
  };
  const direct = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    handler,
  );
  let expected;
  try {
    expected = await probe(`http://127.0.0.1:${direct.addr.port}`);
  } finally {
    await direct.shutdown();
  }
  assert.equal(expected.GET, "null");
  assert.equal(expected.POST, "stream:");
  await withWorker(handler, async ({ url }) => {
    assert.deepEqual(await probe(url), expected);
  });
});

Deno.test(`[${ENGINE}] a handler does not see Expect on a streamed upload: not the hub's (the runner answered it), nor a consumer's (the hub did)`, async () => {
  const handler: FetchHandler = async (req) => {
    const copy = req.clone();
    const bytes = (await req.arrayBuffer()).byteLength;
    const copied = (await copy.arrayBuffer()).byteLength;
    return new Response(
      `${bytes} expect=${req.headers.get("expect")} clone: ${copied} expect=${
        copy.headers.get("expect")
      }`,
    );
  };
  const upload = () =>
    new ReadableStream<Uint8Array>({
      start(c) {
        for (let i = 0; i < 4; i++) c.enqueue(new Uint8Array(32 * 1024));
        c.close();
      },
    });
  const direct = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    handler,
  );
  let expected;
  try {
    const res = await fetch(`http://127.0.0.1:${direct.addr.port}/up`, {
      method: "POST",
      body: upload(),
    });
    expected = await res.text();
  } finally {
    await direct.shutdown();
  }
  assert.equal(expected, "131072 expect=null clone: 131072 expect=null");
  await withWorker(handler, async ({ url }) => {
    // Chunked, so the hub streams it and asks the worker for 100 Continue.
    const res = await fetch(`${url}/up`, { method: "POST", body: upload() });
    assert.equal(await res.text(), expected);
    // curl asks the hub for 100 Continue itself; the hub answers it (a
    // handler under Deno.serve facing curl would see this one).
    const file = await Deno.makeTempFile();
    try {
      await Deno.writeFile(file, new Uint8Array(131072));
      const out = await new Deno.Command("curl", {
        args: [
          "-s",
          "-m",
          "20",
          "-H",
          "Expect: 100-continue",
          "--data-binary",
          `@${file}`,
          `${url}/up`,
        ],
        stdout: "piped",
      }).output();
      assert.equal(new TextDecoder().decode(out.stdout), expected);
    } finally {
      await Deno.remove(file);
    }
  });
});

Deno.test(`[${ENGINE}] a worker's close with idle connections reports no connection error`, async () => {
  const server = startHub();
  const errors: string[] = [];
  const worker = connectWorker(() => new Response("ok"), {
    hostname: "127.0.0.1",
    port: server.workerAddr.port,
    concurrency: 2,
    onError: (error, context) => errors.push(`${context}: ${error}`),
  });
  try {
    await waitFor(() => server.hub.stats.idle === 2, "the worker's slots");
    const res = await fetch(`http://127.0.0.1:${server.addr.port}/`);
    assert.equal(await res.text(), "ok");
    worker.close();
    await deadline(worker.finished, 10_000, "the worker's close");
    assert.deepEqual(errors, []);
  } finally {
    worker.close();
    await worker.finished;
    await server.shutdown();
  }
});

Deno.test(`[${ENGINE}] streamed uploads the handler answers without reading them do not stall the worker`, async () => {
  // The serve engine once handed the handler a copy of Deno.serve's request
  // (to drop the hub's Expect), which took the body over: Deno.serve no
  // longer discarded what the handler left unread, and the link stalled.
  await withWorker(
    () => new Response("too large", { status: 413 }),
    async ({ url, server }) => {
      for (let i = 0; i < 3; i++) {
        const res = await fetch(`${url}/${i}`, {
          method: "POST",
          body: new Uint8Array(5_000_000),
        });
        assert.equal(res.status, 413, `upload ${i}: ${await res.text()}`);
      }
      await waitFor(() => server.hub.stats.idle === 1, "the slot back");
    },
    { queueTimeout: 5_000 },
  );
});

// A stream whose next chunk does not come (an event stream between events).
// `stop()` ends every such stream made, so that a worker that failed to give
// one up can still finish (withWorker's cleanup waits for it).
function quietStream() {
  const stops: (() => void)[] = [];
  let cancelled = false;
  const stream = () =>
    new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(new TextEncoder().encode("first\n"));
        stops.push(() => {
          try {
            c.close();
          } catch { /* cancelled */ }
        });
      },
      pull: () => new Promise<void>((r) => stops.push(r)),
      cancel() {
        cancelled = true;
      },
    });
  return {
    stream,
    cancelled: () => cancelled,
    stop: () => stops.splice(0).forEach((s) => s()),
  };
}

Deno.test(`[${ENGINE}] a response stream gone quiet is cancelled when its consumer leaves, and the slot comes back`, async () => {
  const quiet = quietStream();
  await withWorker((req) =>
    new Response(
      new URL(req.url).pathname === "/events" ? quiet.stream() : "next",
    ), async ({ url, worker }) => {
    try {
      const ac = new AbortController();
      const res = await fetch(`${url}/events`, { signal: ac.signal });
      await res.body!.getReader().read();
      ac.abort();
      await waitFor(() => quiet.cancelled(), "the stream cancelled");
      await waitFor(() => worker.active === 0, "the permit back");
      const next = await deadline(fetch(url), 10_000, "the next request");
      assert.equal(await next.text(), "next");
    } finally {
      quiet.stop();
    }
  });
});

Deno.test(`[${ENGINE}] close() gives up a response stream gone quiet: finished resolves`, async () => {
  const quiet = quietStream();
  await withWorker(
    () => new Response(quiet.stream()),
    async ({ url, worker }) => {
      const res = await fetch(url);
      const reader = res.body!.getReader();
      try {
        await reader.read();
        worker.close();
        await deadline(worker.finished, 10_000, "finished after close()");
        assert.ok(quiet.cancelled(), "the stream was cancelled");
      } finally {
        quiet.stop();
        await reader.cancel();
      }
    },
  );
});

Deno.test(`[${ENGINE}] a request the hub sent just before dropping the connection is not run`, async () => {
  // A scripted hub writes a request and closes at once (its consumer left,
  // or it timed the worker out), so the request and the end of the stream
  // reach the worker together: nobody would read the answer.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const ran: string[] = [];
  const errors: string[] = [];
  const worker = connectWorker((req) => {
    ran.push(new URL(req.url).pathname);
    return new Response("ok");
  }, {
    hostname: "127.0.0.1",
    port: (listener.addr as Deno.NetAddr).port,
    minBackoff: 10,
    maxBackoff: 100,
    onError: (error, context) => errors.push(`${context}: ${error}`),
  });
  const rounds = 20;
  try {
    for (let i = 0; i <= rounds; i++) {
      // The worker dials again once its last connection has ended, so
      // whatever it ran there has run by now.
      const conn = await deadline(listener.accept(), 10_000, "the worker");
      if (i === rounds) {
        conn.close();
        break;
      }
      // A bodiless request, and one whose short body came with its head.
      await conn.write(
        new TextEncoder().encode(
          i % 2 === 0
            ? `GET /get${i} HTTP/1.1\r\nhost: w\r\n\r\n`
            : `POST /post${i} HTTP/1.1\r\nhost: w\r\ncontent-length: 5\r\n\r\nhello`,
        ),
      );
      conn.close();
    }
  } finally {
    worker.close();
    await worker.finished;
    listener.close();
  }
  assert.deepEqual(ran, []);
  // The dialer reports each connection ended with nothing served; nothing
  // else (not a stranger's request on the serve engine's listener).
  assert.deepEqual(
    errors.filter((e) => !e.endsWith("hub closed the connection at once")),
    [],
  );
});

Deno.test(`[${ENGINE}] a consumer that leaves in the middle of a response is no error to report`, async () => {
  // An event stream (the hub's close is seen while it waits) and a large
  // body (a write fails): both are the consumer's choice, not a fault.
  const quiet = quietStream();
  await withWorker((req) => {
    if (new URL(req.url).pathname === "/events") {
      return new Response(quiet.stream());
    }
    let left = 1024;
    return new Response(
      new ReadableStream<Uint8Array>({
        pull(c) {
          if (left-- > 0) c.enqueue(new Uint8Array(64 * 1024));
          else c.close();
        },
      }),
    );
  }, async ({ url, worker, errors }) => {
    try {
      for (const path of ["/events", "/big"]) {
        const ac = new AbortController();
        const res = await fetch(`${url}${path}`, { signal: ac.signal });
        await res.body!.getReader().read();
        ac.abort();
        await waitFor(
          () => worker.active === 0,
          `the permit back after ${path}`,
        );
      }
      assert.deepEqual(errors, []);
    } finally {
      quiet.stop();
    }
  });
});

Deno.test(`[${ENGINE}] a handler that answers without reading an upload still coming gives its permit back with the response`, async () => {
  // A scripted hub sends the head and part of the body, then nothing: the
  // rest would come at its consumer's pace. Another hub's request could
  // use the permit meanwhile.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const worker = connectWorker(() => new Response("early"), {
    hostname: "127.0.0.1",
    port: (listener.addr as Deno.NetAddr).port,
    minBackoff: 10,
    maxBackoff: 100,
  });
  const conn = await deadline(listener.accept(), 10_000, "the worker");
  try {
    await conn.write(
      new TextEncoder().encode(
        "POST /up HTTP/1.1\r\nhost: w\r\ncontent-length: 200000\r\n\r\n" +
          "a".repeat(1000),
      ),
    );
    let answer = "";
    const buf = new Uint8Array(4096);
    while (!answer.endsWith("\r\n\r\nearly")) {
      const n = await deadline(conn.read(buf), 10_000, "the answer");
      if (n === null) break;
      answer += new TextDecoder().decode(buf.subarray(0, n));
    }
    assert.match(answer, /^HTTP\/1\.1 200 /);
    await waitFor(() => worker.active === 0, "the permit back", 3_000);
  } finally {
    conn.close();
    worker.close();
    await worker.finished;
    listener.close();
  }
});
