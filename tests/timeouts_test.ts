// Timeouts on the worker link: a response body that stalls (bodyIdleTimeout),
// a slow but live event stream that must keep working, a consumer upload that
// stalls (uploadIdleTimeout), and a response head that trickles
// (headTimeout); and the limit on request bodies (maxRequestBodySize). Timeouts are set small so the tests are quick, but nothing
// asserts on how long anything took: each case checks what the consumer,
// the worker and the hub's counters end up with.

import assert from "node:assert/strict";
import {
  type AccessRecord,
  type HubLogRecord,
  type HubServer,
  serveHub,
  type ServeHubOptions,
} from "../hub.ts";
import type { WorkerHandle } from "../worker.ts";
import { deadline, RawSocket, waitFor } from "./_relay.ts";
import { connectWorker } from "./_hub.ts";

const HANG = 15_000;
const dec = new TextDecoder();

interface Ctx {
  server: HubServer;
  url: string;
  logs: HubLogRecord[];
  workers: WorkerHandle[];
  raws: RawSocket[];
  /** A raw worker, once the hub holds it idle. */
  rawWorker(): Promise<RawSocket>;
  /** A raw consumer that has sent a chunked POST /upload head, then `body`. */
  chunkedUpload(body: string): Promise<RawSocket>;
}

async function withHub(
  options: Partial<ServeHubOptions>,
  fn: (ctx: Ctx) => Promise<void>,
): Promise<void> {
  const logs: HubLogRecord[] = [];
  const server = serveHub({
    hostname: "127.0.0.1",
    port: 0,
    workerPort: 0,
    shutdownGrace: 500,
    queueTimeout: HANG,
    onLog: (r) => logs.push(r),
    ...options,
  });
  const ctx: Ctx = {
    server,
    url: `http://127.0.0.1:${server.addr.port}`,
    logs,
    workers: [],
    raws: [],
    async rawWorker() {
      const idle = server.hub.stats.idle;
      const r = await RawSocket.connect(server.workerAddr.port);
      ctx.raws.push(r);
      await waitFor(() => server.hub.stats.idle > idle, "raw worker idle");
      return r;
    },
    async chunkedUpload(body) {
      const consumer = await RawSocket.connect(server.addr.port);
      ctx.raws.push(consumer);
      await consumer.write(
        "POST /upload HTTP/1.1\r\nHost: hub\r\nTransfer-Encoding: chunked\r\n" +
          `\r\n${body}`,
      );
      return consumer;
    },
  };
  try {
    await deadline(fn(ctx), HANG * 2, "test body");
  } finally {
    for (const r of ctx.raws) r.close();
    for (const w of ctx.workers) w.close();
    await Promise.all(ctx.workers.map((w) => w.finished));
    await server.shutdown();
  }
}

function later(url: string, init?: RequestInit): Promise<Response> {
  const p = fetch(url, init);
  p.catch(() => {});
  return p;
}

/** Reads a body to its end; resolves the bytes or rejects with its error. */
async function drain(res: Response): Promise<Uint8Array[]> {
  const parts: Uint8Array[] = [];
  for await (const part of res.body!) parts.push(part);
  return parts;
}

