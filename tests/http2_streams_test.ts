// Streams of one HTTP/2 connection through the hub, from a raw h2c client
// that controls each frame: a stream whose reader gives no flow-control
// credit must not stall the others; resets at each stage free what they
// held; many streams past the queue's limits get the right refusals.

import assert from "node:assert/strict";
import type { AccessRecord, HubServer } from "../hub.ts";
import { startHub, startWorker } from "./_hub.ts";
import { deadline, waitFor } from "./_wait.ts";
import { RawH2, requestHead } from "./_h2_raw.ts";

const HANG = 20_000;
const MiB = 1024 * 1024;

const get = (path: string, extra: [string, string][] = []) =>
  requestHead("GET", path, extra);

function settled(server: HubServer): boolean {
  const s = server.hub.stats;
  return s.queued === 0 && s.busy === 0 && s.responseBuffered === 0 &&
    s.requestBuffered === 0 && s.idle === s.slots && s.slots > 0;
}

function gauges(server: HubServer): string {
  const s = server.hub.stats;
  return JSON.stringify({
    queued: s.queued,
    busy: s.busy,
    idle: s.idle,
    slots: s.slots,
    responseBuffered: s.responseBuffered,
    requestBuffered: s.requestBuffered,
  });
}

Deno.test({
  name:
    "h2: a stream given no flow-control credit does not stall another on the same connection; reset, it frees its worker and every gauge",
  fn: async () => {
    const access: AccessRecord[] = [];
    const server = startHub({
      queueTimeout: HANG,
      responseBuffer: 256 * 1024,
      onAccess: (r) => access.push(r),
    });
    let aborted = 0;
    const worker = startWorker(server, (req) => {
      const n = Number(new URL(req.url).searchParams.get("n"));
      req.signal.addEventListener("abort", () => aborted++);
      let sent = 0;
      return new Response(
        new ReadableStream<Uint8Array>({
          pull(c) {
            if (sent >= n) return c.close();
            const k = Math.min(64 * 1024, n - sent);
            sent += k;
            c.enqueue(new Uint8Array(k).fill(7));
          },
        }),
      );
    }, { concurrency: 2 });
    const h2 = await RawH2.connect(server.addr.port);
    try {
      await waitFor(() => server.hub.stats.idle === 2, "worker connected");
      // Plenty of connection credit; stream credit only where given.
      await h2.windowUpdate(0, 2 ** 30);
      const slow = await h2.request(get(`/slow?n=${8 * MiB}`), true);
      const fast = await h2.request(get(`/fast?n=${8 * MiB}`), true);
      await h2.windowUpdate(fast, 2 ** 30);
      await deadline(
        h2.waitFrame((f) =>
          f.stream === fast && (f.flags & 1) === 1 &&
          f.type === 0, HANG),
        HANG,
        "the fast stream's end",
      );
      assert.equal(h2.received(fast).bytes, 8 * MiB);
      assert.ok(h2.received(slow).bytes <= 65_535);
      assert.ok(!h2.received(slow).ended);
      // The slow stream holds its worker (its response is larger than the
      // buffer); reset, it lets go of everything.
      await h2.reset(slow);
      await waitFor(() => settled(server), "gauges back to rest").catch(
        (e) => {
          throw new Error(`${e.message}: ${gauges(server)}`);
        },
      );
      await waitFor(() => access.length === 2, "both access records");
      const outcomes = access.map((r) => `${r.path}:${r.outcome}`).sort();
      assert.deepEqual(outcomes.length, 2, outcomes.join());
      // The connection still serves.
      const after = await h2.request(get("/after?n=10"), true);
      await h2.windowUpdate(after, 2 ** 20);
      assert.equal(await h2.status(after, HANG), 200);
    } finally {
      h2.close();
      await h2.done;
      worker.close();
      await worker.finished;
      await server.shutdown();
    }
  },
});
