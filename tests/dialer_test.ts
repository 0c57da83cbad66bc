// The multi-hub dialer: one worker offers its free permits to every hub it
// knows and withdraws surplus idle connections (with the "not started" 408)
// while busy. Two real hubs on loopback, in-process workers; held requests
// are released by the test. No durations are asserted.

import assert from "node:assert/strict";
import { type HubServer, serveHub } from "../hub.ts";
import type { WorkerHandle } from "../worker.ts";
import { deadline, waitFor } from "./_relay.ts";
import { connectWorker } from "./_hub.ts";
import { Dialer, type DialerOptions } from "../_dialer.ts";

const HANG = 20_000;

/** A connection that takes writes and never delivers a byte. */
function silentConn(close: () => void = () => {}) {
  return {
    read: () => new Promise<number | null>(() => {}),
    write: (p: Uint8Array) => Promise.resolve(p.length),
    close,
  };
}

function hub(): HubServer {
  return serveHub({
    hostname: "127.0.0.1",
    port: 0,
    workerPort: 0,
    shutdownGrace: 500,
    queueTimeout: HANG,
  });
}

async function withHubs(
  fn: (a: HubServer, b: HubServer, workers: WorkerHandle[]) => Promise<void>,
): Promise<void> {
  const a = hub();
  const b = hub();
  const workers: WorkerHandle[] = [];
  try {
    await deadline(fn(a, b, workers), HANG * 2, "test body");
  } finally {
    for (const w of workers) w.close();
    await Promise.all(workers.map((w) => w.finished));
    await Promise.all([a.shutdown(), b.shutdown()]);
  }
}

function hubs(...servers: HubServer[]): string[] {
  return servers.map((s) => `127.0.0.1:${s.workerAddr.port}`);
}

function url(s: HubServer, path: string): string {
  return `http://127.0.0.1:${s.addr.port}${path}`;
}

function later(u: string): Promise<Response> {
  const p = fetch(u);
  p.catch(() => {});
  return p;
}

/** Held requests: each waits for `release()`; `entered(n)` waits for n. */
class Held {
  count = 0;
  #release = Promise.withResolvers<void>();
  #waiters: { n: number; resolve: () => void }[] = [];