Deno.test("bodyIdleTimeout: a worker that sends the head then stalls errors the consumer's body and loses its slot", async () => {
  await withHub({ bodyIdleTimeout: 300 }, async (ctx) => {
    const w = await ctx.rawWorker();
    const pending = later(`${ctx.url}/stall`);
    const req = await w.readMessage();
    assert.equal(req?.start, "GET /stall HTTP/1.1");
    await w.write(
      "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    );
    const res = await pending;
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    const first = await reader.read();
    assert.equal(dec.decode(first.value), "hello");
    await assert.rejects(async () => {
      for (let i = 0; i < 100; i++) if ((await reader.read()).done) return;
    });
    // The hub closed the worker connection.
    assert.equal((await w.readToEnd()).length, 0);
    assert.equal(w.eof, true);
    await waitFor(() => ctx.server.hub.stats.slots === 0, "slot removed");
    const closed = ctx.logs.find((r) => r.msg === "worker connection closed");
    assert.equal(closed?.reason, "Worker sent no body byte for 300 ms");
    // The hub still serves through a good worker.
    ctx.workers.push(connectWorker(() => new Response("fine"), {
      port: ctx.server.workerAddr.port,
      minBackoff: 10,
    }));
    const ok = await fetch(`${ctx.url}/next`);
    assert.equal(await ok.text(), "fine");
  });
});

Deno.test({
  name:
    "bodyIdleTimeout: a worker that stalls inside a small Content-Length body does not hold the consumer forever",
  fn: async () => {
    await withHub({ bodyIdleTimeout: 300 }, async (ctx) => {
      const w = await ctx.rawWorker();
      const pending = later(`${ctx.url}/small-stall`);
      await w.readMessage();
      await w.write("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789");
      const res = await deadline(pending, 5000, "an answer to the consumer");
      await res.body?.cancel();
      assert.equal(res.headers.get("x-pothead-error"), "1");
      assert.equal(res.status, 504);
      assert.equal((await w.readToEnd()).length, 0);
      await waitFor(() => ctx.server.hub.stats.slots === 0, "slot removed");
    });
  },
});

Deno.test("bodyIdleTimeout: an event stream with an event every 100 ms keeps working past 1 s with a 300 ms limit", async () => {
  await withHub({ bodyIdleTimeout: 300 }, async (ctx) => {
    const EVENTS = 12;
    ctx.workers.push(connectWorker(() => {
      let n = 0;
      let timer: ReturnType<typeof setInterval> | undefined;
      const enc = new TextEncoder();
      const body = new ReadableStream<Uint8Array>({
        start(controller) {
          timer = setInterval(() => {
            controller.enqueue(enc.encode(`data: ${n++}\n\n`));
            if (n === EVENTS) {
              clearInterval(timer);
              controller.close();
            }
          }, 100);
        },
        cancel() {
          clearInterval(timer);
        },
      });
      return new Response(body, {
        headers: { "content-type": "text/event-stream" },
      });
    }, { port: ctx.server.workerAddr.port, minBackoff: 10 }));
    await waitFor(() => ctx.server.hub.stats.idle === 1, "worker idle");
    const res = await fetch(`${ctx.url}/events`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "text/event-stream");
    const text = dec.decode(
      (await drain(res)).reduce((a, b) => {
        const c = new Uint8Array(a.length + b.length);
        c.set(a);
        c.set(b, a.length);
        return c;
      }, new Uint8Array(0)),
    );
    assert.equal(
      text,
      Array.from({ length: EVENTS }, (_, i) => `data: ${i}\n\n`).join(""),
    );
    const closed = ctx.logs.filter((r) => r.msg === "worker connection closed");
    assert.deepEqual(closed, []);
    assert.equal(ctx.server.hub.stats.failed, 0);
    await waitFor(() => ctx.server.hub.stats.idle === 1, "slot reused");
  });
});

for (const responseBuffer of [0, 1024 * 1024]) {
  Deno.test(`bodyIdleTimeout: a consumer that never reads a large response loses it and frees the worker (responseBuffer ${responseBuffer})`, async () => {
    await withHub({ bodyIdleTimeout: 300, responseBuffer }, async (ctx) => {
      const w = await ctx.rawWorker();
      const consumer = await RawSocket.connect(ctx.server.addr.port);
      ctx.raws.push(consumer);
      await consumer.write("GET /big HTTP/1.1\r\nHost: hub\r\n\r\n");
      assert.equal((await w.readMessage())?.start, "GET /big HTTP/1.1");
      // Far more than the socket buffers on both sides and the read-ahead
      // hold, so the worker is held until the consumer reads, which it
      // never does; the writes stop when the hub closes the connection.
      const SIZE = 256 * 1024 * 1024;
      const chunk = new Uint8Array(256 * 1024);
      const writing = (async () => {
        if (
          !await w.write(`HTTP/1.1 200 OK\r\ncontent-length: ${SIZE}\r\n\r\n`)
        ) return 0;
        let sent = 0;
        while (sent < SIZE && await w.write(chunk)) sent += chunk.length;
        return sent;
      })();
      const sent = await writing;
      assert.ok(sent < SIZE, `the hub took all ${sent} bytes`);
      assert.equal((await w.readToEnd()).length, 0);
      await waitFor(() => ctx.server.hub.stats.slots === 0, "slot removed");
      const cut = ctx.logs.filter((r) =>
        r.msg === "response cut: its consumer stopped reading"
      );
      assert.equal(cut.length, 1);
      assert.equal(
        cut[0].reason,
        "Consumer took no response body byte for 300 ms",
      );
      // Everyone else is served meanwhile.
      ctx.workers.push(connectWorker(() => new Response("fine"), {
        port: ctx.server.workerAddr.port,
        minBackoff: 10,
      }));
      const ok = await fetch(`${ctx.url}/next`);
      assert.equal(await ok.text(), "fine");
      // Once that consumer goes, its request counts as abandoned, not as a
      // failure of the worker, and nothing stays held for it.
      consumer.close();
      await waitFor(
        () => ctx.server.hub.stats.abandoned === 1,
        "abandoned counted",
      );
      assert.equal(ctx.server.hub.stats.failed, 0);
      await waitFor(
        () => ctx.server.hub.stats.responseBuffered === 0,
        "read-ahead given back",
      );
    });
  });
}

Deno.test("uploadIdleTimeout: a consumer that stalls mid-upload gets 408, the worker connection closes and the handler's signal aborts", async () => {
  await withHub({ uploadIdleTimeout: 300 }, async (ctx) => {
    const got: string[] = [];
    const aborted = Promise.withResolvers<string>();
    ctx.workers.push(connectWorker(async (req) => {
      req.signal.addEventListener(
        "abort",
        () => aborted.resolve(String(req.signal.reason)),
        { once: true },
      );
      const reader = req.body!.getReader();
      try {
        for (let i = 0; i < 100; i++) {
          const { done, value } = await reader.read();
          if (done) break;
          got.push(dec.decode(value));
        }
      } catch {
        // the upload was cut
      }
      return new Response("read");
    }, { port: ctx.server.workerAddr.port, minBackoff: 10 }));
    await waitFor(() => ctx.server.hub.stats.idle === 1, "worker idle");
    const consumer = await ctx.chunkedUpload("5\r\nhello\r\n");
    // ...and nothing more.
    const msg = await consumer.readMessage();
    assert.equal(msg?.status, 408);
    assert.equal(
      dec.decode(msg?.body),
      "408 Request Timeout: Consumer sent no request body byte for 300 ms\n",
    );
    assert.match(await deadline(aborted.promise, HANG, "handler abort"), /./);
    assert.deepEqual(got, ["hello"]);
    const closed = ctx.logs.find((r) => r.msg === "worker connection closed");
    assert.equal(
      closed?.reason,
      "Consumer sent no request body byte for 300 ms",
    );
    const s = ctx.server.hub.stats;
    assert.equal(s.failed, 1);
    assert.equal(s.answered, 0);
    assert.equal(s.retries, 0);
  });
});

Deno.test("headTimeout: a worker trickling its response head a line at a time gets the consumer a 504", async () => {
  await withHub({ headTimeout: 500 }, async (ctx) => {
    const w = await ctx.rawWorker();
    const pending = later(`${ctx.url}/trickle`);
    await w.readMessage();
    let stop = false;
    let lines = 0;
    const trickle = (async () => {
      if (!(await w.write("HTTP/1.1 200 OK\r\n"))) return;
      for (let i = 0; i < 1000 && !stop; i++) {
        if (!(await w.write(`x-line-${i}: a\r\n`))) return;
        lines++;
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const res = await pending;
    stop = true;
    await trickle;
    assert.equal(res.status, 504);
    assert.equal(res.headers.get("x-pothead-error"), "1");
    assert.equal(
      await res.text(),
      "504 Gateway Timeout: Worker sent no complete response head within 500 ms\n",
    );
    assert.ok(lines > 0, "the head was still trickling");
    assert.equal((await w.readToEnd()).length, 0);
    await waitFor(() => ctx.server.hub.stats.slots === 0, "slot removed");
    assert.equal(ctx.server.hub.stats.failed, 1);
  });
});

Deno.test("maxRequestBodySize: a Content-Length over the limit gets 413 at once and never reaches a worker; one at the limit passes", async () => {
  await withHub({ maxRequestBodySize: 100 }, async (ctx) => {
    const sizes: number[] = [];
    ctx.workers.push(connectWorker(async (req) => {
      sizes.push((await req.bytes()).length);
      return new Response("took it");
    }, { port: ctx.server.workerAddr.port, minBackoff: 10 }));
    await waitFor(() => ctx.server.hub.stats.idle === 1, "worker idle");
    const over = await fetch(`${ctx.url}/up`, {
      method: "POST",
      body: new Uint8Array(101),
    });
    assert.equal(over.status, 413);
    assert.equal(over.headers.get("x-pothead-error"), "1");
    assert.equal(
      await over.text(),
      "413 Content Too Large: request body of 101 bytes is larger than the limit of 100 bytes\n",
    );
    const at = await fetch(`${ctx.url}/up`, {
      method: "POST",
      body: new Uint8Array(100),
    });
    assert.equal(await at.text(), "took it");
    assert.deepEqual(sizes, [100]);
    const s = ctx.server.hub.stats;
    assert.equal(s.failed, 0);
    assert.equal(s.answered, 1);
  });
});

Deno.test("maxRequestBodySize: a chunked upload that grows past the limit gets 413, the handler's signal aborts, and the hub serves on", async () => {
  await withHub({ maxRequestBodySize: 100 }, async (ctx) => {
    let got = 0;
    let calls = 0;
    const aborted = Promise.withResolvers<void>();
    ctx.workers.push(connectWorker(async (req) => {
      if (++calls > 1) return new Response("next");
      req.signal.addEventListener("abort", () => aborted.resolve(), {
        once: true,
      });
      try {
        for await (const part of req.body!) got += part.length;
      } catch {
        // the upload was cut
      }
      return new Response("read");
    }, { port: ctx.server.workerAddr.port, minBackoff: 10 }));
    await waitFor(() => ctx.server.hub.stats.idle === 1, "worker idle");
    const chunk = `3c\r\n${"x".repeat(60)}\r\n`;
    const consumer = await ctx.chunkedUpload(chunk + chunk);
    const msg = await consumer.readMessage();
    assert.equal(msg?.status, 413);
    assert.equal(
      dec.decode(msg?.body),
      "413 Content Too Large: Request body is larger than the limit of 100 bytes\n",
    );
    await deadline(aborted.promise, HANG, "handler abort");
    assert.ok(got <= 100, `the worker got ${got} bytes`);
    // The worker redials, and the next request is served.
    const next = await fetch(`${ctx.url}/next`);
    assert.equal(await next.text(), "next");
    const s = ctx.server.hub.stats;
    assert.equal(s.failed, 0);
    assert.equal(s.retries, 0);
  });
});

Deno.test("headTimeout runs from the end of a streamed upload: a steady upload longer than it is answered", async () => {
  await withHub({ headTimeout: 300 }, async (ctx) => {
    const w = connectWorker(
      async (req) => new Response(`got ${(await req.bytes()).length}`),
      {
        hostname: "127.0.0.1",
        port: ctx.server.workerAddr.port,
        minBackoff: 10,
        maxBackoff: 100,
      },
    );
    ctx.workers.push(w);
    await waitFor(() => ctx.server.hub.stats.idle === 1, "the worker", HANG);
    // Ten chunks 100 ms apart: the upload lasts over three head timeouts.
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (sent === 10) {
          controller.close();
          return;
        }
        await new Promise((r) => setTimeout(r, 100));
        controller.enqueue(new Uint8Array(1000));
        sent++;
      },
    });
    const res = await deadline(
      fetch(`${ctx.url}/upload`, { method: "POST", body }),
      HANG,
      "the answer",
    );
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "got 10000");
  });
});

