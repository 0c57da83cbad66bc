// The worker runner's dialing: when a connection counts as silent or as a
// failed connect, how reconnects back off, the handshake deadline, and
// which connections are offered to which hub. Real hubs and sockets on
// loopback; waits are hang guards, no durations are asserted tightly.

import assert from "node:assert/strict";
import { type HubServer, serveHub } from "../hub.ts";
import { connectWorker, ENGINE } from "./_hub.ts";
import { deadline, waitFor } from "./_wait.ts";
import { renewingWaitRequest } from "../_park.ts";

function hub(options: Parameters<typeof serveHub>[0] = {}): HubServer {
  return serveHub({
    hostname: "127.0.0.1",
    port: 0,
    workerPort: 0,
    shutdownGrace: 500,
    queueTimeout: 20_000,
    ...options,
  });
}

const url = (s: HubServer, p: string) => `http://127.0.0.1:${s.addr.port}${p}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test(`[${ENGINE}] a connection that keeps getting requests is not handed back as silent`, async () => {
  // Silence limit: max(3 s, 1 s + 2 s) = 3 s. A request every 250 ms keeps
  // the connection from ever idling long enough to be pinged.
  const server = hub({ pingInterval: 1000, pingTimeout: 5000 });
  const errors: string[] = [];
  let connects = 0;
  const worker = connectWorker(() => new Response("ok"), {
    hostname: "127.0.0.1",
    port: server.workerAddr.port,
    workerId: "w",
    minBackoff: 10,
    maxBackoff: 100,
    onConnect: () => connects++,
    onError: (e, ctx) => errors.push(`${ctx}: ${(e as Error)?.message ?? e}`),
  });
  try {
    await waitFor(() => server.hub.stats.slots === 1, "the slot");
    const until = performance.now() + 4500;
    for (let i = 0; i < 1000 && performance.now() < until; i++) {
      const res = await deadline(fetch(url(server, "/")), 10_000, "request");
      assert.equal(await res.text(), "ok");
      await sleep(250);
    }
    assert.deepEqual(errors.filter((e) => e.includes("sent nothing")), []);
    assert.equal(connects, 1, "the runner dialed again");
  } finally {
    worker.close();
    await worker.finished;
    await server.shutdown();
  }
});

Deno.test(`[${ENGINE}] connections opened together that fail count as one failure`, async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close(); // nothing listens there now: connections are refused
  const attempts: number[] = [];
  // Eight failures counted apart would back off 100 ms * 2^7: 6.4-12.8 s.
  const worker = connectWorker(() => new Response("x"), {
    hostname: "127.0.0.1",
    port,
    concurrency: 8,
    minBackoff: 100,
    maxBackoff: 60_000,
    onError: (_e, ctx) => {
      if (ctx.startsWith("connect")) attempts.push(performance.now());
    },
  });
  try {
    await waitFor(() => attempts.length >= 8, "the first 8 attempts");
    await waitFor(() => attempts.length > 8, "a retry", 5000)
      .catch(() => {});
    assert.ok(attempts.length > 8, "no retry within 5 s of the first failures");
  } finally {
    worker.close();
    await worker.finished;
  }
});

Deno.test(`[${ENGINE}] a hub that loses a connection while another runs a request is offered the free permit again`, async () => {
  const a = hub();
  const b = hub();
  const { promise: held, resolve: release } = Promise.withResolvers<void>();
  let holding = 0;
  let leaving = 0;
  const worker = connectWorker(async (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/hold") {
      holding++;
      await held;
    } else if (path === "/leave") {
      leaving++;
      await new Promise((r) =>
        req.signal.addEventListener("abort", r, { once: true })
      );
    }
    return new Response(path);
  }, {
    hubs: [`127.0.0.1:${a.workerAddr.port}`, `127.0.0.1:${b.workerAddr.port}`],
    concurrency: 2,
    minBackoff: 10,
    maxBackoff: 100,
  });
  try {
    const both = () => a.hub.stats.idle === 2 && b.hub.stats.idle === 2;
    await waitFor(both, "2 slots at each hub");
    // Parking is learned per hub from its first wait request.
    for (const s of [a, b]) await (await fetch(url(s, "/warm"))).text();
    await waitFor(both, "2 slots at each hub again");
    const held1 = fetch(url(a, "/hold"));
    await waitFor(() => holding === 1, "/hold running");
    const ac = new AbortController();
    const left = fetch(url(a, "/leave"), { signal: ac.signal })
      .catch(() => null);
    await waitFor(() => leaving === 1, "/leave running");
    ac.abort(); // the hub closes that connection; its handler returns
    await left;
    await waitFor(() => worker.active === 1, "one permit free again");
    let offered = true;
    await waitFor(() => a.hub.stats.idle >= 1, "an idle slot at A", 5000)
      .catch(() => offered = false);
    release();
    assert.equal(await (await held1).text(), "/hold");
    assert.ok(offered, "hub A got no connection while a permit was free");
  } finally {
    release();
    worker.close();
    await worker.finished;
    await Promise.all([a.shutdown(), b.shutdown()]);
  }
});

function upload(s: HubServer): Promise<Response> {
  return fetch(url(s, "/upload"), {
    method: "POST",
    body: new ReadableStream({
      start(c) {
        c.enqueue(new Uint8Array(1000));
        c.close();
      },
    }),
  });
}

Deno.test(`[${ENGINE}] a declined upload on a fresh connection is not a connect failure`, async () => {
  const a = hub();
  const b = hub();
  const errors: string[] = [];
  const { promise: held, resolve: release } = Promise.withResolvers<void>();
  let holding = 0;
  const worker = connectWorker(async (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/hold") {
      holding++;
      await held;
    }
    if (req.body) await req.arrayBuffer();
    return new Response(path);
  }, {
    hubs: [`127.0.0.1:${a.workerAddr.port}`, `127.0.0.1:${b.workerAddr.port}`],
    concurrency: 1,
    workerId: "w",
    minBackoff: 100,
    maxBackoff: 5000,
    onError: (e, ctx) => errors.push(`${ctx}: ${(e as Error)?.message ?? e}`),
  });
  try {
    await waitFor(
      () => a.hub.stats.idle === 1 && b.hub.stats.idle === 1,
      "a slot at each hub",
    );
    // The one permit goes to B; A's connection, which has served nothing,
    // declines the upload and closes.
    const held1 = fetch(url(b, "/hold"));
    await waitFor(() => holding === 1, "/hold running");
    const up = upload(a);
    await waitFor(() => a.hub.stats.slots === 0, "A's connection closed");
    release();
    assert.equal(await (await held1).text(), "/hold");
    const res = await deadline(up, 15_000, "the upload");
    assert.equal(await res.text(), "/upload");
    assert.deepEqual(errors.filter((e) => e.startsWith("connect")), []);
  } finally {
    release();
    worker.close();
    await worker.finished;
    await Promise.all([a.shutdown(), b.shutdown()]);
  }
});

for (const how of ["close", "drain"] as const) {
  Deno.test(`[${ENGINE}] ${how}() ends a TLS handshake the hub never answers`, async () => {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const accepted: Deno.Conn[] = [];
    const loop = (async () => {
      for await (const c of listener) accepted.push(c); // never answers
    })();
    const worker = connectWorker(() => new Response("never"), {
      hostname: "127.0.0.1",
      port: (listener.addr as Deno.NetAddr).port,
      tls: true,
      workerId: "w",
      minBackoff: 10,
      maxBackoff: 100,
    });
    try {
      await waitFor(() => accepted.length >= 1, "the worker dialed");
      await sleep(200); // in the TLS handshake
      if (how === "close") worker.close();
      else worker.drain();
      // Well within the 10 s connect deadline, which would end it too.
      await deadline(worker.finished, 5000, `the worker's ${how}()`);
    } finally {
      worker.close();
      for (const c of accepted) c.close();
      listener.close();
      await loop.catch(() => {});
      await deadline(worker.finished, 15_000, "the worker closing");
    }
  });
}

