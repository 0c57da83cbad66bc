// Graceful drain without losing requests: the hub's shutdown (new requests
// 503 at once, queued ones still served during the grace period, the rest
// 503 after it), a worker's drain while idle and under load (every request
// answered once, by the remaining workers if need be), and a streamed upload
// declined with the "not started" 408 before its body was sent, which goes
// whole to another worker. Real hub on loopback, in-process and raw workers.

import assert from "node:assert/strict";
import {
  type AccessRecord,
  Hub,
  type HubLogRecord,
  type HubServer,
  serveHub,
  type ServeHubOptions,
} from "../hub.ts";
import type {
  FetchHandler,
  RecycleReason,
  WorkerHandle,
  WorkerOptions,
} from "../worker.ts";
import { deadline, RawSocket, waitFor } from "./_relay.ts";
import { connectWorker } from "./_hub.ts";
import { sha256 } from "./_data.ts";

const HANG = 20_000;
const NOT_STARTED = "HTTP/1.1 408 Request Timeout\r\nx-pothead-not-started: 1" +
  "\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

interface Ctx {
  server: HubServer;
  url: string;
  workers: WorkerHandle[];
  raws: RawSocket[];
  add(handler: FetchHandler, options?: WorkerOptions): WorkerHandle;
}

async function withHub(
  options: Partial<ServeHubOptions>,
  fn: (ctx: Ctx) => Promise<void>,
): Promise<void> {
  const server = serveHub({
    hostname: "127.0.0.1",
    port: 0,
    workerPort: 0,
    shutdownGrace: 500,
    queueTimeout: HANG,
    ...options,
  });
  const ctx: Ctx = {
    server,
    url: `http://127.0.0.1:${server.addr.port}`,
    workers: [],
    raws: [],
    add(handler, opts = {}) {
      const w = connectWorker(handler, {
        hostname: "127.0.0.1",
        port: server.workerAddr.port,
        minBackoff: 10,
        maxBackoff: 100,
        ...opts,
      });
      ctx.workers.push(w);
      return w;
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

async function text(p: Promise<Response>): Promise<[number, string]> {
  const res = await p;
  return [res.status, await res.text()];
}

/** A handler whose requests wait, by path, until the test releases them. */
class Held {
  seen: string[] = [];
  #entries = new Map<
    string,
    { entered: PromiseWithResolvers<void>; release: PromiseWithResolvers<void> }
  >();

  #entry(path: string) {
    let e = this.#entries.get(path);
    if (e === undefined) {
      e = {
        entered: Promise.withResolvers<void>(),
        release: Promise.withResolvers<void>(),
      };
      this.#entries.set(path, e);
    }
    return e;
  }

  handler: FetchHandler = async (req) => {
    const path = new URL(req.url).pathname;
    this.seen.push(path);
    const e = this.#entry(path);
    e.entered.resolve();
    await e.release.promise;
    return new Response(`done ${path}`);
  };

  entered(path: string): Promise<void> {
    return deadline(this.#entry(path).entered.promise, HANG, `${path} entered`);
  }

  release(path: string): void {
    this.#entry(path).release.resolve();
  }

  releaseAll(): void {
    for (const e of this.#entries.values()) e.release.resolve();
  }
}

Deno.test("hub shutdown answers new requests 503 at once and still serves the queued ones as the slot frees", async () => {
  await withHub({}, async (ctx) => {
    const held = new Held();
    ctx.add(held.handler);
    await waitFor(() => ctx.server.hub.stats.idle === 1, "worker idle");
    const r1 = later(`${ctx.url}/1`);
    await held.entered("/1");
    const r2 = later(`${ctx.url}/2`);
    await waitFor(() => ctx.server.hub.stats.queued === 1, "/2 queued");
    const r3 = later(`${ctx.url}/3`);
    await waitFor(() => ctx.server.hub.stats.queued === 2, "/3 queued");

    const shut = ctx.server.hub.shutdown(HANG);
    const r4 = await fetch(`${ctx.url}/4`);
    assert.equal(r4.status, 503);
    assert.equal(r4.headers.get("x-pothead-error"), "1");
    assert.equal(
      await r4.text(),
      "503 Service Unavailable: hub is shutting down\n",
    );
    // Nothing queued was dropped by the shutdown.
    assert.equal(ctx.server.hub.stats.queued, 2);

    held.release("/1");
    assert.deepEqual(await text(r1), [200, "done /1"]);
    await held.entered("/2");
    held.release("/2");
    assert.deepEqual(await text(r2), [200, "done /2"]);
    await held.entered("/3");
    held.release("/3");
    assert.deepEqual(await text(r3), [200, "done /3"]);
    await deadline(shut, HANG, "shutdown");
    assert.deepEqual(held.seen, ["/1", "/2", "/3"]);
    const s = ctx.server.hub.stats;
    assert.equal(s.answered, 3);
    assert.equal(s.received, 4);
    assert.equal(s.queued, 0);
    assert.equal(s.slots, 0);
  });
});

Deno.test("hub shutdown answers requests still queued after the grace period with 503", async () => {
  await withHub({}, async (ctx) => {
    const held = new Held();
    ctx.add(held.handler);
    await waitFor(() => ctx.server.hub.stats.idle === 1, "worker idle");
    const r1 = later(`${ctx.url}/busy`);
    await held.entered("/busy");
    const r2 = later(`${ctx.url}/queued-a`);
    const r3 = later(`${ctx.url}/queued-b`);
    await waitFor(() => ctx.server.hub.stats.queued === 2, "two queued");
    await deadline(ctx.server.hub.shutdown(300), HANG, "shutdown");
    for (const r of [r2, r3]) {
      const res = await r;
      assert.equal(res.status, 503);
      assert.equal(
        await res.text(),
        "503 Service Unavailable: hub is shutting down\n",
      );
    }
    // The request still in progress when the grace ran out was cut: the
    // hub's own 503 (not a worker failure), never a hang.
    held.releaseAll();
    const cut = await r1;
    assert.equal(cut.status, 503);
    assert.equal(cut.headers.get("x-pothead-error"), "1");
    await cut.body?.cancel();
    assert.deepEqual(held.seen, ["/busy"]);
    const s = ctx.server.hub.stats;
    assert.equal(s.queued, 0);
    assert.equal(s.slots, 0);
    assert.equal(s.answered, 0);
  });
});

Deno.test("a second hub shutdown before the grace ends: a shorter grace ends the drain then, a longer one does not extend it, and both calls resolve together", async () => {
  await withHub({}, async (ctx) => {
    const held = new Held();
    ctx.add(held.handler);
    await waitFor(() => ctx.server.hub.stats.idle === 1, "worker idle");
    const r1 = later(`${ctx.url}/busy`);
    try {
      await held.entered("/busy");
      const r2 = later(`${ctx.url}/queued`);
      await waitFor(() => ctx.server.hub.stats.queued === 1, "one queued");
      const order: string[] = [];
      const hub = ctx.server.hub;
      // Graces of 15 and 20 s, a hang guard of 5 s: every call must resolve
      // once the shorter one has ended the drain, not at its own grace.
      const first = hub.shutdown(15_000).then(() => order.push("first"));
      // Longer: the first's grace still holds. Shorter: ends the drain now.
      const longer = hub.shutdown(20_000).then(() => order.push("longer"));
      const shorter = hub.shutdown(0).then(() => order.push("shorter"));
      const res = await deadline(r2, HANG, "the queued request's answer");
      assert.equal(res.status, 503);
      assert.match(await res.text(), /shutting down/);
      await deadline(
        Promise.all([first, longer, shorter]),
        5_000,
        "the shutdowns",
      );
      // Each resolves with the one run, in the order they were made.
      assert.deepEqual(order, ["first", "longer", "shorter"]);
    } finally {
      // However it ends: the worker's close waits for its handler.
      held.releaseAll();
    }
    const cut = await r1;
    assert.equal(cut.status, 503);
    await cut.body?.cancel();
  });
});

Deno.test("a second hub shutdown with handOver, before the grace ends, starts the hand-over: the idle worker connection goes back at once", async () => {
  await withHub({}, async (ctx) => {
    const held = new Held();
    ctx.add(held.handler, { concurrency: 2 });
    await waitFor(() => ctx.server.hub.stats.idle === 2, "two slots idle");
    const r1 = later(`${ctx.url}/busy`);
    await held.entered("/busy");
    const hub = ctx.server.hub;
    const first = hub.shutdown(HANG);
    // A plain drain keeps the idle slot until the grace ends.
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(hub.stats.slots, 2);
    const second = hub.shutdown(HANG, { handOver: true });
    await waitFor(() => hub.stats.slots === 1, "the idle slot handed back");
    held.releaseAll();
    assert.deepEqual(await text(r1), [200, "done /busy"]);
    await deadline(Promise.all([first, second]), HANG, "the shutdowns");
  });
});

Deno.test("worker drain while idle loses no request: all are answered by the remaining worker", async () => {
  await withHub({}, async (ctx) => {
    const served = { a: 0, b: 0 };
    const a = ctx.add(() => {
      served.a++;
      return new Response("a");
    }, { workerId: "a", concurrency: 2 });
    ctx.add(() => {
      served.b++;
      return new Response("b");
    }, { workerId: "b", concurrency: 2 });
    await waitFor(() => ctx.server.hub.stats.idle === 4, "4 slots idle");
    // Requests cross the drain on the wire.
    const draining = a.drain();
    const reqs = Array.from(
      { length: 20 },
      (_, i) => text(later(`${ctx.url}/${i}`)),
    );
    const results = await Promise.all(reqs);
    await deadline(draining, HANG, "drain");
    for (const [status] of results) assert.equal(status, 200);
    // a was told to drain before any request left the hub.
    assert.equal(served.a, 0);
    assert.equal(served.b, 20);
    assert.equal(a.connected, 0);
    await waitFor(
      () => ctx.server.hub.stats.workers.every((w) => w.id === "b"),
      "only b left",
    );
    const s = ctx.server.hub.stats;
    assert.equal(s.answered, 20);
    assert.equal(s.failed, 0);
    console.log(
      `drain while idle: a served ${served.a}, b ${served.b}, retries ${s.retries}`,
    );
  });
});

Deno.test("maxRequests: a worker starts exactly that many requests, finishes them and drains; the hub sends the rest to the others", async () => {
  for (const concurrency of [1, 3]) {
    await withHub({}, async (ctx) => {
      const servedBy = { a: 0, b: 0 };
      const count = new Map<string, number>();
      const reached: number[] = [];
      const handler = (id: "a" | "b"): FetchHandler => async (req) => {
        const path = new URL(req.url).pathname;
        count.set(path, (count.get(path) ?? 0) + 1);
        servedBy[id]++;
        for (let i = 0; i < 3; i++) await new Promise((r) => setTimeout(r, 1));
        return new Response(`${id} ${path}`);
      };
      const a = ctx.add(handler("a"), {
        workerId: "a",
        concurrency,
        maxRequests: 5,
        onRecycle: (r) =>
          void reached.push(r.why === "requests" ? r.requests : -1),
      });
      ctx.add(handler("b"), { workerId: "b", concurrency });
      await waitFor(
        () => ctx.server.hub.stats.idle === 2 * concurrency,
        "both workers' slots idle",
      );
      const results = await Promise.all(
        Array.from({ length: 30 }, (_, i) => text(later(`${ctx.url}/${i}`))),
      );
      // Drained by itself: no connection left, and finished.
      await deadline(a.finished, HANG, "worker a to finish");
      for (const [status, body] of results) assert.equal(status, 200, body);
      assert.equal(servedBy.a, 5, `concurrency ${concurrency}`);
      assert.equal(servedBy.b, 25);
      assert.deepEqual(reached, [5]);
      for (const [path, n] of count) assert.equal(n, 1, `${path} ran ${n}`);
      assert.equal(a.connected, 0);
      assert.equal(ctx.server.hub.stats.failed, 0);
    });
  }
});

Deno.test("maxRequestsJitter: the limit is drawn once between maxRequests and maxRequests + jitter", async () => {
  const drawn = new Set<number>();
  for (let round = 0; round < 8; round++) {
    await withHub({}, async (ctx) => {
      let servedByA = 0;
      let reached = -1;
      const a = ctx.add(() => (servedByA++, new Response("a")), {
        maxRequests: 2,
        maxRequestsJitter: 3,
        onRecycle: (r) => reached = r.why === "requests" ? r.requests : -2,
      });
      ctx.add(() => new Response("b"));
      await waitFor(() => ctx.server.hub.stats.idle === 2, "two slots idle");
      // One at a time, so that a takes its share before b takes them all.
      for (let sent = 0; reached < 0; sent++) {
        assert.ok(sent < 200, "worker a never reached its limit");
        const [status] = await text(later(`${ctx.url}/`));
        assert.equal(status, 200);
      }
      await deadline(a.finished, HANG, "worker a to finish");
      assert.ok(reached >= 2 && reached <= 5, String(reached));
      assert.equal(servedByA, reached);
      drawn.add(reached);
    });
  }
  // Eight draws from four values, all the same: 4 * (1/4)^8, about 1 in 16 000.
  assert.ok(drawn.size > 1, `always ${[...drawn]}`);
});

Deno.test("maxRss: a worker over it when a request ends drains, says why, and the rest go to the others", async () => {
  await withHub({}, async (ctx) => {
    const servedBy = { a: 0, b: 0 };
    const reasons: RecycleReason[] = [];
    // One byte: any process is over it, so the first request to end
    // recycles the worker.
    const a = ctx.add(() => (servedBy.a++, new Response("a")), {
      maxRss: 1,
      onRecycle: (r) => void reasons.push(r),
    });
    ctx.add(() => (servedBy.b++, new Response("b")));
    await waitFor(() => ctx.server.hub.stats.idle === 2, "two slots idle");
    const results = await Promise.all(
      Array.from({ length: 10 }, () => text(later(`${ctx.url}/`))),
    );
    await deadline(a.finished, HANG, "worker a to finish");
    for (const [status] of results) assert.equal(status, 200);
    assert.equal(servedBy.a, 1);
    assert.equal(servedBy.b, 9);
    assert.equal(reasons.length, 1);
    const [reason] = reasons;
    assert.ok(reason.why === "rss" && reason.rss > 1, JSON.stringify(reason));
    assert.equal(reason.requests, 1);
  });
});

Deno.test("onRecycle that throws: the worker still drains (the error goes to onError), loses nothing and does not crash", async () => {
  for (const limit of [{ maxRequests: 2 }, { maxRss: 1 }]) {
    await withHub({}, async (ctx) => {
      const servedBy = { a: 0, b: 0 };
      const errors: string[] = [];
      const a = ctx.add(() => (servedBy.a++, new Response("a")), {
        ...limit,
        onRecycle: () => {
          throw new Error("onRecycle broke");
        },
        onError: (error, context) =>
          void errors.push(`${context}: ${(error as Error).message}`),
      });
      ctx.add(() => (servedBy.b++, new Response("b")));
      await waitFor(() => ctx.server.hub.stats.idle === 2, "two slots idle");
      // One at a time until worker a has drained by itself.
      for (let sent = 0; a.connected > 0 || servedBy.a === 0; sent++) {
        assert.ok(sent < 100, `worker a never drained: ${errors}`);
        const [status] = await text(later(`${ctx.url}/`));
        assert.equal(status, 200);
      }
      await deadline(a.finished, HANG, "worker a to finish");
      const expected = "maxRss" in limit ? 1 : 2;
      assert.equal(servedBy.a, expected, JSON.stringify(limit));
      assert.deepEqual(errors, ["recycle: onRecycle broke"]);
    });
  }
});

Deno.test("maxRequests, maxRequestsJitter and maxRss refuse what is not a whole number >= 0", () => {
  for (const bad of [-1, 1.5, NaN, Infinity]) {
    assert.throws(
      () => connectWorker(() => new Response(), { maxRss: bad }),
      /Invalid option "maxRss"/,
    );
    assert.throws(
      () => connectWorker(() => new Response(), { maxRequests: bad }),
      /Invalid option "maxRequests"/,
    );
    assert.throws(
      () => connectWorker(() => new Response(), { maxRequestsJitter: bad }),
      /Invalid option "maxRequestsJitter"/,
    );
  }
});

Deno.test("worker drain under load finishes its requests in progress and loses none", async () => {
  await withHub({}, async (ctx) => {
    const count = new Map<string, number>();
    const servedBy = { a: 0, b: 0 };
    const started = Promise.withResolvers<void>();
    const handler = (id: "a" | "b"): FetchHandler => async (req) => {
      const path = new URL(req.url).pathname;
      count.set(path, (count.get(path) ?? 0) + 1);
      if (id === "a") started.resolve();
      for (let i = 0; i < 3; i++) await new Promise((r) => setTimeout(r, 1));
      servedBy[id]++;
      return new Response(`${id} ${path}`);
    };
    const a = ctx.add(handler("a"), { workerId: "a", concurrency: 2 });
    ctx.add(handler("b"), { workerId: "b", concurrency: 2 });
    await waitFor(() => ctx.server.hub.stats.idle === 4, "4 slots idle");
    const reqs = Array.from(
      { length: 40 },
      (_, i) => text(later(`${ctx.url}/${i}`)),
    );
    await deadline(started.promise, HANG, "a started a request");
    const draining = a.drain();
    const results = await Promise.all(reqs);
    await deadline(draining, HANG, "drain");
    for (const [status, body] of results) assert.equal(status, 200, body);
    assert.equal(count.size, 40);
    for (const [path, n] of count) assert.equal(n, 1, `${path} ran ${n} times`);
    assert.ok(servedBy.a >= 1);
    assert.equal(servedBy.a + servedBy.b, 40);
    assert.equal(a.connected, 0);
    const s = ctx.server.hub.stats;
    assert.equal(s.answered, 40);
    assert.equal(s.failed, 0);
    console.log(
      `drain under load: a served ${servedBy.a}, b ${servedBy.b}, retries ${s.retries}`,
    );
  });
});

Deno.test({
  name:
    "hub shutdown still dispatches queued requests to a worker that reconnects during the grace period",
  // Regression: the hub used to refuse worker connections from the start
  // of shutdown(grace), so a worker that reconnects per request could not
  // serve the queue during the grace period (fixed in 003b6c1).
  fn: async () => {
    await withHub({}, async (ctx) => {
      const held = new Held();
      // With a gate, each connection carries one request, then reconnects.
      ctx.add(held.handler, { gate: () => Promise.resolve() });
      await waitFor(() => ctx.server.hub.stats.idle === 1, "worker idle");
      const r1 = later(`${ctx.url}/busy`);
      await held.entered("/busy");
      const r2 = later(`${ctx.url}/queued`);
      await waitFor(() => ctx.server.hub.stats.queued === 1, "queued");
      const shut = ctx.server.hub.shutdown(3000);
      held.release("/busy");
      held.release("/queued");
      assert.deepEqual(await text(r1), [200, "done /busy"]);
      assert.deepEqual(await text(r2), [200, "done /queued"]);
      await deadline(shut, HANG, "shutdown");
    });
  },
});

function pattern(size: number, seed: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(size);
  let x = seed >>> 0;
  for (let i = 0; i < size; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

Deno.test("a streamed upload declined with the not-started 408 before its body was sent arrives whole at another worker", async () => {
  await withHub({}, async (ctx) => {
    const SIZE = 300 * 1024 + 7;
    const data = pattern(SIZE, 42);
    const want = await sha256(data);
    // The first worker: a raw socket that declines without reading a body.
    const r = await RawSocket.connect(ctx.server.workerAddr.port);
    ctx.raws.push(r);
    await waitFor(() => ctx.server.hub.stats.idle === 1, "raw worker idle");
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent >= SIZE) {
          controller.close();
          return;
        }
        const n = Math.min(16 * 1024, SIZE - sent);
        controller.enqueue(data.slice(sent, sent + n));
        sent += n;
      },
    });
    const pending = later(`${ctx.url}/upload`, {
      method: "POST",
      body,
      duplex: "half",
    } as RequestInit);
    const head = await r.readHead();
    assert.ok(head !== null);
    assert.match(head, /^POST \/upload HTTP\/1\.1\r\n/);
    assert.match(head, /\r\nexpect: 100-continue\r\n/i);
    assert.match(head, /\r\ntransfer-encoding: chunked\r\n/i);
    // A second, good worker, then the decline.
    ctx.add(async (req) => {
      const bytes = new Uint8Array(await req.arrayBuffer());
      return Response.json({
        bytes: bytes.length,
        sha256: await sha256(bytes),
      });
    }, { workerId: "good" });
    await r.write(NOT_STARTED);
    const res = await pending;
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { bytes: SIZE, sha256: want });
    // Not one body byte went to the worker that declined.
    assert.equal((await r.readToEnd()).length, 0);
    const s = ctx.server.hub.stats;
    assert.equal(s.retries, 1);
    assert.equal(s.answered, 1);
    assert.equal(s.failed, 0);
  });
});

Deno.test("a worker that took a streamed upload without ever answering 100 Continue gets its next uploads at once, without Expect", async () => {
  await withHub({}, async (ctx) => {
    // A plain worker that never sends 100 Continue.
    const r = await RawSocket.connect(ctx.server.workerAddr.port);
    ctx.raws.push(r);
    await waitFor(() => ctx.server.hub.stats.idle === 1, "raw worker idle");
    const upload = (tag: string) =>
      later(`${ctx.url}/up/${tag}`, {
        method: "POST",
        body: new ReadableStream<Uint8Array>({
          start(controller) {
            controller.enqueue(new TextEncoder().encode(`body ${tag}`));
            controller.close();
          },
        }),
        duplex: "half",
      } as RequestInit);
    const seen: { expect: string | undefined; body: string }[] = [];
    for (const tag of ["one", "two", "three"]) {
      const pending = upload(tag);
      // The first body comes after the hub's wait for 100 Continue; later
      // ones come with the head. Either way the worker reads them whole.
      const msg = await r.readMessage();
      assert.ok(msg !== null);
      assert.equal(msg.start, `POST /up/${tag} HTTP/1.1`);
      seen.push({
        expect: msg.headers.find(([n]) => n === "expect")?.[1],
        body: new TextDecoder().decode(msg.body),
      });
      await r.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
      assert.deepEqual(await text(pending), [200, "ok"]);
    }
    assert.deepEqual(seen, [
      { expect: "100-continue", body: "body one" },
      { expect: undefined, body: "body two" },
      { expect: undefined, body: "body three" },
    ]);
    assert.equal(ctx.server.hub.stats.failed, 0);
  });
});

Deno.test("a worker that has answered 100 Continue is not marked by one upload it took without a 100: its next uploads still carry Expect", async () => {
  // Every body is streamed, so every upload is announced with Expect.
  await withHub({ bufferRequestBody: 0 }, async (ctx) => {
    const r = await RawSocket.connect(ctx.server.workerAddr.port);
    ctx.raws.push(r);
    await waitFor(() => ctx.server.hub.stats.idle === 1, "raw worker idle");
    const heads: string[] = [];
    // answer: the worker sends 100 Continue before reading the body; else
    // it waits for the body, which the hub sends after its second's wait.
    for (
      const [tag, answer] of [["one", true], ["two", false], [
        "three",
        true,
      ]] as const
    ) {
      const body = `body ${tag}`;
      const pending = later(`${ctx.url}/up/${tag}`, { method: "POST", body });
      const head = await r.readHead();
      assert.ok(head !== null);
      assert.match(
        head,
        new RegExp(`\\r\\ncontent-length: ${body.length}\\r\\n`, "i"),
      );
      heads.push(head);
      if (answer) await r.write("HTTP/1.1 100 Continue\r\n\r\n");
      assert.equal(
        new TextDecoder().decode(await r.readExactly(body.length)),
        body,
      );
      await r.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
      assert.deepEqual(await text(pending), [200, "ok"]);
    }
    for (const head of heads) {
      assert.match(head, /\r\nexpect: 100-continue\r\n/i);
    }
    assert.equal(ctx.server.hub.stats.failed, 0);
  });
});

// One raw worker attached to `hub` over loopback (close both when done).
async function rawWorkerOf(
  hub: Hub,
): Promise<{ worker: RawSocket; listener: Deno.Listener }> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const dialed = Deno.connect({
    hostname: "127.0.0.1",
    port: (listener.addr as Deno.NetAddr).port,
  });
  hub.addWorker(await listener.accept(), "w");
  return { worker: new RawSocket(await dialed), listener };
}

