// Fair queuing at the hub (fairBy, maxQueuePerKey): a real hub on loopback
// and an in-process worker with one slot, held by a first request until the
// test releases it, so that the order the queue serves is the order the
// worker sees. Requests are held with promises, never with sleeps.

import assert from "node:assert/strict";
import {
  type AccessRecord,
  Hub,
  type HubLogRecord,
  type HubServer,
  serveHub,
  type ServeHubOptions,
} from "../hub.ts";
import type { WorkerHandle } from "../worker.ts";
import { deadline, waitFor } from "./_relay.ts";
import { connectWorker } from "./_hub.ts";

const HANG = 15_000;

interface Ctx {
  server: HubServer;
  url: string;
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
  try {
    await deadline(
      fn({ server, url: `http://127.0.0.1:${server.addr.port}` }),
      HANG * 2,
      "test body",
    );
  } finally {
    await server.shutdown();
  }
}

/** A request to send: its path, fields, and the address it comes from. */
interface Ask {
  path: string;
  headers?: Record<string, string>;
  // Sent through hub.fetch with this remoteAddr instead of over a socket.
  ip?: string;
  signal?: AbortSignal;
}

function send(ctx: Ctx, ask: Ask): Promise<Response> {
  const init = { headers: ask.headers, signal: ask.signal };
  const p = ask.ip === undefined
    ? fetch(`${ctx.url}${ask.path}`, init)
    : ctx.server.hub.fetch(new Request(`http://hub${ask.path}`, init), {
      remoteAddr: { hostname: ask.ip },
    });
  p.catch(() => {});
  return p;
}

/**
 * A worker with one slot that records the paths it serves and holds the
 * first request until released; a request with `?ms=N` takes N ms.
 */
class HeldWorker {
  served: string[] = [];
  #hold = Promise.withResolvers<void>();
  #entered = Promise.withResolvers<void>();
  #worker: WorkerHandle;

  constructor(ctx: Ctx) {
    this.#worker = connectWorker(async (req) => {
      const url = new URL(req.url);
      const path = url.pathname + url.search;
      this.served.push(path);
      if (this.served.length === 1) {
        this.#entered.resolve();
        await this.#hold.promise;
      }
      const ms = Number(url.searchParams.get("ms") ?? 0);
      if (ms > 0) await new Promise((resolve) => setTimeout(resolve, ms));
      return new Response(path);
    }, {
      hostname: "127.0.0.1",
      port: ctx.server.workerAddr.port,
      concurrency: 1,
      minBackoff: 10,
      maxBackoff: 100,
    });
  }

  /**
   * Waits for the slot, then sends `first` and waits until it is held; its
   * response comes once released (in an object: an async function would
   * wait for a promise it returns).
   */
  async hold(ctx: Ctx, first: Ask): Promise<{ held: Promise<Response> }> {
    await waitFor(() => ctx.server.hub.stats.idle === 1, "the slot");
    const held = send(ctx, first);
    await deadline(this.#entered.promise, HANG, "the held request");
    return { held };
  }

  release(): void {
    this.#hold.resolve();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.release();
    this.#worker.close();
    await this.#worker.finished;
  }
}

/** Sends `asks` one by one, each queued before the next. */
async function queue(ctx: Ctx, asks: Ask[]): Promise<Promise<Response>[]> {
  const hub = ctx.server.hub;
  const base = hub.stats.queued;
  const sent: Promise<Response>[] = [];
  for (const [i, ask] of asks.entries()) {
    sent.push(send(ctx, ask));
    await waitFor(
      () => hub.stats.queued === base + i + 1,
      `${ask.path} queued`,
    );
  }
  return sent;
}

/**
 * Holds the slot with `first`, queues `rest`, releases, and returns the
 * order the worker served the queued requests in (each answered 200).
 */
async function servedOrder(
  ctx: Ctx,
  first: Ask,
  rest: Ask[],
  whileQueued?: () => void,
): Promise<string[]> {
  await using worker = new HeldWorker(ctx);
  const { held } = await worker.hold(ctx, first);
  const sent = await queue(ctx, rest);
  whileQueued?.();
  worker.release();
  assert.equal((await held).status, 200);
  await (await held).text();
  for (const [i, p] of sent.entries()) {
    const res = await p;
    assert.deepEqual([res.status, await res.text()], [200, rest[i].path]);
  }
  return worker.served.slice(1);
}

const tenant = (name: string) => ({ "x-tenant": name });

/** A queued by 4 (the first one held at the worker), then B by 2. */
const fourThenTwo: Ask[] = [
  { path: "/a2", headers: tenant("A") },
  { path: "/a3", headers: tenant("A") },
  { path: "/a4", headers: tenant("A") },
  { path: "/b1", headers: tenant("B") },
  { path: "/b2", headers: tenant("B") },
];