Deno.test("headTimeout: a worker that asks for a streamed upload and then stops taking it gets the consumer a 504 and loses its slot", async () => {
  await withHub({ headTimeout: 500 }, async (ctx) => {
    const worker = await ctx.rawWorker();
    // Up to 16 MiB, far more than the socket buffers hold, then nothing.
    const chunk = new Uint8Array(64 * 1024);
    let sent = 0;
    const { promise: stop, resolve: stopped } = Promise.withResolvers<void>();
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (sent === 256) {
          await stop;
          controller.close();
          return;
        }
        sent++;
        controller.enqueue(chunk);
      },
    });
    const res = later(`${ctx.url}/upload`, { method: "POST", body });
    try {
      const head = await worker.readHead();
      assert.match(head ?? "", /^POST \/upload HTTP\/1\.1\r\n/);
      // It takes the request, asks for the body, then freezes.
      await worker.write("HTTP/1.1 100 Continue\r\n\r\n");
      const answer = await deadline(res, HANG, "the consumer's answer");
      assert.equal(answer.status, 504);
      assert.match(await answer.text(), /took no request body byte/);
      assert.ok(sent < 256, "the upload did stall");
      await waitFor(() => ctx.server.hub.stats.slots === 0, "slot closed");
      assert.equal(ctx.server.hub.stats.busy, 0);
    } finally {
      stopped();
    }
  });
});