Deno.test("shutdown waits for a request still sending its small body, and one whose body ends after it is answered 503", async () => {
  const hub = new Hub({ handshakeWait: 0, queueTimeout: 20_000 });
  const { worker, listener } = await rawWorkerOf(hub);
  const post = (hub: Hub, path: string) => {
    let body!: ReadableStreamDefaultController<Uint8Array>;
    const res = hub.fetch(
      new Request(`http://hub${path}`, {
        method: "POST",
        body: new ReadableStream<Uint8Array>({
          start: (c) => void (body = c),
        }),
        headers: { "content-length": "5" },
      }),
    );
    const finish = () => {
      body.enqueue(new TextEncoder().encode("hello"));
      body.close();
    };
    return { res, finish };
  };
  try {
    const until = performance.now() + 10_000;
    while (hub.stats.idle !== 1 && performance.now() < until) {
      await new Promise((r) => setTimeout(r, 10));
    }
    // Its body ends during the grace: it is served.
    const served = post(hub, "/x");
    const stopping = hub.shutdown(10_000);
    served.finish();
    const head = await worker.readHead();
    assert.match(head ?? "", /^POST \/x /);
    await worker.readExactly(5);
    await worker.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    assert.equal((await served.res).status, 200);
    await stopping;
  } finally {
    worker.close();
    listener.close();
  }
  // A hub already shut down answers one whose body ends later with 503.
  const hub2 = new Hub({ queueTimeout: 20_000 });
  const { res, finish } = post(hub2, "/y");
  await hub2.shutdown(50);
  finish();
  const late = await res;
  assert.equal(late.status, 503);
  assert.match(await late.text(), /shutting down/);
  assert.equal(hub2.stats.queued, 0);
});

