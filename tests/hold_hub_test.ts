// Holding ahead, the hub's half (`holdAhead`, `_hold.ts`): a real hub
// (serveHub) and in-process workers of the serve engine (concurrency 1),
// whose handlers wait at gates the test opens; a raw worker for the bytes
// on the wire; the CLI's flag.

import assert from "node:assert/strict";
import {
  type AccessRecord,
  Hub,
  type HubLogRecord,
  type HubServer,
  type ServeHubOptions,
} from "../hub.ts";
import { connectWorker, type WorkerHandle } from "../worker.ts";
import { HOLD_FIELD } from "../_hold.ts";
import { startHub } from "./_hub.ts";
import { deadline, waitFor } from "./_wait.ts";
import { RawSocket } from "./_relay.ts";
import { optionsFrom } from "../_hub_cli.ts";
import { HubMetrics } from "../_metrics.ts";
import { RUN_PERMISSIONS, runDeno } from "./_procs.ts";

// Handlers that log what they see ("/a" or "/a held") and, for paths that
// start with /slow, wait until the test opens that path's gate (or the
// request is aborted).
class Gates {
  #gates = new Map<string, PromiseWithResolvers<void>>();
  #gate(path: string): PromiseWithResolvers<void> {
    let g = this.#gates.get(path);
    if (g === undefined) this.#gates.set(path, g = Promise.withResolvers());
    return g;
  }
  open(path: string): void {
    this.#gate(path).resolve();
  }
  handler(seen: string[]): (req: Request) => Promise<Response> {
    return async (req) => {
      const path = new URL(req.url).pathname;
      seen.push(path + (req.headers.get(HOLD_FIELD) === "1" ? " held" : ""));
      if (path.startsWith("/slow")) {
        const aborted = new Promise<void>((r) =>
          req.signal.addEventListener("abort", () => r(), { once: true })
        );
        await Promise.race([this.#gate(path).promise, aborted]);
      }
      return new Response(path);
    };
  }
}

let workers = 0;

function worker(
  server: HubServer,
  handler: (req: Request) => Promise<Response>,
  engine: "serve" | "inline" = "serve",
): WorkerHandle {
  return connectWorker(handler, {
    engine,
    // A handshake (plain workers say nothing, so take no held request).
    workerId: `w${++workers}`,
    hostname: "127.0.0.1",
    port: server.workerAddr.port,
    concurrency: 1,
    minBackoff: 10,
    maxBackoff: 100,
  });
}

function get(
  server: HubServer,
  path: string,
  signal?: AbortSignal,
): Promise<{ status: number; text: string }> {
  return fetch(`http://127.0.0.1:${server.addr.port}${path}`, { signal })
    .then(async (res) => ({ status: res.status, text: await res.text() }));
}

function pool(server: HubServer) {
  return server.hub.stats.pools.find((p) => p.name === "default")!;
}

async function teardown(server: HubServer, workers: WorkerHandle[]) {
  for (const w of workers) w.close();
  await Promise.all(workers.map((w) => w.finished));
  await server.shutdown();
}

// A holding hub (with `options` besides) and `n` serve-engine workers at
// gates, attached and idle.
async function holding(n: number, options: ServeHubOptions = {}) {
  const server = startHub({ holdAhead: true, ...options });
  const gates = new Gates();
  const seen: string[] = [];
  const workers = Array.from(
    { length: n },
    () => worker(server, gates.handler(seen)),
  );
  try {
    await waitFor(() => pool(server).idle === n, "workers attached");
  } catch (error) {
    await teardown(server, workers);
    throw error;
  }
  return { server, gates, seen, workers };
}

// Worker connections the hub closed (logged at debug level).
function closes(log: HubLogRecord[]): HubLogRecord[] {
  return log.filter((r) => r.msg === "worker connection closed");
}

Deno.test("holdAhead: with every slot busy and four requests per slot queued, the queue's head is written behind the busy request and its worker runs it next, marked held", async () => {
  const records: AccessRecord[] = [];
  const { server, gates, seen, workers } = await holding(1, {
    onAccess: (r) => records.push(r),
  });
  try {
    const slow = get(server, "/slow");
    await waitFor(() => seen.length === 1, "/slow started");
    const fast = ["/f1", "/f2", "/f3", "/f4"].map((p) => get(server, p));
    await waitFor(() => pool(server).held === 1, "a request held", 5000);
    assert.equal(pool(server).queued, 3);
    assert.equal(pool(server).heldTotal, 1);
    const exposition = new HubMetrics().render(server.hub.stats);
    assert.match(exposition, /\npothead_held\{pool="default"\} 1\n/);
    assert.match(exposition, /\npothead_held_total\{pool="default"\} 1\n/);
    assert.match(
      exposition,
      /\npothead_take_backs_total\{pool="default"\} 0\n/,
    );
    gates.open("/slow");
    const answers = await deadline(
      Promise.all([slow, ...fast]),
      10_000,
      "answers",
    );
    assert.deepEqual(answers.map((a) => a.text), [
      "/slow",
      "/f1",
      "/f2",
      "/f3",
      "/f4",
    ]);
    // Run next, on the same worker, as held; the others were not held.
    assert.deepEqual(seen, ["/slow", "/f1 held", "/f2", "/f3", "/f4"]);
    assert.equal(pool(server).held, 0);
    assert.equal(pool(server).heldTotal, 1);
    const f1 = records.find((r) => r.path === "/f1")!;
    assert.equal(f1.held, true);
    assert.equal(f1.outcome, "ok");
    assert.equal(records.find((r) => r.path === "/f2")!.held, undefined);
  } finally {
    await teardown(server, workers);
  }
});

Deno.test("holdAhead: a request sent from the queue gets the next one held behind it at once, before its head is out", async () => {
  const { server, gates, seen, workers } = await holding(1);
  try {
    // Short exchanges first: the pool's mean exchange stays short when
    // /slow ends (however long it took), so the 9 queued behind /d are
    // many enough to hold (a request per connection per 5 ms of the mean).
    for (const p of ["/q1", "/q2", "/q3"]) await get(server, p);
    const slow = get(server, "/slow");
    await waitFor(() => seen.length === 4, "/slow started");
    // A DELETE at the head is not held, so nothing is while it waits.
    const del = fetch(`http://127.0.0.1:${server.addr.port}/d`, {
      method: "DELETE",
    }).then((res) => res.text());
    const fast = Array.from({ length: 9 }, (_, i) => get(server, `/f${i + 1}`));
    await waitFor(() => pool(server).queued === 10, "all queued");
    assert.equal(pool(server).held, 0);
    gates.open("/slow");
    await deadline(Promise.all([slow, del, ...fast]), 10_000, "answers");
    assert.deepEqual(seen.slice(3, 6), ["/slow", "/d", "/f1 held"]);
  } finally {
    await teardown(server, workers);
  }
});

// Two workers busy at their gates, 8 requests queued: the first is held
// behind the worker whose request began first (X). The other (Y) is let go,
// serves the rest, goes idle with nothing queued and takes the held one back.
async function twoBusy(server: HubServer, gates: Gates) {
  const seenA: string[] = [];
  const seenB: string[] = [];
  const a = worker(server, gates.handler(seenA));
  const b = worker(server, gates.handler(seenB));
  await waitFor(() => pool(server).idle === 2, "workers attached");
  const slow1 = get(server, "/slow1");
  await waitFor(() => seenA.length + seenB.length === 1, "/slow1 started");
  const slow2 = get(server, "/slow2");
  await waitFor(() => seenA.length + seenB.length === 2, "/slow2 started");
  const [x, y, seenX, seenY] = seenA[0] === "/slow1"
    ? [a, b, seenA, seenB]
    : [b, a, seenB, seenA];
  const paths = Array.from({ length: 8 }, (_, i) => `/f${i + 1}`);
  const fast = paths.map((p) => get(server, p));
  await waitFor(() => pool(server).held === 1, "a request held", 5000);
  return { x, y, seenX, seenY, slow1, slow2, fast };
}

Deno.test("holdAhead: a slot that goes idle with nothing queued takes back the request held behind a busy one; the idle worker serves it, the busy one never sees it, and its connection stays", async () => {
  const log: HubLogRecord[] = [];
  const server = startHub({ holdAhead: true, onLog: (r) => log.push(r) });
  const gates = new Gates();
  const t = await twoBusy(server, gates);
  try {
    gates.open("/slow2");
    const fast = await deadline(Promise.all(t.fast), 10_000, "fast answers");
    assert.deepEqual(
      fast.map((a) => a.status),
      Array(8).fill(200),
    );
    assert.ok(t.seenY.includes("/f1"), t.seenY.join());
    assert.ok(!t.seenX.some((s) => s.startsWith("/f1")), t.seenX.join());
    assert.equal(pool(server).takeBacks, 1);
    assert.equal(pool(server).held, 0);
    assert.equal(server.hub.stats.retries, 1);
    gates.open("/slow1");
    assert.equal((await deadline(t.slow1, 10_000, "/slow1")).text, "/slow1");
    await deadline(t.slow2, 10_000, "/slow2");
    // X's connection read the 408 and the revoke's 204 and goes on.
    await waitFor(() => pool(server).idle === 2, "both idle");
    const more = await deadline(
      Promise.all(["/g1", "/g2", "/g3", "/g4"].map((p) => get(server, p))),
      10_000,
      "more answers",
    );
    assert.deepEqual(more.map((a) => a.status), [200, 200, 200, 200]);
    assert.deepEqual(closes(log), []);
    assert.equal(pool(server).slots, 2);
  } finally {
    await teardown(server, [t.x, t.y]);
  }
});

Deno.test("holdAhead: a consumer that leaves while its request is held is answered at once; the request is taken back without closing the connection, its handler never runs, and the request in progress there is answered", async () => {
  const log: HubLogRecord[] = [];
  const { server, gates, seen, workers } = await holding(1, {
    onLog: (r) => log.push(r),
  });
  try {
    const slow = get(server, "/slow");
    await waitFor(() => seen.length === 1, "/slow started");
    const leave = new AbortController();
    const left = get(server, "/f1", leave.signal).catch((e) => e);
    const fast = ["/f2", "/f3", "/f4"].map((p) => get(server, p));
    await waitFor(() => pool(server).held === 1, "a request held", 5000);
    leave.abort();
    await waitFor(
      () => server.hub.stats.abandoned === 1,
      "counted as abandoned",
    );
    assert.equal(pool(server).held, 0);
    gates.open("/slow");
    assert.equal((await deadline(slow, 10_000, "/slow")).text, "/slow");
    const rest = await deadline(Promise.all(fast), 10_000, "the others");
    assert.deepEqual(rest.map((a) => a.text), ["/f2", "/f3", "/f4"]);
    assert.ok((await left) instanceof Error);
    assert.deepEqual(seen, ["/slow", "/f2", "/f3", "/f4"]);
    assert.deepEqual(closes(log), []);
    assert.equal(pool(server).slots, 1);
  } finally {
    await teardown(server, workers);
  }
});

Deno.test("holdAhead: a worker that dies with a request held behind its busy one: the held GET goes to another worker", async () => {
  const server = startHub({ holdAhead: true });
  const gates = new Gates();
  const t = await twoBusy(server, gates);
  try {
    // The worker holding /f1 behind /slow1 goes away.
    t.x.close();
    await waitFor(() => pool(server).slots === 1, "X gone");
    // (A GET whose worker died is resent too: /slow1 comes to Y.)
    gates.open("/slow1");
    gates.open("/slow2");
    const fast = await deadline(Promise.all(t.fast), 10_000, "fast answers");
    assert.deepEqual(
      fast.map((a) => a.text),
      t.fast.map((_, i) => `/f${i + 1}`),
    );
    // Y alone now: with four requests per slot queued, it holds too.
    assert.ok(t.seenY.some((s) => s.startsWith("/f1")), t.seenY.join());
    assert.ok(!t.seenX.some((s) => s.startsWith("/f1")), t.seenX.join());
    assert.equal((await t.slow1).text, "/slow1");
    await t.slow2;
  } finally {
    await teardown(server, [t.x, t.y]);
  }
});

Deno.test("holdAhead: inline-engine workers (no Pothead-Hold in their handshake) never get a held request", async () => {
  const server = startHub({ holdAhead: true });
  const gates = new Gates();
  const seen: string[] = [];
  const w = worker(server, gates.handler(seen), "inline");
  try {
    await waitFor(() => pool(server).idle === 1, "worker attached");
    const slow = get(server, "/slow");
    await waitFor(() => seen.length === 1, "/slow started");
    const fast = ["/f1", "/f2", "/f3", "/f4", "/f5"].map((p) => get(server, p));
    await waitFor(
      () => pool(server).queued + pool(server).held === 5,
      "all queued",
    );
    assert.equal(pool(server).held, 0);
    gates.open("/slow");
    await deadline(Promise.all([slow, ...fast]), 10_000, "answers");
    assert.deepEqual(seen, ["/slow", "/f1", "/f2", "/f3", "/f4", "/f5"]);
    assert.equal(pool(server).heldTotal, 0);
  } finally {
    gates.open("/slow");
    await teardown(server, [w]);
  }
});

// A worker on a raw socket that says it takes held requests: the test
// reads the bytes the hub writes.
async function rawWorker(server: HubServer): Promise<RawSocket> {
  const sock = await RawSocket.connect(server.workerAddr.port);
  await sock.write(
    "GET / HTTP/1.1\r\nhost: hub\r\nupgrade: ptth\r\nconnection: Upgrade\r\n" +
      "pothead-hold: 1\r\n\r\n",
  );
  const head = await deadline(sock.readHead(), 10_000, "the 101");
  assert.match(head!, /^HTTP\/1\.1 101 /);
  return sock;
}

for (const on of [false, true]) {
  Deno.test(`holdAhead ${on ? "on" : "off"}: a worker that takes held requests gets the queue's head ${on ? "written behind its request in progress, with X-Pothead-Hold: 1" : "only after it answered, as before"}`, async () => {
    const server = startHub({ holdAhead: on });
    const sock = await rawWorker(server);
    try {
      await waitFor(() => pool(server).idle === 1, "worker attached");
      const answers = ["/a", "/f1", "/f2", "/f3", "/f4"].map((p) =>
        get(server, p)
      );
      const a = await deadline(sock.readHead(), 10_000, "/a");
      assert.match(a!, /^GET \/a HTTP\/1\.1\r\n/);
      assert.doesNotMatch(a!, /x-pothead-hold/i);
      await waitFor(
        () => pool(server).queued + pool(server).held === 4,
        "all queued",
      );
      // A job of 100 ms or more: the three left queued are then too few to
      // hold by queue length (one per connection per 5 ms of the mean).
      await new Promise((resolve) => setTimeout(resolve, 100));
      if (!on) {
        await sock.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n/a");
      }
      const f1 = await deadline(sock.readHead(), 10_000, "/f1");
      assert.match(f1!, /^GET \/f1 HTTP\/1\.1\r\n/);
      const marks = f1!.split("\r\n").filter((l) =>
        /^x-pothead-hold:/i.test(l)
      );
      assert.deepEqual(marks, on ? [`${HOLD_FIELD}: 1`] : []);
      assert.equal(pool(server).heldTotal, on ? 1 : 0);
      if (on) {
        await sock.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n/a");
      }
      await sock.write("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n/f1");
      for (const path of ["/f2", "/f3", "/f4"]) {
        const head = await deadline(sock.readHead(), 10_000, path);
        assert.match(head!, new RegExp(`^GET ${path} HTTP/1\\.1\\r\\n`));
        assert.doesNotMatch(head!, /x-pothead-hold/i);
        await sock.write(
          `HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n${path}`,
        );
      }
      const texts = await deadline(Promise.all(answers), 10_000, "answers");
      assert.deepEqual(texts.map((t) => t.text), [
        "/a",
        "/f1",
        "/f2",
        "/f3",
        "/f4",
      ]);
    } finally {
      sock.close();
      await server.shutdown();
    }
  });
}

Deno.test("holdAhead option: per pool or hub-wide; refused with fairBy or affinityBy in the same pool", () => {
  const off = new Hub({});
  assert.equal(off.stats.pools[0].heldTotal, 0);
  assert.throws(
    () => new Hub({ holdAhead: true, fairBy: "ip" }),
    /Invalid option "holdAhead": not with fairBy/,
  );
  assert.throws(
    () => new Hub({ holdAhead: true, affinityBy: "ip" }),
    /Invalid option "holdAhead": not with affinityBy/,
  );
  assert.throws(
    () => new Hub({ pools: { gpu: { holdAhead: true, affinityBy: "ip" } } }),
    /Invalid option "pools\.gpu\.holdAhead": not with affinityBy/,
  );
  assert.throws(
    () => new Hub({ fairBy: "ip", pools: { gpu: { holdAhead: true } } }),
    /Invalid option "pools\.gpu\.holdAhead": not with fairBy/,
  );
  assert.throws(
    // deno-lint-ignore no-explicit-any
    () => new Hub({ holdAhead: "yes" as any }),
    /Invalid option "holdAhead": expected true or false/,
  );
  // A pool may turn it on where fairBy is off for that pool.
  new Hub({ fairBy: "ip", pools: { gpu: { holdAhead: true, fairBy: null } } });
});

Deno.test("hub --hold-ahead: from the flag or POTHEAD_HOLD_AHEAD; refused with --fair-by or --affinity-by, exit 2", async () => {
  const log = () => {};
  const before = Deno.env.get("POTHEAD_HOLD_AHEAD");
  try {
    Deno.env.delete("POTHEAD_HOLD_AHEAD");
    assert.equal(optionsFrom({}, log).holdAhead, undefined);
    assert.equal(optionsFrom({ "hold-ahead": true }, log).holdAhead, true);
    Deno.env.set("POTHEAD_HOLD_AHEAD", "1");
    assert.equal(optionsFrom({}, log).holdAhead, true);
    assert.throws(
      () => optionsFrom({ "fair-by": "ip" }, log),
      /Invalid POTHEAD_HOLD_AHEAD: not with --fair-by/,
    );
    Deno.env.delete("POTHEAD_HOLD_AHEAD");
    assert.throws(
      () => optionsFrom({ "hold-ahead": true, "affinity-by": "ip" }, log),
      /Invalid --hold-ahead: not with --affinity-by/,
    );
  } finally {
    if (before === undefined) Deno.env.delete("POTHEAD_HOLD_AHEAD");
    else Deno.env.set("POTHEAD_HOLD_AHEAD", before);
  }
  const { code, stdout, stderr } = await runDeno([
    "run",
    ...RUN_PERMISSIONS,
    "hub.ts",
    "--hold-ahead",
    "--fair-by",
    "ip",
  ]);
  assert.equal(code, 2, stderr);
  assert.match(stderr, /--hold-ahead: not with --fair-by/);
  assert.equal(stdout, "");
});

// A raw worker (R) with /a in progress and /f1 held behind it, /f2../f4
// queued; then a real worker (W, the serve engine) joins and serves
// /f2../f4, and /f1 is taken back from R once W is idle with nothing queued
// or /f1 has been held for two mean exchanges (four in a long queue; the
// bound on a held wait):
// R reads the revoke and answers as `script` says. Returns what the consumers got.
async function takeBack(
  script: (r: RawSocket, server: HubServer, seen: string[]) => Promise<void>,
  log: HubLogRecord[] = [],
) {
  const server = startHub({ holdAhead: true, onLog: (r) => log.push(r) });
  const r = await rawWorker(server);
  const seen: string[] = [];
  let w: WorkerHandle | undefined;
  try {
    await waitFor(() => pool(server).idle === 1, "R attached");
    const answers = ["/a", "/f1", "/f2", "/f3", "/f4"].map((p) =>
      get(server, p)
    );
    assert.match((await deadline(r.readHead(), 10_000, "/a"))!, /^GET \/a /);
    const held = await deadline(r.readHead(), 10_000, "/f1");
    assert.match(held!, /^GET \/f1 [^]*\r\nx-pothead-hold: 1\r\n/);
    w = worker(server, new Gates().handler(seen));
    const revoke = await deadline(r.readHead(), 10_000, "the revoke");
    assert.match(revoke!, /^GET \/\.pothead\/revoke HTTP\/1\.1\r\n/);
    assert.equal(pool(server).takeBacks, 1);
    await script(r, server, seen);
    const got = await deadline(Promise.all(answers), 10_000, "answers");
    return { got: got.map((g) => `${g.status} ${g.text}`), seen };
  } finally {
    r.close();
    if (w !== undefined) {
      w.close();
      await w.finished;
    }
    await server.shutdown();
  }
}

// What the consumers get when R answers /a and the rest are served.
const R_THEN_F = ["R: /a", "/f1", "/f2", "/f3", "/f4"];
const OK_A = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nR: /a";
const TAKEN_BACK =
  "HTTP/1.1 408 Request Timeout\r\nx-pothead-not-started: 1\r\ncontent-length: 0\r\n\r\n";
const REVOKED = "HTTP/1.1 150 Revoked\r\nx-pothead-revoked: 1\r\n\r\n";
const REVOKE_DONE = "HTTP/1.1 204 No Content\r\n\r\n";
// What the consumers of a take-back get when /f1 was given back: R answers
// /a, the other worker the rest.
const TAKEN_BACK_ANSWERS = [
  "200 R: /a",
  "200 /f1",
  "200 /f2",
  "200 /f3",
  "200 /f4",
];

Deno.test("holdAhead take-back: the interim 150 puts the held request back at once (the idle worker serves it); the held request's 408 and the revoke's 204 are read after the response in progress, and the connection stays", async () => {
  const { got } = await takeBack(async (r, server, seen) => {
    await r.write(REVOKED);
    // /f1 is served elsewhere before R answers /a.
    // (Taken back while W still had a queue, it may be held at W.)
    await waitFor(() => seen.some((s) => s.startsWith("/f1")), "/f1 at W");
    await r.write(OK_A + TAKEN_BACK + REVOKE_DONE);
    await waitFor(() => pool(server).idle === 2, "R idle again");
    assert.equal(pool(server).slots, 2);
    assert.equal(server.hub.stats.retries, 1);
  });
  assert.deepEqual(got, TAKEN_BACK_ANSWERS);
});

Deno.test("holdAhead take-back without a 150 (the response in progress had begun): the held request's 408 in its turn puts it back, then the 204, and the connection stays", async () => {
  const { got } = await takeBack(async (r, server, seen) => {
    await r.write(OK_A + TAKEN_BACK + REVOKE_DONE);
    // Put back as R went idle: either connection may take it now.
    let where = "";
    const next = r.readHead().then((head) => {
      where ||= "R";
      return head;
    });
    await waitFor(() => {
      if (seen.some((s) => s.startsWith("/f1"))) where ||= "W";
      return where !== "";
    }, "/f1 resent");
    if (where === "R") {
      assert.match((await next)!, /^GET \/f1 /);
      assert.doesNotMatch((await next)!, /x-pothead-hold/);
      await r.write("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n/f1");
    }
    await waitFor(() => pool(server).idle === 2, "both idle");
    assert.equal(pool(server).slots, 2);
    assert.equal(server.hub.stats.retries, 1);
  });
  assert.deepEqual(got, TAKEN_BACK_ANSWERS);
});

Deno.test("holdAhead take-back too late (the held request had started): its own response reaches its consumer, then the 204", async () => {
  const { got, seen } = await takeBack(async (r, server) => {
    await r.write(
      OK_A + "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nR: /f1" +
        REVOKE_DONE,
    );
    await waitFor(() => pool(server).idle === 2, "R idle again");
  });
  assert.deepEqual(got, [
    "200 R: /a",
    "200 R: /f1",
    "200 /f2",
    "200 /f3",
    "200 /f4",
  ]);
  assert.ok(!seen.some((s) => s.startsWith("/f1")), seen.join());
});

Deno.test("holdAhead take-back: any other answer to the revoke is a protocol error that closes the connection", async () => {
  const log: HubLogRecord[] = [];
  const { got } = await takeBack(async (r, server) => {
    await r.write(
      OK_A + TAKEN_BACK + "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    );
    await waitFor(() => pool(server).slots === 1, "R closed");
  }, log);
  assert.deepEqual(got, TAKEN_BACK_ANSWERS);
  assert.ok(
    closes(log).some((r) => /200 to a revoke/.test(String(r.reason))),
    JSON.stringify(closes(log)),
  );
});

// R takes /a with /f1 held behind it, answers `answer`, which closes its
// connection; a worker started then serves what is left.
async function heldThenClosed(answer: string) {
  const server = startHub({ holdAhead: true });
  const r = await rawWorker(server);
  let w: WorkerHandle | undefined;
  try {
    await waitFor(() => pool(server).idle === 1, "R attached");
    const answers = ["/a", "/f1", "/f2", "/f3", "/f4"].map((p) =>
      get(server, p)
    );
    await deadline(r.readHead(), 10_000, "/a");
    await deadline(r.readHead(), 10_000, "/f1");
    await r.write(answer);
    await waitFor(() => pool(server).slots === 0, "R closed");
    w = worker(server, new Gates().handler([]));
    const got = await deadline(Promise.all(answers), 10_000, "answers");
    return { got, retries: server.hub.stats.retries };
  } finally {
    r.close();
    if (w !== undefined) {
      w.close();
      await w.finished;
    }
    await server.shutdown();
  }
}

Deno.test("holdAhead: a 150 with nothing taken back is a protocol error: the connection closes, and the held GET goes to another worker", async () => {
  const { got } = await heldThenClosed(REVOKED);
  // /a failed at R (a protocol error, not resent).
  assert.deepEqual(got.map((g) => g.status), [502, 200, 200, 200, 200]);
  assert.deepEqual(got.slice(1).map((g) => g.text), [
    "/f1",
    "/f2",
    "/f3",
    "/f4",
  ]);
});

Deno.test("holdAhead: a response in progress that closes the connection sends the held GET to another worker", async () => {
  const { got, retries } = await heldThenClosed(
    "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nR: /a",
  );
  assert.deepEqual(got.map((g) => g.text), R_THEN_F);
  assert.equal(retries, 1);
});

Deno.test("holdAhead: a parking response before a held request that is taken back still parks the connection (the wait request follows the revoke's 204)", async () => {
  const { got } = await takeBack(async (r, server) => {
    await r.write(
      "HTTP/1.1 200 OK\r\nconnection: pothead-park\r\ncontent-length: 5\r\n\r\nR: /a" +
        TAKEN_BACK + REVOKE_DONE,
    );
    const wait = await deadline(r.readHead(), 10_000, "the wait request");
    assert.match(wait!, /^GET \/\.pothead\/wait HTTP\/1\.1\r\n/);
    await waitFor(() => pool(server).parked === 1, "R parked");
    await r.write(REVOKE_DONE); // ready: offered again
    await waitFor(() => pool(server).idle === 2, "R idle again");
  });
  assert.deepEqual(got, TAKEN_BACK_ANSWERS);
});

Deno.test("holdAhead: a held request behind one declined with the parking 408 is answered as one just arrived: its own answer decides, and the declined one is resent", async () => {
  const server = startHub({ holdAhead: true });
  const r = await rawWorker(server);
  try {
    await waitFor(() => pool(server).idle === 1, "R attached");
    const answers = ["/a", "/f1", "/f2", "/f3", "/f4"].map((p) =>
      get(server, p)
    );
    assert.match((await deadline(r.readHead(), 10_000, "/a"))!, /^GET \/a /);
    assert.match(
      (await deadline(r.readHead(), 10_000, "/f1"))!,
      /^GET \/f1 [^]*x-pothead-hold: 1/,
    );
    await r.write(
      "HTTP/1.1 408 Request Timeout\r\nx-pothead-not-started: 1\r\nconnection: pothead-park\r\ncontent-length: 0\r\n\r\n" +
        "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nR: /f1",
    );
    // Then every request the hub sends (the declined /a among them, maybe
    // held) is answered; a wait request would mean the hub parked it.
    const heads: string[] = [];
    for (let i = 0; i < 4; i++) {
      const head = (await deadline(r.readHead(), 10_000, "a request"))!;
      heads.push(head.split(" ")[1]);
      await r.write(
        `HTTP/1.1 200 OK\r\ncontent-length: ${3 + heads[i].length}\r\n\r\nR: ${
          heads[i]
        }`,
      );
    }
    assert.deepEqual(heads.toSorted(), ["/a", "/f2", "/f3", "/f4"]);
    const got = await deadline(Promise.all(answers), 10_000, "answers");
    assert.deepEqual(got.map((g) => g.text), [
      "R: /a",
      "R: /f1",
      "R: /f2",
      "R: /f3",
      "R: /f4",
    ]);
    assert.equal(pool(server).parked, 0);
  } finally {
    r.close();
    await server.shutdown();
  }
});

Deno.test("holdAhead: with fewer than four requests per slot queued, it holds only while most exchanges end in the order they started", async () => {
  const { server, gates, seen, workers } = await holding(2);
  let round = 0;
  // Both workers busy, then one GET queued behind them: held or not?
  const busyPlusOne = async (endFirst: "first" | "second") => {
    const r = ++round;
    const s1 = get(server, `/slow${r}a`);
    await waitFor(() => seen.includes(`/slow${r}a`), `/slow${r}a started`);
    // Well apart: requests that start together end "in order" either way.
    await new Promise((resolve) => setTimeout(resolve, 30));
    const s2 = get(server, `/slow${r}b`);
    await waitFor(() => seen.includes(`/slow${r}b`), `/slow${r}b started`);
    const f = get(server, `/f${r}`);
    await waitFor(
      () => pool(server).queued + pool(server).held === 1,
      `/f${r} queued`,
    );
    // The hub decides at once, as the request joins the queue.
    await new Promise((resolve) => setTimeout(resolve, 50));
    const held = pool(server).held === 1;
    const order = endFirst === "first" ? ["a", "b"] : ["b", "a"];
    gates.open(`/slow${r}${order[0]}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
    gates.open(`/slow${r}${order[1]}`);
    await deadline(Promise.all([s1, s2, f]), 10_000, `round ${r}`);
    return held;
  };
  try {
    // No exchange has ended yet: the share in order starts at 0.
    assert.equal(await busyPlusOne("first"), false, "held before any end");
    // 40 exchanges, one at a time: each ends with no other in progress.
    for (let i = 0; i < 40; i++) await get(server, `/one${i}`);
    assert.equal(await busyPlusOne("first"), true, "held after in-order ends");
    // Rounds whose later request ends first: half the ends out of order.
    for (let i = 0; i < 8; i++) await busyPlusOne("second");
    assert.equal(
      await busyPlusOne("first"),
      false,
      "held after out-of-order ends",
    );
    assert.equal(pool(server).held, 0);
  } finally {
    await teardown(server, workers);
  }
});

Deno.test("holdAhead: after long exchanges the queue must be longer to hold: 8 queued behind one connection are not held once a 150 ms exchange has ended", async () => {
  const { server, gates, seen, workers } = await holding(1);
  try {
    // One exchange of 150 ms or more: the pool's mean exchange, so a queue
    // holds from 30 requests per connection (one per 5 ms of the mean).
    const long = get(server, "/slow-long");
    await waitFor(() => seen.length === 1, "/slow-long started");
    await new Promise((resolve) => setTimeout(resolve, 150));
    gates.open("/slow-long");
    await deadline(long, 10_000, "/slow-long");
    const slow = get(server, "/slow");
    await waitFor(() => seen.length === 2, "/slow started");
    // Eight would hold before any exchange ended (four per connection).
    const fast = Array.from({ length: 8 }, (_, i) => get(server, `/f${i + 1}`));
    await waitFor(() => pool(server).queued === 8, "all queued");
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(pool(server).held, 0);
    gates.open("/slow");
    await deadline(Promise.all([slow, ...fast]), 10_000, "answers");
    assert.equal(pool(server).heldTotal, 0);
    assert.ok(!seen.some((s) => s.endsWith(" held")), seen.join());
  } finally {
    await teardown(server, workers);
  }
});

Deno.test("holdAhead: requests that start together (a burst) end in order whichever ends first", async () => {
  const { server, gates, seen, workers } = await holding(2);
  try {
    // Pairs sent at once and ended 200 ms later, the one that started
    // second first: its partner began well within 5% of the mean exchange
    // before it, so every end counts as in order.
    for (let r = 1; r <= 20; r++) {
      const paths = [`/slow${r}a`, `/slow${r}b`];
      const pair = paths.map((p) => get(server, p));
      await waitFor(
        () => paths.every((p) => seen.includes(p)),
        `pair ${r} started`,
      );
      await new Promise((resolve) => setTimeout(resolve, 200));
      const [first, second] = [...paths].sort((p, q) =>
        seen.indexOf(p) - seen.indexOf(q)
      );
      gates.open(second);
      await deadline(pair[paths.indexOf(second)], 10_000, second);
      gates.open(first);
      await deadline(Promise.all(pair), 10_000, `pair ${r}`);
    }
    // Both busy and one GET queued (far fewer than the queue that holds
    // for 200 ms jobs): held, by the order of ends.
    const busy = ["/slowXa", "/slowXb"].map((p) => get(server, p));
    await waitFor(() => pool(server).idle === 0, "both busy");
    const f = get(server, "/f");
    await waitFor(() => pool(server).held === 1, "/f held", 5000);
    gates.open("/slowXa");
    gates.open("/slowXb");
    await deadline(Promise.all([...busy, f]), 10_000, "answers");
    assert.ok(seen.includes("/f held"), seen.join());
  } finally {
    await teardown(server, workers);
  }
});

Deno.test("holdAhead: a request of a higher priority class that queues behind a held one takes its place: the held request is taken back and runs after it", async () => {
  const { server, gates, seen, workers } = await holding(1, {
    trustPriority: true,
  });
  try {
    const slow = get(server, "/slow");
    await waitFor(() => seen.length === 1, "/slow started");
    const low = ["/f1", "/f2", "/f3", "/f4"].map((p) => get(server, p));
    await waitFor(() => pool(server).held === 1, "/f1 held", 5000);
    const high = fetch(`http://127.0.0.1:${server.addr.port}/hi`, {
      headers: { "x-pothead-priority": "5" },
    }).then((res) => res.text());
    await waitFor(() => pool(server).takeBacks === 1, "/f1 taken back", 5000);
    await waitFor(() => pool(server).held === 0, "/f1 back in the queue");
    gates.open("/slow");
    const [s, h, lows] = await deadline(
      Promise.all([slow, high, Promise.all(low)]),
      10_000,
      "answers",
    );
    assert.equal(s.text, "/slow");
    assert.equal(h, "/hi");
    assert.deepEqual(lows.map((l) => l.text), ["/f1", "/f2", "/f3", "/f4"]);
    // The higher class first; the taken-back request next, at the front
    // of its own class; its handler ran once.
    assert.equal(seen[0], "/slow");
    assert.match(seen[1], /^\/hi( held)?$/);
    assert.equal(seen[2].replace(" held", ""), "/f1");
    assert.equal(seen.filter((s) => s.startsWith("/f1")).length, 1);
  } finally {
    await teardown(server, workers);
  }
});

// Streamed answers (an event stream, a download at a slow consumer's pace)
// have no end the hub can foresee: nothing is held behind one once its head
// is in, and a request held before that goes elsewhere.

const STREAM_HEAD = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";

Deno.test("holdAhead: nothing is held behind a response whose head is in and whose body is still coming; the queued requests wait for the connection as in plain dispatch", async () => {
  const server = startHub({ holdAhead: true });
  const r = await rawWorker(server);
  const asked: Promise<unknown>[] = [];
  try {
    await waitFor(() => pool(server).idle === 1, "R attached");
    const a = get(server, "/a");
    asked.push(a);
    assert.match((await deadline(r.readHead(), 10_000, "/a"))!, /^GET \/a /);
    await r.write(STREAM_HEAD + "4\r\nR: /\r\n");
    // Four per connection queued: enough to hold behind a request whose
    // answer has not begun (see the first tests).
    const fast = ["/f1", "/f2", "/f3", "/f4"].map((p) => get(server, p));
    asked.push(...fast);
    await waitFor(() => pool(server).queued === 4, "all queued");
    // Past when a hold would have been written (at once) and asked back.
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(pool(server).heldTotal, 0);
    await r.write("1\r\na\r\n0\r\n\r\n");
    for (const path of ["/f1", "/f2", "/f3", "/f4"]) {
      const head = await deadline(r.readHead(), 10_000, path);
      assert.match(head!, new RegExp(`^GET ${path} HTTP/1\\.1\\r\\n`));
      assert.doesNotMatch(head!, /x-pothead-hold/i);
      await r.write(`HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n${path}`);
    }
    const got = await deadline(Promise.all([a, ...fast]), 10_000, "answers");
    assert.deepEqual(got.map((g) => g.text), R_THEN_F);
    assert.equal(pool(server).heldTotal, 0);
  } finally {
    r.close();
    // Cut if the test failed first.
    await Promise.allSettled(asked);
    await server.shutdown();
  }
});

Deno.test("holdAhead: a request held before the response in progress began to stream is asked back once the body is still coming 250 ms after its head, then sent elsewhere; the stream goes on, and the connection stays", async () => {
  const log: HubLogRecord[] = [];
  const server = startHub({ holdAhead: true, onLog: (rec) => log.push(rec) });
  const r = await rawWorker(server);
  let w: WorkerHandle | undefined;
  const asked: Promise<unknown>[] = [];
  try {
    await waitFor(() => pool(server).idle === 1, "R attached");
    const answer = get(server, "/a");
    const fast = ["/f1", "/f2", "/f3", "/f4"].map((p) => get(server, p));
    asked.push(answer, ...fast);
    assert.match((await deadline(r.readHead(), 10_000, "/a"))!, /^GET \/a /);
    const held = await deadline(r.readHead(), 10_000, "/f1");
    assert.match(held!, /^GET \/f1 [^]*\r\nx-pothead-hold: 1\r\n/);
    const headAt = performance.now();
    await r.write(STREAM_HEAD + "4\r\nR: /\r\n");
    const revoke = await deadline(r.readHead(), 10_000, "the revoke");
    assert.match(revoke!, /^GET \/\.pothead\/revoke HTTP\/1\.1\r\n/);
    // Not before the wait (a timer fires no earlier than asked).
    assert.ok(performance.now() - headAt >= 240);
    assert.equal(pool(server).takeBacks, 1);
    // Given up on without a 150: back at the front of the queue.
    await waitFor(() => pool(server).queued === 4, "/f1 back in the queue");
    assert.equal(pool(server).held, 0);
    // Another worker serves the queue while the stream is still open, /f1
    // first.
    const seen: string[] = [];
    w = worker(server, new Gates().handler(seen));
    const got = await deadline(Promise.all(fast), 10_000, "fast answers");
    assert.deepEqual(got.map((g) => `${g.status} ${g.text}`), [
      "200 /f1",
      "200 /f2",
      "200 /f3",
      "200 /f4",
    ]);
    // (W may get one held behind another.)
    assert.deepEqual(seen.map((s) => s.split(" ")[0]), [
      "/f1",
      "/f2",
      "/f3",
      "/f4",
    ]);
    // The stream ends; R answers the held /f1 in its turn ("not started")
    // and the revoke: read and dropped, and the connection stays.
    await r.write("1\r\na\r\n0\r\n\r\n" + TAKEN_BACK + REVOKE_DONE);
    assert.equal((await deadline(answer, 10_000, "/a")).text, "R: /a");
    await waitFor(() => pool(server).idle === 2, "R idle again");
    assert.deepEqual(closes(log), []);
    assert.equal(server.hub.stats.retries, 1);
    assert.equal(pool(server).takeBacks, 1);
  } finally {
    r.close();
    // Cut if the test failed before the stream ended.
    await Promise.allSettled(asked);
    if (w !== undefined) {
      w.close();
      await w.finished;
    }
    await server.shutdown();
  }
});

Deno.test("holdAhead with our runner: a request held behind one whose event stream begins late runs once, on the other worker, while the stream goes on", async () => {
  const gates = new Gates();
  const seen: string[] = [];
  const plain = gates.handler(seen);
  // The stream's own waits, not counted in `seen`.
  const wait = gates.handler([]);
  const encoder = new TextEncoder();
  // /stream answers once /head opens, then streams until /end opens.
  const handler = async (req: Request): Promise<Response> => {
    if (new URL(req.url).pathname !== "/stream") return plain(req);
    seen.push("/stream");
    await wait(new Request(new URL("/slowhead", req.url)));
    const body = new ReadableStream<Uint8Array>({
      async start(c) {
        c.enqueue(encoder.encode("data: 1\n\n"));
        await wait(new Request(new URL("/slowend", req.url)));
        c.close();
      },
    });
    return new Response(body, {
      headers: { "content-type": "text/event-stream" },
    });
  };
  const log: HubLogRecord[] = [];
  const server = startHub({ holdAhead: true, onLog: (r) => log.push(r) });
  const ws = [worker(server, handler), worker(server, handler)];
  const asked: Promise<unknown>[] = [];
  try {
    await waitFor(() => pool(server).idle === 2, "workers attached");
    const stream = get(server, "/stream");
    asked.push(stream);
    await waitFor(() => seen.length === 1, "/stream started");
    const slow = get(server, "/slow");
    asked.push(slow);
    await waitFor(() => seen.length === 2, "/slow started");
    // Enough to hold one behind each connection (four per connection
    // queued), the stream's first: its request began first.
    const paths = Array.from({ length: 10 }, (_, i) => `/f${i + 1}`);
    const fast = paths.map((p) => get(server, p));
    asked.push(...fast);
    await waitFor(() => pool(server).held === 2, "two held", 5000);
    gates.open("/slowhead");
    // Asked back and given up on while the stream stays open.
    await waitFor(
      () => pool(server).held === 1 && pool(server).takeBacks === 1,
      "the request held behind the stream given up on",
      5000,
    );
    gates.open("/slow");
    const got = await deadline(Promise.all(fast), 10_000, "fast answers");
    assert.deepEqual(got.map((g) => g.text), paths);
    // Each ran once, none where the stream is: the one held there never
    // started.
    assert.deepEqual(
      seen.filter((s) => s.startsWith("/f")).map((s) => s.split(" ")[0])
        .sort(),
      [...paths].sort(),
    );
    gates.open("/slowend");
    assert.equal(
      (await deadline(stream, 10_000, "/stream")).text,
      "data: 1\n\n",
    );
    assert.equal((await slow).text, "/slow");
    await waitFor(() => pool(server).idle === 2, "both idle");
    assert.deepEqual(closes(log), []);
  } finally {
    // The stream's handler waits for these whatever happened.
    for (const g of ["/slowhead", "/slowend", "/slow"]) gates.open(g);
    await Promise.allSettled(asked);
    await teardown(server, ws);
  }
});

Deno.test("holdAhead: a request held behind a body its consumer holds back (read at its pace) is asked back but not sent elsewhere: the worker may have sent all of that body and started it", async () => {
  // Read at the consumer's pace: the hub reads no further than it.
  const server = startHub({ holdAhead: true, responseBuffer: 0 });
  const r = await rawWorker(server);
  const asked: Promise<unknown>[] = [];
  let body: ReadableStreamDefaultReader<Uint8Array> | undefined;
  try {
    await waitFor(() => pool(server).idle === 1, "R attached");
    const a = fetch(`http://127.0.0.1:${server.addr.port}/a`);
    asked.push(a);
    const fast = ["/f1", "/f2", "/f3", "/f4"].map((p) => get(server, p));
    asked.push(...fast);
    assert.match((await deadline(r.readHead(), 10_000, "/a"))!, /^GET \/a /);
    const held = await deadline(r.readHead(), 10_000, "/f1");
    assert.match(held!, /^GET \/f1 [^]*\r\nx-pothead-hold: 1\r\n/);
    // More than the socket buffers on the way hold: the consumer, which
    // reads nothing yet, holds the body back.
    const size = 32 * 1024 * 1024;
    await r.write(STREAM_HEAD + size.toString(16) + "\r\n");
    const sent = r.write(new Uint8Array(size).fill(97));
    asked.push(sent);
    const revoke = await deadline(r.readHead(), 10_000, "the revoke");
    assert.match(revoke!, /^GET \/\.pothead\/revoke HTTP\/1\.1\r\n/);
    // Well past when it would go elsewhere: it is still held.
    await new Promise((resolve) => setTimeout(resolve, 3 * 250));
    assert.equal(pool(server).held, 1);
    assert.equal(pool(server).queued, 3);
    assert.equal(pool(server).takeBacks, 1);
    // The consumer reads; R ends the body and answers the held /f1 (it had
    // not started it) and the revoke; /f1 is put back and served.
    const res = await a;
    body = res.body!.getReader();
    let got = 0;
    const reading = (async () => {
      for (;;) {
        const { done, value } = await body!.read();
        if (done) return got;
        got += value.length;
      }
    })();
    asked.push(reading);
    await deadline(sent, 30_000, "the body sent");
    await r.write("\r\n0\r\n\r\n" + TAKEN_BACK + REVOKE_DONE);
    assert.equal(await deadline(reading, 30_000, "the body read"), size);
    // /f1, put back at the front of the queue as R reads its 408, first.
    for (const path of ["/f1", "/f2", "/f3", "/f4"]) {
      const head = await deadline(r.readHead(), 10_000, path);
      assert.match(head!, new RegExp(`^GET ${path} HTTP/1\\.1\\r\\n`));
      await r.write(`HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n${path}`);
    }
    const answers = await deadline(Promise.all(fast), 10_000, "answers");
    assert.deepEqual(answers.map((g) => g.text), ["/f1", "/f2", "/f3", "/f4"]);
    assert.equal(server.hub.stats.retries, 1);
  } finally {
    r.close();
    await body?.cancel().catch(() => {});
    await Promise.allSettled(asked);
    await server.shutdown();
  }
});

Deno.test("holdAhead: a request held behind a job that runs long is asked back after a few mean exchanges (four: the queue is long), while the other worker still has a queue to serve, and runs there before the rest", async () => {
  const server = startHub({ holdAhead: true });
  const gates = new Gates();
  const seenA: string[] = [];
  const seenB: string[] = [];
  const a = worker(server, gates.handler(seenA));
  const b = worker(server, gates.handler(seenB));
  const asked: Promise<unknown>[] = [];
  try {
    await waitFor(() => pool(server).idle === 2, "workers attached");
    // Short exchanges first: the pool's mean exchange is a few ms.
    for (let i = 0; i < 20; i++) await get(server, `/w${i}`);
    const slow = get(server, "/slow");
    asked.push(slow);
    await waitFor(
      () => [...seenA, ...seenB].includes("/slow"),
      "/slow started",
    );
    const [seenX, seenY] = seenA.includes("/slow")
      ? [seenA, seenB]
      : [seenB, seenA];
    // /f1 goes to Y; /f2 is held behind /slow, which began first; Y serves
    // the rest, its exchanges ending every few ms.
    const paths = Array.from({ length: 40 }, (_, i) => `/f${i + 1}`);
    const fast = paths.map((p) => get(server, p));
    asked.push(...fast);
    const got = await deadline(Promise.all(fast), 10_000, "fast answers");
    assert.deepEqual(got.map((g) => g.text), paths);
    const order = seenY.map((s) => s.split(" ")[0]);
    assert.ok(!seenX.some((s) => s.startsWith("/f")), seenX.join());
    // Asked back while the queue was still long, not once Y went idle with
    // nothing queued (which would make it the last).
    assert.ok(order.indexOf("/f2") < order.indexOf("/f40"), order.join());
    assert.ok(pool(server).takeBacks >= 1);
    gates.open("/slow");
    assert.equal((await deadline(slow, 10_000, "/slow")).text, "/slow");
  } finally {
    gates.open("/slow");
    await Promise.allSettled(asked);
    await teardown(server, [a, b]);
  }
});