  handler = async (req: Request): Promise<Response> => {
    this.count++;
    for (const w of this.#waiters) if (this.count >= w.n) w.resolve();
    await this.#release.promise;
    return new Response(new URL(req.url).pathname);
  };

  entered(n: number): Promise<void> {
    if (this.count >= n) return Promise.resolve();
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#waiters.push({ n, resolve });
    return deadline(promise, HANG, `${n} requests entering`);
  }

  release(): void {
    this.#release.resolve();
  }
}

/**
 * A one-slot worker at both hubs whose handler is `held`'s, once it has
 * served one request at each hub (so it knows both park); `held` is then a
 * fresh, unreleased one. `connects` counts the connections it opened.
 */
async function sharedWorker(
  a: HubServer,
  b: HubServer,
  workers: WorkerHandle[],
): Promise<{ held: Held; connects: number }> {
  const w = { held: new Held(), connects: 0 };
  workers.push(connectWorker((req) => w.held.handler(req), {
    hubs: hubs(a, b),
    concurrency: 1,
    minBackoff: 10,
    maxBackoff: 100,
    onConnect: () => w.connects++,
  }));
  await waitFor(
    () => a.hub.stats.idle === 1 && b.hub.stats.idle === 1,
    "a slot at each hub",
  );
  w.held.release();
  for (const s of [a, b]) await (await fetch(url(s, "/warm"))).text();
  await waitFor(
    () => a.hub.stats.idle === 1 && b.hub.stats.idle === 1,
    "a slot at each hub again",
  );
  w.held = new Held();
  return w;
}

Deno.test("an idle worker with concurrency 2 offers 2 slots to each of two hubs", async () => {
  await withHubs(async (a, b, workers) => {
    workers.push(connectWorker(() => new Response("ok"), {
      hubs: hubs(a, b),
      concurrency: 2,
      minBackoff: 10,
      maxBackoff: 100,
    }));
    await waitFor(
      () => a.hub.stats.idle === 2 && b.hub.stats.idle === 2,
      "2 idle slots at each hub",
    );
    assert.equal(workers[0].connected, 4);
    assert.equal(workers[0].active, 0);
    for (const s of [a, b]) {
      const res = await fetch(url(s, "/"));
      assert.equal(await res.text(), "ok");
    }
  });
});

Deno.test("a worker busy with 2 requests from hub A declines and parks hub B's, and serves them when it frees", async () => {
  await withHubs(async (a, b, workers) => {
    const held = new Held();
    let connects = 0;
    workers.push(connectWorker(held.handler, {
      hubs: hubs(a, b),
      concurrency: 2,
      minBackoff: 10,
      maxBackoff: 100,
      onConnect: () => connects++,
    }));
    await waitFor(
      () => a.hub.stats.idle === 2 && b.hub.stats.idle === 2,
      "2 idle slots at each hub",
    );
    const r1 = later(url(a, "/a1"));
    const r2 = later(url(a, "/a2"));
    await held.entered(2);
    assert.equal(a.hub.stats.busy, 2);
    assert.equal(workers[0].active, 2);
    // The worker is full, but its slots at B stay open: B's requests are
    // declined there, the slots parked, and the requests wait in B's queue.
    const r3 = later(url(b, "/b1"));
    const r4 = later(url(b, "/b2"));
    await waitFor(
      () => b.hub.stats.parked === 2 && b.hub.stats.queued === 2,
      "B's slots parked and its requests queued",
    );
    assert.equal(held.count, 2);
    held.release();
    assert.equal(await (await r1).text(), "/a1");
    assert.equal(await (await r2).text(), "/a2");
    assert.equal(await (await r3).text(), "/b1");
    assert.equal(await (await r4).text(), "/b2");
    await waitFor(
      () => a.hub.stats.idle === 2 && b.hub.stats.idle === 2,
      "2 idle slots at each hub again",
    );
    assert.equal(connects, 4, "no connection was opened after the first 4");
    assert.equal(a.hub.stats.failed + b.hub.stats.failed, 0);
  });
});

Deno.test("a worker busy with one request from each hub declines a third and serves it when one ends", async () => {
  await withHubs(async (a, b, workers) => {
    const held = new Held();
    workers.push(connectWorker(held.handler, {
      hubs: hubs(a, b),
      concurrency: 2,
      minBackoff: 10,
      maxBackoff: 100,
    }));
    await waitFor(
      () => a.hub.stats.idle === 2 && b.hub.stats.idle === 2,
      "2 idle slots at each hub",
    );
    const ra = later(url(a, "/from-a"));
    await held.entered(1);
    const rb = later(url(b, "/from-b"));
    await held.entered(2);
    assert.equal(a.hub.stats.busy, 1);
    assert.equal(b.hub.stats.busy, 1);
    const rc = later(url(a, "/third"));
    await waitFor(
      () => a.hub.stats.parked === 1 && a.hub.stats.queued === 1,
      "the third request declined and queued",
    );
    assert.equal(held.count, 2);
    held.release();
    assert.equal(await (await ra).text(), "/from-a");
    assert.equal(await (await rb).text(), "/from-b");
    assert.equal(await (await rc).text(), "/third");
    assert.equal(held.count, 3);
    await waitFor(
      () => a.hub.stats.idle === 2 && b.hub.stats.idle === 2,
      "slots offered again",
    );
  });
});

Deno.test("40 requests spread over two hubs sharing one worker are all answered once", async () => {
  await withHubs(async (a, b, workers) => {
    const seen = new Map<string, number>();
    workers.push(connectWorker(async (req) => {
      const path = new URL(req.url).pathname;
      seen.set(path, (seen.get(path) ?? 0) + 1);
      // Hold a little so requests overlap and slots move between hubs.
      for (let i = 0; i < 3; i++) await new Promise((r) => setTimeout(r, 1));
      return new Response(path);
    }, {
      hubs: hubs(a, b),
      concurrency: 2,
      minBackoff: 10,
      maxBackoff: 100,
    }));
    await waitFor(
      () => a.hub.stats.idle === 2 && b.hub.stats.idle === 2,
      "2 idle slots at each hub",
    );
    const reqs = Array.from({ length: 40 }, (_, i) => {
      const path = `/r${i}`;
      return later(url(i % 2 === 0 ? a : b, path)).then(async (res) =>
        [res.status, await res.text(), path] as const
      );
    });
    const results = await Promise.all(reqs);
    for (const [status, body, path] of results) {
      assert.equal(status, 200, `${path}: ${body}`);
      assert.equal(body, path);
    }
    // Each request ran exactly once at the worker.
    assert.equal(seen.size, 40);
    for (const [path, n] of seen) assert.equal(n, 1, path);
    const sa = a.hub.stats;
    const sb = b.hub.stats;
    assert.equal(sa.answered + sb.answered, 40);
    assert.equal(sa.failed + sb.failed, 0);
    const retries = sa.retries + sb.retries;
    assert.ok(retries >= 0);
    console.log(`hub retries while slots moved between hubs: ${retries}`);
  });
});

Deno.test("a worker whose second hub is down serves the first and joins the second when it comes up", async () => {
  await withHubs(async (a, _b, workers) => {
    // Reserve a port, then close it so nothing listens there yet.
    const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (probe.addr as Deno.NetAddr).port;
    probe.close();
    const errors: string[] = [];
    workers.push(connectWorker(() => new Response("ok"), {
      hubs: [...hubs(a), `127.0.0.1:${port}`],
      concurrency: 2,
      minBackoff: 10,
      maxBackoff: 50,
      onError: (_e, ctx) => errors.push(ctx),
    }));
    await waitFor(() => a.hub.stats.idle === 2, "slots at the live hub");
    await waitFor(() => errors.length >= 2, "dial failures to the down hub");
    assert.ok(errors.every((c) => c === `connect 127.0.0.1:${port}`));
    assert.equal(await (await fetch(url(a, "/"))).text(), "ok");
    let late: HubServer | undefined;
    try {
      late = serveHub({
        hostname: "127.0.0.1",
        port: 0,
        workerPort: port,
        shutdownGrace: 500,
      });
    } catch (error) {
      // Someone else took the port in the meantime: nothing to check.
      if (error instanceof Deno.errors.AddrInUse) return;
      throw error;
    }
    try {
      await waitFor(() => late!.hub.stats.idle === 2, "slots at the new hub");
      assert.equal(a.hub.stats.idle, 2);
    } finally {
      workers[0].close();
      await workers[0].finished;
      await late.shutdown();
    }
  });
});

Deno.test("a worker shared by two hubs parks its connections instead of reconnecting after each request", async () => {
  await withHubs(async (a, b, workers) => {
    let connects = 0;
    const seen = new Map<string, number>();
    workers.push(connectWorker((req) => {
      const path = new URL(req.url).pathname;
      seen.set(path, (seen.get(path) ?? 0) + 1);
      return new Response(path);
    }, {
      hubs: hubs(a, b),
      concurrency: 1,
      minBackoff: 10,
      maxBackoff: 100,
      onConnect: () => connects++,
    }));
    await waitFor(
      () => a.hub.stats.idle === 1 && b.hub.stats.idle === 1,
      "a slot at each hub",
    );
    // One at a time, alternating: without parking every request costs a
    // reconnect to each hub (about 60 here).
    for (let i = 0; i < 30; i++) {
      const path = `/r${i}`;
      const res = await fetch(url(i % 2 === 0 ? a : b, path));
      assert.equal(await res.text(), path);
    }
    assert.equal(seen.size, 30);
    for (const [path, n] of seen) assert.equal(n, 1, path);
    assert.ok(connects <= 8, `${connects} connections opened`);
    assert.equal(a.hub.stats.failed + b.hub.stats.failed, 0);
    // Idle again: each hub gets its slot offered (after its wait request).
    await waitFor(
      () => a.hub.stats.idle === 1 && b.hub.stats.idle === 1,
      "a slot offered at each hub again",
    );
    assert.equal(workers[0].connected, 2);
  });
});

Deno.test("a full worker declines and parks a request at its other hub, and serves it when a permit frees", async () => {
  await withHubs(async (a, b, workers) => {
    const w = await sharedWorker(a, b, workers);
    const before = w.connects;
    const gate = w.held;
    const ra = later(url(a, "/a"));
    await gate.entered(1);
    // The worker is full; its slot at hub B stays offered (not closed). A
    // request there is declined, parked, and waits in B's queue.
    const rb = later(url(b, "/b"));
    await waitFor(
      () => b.hub.stats.parked === 1 && b.hub.stats.queued === 1,
      "B's request queued behind a parked slot",
    );
    assert.equal(gate.count, 1);
    gate.release();
    assert.equal(await (await ra).text(), "/a");
    assert.equal(await (await rb).text(), "/b");
    assert.equal(gate.count, 2);
    assert.ok(b.hub.stats.retries >= 1);
    assert.equal(w.connects, before, "no connection was opened");
    assert.equal(a.hub.stats.failed + b.hub.stats.failed, 0);
  });
});

Deno.test("a worker draining while a connection is parked gives it back and finishes its request", async () => {
  await withHubs(async (a, b, workers) => {
    const { held } = await sharedWorker(a, b, workers);
    const ra = later(url(a, "/a"));
    await held.entered(1);
    const rb = later(url(b, "/b"));
    await waitFor(() => b.hub.stats.parked === 1, "B's slot parked");
    const drained = workers[0].drain();
    // The parked connection is given back at once; the request in
    // progress at A goes on.
    await waitFor(() => b.hub.stats.slots === 0, "B's parked slot given back");
    assert.equal(a.hub.stats.busy, 1);
    held.release();
    assert.equal(await (await ra).text(), "/a");
    await deadline(drained, HANG, "the drain");
    assert.equal(workers[0].connected, 0);
    // B's request never reached the worker; it waits for another one.
    assert.equal(held.count, 1);
    assert.equal(b.hub.stats.queued, 1);
    workers.push(connectWorker(() => new Response("other"), {
      hubs: hubs(b),
      minBackoff: 10,
      maxBackoff: 100,
    }));
    assert.equal(await (await rb).text(), "other");
  });
});

Deno.test("a streamed upload declined by a worker busy at another hub goes whole to another worker", async () => {
  await withHubs(async (a, b, workers) => {
    const { held: gate } = await sharedWorker(a, b, workers);
    // A second worker, at hub B only, attached after the first: B tries
    // the first worker's slot first.
    workers.push(connectWorker(async (req) => {
      return new Response(`other ${(await req.arrayBuffer()).byteLength}`);
    }, { hubs: hubs(b), minBackoff: 10, maxBackoff: 100 }));
    await waitFor(() => b.hub.stats.idle === 2, "two slots at B");
    try {
      const ra = later(url(a, "/a"));
      await gate.entered(1);
      // Over 64 KiB: the hub streams it and asks for 100 Continue first.
      const res = await fetch(url(b, "/upload"), {
        method: "POST",
        body: new Uint8Array(200_000),
      });
      assert.equal(await res.text(), "other 200000");
      assert.equal(res.status, 200);
      assert.ok(b.hub.stats.retries >= 1, "the busy worker declined it");
      assert.equal(gate.count, 1);
      gate.release();
      assert.equal(await (await ra).text(), "/a");
    } finally {
      gate.release();
    }
  });
});

// The Dialer alone, with fake connections: which parked hub hears of a
// freed permit first.
type Hooks = Parameters<DialerOptions["serve"]>[2];

async function fakeDialer(
  ports: number[],
  fn: (hooks: Map<number, Hooks>) => Promise<void>,
): Promise<void> {
  const stop = new AbortController();
  const kill = new AbortController();
  const hooks = new Map<number, Hooks>();
  const dialer = new Dialer(
    {
      targets: ports.map((port) => ({ hostname: "127.0.0.1", port })),
      concurrency: 1,
      resolveInterval: 0,
      minBackoff: 10,
      maxBackoff: 10,
      resolve: () => Promise.resolve([]),
      connect: () => Promise.resolve(silentConn()),
      // A link ends when the dialer hands it back (an engine closes it).
      serve: (_conn, endpoint, h) => {
        hooks.set(endpoint.port, h);
        return new Promise<number>((resolve) => {
          const end = () => resolve(0);
          h.withdraw.addEventListener("abort", end, { once: true });
          kill.signal.addEventListener("abort", end, { once: true });
        });
      },
      onError: () => {},
    },
    stop.signal,
    kill.signal,
  );
  const running = dialer.run();
  try {
    await fn(hooks);
  } finally {
    kill.abort();
    await running;
  }
}

// Waits until every hub has a link the dialer has not handed back.
async function linked(hooks: Map<number, Hooks>, ports: number[]) {
  await waitFor(
    () => ports.every((p) => hooks.get(p)?.withdraw.aborted === false),
    "a live link to each hub",
  );
}

for (const older of [2, 3]) {
  Deno.test(`a freed permit is offered first to the hub whose declined request is oldest (hub ${older})`, async () => {
    await fakeDialer([1, 2, 3], async (hooks) => {
      // One request at each hub first: each parks after its response and
      // sends its wait request, so the worker knows every hub parks (until
      // then it hands surplus links back and dials again).
      for (const port of [1, 2, 3]) {
        await linked(hooks, [1, 2, 3]);
        const h = hooks.get(port)!;
        assert.equal(h.acquire(() => 0), true);
        assert.equal(h.reuse(), "park");
        h.release();
        assert.equal(await h.wait(), true);
      }
      await linked(hooks, [1, 2, 3]);
      const [a, b, c] = [hooks.get(1)!, hooks.get(2)!, hooks.get(3)!];
      assert.equal(a.acquire(() => 0), true);
      // Both other hubs send a request the full worker declines; the one
      // queued longer is the older.
      assert.equal(b.acquire(() => older === 2 ? 500 : 5), false);
      assert.equal(c.acquire(() => older === 3 ? 500 : 5), false);
      const heard: number[] = [];
      const bw = b.wait().then((offer) => offer && heard.push(2));
      const cw = c.wait().then((offer) => offer && heard.push(3));
      assert.equal(a.reuse(), "park"); // several hubs: parks after it
      a.release();
      await Promise.all([bw, cw]);
      assert.deepEqual(heard, older === 2 ? [2, 3] : [3, 2]);
    });
  });
}

Deno.test("a hub found not to park gets surplus connections handed back while the worker is full", async () => {
  await fakeDialer([1, 2], async (hooks) => {
    await linked(hooks, [1, 2]);
    const [a, b] = [hooks.get(1)!, hooks.get(2)!];
    // Hub 2 answered a parked response with a request: it does not park.
    b.noPark();
    assert.equal(a.acquire(() => 0), true);
    assert.equal(b.withdraw.aborted, true, "hub 2's idle link handed back");
    assert.equal(a.withdraw.aborted, false);
    // Hub 1 may park: after its response the link parks rather than closes.
    assert.equal(a.reuse(), "park");
    a.release();
  });
});

Deno.test("a gate that admits only slot 0 still gets the worker its first connection, which serves", async () => {
  const server = hub();
  const asked: number[] = [];
  const w = connectWorker(() => new Response("ok"), {
    hostname: "127.0.0.1",
    port: server.workerAddr.port,
    concurrency: 2,
    minBackoff: 10,
    maxBackoff: 100,
    // As `capacityGate` on a machine with no room: slot 0 is never held.
    gate: (slot, signal) => {
      asked.push(slot);
      if (slot === 0) return Promise.resolve();
      return new Promise<void>((r) =>
        signal.addEventListener("abort", () => r(), { once: true })
      );
    },
  });
  try {
    await waitFor(() => server.hub.stats.slots === 1, "the first slot", 5_000);
    // With a gate each connection carries one request and dials again.
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`http://127.0.0.1:${server.addr.port}/`);
      assert.equal(await res.text(), "ok");
    }
    // Only the second connection was ever asked about, as slot 1.
    assert.ok(asked.every((slot) => slot === 1), `slots asked: ${asked}`);
  } finally {
    w.close();
    await w.finished;
    await server.shutdown();
  }
});