Deno.test(`[${ENGINE}] a gated worker at two hubs serves both while its permits are free`, async () => {
  const a = hub({ queueTimeout: 5000 });
  const b = hub({ queueTimeout: 5000 });
  const worker = connectWorker(
    (req) => new Response(new URL(req.url).pathname),
    {
      hubs: [
        `127.0.0.1:${a.workerAddr.port}`,
        `127.0.0.1:${b.workerAddr.port}`,
      ],
      concurrency: 2,
      minBackoff: 10,
      maxBackoff: 100,
      // As capacityGate on a machine with no room: slot 0 only.
      gate: (slot, signal) =>
        slot === 0 || signal.aborted ? Promise.resolve() : new Promise<void>(
          (r) => signal.addEventListener("abort", () => r(), { once: true }),
        ),
    },
  );
  try {
    const answers: string[] = [];
    for (const [name, s] of [["a", a], ["b", b]] as const) {
      const res = await deadline(fetch(url(s, `/${name}`)), 15_000, name);
      answers.push(`${name}: ${res.status} ${await res.text()}`);
    }
    assert.deepEqual(answers, ["a: 200 /a", "b: 200 /b"]);
  } finally {
    worker.close();
    await worker.finished;
    await Promise.all([a.shutdown(), b.shutdown()]);
  }
});

