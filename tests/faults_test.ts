/**
 * Fault injection with real processes and sockets: workers SIGKILLed while
 * busy and while idle, a worker that hands its connections back in a tight
 * loop, a hub killed and restarted under load, consumers that abort at
 * random. Each test asserts exact outcomes, never durations.
 */

import { waitFor } from "./_wait.ts";
import assert from "node:assert/strict";
import { type HubLogRecord, type HubServer, serveHub } from "../mod.ts";
import { NOT_STARTED_RESPONSE } from "../worker.ts";
import {
  closeAll,
  freePort,
  type Proc,
  spawnDeno,
  startWorker,
} from "./_procs.ts";
import { runSoak } from "../bench/soak.ts";
import { connectWorker } from "./_hub.ts";

const HANDLER = "tests/fixtures/soak_handler.ts";

const until = (check: () => boolean, what: string, ms = 20_000) =>
  waitFor(check, what, ms);

// A worker process with two slots, running HANDLER.
function twoSlotWorker(server: HubServer): Promise<Proc> {
  return startWorker(server.workerAddr.port, HANDLER, ["--concurrency", "2"]);
}

function hub(): HubServer {
  return serveHub({
    hostname: "127.0.0.1",
    port: 0,
    workerPort: 0,
  });
}

Deno.test("a worker SIGKILLed mid-request costs only that consumer a 502", async () => {
  const server = hub();
  let a: Proc | undefined;
  let b: Proc | undefined;
  try {
    a = await startWorker(server.workerAddr.port, HANDLER);
    await until(() => server.hub.stats.idle === 1, "worker A idle");
    const base = `http://127.0.0.1:${server.addr.port}`;
    // A takes the long request (it is the only worker). A POST: a GET whose
    // worker died before answering would be resent to B (the retry rule).
    const victim = fetch(`${base}/long?ms=60000&id=victim`, {
      method: "POST",
      body: "work",
    });
    await until(() => server.hub.stats.busy === 1, "A busy");
    b = await startWorker(server.workerAddr.port, HANDLER);
    await until(() => server.hub.stats.idle === 1, "worker B idle");
    const before = await Promise.all(
      Array.from(
        { length: 5 },
        (_, i) =>
          fetch(`${base}/short?id=b${i}`).then(async (
            r,
          ) => [r.status, await r.text()]),
      ),
    );
    a.kill("SIGKILL");
    const res = await victim;
    assert.equal(res.status, 502);
    assert.match(await res.text(), /^502 Bad Gateway: Worker/);
    const after = await Promise.all(
      Array.from(
        { length: 5 },
        (_, i) =>
          fetch(`${base}/short?id=c${i}`).then(async (
            r,
          ) => [r.status, await r.text()]),
      ),
    );
    for (const [status, text] of [...before, ...after]) {
      assert.equal(status, 200);
      assert.match(String(text), new RegExp(`^[bc][0-9] ${b.pid}\\n$`));
    }
    assert.equal(server.hub.stats.failed, 1);
  } finally {
    await closeAll(a, b);
    await server.shutdown();
  }
});

Deno.test("a worker SIGKILLed while idle loses no request", async () => {
  const server = hub();
  let a: Proc | undefined;
  let b: Proc | undefined;
  try {
    a = await twoSlotWorker(server);
    b = await twoSlotWorker(server);
    await until(() => server.hub.stats.idle === 4, "4 idle slots");
    a.kill("SIGKILL");
    await a.status;
    // Right after the kill, before or after the hub noticed: idempotent
    // requests that hit a dead connection are resent, so every one succeeds.
    const results = await Promise.all(
      Array.from(
        { length: 40 },
        (_, i) =>
          fetch(`http://127.0.0.1:${server.addr.port}/?id=${i}`).then(
            async (r) => [r.status, await r.text()],
          ),
      ),
    );
    for (const [i, [status, text]] of results.entries()) {
      assert.equal(status, 200);
      assert.equal(text, `${i} ${b.pid}\n`);
    }
    await until(() => server.hub.stats.slots === 2, "A's slots gone");
  } finally {
    await closeAll(a, b);
    await server.shutdown();
  }
});

