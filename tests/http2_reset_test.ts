// HTTP/2 uploads through the hub from a raw h2c client: request trailers,
// and resets in the middle of an upload at a worker and while queued.

import assert from "node:assert/strict";
import type { AccessRecord, HubServer } from "../hub.ts";
import { startHub, startWorker } from "./_hub.ts";
import { waitFor } from "./_wait.ts";
import { RawH2, requestHead } from "./_h2_raw.ts";

const HANG = 20_000;

const post = (path: string, extra: [string, string][] = []) =>
  requestHead("POST", path, extra);

function gauges(server: HubServer) {
  const s = server.hub.stats;
  return {
    queued: s.queued,
    busy: s.busy,
    idle: s.idle,
    requestBuffered: s.requestBuffered,
    responseBuffered: s.responseBuffered,
  };
}

async function atRest(server: HubServer, idle: number): Promise<void> {
  await waitFor(() => {
    const g = gauges(server);
    return g.queued === 0 && g.busy === 0 && g.idle === idle &&
      g.requestBuffered === 0 && g.responseBuffered === 0;
  }, "gauges at rest").catch((e) => {
    throw new Error(`${e.message}: ${JSON.stringify(gauges(server))}`);
  });
}

Deno.test({
  name:
    "h2 uploads: trailers end a body of unknown length; a reset mid-upload at the worker and while queued frees the worker and every gauge",
  fn: async () => {
    const access: AccessRecord[] = [];
    const server = startHub({
      queueTimeout: HANG,
      requestBuffer: 64 * 1024,
      onAccess: (r) => access.push(r),
    });
    const hold = Promise.withResolvers<void>();
    const ends: string[] = [];
    const worker = startWorker(server, async (req) => {
      const path = new URL(req.url).pathname;
      if (path === "/hold") {
        await hold.promise;
        return new Response("held");
      }
      let n = 0;
      try {
        for await (const c of req.body!) n += c.length;
        ends.push(`${path}:${n}`);
      } catch (e) {
        ends.push(`${path}:error ${(e as Error).name}`);
        throw e;
      }
      return new Response(`read ${n}`);
    }, { concurrency: 1 });
    const h2 = await RawH2.connect(server.addr.port);
    try {
      await waitFor(() => server.hub.stats.idle === 1, "worker connected");
      await h2.windowUpdate(0, 2 ** 30);
      // Trailers end a body of unknown length.
      const t = await h2.request(post("/trailers"), false);
      for (let i = 0; i < 3; i++) {
        await h2.data(t, new Uint8Array(1000).fill(i), false);
      }
      await h2.trailers(t, [["x-checksum", "abc"]]);
      assert.equal(await h2.status(t, HANG), 200);
      await waitFor(() => ends.includes("/trailers:3000"), "trailers body");

      // A reset mid-upload while a worker reads it.
      const up = await h2.request(post("/up"), false);
      await h2.data(up, new Uint8Array(16 * 1024), false);
      await waitFor(() => server.hub.stats.busy === 1, "upload at the worker");
      await h2.data(up, new Uint8Array(16 * 1024), false);
      await h2.reset(up);
      await waitFor(() => ends.some((e) => e.startsWith("/up:")), "worker saw");
      await atRest(server, 1);

      // A reset mid-upload while queued, its body read ahead.
      const held = await h2.request(post("/hold"), true);
      await waitFor(() => server.hub.stats.busy === 1, "held");
      const q = await h2.request(post("/queued"), false);
      // Frames of at most 16 KiB (the default SETTINGS_MAX_FRAME_SIZE).
      await h2.data(q, new Uint8Array(16 * 1024), false);
      await h2.data(q, new Uint8Array(16 * 1024), false);
      await waitFor(
        () =>
          server.hub.stats.queued === 1 &&
          server.hub.stats.requestBuffered > 0,
        "queued upload read ahead",
      );
      await h2.reset(q);
      await waitFor(
        () =>
          server.hub.stats.queued === 0 &&
          server.hub.stats.requestBuffered === 0,
        "queued upload gone",
      ).catch((e) => {
        throw new Error(`${e.message}: ${JSON.stringify(gauges(server))}`);
      });
      hold.resolve();
      assert.equal(await h2.status(held, HANG), 200);
      await atRest(server, 1);
      // The connection still serves.
      const next = await h2.request(post("/next"), true);
      assert.equal(await h2.status(next, HANG), 200);
      await atRest(server, 1);
      assert.ok(
        !ends.some((e) => e.startsWith("/queued")),
        "never reached a worker",
      );
    } finally {
      hold.resolve();
      h2.close();
      await h2.done;
      worker.close();
      await worker.finished;
      await server.shutdown();
    }
  },
});
