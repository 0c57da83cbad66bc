// HTTP/2 uploads of unknown length (no content-length, which h2 allows and
// HTTP/1.1 cannot have without transfer-encoding) through the hub, from a
// raw h2c client that controls each frame.

import assert from "node:assert/strict";
import type { AccessRecord } from "../hub.ts";
import { startHub, startWorker } from "./_hub.ts";
import { deadline, waitFor } from "./_wait.ts";
import { RawH2 } from "./_h2_raw.ts";

const HANG = 20_000;

Deno.test({
  name:
    "an h2 upload of unknown length whose first byte never comes gets the upload idle timeout's 408, never reaching a worker",
  fn: async () => {
    const access: AccessRecord[] = [];
    const server = startHub({
      uploadIdleTimeout: 300,
      queueTimeout: HANG,
      onAccess: (r) => access.push(r),
    });
    let reached = 0;
    const worker = startWorker(server, async (req) => {
      reached++;
      await req.arrayBuffer();
      return new Response("read");
    });
    const h2 = await RawH2.connect(server.addr.port);
    try {
      await waitFor(
        () => server.hub.stats.pools[0]?.idle === 1,
        "worker connected",
      );
      // HEADERS without END_STREAM and without a length, then nothing.
      const id = await h2.request([
        [":method", "POST"],
        [":scheme", "http"],
        [":authority", "localhost"],
        [":path", "/silent"],
      ], false);
      const status = await deadline(h2.status(id, HANG), HANG, "answer");
      assert.equal(status, 408, "the upload idle timeout's answer");
      assert.equal(access.length, 1);
      assert.equal(access[0].outcome, "upload-timeout");
      // The connection serves the next stream.
      const next = await h2.request([
        [":method", "GET"],
        [":scheme", "http"],
        [":authority", "localhost"],
        [":path", "/next"],
      ], true);
      assert.equal(await h2.status(next, HANG), 200);
      assert.equal(reached, 1, "only the second stream reached the worker");
    } finally {
      h2.close();
      await h2.done;
      worker.close();
      await worker.finished;
      await server.shutdown();
    }
  },
});