Deno.test("a frozen worker (SIGSTOP) loses its idle connections to pings; requests go to the live one", async () => {
  const logs: HubLogRecord[] = [];
  const server = serveHub({
    hostname: "127.0.0.1",
    port: 0,
    workerPort: 0,
    pingInterval: 200,
    pingTimeout: 500,
    onLog: (r) => logs.push(r),
  });
  let a: Proc | undefined;
  let b: Proc | undefined;
  try {
    a = await twoSlotWorker(server);
    b = await twoSlotWorker(server);
    await until(() => server.hub.stats.idle === 4, "4 idle slots");
    // Frozen, its connections stay open (the kernel still acknowledges),
    // as for a machine gone silent: without pings they would look idle and
    // take requests that hang until the head timeout.
    a.kill("SIGSTOP");
    await until(() => server.hub.stats.slots === 2, "A's slots closed");
    assert.equal(server.hub.stats.pingTimeouts, 2);
    assert.equal(
      logs.filter((r) => r.msg.includes("did not answer a ping")).length,
      2,
    );
    for (let i = 0; i < 10; i++) {
      const res = await fetch(`http://127.0.0.1:${server.addr.port}/?id=${i}`);
      assert.equal(res.status, 200);
      assert.equal(await res.text(), `${i} ${b.pid}\n`);
    }
    // B answered its pings all along and kept both connections.
    assert.ok(server.hub.stats.pings > 2);
    assert.equal(server.hub.stats.slots, 2);
  } finally {
    a?.kill("SIGCONT");
    await closeAll(a, b);
    await server.shutdown();
  }
});

Deno.test("a worker that hands its connections back in a tight loop loses no request", async () => {
  const server = serveHub({ hostname: "127.0.0.1", port: 0, workerPort: 0 });
  const stable = connectWorker(async (req) => {
    const body = req.body === null ? "" : await req.text();
    return new Response(
      `ok ${new URL(req.url).searchParams.get("id")} ${body.length}`,
    );
  }, { port: server.workerAddr.port, workerId: "stable" });
  let flapping = true;
  let cycles = 0;
  // Connect, wait a moment, answer "not started" (whatever the hub sent) and
  // close: the race where a request crosses the worker's goodbye.
  const flapper = (async () => {
    while (flapping && cycles < 2000) {
      let conn: Deno.Conn;
      try {
        conn = await Deno.connect({ port: server.workerAddr.port });
      } catch {
        break;
      }
      cycles++;
      // Past the hub's handshake wait, so it counts as a plain worker.
      await new Promise((r) => setTimeout(r, 55 + cycles % 5));
      try {
        await conn.write(NOT_STARTED_RESPONSE);
      } catch {
        // the hub closed it first
      }
      conn.close();
    }
  })();
  try {
    await until(
      () => server.hub.stats.workers.some((w) => w.id === "stable"),
      "stable worker",
    );
    const big = new Uint8Array(200_000).fill(97);
    const results = await Promise.all(
      Array.from({ length: 120 }, (_, i) => {
        const init: RequestInit = i % 3 === 0
          ? { method: "GET" }
          : i % 3 === 1
          ? { method: "POST", body: `small ${i}` }
          : {
            // a streamed upload: retried only because it was never sent
            method: "POST",
            body: new Blob([big]).stream(),
          };
        return fetch(`http://127.0.0.1:${server.addr.port}/?id=${i}`, init)
          .then(
            async (r) => [r.status, await r.text()],
          );
      }),
    );
    for (const [i, [status, text]] of results.entries()) {
      const length = i % 3 === 0
        ? 0
        : i % 3 === 1
        ? `small ${i}`.length
        : big.length;
      assert.equal(status, 200, `request ${i}: ${text}`);
      assert.equal(text, `ok ${i} ${length}`);
    }
    assert.ok(cycles > 0);
  } finally {
    flapping = false;
    await flapper;
    await stable.drain();
    await server.shutdown();
  }
});

