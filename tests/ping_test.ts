// Pings on idle worker connections (_ping.ts): raw sockets speak the wire
// protocol exactly; the worker runner (the engine under test) answers pings
// without its handler seeing them.

import assert from "node:assert/strict";
import { type HubLogRecord, type HubServer, serveHub } from "../mod.ts";
import { RawSocket } from "./_relay.ts";
import { deadline, waitFor } from "./_wait.ts";
import { connectWorker } from "./_hub.ts";

const HANDSHAKE = "GET / HTTP/1.1\r\nHost: hub\r\nUpgrade: ptth\r\n" +
  "Connection: Upgrade\r\nALPN: http%2F1.1\r\n";

interface Ctx {
  server: HubServer;
  url: string;
  logs: HubLogRecord[];
  raws: RawSocket[];
}

async function withHub(
  ping: { pingInterval: number; pingTimeout: number },
  fn: (ctx: Ctx) => Promise<void>,
): Promise<void> {
  const logs: HubLogRecord[] = [];
  const server = serveHub({
    hostname: "127.0.0.1",
    port: 0,
    workerPort: 0,
    shutdownGrace: 500,
    onLog: (r) => logs.push(r),
    ...ping,
  });
  const ctx: Ctx = {
    server,
    url: `http://127.0.0.1:${server.addr.port}`,
    logs,
    raws: [],
  };
  try {
    await deadline(fn(ctx), 30_000, "test body");
  } finally {
    for (const r of ctx.raws) r.close();
    await server.shutdown();
  }
}

// A worker on a raw socket that has passed the handshake.
async function rawWorker(ctx: Ctx, extra: string): Promise<RawSocket> {
  const r = await RawSocket.connect(ctx.server.workerAddr.port);
  ctx.raws.push(r);
  await r.write(HANDSHAKE + extra + "\r\n");
  const answer = await r.readHead();
  assert.ok(answer?.startsWith("HTTP/1.1 101 "), `handshake: ${answer}`);
  return r;
}

Deno.test("a worker that declared pings is pinged when idle; answering keeps its connection", async () => {
  await withHub({ pingInterval: 40, pingTimeout: 5_000 }, async (ctx) => {
    const r = await rawWorker(ctx, "Pothead-Ping: 1\r\n");
    for (let i = 0; i < 3; i++) {
      const ping = await r.readMessage();
      assert.ok(ping !== null, "the hub closed instead of pinging");
      assert.equal(ping.start, "GET /.pothead/ping HTTP/1.1");
      assert.ok(
        ping.headers.some(([n, v]) => n === "x-pothead-ping" && v === "1"),
      );
      assert.equal(ping.body.length, 0);
      await r.write("HTTP/1.1 204 No Content\r\n\r\n");
    }
    // Still the same connection, and it carries a consumer request.
    const res = fetch(`${ctx.url}/after`);
    let req = await r.readMessage();
    // A ping may come first; answer it, then the request follows.
    while (req !== null && req.start.startsWith("GET /.pothead/ping ")) {
      await r.write("HTTP/1.1 204 No Content\r\n\r\n");
      req = await r.readMessage();
    }
    assert.ok(req !== null);
    assert.equal(req.start, "GET /after HTTP/1.1");
    await r.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    const out = await res;
    assert.equal(out.status, 200);
    assert.equal(await out.text(), "ok");
    const stats = ctx.server.hub.stats;
    assert.ok(stats.pings >= 3, `pings: ${stats.pings}`);
    assert.equal(stats.pingTimeouts, 0);
    assert.equal(stats.slots, 1);
  });
});

Deno.test("a connection whose ping is out counts as idle, not busy, in the stats; a request waits for the answer and then goes on it", async () => {
  await withHub({ pingInterval: 40, pingTimeout: 10_000 }, async (ctx) => {
    const r = await rawWorker(ctx, "Pothead-Ping: 1\r\n");
    const ping = await r.readMessage();
    assert.equal(ping?.start, "GET /.pothead/ping HTTP/1.1");
    const stats = ctx.server.hub.stats;
    assert.equal(stats.slots, 1);
    assert.equal(stats.idle, 1);
    assert.equal(stats.busy, 0);
    assert.equal(stats.pools[0].idle, 1);
    assert.equal(stats.pools[0].busy, 0);
    // The ping's answer is due first on this connection: a request waits.
    const res = fetch(`${ctx.url}/during`);
    await waitFor(() => ctx.server.hub.stats.queued === 1, "queued");
    await r.write("HTTP/1.1 204 No Content\r\n\r\n");
    const req = await r.readMessage();
    assert.equal(req?.start, "GET /during HTTP/1.1");
    const during = ctx.server.hub.stats;
    assert.equal(during.busy, 1);
    assert.equal(during.idle, 0);
    await r.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    assert.equal(await (await res).text(), "ok");
    await waitFor(() => ctx.server.hub.stats.idle === 1, "idle again");
    // Gone while its ping is out: nothing is left counted.
    const next = await r.readMessage();
    assert.equal(next?.start, "GET /.pothead/ping HTTP/1.1");
    r.close();
    await waitFor(() => ctx.server.hub.stats.slots === 0, "slot removed");
    const after = ctx.server.hub.stats;
    assert.equal(after.idle, 0);
    assert.equal(after.busy, 0);
    assert.equal(after.pools[0].idle, 0);
    assert.equal(after.pools[0].busy, 0);
  });
});