Deno.test("fair queuing by header: tenant B's requests go in turn with A's, not behind all of them", async () => {
  // Without fairBy: first come, first served.
  await withHub({}, async (ctx) => {
    const order = await servedOrder(
      ctx,
      { path: "/a1", headers: tenant("A") },
      fourThenTwo,
    );
    assert.deepEqual(order, ["/a2", "/a3", "/a4", "/b1", "/b2"]);
  });
  await withHub({ fairBy: "header:X-Tenant" }, async (ctx) => {
    const hub = ctx.server.hub;
    const order = await servedOrder(
      ctx,
      { path: "/a1", headers: tenant("A") },
      fourThenTwo,
      () => {
        const pool = hub.stats.pools.find((p) => p.name === "default")!;
        assert.equal(pool.queued, 5);
        assert.equal(pool.keys, 2, "two tenants waiting");
      },
    );
    assert.deepEqual(order, ["/a2", "/b1", "/a3", "/b2", "/a4"]);
    assert.equal(hub.stats.pools[0].keys, 0, "no key left once served");
  });
});

Deno.test("fair queuing by header: a missing or empty field is one shared key", async () => {
  await withHub({ fairBy: "header:x-tenant" }, async (ctx) => {
    const order = await servedOrder(ctx, { path: "/hold" }, [
      { path: "/none1" },
      { path: "/empty1", headers: tenant("") },
      { path: "/none2" },
      { path: "/c1", headers: tenant("C") },
    ]);
    assert.deepEqual(order, ["/none1", "/c1", "/empty1", "/none2"]);
  });
});

Deno.test("fair queuing by ip: the consumer's address is the key", async () => {
  await withHub({ fairBy: "ip" }, async (ctx) => {
    const order = await servedOrder(ctx, { path: "/hold", ip: "10.0.0.1" }, [
      { path: "/a1", ip: "10.0.0.1" },
      { path: "/a2", ip: "10.0.0.1" },
      { path: "/a3", ip: "10.0.0.1" },
      { path: "/b1", ip: "10.0.0.2" },
      { path: "/c1", ip: "2001:db8::3" },
      // An IPv6 consumer is its /64: another address in it is the same key.
      { path: "/c2", ip: "2001:db8:0:0:ffff::9" },
      { path: "/d1", ip: "2001:db8:0:1::3" },
      // An IPv4-mapped address is the IPv4 consumer.
      { path: "/b2", ip: "::ffff:10.0.0.2" },
      // A forwarded address counts for nothing without trustForwarded.
      {
        path: "/a4",
        ip: "10.0.0.1",
        headers: { "x-forwarded-for": "9.9.9.9" },
      },
    ]);
    assert.deepEqual(order, [
      "/a1",
      "/b1",
      "/c1",
      "/d1",
      "/a2",
      "/b2",
      "/c2",
      "/a3",
      "/a4",
    ]);
  });
});

Deno.test("fair queuing by ip with trustForwarded: the key is the address the proxy in front saw", async () => {
  const via = (chain: string) => ({ "x-forwarded-for": chain });
  // Over loopback every request comes from 127.0.0.1: the last address in
  // X-Forwarded-For (the proxy's word) is the key; what comes before it is
  // the consumer's own and cannot split one consumer into several.
  const asks: Ask[] = [
    { path: "/a1", headers: via("10.0.0.1") },
    { path: "/a2", headers: via("1.1.1.1, 10.0.0.1") },
    { path: "/a3", headers: via("2.2.2.2,10.0.0.1") },
    { path: "/b1", headers: via("10.0.0.2") },
    { path: "/direct1" },
    // Some proxies add the consumer's port: the address is the key.
    { path: "/a4", headers: via("10.0.0.1:51234") },
    { path: "/c1", headers: via("[2001:db8::3]:443") },
    { path: "/c2", headers: via("2001:db8::3") },
  ];
  await withHub({ fairBy: "ip", trustForwarded: true }, async (ctx) => {
    const order = await servedOrder(ctx, { path: "/hold" }, asks);
    assert.deepEqual(order, [
      "/a1",
      "/b1",
      "/direct1",
      "/c1",
      "/a2",
      "/c2",
      "/a3",
      "/a4",
    ]);
  });
  // Without trust, all of them are 127.0.0.1: one key, first come first
  // served.
  await withHub({ fairBy: "ip" }, async (ctx) => {
    const order = await servedOrder(ctx, { path: "/hold" }, asks);
    assert.deepEqual(order, asks.map((a) => a.path));
  });
});