Deno.test("a request still at a worker when the shutdown grace ends is answered 503 shutting-down, not counted or logged as a worker failure", async () => {
  const records: AccessRecord[] = [];
  const logs: HubLogRecord[] = [];
  const hub = new Hub({
    handshakeWait: 0,
    onAccess: (r) => records.push(r),
    onLog: (r) => logs.push(r),
  });
  const { worker, listener } = await rawWorkerOf(hub);
  try {
    await waitFor(() => hub.stats.idle === 1, "the worker idle");
    const res = hub.fetch(new Request("http://hub/slow"));
    await worker.readHead();
    await hub.shutdown(100);
    const answer = await deadline(res, HANG, "the answer");
    assert.equal(answer.status, 503);
    await answer.body?.cancel();
    assert.equal(records[0].outcome, "shutting-down");
    // Cut at the worker, not in the queue: the record says so.
    assert.notEqual(records[0].worker, null);
    assert.ok(records[0].workerMs >= 0, `${records[0].workerMs}`);
    assert.equal(hub.stats.failed, 0);
    assert.deepEqual(logs.filter((l) => l.level === "warn"), []);
  } finally {
    worker.close();
    listener.close();
  }
});

Deno.test("a worker that answers the hub's Expect with 417 gets the upload again without it on its next connection", async () => {
  await withHub({ bufferRequestBody: 0 }, async (ctx) => {
    const connect = async (n: number) => {
      const r = await RawSocket.connect(ctx.server.workerAddr.port);
      ctx.raws.push(r);
      await waitFor(() => ctx.server.hub.stats.idle === n, "raw worker idle");
      return r;
    };
    const first = await connect(1);
    const second = await connect(2);
    const pending = later(`${ctx.url}/up`, { method: "POST", body: "hello" });
    const refused = await first.readHead();
    assert.match(refused ?? "", /\r\nexpect: 100-continue\r\n/i);
    await first.write(
      "HTTP/1.1 417 Expectation Failed\r\ncontent-length: 0\r\n\r\n",
    );
    const again = await second.readHead();
    assert.match(again ?? "", /^POST \/up HTTP\/1\.1\r\n/);
    assert.doesNotMatch(again ?? "", /\r\nexpect:/i);
    assert.equal(
      new TextDecoder().decode(await second.readExactly(5)),
      "hello",
    );
    await second.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    assert.deepEqual(await text(pending), [200, "ok"]);
    assert.equal(ctx.server.hub.stats.failed, 0);
  });
});