Deno.test("a failed DNS lookup keeps the hub's known addresses; an answer without one drops it", async () => {
  const stop = new AbortController();
  const kill = new AbortController();
  let answer: () => Promise<string[]> = () => Promise.resolve(["127.0.0.9"]);
  let lookups = 0;
  const served: string[] = [];
  const withdrawn: string[] = [];
  const dialer = new Dialer(
    {
      targets: [{ hostname: "hubs.test", port: 4040 }],
      concurrency: 1,
      resolveInterval: 20,
      minBackoff: 10,
      maxBackoff: 10,
      resolve: () => {
        lookups++;
        return answer();
      },
      connect: () => Promise.resolve(silentConn()),
      serve: (_conn, endpoint, h) => {
        served.push(endpoint.key);
        return new Promise<number>((resolve) => {
          const end = () => resolve(0);
          h.withdraw.addEventListener("abort", () => {
            withdrawn.push(endpoint.key);
            end();
          }, { once: true });
          kill.signal.addEventListener("abort", end, { once: true });
        });
      },
      onError: () => {},
    },
    stop.signal,
    kill.signal,
  );
  const running = dialer.run();
  try {
    await waitFor(() => served.length === 1, "the first link", HANG);
    assert.deepEqual(served, ["127.0.0.9:4040"]);
    // The name server fails (as a SERVFAIL or a timeout does) for several
    // lookups: the link to the known address stays.
    answer = () => Promise.reject(new Error("server failure"));
    const before = lookups;
    await waitFor(() => lookups >= before + 3, "three failed lookups", HANG);
    assert.deepEqual(withdrawn, []);
    assert.deepEqual(served, ["127.0.0.9:4040"]);
    // Deno reports a SERVFAIL as NotFound too.
    answer = () => Promise.reject(new Deno.errors.NotFound("no records"));
    const later = lookups;
    await waitFor(
      () => lookups >= later + 3,
      "three more failed lookups",
      HANG,
    );
    assert.deepEqual(withdrawn, []);
    // An answer without the address drops it, and the new one is dialed.
    answer = () => Promise.resolve(["127.0.0.10"]);
    await waitFor(() => withdrawn.length === 1, "the link handed back", HANG);
    assert.deepEqual(withdrawn, ["127.0.0.9:4040"]);
    await waitFor(() => served.length === 2, "the new address", HANG);
    assert.equal(served[1], "127.0.0.10:4040");
  } finally {
    kill.abort();
    await running;
  }
});