Deno.test("fair queuing by ip with trustedProxies: from a trusted peer, the last address no trusted proxy's; from another, the peer", async () => {
  const via = (ip: string, chain: string): Partial<Ask> => ({
    ip,
    headers: { "x-forwarded-for": chain },
  });
  // 10.0.0.0/8 are the proxies (a CDN and a balancer); 198.51.100.x are
  // consumers.
  const asks: Ask[] = [
    { path: "/a1", ...via("10.0.0.1", "198.51.100.1") },
    // Through both proxies; what the consumer wrote first never counts.
    { path: "/a2", ...via("10.0.0.1", "6.6.6.6, 198.51.100.1, 10.9.9.9") },
    { path: "/b1", ...via("10.0.0.1", "198.51.100.2, 10.9.9.9") },
    // Not from a proxy: the peer, whatever it writes.
    { path: "/c1", ...via("198.51.100.3", "198.51.100.1") },
    { path: "/c2", ...via("198.51.100.3", "198.51.100.2") },
    { path: "/a3", ...via("10.0.0.2", "198.51.100.1:4431") },
  ];
  await withHub(
    { fairBy: "ip", trustedProxies: ["10.0.0.0/8"] },
    async (ctx) => {
      const order = await servedOrder(ctx, { path: "/hold" }, asks);
      assert.deepEqual(order, ["/a1", "/b1", "/c1", "/a2", "/c2", "/a3"]);
    },
  );
});

Deno.test("a forwarded entry that is not an address never becomes the consumer: not in the access log, X-Pothead-Client or a handler's remoteAddr", async () => {
  for (
    const options of [
      { trustForwarded: true },
      { trustedProxies: ["127.0.0.1"] },
    ]
  ) {
    const clients: (string | null)[] = [];
    const seen: [string | null, string][] = [];
    await withHub({
      ...options,
      onAccess: (r) => void clients.push(r.client),
    }, async (ctx) => {
      const worker = connectWorker((req, info) => {
        seen.push([
          req.headers.get("x-pothead-client"),
          info.remoteAddr.hostname,
        ]);
        return new Response("ok");
      }, { hostname: "127.0.0.1", port: ctx.server.workerAddr.port });
      try {
        await waitFor(() => ctx.server.hub.stats.idle > 0, "the worker");
        for (const chain of ['198.51.100.1, x"y z', "unknown", "fe80::1%a b"]) {
          const res = await fetch(`${ctx.url}/`, {
            headers: { "x-forwarded-for": chain },
          });
          assert.equal(await res.text(), "ok");
        }
        await waitFor(() => clients.length === 3, "three access records");
      } finally {
        worker.close();
        await worker.finished;
      }
    });
    const name = JSON.stringify(options);
    assert.deepEqual(clients, Array(3).fill("127.0.0.1"), name);
    assert.deepEqual(seen, Array(3).fill([null, "127.0.0.1"]), name);
  }
});

Deno.test('forwardedField "forwarded": the consumer from Forwarded\'s for= (the last with trustForwarded), never text that is no address; X-Forwarded-For unread', async () => {
  const requests: [Record<string, string>, string][] = [
    [
      { forwarded: 'for=6.6.6.6, for="[2001:db8::1]:80";proto=https' },
      "2001:db8::1",
    ],
    [{ forwarded: "for=198.51.100.1, for=unknown" }, "127.0.0.1"],
    [{ forwarded: "for=198.51.100.1, for=_hidden" }, "127.0.0.1"],
    [{ forwarded: 'for="' }, "127.0.0.1"],
    [{ forwarded: "for=198.51.100.1;for=198.51.100.2" }, "127.0.0.1"],
    [{ "x-forwarded-for": "198.51.100.9" }, "127.0.0.1"],
  ];
  for (
    const options of [
      { trustForwarded: true },
      { trustedProxies: ["127.0.0.1"] },
    ]
  ) {
    const clients: (string | null)[] = [];
    const seen: [string | null, string][] = [];
    await withHub({
      ...options,
      forwardedField: "forwarded",
      onAccess: (r) => void clients.push(r.client),
    }, async (ctx) => {
      const worker = connectWorker((req, info) => {
        seen.push([req.headers.get("forwarded"), info.remoteAddr.hostname]);
        return new Response("ok");
      }, { hostname: "127.0.0.1", port: ctx.server.workerAddr.port });
      try {
        await waitFor(() => ctx.server.hub.stats.idle > 0, "the worker");
        for (const [headers] of requests) {
          const res = await fetch(`${ctx.url}/`, { headers });
          assert.equal(await res.text(), "ok");
        }
        await waitFor(
          () => clients.length === requests.length,
          "the access records",
        );
      } finally {
        worker.close();
        await worker.finished;
      }
      const name = JSON.stringify(options);
      const expected = requests.map(([, client]) => client);
      assert.deepEqual(clients, expected, name);
      assert.deepEqual(seen.map(([, remote]) => remote), expected, name);
      // The hub's element ends the Forwarded it sends (the peer trusted).
      const host = `"${new URL(ctx.url).host}"`;
      assert.equal(
        seen[0][0],
        `${requests[0][0].forwarded}, for=127.0.0.1;proto=http;host=${host}`,
      );
      assert.equal(seen[5][0], `for=127.0.0.1;proto=http;host=${host}`);
    });
  }
});

