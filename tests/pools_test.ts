// Pools: routing by path prefix and Host, per-pool queues and limits, the
// per-pool gauges, and least-loaded dispatch over workers grouped by id.
// A real hub on loopback with in-process workers; requests are held with
// promises the test resolves, never with sleeps.

import assert from "node:assert/strict";
import {
  type AccessRecord,
  Hub,
  type HubServer,
  serveHub,
  type ServeHubOptions,
} from "../hub.ts";
import type { WorkerHandle, WorkerOptions } from "../worker.ts";
import { deadline, RawSocket, waitFor } from "./_relay.ts";
import { connectWorker } from "./_hub.ts";
import { hash32, mix32 } from "../_hash.ts";
import { encodeHandshake } from "../_handshake.ts";
import { type MemConn, memPair, text as memText } from "./_memconn.ts";

const HANG = 15_000;

interface Ctx {
  server: HubServer;
  url: string;
  workers: WorkerHandle[];
  add(
    handler: (req: Request) => Response | Promise<Response>,
    options?: WorkerOptions,
  ): WorkerHandle;
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
  const workers: WorkerHandle[] = [];
  const ctx: Ctx = {
    server,
    url: `http://127.0.0.1:${server.addr.port}`,
    workers,
    add(handler, opts = {}) {
      const w = connectWorker(handler, {
        hostname: "127.0.0.1",
        port: server.workerAddr.port,
        minBackoff: 10,
        maxBackoff: 100,
        ...opts,
      });
      workers.push(w);
      return w;
    },
  };
  try {
    await deadline(fn(ctx), HANG * 2, "test body");
  } finally {
    for (const w of workers) w.close();
    await Promise.all(workers.map((w) => w.finished));
    await server.shutdown();
  }
}

/** A handler that records paths and answers `name path`. */
function recorder(name: string, seen: string[]) {
  return (req: Request) => {
    const path = new URL(req.url).pathname;
    seen.push(path);
    return new Response(`${name} ${path}`);
  };
}

/** Requests held until released; `entered` resolves once `n` arrived. */
class Gate {
  count = 0;
  #release = Promise.withResolvers<void>();
  #waiters: { n: number; resolve: () => void }[] = [];