Deno.test("a connection that completes after the drain began is handed back through the engine, not closed raw", async () => {
  const stop = new AbortController();
  const kill = new AbortController();
  const connected = Promise.withResolvers<void>();
  let closedRaw = 0;
  const handedBack: boolean[] = [];
  const dialer = new Dialer(
    {
      targets: [{ hostname: "127.0.0.1", port: 4040 }],
      concurrency: 1,
      resolveInterval: 0,
      minBackoff: 10,
      maxBackoff: 10,
      resolve: () => Promise.resolve([]),
      // The connection completes only once the drain has begun.
      connect: async () => {
        await connected.promise;
        return silentConn(() => void closedRaw++);
      },
      serve: (_conn, _endpoint, h) => {
        // An engine answers a request that crossed with the 408 and ends.
        handedBack.push(h.withdraw.aborted);
        return Promise.resolve(0);
      },
      onError: () => {},
    },
    stop.signal,
    kill.signal,
  );
  const running = dialer.run();
  stop.abort();
  connected.resolve();
  await deadline(running, HANG, "the dialer to finish");
  assert.deepEqual(handedBack, [true]);
  assert.equal(closedRaw, 0);
});

Deno.test("a DNS lookup that never answers neither piles up nor holds up the drain", async () => {
  const stop = new AbortController();
  const kill = new AbortController();
  let lookups = 0;
  const dialer = new Dialer(
    {
      targets: [{ hostname: "hubs.test", port: 4040 }],
      concurrency: 1,
      resolveInterval: 10,
      minBackoff: 10,
      maxBackoff: 10,
      // The name server never answers.
      resolve: () => {
        lookups++;
        return new Promise<string[]>(() => {});
      },
      connect: () => Promise.reject(new Error("not reached")),
      serve: () => Promise.resolve(0),
      onError: () => {},
    },
    stop.signal,
    kill.signal,
  );
  const running = dialer.run();
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(lookups, 1, "lookups started while one was pending");
  stop.abort();
  await deadline(running, 5_000, "the drain despite the pending lookup");
});

