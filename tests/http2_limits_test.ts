// Many streams of one HTTP/2 connection past the queue's limits, and a
// shutdown with streams at a worker and queued, from a raw h2c client.

import assert from "node:assert/strict";
import type { AccessRecord } from "../hub.ts";
import { startHub, startWorker } from "./_hub.ts";
import { deadline, waitFor } from "./_wait.ts";
import { GOAWAY, RawH2, requestHead } from "./_h2_raw.ts";

const HANG = 20_000;

const get = (path: string, extra: [string, string][] = []) =>
  requestHead("GET", path, extra);

Deno.test({
  name:
    "h2: streams of one connection past maxQueue and maxQueuePerKey get 503 and 429 at once while earlier streams wait; all finish after",
  fn: async () => {
    const access: AccessRecord[] = [];
    const server = startHub({
      queueTimeout: HANG,
      maxQueue: 3,
      fairBy: "header:x-tenant",
      maxQueuePerKey: 2,
      onAccess: (r) => access.push(r),
    });
    const release = Promise.withResolvers<void>();
    const worker = startWorker(server, async (req) => {
      if (new URL(req.url).pathname === "/hold") await release.promise;
      return new Response("ok " + new URL(req.url).pathname);
    });
    const h2 = await RawH2.connect(server.addr.port);
    try {
      await waitFor(() => server.hub.stats.idle === 1, "worker connected");
      const hold = await h2.request(get("/hold"), true);
      await waitFor(() => server.hub.stats.busy === 1, "held at the worker");
      const a1 = await h2.request(get("/a1", [["x-tenant", "a"]]), true);
      const a2 = await h2.request(get("/a2", [["x-tenant", "a"]]), true);
      await waitFor(() => server.hub.stats.queued === 2, "a1, a2 queued");
      const a3 = await h2.request(get("/a3", [["x-tenant", "a"]]), true);
      assert.equal(await h2.status(a3, HANG), 429);
      const b1 = await h2.request(get("/b1", [["x-tenant", "b"]]), true);
      await waitFor(() => server.hub.stats.queued === 3, "b1 queued");
      const b2 = await h2.request(get("/b2", [["x-tenant", "b"]]), true);
      assert.equal(await h2.status(b2, HANG), 503);
      // A burst past both limits at once.
      const burst: number[] = [];
      for (let i = 0; i < 40; i++) {
        burst.push(
          await h2.request(
            get(`/c${i}`, [["x-tenant", i % 2 ? "a" : "c"]]),
            true,
          ),
        );
      }
      const statuses = await Promise.all(burst.map((s) => h2.status(s, HANG)));
      // Tenant a is at its limit (429); c fits nowhere (503: queue full).
      for (let i = 0; i < 40; i++) {
        assert.equal(statuses[i], i % 2 ? 429 : 503, `stream /c${i}`);
      }
      assert.equal(server.hub.stats.queued, 3);
      release.resolve();
      for (const s of [hold, a1, a2, b1]) {
        assert.equal(await h2.status(s, HANG), 200);
      }
      await waitFor(
        () => server.hub.stats.busy === 0 && server.hub.stats.queued === 0,
        "at rest",
      );
    } finally {
      release.resolve();
      h2.close();
      await h2.done;
      worker.close();
      await worker.finished;
      await server.shutdown();
    }
  },
});

Deno.test({
  name:
    "h2 shutdown: GOAWAY; the queued stream and the one whose worker does not answer within the grace both get the hub's 503 when it ends; the connection then closes",
  fn: async () => {
    const access: AccessRecord[] = [];
    const server = startHub({
      queueTimeout: HANG,
      shutdownGrace: 600,
      onAccess: (r) => access.push(r),
    });
    const release = Promise.withResolvers<void>();
    let started = 0;
    const worker = startWorker(server, async (req) => {
      started++;
      if (new URL(req.url).pathname === "/hold") await release.promise;
      return new Response("ok");
    });
    const h2 = await RawH2.connect(server.addr.port);
    try {
      await waitFor(() => server.hub.stats.idle === 1, "worker connected");
      const held = await h2.request(get("/hold"), true);
      await waitFor(() => server.hub.stats.busy === 1, "held");
      const queued = await h2.request(get("/queued"), true);
      await waitFor(() => server.hub.stats.queued === 1, "queued");
      const stopping = server.shutdown();
      const goaway = await deadline(
        h2.waitFrame((f) => f.type === GOAWAY, HANG),
        HANG,
        "GOAWAY",
      );
      assert.ok(goaway !== null, "GOAWAY sent");
      // The held one is cut at the grace's end (its worker never answers
      // in time); the queued one gets the hub's 503.
      assert.equal(await h2.status(queued, HANG), 503);
      await deadline(stopping, HANG, "shutdown");
      await h2.done;
      // The held one's worker never answered within the grace: the hub's
      // 503 too, and both are recorded so.
      assert.equal(await h2.status(held, 100), 503);
      assert.deepEqual(
        access.map((r) => `${r.path}:${r.status}:${r.outcome}`).sort(),
        ["/hold:503:shutting-down", "/queued:503:shutting-down"],
      );
      assert.equal(started, 1);
    } finally {
      release.resolve();
      h2.close();
      await h2.done;
      worker.close();
      await worker.finished;
      await server.shutdown();
    }
  },
});