Deno.test("a worker that does not answer a ping has its connection closed; requests go to the others", async () => {
  await withHub({ pingInterval: 40, pingTimeout: 200 }, async (ctx) => {
    const silent = await rawWorker(
      ctx,
      "Pothead-Worker-Id: silent\r\nPothead-Ping: 1\r\n",
    );
    const ping = await silent.readMessage();
    assert.equal(ping?.start, "GET /.pothead/ping HTTP/1.1");
    // No answer: the hub closes the connection.
    assert.equal(await silent.readMessage(), null);
    assert.ok(silent.eof);
    await waitFor(() => ctx.server.hub.stats.slots === 0, "slot removed");
    assert.equal(ctx.server.hub.stats.pingTimeouts, 1);
    const warning = ctx.logs.find((l) =>
      l.msg.includes("did not answer a ping")
    );
    assert.equal(warning?.level, "warn");
    assert.equal(warning?.worker, "silent");
  });
});

Deno.test("plain workers and handshakes without Pothead-Ping are never pinged", async () => {
  await withHub({ pingInterval: 20, pingTimeout: 5_000 }, async (ctx) => {
    const plain = await RawSocket.connect(ctx.server.workerAddr.port);
    ctx.raws.push(plain);
    const declared = await rawWorker(ctx, "Pothead-Worker-Id: quiet\r\n");
    await waitFor(() => ctx.server.hub.stats.idle === 2, "two idle slots");
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(ctx.server.hub.stats.pings, 0);
    assert.equal(plain.buffered, 0);
    assert.equal(declared.buffered, 0);
    assert.equal(ctx.server.hub.stats.slots, 2);
  });
});

Deno.test("the worker runner answers pings without calling its handler or reconnecting", async () => {
  await withHub({ pingInterval: 30, pingTimeout: 5_000 }, async (ctx) => {
    let calls = 0;
    let connects = 0;
    const worker = connectWorker((req) => {
      calls++;
      return new Response(`ok ${new URL(req.url).pathname}`);
    }, {
      hostname: "127.0.0.1",
      port: ctx.server.workerAddr.port,
      workerId: "runner",
      concurrency: 2,
      minBackoff: 10,
      maxBackoff: 100,
      onConnect: () => connects++,
    });
    try {
      await waitFor(
        () => ctx.server.hub.stats.pings >= 6,
        "six pings",
      );
      assert.equal(calls, 0, "the handler saw a ping");
      assert.equal(ctx.server.hub.stats.pingTimeouts, 0);
      assert.equal(connects, 2, "the runner reconnected");
      const res = await fetch(`${ctx.url}/work`);
      assert.equal(await res.text(), "ok /work");
      assert.equal(calls, 1);
      assert.equal(ctx.server.hub.stats.slots, 2);
    } finally {
      worker.close();
      await worker.finished;
    }
  });
});

// A hub on a raw listener: answers each worker's handshake with a 101 that
// announces `interval` ms pings, then pings every connection that many ms
// when `pinging`, or says nothing. A runner (the engine under test) is
// connected to it; `errors` gets what the runner reports.
async function fakeHub(
  interval: number,
  pinging: boolean,
  fn: (accepted: RawSocket[], errors: string[]) => Promise<void>,
): Promise<void> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted: RawSocket[] = [];
  const timers: ReturnType<typeof setInterval>[] = [];
  const loop = (async () => {
    for await (const conn of listener) {
      const r = new RawSocket(conn);
      accepted.push(r);
      const head = await r.readHead();
      if (head === null) continue;
      await r.write(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: ptth\r\n" +
          `connection: Upgrade\r\npothead-ping-interval: ${interval}\r\n\r\n`,
      );
      if (pinging) {
        timers.push(setInterval(async () => {
          await r.write(
            "GET /.pothead/ping HTTP/1.1\r\nhost: h\r\nx-pothead-ping: 1\r\n\r\n",
          );
        }, interval));
      }
    }
  })();
  const errors: string[] = [];
  const worker = connectWorker(() => new Response("never"), {
    hostname: "127.0.0.1",
    port: (listener.addr as Deno.NetAddr).port,
    workerId: "w",
    minBackoff: 10,
    maxBackoff: 100,
    onError: (e) => errors.push(String(e)),
  });
  try {
    await waitFor(() => accepted.length >= 1, "first connection");
    await deadline(fn(accepted, errors), 30_000, "test body");
  } finally {
    worker.close();
    await worker.finished;
    for (const t of timers) clearInterval(t);
    listener.close();
    await loop.catch(() => {});
    for (const r of accepted) r.close();
  }
}

Deno.test("the runner hands back an idle connection whose hub fell silent, and dials again", async () => {
  // Interval 100 ms: silent for 2.1 s means gone.
  await fakeHub(100, false, async (accepted, errors) => {
    const back = await deadline(
      accepted[0].readMessage(),
      15_000,
      "the runner gives it back",
    );
    assert.equal(back?.status, 408);
    assert.ok(back.headers.some(([n]) => n === "x-pothead-not-started"));
    await waitFor(() => accepted.length >= 2, "dialed again", 15_000);
    assert.ok(
      errors.some((e) => e.includes("sent nothing for")),
      errors.join("\n"),
    );
  });
});

Deno.test("the runner keeps an idle connection whose hub pings it", async () => {
  await fakeHub(100, true, async (accepted, errors) => {
    const answers: number[] = [];
    const reading = (async () => {
      while (true) {
        const m = await accepted[0].readMessage();
        if (m === null) return;
        answers.push(m.status);
      }
    })();
    // Longer than the 2.1 s of silence that would end it.
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    assert.equal(accepted.length, 1, "the runner dialed again");
    const seen = [...answers];
    assert.ok(seen.length >= 10, `answers: ${seen.length}`);
    assert.ok(seen.every((status) => status === 204), seen.join(" "));
    assert.deepEqual(errors, []);
    accepted[0].close(); // ends the reading loop
    await reading;
  });
});