// The Dialer alone, with fake connections to hubs that say who they are:
// addresses of one name that reach one hub (same id) are served as one.
interface FakeHubs {
  /** The hub id each address answers with (undefined: none, as plain). */
  ids: Map<string, string | undefined>;
  /** What each name resolves to next. */
  answers: Record<string, string[]>;
  /** Connections opened, by endpoint key. */
  dials: Map<string, number>;
  /** Keys of the links being served and not handed back. */
  live(): string[];
  /** Ends the live link at `key` as its hub would, after `served`. */
  end(key: string, served: number): void;
  lookups: number;
  dialer: Dialer;
}

async function hubsByName(
  targets: { hostname: string; port: number }[],
  answers: Record<string, string[]>,
  ids: Record<string, string | undefined>,
  fn: (h: FakeHubs) => Promise<void>,
): Promise<void> {
  const stop = new AbortController();
  const kill = new AbortController();
  const links = new Map<{ key: string }, (served: number) => void>();
  const h = {
    ids: new Map(Object.entries(ids)),
    answers,
    dials: new Map<string, number>(),
    live: () => [...links.keys()].map((l) => l.key).sort(),
    end: (key: string, served: number) => {
      for (const [l, end] of links) if (l.key === key) return end(served);
      throw new Error(`no live link at ${key}`);
    },
    lookups: 0,
  } as FakeHubs;
  h.dialer = new Dialer(
    {
      targets,
      concurrency: 1,
      resolveInterval: 10,
      minBackoff: 10,
      maxBackoff: 10,
      resolve: (name) => {
        h.lookups++;
        return Promise.resolve(h.answers[name] ?? []);
      },
      connect: (endpoint) => {
        h.dials.set(endpoint.key, (h.dials.get(endpoint.key) ?? 0) + 1);
        return Promise.resolve(
          Object.assign(silentConn(), { hubId: h.ids.get(endpoint.address) }),
        );
      },
      hubId: (conn) => (conn as { hubId?: string }).hubId,
      serve: (_conn, endpoint, hooks) => {
        const link = { key: endpoint.key };
        return new Promise<number>((resolve) => {
          const end = (served: number) => {
            links.delete(link);
            resolve(served);
          };
          // Handed back before it was served (an alias): an engine ends it
          // at once.
          if (hooks.withdraw.aborted) return resolve(0);
          links.set(link, end);
          hooks.withdraw.addEventListener("abort", () => end(0), {
            once: true,
          });
          kill.signal.addEventListener("abort", () => end(0), { once: true });
        });
      },
      onError: () => {},
    },
    stop.signal,
    kill.signal,
  );
  const running = h.dialer.run();
  try {
    await deadline(fn(h), HANG, "the scenario");
  } finally {
    kill.abort();
    await running;
  }
}