Deno.test("a worker's head timeout names that worker in the access record", async () => {
  const records: AccessRecord[] = [];
  await withHub(
    { headTimeout: 300, onAccess: (r) => records.push(r) },
    async (ctx) => {
      const worker = await ctx.rawWorker();
      const res = later(`${ctx.url}/slow`);
      await worker.readHead();
      const answer = await deadline(res, HANG, "the 504");
      assert.equal(answer.status, 504);
      await answer.body?.cancel();
      await waitFor(() => records.length === 1, "the access record");
      assert.equal(records[0].outcome, "worker-timeout");
      assert.equal(records[0].worker, "addr:127.0.0.1");
    },
  );
});

Deno.test("uploadIdleTimeout: a consumer that stalls in the middle of a small body gets 408 before it queues, and the hub holds nothing for it", async () => {
  const records: AccessRecord[] = [];
  await withHub(
    { uploadIdleTimeout: 1000, onAccess: (r) => records.push(r) },
    async (ctx) => {
      const consumer = await RawSocket.connect(ctx.server.addr.port);
      ctx.raws.push(consumer);
      await consumer.write(
        "POST /small HTTP/1.1\r\nHost: hub\r\nContent-Length: 10\r\n\r\nabc",
      );
      // ...and nothing more. No worker: the request never gets that far.
      const msg = await consumer.readMessage();
      assert.equal(msg?.status, 408);
      assert.equal(
        dec.decode(msg?.body),
        "408 Request Timeout: Consumer sent no request body byte for 1000 ms\n",
      );
      assert.equal(records.length, 1);
      assert.equal(records[0].outcome, "upload-timeout");
      const s = ctx.server.hub.stats;
      assert.equal(s.queued, 0);
      assert.equal(s.failed, 0);
      // A steady small body, slower than the limit in total, still passes.
      ctx.workers.push(connectWorker(async (req) => {
        return new Response(`got ${(await req.text()).length}`);
      }, { port: ctx.server.workerAddr.port, minBackoff: 10 }));
      const steady = await RawSocket.connect(ctx.server.addr.port);
      ctx.raws.push(steady);
      await steady.write(
        "POST /small HTTP/1.1\r\nHost: hub\r\nContent-Length: 15\r\n\r\n",
      );
      for (let i = 0; i < 15; i++) {
        await new Promise((r) => setTimeout(r, 100));
        await steady.write("a");
      }
      const ok = await steady.readMessage();
      assert.equal(ok?.status, 200);
      assert.equal(dec.decode(ok?.body), "got 15");
    },
  );
});