Deno.test('forwardedField: anything but "x-forwarded-for" or "forwarded" is refused by name', async () => {
  for (const bad of ["Forwarded", "x-real-ip", ""]) {
    assert.throws(
      () =>
        new Hub({
          forwardedField: bad as "forwarded",
          trustedProxies: ["10.0.0.0/8"],
        }),
      new RegExp(
        `Invalid option "forwardedField": expected "x-forwarded-for" or "forwarded", got "${bad}"`,
      ),
    );
  }
  for (const field of ["x-forwarded-for", "forwarded"] as const) {
    await new Hub({ forwardedField: field }).shutdown(0);
  }
});

Deno.test("trustedProxies: a bad range, or with trustForwarded too, is refused by name", () => {
  assert.throws(
    () => new Hub({ trustedProxies: ["10.0.0.0/33"] }),
    /Invalid option "trustedProxies": Invalid address range "10.0.0.0\/33"/,
  );
  assert.throws(
    () => new Hub({ trustedProxies: "10.0.0.0/8" as unknown as string[] }),
    /Invalid option "trustedProxies": expected an array/,
  );
  assert.throws(
    () => new Hub({ trustedProxies: ["::1"], trustForwarded: true }),
    /"trustedProxies" names the proxies to trust, "trustForwarded" trusts every peer/,
  );
  // An empty list names no proxy: trustForwarded alone decides.
  const hub = new Hub({ trustedProxies: [], trustForwarded: true });
  return hub.shutdown(0);
});

Deno.test('fair queuing by a function of the request; one that throws puts the request in the key "" and is logged', async () => {
  const logs: HubLogRecord[] = [];
  await withHub({
    fairBy: (req, ip) => {
      const user = new URL(req.url).searchParams.get("user");
      if (user === "bad") throw new Error("no such user");
      return `${user}@${ip}`;
    },
    onLog: (r) => void logs.push(r),
  }, async (ctx) => {
    const order = await servedOrder(ctx, {
      path: "/hold?user=a",
      ip: "10.0.0.1",
    }, [
      { path: "/1?user=a", ip: "10.0.0.1" },
      { path: "/2?user=a", ip: "10.0.0.1" },
      { path: "/3?user=a", ip: "10.0.0.2" },
      { path: "/4?user=bad", ip: "10.0.0.1" },
      { path: "/5?user=bad", ip: "10.0.0.2" },
      { path: "/6?user=b", ip: "10.0.0.1" },
    ]);
    // Keys a@10.0.0.1, a@10.0.0.2, "" (both failures) and b@10.0.0.1.
    assert.deepEqual(order, [
      "/1?user=a",
      "/3?user=a",
      "/4?user=bad",
      "/6?user=b",
      "/2?user=a",
      "/5?user=bad",
    ]);
  });
  assert.ok(
    logs.some((r) =>
      r.level === "warn" && /fairBy function failed/.test(r.msg)
    ),
    "the failure is logged",
  );
});

Deno.test("maxQueuePerKey: a key with that many queued gets 429 with Retry-After at once; other keys still queue", async () => {
  const records: AccessRecord[] = [];
  await withHub({
    fairBy: "header:x-tenant",
    maxQueuePerKey: 2,
    onAccess: (r) => void records.push(r),
  }, async (ctx) => {
    const hub = ctx.server.hub;
    await using worker = new HeldWorker(ctx);
    const { held } = await worker.hold(ctx, {
      path: "/a1",
      headers: tenant("A"),
    });
    const queued = await queue(ctx, [
      { path: "/a2", headers: tenant("secret-A") },
      { path: "/a3", headers: tenant("secret-A") },
    ]);
    const refused = await send(ctx, {
      path: "/a4",
      headers: tenant("secret-A"),
    });
    assert.equal(refused.status, 429);
    assert.equal(refused.headers.get("retry-after"), "1");
    assert.equal(refused.headers.get("x-pothead-error"), "1");
    assert.match(refused.headers.get("content-type") ?? "", /^text\/plain/);
    const body = await refused.text();
    assert.match(body, /too many requests of this consumer/);
    assert.doesNotMatch(body, /secret/, "the key is not echoed");
    assert.equal(hub.stats.queued, 2, "the refused request never queued");
    assert.equal(hub.stats.rejectedKeyFull, 1);
    assert.equal(hub.stats.rejectedFull, 0);
    // Another key queues; the held key A (its one request at the worker)
    // has none queued.
    queued.push(
      ...await queue(ctx, [
        { path: "/b1", headers: tenant("B") },
        { path: "/b2", headers: tenant("B") },
        { path: "/a5", headers: tenant("A") },
      ]),
    );
    const b3 = await send(ctx, { path: "/b3", headers: tenant("B") });
    assert.equal(b3.status, 429);
    await b3.body?.cancel();
    worker.release();
    assert.equal((await held).status, 200);
    await (await held).body?.cancel();
    for (const p of queued) {
      const res = await p;
      assert.equal(res.status, 200);
      await res.body?.cancel();
    }
    assert.deepEqual(worker.served.slice(1), [
      "/a2",
      "/b1",
      "/a5",
      "/a3",
      "/b2",
    ]);
    // Once its requests went, the key may queue again.
    await waitFor(() => hub.stats.idle === 1, "the slot back");
    const again = await send(ctx, { path: "/a6", headers: tenant("secret-A") });
    assert.equal(again.status, 200);
    await again.body?.cancel();
  });
  const refused = records.filter((r) => r.status === 429);
  assert.deepEqual(
    refused.map((r) => [r.path, r.outcome, r.workerMs]),
    [["/a4", "key-full", -1], ["/b3", "key-full", -1]],
  );
});