// Deno.serve's shutdown makes the rest of a request body it is still
// reading unreadable (BadResource, Deno 2.9): serveHub must not begin it
// while an upload that the drain lets finish is still arriving.
for (
  const where of ["at a worker", "queued", "read before it queues"] as const
) {
  Deno.test(`an upload still arriving ${where} when shutdown begins is served whole within the grace`, async () => {
    // Past the 64 KiB read whole before a request queues, except the last.
    const total = where === "read before it queues" ? 50_000 : 200_000;
    const read: string[] = [];
    const hold = Promise.withResolvers<void>();
    try {
      await withHub({ shutdownGrace: HANG }, async (ctx) => {
        const { server, url, raws } = ctx;
        ctx.add(async (req) => {
          const path = new URL(req.url).pathname;
          if (path === "/busy") {
            await hold.promise;
            return new Response("busy done");
          }
          let n = 0;
          try {
            for await (const c of req.body!) n += c.length;
          } catch (error) {
            read.push(`error after ${n}: ${error}`);
            throw error;
          }
          read.push(`read ${n}`);
          return new Response(`read ${n}`);
        });
        await waitFor(() => server.hub.stats.idle === 1, "worker idle");
        const busy = where === "at a worker" ? null : later(`${url}/busy`);
        if (busy !== null) {
          await waitFor(() => server.hub.stats.busy === 1, "worker busy");
        }
        const received = server.hub.stats.received;
        const consumer = await RawSocket.connect(server.addr.port);
        raws.push(consumer);
        const part = "x".repeat(total / 10);
        await consumer.write(
          `POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: ${total}\r\n\r\n${part}`,
        );
        await waitFor(
          () =>
            where === "queued"
              ? server.hub.stats.queued === 1
              : where === "at a worker"
              ? server.hub.stats.busy === 1
              : server.hub.stats.received === received + 1,
          `upload ${where}`,
        );
        const stopping = server.shutdown();
        assert.equal(server.hub.stats.draining, true);
        for (let i = 1; i < 10; i++) await consumer.write(part);
        hold.resolve();
        const res = await deadline(consumer.readMessage(), HANG, "answer");
        assert.equal(res?.status, 200);
        assert.equal(new TextDecoder().decode(res?.body), `read ${total}`);
        if (busy !== null) assert.equal((await text(busy))[0], 200);
        consumer.close();
        await deadline(stopping, HANG, "shutdown");
      });
    } finally {
      hold.resolve();
    }
    assert.deepEqual(read, [`read ${total}`]);
  });
}