// Per-pool timeouts and body limits (`pools`), in place of the hub's.

/** A handler that answers only when its request's signal aborts. */
function hangs(req: Request): Promise<Response> {
  const { promise, resolve } = Promise.withResolvers<Response>();
  req.signal.addEventListener("abort", () => resolve(new Response("late")), {
    once: true,
  });
  return promise;
}

Deno.test("pools: a pool's headTimeout of 0 lets its jobs run past the hub's, while the default pool keeps the hub's", async () => {
  await withHub({
    headTimeout: 300,
    routes: [{ pool: "long", pathPrefix: "/long/" }],
    pools: { long: { headTimeout: 0 } },
  }, async (ctx) => {
    const entered = Promise.withResolvers<void>();
    const release = Promise.withResolvers<void>();
    const port = ctx.server.workerAddr.port;
    ctx.workers.push(
      connectWorker(async () => {
        entered.resolve();
        await release.promise;
        return new Response("long done");
      }, { port, pool: "long", minBackoff: 10 }),
      connectWorker(hangs, { port, minBackoff: 10 }),
    );
    await waitFor(() => ctx.server.hub.stats.idle === 2, "both idle");
    const long = later(`${ctx.url}/long/job`);
    await deadline(entered.promise, HANG, "long job started");
    const started = performance.now();
    const short = await later(`${ctx.url}/short`);
    assert.equal(short.status, 504);
    assert.equal(
      await short.text(),
      "504 Gateway Timeout: Worker sent no complete response head within 300 ms\n",
    );
    // The long job has run longer than the hub's head timeout by now.
    assert.ok(performance.now() - started >= 250);
    release.resolve();
    const res = await long;
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "long done");
  });
});

