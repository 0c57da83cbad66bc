// End-to-end tests of the hub's queue: a real hub (serveHub on loopback,
// port 0) with in-process workers (connectWorker) and consumers using fetch.
// Nothing here asserts on durations: ordering is forced with promises the
// test resolves, and every wait is a bounded poll or has a hang guard.

import { deadline, waitFor as waitUntil } from "./_wait.ts";
import { startHub, startWorker } from "./_hub.ts";
import assert from "node:assert/strict";
import { Hub, type HubServer, serveHub } from "../hub.ts";
import type { FetchHandler, WorkerHandle } from "../worker.ts";

const HANG_GUARD = 20_000;

const waitFor = (check: () => boolean | Promise<boolean>, what: string) =>
  waitUntil(check, what, HANG_GUARD);
const guard = <T>(promise: Promise<T>, what: string): Promise<T> =>
  deadline(promise, HANG_GUARD, what);

/**
 * Starts a fetch whose result is awaited later. A rejection is still seen by
 * whoever awaits it, but does not count as unhandled if an assertion fails
 * first and the test tears the hub down.
 */
function later(input: string, init?: RequestInit): Promise<Response> {
  const p = fetch(input, init);
  p.catch(() => {});
  return p;
}

function url(server: HubServer, path: string): string {
  return `http://127.0.0.1:${server.addr.port}${path}`;
}

/**
 * A handler whose requests wait until the test releases them by path. It
 * records the order in which paths reached it.
 */