Deno.test("maxQueuePerKey counts every class of the pool, and only when no worker is idle", async () => {
  await withHub({
    fairBy: "header:x-tenant",
    pools: { default: { maxQueuePerKey: 1 } },
    routes: [{ pool: "default", pathPrefix: "/urgent/", priority: 5 }],
  }, async (ctx) => {
    await using worker = new HeldWorker(ctx);
    // The held request found the slot idle: never counted.
    const { held } = await worker.hold(ctx, {
      path: "/a1",
      headers: tenant("A"),
    });
    const [a2] = await queue(ctx, [{ path: "/a2", headers: tenant("A") }]);
    const urgent = await send(ctx, {
      path: "/urgent/a3",
      headers: tenant("A"),
    });
    assert.equal(urgent.status, 429, "a higher class of the same key");
    await urgent.body?.cancel();
    worker.release();
    for (const p of [held, a2]) {
      const res = await p;
      assert.equal(res.status, 200);
      await res.body?.cancel();
    }
  });
});

Deno.test("fair queuing: a consumer that leaves is removed from its key; a key whose last request leaves leaves the rotation", async () => {
  await withHub({ fairBy: "header:x-tenant" }, async (ctx) => {
    const hub = ctx.server.hub;
    const leaveA = new AbortController();
    const leaveB = new AbortController();
    await using worker = new HeldWorker(ctx);
    const { held } = await worker.hold(ctx, {
      path: "/hold",
      headers: tenant("A"),
    });
    const sent = await queue(ctx, [
      { path: "/a1", headers: tenant("A") },
      { path: "/a2", headers: tenant("A"), signal: leaveA.signal },
      { path: "/b1", headers: tenant("B"), signal: leaveB.signal },
      { path: "/a3", headers: tenant("A") },
    ]);
    assert.equal(hub.stats.pools[0].keys, 2);
    leaveB.abort();
    await waitFor(() => hub.stats.queued === 3, "b1 removed");
    assert.equal(hub.stats.pools[0].keys, 1, "B left the rotation");
    leaveA.abort();
    await waitFor(() => hub.stats.queued === 2, "a2 removed");
    const [c1] = await queue(ctx, [{ path: "/c1", headers: tenant("C") }]);
    worker.release();
    for (const p of [held, sent[0], sent[3], c1]) {
      const res = await p;
      assert.equal(res.status, 200);
      await res.body?.cancel();
    }
    for (const p of [sent[1], sent[2]]) {
      await assert.rejects(p, (e: Error) => e.name === "AbortError");
    }
    assert.deepEqual(worker.served.slice(1), ["/a1", "/c1", "/a3"]);
    assert.equal(hub.stats.abandoned, 2);
  });
});

Deno.test("fair queuing: priority classes stay strict above it, and each class serves its keys in turn", async () => {
  await withHub({
    fairBy: "header:x-tenant",
    routes: [{ pool: "default", pathPrefix: "/urgent/", priority: 10 }],
  }, async (ctx) => {
    const order = await servedOrder(
      ctx,
      { path: "/a1", headers: tenant("A") },
      [
        { path: "/a2", headers: tenant("A") },
        { path: "/a3", headers: tenant("A") },
        { path: "/urgent/b1", headers: tenant("B") },
        { path: "/urgent/a4", headers: tenant("A") },
        { path: "/b2", headers: tenant("B") },
        { path: "/urgent/a5", headers: tenant("A") },
      ],
      () => {
        const pool = ctx.server.hub.stats.pools[0];
        assert.equal(pool.keys, 2, "distinct keys over both classes");
        assert.deepEqual(
          pool.classes.map((c) => [c.priority, c.queued]),
          [[10, 3], [0, 3]],
        );
      },
    );
    assert.deepEqual(order, [
      "/urgent/b1",
      "/urgent/a4",
      "/urgent/a5",
      "/a2",
      "/b2",
      "/a3",
    ]);
  });
});

