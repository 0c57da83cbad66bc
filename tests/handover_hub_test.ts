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
import { bytes, type MemConn, memPair, text } from "./_memconn.ts";
import { deadline, waitFor } from "./_wait.ts";

const NOT_STARTED = "HTTP/1.1 408 Request Timeout\r\n" +
  "X-Pothead-Not-Started: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

const ok = (path: string, extra = "") =>
  `HTTP/1.1 200 OK\r\n${extra}content-length: ${path.length}\r\n\r\n${path}`;

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

const end = (c: MemConn, what: string) =>
  deadline(c.read(new Uint8Array(16)), 5_000, what);

Deno.test("a hub handing over gives back a connection that frees into a queue holding only WebSocket handshakes", async () => {
  const hub = new Hub({ queueTimeout: 20_000, handshakeWait: 0 });
  const [hub1, w1] = memPair();
  const [hub2, w2] = memPair();
  try {
    hub.addWorker(hub1, "w1");
    hub.addWorker(hub2, "w2");
    await waitFor(() => hub.stats.idle === 2, "two idle slots");
    const r1 = hub.fetch(new Request("http://hub/r1"));
    assert.match(await readHead(w1), /^GET \/r1 /);
    const r2 = hub.fetch(new Request("http://hub/r2"));
    assert.match(await readHead(w2), /^GET \/r2 /);
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
    const w = await ws;
    assert.equal(w.status, 503);
    await w.body?.cancel();
    assert.equal(await end(w1, "w1 given back"), null);
    assert.equal(hub.stats.idle, 0);
    await w2.write(bytes(ok("/r2")));
    for (const [res, path] of [[await r1, "/r1"], [await r2, "/r2"]] as const) {
      assert.deepEqual([res.status, await res.text()], [200, path]);
    }
    await draining;
  } finally {
    await hub.shutdown(0);
    w1.close();
    w2.close();
  }
});

Deno.test("a hub handing over answers a declined request at once when no worker connection of its pool is left there", async () => {
  const hub = new Hub({ queueTimeout: 20_000, handshakeWait: 0 });
  const [hub1, w1] = memPair();
  const [hub2, w2] = memPair();
  try {
    hub.addWorker(hub1, "w1");
    hub.addWorker(hub2, "w2");
    await waitFor(() => hub.stats.idle === 2, "two idle slots");
    const r1 = hub.fetch(new Request("http://hub/r1"));
    assert.match(await readHead(w1), /^GET \/r1 /);
    const r2 = hub.fetch(new Request("http://hub/r2"));
    assert.match(await readHead(w2), /^GET \/r2 /);
    const draining = hub.shutdown(20_000, { handOver: true });
    await w1.write(bytes(ok("/r1")));
    assert.equal(await end(w1, "w1 given back"), null);
    // w2 declines r2 and leaves: no connection of the pool is left here,
    // and none can come (the worker port is the other hub's now).
    await w2.write(bytes(NOT_STARTED));
    w2.close();
    const res2 = await deadline(r2, 5_000, "r2 answered");
    assert.equal(res2.status, 503);
    await res2.body?.cancel();
    const res1 = await r1;
    assert.deepEqual([res1.status, await res1.text()], [200, "/r1"]);
    await deadline(draining, 5_000, "drain over");
    assert.equal(hub.stats.queued, 0);
  } finally {
    await hub.shutdown(0);
    w1.close();
    w2.close();
  }
});

Deno.test("a hub handing over answers a queued request at once when the last worker connection of its pool closes", async () => {
  const hub = new Hub({ queueTimeout: 20_000, handshakeWait: 0 });
  const [hub1, w1] = memPair();
  try {
    hub.addWorker(hub1, "w1");
    await waitFor(() => hub.stats.idle === 1, "an idle slot");
    const r1 = hub.fetch(new Request("http://hub/r1"));
    assert.match(await readHead(w1), /^GET \/r1 /);
    const draining = hub.shutdown(20_000, { handOver: true });
    // Late, but w1 is busy here: queued.
    const r2 = hub.fetch(new Request("http://hub/r2"));
    await waitFor(() => hub.stats.queued === 1, "r2 queued");
    // w1 answers and closes its connection: nothing can take r2 here.
    await w1.write(bytes(ok("/r1", "connection: close\r\n")));
    const res1 = await r1;
    assert.deepEqual([res1.status, await res1.text()], [200, "/r1"]);
    const res2 = await deadline(r2, 5_000, "r2 answered");
    assert.equal(res2.status, 503);
    await res2.body?.cancel();
    await deadline(draining, 5_000, "drain over");
  } finally {
    await hub.shutdown(0);
    w1.close();
  }
});

Deno.test("a hub handing over answers at once what a pool with no worker connection there had queued", async () => {
  const hub = new Hub({ queueTimeout: 20_000, handshakeWait: 0 });
  try {
    const r1 = hub.fetch(new Request("http://hub/r1"));
    await waitFor(() => hub.stats.queued === 1, "r1 queued");
    const draining = hub.shutdown(20_000, { handOver: true });
    const res1 = await deadline(r1, 5_000, "r1 answered");
    assert.equal(res1.status, 503);
    assert.equal(res1.headers.get("connection"), "close");
    await res1.body?.cancel();
    await deadline(draining, 5_000, "drain over");
  } finally {
    await hub.shutdown(0);
  }
});

Deno.test("a hub handing over answers at once a late request whose body arrived after the last worker connection of its pool closed", async () => {
  const hub = new Hub({ queueTimeout: 20_000, handshakeWait: 0 });
  const [hub1, w1] = memPair();
  try {
    hub.addWorker(hub1, "w1");
    await waitFor(() => hub.stats.idle === 1, "an idle slot");
    const r1 = hub.fetch(new Request("http://hub/r1"));
    assert.match(await readHead(w1), /^GET \/r1 /);
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
    const res1 = await r1;
    assert.deepEqual([res1.status, await res1.text()], [200, "/r1"]);
    await waitFor(() => hub.stats.slots === 0, "w1 gone");
    send.enqueue(bytes("ok"));
    send.close();
    const res2 = await deadline(r2, 5_000, "r2 answered");
    assert.equal(res2.status, 503);
    await res2.body?.cancel();
    await deadline(draining, 5_000, "drain over");
  } finally {
    await hub.shutdown(0);
    w1.close();
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