Deno.test("pools: a pool's headTimeout shorter than the hub's times out its own requests only", async () => {
  await withHub({
    routes: [{ pool: "quick", pathPrefix: "/quick/" }],
    pools: { quick: { headTimeout: 300 } },
  }, async (ctx) => {
    const entered = Promise.withResolvers<void>();
    const release = Promise.withResolvers<void>();
    const port = ctx.server.workerAddr.port;
    ctx.workers.push(
      connectWorker(hangs, { port, pool: "quick", minBackoff: 10 }),
      connectWorker(async () => {
        entered.resolve();
        await release.promise;
        return new Response("default done");
      }, { port, minBackoff: 10 }),
    );
    await waitFor(() => ctx.server.hub.stats.idle === 2, "both idle");
    const slow = later(`${ctx.url}/slow`);
    await deadline(entered.promise, HANG, "default job started");
    const quick = await later(`${ctx.url}/quick/job`);
    assert.equal(quick.status, 504);
    assert.match(await quick.text(), /within 300 ms/);
    release.resolve();
    const res = await slow;
    assert.equal(await res.text(), "default done");
    assert.equal(ctx.server.hub.stats.failed, 1);
  });
});

Deno.test("pools: a pool's bodyIdleTimeout is kept where the hub has no timeouts at all", async () => {
  await withHub({
    headTimeout: 0,
    bodyIdleTimeout: 0,
    uploadIdleTimeout: 0,
    pools: { default: { bodyIdleTimeout: 300 } },
  }, async (ctx) => {
    const w = await ctx.rawWorker();
    const pending = later(`${ctx.url}/stall`);
    await w.readMessage();
    await w.write(
      "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    );
    const res = await pending;
    const reader = res.body!.getReader();
    assert.equal(dec.decode((await reader.read()).value), "hello");
    await assert.rejects(async () => {
      for (let i = 0; i < 100; i++) if ((await reader.read()).done) return;
    });
    assert.equal((await w.readToEnd()).length, 0);
    const closed = ctx.logs.find((r) => r.msg === "worker connection closed");
    assert.equal(closed?.reason, "Worker sent no body byte for 300 ms");
  });
});

Deno.test("pools: a pool's uploadIdleTimeout answers a stalled upload 408 where the hub waits for ever", async () => {
  await withHub({
    uploadIdleTimeout: 0,
    routes: [{ pool: "up", pathPrefix: "/upload" }],
    pools: { up: { uploadIdleTimeout: 300 } },
  }, async (ctx) => {
    ctx.workers.push(
      connectWorker(async (req) => {
        try {
          await req.arrayBuffer();
        } catch {
          // the upload was cut
        }
        return new Response("read");
      }, { port: ctx.server.workerAddr.port, pool: "up", minBackoff: 10 }),
    );
    await waitFor(() => ctx.server.hub.stats.idle === 1, "worker idle");
    const consumer = await ctx.chunkedUpload("5\r\nhello\r\n");
    const msg = await consumer.readMessage();
    assert.equal(msg?.status, 408);
    assert.match(
      dec.decode(msg?.body),
      /Consumer sent no request body byte for 300 ms/,
    );
  });
});

Deno.test("pools: a pool's body sizes apply to its requests and responses only", async () => {
  await withHub({
    routes: [{ pool: "small", pathPrefix: "/small/" }],
    pools: { small: { maxRequestBodySize: 100, maxResponseBodySize: 10 } },
  }, async (ctx) => {
    const port = ctx.server.workerAddr.port;
    const handler = async (req: Request) => {
      let got = 0;
      try {
        for await (const part of req.body ?? []) got += part.length;
      } catch {
        return new Response("cut");
      }
      const n = Number(new URL(req.url).searchParams.get("n") ?? 0);
      return new Response("x".repeat(n), { headers: { "x-got": `${got}` } });
    };
    ctx.workers.push(
      connectWorker(handler, { port, pool: "small", minBackoff: 10 }),
      connectWorker(handler, { port, minBackoff: 10 }),
    );
    await waitFor(() => ctx.server.hub.stats.idle === 2, "both idle");
    const post = (path: string, body: BodyInit) =>
      fetch(`${ctx.url}${path}`, { method: "POST", body });
    const over = await post("/small/up", new Uint8Array(101));
    assert.equal(over.status, 413);
    assert.match(await over.text(), /larger than the limit of 100 bytes/);
    const elsewhere = await post("/big/up", new Uint8Array(101));
    assert.equal(elsewhere.headers.get("x-got"), "101");
    await elsewhere.body?.cancel();
    // A streamed upload that grows past the pool's limit is cut on its way.
    const chunks = [60, 60].map((n) => new Uint8Array(n));
    const streamed = await fetch(`${ctx.url}/small/stream`, {
      method: "POST",
      body: ReadableStream.from(chunks),
    });
    assert.equal(streamed.status, 413);
    assert.match(await streamed.text(), /larger than the limit of 100 bytes/);
    const big = await fetch(`${ctx.url}/small/r?n=11`);
    assert.equal(big.status, 502);
    assert.match(await big.text(), /over the limit of 10/);
    const fits = await fetch(`${ctx.url}/small/r?n=10`);
    assert.equal(await fits.text(), "x".repeat(10));
    const other = await fetch(`${ctx.url}/big/r?n=11`);
    assert.equal(await other.text(), "x".repeat(11));
  });
});