Deno.test("fair queuing: each request still times out on its own deadline", async () => {
  await withHub({
    fairBy: "header:x-tenant",
    queueTimeout: 300,
  }, async (ctx) => {
    const hub = ctx.server.hub;
    await using worker = new HeldWorker(ctx);
    const { held } = await worker.hold(ctx, { path: "/hold" });
    const start = performance.now();
    const sent = await queue(ctx, [
      { path: "/a1", headers: tenant("A") },
      { path: "/b1", headers: tenant("B") },
      { path: "/a2", headers: tenant("A") },
    ]);
    for (const p of sent) {
      const res = await p;
      assert.equal(res.status, 503);
      assert.match(await res.text(), /waited 300 ms in the queue/);
    }
    assert.ok(performance.now() - start >= 290, "not before the deadline");
    assert.equal(hub.stats.timedOutQueued, 3);
    assert.equal(hub.stats.queued, 0);
    assert.equal(hub.stats.pools[0].keys, 0);
    worker.release();
    await (await held).body?.cancel();
  });
});

Deno.test("a pool's fairBy overrides the hub's, and null turns it off for that pool", async () => {
  const asks: Ask[] = [
    { path: "/x/a1", headers: tenant("A") },
    { path: "/x/a2", headers: tenant("A") },
    { path: "/x/b1", headers: tenant("B") },
  ];
  await withHub({
    fairBy: "header:x-tenant",
    pools: { default: { fairBy: null } },
  }, async (ctx) => {
    const order = await servedOrder(ctx, { path: "/hold" }, asks);
    assert.deepEqual(order, ["/x/a1", "/x/a2", "/x/b1"]);
  });
  await withHub({
    pools: { default: { fairBy: "header:x-tenant" } },
  }, async (ctx) => {
    const order = await servedOrder(ctx, { path: "/hold" }, asks);
    assert.deepEqual(order, ["/x/a1", "/x/b1", "/x/a2"]);
  });
});

Deno.test('fairShare "time": a tenant whose jobs run longer gets fewer turns; "requests" gives it as many', async () => {
  // A's jobs take 500 ms, B's next to nothing: by time, B's three go after
  // A's first (A has then used 500 ms, B almost none), however slow the
  // machine, as long as B's three take under 500 ms in all.
  const asks: Ask[] = [
    { path: "/a1?ms=500", headers: tenant("A") },
    { path: "/a2?ms=500", headers: tenant("A") },
    { path: "/b1", headers: tenant("B") },
    { path: "/b2", headers: tenant("B") },
    { path: "/b3", headers: tenant("B") },
  ];
  await withHub(
    { fairBy: "header:x-tenant", fairShare: "time" },
    async (ctx) => {
      const order = await servedOrder(ctx, { path: "/hold" }, asks);
      assert.deepEqual(order, [
        "/a1?ms=500",
        "/b1",
        "/b2",
        "/b3",
        "/a2?ms=500",
      ]);
    },
  );
  // Per pool, and in turn.
  await withHub({
    fairBy: "header:x-tenant",
    fairShare: "time",
    pools: { default: { fairShare: "requests" } },
  }, async (ctx) => {
    const order = await servedOrder(ctx, { path: "/hold" }, asks);
    assert.deepEqual(order, [
      "/a1?ms=500",
      "/b1",
      "/a2?ms=500",
      "/b2",
      "/b3",
    ]);
  });
});

Deno.test("fairWeights in turns: a key of weight 2 gets two turns to another's one", async () => {
  const asks: Ask[] = ["a1", "a2", "a3", "a4", "b1", "b2", "b3"].map((p) => ({
    path: `/${p}`,
    headers: tenant(p[0].toUpperCase()),
  }));
  await withHub({
    fairBy: "header:x-tenant",
    fairWeights: { A: 2 },
  }, async (ctx) => {
    const order = await servedOrder(ctx, { path: "/hold" }, asks);
    // A and B alternate while they have used as much (a tie goes to the
    // key served longer ago), each turn costing A a half: a1 (A 0.5), b1
    // (B 1), a2 (A 1), b2 (B 2), a3, a4 (A 2), b3.
    assert.deepEqual(order, ["/a1", "/b1", "/a2", "/b2", "/a3", "/a4", "/b3"]);
  });
});