Deno.test(`[${ENGINE}] a connection parked at one hub while the worker is busy at another is renewed, not closed, and served after`, async () => {
  // Renewal asked every 100 ms, answer due 400 ms after: a parked
  // connection that did not renew would be closed within half a second.
  const a = hub({ pingInterval: 100, pingTimeout: 400 });
  const b = hub({ pingInterval: 100, pingTimeout: 400 });
  const { promise: held, resolve: release } = Promise.withResolvers<void>();
  let holding = 0;
  let connects = 0;
  const worker = connectWorker(async (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/hold") {
      holding++;
      await held;
    }
    return new Response(path);
  }, {
    hubs: [`127.0.0.1:${a.workerAddr.port}`, `127.0.0.1:${b.workerAddr.port}`],
    // A worker id: the handshake says it answers pings and renews.
    workerId: "renewer",
    concurrency: 1,
    minBackoff: 10,
    maxBackoff: 100,
    onConnect: () => connects++,
  });
  try {
    const both = () => a.hub.stats.idle === 1 && b.hub.stats.idle === 1;
    await waitFor(both, "a slot at each hub");
    const held1 = fetch(url(a, "/hold"));
    await waitFor(() => holding === 1, "/hold running at A");
    const atB = fetch(url(b, "/b"));
    await waitFor(() => b.hub.stats.parked === 1, "B's connection parked");
    const before = connects;
    await sleep(1500);
    assert.equal(b.hub.stats.parked, 1, "still parked at B");
    assert.equal(b.hub.stats.pingTimeouts, 0);
    assert.equal(b.hub.stats.queued, 1, "B's request waits for the worker");
    assert.equal(connects, before, "no connection was dialled again");
    release();
    assert.equal(await (await held1).text(), "/hold");
    assert.equal(
      await (await deadline(atB, 10_000, "B's answer")).text(),
      "/b",
    );
  } finally {
    release();
    worker.close();
    await worker.finished;
    await Promise.all([a.shutdown(), b.shutdown()]);
  }
});

// Reads from `conn` until a blank line ends a head; returns the text read.
async function headOn(conn: Deno.Conn): Promise<string> {
  let got = "";
  const buf = new Uint8Array(4096);
  while (!got.includes("\r\n\r\n")) {
    const n = await conn.read(buf);
    if (n === null) throw new Error(`Cannot read a head: ended after ${got}`);
    got += new TextDecoder().decode(buf.subarray(0, n));
  }
  return got;
}

Deno.test(`[${ENGINE}] a connection parked at a hub that renews and then falls silent is handed back and dialled again`, async () => {
  // Hub A is real and keeps the worker's one permit busy; hub B is a raw
  // socket that parks the worker's connection, renews once, and goes silent.
  const a = hub();
  const fakeB = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { promise: held, resolve: release } = Promise.withResolvers<void>();
  let holding = 0;
  const errors: string[] = [];
  const worker = connectWorker(async (req) => {
    if (new URL(req.url).pathname === "/hold") {
      holding++;
      await held;
    }
    return new Response("ok");
  }, {
    hubs: [
      `127.0.0.1:${a.workerAddr.port}`,
      `127.0.0.1:${(fakeB.addr as Deno.NetAddr).port}`,
    ],
    workerId: "w",
    concurrency: 1,
    minBackoff: 10,
    maxBackoff: 100,
    onError: (e) => errors.push(String(e)),
  });
  const conns: Deno.Conn[] = [];
  try {
    const b = await deadline(fakeB.accept(), 10_000, "a connection at B");
    conns.push(b);
    // Later connections to B (redials) are kept open and never answered.
    (async () => {
      try {
        for await (const c of fakeB) conns.push(c);
      } catch {
        // closed
      }
    })();
    assert.match(
      await headOn(b),
      /^GET \/ HTTP\/1\.1\r\n[\s\S]*pothead-park-renew: 1/i,
    );
    await b.write(new TextEncoder().encode(
      "HTTP/1.1 101 Switching Protocols\r\nupgrade: ptth\r\n" +
        "connection: Upgrade\r\npothead-ping-interval: 100\r\n\r\n",
    ));
    await waitFor(() => a.hub.stats.idle === 1, "a slot at A");
    const held1 = fetch(url(a, "/hold"));
    await waitFor(() => holding === 1, "/hold running at A");
    await b.write(
      new TextEncoder().encode("GET /b HTTP/1.1\r\nhost: b\r\n\r\n"),
    );
    assert.match(await headOn(b), /^HTTP\/1\.1 408 [\s\S]*pothead-park/i);
    await b.write(renewingWaitRequest(100));
    assert.match(await headOn(b), /^HTTP\/1\.1 204 [\s\S]*pothead-park/i);
    // Silent from now on: the worker gives the parked connection back.
    await waitFor(
      () =>
        errors.some((e) =>
          /sent nothing for .* on a parked connection/.test(e)
        ),
      "the worker to notice the silent hub",
      10_000,
    );
    release();
    await (await held1).text();
  } finally {
    release();
    worker.close();
    await worker.finished;
    fakeB.close();
    for (const c of conns) {
      try {
        c.close();
      } catch {
        // closed by the worker
      }
    }
    await a.shutdown();
  }
});
