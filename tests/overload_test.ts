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
import { bytes, type MemConn, memPair, text } from "./_memconn.ts";
import { deadline, waitFor } from "./_wait.ts";

const NOT_STARTED = "HTTP/1.1 408 Request Timeout\r\n" +
  "X-Pothead-Not-Started: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/** Reads from `conn` until a blank line; returns what it read. */
async function readHead(conn: MemConn): Promise<string> {
  let got = "";
  const buf = new Uint8Array(4096);
  while (!got.includes("\r\n\r\n")) {
    const n = await conn.read(buf);
    if (n === null) throw new Error(`Cannot read a head: ended after ${got}`);
    got += text(buf.subarray(0, n));
  }
  return got;
}

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

Deno.test("a hub handing over gives a worker connection back once it is free and its pool has nothing queued, not before", async () => {
  const hub = new Hub({ queueTimeout: 20_000, handshakeWait: 0 });
  const [hub1, w1] = memPair();
  const [hub2, w2] = memPair();
  const [hub3, w3] = memPair();
  try {
    hub.addWorker(hub1, "w1");
    hub.addWorker(hub2, "w2");
    await waitFor(() => hub.stats.idle === 2, "two idle slots");
    const ok = (path: string) =>
      `HTTP/1.1 200 OK\r\ncontent-length: ${path.length}\r\n\r\n${path}`;
    const r1 = hub.fetch(new Request("http://hub/r1"));
    assert.match(await readHead(w1), /^GET \/r1 /);
    const r2 = hub.fetch(new Request("http://hub/r2"));
    assert.match(await readHead(w2), /^GET \/r2 /);
    const r3 = hub.fetch(new Request("http://hub/r3"));
    await waitFor(() => hub.stats.queued === 1, "r3 queued");
    // A third connection takes r3.
    hub.addWorker(hub3, "w3");
    await waitFor(() => hub.stats.queued === 0, "r3 taken by w3");
    assert.match(await readHead(w3), /^GET \/r3 /);
    const r4 = hub.fetch(new Request("http://hub/r4"));
    await waitFor(() => hub.stats.queued === 1, "r4 queued");
    const draining = hub.shutdown(20_000, { handOver: true });
    // w2 frees while r4 waits: it takes r4 and stays.
    await w2.write(bytes(ok("/r2")));
    assert.match(await readHead(w2), /^GET \/r4 /);
    // w1 frees with nothing queued: it goes back (the worker reads the
    // end) while w2 and w3 are still busy, so before the drain ends.
    const end = (c: MemConn, what: string) =>
      deadline(c.read(new Uint8Array(16)), 10_000, what);
    await w1.write(bytes(ok("/r1")));
    assert.equal(await end(w1, "w1 given back"), null);
    await w3.write(bytes(ok("/r3")));
    assert.equal(await end(w3, "w3 given back"), null);
    await w2.write(bytes(ok("/r4")));
    assert.equal(await end(w2, "w2 given back"), null);
    const answers = await Promise.all([r1, r2, r3, r4]);
    for (const [i, res] of answers.entries()) {
      assert.deepEqual([res.status, await res.text()], [200, `/r${i + 1}`]);
    }
    await draining;
    assert.equal(hub.stats.slots, 0);
  } finally {
    await hub.shutdown(0);
    for (const c of [w1, w2, w3]) c.close();
  }
});

Deno.test("a hub handing over still serves a request that reaches it while a worker connection of its pool is busy there; with none left, 503", async () => {
  const hub = new Hub({ queueTimeout: 20_000, handshakeWait: 0 });
  const [hub1, w1] = memPair();
  try {
    hub.addWorker(hub1, "w1");
    await waitFor(() => hub.stats.idle === 1, "an idle slot");
    const ok = (path: string) =>
      `HTTP/1.1 200 OK\r\ncontent-length: ${path.length}\r\n\r\n${path}`;
    const r1 = hub.fetch(new Request("http://hub/r1"));
    assert.match(await readHead(w1), /^GET \/r1 /);
    const draining = hub.shutdown(20_000, { handOver: true });
    // Late, but w1 will free into it: queued, not refused.
    const r2 = hub.fetch(new Request("http://hub/r2"));
    await waitFor(() => hub.stats.queued === 1, "r2 queued");
    await w1.write(bytes(ok("/r1")));
    assert.match(await readHead(w1), /^GET \/r2 /);
    await w1.write(bytes(ok("/r2")));
    assert.equal(
      await deadline(w1.read(new Uint8Array(16)), 10_000, "w1 given back"),
      null,
    );
    for (const [res, path] of [[await r1, "/r1"], [await r2, "/r2"]] as const) {
      assert.deepEqual([res.status, await res.text()], [200, path]);
    }
    // No connection left here for it: refused, and told to go elsewhere.
    const r3 = await hub.fetch(new Request("http://hub/r3"));
    assert.equal(r3.status, 503);
    assert.equal(r3.headers.get("connection"), "close");
    await r3.body?.cancel();
    await draining;
  } finally {
    await hub.shutdown(0);
    w1.close();
  }
});