  handler(name: string) {
    return async (req: Request) => {
      this.count++;
      for (const w of this.#waiters) if (this.count >= w.n) w.resolve();
      await this.#release.promise;
      return new Response(`${name} ${new URL(req.url).pathname}`);
    };
  }

  entered(n: number): Promise<void> {
    if (this.count >= n) return Promise.resolve();
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#waiters.push({ n, resolve });
    return deadline(promise, HANG, `${n} requests entering`);
  }

  release(): void {
    this.#release.resolve();
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

Deno.test("hub routes requests to pools by path prefix; the default pool gets the rest", async () => {
  await withHub(
    { routes: [{ pool: "images", pathPrefix: "/images/" }] },
    async (ctx) => {
      const images: string[] = [];
      const rest: string[] = [];
      ctx.add(recorder("images", images), { pool: "images", workerId: "img" });
      ctx.add(recorder("default", rest));
      await waitFor(() => ctx.server.hub.stats.idle === 2, "both attached");
      const paths = [
        "/images/a.png",
        "/api/x",
        "/images/b/c.jpg",
        "/imagesfoo",
        "/",
        "/images",
        "/images/",
      ];
      const got = await Promise.all(
        paths.map((p) => text(later(`${ctx.url}${p}`))),
      );
      assert.deepEqual(got, [
        [200, "images /images/a.png"],
        [200, "default /api/x"],
        [200, "images /images/b/c.jpg"],
        [200, "default /imagesfoo"],
        [200, "default /"],
        [200, "default /images"],
        [200, "images /images/"],
      ]);
      assert.ok(images.every((p) => p.startsWith("/images/")), `${images}`);
      assert.ok(rest.every((p) => !p.startsWith("/images/")), `${rest}`);
      assert.equal(images.length + rest.length, paths.length);
    },
  );
});

Deno.test("hub routes requests to pools by Host (port and case ignored), rules in order", async () => {
  await withHub(
    {
      routes: [
        { pool: "api-admin", host: "api.example", pathPrefix: "/admin/" },
        { pool: "api", host: "API.example" },
        { pool: "images", pathPrefix: "/images/" },
      ],
    },
    async (ctx) => {
      ctx.add(recorder("api-admin", []), { pool: "api-admin" });
      ctx.add(recorder("api", []), { pool: "api" });
      ctx.add(recorder("images", []), { pool: "images" });
      ctx.add(recorder("default", []));
      await waitFor(() => ctx.server.hub.stats.idle === 4, "all attached");
      const hub = ctx.server.hub;
      const cases: [string, Record<string, string>, string][] = [
        ["http://api.example/v1/users", {}, "api /v1/users"],
        ["http://api.example:8443/v1", {}, "api /v1"],
        // A Host field naming another host than the URL is ignored, as for
        // an absolute-form target (RFC 9112 §3.2.2): the URL decides.
        ["http://other.example/v1", { host: "Api.Example:80" }, "default /v1"],
        ["http://www.example/v1", { host: "www.example" }, "default /v1"],
        ["http://api.example/admin/x", {}, "api-admin /admin/x"],
        ["http://api.example/images/x", {}, "api /images/x"],
        ["http://www.example/images/x", {}, "images /images/x"],
        ["http://www.example/v1", {}, "default /v1"],
      ];
      for (const [url, headers, want] of cases) {
        const res = await hub.fetch(new Request(url, { headers }));
        assert.equal(await res.text(), want, url);
      }
      // The same through the consumer listener: the Host field decides,
      // or an absolute-form target's authority (a raw socket, since fetch
      // sets Host itself).
      const consumer = await RawSocket.connect(ctx.server.addr.port);
      try {
        await consumer.write(
          "GET /v2 HTTP/1.1\r\nHost: Api.Example:8080\r\n\r\n" +
            "GET http://API.example:81/v3 HTTP/1.1\r\nHost: www.example\r\n\r\n" +
            "GET http://www.example/v4 HTTP/1.1\r\nHost: api.example\r\n" +
            "Connection: close\r\n\r\n",
        );
        for (const want of ["api /v2", "api /v3", "default /v4"]) {
          const msg = await consumer.readMessage();
          assert.equal(msg?.status, 200);
          assert.equal(new TextDecoder().decode(msg?.body), want);
        }
      } finally {
        consumer.close();
      }
    },
  );
});

Deno.test("a worker in pool images gets only /images/ requests under concurrent load", async () => {
  await withHub(
    { routes: [{ pool: "images", pathPrefix: "/images/" }] },
    async (ctx) => {
      const images: string[] = [];
      const rest: string[] = [];
      ctx.add(recorder("images", images), { pool: "images", concurrency: 2 });
      ctx.add(recorder("default", rest), { concurrency: 2 });
      await waitFor(() => ctx.server.hub.stats.idle === 4, "all attached");
      const paths = Array.from(
        { length: 30 },
        (_, i) => i % 3 === 0 ? `/images/${i}` : `/other/${i}`,
      );
      const got = await Promise.all(
        paths.map((p) => text(later(`${ctx.url}${p}`))),
      );
      for (let i = 0; i < paths.length; i++) {
        const pool = paths[i].startsWith("/images/") ? "images" : "default";
        assert.deepEqual(got[i], [200, `${pool} ${paths[i]}`]);
      }
      assert.deepEqual(
        images.slice().sort(),
        paths.filter((p) => p.startsWith("/images/")).sort(),
      );
      assert.deepEqual(
        rest.slice().sort(),
        paths.filter((p) => !p.startsWith("/images/")).sort(),
      );
    },
  );
});

Deno.test("a pool without workers queues its requests while other pools serve", async () => {
  await withHub(
    { routes: [{ pool: "gpu", pathPrefix: "/gpu/" }] },
    async (ctx) => {
      ctx.add(recorder("default", []));
      await waitFor(() => ctx.server.hub.stats.idle === 1, "attached");
      const gpu = later(`${ctx.url}/gpu/job`);
      await waitFor(() => ctx.server.hub.stats.queued === 1, "gpu queued");
      assert.deepEqual(await text(later(`${ctx.url}/cpu`)), [
        200,
        "default /cpu",
      ]);
      ctx.add(recorder("gpu", []), { pool: "gpu" });
      assert.deepEqual(await text(gpu), [200, "gpu /gpu/job"]);
    },
  );
});

Deno.test("per-pool maxQueue answers 503 for one pool while another still serves, and stats.pools shows the gauges", async () => {
  await withHub(
    {
      routes: [{ pool: "images", pathPrefix: "/images/" }],
      pools: { images: { maxQueue: 1 } },
      maxQueue: 100,
    },
    async (ctx) => {
      const gate = new Gate();
      // Released whatever happens, so that a failure ends the test.
      using _release = { [Symbol.dispose]: () => gate.release() };
      ctx.add(gate.handler("images"), { pool: "images", workerId: "img-1" });
      ctx.add(recorder("default", []), { workerId: "def-1" });
      await waitFor(() => ctx.server.hub.stats.idle === 2, "attached");
      const first = later(`${ctx.url}/images/1`);
      await gate.entered(1);
      const second = later(`${ctx.url}/images/2`);
      await waitFor(() => ctx.server.hub.stats.queued === 1, "second queued");
      const third = await later(`${ctx.url}/images/3`);
      assert.equal(third.status, 503);
      assert.equal(third.headers.get("retry-after"), "1");
      assert.equal(third.headers.get("x-pothead-error"), "1");
      assert.match(await third.text(), /queue of pool "images" is full/);
      // The default pool is unaffected.
      assert.deepEqual(await text(later(`${ctx.url}/ok`)), [
        200,
        "default /ok",
      ]);
      const stats = ctx.server.hub.stats;
      const byName = Object.fromEntries(
        stats.pools.map((p) => [p.name, {
          ...p,
          oldestWaitMs: 0,
          classes: p.classes.map((c) => ({ ...c, oldestWaitMs: 0 })),
        }]),
      );
      assert.deepEqual(byName, {
        default: {
          name: "default",
          queued: 0,
          keys: 0,
          oldestWaitMs: 0,
          waiting: 0,
          slots: 1,
          idle: 1,
          parked: 0,
          busy: 0,
          held: 0,
          heldTotal: 0,
          takeBacks: 0,
          workers: 1,
          classes: [{ priority: 0, queued: 0, oldestWaitMs: 0 }],
          named: true,
        },
        images: {
          name: "images",
          queued: 1,
          keys: 0,
          oldestWaitMs: 0,
          waiting: 0,
          slots: 1,
          idle: 0,
          parked: 0,
          busy: 1,
          held: 0,
          heldTotal: 0,
          takeBacks: 0,
          workers: 1,
          classes: [{ priority: 0, queued: 1, oldestWaitMs: 0 }],
          named: true,
        },
      });
      const imagesPool = stats.pools.find((p) => p.name === "images")!;
      assert.ok(imagesPool.oldestWaitMs >= 0);
      assert.equal(
        stats.pools.find((p) => p.name === "default")!.oldestWaitMs,
        0,
      );
      assert.equal(stats.rejectedFull, 1);
      assert.equal(stats.queued, 1);
      assert.deepEqual(
        stats.workers.map((w) => [w.id, w.pool, w.slots, w.busy]).sort(),
        [["def-1", "default", 1, 0], ["img-1", "images", 1, 1]],
      );
      gate.release();
      assert.deepEqual(await text(first), [200, "images /images/1"]);
      assert.deepEqual(await text(second), [200, "images /images/2"]);
    },
  );
});

Deno.test("per-pool queueTimeout answers 503 in that pool only", async () => {
  await withHub(
    {
      routes: [{ pool: "slow", pathPrefix: "/slow/" }],
      pools: { slow: { queueTimeout: 100 } },
    },
    async (ctx) => {
      ctx.add(recorder("default", []));
      await waitFor(() => ctx.server.hub.stats.idle === 1, "attached");
      // No worker serves "slow": its request times out in the queue.
      const res = await later(`${ctx.url}/slow/x`);
      assert.equal(res.status, 503);
      assert.match(
        await res.text(),
        /waited 100 ms in the queue of pool "slow"/,
      );
      assert.equal(ctx.server.hub.stats.timedOutQueued, 1);
      assert.deepEqual(await text(later(`${ctx.url}/fast`)), [
        200,
        "default /fast",
      ]);
    },
  );
});

Deno.test("least-loaded dispatch: two workers with 4 slots each share 4 requests 2 and 2", async () => {
  await withHub({}, async (ctx) => {
    const gate = new Gate();
    const perWorker: Record<string, number> = { w1: 0, w2: 0 };
    for (const id of ["w1", "w2"]) {
      const inner = gate.handler(id);
      ctx.add((req) => {
        perWorker[id]++;
        return inner(req);
      }, { workerId: id, concurrency: 4 });
    }
    await waitFor(() => ctx.server.hub.stats.idle === 8, "8 slots idle");
    const reqs = [1, 2, 3, 4].map((i) => later(`${ctx.url}/job/${i}`));
    await gate.entered(4);
    const stats = ctx.server.hub.stats;
    assert.deepEqual(
      stats.workers.map((w) => [w.id, w.slots, w.busy]).sort(),
      [["w1", 4, 2], ["w2", 4, 2]],
    );
    assert.deepEqual(perWorker, { w1: 2, w2: 2 });
    assert.equal(stats.busy, 4);
    assert.equal(stats.idle, 4);
    gate.release();
    const bodies = await Promise.all(reqs.map(text));
    for (const [status] of bodies) assert.equal(status, 200);
  });
});

Deno.test("least-loaded dispatch: a 5th request goes to the worker with fewer in progress", async () => {
  await withHub({}, async (ctx) => {
    // w1 has 3 slots, w2 has 2. After 4 requests (2 and 2), w2 is full, so
    // the 5th must go to w1; with 3 of w1's slots taken, a 6th queues.
    const gate = new Gate();
    const perWorker: Record<string, number> = { w1: 0, w2: 0 };
    for (const [id, concurrency] of [["w1", 3], ["w2", 2]] as const) {
      const inner = gate.handler(id);
      ctx.add((req) => {
        perWorker[id]++;
        return inner(req);
      }, { workerId: id, concurrency });
    }
    await waitFor(() => ctx.server.hub.stats.idle === 5, "5 slots idle");
    const reqs = [1, 2, 3, 4, 5].map((i) => later(`${ctx.url}/job/${i}`));
    await gate.entered(5);
    assert.deepEqual(perWorker, { w1: 3, w2: 2 });
    const sixth = later(`${ctx.url}/job/6`);
    await waitFor(() => ctx.server.hub.stats.queued === 1, "6th queued");
    gate.release();
    for (const r of [...reqs, sixth]) assert.equal((await text(r))[0], 200);
  });
});

Deno.test("a route without a string pool (or with a non-string host or prefix) is refused at construction", () => {
  const bad: unknown[] = [
    { pathPrefix: "/x" },
    { pool: 5 },
    { pool: "images", host: 7 },
    { pool: "images", pathPrefix: ["/x"] },
    null,
  ];
  for (const route of bad) {
    assert.throws(
      () =>
        serveHub({
          hostname: "127.0.0.1",
          port: 0,
          workerPort: 0,
          routes: [route],
        } as unknown as ServeHubOptions),
      TypeError,
      JSON.stringify(route),
    );
  }
});

Deno.test("path prefix routes match the path as the worker resolves it: dot segments cannot route a request into another pool", async () => {
  await withHub(
    { routes: [{ pool: "images", pathPrefix: "/images/" }] },
    async (ctx) => {
      ctx.add(recorder("images", []), { pool: "images", workerId: "img" });
      ctx.add(recorder("default", []));
      await waitFor(() => ctx.server.hub.stats.idle === 2, "both attached");
      const got: string[] = [];
      // Raw targets: fetch would resolve the dot segments itself.
      for (
        const target of [
          "/images/../admin",
          "/images/%2e%2E/admin",
          "/images/./a.png",
          "/api/../images/b.png",
        ]
      ) {
        const c = await RawSocket.connect(ctx.server.addr.port);
        await c.write(`GET ${target} HTTP/1.1\r\nHost: h\r\n\r\n`);
        const m = await c.readMessage();
        c.close();
        got.push(
          `${target}: ${m?.status} ${new TextDecoder().decode(m?.body)}`,
        );
      }
      assert.deepEqual(got, [
        "/images/../admin: 200 default /admin",
        "/images/%2e%2E/admin: 200 default /admin",
        "/images/./a.png: 200 images /images/a.png",
        "/api/../images/b.png: 200 images /images/b.png",
      ]);
    },
  );
});

/**
 * One slot, held by `/hold` until released; every other request records
 * its path and answers at once. Sends `paths` one by one, each queued
 * before the next (after a pause of its third element's milliseconds, if
 * any), then releases the slot and returns the order served.
 */
async function servedOrder(
  ctx: Ctx,
  paths: [string, Record<string, string>?, number?][],
): Promise<string[]> {
  const order: string[] = [];
  const hold = Promise.withResolvers<void>();
  const entered = Promise.withResolvers<void>();
  ctx.add(async (req) => {
    const path = new URL(req.url).pathname;
    order.push(path);
    if (path === "/hold") {
      entered.resolve();
      await hold.promise;
    }
    return new Response(path);
  }, { concurrency: 1 });
  const hub = ctx.server.hub;
  await waitFor(() => hub.stats.idle === 1, "the slot");
  const held = later(`${ctx.url}/hold`);
  await deadline(entered.promise, HANG, "the held request");
  const rest: Promise<Response>[] = [];
  for (const [i, [path, headers, pause]] of paths.entries()) {
    if (pause !== undefined) await new Promise((r) => setTimeout(r, pause));
    rest.push(later(`${ctx.url}${path}`, { headers }));
    await waitFor(() => hub.stats.queued === i + 1, `${path} queued`);
  }
  hold.resolve();
  await (await held).text();
  for (const [i, p] of rest.entries()) {
    assert.deepEqual(await text(p), [200, paths[i][0]]);
  }
  return order.slice(1);
}

Deno.test("priority classes: a pool serves its highest class first, each class first come first served", async () => {
  const records: AccessRecord[] = [];
  await withHub(
    {
      routes: [
        { pool: "default", pathPrefix: "/urgent/", priority: 10 },
        { pool: "default", pathPrefix: "/batch/", priority: -10 },
      ],
      onAccess: (r) => void records.push(r),
    },
    async (ctx) => {
      const order = await servedOrder(ctx, [
        ["/batch/1"],
        ["/plain/1"],
        ["/urgent/1"],
        ["/batch/2"],
        ["/urgent/2"],
        ["/plain/2"],
      ]);
      assert.deepEqual(order, [
        "/urgent/1",
        "/urgent/2",
        "/plain/1",
        "/plain/2",
        "/batch/1",
        "/batch/2",
      ]);
      await waitFor(() => records.length === 7, "the access records");
      const priority = (path: string) =>
        records.find((r) => r.path === path)?.priority;
      assert.equal(priority("/urgent/2"), 10);
      assert.equal(priority("/plain/1"), 0);
      assert.equal(priority("/batch/1"), -10);
    },
  );
});

Deno.test("priorityStep: a class is worth that much waiting, so a lower class that waited long enough goes first", async () => {
  const routes = [
    { pool: "default", pathPrefix: "/urgent/", priority: 1 },
    { pool: "default", pathPrefix: "/batch/", priority: -1 },
  ];
  // With a step of 1 s, /batch/1 counts as arriving 1 s late and
  // /urgent/1 1 s early. /plain/1 comes right after /batch/1 (well within
  // a second), so it goes first; /urgent/1 comes more than 2 s after it,
  // so /batch/1 has waited long enough to go before it. Only "more than"
  // gaps are asserted: a slow machine cannot reorder them.
  const paths: [string, undefined?, number?][] = [
    ["/batch/1"],
    ["/plain/1"],
    ["/urgent/1", undefined, 2500],
    ["/plain/2"],
  ];
  await withHub({ routes, priorityStep: 1000 }, async (ctx) => {
    assert.deepEqual(await servedOrder(ctx, paths), [
      "/plain/1",
      "/batch/1",
      "/urgent/1",
      "/plain/2",
    ]);
  });
  // A pool's own step wins: Infinity, strict.
  await withHub({
    routes,
    priorityStep: 1000,
    pools: { default: { priorityStep: Infinity } },
  }, async (ctx) => {
    assert.deepEqual(await servedOrder(ctx, paths), [
      "/urgent/1",
      "/plain/1",
      "/plain/2",
      "/batch/1",
    ]);
  });
});

Deno.test("priority classes: X-Pothead-Priority counts only with trustPriority, over the route's; a bad one is a 400", async () => {
  const field = (n: string) => ({ "x-pothead-priority": n });
  // Ignored by default: first come, first served.
  await withHub({}, async (ctx) => {
    const order = await servedOrder(ctx, [
      ["/a", field("-3")],
      ["/b", field("5")],
      ["/c"],
    ]);
    assert.deepEqual(order, ["/a", "/b", "/c"]);
  });
  await withHub(
    {
      trustPriority: true,
      routes: [{ pool: "default", pathPrefix: "/urgent/", priority: 10 }],
    },
    async (ctx) => {
      const order = await servedOrder(ctx, [
        ["/a", field("-3")],
        ["/b"],
        ["/urgent/c", field("-20")],
        ["/d", field(" +20 ")],
        ["/urgent/e"],
      ]);
      assert.deepEqual(order, ["/d", "/urgent/e", "/b", "/a", "/urgent/c"]);
      for (const bad of ["high", "1.5", "1001", "-1001", "", "1e2"]) {
        const res = await fetch(`${ctx.url}/x`, { headers: field(bad) });
        assert.equal(res.status, 400, JSON.stringify(bad));
        assert.match(await res.text(), /invalid x-pothead-priority/);
      }
    },
  );
});

Deno.test("a route's priority must be an integer from -1000 to 1000", () => {
  for (const priority of [1.5, 1001, -1001, "3", null]) {
    assert.throws(
      () =>
        serveHub({
          port: 0,
          workerPort: 0,
          routes: [{ pool: "p", priority: priority as number }],
        }),
      /Invalid option "routes": priority must be an integer from -1000 to 1000/,
    );
  }
});

Deno.test("priorityStep must be a number of milliseconds, 0 or more", () => {
  for (const step of [-1, NaN, "1s"]) {
    assert.throws(
      () => new Hub({ priorityStep: step as number }),
      /Invalid option "priorityStep"/,
    );
    assert.throws(
      () => new Hub({ pools: { p: { priorityStep: step as number } } }),
      /Invalid option "pools\.p\.priorityStep"/,
    );
  }
});

Deno.test("priority classes: maxQueue counts every class, a consumer that leaves a non-zero class is removed, stats see the oldest of all", async () => {
  await withHub(
    {
      maxQueue: 3,
      trustPriority: true,
      routes: [{ pool: "default", pathPrefix: "/batch/", priority: -10 }],
    },
    async (ctx) => {
      const gate = new Gate();
      ctx.add(gate.handler("w"), { concurrency: 1 });
      const hub = ctx.server.hub;
      // Released whatever happens, so that a failure ends the test.
      using _release = { [Symbol.dispose]: () => gate.release() };
      await waitFor(() => hub.stats.idle === 1, "the slot");
      const held = later(`${ctx.url}/hold`);
      await gate.entered(1);
      const batch1 = later(`${ctx.url}/batch/1`);
      await waitFor(() => hub.stats.queued === 1, "batch/1 queued");
      const batch1Queued = performance.now();
      // A gap, so that the head's wait is shorter than the oldest's.
      await new Promise((r) => setTimeout(r, 50));
      const leaving = new AbortController();
      const urgent = fetch(`${ctx.url}/urgent`, {
        headers: { "x-pothead-priority": "7" },
        signal: leaving.signal,
      });
      urgent.catch(() => {});
      await waitFor(() => hub.stats.queued === 2, "urgent queued");
      const batch2 = later(`${ctx.url}/batch/2`);
      await waitFor(() => hub.stats.queued === 3, "batch/2 queued");
      // The oldest wait is the first batch request's, not the head's.
      const before = performance.now();
      const stats = hub.stats;
      const pool = stats.pools.find((p) => p.name === "default")!;
      assert.equal(pool.queued, 3);
      assert.equal(pool.oldestWaitMs, stats.oldestWaitMs);
      assert.ok(
        stats.oldestWaitMs >= before - batch1Queued,
        `${stats.oldestWaitMs} ms is batch/1's wait`,
      );
      // By class, highest first; class 0 is listed though empty.
      assert.deepEqual(
        pool.classes.map((c) => [c.priority, c.queued]),
        [[7, 1], [0, 0], [-10, 2]],
      );
      const batchClass = pool.classes[2];
      assert.equal(batchClass.oldestWaitMs, pool.oldestWaitMs);
      assert.ok(pool.classes[0].oldestWaitMs < batchClass.oldestWaitMs);
      assert.equal(pool.classes[1].oldestWaitMs, 0);
      // Full over all classes: a higher class is refused too.
      const refused = await fetch(`${ctx.url}/x`, {
        headers: { "x-pothead-priority": "1000" },
      });
      assert.equal(refused.status, 503);
      assert.match(await refused.text(), /queue of pool "default" is full/);
      // The urgent consumer leaves: out of the queue, and its place free.
      leaving.abort();
      await waitFor(() => hub.stats.queued === 2, "urgent removed");
      const next = later(`${ctx.url}/next`, {
        headers: { "x-pothead-priority": "3" },
      });
      await waitFor(() => hub.stats.queued === 3, "next queued");
      gate.release();
      for (const [p, path] of [[held, "/hold"], [next, "/next"]] as const) {
        assert.deepEqual(await text(p), [200, `w ${path}`]);
      }
      assert.deepEqual(await text(batch1), [200, "w /batch/1"]);
      assert.deepEqual(await text(batch2), [200, "w /batch/2"]);
      assert.equal(hub.stats.queued, 0);
      // Emptied classes leave the list.
      assert.deepEqual(
        hub.stats.pools.find((p) => p.name === "default")!.classes,
        [{ priority: 0, queued: 0, oldestWaitMs: 0 }],
      );
    },
  );
});

Deno.test("affinityBy: each key keeps to one worker while it is idle, keys spread over the workers, a busy one sends its keys to their next worker at once, and a new worker takes only keys from others", async () => {
  await withHub({ affinityBy: "header:x-model" }, async (ctx) => {
    let release = Promise.withResolvers<void>();
    const entered: string[] = [];
    const named = (name: string) => async (req: Request) => {
      const path = new URL(req.url).pathname;
      if (path === "/hold") {
        entered.push(name);
        await release.promise;
      }
      return new Response(name);
    };
    ctx.add(named("a"), { workerId: "a" });
    await waitFor(() => ctx.server.hub.stats.idle === 1, "a attached");
    ctx.add(named("b"), { workerId: "b" });
    await waitFor(() => ctx.server.hub.stats.idle === 2, "b attached");
    const get = async (path: string, model: string) => {
      const [status, body] = await text(
        later(`${ctx.url}${path}`, { headers: { "x-model": model } }),
      );
      assert.equal(status, 200);
      return body;
    };
    const keys = Array.from({ length: 20 }, (_, i) => `m${i}`);
    // Each key, asked three times with every worker idle, goes to one
    // worker (least-loaded dispatch would send all of them to a).
    const home = new Map<string, string>();
    for (const key of keys) {
      const seen = new Set<string>();
      for (let i = 0; i < 3; i++) seen.add(await get("/x", key));
      assert.equal(seen.size, 1, `${key} went to ${[...seen]}`);
      home.set(key, [...seen][0]);
    }
    assert.deepEqual(new Set(home.values()), new Set(["a", "b"]));
    assert.equal(ctx.server.hub.stats.affinityHits, 60);
    assert.equal(ctx.server.hub.stats.affinityMisses, 0);
    // Its first worker busy, a key's request goes to its next one at once.
    const key = keys[0];
    const first = home.get(key)!;
    const held = get("/hold", key);
    try {
      await waitFor(() => entered.length === 1, "held");
      assert.equal(entered[0], first);
      assert.equal(await get("/x", key), first === "a" ? "b" : "a");
      assert.equal(ctx.server.hub.stats.affinityMisses, 1);
    } finally {
      // Released on a failure too, so the test fails rather than hangs.
      release.resolve();
    }
    assert.equal(await held, first);
    release = Promise.withResolvers<void>();
    // A third worker: keys move to it or stay, never between a and b.
    ctx.add(named("c"), { workerId: "c" });
    await waitFor(() => ctx.server.hub.stats.idle === 3, "c attached");
    let moved = 0;
    for (const k of keys) {
      const now = await get("/x", k);
      if (now !== home.get(k)) {
        assert.equal(now, "c", `${k} moved from ${home.get(k)} to ${now}`);
        moved++;
      }
    }
    assert.ok(moved > 0 && moved < keys.length, `${moved} keys moved`);
  });
});

Deno.test("affinityBy: a pool can turn the hub's off; bad keys are refused by name", async () => {
  await withHub({
    affinityBy: "header:x-model",
    pools: { default: { affinityBy: null } },
  }, async (ctx) => {
    ctx.add(recorder("a", []), { workerId: "a", concurrency: 2 });
    await waitFor(() => ctx.server.hub.stats.idle === 2, "a attached");
    ctx.add(recorder("b", []), { workerId: "b" });
    await waitFor(() => ctx.server.hub.stats.idle === 3, "b attached");
    for (let i = 0; i < 3; i++) {
      const res = await later(`${ctx.url}/x${i}`, {
        headers: { "x-model": "m1" },
      });
      assert.equal(await res.text(), `a /x${i}`);
    }
    assert.equal(ctx.server.hub.stats.affinityHits, 0);
  });
  assert.throws(
    () => new Hub({ affinityBy: "header:" as "ip" }),
    /Invalid option "affinityBy"/,
  );
  assert.throws(
    () => new Hub({ pools: { gpu: { affinityBy: 5 as unknown as "ip" } } }),
    /Invalid option "pools\.gpu\.affinityBy"/,
  );
});

Deno.test('affinityBy: requests without a key (header missing) go to the least loaded worker, not all to the one the key "" ranks first, and count neither hit nor miss', async () => {
  await withHub({ affinityBy: "header:x-model" }, async (ctx) => {
    const release = Promise.withResolvers<void>();
    const entered: string[] = [];
    const named = (name: string) => async () => {
      entered.push(name);
      await release.promise;
      return new Response(name);
    };
    ctx.add(named("a"), { workerId: "a", concurrency: 2 });
    await waitFor(() => ctx.server.hub.stats.idle === 2, "a attached");
    ctx.add(named("b"), { workerId: "b", concurrency: 2 });
    await waitFor(() => ctx.server.hub.stats.idle === 4, "b attached");
    const first = text(later(`${ctx.url}/one`));
    const second = waitFor(() => entered.length === 1, "first held")
      .then(() => text(later(`${ctx.url}/two`)));
    try {
      await waitFor(() => entered.length === 2, "second held");
      // The least loaded: the second goes to the worker with nothing on it.
      assert.deepEqual(new Set(entered), new Set(["a", "b"]));
      assert.equal(ctx.server.hub.stats.affinityHits, 0);
      assert.equal(ctx.server.hub.stats.affinityMisses, 0);
    } finally {
      release.resolve();
      assert.equal((await first)[0], 200);
      assert.equal((await second)[0], 200);
    }
  });
});

// Two one-slot workers a and b behind a hub with affinity by x-model; each
// request is logged as "worker path" on entry and held while its path has
// a gate. `keyOf(w)` is a key whose first worker is w (found by asking).
async function affinityPair(
  ctx: Ctx,
  options: { a?: WorkerOptions; b?: WorkerOptions } = {},
) {
  const gates = new Map<string, PromiseWithResolvers<void>>();
  const log: string[] = [];
  const named = (name: string) => async (req: Request) => {
    const path = new URL(req.url).pathname;
    log.push(`${name} ${path}`);
    await gates.get(path)?.promise;
    return new Response(`${name} ${path}`);
  };
  const a = ctx.add(named("a"), { workerId: "a", ...options.a });
  await waitFor(() => ctx.server.hub.stats.idle === 1, "a attached");
  const b = ctx.add(named("b"), { workerId: "b", ...options.b });
  await waitFor(() => ctx.server.hub.stats.idle === 2, "b attached");
  const send = (path: string, model: string, signal?: AbortSignal) =>
    later(`${ctx.url}${path}`, { headers: { "x-model": model }, signal });
  const home = new Map<string, string>();
  for (let i = 0; home.size < 2 && i < 64; i++) {
    const [, body] = await text(send("/probe", `m${i}`));
    const worker = body.split(" ")[0];
    if (!home.has(worker)) home.set(worker, `m${i}`);
  }
  assert.equal(home.size, 2, "keys for both workers");
  log.length = 0;
  const hold = (path: string) => {
    const gate = Promise.withResolvers<void>();
    gates.set(path, gate);
    return gate;
  };
  return {
    a,
    b,
    log,
    send,
    hold,
    keyOf: (worker: string) => home.get(worker)!,
    pool: () => ctx.server.hub.stats.pools.find((p) => p.name === "default")!,
  };
}

Deno.test("affinityWait: a request whose key's worker is busy waits for it while another idles, and takes it when it frees, ahead of what queued after it", async () => {
  await withHub(
    { affinityBy: "header:x-model", affinityWait: HANG },
    async (ctx) => {
      const t = await affinityPair(ctx);
      const hub = ctx.server.hub;
      const hits = hub.stats.affinityHits;
      const h1 = t.hold("/h1");
      const h2 = t.hold("/h2");
      try {
        const held = t.send("/h1", t.keyOf("a"));
        await waitFor(() => t.log.includes("a /h1"), "a busy");
        // a is busy and b idle: the request waits for a, outside the queue.
        const waited = t.send("/w", t.keyOf("a"));
        await waitFor(() => t.pool().waiting === 1, "waiting for a");
        assert.equal(hub.stats.affinityWaits, 1);
        assert.equal(hub.stats.idle, 1);
        assert.equal(hub.stats.queued, 0);
        // b still serves its own keys at once.
        const other = t.send("/h2", t.keyOf("b"));
        await waitFor(() => t.log.includes("b /h2"), "b busy");
        // Both busy: a later request queues.
        const queued = t.send("/q", t.keyOf("b"));
        await waitFor(() => hub.stats.queued === 1, "queued");
        assert.deepEqual(t.log, ["a /h1", "b /h2"]);
        // a frees: the one that waited for it goes first, then the queue.
        h1.resolve();
        assert.deepEqual(await text(held), [200, "a /h1"]);
        assert.deepEqual(await text(waited), [200, "a /w"]);
        assert.deepEqual(await text(queued), [200, "a /q"]);
        assert.deepEqual(t.log, ["a /h1", "b /h2", "a /w", "a /q"]);
        h2.resolve();
        assert.deepEqual(await text(other), [200, "b /h2"]);
        assert.equal(t.pool().waiting, 0);
        // /h1, /w and /h2 went to their keys' first workers; /q queued.
        assert.equal(hub.stats.affinityHits - hits, 3);
        assert.equal(hub.stats.affinityWaitTimeouts, 0);
      } finally {
        h1.resolve();
        h2.resolve();
      }
    },
  );
});

Deno.test("affinityWait: a wait that runs out goes to the next idle worker; a consumer that leaves while waiting is dropped; a worker that leaves lets its waiters go at once", async () => {
  // A wait that runs out.
  await withHub(
    { affinityBy: "header:x-model", affinityWait: 200 },
    async (ctx) => {
      const t = await affinityPair(ctx);
      const hub = ctx.server.hub;
      const misses = hub.stats.affinityMisses;
      const h1 = t.hold("/h1");
      try {
        const held = t.send("/h1", t.keyOf("a"));
        await waitFor(() => t.log.includes("a /h1"), "a busy");
        const start = performance.now();
        assert.deepEqual(await text(t.send("/w", t.keyOf("a"))), [200, "b /w"]);
        // Timers never fire early; the margin is for clock granularity.
        assert.ok(performance.now() - start >= 190, "it waited");
        assert.equal(hub.stats.affinityWaits, 1);
        assert.equal(hub.stats.affinityWaitTimeouts, 1);
        assert.equal(hub.stats.affinityMisses - misses, 1);
        assert.equal(t.pool().waiting, 0);
        h1.resolve();
        assert.deepEqual(await text(held), [200, "a /h1"]);
      } finally {
        h1.resolve();
      }
    },
  );
  // The consumer leaves, then the worker.
  await withHub(
    { affinityBy: "header:x-model", affinityWait: HANG },
    async (ctx) => {
      const t = await affinityPair(ctx);
      const hub = ctx.server.hub;
      const h1 = t.hold("/h1");
      try {
        const held = t.send("/h1", t.keyOf("a"));
        await waitFor(() => t.log.includes("a /h1"), "a busy");
        const leaving = new AbortController();
        const left = t.send("/left", t.keyOf("a"), leaving.signal);
        await waitFor(() => t.pool().waiting === 1, "waiting");
        const abandoned = hub.stats.abandoned;
        leaving.abort();
        await assert.rejects(left);
        await waitFor(() => t.pool().waiting === 0, "dropped");
        assert.equal(hub.stats.abandoned, abandoned + 1);
        // Another waits for a; a goes away, and it stops waiting at once
        // (its wait would last the whole test): the GET a was cut from is
        // sent again, to b, which it came before; it queues behind that.
        const waited = t.send("/w", t.keyOf("a"));
        await waitFor(() => t.pool().waiting === 1, "waiting again");
        t.a.close();
        await waitFor(() => hub.stats.queued === 1, "queued behind /h1");
        assert.equal(t.pool().waiting, 0);
        assert.deepEqual(t.log, ["a /h1", "b /h1"]);
        h1.resolve();
        assert.deepEqual(await text(waited), [200, "b /w"]);
        assert.equal(hub.stats.affinityWaitTimeouts, 0);
        await held.then((r) => r.body?.cancel(), () => {});
        assert.ok(!t.log.includes("a /left") && !t.log.includes("b /left"));
      } finally {
        h1.resolve();
      }
    },
  );
});

Deno.test("affinityWait: a request given back by its worker's last connection (declined, or the worker died) goes to the idle worker before a younger one of its key that waited for that worker, and after one of a higher class", async () => {
  // A key that worker "a" ranks first, before "b" (rendezvous hashing, as
  // the hub's): both requests below wait for a while b idles.
  const score = (key: string, worker: string) =>
    mix32(hash32(key) ^ hash32(worker));
  let key = "";
  for (let i = 0; key === "" && i < 64; i++) {
    if (score(`m${i}`, "a") > score(`m${i}`, "b")) key = `m${i}`;
  }
  assert.notEqual(key, "");
  const cases = [
    { how: "declines", priority: "0", order: ["/first", "/second"] },
    { how: "dies", priority: "0", order: ["/first", "/second"] },
    // The queue's order: the higher class first, though it came later.
    { how: "declines", priority: "1", order: ["/second", "/first"] },
  ];
  for (const { how, priority, order } of cases) {
    await withHub(
      { affinityBy: "header:x-model", affinityWait: HANG, trustPriority: true },
      async (ctx) => {
        const hub = ctx.server.hub;
        // a: one scripted connection.
        const a = await RawSocket.connect(ctx.server.workerAddr.port);
        try {
          await a.write(encodeHandshake({ host: "hub", workerId: "a" }));
          assert.match((await a.readHead())!, /^HTTP\/1\.1 101/);
          await waitFor(() => hub.stats.idle === 1, "a attached");
          const log: string[] = [];
          ctx.add((req) => {
            log.push(new URL(req.url).pathname);
            return new Response(`b ${new URL(req.url).pathname}`);
          }, { workerId: "b" });
          await waitFor(() => hub.stats.idle === 2, "b attached");
          const send = (path: string, priority = "0") =>
            later(`${ctx.url}${path}`, {
              headers: { "x-model": key, "x-pothead-priority": priority },
            });
          const first = send("/first");
          assert.match((await a.readHead())!, /^GET \/first /);
          // a is busy, b idles: the later one waits for a.
          const second = send("/second", priority);
          await waitFor(() => hub.stats.pools[0].waiting === 1, "waiting");
          if (how === "declines") {
            // Without the park option: the hub closes the connection.
            await a.write(
              "HTTP/1.1 408 Request Timeout\r\nx-pothead-not-started: 1\r\n" +
                "content-length: 0\r\n\r\n",
            );
          } else a.close();
          // The one that goes first in the queue's order takes b, and the
          // other queues behind it (the one put back used to go last).
          assert.deepEqual(await text(first), [200, "b /first"]);
          assert.deepEqual(await text(second), [200, "b /second"]);
          assert.deepEqual(log, order, `${how}, class ${priority}`);
          assert.equal(hub.stats.retries, 1);
          assert.equal(hub.stats.affinityWaitTimeouts, 0);
        } finally {
          a.close();
        }
      },
    );
  }
});

Deno.test("affinityWait: a higher priority class queued after a waiting request goes first, unless a priorityStep has the waiting one due first", async () => {
  // Strict classes: the urgent request first. With 1 ms per class, one
  // that joined over 5 ms after the waiting one is due after it.
  for (
    const [step, order] of [[undefined, ["/urgent", "/w"]], [1, [
      "/w",
      "/urgent",
    ]]] as const
  ) {
    await withHub(
      {
        affinityBy: "header:x-model",
        affinityWait: HANG,
        trustPriority: true,
        priorityStep: step,
      },
      async (ctx) => {
        const t = await affinityPair(ctx);
        const hub = ctx.server.hub;
        const h1 = t.hold("/h1");
        const h2 = t.hold("/h2");
        try {
          const held = t.send("/h1", t.keyOf("a"));
          await waitFor(() => t.log.includes("a /h1"), "a busy");
          const waited = t.send("/w", t.keyOf("a"));
          await waitFor(() => t.pool().waiting === 1, "waiting for a");
          const other = t.send("/h2", t.keyOf("b"));
          await waitFor(() => t.log.includes("b /h2"), "b busy");
          await new Promise((r) => setTimeout(r, 50));
          const urgent = later(`${ctx.url}/urgent`, {
            headers: { "x-model": t.keyOf("b"), "x-pothead-priority": "5" },
          });
          await waitFor(() => hub.stats.queued === 1, "urgent queued");
          const plain = t.send("/plain", t.keyOf("b"));
          await waitFor(() => hub.stats.queued === 2, "plain queued");
          h1.resolve();
          assert.deepEqual(await text(held), [200, "a /h1"]);
          assert.deepEqual(await text(urgent), [200, "a /urgent"]);
          assert.deepEqual(await text(waited), [200, "a /w"]);
          assert.deepEqual(await text(plain), [200, "a /plain"]);
          assert.deepEqual(t.log, [
            "a /h1",
            "b /h2",
            ...order.map((path) => `a ${path}`),
            "a /plain",
          ]);
          h2.resolve();
          assert.deepEqual(await text(other), [200, "b /h2"]);
        } finally {
          h1.resolve();
          h2.resolve();
        }
      },
    );
  }
});

Deno.test("affinityWait: requests waiting for one worker are served in the queue's order: a higher class first, even one that waited less", async () => {
  await withHub(
    { affinityBy: "header:x-model", affinityWait: HANG, trustPriority: true },
    async (ctx) => {
      const t = await affinityPair(ctx);
      const h1 = t.hold("/h1");
      const h2 = t.hold("/h2");
      try {
        const held = t.send("/h1", t.keyOf("a"));
        await waitFor(() => t.log.includes("a /h1"), "a busy");
        const low = t.send("/w0", t.keyOf("a"));
        await waitFor(() => t.pool().waiting === 1, "w0 waiting");
        const high = later(`${ctx.url}/w5`, {
          headers: { "x-model": t.keyOf("a"), "x-pothead-priority": "5" },
        });
        await waitFor(() => t.pool().waiting === 2, "w5 waiting");
        const other = t.send("/h2", t.keyOf("b"));
        await waitFor(() => t.log.includes("b /h2"), "b busy");
        const mid = later(`${ctx.url}/q3`, {
          headers: { "x-model": t.keyOf("b"), "x-pothead-priority": "3" },
        });
        await waitFor(() => ctx.server.hub.stats.queued === 1, "q3 queued");
        h1.resolve();
        for (const p of [held, high, mid, low]) {
          assert.equal((await p).ok, true);
        }
        assert.deepEqual(t.log, [
          "a /h1",
          "b /h2",
          "a /w5",
          "a /q3",
          "a /w0",
        ]);
        h2.resolve();
        await (await other).text();
        for (const p of [held, high, mid, low]) await (await p).text();
      } finally {
        h1.resolve();
        h2.resolve();
      }
    },
  );
});

Deno.test("affinityWait: waiting requests count against maxQueue and maxQueuePerKey: past them a request goes to the next idle worker, and later ones are refused", async () => {
  await withHub(
    { affinityBy: "header:x-model", affinityWait: HANG, maxQueue: 2 },
    async (ctx) => {
      const t = await affinityPair(ctx);
      const hub = ctx.server.hub;
      const h1 = t.hold("/h1");
      const hb = t.hold("/b");
      try {
        const held = t.send("/h1", t.keyOf("a"));
        await waitFor(() => t.log.includes("a /h1"), "a busy");
        const w1 = t.send("/w1", t.keyOf("a"));
        const w2 = t.send("/w2", t.keyOf("a"));
        await waitFor(() => t.pool().waiting === 2, "two waiting");
        // A third would make three waiting for a queue of two: it goes to b.
        const third = t.send("/b", t.keyOf("a"));
        await waitFor(() => t.log.includes("b /b"), "third on b");
        assert.equal(t.pool().waiting, 2);
        // No slot idle, and two waiting: the queue is full.
        const refused = await t.send("/x", t.keyOf("b"));
        assert.equal(refused.status, 503);
        assert.match(await refused.text(), /is full/);
        assert.equal(hub.stats.rejectedFull, 1);
        h1.resolve();
        hb.resolve();
        for (const p of [held, w1, w2, third]) {
          assert.equal((await p).status, 200);
        }
        for (const p of [held, w1, w2, third]) await (await p).text();
      } finally {
        h1.resolve();
        hb.resolve();
      }
    },
  );
  await withHub(
    {
      affinityBy: "header:x-model",
      affinityWait: HANG,
      fairBy: "header:x-tenant",
      maxQueuePerKey: 1,
    },
    async (ctx) => {
      const t = await affinityPair(ctx);
      const h1 = t.hold("/h1");
      const hb = t.hold("/b");
      try {
        const held = t.send("/h1", t.keyOf("a"));
        await waitFor(() => t.log.includes("a /h1"), "a busy");
        const tenant = (path: string) =>
          later(`${ctx.url}${path}`, {
            headers: { "x-model": t.keyOf("a"), "x-tenant": "t1" },
          });
        const w1 = tenant("/w1");
        await waitFor(() => t.pool().waiting === 1, "one waiting");
        // Its tenant has one waiting already: the next goes to b.
        const second = tenant("/b");
        await waitFor(() => t.log.includes("b /b"), "second on b");
        assert.equal(t.pool().waiting, 1);
        // No slot idle now: its waiting one fills the tenant's place.
        const third = await tenant("/x");
        assert.equal(third.status, 429);
        await third.text();
        h1.resolve();
        hb.resolve();
        for (const p of [held, w1, second]) assert.equal((await p).status, 200);
        for (const p of [held, w1, second]) await (await p).text();
      } finally {
        h1.resolve();
        hb.resolve();
      }
    },
  );
});

Deno.test("affinityWait: no request waits for a worker whose token was withdrawn: those waiting go at once, new ones go to the next idle worker", async () => {
  const [tokenA, tokenB] = [
    "token-for-worker-a-0123456789",
    "token-for-worker-b-0123456789",
  ];
  await withHub(
    {
      affinityBy: "header:x-model",
      affinityWait: HANG,
      workerTokens: [tokenA, tokenB],
    },
    async (ctx) => {
      const t = await affinityPair(ctx, {
        a: { token: tokenA },
        b: { token: tokenB },
      });
      const hub = ctx.server.hub;
      const h1 = t.hold("/h1");
      try {
        const held = t.send("/h1", t.keyOf("a"));
        await waitFor(() => t.log.includes("a /h1"), "a busy");
        const waited = t.send("/w", t.keyOf("a"));
        await waitFor(() => t.pool().waiting === 1, "waiting");
        assert.equal(hub.setWorkerTokens([tokenB]), 1);
        assert.deepEqual(await text(waited), [200, "b /w"]);
        assert.deepEqual(await text(t.send("/n", t.keyOf("a"))), [200, "b /n"]);
        assert.equal(hub.stats.affinityWaits, 1);
        assert.equal(hub.stats.affinityWaitTimeouts, 0);
        h1.resolve();
        assert.deepEqual(await text(held), [200, "a /h1"]);
      } finally {
        h1.resolve();
      }
    },
  );
});

Deno.test("affinityWait: shutting down lets waiting requests go to idle workers at once", async () => {
  await withHub(
    { affinityBy: "header:x-model", affinityWait: HANG, shutdownGrace: HANG },
    async (ctx) => {
      const t = await affinityPair(ctx);
      const h1 = t.hold("/h1");
      try {
        const held = t.send("/h1", t.keyOf("a"));
        await waitFor(() => t.log.includes("a /h1"), "a busy");
        const waited = t.send("/w", t.keyOf("a"));
        await waitFor(() => t.pool().waiting === 1, "waiting");
        const draining = ctx.server.hub.shutdown(HANG);
        assert.deepEqual(await text(waited), [200, "b /w"]);
        // Let go, not timed out.
        assert.equal(ctx.server.hub.stats.affinityWaitTimeouts, 0);
        h1.resolve();
        assert.deepEqual(await text(held), [200, "a /h1"]);
        await draining;
      } finally {
        h1.resolve();
      }
    },
  );
});

Deno.test("affinityWait: a request waiting for a worker whose last connection closed under another gets 503 when the hub shuts down before that one came back, not a place in the emptied queue", async () => {
  // In-process, on in-memory connections: the consumer leaving and the
  // shutdown must fall between the close and the request coming back,
  // which are microtasks apart.
  const score = (key: string, worker: string) =>
    mix32(hash32(key) ^ hash32(worker));
  let key = "";
  for (let i = 0; key === "" && i < 64; i++) {
    if (score(`m${i}`, "a") > score(`m${i}`, "b")) key = `m${i}`;
  }
  const records: AccessRecord[] = [];
  const hub = new Hub({
    affinityBy: "header:x-model",
    affinityWait: HANG,
    // Where it queued, only this would answer it (with another outcome).
    queueTimeout: 2_000,
    pingInterval: 0,
    onAccess: (r) => records.push(r),
  });
  const ends: MemConn[] = [];
  const buf = new Uint8Array(4096);
  try {
    for (const workerId of ["a", "b"]) {
      const [hubEnd, end] = memPair();
      ends.push(end);
      await end.write(encodeHandshake({ host: "hub", workerId }));
      hub.addWorker(hubEnd);
      const n = await end.read(buf);
      assert.match(memText(buf.subarray(0, n ?? 0)), /^HTTP\/1\.1 101/);
    }
    await waitFor(() => hub.stats.idle === 2, "a and b attached");
    const leaving = new AbortController();
    const first = hub.fetch(
      new Request("http://hub/first", {
        headers: { "x-model": key, "x-request-id": "first" },
        signal: leaving.signal,
      }),
    );
    const n = await ends[0].read(buf);
    assert.match(memText(buf.subarray(0, n ?? 0)), /^GET \/first /);
    // a is busy, b idles: this one waits for a.
    const second = hub.fetch(
      new Request("http://hub/second", {
        headers: { "x-model": key, "x-request-id": "second" },
      }),
    );
    assert.equal(hub.stats.pools[0].waiting, 1);
    // The consumer of /first leaves: a's only connection is closed under
    // it; then the hub shuts down with no grace, at once.
    leaving.abort();
    const down = hub.shutdown(0);
    const res = await deadline(second, HANG, "/second answered");
    await res.body?.cancel();
    assert.equal(res.status, 503);
    assert.equal(
      records.find((r) => r.id === "second")?.outcome,
      "shutting-down",
    );
    await (await first).body?.cancel();
    await down;
  } finally {
    for (const end of ends) end.close();
    await hub.shutdown(0);
  }
});

Deno.test("affinityWait: a WebSocket handshake waiting when the hub starts to drain gets 503 without costing a worker connection", async () => {
  await withHub(
    { affinityBy: "ip", affinityWait: HANG, shutdownGrace: HANG },
    async (ctx) => {
      // Keyed by address, every request here ranks the same worker first.
      const gate = Promise.withResolvers<void>();
      const log: string[] = [];
      const named = (name: string) => async (req: Request) => {
        const path = new URL(req.url).pathname;
        log.push(`${name} ${path}`);
        if (path === "/hold") await gate.promise;
        return new Response(name);
      };
      ctx.add(named("a"), { workerId: "a" });
      ctx.add(named("b"), { workerId: "b" });
      await waitFor(() => ctx.server.hub.stats.idle === 2, "both attached");
      const hub = ctx.server.hub;
      try {
        const held = later(`${ctx.url}/hold`);
        await waitFor(() => log.length === 1, "first busy");
        const ws = new WebSocket(`${ctx.url.replace("http", "ws")}/ws`);
        const closed = new Promise<void>((resolve) => {
          ws.onerror = () => {};
          ws.onclose = () => resolve();
        });
        await waitFor(
          () => hub.stats.pools[0].waiting === 1,
          "handshake waiting",
        );
        const draining = hub.shutdown(HANG);
        await closed;
        assert.equal(ws.readyState, WebSocket.CLOSED);
        // The idle worker never saw it, and still has its connection.
        assert.deepEqual(log, [log[0]]);
        assert.equal(hub.stats.idle, 1);
        gate.resolve();
        assert.equal((await held).status, 200);
        await (await held).text().catch(() => {});
        await draining;
      } finally {
        gate.resolve();
      }
    },
  );
});

Deno.test("affinityWait: under a backlog a freed slot takes the oldest queued request its worker ranks first, passing the head over for at most the wait; not in a fair pool", async () => {
  for (const fair of [false, true]) {
    await withHub(
      {
        affinityBy: "header:x-model",
        affinityWait: HANG,
        fairBy: fair ? "header:x-tenant" : undefined,
      },
      async (ctx) => {
        const t = await affinityPair(ctx);
        const hub = ctx.server.hub;
        const h1 = t.hold("/h1");
        const h2 = t.hold("/h2");
        try {
          const held1 = t.send("/h1", t.keyOf("a"));
          const held2 = t.send("/h2", t.keyOf("b"));
          await waitFor(() => t.log.length === 2, "both busy");
          const q1 = t.send("/q1", t.keyOf("a"));
          await waitFor(() => hub.stats.queued === 1, "q1 queued");
          const q2 = t.send("/q2", t.keyOf("b"));
          await waitFor(() => hub.stats.queued === 2, "q2 queued");
          // b frees: it takes q2, its own key's, over q1 (a's) at the head;
          // in a fair pool, the head.
          h2.resolve();
          await waitFor(() => t.log.length >= 3, "b took one");
          assert.equal(t.log[2], fair ? "b /q1" : "b /q2");
          assert.equal(hub.stats.affinityPicks, fair ? 0 : 1);
          h1.resolve();
          for (const p of [held1, held2, q1, q2]) {
            assert.equal((await p).status, 200);
            await (await p).text();
          }
        } finally {
          h1.resolve();
          h2.resolve();
        }
      },
    );
  }
  // The head is passed over for at most the wait: then the next slot to
  // free takes it, whatever its key.
  await withHub(
    { affinityBy: "header:x-model", affinityWait: 200 },
    async (ctx) => {
      const t = await affinityPair(ctx);
      const hub = ctx.server.hub;
      const gates = ["/h1", "/h2", "/q2"].map((path) => t.hold(path));
      try {
        const held1 = t.send("/h1", t.keyOf("a"));
        const held2 = t.send("/h2", t.keyOf("b"));
        await waitFor(() => t.log.length === 2, "both busy");
        const q1 = t.send("/q1", t.keyOf("a"));
        await waitFor(() => hub.stats.queued === 1, "q1 queued");
        const q2 = t.send("/q2", t.keyOf("b"));
        await waitFor(() => hub.stats.queued === 2, "q2 queued");
        gates[1].resolve();
        await waitFor(() => t.log.includes("b /q2"), "b took q2");
        const q3 = t.send("/q3", t.keyOf("b"));
        await waitFor(() => hub.stats.queued === 2, "q3 queued");
        // q1 was first passed over when b freed; past the wait, b takes it.
        await new Promise((r) => setTimeout(r, 300));
        gates[2].resolve();
        await waitFor(() => t.log.length >= 4, "b took the next");
        assert.equal(t.log[3], "b /q1");
        gates[0].resolve();
        for (const p of [held1, held2, q1, q2, q3]) {
          assert.equal((await p).status, 200);
          await (await p).text();
        }
      } finally {
        for (const gate of gates) gate.resolve();
      }
    },
  );
});

Deno.test("affinityWait: a pool sets its own; bad values are refused by name", async () => {
  // The hub's wait is long, the pool's none: the request goes to b at once.
  await withHub(
    {
      affinityBy: "header:x-model",
      affinityWait: HANG,
      pools: { default: { affinityWait: 0 } },
    },
    async (ctx) => {
      const t = await affinityPair(ctx);
      const h1 = t.hold("/h1");
      try {
        const held = t.send("/h1", t.keyOf("a"));
        await waitFor(() => t.log.includes("a /h1"), "a busy");
        assert.deepEqual(await text(t.send("/w", t.keyOf("a"))), [200, "b /w"]);
        assert.equal(ctx.server.hub.stats.affinityWaits, 0);
        h1.resolve();
        assert.deepEqual(await text(held), [200, "a /h1"]);
      } finally {
        h1.resolve();
      }
    },
  );
  assert.throws(
    () => new Hub({ affinityWait: -1 }),
    /Invalid option "affinityWait"/,
  );
  assert.throws(
    () =>
      new Hub({ pools: { gpu: { affinityWait: "5" as unknown as number } } }),
    /Invalid option "pools\.gpu\.affinityWait"/,
  );
});

// Several workers with chosen ids, and keys chosen by how they rank them.
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// A key whose ranking over `ids` starts with `order`.
function keyRanking(ids: string[], order: string[]): string {
  for (let i = 0; i < 100000; i++) {
    const k = `m${i}`;
    const h = hash32(k);
    const ranked = [...ids].sort((x, y) =>
      mix32(h ^ hash32(y)) - mix32(h ^ hash32(x))
    );
    if (order.every((id, j) => ranked[j] === id)) return k;
  }
  throw new Error("no key");
}

async function affinityHub(
  options: Partial<ServeHubOptions>,
  ids: string[],
  fn: (t: {
    server: HubServer;
    log: string[];
    hold: (p: string) => PromiseWithResolvers<void>;
    send: (
      p: string,
      key: string | null,
      headers?: Record<string, string>,
    ) => Promise<Response>;
    add: (id: string, o?: WorkerOptions) => WorkerHandle;
  }) => Promise<void>,
  workerOpts: Record<string, WorkerOptions> = {},
) {
  const server = serveHub({
    hostname: "127.0.0.1",
    port: 0,
    workerPort: 0,
    shutdownGrace: 500,
    queueTimeout: HANG,
    ...options,
  });
  const workers: WorkerHandle[] = [];
  const gates = new Map<string, PromiseWithResolvers<void>>();
  const log: string[] = [];
  const add = (id: string, o: WorkerOptions = {}) => {
    const w = connectWorker(async (req: Request) => {
      const path = new URL(req.url).pathname;
      log.push(`${id} ${path}`);
      await gates.get(path)?.promise;
      return new Response(`${id} ${path}`);
    }, {
      hostname: "127.0.0.1",
      port: server.workerAddr.port,
      minBackoff: 10,
      maxBackoff: 100,
      workerId: id,
      ...o,
    });
    workers.push(w);
    return w;
  };
  const url = `http://127.0.0.1:${server.addr.port}`;
  // Every request sent, answered and read before the hub goes.
  const sent: Promise<Response>[] = [];
  const send = (
    path: string,
    key: string | null,
    headers: Record<string, string> = {},
  ) => {
    const p = fetch(url + path, {
      headers: key === null ? headers : { "x-model": key, ...headers },
    });
    p.catch(() => {});
    sent.push(p);
    return p;
  };
  const hold = (path: string) => {
    const g = Promise.withResolvers<void>();
    gates.set(path, g);
    return g;
  };
  try {
    for (const id of ids) {
      const n = server.hub.stats.idle;
      add(id, workerOpts[id]);
      await waitFor(() => server.hub.stats.idle === n + 1, `${id} attached`);
    }
    await deadline(fn({ server, log, hold, send, add }), HANG * 2, "body");
  } finally {
    for (const g of gates.values()) g.resolve();
    await Promise.all(
      // A body a test read is locked (and done).
      sent.map((p) =>
        p.then((r) => r.body?.locked ? undefined : r.body?.cancel(), () => {})
      ),
    );
    for (const w of workers) w.close();
    await Promise.all(workers.map((w) => w.finished));
    await server.shutdown();
  }
}

Deno.test("affinityWait: a request waiting for a worker goes before a younger queued request that worker would pick, even behind an older head", async () => {
  const ids = ["a", "b", "c"];
  const ka = keyRanking(ids, ["a"]);
  const kb = keyRanking(ids, ["b"]);
  const kc = keyRanking(ids, ["c"]);
  await affinityHub(
    { affinityBy: "header:x-model", affinityWait: 2000 },
    ids,
    async (t) => {
      const hub = t.server.hub;
      const pool = () => hub.stats.pools.find((p) => p.name === "default")!;
      const h1 = t.hold("/h1");
      t.hold("/h2");
      t.hold("/h3");
      const rs: Promise<Response>[] = [];
      rs.push(t.send("/h1", ka), t.send("/h2", kb));
      await waitFor(() => t.log.length === 2, "a, b busy");
      rs.push(t.send("/z", kb)); // c idle: z waits for b
      await waitFor(() => pool().waiting === 1, "z waits");
      await sleep(1000);
      rs.push(t.send("/x", ka)); // c idle: x waits for a
      await waitFor(() => pool().waiting === 2, "x waits");
      rs.push(t.send("/h3", kc));
      await waitFor(() => t.log.includes("c /h3"), "c busy");
      await waitFor(
        () => hub.stats.queued === 1 && pool().waiting === 1,
        "z's wait ran out, z queued; x still waits",
      );
      rs.push(t.send("/y", ka));
      await waitFor(() => hub.stats.queued === 2, "y queued");
      h1.resolve();
      await waitFor(() => t.log.length >= 4, "a took one");
      assert.equal(t.log[3], "a /x", "x waited for a before y arrived");
    },
  );
});

for (const fair of [false, true]) {
  Deno.test(
    `affinityWait: a freed slot of another worker takes a request waiting for its worker before a younger queued one of that worker's keys${
      fair ? " (fair pool)" : ""
    }`,
    async () => {
      const ids = ["a", "b"];
      const ka = keyRanking(ids, ["a"]);
      const kb = keyRanking(ids, ["b"]);
      await affinityHub(
        {
          affinityBy: "header:x-model",
          affinityWait: HANG,
          ...(fair ? { fairBy: "header:x-user" as const } : {}),
        },
        ids,
        async (t) => {
          const hub = t.server.hub;
          const pool = () => hub.stats.pools.find((p) => p.name === "default")!;
          const h1 = t.hold("/h1");
          const h2 = t.hold("/h2");
          t.hold("/x");
          const rs = [t.send("/h1", ka)];
          await waitFor(() => t.log.length === 1, "a busy");
          rs.push(t.send("/x", ka, { "x-user": "u" })); // b idle: x waits for a
          await waitFor(() => pool().waiting === 1, "x waits");
          rs.push(t.send("/h2", kb));
          await waitFor(() => t.log.length === 2, "b busy");
          rs.push(t.send("/y", ka, { "x-user": "u" })); // none idle: y queues
          await waitFor(() => hub.stats.queued === 1, "y queued");
          // b frees: a's key starts cold there whichever goes, so x, which
          // came first, does; y keeps its place and gets a.
          h2.resolve();
          await waitFor(() => t.log.length === 3, "b took one");
          assert.equal(t.log[2], "b /x");
          assert.equal(pool().waiting, 0);
          assert.equal(hub.stats.queued, 1);
          h1.resolve();
          await waitFor(() => t.log.length === 4, "a took y");
          assert.equal(t.log[3], "a /y");
        },
      );
    },
  );
}

Deno.test("affinityWait: a head passed over keeps its clock while a higher class goes first: past the wait it is taken", async () => {
  const ids = ["a", "b"];
  const ka = keyRanking(ids, ["a"]);
  const kb = keyRanking(ids, ["b"]);
  await affinityHub(
    { affinityBy: "header:x-model", affinityWait: 300, trustPriority: true },
    ids,
    async (t) => {
      const hub = t.server.hub;
      t.hold("/h1");
      const h2 = t.hold("/h2");
      const q2 = t.hold("/q2");
      const p = t.hold("/p");
      t.send("/h1", ka);
      t.send("/h2", kb);
      await waitFor(() => t.log.length === 2, "a, b busy");
      t.send("/q1", ka);
      await waitFor(() => hub.stats.queued === 1, "q1");
      t.send("/q2", kb);
      await waitFor(() => hub.stats.queued === 2, "q2");
      t.send("/q3", kb);
      await waitFor(() => hub.stats.queued === 3, "q3");
      h2.resolve(); // b frees: passes q1 over (its clock starts), takes q2
      await waitFor(() => t.log.includes("b /q2"), "b /q2");
      t.send("/p", null, { "x-pothead-priority": "1" });
      await waitFor(() => hub.stats.queued === 3, "p");
      await sleep(400);
      q2.resolve(); // b takes p, the class-1 head
      await waitFor(() => t.log.includes("b /p"), "b /p");
      p.resolve(); // q1 is head again, passed over since > 300 ms
      await waitFor(() => t.log.length >= 5, "b took the next");
      assert.equal(
        t.log[4],
        "b /q1",
        "q1 was passed over for more than the wait",
      );
    },
  );
});

Deno.test("affinityWait: a worker whose token was withdrawn ranks again once a connection with a valid token joins it, for requests already queued", async () => {
  const ids = ["a", "b", "c"];
  const ka = keyRanking(ids, ["a", "b", "c"]);
  const kb = keyRanking(ids, ["b"]);
  const kc = keyRanking(ids, ["c"]);
  const tA = "token-aaaaaaaa", tB = "token-bbbbbbbb", tA2 = "token-aaaaaaa2";
  await affinityHub(
    {
      affinityBy: "header:x-model",
      affinityWait: HANG,
      workerTokens: [tA, tB],
    },
    ids,
    async (t) => {
      const hub = t.server.hub;
      t.hold("/h1");
      t.hold("/h2");
      const h3 = t.hold("/h3");
      t.hold("/q3");
      t.send("/h1", ka);
      t.send("/h2", kb);
      t.send("/h3", kc);
      await waitFor(() => t.log.length === 3, "a, b, c busy");
      t.send("/q1", kb);
      await waitFor(() => hub.stats.queued === 1, "q1");
      t.send("/q2", ka);
      await waitFor(() => hub.stats.queued === 2, "q2");
      t.send("/q3", kc);
      await waitFor(() => hub.stats.queued === 3, "q3");
      assert.equal(hub.setWorkerTokens([tB, tA2]), 1);
      h3.resolve(); // c frees: takes q3, having ranked q2 (a leaving) for b
      await waitFor(() => t.log.includes("c /q3"), "c /q3");
      t.add("a", { token: tA2 }); // a's new instance joins group a while the old one is busy
      await waitFor(() => t.log.length >= 5, "new a took one");
      assert.equal(t.log[4], "a /q2", "q2's key ranks a first again");
    },
    {
      a: { token: "token-aaaaaaaa" },
      b: { token: "token-bbbbbbbb" },
      c: { token: "token-bbbbbbbb" },
    },
  );
});

Deno.test("affinityWait: a worker that joins and ranks first for a waiting request's key takes it over; the others keep waiting for theirs", async () => {
  const ids = ["a", "b"];
  // x ranks c first, then a; y ranks a first whoever joins.
  const kx = keyRanking(["a", "b", "c"], ["c", "a"]);
  const ky = keyRanking(["a", "b", "c"], ["a"]);
  await affinityHub(
    { affinityBy: "header:x-model", affinityWait: HANG },
    ids,
    async (t) => {
      const hub = t.server.hub;
      const pool = () => hub.stats.pools.find((p) => p.name === "default")!;
      const h1 = t.hold("/h1");
      t.send("/h1", ky);
      await waitFor(() => t.log.length === 1, "a busy");
      t.send("/x", kx); // b idle: x waits for a
      t.send("/y", ky); // and y too
      await waitFor(() => pool().waiting === 2, "x and y wait");
      const hits = hub.stats.affinityHits;
      t.add("c");
      await waitFor(() => t.log.includes("c /x"), "c took x over");
      assert.equal(pool().waiting, 1, "y still waits for a");
      assert.equal(hub.stats.affinityWaitTimeouts, 0);
      assert.equal(hub.stats.affinityHits, hits + 1);
      h1.resolve();
      await waitFor(() => t.log.includes("a /y"), "a took y");
      assert.equal(pool().waiting, 0);
      assert.ok(!t.log.some((l) => l.startsWith("b ")), `b idle: ${t.log}`);
    },
  );
});

Deno.test("affinityWait: the queue timeout bounds a wait too: past it the request takes an idle slot after all", async () => {
  const ids = ["a", "b"];
  const ka = keyRanking(ids, ["a"]);
  await affinityHub(
    { affinityBy: "header:x-model", affinityWait: HANG, queueTimeout: 300 },
    ids,
    async (t) => {
      const hub = t.server.hub;
      const pool = () => hub.stats.pools.find((p) => p.name === "default")!;
      const h1 = t.hold("/h1");
      t.send("/h1", ka);
      await waitFor(() => t.log.length === 1, "a busy");
      const x = t.send("/x", ka); // b idle: x waits for a, up to 300 ms
      await waitFor(() => pool().waiting === 1, "x waits");
      assert.deepEqual(await text(x), [200, "b /x"]);
      assert.equal(hub.stats.affinityWaitTimeouts, 1);
      assert.equal(hub.stats.timedOutQueued, 0);
      h1.resolve();
    },
  );
});