Deno.test("fairWeights: a key of weight 10 gets ten times the worker time of a key of weight 1", async () => {
  // Jobs of 100 ms each. After a1 and b1, A has been charged 10 ms and B
  // 100: A's next three go first (A reaches about 40), then b2.
  const asks: Ask[] = [
    { path: "/a1?ms=100", headers: tenant("A") },
    { path: "/a2?ms=100", headers: tenant("A") },
    { path: "/a3?ms=100", headers: tenant("A") },
    { path: "/a4?ms=100", headers: tenant("A") },
    { path: "/b1?ms=100", headers: tenant("B") },
    { path: "/b2?ms=100", headers: tenant("B") },
  ];
  await withHub({
    fairBy: "header:x-tenant",
    fairShare: "time",
    fairWeights: { A: 10 },
  }, async (ctx) => {
    const order = await servedOrder(ctx, { path: "/hold" }, asks);
    assert.deepEqual(order, [
      "/a1?ms=100",
      "/b1?ms=100",
      "/a2?ms=100",
      "/a3?ms=100",
      "/a4?ms=100",
      "/b2?ms=100",
    ]);
  });
});

Deno.test('fairShare "time": a tenant with a long request running does not bank its run time as a lead over the tenants served meanwhile', async () => {
  await withHub(
    { fairBy: "header:x-tenant", fairShare: "time" },
    async (ctx) => {
      // Two slots: k's long request holds one; a and b queue for the
      // other, 10 ms a job.
      const release = Promise.withResolvers<void>();
      const served: string[] = [];
      const worker = connectWorker(async (req) => {
        if (new URL(req.url).pathname === "/long") {
          await release.promise;
          return new Response("long");
        }
        served.push(req.headers.get("x-tenant")!);
        await new Promise((resolve) => setTimeout(resolve, 10));
        return new Response("ok");
      }, {
        hostname: "127.0.0.1",
        port: ctx.server.workerAddr.port,
        concurrency: 2,
      });
      try {
        const hub = ctx.server.hub;
        await waitFor(() => hub.stats.idle === 2, "two slots");
        // Through hub.fetch: a request is queued when the call returns.
        const go = (path: string, t: string) =>
          send(ctx, { path, headers: tenant(t), ip: "10.0.0.1" }).then((r) =>
            r.text()
          );
        const long = go("/long", "k");
        await waitFor(() => hub.stats.idle === 1, "the long request running");
        const all: Promise<string>[] = [];
        for (let i = 0; i < 30; i++) all.push(go("/a", "a"), go("/b", "b"));
        await waitFor(() => served.length >= 30, "a and b served a while");
        const from = served.length;
        for (let i = 0; i < 10; i++) all.push(go("/k", "k"));
        await Promise.all(all);
        // k takes its turns with a and b (by the clock), not its ten first
        // (its account still at the estimate of the long request).
        const next = served.slice(from, from + 9).join("");
        assert.ok(
          (next.match(/k/g) ?? []).length <= 4,
          `served after k queued: ${next}`,
        );
        release.resolve();
        assert.equal(await long, "long");
      } finally {
        release.resolve();
        await worker.close();
      }
    },
  );
});