const V4 = "127.0.0.1:4040";
const V6 = "[::1]:4040";
const DUAL = [{ hostname: "hub.test", port: 4040 }];
// The name's answer: an A and an AAAA record (a fresh copy each time).
const both = () => ({ "hub.test": ["127.0.0.1", "::1"] });

/** Waits for `count` more lookups (a wait on the dialer, not a duration). */
async function lookups(h: FakeHubs, count: number): Promise<void> {
  const until = h.lookups + count;
  await waitFor(() => h.lookups >= until, `${count} more lookups`);
}

Deno.test("two addresses of one name that reach one hub are served as one, and the other is not dialed again", async () => {
  await hubsByName(
    DUAL,
    both(),
    { "127.0.0.1": "A", "::1": "A" },
    async (h) => {
      await waitFor(
        () => h.dials.size === 2 && h.live().length === 1,
        "both dialed, one kept",
      );
      const [kept] = h.live();
      const alias = kept === V4 ? V6 : V4;
      await lookups(h, 5);
      assert.deepEqual(h.live(), [kept]);
      assert.equal(h.dials.get(alias), 1, "the alias dialed once");
      assert.deepEqual(h.dialer.endpoints.map((e) => e.key), [kept]);
      // One hub: a connection serves request after request.
      assert.equal(h.dialer.rotate, false);
    },
  );
});

