/**
 * A hub handing over (`hub.shutdown(grace, { handOver: true })`), with
 * in-memory worker connections, so each step happens when the test says:
 * which connections go back to their workers and when, which late requests
 * are still served, and (found by review) connections left idle there and
 * requests left waiting with no worker connection that could take them.
 * The same with real processes and two hubs: `handover_test.ts`.
 */

import assert from "node:assert/strict";
import { Hub } from "../hub.ts";
import { bytes, type MemConn, memPair, readHead } from "./_memconn.ts";
import { deadline, waitFor } from "./_wait.ts";

const NOT_STARTED = "HTTP/1.1 408 Request Timeout\r\n" +
  "X-Pothead-Not-Started: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

const ok = (path: string, extra = "") =>
  `HTTP/1.1 200 OK\r\n${extra}content-length: ${path.length}\r\n\r\n${path}`;

// The end of a connection the hub gave back, as its worker reads it.
const end = (c: MemConn, what: string) =>
  deadline(c.read(new Uint8Array(16)), 5_000, what);

// A response that must be the worker's 200 for `path`.
async function answered(res: Promise<Response>, path: string): Promise<void> {
  const r = await deadline(res, 5_000, `${path} answered`);
  assert.deepEqual([r.status, await r.text()], [200, path]);
}

// A response that must be the hub's 503 (read and dropped).
async function refused(
  res: Promise<Response>,
  what: string,
): Promise<Response> {
  const r = await deadline(res, 5_000, what);
  assert.equal(r.status, 503);
  await r.body?.cancel();
  return r;
}

/**
 * Runs `fn` with a hub and `n` in-memory worker connections, each busy
 * with one request (`/r1` on the first, …, its head read by the worker);
 * everything is closed after.
 */
async function withBusy(
  n: number,
  fn: (ctx: {
    hub: Hub;
    workers: MemConn[];
    answers: Promise<Response>[];
  }) => Promise<void>,
): Promise<void> {
  const hub = new Hub({ queueTimeout: 20_000, handshakeWait: 0 });
  const workers: MemConn[] = [];
  try {
    for (let i = 1; i <= n; i++) {
      const [hubEnd, worker] = memPair();
      workers.push(worker);
      hub.addWorker(hubEnd, `w${i}`);
    }
    await waitFor(() => hub.stats.idle === n, `${n} idle slots`);
    const answers: Promise<Response>[] = [];
    for (let i = 1; i <= n; i++) {
      answers.push(hub.fetch(new Request(`http://hub/r${i}`)));
      assert.match(await readHead(workers[i - 1]), new RegExp(`^GET /r${i} `));
    }
    await fn({ hub, workers, answers });
  } finally {
    await hub.shutdown(0);
    for (const w of workers) w.close();
  }
}

Deno.test("a hub handing over gives back a connection that frees into a queue holding only WebSocket handshakes", async () => {
  await withBusy(2, async ({ hub, workers: [w1, w2], answers: [r1, r2] }) => {
    const ws = hub.fetch(
      new Request("http://hub/ws", {
        headers: {
          upgrade: "websocket",
          connection: "Upgrade",
          "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
          "sec-websocket-version": "13",
        },
      }),
    );
    await waitFor(() => hub.stats.queued === 1, "handshake queued");
    const draining = hub.shutdown(20_000, { handOver: true });
    // w1 frees: the handshake gets 503 and nothing else waits, so w1 goes
    // back to its worker while w2 is still busy.
    await w1.write(bytes(ok("/r1")));
    await refused(ws, "the handshake");
    assert.equal(await end(w1, "w1 given back"), null);
    assert.equal(hub.stats.idle, 0);
    await w2.write(bytes(ok("/r2")));
    await answered(r1, "/r1");
    await answered(r2, "/r2");
    await draining;
  });
});

Deno.test("a hub handing over answers a declined request at once when no worker connection of its pool is left there", async () => {
  await withBusy(2, async ({ hub, workers: [w1, w2], answers: [r1, r2] }) => {
    const draining = hub.shutdown(20_000, { handOver: true });
    await w1.write(bytes(ok("/r1")));
    assert.equal(await end(w1, "w1 given back"), null);
    // w2 declines r2 and leaves: no connection of the pool is left here,
    // and none can come (the worker port is the other hub's now).
    await w2.write(bytes(NOT_STARTED));
    w2.close();
    await refused(r2, "r2");
    await answered(r1, "/r1");
    await deadline(draining, 5_000, "drain over");
    assert.equal(hub.stats.queued, 0);
  });
});