Deno.test("fairBy and maxQueuePerKey are checked at construction", () => {
  const make = (options: Partial<ServeHubOptions>) => () =>
    serveHub({ port: 0, workerPort: 0, ...options }).shutdown();
  for (const fairBy of ["IP", "header:", "header:x tenant", "cookie:a", 5]) {
    assert.throws(
      make({ fairBy: fairBy as "ip" }),
      /Invalid option "fairBy": expected "ip", "header:NAME" \(NAME a field name\) or a function, got /,
      JSON.stringify(fairBy),
    );
  }
  assert.throws(
    make({ pools: { gpu: { fairBy: "tenant" as "ip" } } }),
    /Invalid option "pools.gpu.fairBy": expected "ip"/,
  );
  assert.throws(
    make({ maxQueuePerKey: 5 }),
    /Invalid option "maxQueuePerKey": it limits each fair-queuing key, and no pool has fairBy/,
  );
  assert.throws(
    make({ pools: { gpu: { maxQueuePerKey: 5 } } }),
    /Invalid option "pools.gpu.maxQueuePerKey": it limits each fair-queuing key, and pool "gpu" has no fairBy/,
  );
  assert.throws(
    make({
      fairBy: "ip",
      pools: { gpu: { fairBy: null, maxQueuePerKey: 5 } },
    }),
    /Invalid option "pools.gpu.maxQueuePerKey": .* pool "gpu" has no fairBy/,
  );
  for (const n of [0, -1, NaN]) {
    assert.throws(
      make({ fairBy: "ip", maxQueuePerKey: n }),
      /Invalid option "maxQueuePerKey": expected a number >= 1/,
    );
  }
  assert.throws(
    make({ fairBy: "ip", pools: { gpu: { maxQueuePerKey: 0 } } }),
    /Invalid option "pools.gpu.maxQueuePerKey": expected a number >= 1/,
  );
  // Counts of requests are whole numbers (Infinity: no limit).
  for (
    const [options, name] of [
      [{ fairBy: "ip", maxQueuePerKey: 2.5 }, "maxQueuePerKey"],
      [
        { fairBy: "ip", pools: { gpu: { maxQueuePerKey: 1.5 } } },
        "pools.gpu.maxQueuePerKey",
      ],
      [{ maxQueue: 0.5 }, "maxQueue"],
      [{ pools: { gpu: { maxQueue: 10.1 } } }, "pools.gpu.maxQueue"],
      [{ maxRetries: 1.5 }, "maxRetries"],
    ] as [Partial<ServeHubOptions>, string][]
  ) {
    assert.throws(
      make(options),
      new RegExp(`Invalid option "${name}": expected a whole number >= \\d`),
      name,
    );
  }
  make({ fairBy: "ip", maxQueuePerKey: Infinity, maxQueue: Infinity })();
  for (const fairShare of ["turns", "", null, 1]) {
    assert.throws(
      make({ fairBy: "ip", fairShare: fairShare as "time" }),
      /Invalid option "fairShare": expected "requests" or "time", got /,
    );
  }
  assert.throws(
    make({ fairShare: "time" }),
    /Invalid option "fairShare": it shares the workers between fair-queuing keys, and no pool has fairBy/,
  );
  assert.throws(
    make({ pools: { gpu: { fairShare: "time" } } }),
    /Invalid option "pools.gpu.fairShare": .* pool "gpu" has no fairBy/,
  );
  assert.throws(
    make({ fairBy: "ip", pools: { gpu: { fairShare: "x" as "time" } } }),
    /Invalid option "pools.gpu.fairShare": expected "requests" or "time"/,
  );
  make({ pools: { gpu: { fairBy: "ip", fairShare: "time" } } })();
  // Weights: positive numbers by key, where a pool shares by time.
  for (const weights of [[], "a=2", null, 5]) {
    assert.throws(
      make({
        fairBy: "ip",
        fairShare: "time",
        fairWeights: weights as unknown as Record<string, number>,
      }),
      /Invalid option "fairWeights": expected an object of key names to weights, got /,
    );
  }
  for (const weight of [0, -1, NaN, Infinity, "2"]) {
    assert.throws(
      make({
        fairBy: "ip",
        fairShare: "time",
        fairWeights: { a: weight as number },
      }),
      /Invalid option "fairWeights": the weight of "a" must be a number above 0, got /,
    );
  }
  assert.throws(
    make({ fairWeights: { a: 2 } }),
    /Invalid option "fairWeights": it weighs fair-queuing keys, and no pool has fairBy/,
  );
  assert.throws(
    make({
      pools: { gpu: { fairBy: "ip", fairWeights: { a: 2 } } },
      fairWeights: { b: 3 },
    }),
    /Invalid option "fairWeights": .*no pool has fairBy \(without weights of its own\)/,
  );
  assert.throws(
    make({ pools: { gpu: { fairWeights: { a: 2 } } } }),
    /Invalid option "pools.gpu.fairWeights": it weighs fair-queuing keys, and pool "gpu" has no fairBy/,
  );
  make({ fairBy: "ip", fairWeights: { a: 2 } })();
  assert.throws(
    make({
      fairBy: "ip",
      fairShare: "time",
      pools: { gpu: { fairWeights: { a: 0 } } },
    }),
    /Invalid option "pools.gpu.fairWeights": the weight of "a"/,
  );
  make({
    fairBy: "ip",
    pools: {
      gpu: { fairShare: "time", fairWeights: { a: 2, constructor: 3 } },
    },
  })();
  make({ fairBy: "ip", fairShare: "time", fairWeights: { "10.0.0.1": 0.5 } })();
});

Deno.test("maxQueuePerKey hub-wide applies to the pools with fairBy only", async () => {
  await withHub({
    maxQueuePerKey: 1,
    routes: [{ pool: "gpu", pathPrefix: "/gpu/" }],
    pools: { gpu: { fairBy: "header:x-tenant" } },
  }, async (ctx) => {
    const hub = ctx.server.hub;
    // Neither pool has a worker: every request queues (or is refused).
    const leave = new AbortController();
    const sent = await queue(
      ctx,
      ["/d1", "/d2", "/d3", "/gpu/1", "/gpu/2"].map((path) => ({
        path,
        headers: tenant(path === "/gpu/2" ? "B" : "A"),
        signal: leave.signal,
      })),
    );
    const pools = () =>
      Object.fromEntries(
        hub.stats.pools.map((p) => [p.name, [p.queued, p.keys]]),
      );
    assert.deepEqual(pools(), { default: [3, 0], gpu: [2, 2] });
    const refused = await send(ctx, { path: "/gpu/3", headers: tenant("A") });
    assert.equal(refused.status, 429);
    await refused.body?.cancel();
    leave.abort();
    for (const p of sent) await assert.rejects(p);
    await waitFor(() => hub.stats.queued === 0, "the consumers gone");
    assert.deepEqual(pools(), { default: [0, 0], gpu: [0, 0] });
  });
});