Deno.test("a hub killed under load fails its consumers at once, and workers come back after a restart", async () => {
  const port = freePort();
  const workerPort = freePort();
  const args = [
    "run",
    "--allow-net",
    "--allow-env",
    "--allow-read",
    "hub.ts",
    "--hostname",
    "127.0.0.1",
    "--port",
    String(port),
    "--worker-port",
    String(workerPort),
  ];
  let hubProc: Proc | undefined = spawnDeno("hub", args);
  let worker: Proc | undefined;
  try {
    await hubProc.stdout.next(/\(workers/);
    worker = await startWorker(workerPort, HANDLER, [
      "--concurrency",
      "2",
      "--max-backoff",
      "300ms",
    ]);
    const base = `http://127.0.0.1:${port}`;
    const ok = await fetch(`${base}/?id=warm`);
    assert.equal(ok.status, 200);
    await ok.body?.cancel();
    // 20 slow requests in flight (2 running, 18 queued), then SIGKILL.
    const inflight = Array.from(
      { length: 20 },
      (_, i) =>
        fetch(`${base}/?ms=2000&id=k${i}`).then(
          async (r) => `status ${r.status} ${await r.text()}`,
          (e) => `error ${(e as Error).name}`,
        ),
    );
    await new Promise((r) => setTimeout(r, 300));
    hubProc.kill("SIGKILL");
    await hubProc.status;
    const outcomes = await Promise.all(inflight);
    // None hangs: each one settled, with an error (or, rarely, a response
    // that was complete before the kill).
    assert.equal(outcomes.length, 20);
    for (const o of outcomes) assert.match(o, /^(error |status 200 )/);
    hubProc = spawnDeno("hub", args);
    await hubProc.stdout.next(/\(workers/);
    // The worker reconnects by itself: a request queued at the new hub is
    // answered once it has.
    const res = await fetch(`${base}/?id=again`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), `again ${worker.pid}\n`);
  } finally {
    await closeAll(hubProc, worker);
  }
});

Deno.test("consumers aborting at random leak no worker slot", async () => {
  const server = hub();
  const worker = connectWorker(async (req) => {
    const ms = Number(new URL(req.url).searchParams.get("ms") ?? "0");
    await new Promise((r) => setTimeout(r, ms));
    return new Response("ok");
  }, { port: server.workerAddr.port, concurrency: 4 });
  try {
    await until(() => server.hub.stats.idle === 4, "4 idle slots");
    let seed = 7;
    const random = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
    const outcomes = await Promise.all(
      Array.from({ length: 200 }, async (_, i) => {
        const controller = new AbortController();
        const abort = random() < 0.3;
        const timer = abort
          ? setTimeout(() => controller.abort(), Math.floor(random() * 15))
          : undefined;
        try {
          const res = await fetch(
            `http://127.0.0.1:${server.addr.port}/?ms=${i % 7}`,
            { signal: controller.signal },
          );
          const text = await res.text();
          return abort ? "answered-or-aborted" : `${res.status} ${text}`;
        } catch {
          return abort ? "answered-or-aborted" : "error";
        } finally {
          clearTimeout(timer);
        }
      }),
    );
    for (const o of outcomes) assert.match(o, /^(200 ok|answered-or-aborted)$/);
    // Every slot comes back: aborted ones reconnect, the rest go idle again.
    await until(
      () => server.hub.stats.slots === 4 && server.hub.stats.idle === 4,
      "all 4 slots idle again",
    );
    const res = await fetch(`http://127.0.0.1:${server.addr.port}/`);
    assert.equal(await res.text(), "ok");
  } finally {
    await worker.drain();
    await server.shutdown();
  }
});

for (
  const [hubs, recycleAfter, holdAhead] of [
    [1, 0, false],
    [2, 0, false],
    [1, 60, false],
    [1, 0, true],
  ] as const
) {
  Deno.test({
    name:
      `a short soak with worker kills and consumer aborts runs nothing unsafe twice and loses nothing (${hubs} hub${
        hubs > 1 ? "s, workers parking between them" : ""
      }${
        recycleAfter > 0
          ? `, workers recycling themselves after ${recycleAfter} to ${
            2 * recycleAfter
          } requests`
          : ""
      }${
        holdAhead
          ? ", requests held ahead, some behind answers that stream"
          : ""
      })`,
    sanitizeResources: false,
    sanitizeOps: false,
    fn: () => soak(hubs, recycleAfter, holdAhead),
  });
}

async function soak(
  hubs: number,
  recycleAfter: number,
  holdAhead: boolean,
): Promise<void> {
  const report = await runSoak({
    requests: 1500,
    inflight: 16,
    workers: 3,
    concurrency: 2,
    killEvery: 400,
    abortRate: 0.03,
    deadline: 240_000,
    seed: 1,
    hubs,
    recycleAfter,
    holdAhead,
    // Held requests meet answers that stream too (sent elsewhere from
    // behind them, or not), and kills mid-stream.
    streamRate: holdAhead ? 0.05 : 0,
  });
  // 1 500 requests over 3 workers recycling after at most 120 each: some
  // did (the kills end some workers before they get there).
  if (recycleAfter > 0) assert.ok(report.recycles > 0, JSON.stringify(report));
  // 16 in flight on 6 slots keep about 10 queued, over the hold rule's
  // queue for jobs of a few milliseconds (a request per slot for every 5 ms
  // of the mean job): the hub holds GETs, which then meet the kills and the
  // aborts like any request in progress.
  if (holdAhead) {
    assert.ok((report.held ?? 0) > 0, JSON.stringify(report));
    // Held requests are answered like any other: most of them 200.
    assert.ok(
      (report.heldStatuses?.["200"] ?? 0) > report.held! / 2,
      JSON.stringify(report),
    );
    assert.ok(report.streams > 0, JSON.stringify(report));
  } else assert.equal(report.held, undefined);
  // Every status is counted once, under its request's method.
  for (const [status, n] of Object.entries(report.statuses)) {
    assert.equal(
      (report.statusesByMethod.GET[status] ?? 0) +
        (report.statusesByMethod.POST[status] ?? 0),
      n,
      status,
    );
  }
  assert.equal(report.sent, 1500);
  assert.equal(report.lost, 0);
  assert.equal(report.wrongAnswer, 0);
  assert.equal(report.ranTwiceUnsafe, 0);
  assert.equal(report.networkErrors, 0);
  assert.equal(
    report.answeredOnce + report.aborted + report.streamsCut +
      Object.entries(report.statuses)
        .filter(([s]) => s !== "200")
        .reduce((n, [, c]) => n + c, 0),
    report.sent,
  );
}