Deno.test("a hub handing over answers a queued request at once when the last worker connection of its pool closes", async () => {
  await withBusy(1, async ({ hub, workers: [w1], answers: [r1] }) => {
    const draining = hub.shutdown(20_000, { handOver: true });
    // Late, but w1 is busy here: queued.
    const r2 = hub.fetch(new Request("http://hub/r2"));
    await waitFor(() => hub.stats.queued === 1, "r2 queued");
    // w1 answers and closes its connection: nothing can take r2 here.
    await w1.write(bytes(ok("/r1", "connection: close\r\n")));
    await answered(r1, "/r1");
    await refused(r2, "r2");
    await deadline(draining, 5_000, "drain over");
  });
});

Deno.test("a hub handing over answers at once what a pool with no worker connection there had queued", async () => {
  await withBusy(0, async ({ hub }) => {
    const r1 = hub.fetch(new Request("http://hub/r1"));
    await waitFor(() => hub.stats.queued === 1, "r1 queued");
    const draining = hub.shutdown(20_000, { handOver: true });
    const res1 = await refused(r1, "r1");
    assert.equal(res1.headers.get("connection"), "close");
    await deadline(draining, 5_000, "drain over");
  });
});

Deno.test("a hub handing over answers at once a late request whose body arrived after the last worker connection of its pool closed", async () => {
  await withBusy(1, async ({ hub, workers: [w1], answers: [r1] }) => {
    const draining = hub.shutdown(20_000, { handOver: true });
    // Late, while w1 is busy here: taken, and its small body read first.
    let send!: ReadableStreamDefaultController<Uint8Array>;
    const body = new ReadableStream<Uint8Array>({ start: (c) => send = c });
    const r2 = hub.fetch(
      new Request("http://hub/r2", {
        method: "POST",
        headers: { "content-length": "2" },
        body,
      }),
    );
    // Meanwhile w1 answers and closes its connection.
    await w1.write(bytes(ok("/r1", "connection: close\r\n")));
    await answered(r1, "/r1");
    await waitFor(() => hub.stats.slots === 0, "w1 gone");
    send.enqueue(bytes("ok"));
    send.close();
    await refused(r2, "r2");
    await deadline(draining, 5_000, "drain over");
  });
});

Deno.test("a hub handing over gives a worker connection back once it is free and its pool has nothing queued, not before", async () => {
  await withBusy(2, async ({ hub, workers: [w1, w2], answers: [r1, r2] }) => {
    const r3 = hub.fetch(new Request("http://hub/r3"));
    await waitFor(() => hub.stats.queued === 1, "r3 queued");
    // A third connection takes r3.
    const [hub3, w3] = memPair();
    try {
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
      await w1.write(bytes(ok("/r1")));
      assert.equal(await end(w1, "w1 given back"), null);
      await w3.write(bytes(ok("/r3")));
      assert.equal(await end(w3, "w3 given back"), null);
      await w2.write(bytes(ok("/r4")));
      assert.equal(await end(w2, "w2 given back"), null);
      for (const [i, res] of [r1, r2, r3, r4].entries()) {
        await answered(res, `/r${i + 1}`);
      }
      await draining;
      assert.equal(hub.stats.slots, 0);
    } finally {
      w3.close();
    }
  });
});

Deno.test("a hub handing over still serves a request that reaches it while a worker connection of its pool is busy there; with none left, 503", async () => {
  await withBusy(1, async ({ hub, workers: [w1], answers: [r1] }) => {
    const draining = hub.shutdown(20_000, { handOver: true });
    // Late, but w1 will free into it: queued, not refused.
    const r2 = hub.fetch(new Request("http://hub/r2"));
    await waitFor(() => hub.stats.queued === 1, "r2 queued");
    await w1.write(bytes(ok("/r1")));
    assert.match(await readHead(w1), /^GET \/r2 /);
    await w1.write(bytes(ok("/r2")));
    assert.equal(await end(w1, "w1 given back"), null);
    await answered(r1, "/r1");
    await answered(r2, "/r2");
    // No connection left here for it: refused, and told to go elsewhere.
    const r3 = await refused(
      hub.fetch(new Request("http://hub/r3")),
      "r3",
    );
    assert.equal(r3.headers.get("connection"), "close");
    await draining;
  });
});