Deno.test("the alias of an address that leaves DNS or fails is dialed again", async () => {
  await hubsByName(
    DUAL,
    both(),
    { "127.0.0.1": "A", "::1": "A" },
    async (h) => {
      await waitFor(() => h.live().length === 1, "one kept");
      const [kept] = h.live();
      const alias = kept === V4 ? V6 : V4;
      const address = (key: string) => key === V4 ? "127.0.0.1" : "::1";
      // The kept address leaves the answer: the alias serves.
      h.answers["hub.test"] = [address(alias)];
      await waitFor(() => h.live()[0] === alias, "the alias served");
      assert.equal(h.dials.get(alias), 2);
      // It comes back, and is the alias now.
      h.answers["hub.test"] = ["127.0.0.1", "::1"];
      await waitFor(() => h.dials.get(kept) === 2, "the address dialed again");
      await lookups(h, 3);
      assert.deepEqual(h.live(), [alias]);
      // The one kept drops its connection at once (as a hub going down):
      // a failure, so the other address is dialed again.
      h.end(alias, 0);
      await waitFor(() => h.dials.get(kept) === 3, "the other dialed again");
      await waitFor(() => h.live().length === 1, "one kept again");
    },
  );
});

Deno.test("when the hub at the kept address changes (a restart or a hand-over), the alias re-learns which hub it reaches", async () => {
  await hubsByName(
    DUAL,
    both(),
    { "127.0.0.1": "A", "::1": "A" },
    async (h) => {
      await waitFor(() => h.live().length === 1, "one kept");
      const [kept] = h.live();
      const alias = kept === V4 ? V6 : V4;
      // A new hub (id B) took the kept address's port; the alias's address
      // still reaches hub A: two hubs now, both served.
      h.ids.set(kept === V4 ? "127.0.0.1" : "::1", "B");
      h.end(kept, 1);
      await waitFor(() => h.live().length === 2, "both served");
      assert.equal(h.dials.get(alias), 2);
      assert.equal(h.dialer.rotate, true);
      // Hub A goes too, and B answers at both: one again.
      h.ids.set(alias === V4 ? "127.0.0.1" : "::1", "B");
      h.end(alias, 1);
      await waitFor(() => h.dials.get(alias) === 3, "dialed again");
      await waitFor(() => h.live().length === 1, "one hub again");
      assert.deepEqual(h.live(), [kept]);
      assert.equal(h.dialer.rotate, false);
    },
  );
});

Deno.test("addresses with different hub ids, or no id, or of different names are all served", async () => {
  await hubsByName(
    DUAL,
    both(),
    { "127.0.0.1": "A", "::1": "B" },
    async (h) => {
      await waitFor(() => h.live().length === 2, "two hubs");
    },
  );
  await hubsByName(DUAL, both(), {}, async (h) => {
    await waitFor(() => h.live().length === 2, "two plain hubs");
  });
  // A hub behind another name cannot take a worker away by its id.
  const names = [
    { hostname: "a.test", port: 4040 },
    { hostname: "b.test", port: 4040 },
  ];
  await hubsByName(
    names,
    { "a.test": ["127.0.0.1"], "b.test": ["::1"] },
    { "127.0.0.1": "A", "::1": "A" },
    async (h) => {
      await waitFor(() => h.live().length === 2, "two names");
      await lookups(h, 3);
      assert.deepEqual(h.live(), [V4, V6].sort());
    },
  );
});
