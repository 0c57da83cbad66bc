/**
 * The hub's queue under churn and abuse: queue timeouts and FIFO order
 * across retries, and what the hub holds after consumers and workers
 * misbehave. Workers here are in-memory connections given to a `Hub`, or
 * raw sockets, so each step happens exactly when the test says; nothing
 * asserts on how long anything took, only on order and counts.
 */

import assert from "node:assert/strict";
import { type AccessRecord, Hub } from "../hub.ts";
import { HubMetrics } from "../_metrics.ts";
import { bytes, type MemConn, memPair, readHead } from "./_memconn.ts";
import { waitFor } from "./_wait.ts";

const NOT_STARTED = "HTTP/1.1 408 Request Timeout\r\n" +
  "X-Pothead-Not-Started: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

Deno.test("a declined request put back in the queue does not hold back the queue timeout of an older one", async () => {
  // "slow" arrives first but its small body takes a while, so it joins the
  // queue while "fast", which arrived later, is at a worker. The worker
  // declines "fast" and leaves; with no worker left both time out, "slow"
  // first: its deadline is 300 ms earlier.
  const hub = new Hub({ queueTimeout: 2000, handshakeWait: 0 });
  const [hubEnd, worker] = memPair();
  try {
    hub.addWorker(hubEnd, "w");
    await waitFor(() => hub.stats.idle === 1, "worker idle");
    let send!: ReadableStreamDefaultController<Uint8Array>;
    const body = new ReadableStream<Uint8Array>({ start: (c) => send = c });
    const settled: string[] = [];
    const slow = hub.fetch(
      new Request("http://hub/slow", {
        method: "POST",
        headers: { "content-length": "2" },
        body,
      }),
    ).then((r) => (settled.push("slow"), r));
    await new Promise((r) => setTimeout(r, 300));
    const fast = hub.fetch(new Request("http://hub/fast"))
      .then((r) => (settled.push("fast"), r));
    assert.match(await readHead(worker), /^GET \/fast /);
    send.enqueue(bytes("ok"));
    send.close();
    await waitFor(() => hub.stats.queued === 1, "slow queued");
    await worker.write(bytes(NOT_STARTED));
    worker.close();
    await waitFor(() => hub.stats.queued === 2, "fast back in the queue");
    const [s, f] = await Promise.all([slow, fast]);
    await s.body?.cancel();
    await f.body?.cancel();
    assert.equal(s.status, 503);
    assert.equal(f.status, 503);
    assert.deepEqual(settled, ["slow", "fast"]);
    assert.equal(hub.stats.queued, 0);
  } finally {
    worker.close();
    await hub.shutdown(0);
  }
});

Deno.test("a pool that only its workers named goes with its last worker, in the stats and the metrics", async () => {
  // Without tokens anyone may connect to the worker port and name a pool:
  // made-up names must not pile up (each cost the metrics a 300 s history).
  const hub = new Hub({
    routes: [{ pathPrefix: "/img/", pool: "images" }],
    pools: { batch: { maxQueue: 5 } },
  });
  const metrics = new HubMetrics();
  const names = [
    "images",
    "batch",
    ...Array.from({ length: 20 }, (_, i) => `made-up-${i}`),
  ];
  const ends: MemConn[] = [];
  try {
    for (const [i, pool] of names.entries()) {
      const [hubEnd, worker] = memPair();
      ends.push(worker);
      hub.addWorker(hubEnd, `10.0.0.${i}:1000`);
      await worker.write(
        bytes(
          "GET / HTTP/1.1\r\nHost: hub\r\nUpgrade: ptth\r\n" +
            `Connection: Upgrade\r\nPothead-Pool: ${pool}\r\n\r\n`,
        ),
      );
      assert.match(await readHead(worker), /^HTTP\/1\.1 101 /);
    }
    await waitFor(() => hub.stats.idle === names.length, "every slot idle");
    metrics.sample(hub.stats);
    assert.equal(hub.stats.pools.length, names.length + 1);
    for (const w of ends) w.close();
    await waitFor(() => hub.stats.slots === 0, "every slot gone");
    // The default pool, the routed one and the configured one stay.
    const kept = ["batch", "default", "images"];
    assert.deepEqual(hub.stats.pools.map((p) => p.name).sort(), kept);
    metrics.sample(hub.stats);
    assert.deepEqual(
      metrics.status(hub.stats).map((p) => p.name).sort(),
      kept,
    );
    assert.doesNotMatch(metrics.render(hub.stats), /made-up/);
  } finally {
    for (const w of ends) w.close();
    await hub.shutdown(0);
  }
});

Deno.test("a request put back for another worker and then timed out in the queue counts its retry in the access record too", async () => {
  const records: AccessRecord[] = [];
  const hub = new Hub({
    queueTimeout: 300,
    handshakeWait: 0,
    onAccess: (r) => records.push(r),
  });
  const [hubEnd, worker] = memPair();
  try {
    hub.addWorker(hubEnd, "w");
    await waitFor(() => hub.stats.idle === 1, "worker idle");
    const res = hub.fetch(new Request("http://hub/job"));
    assert.match(await readHead(worker), /^GET \/job /);
    // Declined, and the worker leaves: the request waits in the queue again
    // until its timeout.
    await worker.write(bytes(NOT_STARTED));
    worker.close();
    const r = await res;
    await r.body?.cancel();
    assert.equal(r.status, 503);
    assert.equal(hub.stats.retries, 1);
    assert.equal(records.length, 1);
    assert.equal(records[0].outcome, "queue-timeout");
    assert.equal(records[0].retries, 1, "as stats.retries counts");
    const metrics = new HubMetrics();
    metrics.observe(records[0]);
    assert.match(metrics.render(hub.stats), /\npothead_retries_total\S* 1\n/);
  } finally {
    worker.close();
    await hub.shutdown(0);
  }
});