class Held {
  seen: string[] = [];
  #open = false;
  #entries = new Map<string, {
    entered: PromiseWithResolvers<Request>;
    release: PromiseWithResolvers<void>;
  }>();

  #entry(path: string) {
    let e = this.#entries.get(path);
    if (e === undefined) {
      e = {
        entered: Promise.withResolvers<Request>(),
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
    e.entered.resolve(req);
    if (!this.#open) await e.release.promise;
    return new Response(`done ${path}`);
  };

  entered(path: string): Promise<Request> {
    return guard(
      this.#entry(path).entered.promise,
      `${path} reaching a worker`,
    );
  }

  release(path: string): void {
    this.#entry(path).release.resolve();
  }

  /** Releases every request, including those that have not arrived yet. */
  releaseAll(): void {
    this.#open = true;
    for (const e of this.#entries.values()) e.release.resolve();
  }
}

async function stop(
  server: HubServer,
  workers: WorkerHandle[],
  held?: Held,
): Promise<void> {
  held?.releaseAll();
  for (const w of workers) w.close();
  await Promise.all(workers.map((w) => w.finished));
  await server.shutdown();
}

Deno.test("hub never gives a worker connection two requests at once", async () => {
  const server = startHub();
  const inFlight = [0, 0, 0];
  const maxInFlight = [0, 0, 0];
  const served = [0, 0, 0];
  const workers = [0, 1, 2].map((w) =>
    startWorker(server, async (req) => {
      inFlight[w]++;
      maxInFlight[w] = Math.max(maxInFlight[w], inFlight[w]);
      served[w]++;
      try {
        await new Promise((r) => setTimeout(r, Math.random() * 5));
        return new Response(`w${w} ${new URL(req.url).pathname}`);
      } finally {
        inFlight[w]--;
      }
    })
  );
  try {
    await waitFor(() => server.hub.stats.idle === 3, "3 idle slots");
    const responses = await Promise.all(
      Array.from({ length: 60 }, async (_, i) => {
        const res = await fetch(url(server, `/r${i}`));
        return { status: res.status, text: await res.text(), i };
      }),
    );
    for (const { status, text, i } of responses) {
      assert.equal(status, 200);
      assert.match(text, new RegExp(`^w[012] /r${i}$`));
    }
    assert.deepEqual(maxInFlight, [1, 1, 1]);
    assert.equal(served[0] + served[1] + served[2], 60);
    // The first three requests found three idle connections.
    assert.ok(served.every((n) => n > 0), `served: ${served}`);
    const stats = server.hub.stats;
    assert.equal(stats.answered, 60);
    assert.equal(stats.queued, 0);
    assert.equal(stats.slots, 3);
    assert.equal(stats.idle, 3);
  } finally {
    await stop(server, workers);
  }
});

Deno.test("hub never leaves a request queued while a worker connection is idle", async () => {
  const server = startHub();
  const samples: { queued: number; idle: number; where: string }[] = [];
  const sample = (where: string) => {
    const { queued, idle } = server.hub.stats;
    samples.push({ queued, idle, where });
  };
  const go = Promise.withResolvers<void>();
  const worker = startWorker(server, async (req) => {
    sample("handler entry");
    await go.promise;
    await new Promise((r) => setTimeout(r, Math.random() * 3));
    sample("handler exit");
    return new Response(new URL(req.url).pathname);
  }, { concurrency: 2 });
  try {
    await waitFor(() => server.hub.stats.idle === 2, "2 idle slots");
    const total = 40;
    const pending: Promise<number>[] = [];
    for (let i = 0; i < total; i++) {
      const p = later(url(server, `/s${i}`)).then(async (res) => {
        await res.body?.cancel();
        sample("response");
        return res.status;
      });
      p.catch(() => {});
      pending.push(p);
      sample("after fetch call");
    }
    // Everything that does not fit in the two slots is queued before any
    // handler may finish, so the samples below certainly see a queue.
    await waitFor(() => {
      sample("poll");
      return server.hub.stats.queued === total - 2;
    }, "38 queued requests");
    go.resolve();
    let done = false;
    const all = Promise.all(pending).finally(() => done = true);
    for (let i = 0; i < 100_000 && !done; i++) {
      sample("sampler");
      await new Promise((r) => setTimeout(r, 0));
    }
    const statuses = await guard(all, "all responses");
    assert.deepEqual(statuses, Array(total).fill(200));
    const bad = samples.filter((s) => s.queued > 0 && s.idle > 0);
    assert.deepEqual(bad, [], "a request was queued while a slot was idle");
    assert.ok(
      samples.some((s) => s.where === "handler entry" && s.queued > 0),
      "no handler saw a queue: the test did not exercise queueing",
    );
  } finally {
    go.resolve();
    await stop(server, [worker]);
  }
});

Deno.test("hub sends a queued request to the first worker connection that frees", async () => {
  const server = startHub();
  const held = new Held();
  const worker = startWorker(server, held.handler, { concurrency: 2 });
  try {
    await waitFor(() => server.hub.stats.idle === 2, "2 idle slots");
    const a = later(url(server, "/a"));
    const b = later(url(server, "/b"));
    let bSettled = false;
    b.finally(() => bSettled = true).catch(() => {});
    await held.entered("/a");
    await held.entered("/b");
    const c = later(url(server, "/c"));
    await waitFor(() => server.hub.stats.queued === 1, "/c queued");
    assert.deepEqual(held.seen, ["/a", "/b"]);

    held.release("/a");
    await held.entered("/c");
    // /b is still held: /c got the connection /a freed, not a later one.
    assert.equal(bSettled, false);
    assert.deepEqual(held.seen, ["/a", "/b", "/c"]);
    const stats = server.hub.stats;
    assert.equal(stats.queued, 0);
    assert.equal(stats.busy, 2);
    assert.equal(stats.idle, 0);

    held.release("/b");
    held.release("/c");
    const all = await guard(Promise.all([a, b, c]), "all answers");
    for (const [i, path] of ["/a", "/b", "/c"].entries()) {
      const res = all[i];
      assert.equal(res.status, 200);
      assert.equal(await res.text(), `done ${path}`);
    }
  } finally {
    await stop(server, [worker], held);
  }
});

Deno.test("hub hands queued requests to a worker in arrival order", async () => {
  const server = startHub();
  const held = new Held();
  const worker = startWorker(server, held.handler);
  try {
    await waitFor(() => server.hub.stats.idle === 1, "1 idle slot");
    const first = later(url(server, "/hold"));
    await held.entered("/hold");
    const queued: Promise<Response>[] = [];
    for (const [i, path] of ["/A", "/B", "/C"].entries()) {
      queued.push(later(url(server, path)));
      await waitFor(
        () => server.hub.stats.queued === i + 1,
        `${path} queued`,
      );
    }
    held.releaseAll();
    const responses = await guard(
      Promise.all([first, ...queued]),
      "all responses",
    );
    for (const res of responses) {
      assert.equal(res.status, 200);
      await res.body?.cancel();
    }
    assert.deepEqual(held.seen, ["/hold", "/A", "/B", "/C"]);
  } finally {
    await stop(server, [worker], held);
  }
});

Deno.test("hub returns 503 with Retry-After at once when the queue is full", async () => {
  const server = startHub({ maxQueue: 2 });
  const held = new Held();
  const worker = startWorker(server, held.handler);
  try {
    await waitFor(() => server.hub.stats.idle === 1, "1 idle slot");
    const busy = later(url(server, "/busy"));
    await held.entered("/busy");
    const q1 = later(url(server, "/q1"));
    const q2 = later(url(server, "/q2"));
    await waitFor(() => server.hub.stats.queued === 2, "2 queued");
    // The slot is still held, so these answers cannot come from a worker.
    for (const path of ["/q3", "/q4"]) {
      const res = await guard(fetch(url(server, path)), `${path} answer`);
      assert.equal(res.status, 503);
      assert.equal(res.headers.get("retry-after"), "1");
      assert.equal(res.headers.get("x-pothead-error"), "1");
      assert.match(await res.text(), /queue .*is full/);
    }
    assert.equal(server.hub.stats.rejectedFull, 2);
    assert.equal(server.hub.stats.queued, 2);
    held.releaseAll();
    const rest = await guard(Promise.all([busy, q1, q2]), "queued answers");
    for (const res of rest) {
      assert.equal(res.status, 200);
      await res.body?.cancel();
    }
    assert.deepEqual(held.seen, ["/busy", "/q1", "/q2"]);
  } finally {
    await stop(server, [worker], held);
  }
});

Deno.test("hub returns 503 with Retry-After when a request waits longer than queueTimeout", async () => {
  const server = startHub({ queueTimeout: 200 });
  const held = new Held();
  const worker = startWorker(server, held.handler);
  try {
    await waitFor(() => server.hub.stats.idle === 1, "1 idle slot");
    const busy = later(url(server, "/busy"));
    await held.entered("/busy");
    const res = await guard(fetch(url(server, "/late")), "queue timeout");
    assert.equal(res.status, 503);
    assert.equal(res.headers.get("retry-after"), "1");
    assert.match(await res.text(), /in the queue/);
    const stats = server.hub.stats;
    assert.equal(stats.timedOutQueued, 1);
    assert.equal(stats.queued, 0);
    assert.equal(stats.rejectedFull, 0);
    held.releaseAll();
    const ok = await guard(busy, "held answer");
    assert.equal(ok.status, 200);
    assert.equal(await ok.text(), "done /busy");
    assert.deepEqual(held.seen, ["/busy"]);
  } finally {
    await stop(server, [worker], held);
  }
});

Deno.test("hub with no workers returns 503 after queueTimeout", async () => {
  const server = startHub({ queueTimeout: 100 });
  try {
    const res = await guard(fetch(url(server, "/nobody")), "queue timeout");
    assert.equal(res.status, 503);
    assert.ok(res.headers.has("retry-after"));
    assert.match(await res.text(), /queue/);
    assert.equal(server.hub.stats.timedOutQueued, 1);
    assert.equal(server.hub.stats.slots, 0);
  } finally {
    await stop(server, []);
  }
});

Deno.test("hub passes HEAD, 204 and 304 responses without bodies and keeps the worker connection", async () => {
  const server = startHub();
  let connects = 0;
  const worker = startWorker(
    server,
    (req) => {
      const path = new URL(req.url).pathname;
      if (path === "/head") {
        return new Response(req.method === "HEAD" ? null : "hello world", {
          headers: { "content-length": "11", "x-kind": "head" },
        });
      }
      if (path === "/204") return new Response(null, { status: 204 });
      if (path === "/304") {
        return new Response(null, { status: 304, headers: { etag: '"v1"' } });
      }
      return new Response(`after ${req.method} ${path}`);
    },
    { onConnect: () => connects++ },
  );
  try {
    await waitFor(() => server.hub.stats.idle === 1, "1 idle slot");

    const head = await fetch(url(server, "/head"), { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get("x-kind"), "head");
    assert.equal(head.headers.get("content-length"), "11");
    assert.equal(await head.text(), "");

    const noContent = await fetch(url(server, "/204"));
    assert.equal(noContent.status, 204);
    assert.equal(await noContent.text(), "");

    const notModified = await fetch(url(server, "/304"), {
      headers: { "if-none-match": '"v1"' },
    });
    assert.equal(notModified.status, 304);
    assert.equal(notModified.headers.get("etag"), '"v1"');
    assert.equal(await notModified.text(), "");

    // The link is still in sync: the next response is the right one.
    const after = await fetch(url(server, "/next"));
    assert.equal(after.status, 200);
    assert.equal(await after.text(), "after GET /next");

    const get = await fetch(url(server, "/head"));
    assert.equal(await get.text(), "hello world");

    assert.equal(connects, 1, "the worker connection was replaced");
    assert.equal(server.hub.stats.slots, 1);
    assert.equal(server.hub.stats.failed, 0);
  } finally {
    await stop(server, [worker]);
  }
});

Deno.test("hub.fetch serves a Request without a consumer socket", async () => {
  const server = startHub();
  const worker = startWorker(server, async (req) => {
    const u = new URL(req.url);
    const body = req.body === null ? "" : await req.text();
    return new Response(
      `${req.method} ${u.pathname}${u.search} host=${
        req.headers.get("host")
      } body=${body}`,
      { headers: { "x-worker": "yes" } },
    );
  });
  try {
    await waitFor(() => server.hub.stats.idle === 1, "1 idle slot");
    const res = await server.hub.fetch(new Request("http://x/path?q=1"));
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("x-worker"), "yes");
    assert.ok(res.headers.has("x-request-id"));
    assert.equal(await res.text(), "GET /path?q=1 host=x body=");

    const post = await server.hub.fetch(
      new Request("http://x/echo", { method: "POST", body: "hello" }),
    );
    assert.equal(await post.text(), "POST /echo host=x body=hello");

    const streamed = await server.hub.fetch(
      new Request("http://x/stream", {
        method: "PUT",
        body: ReadableStream.from(["str", "eam"]).pipeThrough(
          new TextEncoderStream(),
        ),
      }),
    );
    assert.equal(await streamed.text(), "PUT /stream host=x body=stream");
    assert.equal(server.hub.stats.answered, 3);
  } finally {
    await stop(server, [worker]);
  }
});

Deno.test("a handler's Connection: close ends that worker connection after the response, and the worker dials again", async () => {
  const attached: unknown[] = [];
  const server = startHub({
    onLog: (r) => {
      if (r.msg === "worker connection attached") attached.push(r.how);
    },
  });
  let connects = 0;
  const worker = startWorker(server, (req) => {
    const close = new URL(req.url).pathname === "/close";
    return new Response(close ? "closing" : "keeping", {
      headers: close ? { connection: "close" } : {},
    });
  }, { onConnect: () => connects++ });
  try {
    await waitFor(() => server.hub.stats.idle === 1, "1 idle slot");
    for (let i = 1; i <= 3; i++) {
      const res = await guard(fetch(url(server, "/close")), "/close");
      assert.equal(res.status, 200);
      assert.equal(await res.text(), "closing");
      // The consumer's own connection is the hub's business, not the worker's.
      assert.notEqual(res.headers.get("connection"), "close");
      await waitFor(
        () => connects === i + 1 && server.hub.stats.idle === 1,
        `reconnect ${i}`,
      );
    }
    // Without the field the connection stays.
    for (let i = 0; i < 3; i++) {
      const res = await guard(fetch(url(server, "/keep")), "/keep");
      assert.equal(await res.text(), "keeping");
    }
    assert.equal(connects, 4);
    assert.equal(server.hub.stats.failed, 0);
    // A plain worker: after three, its connections no longer wait for a
    // handshake that never comes.
    assert.deepEqual(attached, [
      "plain, after waiting",
      "plain, after waiting",
      "plain, after waiting",
      "plain, address known",
    ]);
  } finally {
    worker.close();
    await worker.finished;
    await server.shutdown();
  }
});

Deno.test("a consumer's X-Pothead-* fields do not reach the worker: its handler runs and the link stays in sync", async () => {
  const server = startHub();
  const seen: string[] = [];
  const worker = startWorker(server, async (req) => {
    const body = await req.text();
    const own = [...req.headers.keys()].filter((n) =>
      n.startsWith("x-pothead")
    );
    seen.push(`${req.method} ${new URL(req.url).pathname} ${body} [${own}]`);
    return new Response(`handled ${new URL(req.url).pathname}`);
  });
  try {
    await waitFor(() => server.hub.stats.idle === 1, "1 idle slot");
    // A body that is itself a request: an engine that took this for the
    // hub's ping would read it as the next request on the link.
    const smuggled = "GET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n";
    const res = await fetch(url(server, "/charge"), {
      method: "POST",
      headers: { "x-pothead-ping": "1", "x-pothead-queue-ms": "99999" },
      body: smuggled,
    });
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "handled /charge");
    const next = await fetch(url(server, "/next"));
    assert.equal(await next.text(), "handled /next");
    assert.deepEqual(seen, [
      `POST /charge ${smuggled} [x-pothead-queue-ms]`,
      "GET /next  [x-pothead-queue-ms]",
    ]);
  } finally {
    await stop(server, [worker]);
  }
});

Deno.test("a 205 that comes with a body reaches the consumer without it, and the link stays in sync", async () => {
  const { RawSocket } = await import("./_relay.ts");
  const server = startHub();
  const worker = await RawSocket.connect(server.workerAddr.port);
  try {
    await waitFor(() => server.hub.stats.idle === 1, "the raw worker idle");
    const res = later(url(server, "/reset"));
    await guard(worker.readHead(), "the request at the worker");
    await worker.write(
      "HTTP/1.1 205 Reset Content\r\ncontent-length: 5\r\n\r\nhello",
    );
    const reset = await guard(res, "the 205");
    assert.equal(reset.status, 205);
    assert.equal(await reset.text(), "");
    const next = later(url(server, "/next"));
    const head = await guard(worker.readHead(), "the next request");
    assert.match(head ?? "", /^GET \/next /);
    await worker.write("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext");
    assert.equal(await (await guard(next, "the next answer")).text(), "next");
    assert.equal(server.hub.stats.failed, 0);
  } finally {
    worker.close();
    await server.shutdown();
  }
});

Deno.test("serveHub names the listener and address it cannot listen on, and leaves nothing open", () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (taken.addr as Deno.NetAddr).port;
  try {
    for (
      const [what, options] of [
        ["consumers", { port, workerPort: 0 }],
        ["workers", { port: 0, workerPort: port }],
      ] as const
    ) {
      assert.throws(
        () => serveHub({ hostname: "127.0.0.1", ...options }),
        (e: Error) =>
          e instanceof Deno.errors.AddrInUse &&
          e.message.startsWith(
            `Cannot listen for ${what} on 127.0.0.1:${port}: `,
          ),
      );
    }
  } finally {
    taken.close();
  }
});

Deno.test("Hub refuses a consumerScheme other than http or https", async () => {
  assert.throws(
    () => new Hub({ consumerScheme: "ftp" as "http" }),
    /Invalid option "consumerScheme": it must be "http" or "https"/,
  );
  await new Hub({ consumerScheme: "https" }).shutdown(0);
});

Deno.test("serveHub with a signal that is already aborted shuts down at once", async () => {
  const server = serveHub({
    hostname: "127.0.0.1",
    port: 0,
    workerPort: 0,
    signal: AbortSignal.abort(),
  });
  await deadline(server.finished, HANG_GUARD, "the hub's end");
  await assert.rejects(fetch(`http://127.0.0.1:${server.addr.port}/`));
});
