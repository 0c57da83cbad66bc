// Parking (`_park.ts`). On the worker's side, for both engines: a request
// declined for want of a permit leaves the connection parked, the hub's
// wait request is held until the worker offers the connection again, and a
// hub that does not know parking is served as before; the hub's end of the
// connection is driven by the test. On the hub's side: a real hub and a
// raw-socket worker that writes the exact bytes.

import assert from "node:assert/strict";
import { DEFAULT_LIMITS } from "../_codec.ts";
import { NativeEngine } from "../_serve_native.ts";
import {
  type FetchHandler,
  serveConnection,
  type ServeConnectionOptions,
} from "../_serve_conn.ts";
import {
  holdWait,
  PARKED_RESPONSE,
  READY_RESPONSE,
  renewingWaitRequest,
  renewTime,
  STILL_PARKED_RESPONSE,
  WAIT_REQUEST,
} from "../_park.ts";
import { bytes, type MemConn, memPair, text } from "./_memconn.ts";
import { deadline, waitFor } from "./_wait.ts";
import { RawSocket } from "./_relay.ts";
import { startHub } from "./_hub.ts";
import type { HubLogRecord } from "../hub.ts";

const PEER: Deno.NetAddr = {
  transport: "tcp",
  hostname: "10.0.0.9",
  port: 4040,
};
const WAIT = text(WAIT_REQUEST);

type Hooks = Partial<
  Pick<
    ServeConnectionOptions,
    "acquire" | "release" | "reuse" | "wait" | "noPark"
  >
>;

interface Link {
  hub: MemConn;
  served: Promise<number>;
  drain: AbortController;
  /** Text read from the hub's end and not yet returned. */
  rest: string;
}

type Engine = {
  name: string;
  run(
    handler: FetchHandler,
    fn: (open: (hooks: Hooks) => Link) => Promise<void>,
  ): Promise<void>;
};

const ENGINES: Engine[] = [
  {
    name: "inline",
    async run(handler, fn) {
      await fn((hooks) => {
        const [hub, worker] = memPair();
        const drain = new AbortController();
        const served = serveConnection(worker, {
          handler,
          limits: DEFAULT_LIMITS,
          drain: drain.signal,
          onError: () => {},
          peer: PEER,
          ...hooks,
        });
        return { hub, served, drain, rest: "" };
      });
    },
  },
  {
    name: "serve",
    async run(handler, fn) {
      const engine = new NativeEngine(handler, () => {});
      engine.start();
      try {
        await fn((hooks) => {
          const [hub, worker] = memPair();
          const drain = new AbortController();
          const served = engine.serve(worker, {
            drain: drain.signal,
            onError: () => {},
            peer: PEER,
            ...hooks,
          });
          return { hub, served, drain, rest: "" };
        });
      } finally {
        await engine.close();
      }
    },
  },
];

// The next whole response on the link (Content-Length framed or bodiless).
async function response(link: Link): Promise<string> {
  const buf = new Uint8Array(4096);
  while (true) {
    const end = link.rest.indexOf("\r\n\r\n");
    if (end >= 0) {
      const head = link.rest.slice(0, end + 4);
      const m = /\r\ncontent-length: *([0-9]+)/i.exec(head);
      const total = head.length + (m ? Number(m[1]) : 0);
      if (link.rest.length >= total) {
        const out = link.rest.slice(0, total);
        link.rest = link.rest.slice(total);
        return out;
      }
    }
    const n = await deadline(link.hub.read(buf), 10_000, "a response");
    if (n === null) throw new Error(`connection ended: ${link.rest}`);
    link.rest += text(buf.subarray(0, n));
  }
}

// The requests the link served, once it has ended (the worker closed it).
async function ended(link: Link): Promise<number> {
  return await deadline(link.served, 10_000, "the link to end");
}

const GET = (path: string) => `GET ${path} HTTP/1.1\r\nhost: h\r\n\r\n`;

// A permit the test hands out, and a wait the test answers.
function permits(free: number) {
  const waits: ((offer: boolean) => void)[] = [];
  const log: string[] = [];
  return {
    log,
    waits,
    hooks: {
      acquire: () => {
        log.push(free > 0 ? "acquire" : "decline");
        if (free === 0) return false;
        free--;
        return true;
      },
      release: () => {
        log.push("release");
        free++;
      },
      wait: (signal?: AbortSignal) => {
        log.push("wait");
        const { promise, resolve } = Promise.withResolvers<boolean>();
        waits.push(resolve);
        signal?.addEventListener("abort", () => resolve(false), {
          once: true,
        });
        return promise;
      },
      noPark: () => log.push("noPark"),
    } satisfies Hooks,
  };
}

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 2000 && !cond(); i++) {
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.ok(cond(), what);
}

const hello: FetchHandler = (req) => new Response(new URL(req.url).pathname);

// Sends `request` to a worker with no permit, then the wait request;
// resolves with the declining 408 once the worker holds the wait.
async function parkLink(
  link: Link,
  p: ReturnType<typeof permits>,
  request = GET("/x"),
): Promise<string> {
  await link.hub.write(bytes(request));
  const declined = await response(link);
  assert.match(declined, /^HTTP\/1\.1 408 /);
  await link.hub.write(WAIT_REQUEST);
  await until(() => p.waits.length === 1, "the wait request is held");
  return declined;
}

for (const engine of ENGINES) {
  Deno.test(`${engine.name} engine: a declined request parks the connection; the wait request is answered when a permit frees`, async () => {
    await engine.run(hello, async (open) => {
      const p = permits(0);
      const link = open(p.hooks);
      const declined = await parkLink(link, p, GET("/first"));
      assert.match(declined, /\r\nx-pothead-not-started: 1\r\n/i);
      assert.match(declined, /\r\nconnection: pothead-park\r\n/i);
      p.hooks.release(); // a permit frees
      p.waits[0](true);
      const ready = await response(link);
      assert.match(ready, /^HTTP\/1\.1 204 /);
      // The same connection now carries a request.
      await link.hub.write(bytes(GET("/second")));
      const ok = await response(link);
      assert.match(ok, /^HTTP\/1\.1 200 /);
      assert.ok(ok.endsWith("/second"), ok);
      assert.deepEqual(p.log, [
        "decline",
        "wait",
        "release",
        "acquire",
        "release",
      ]);
      link.hub.close();
      assert.equal(await ended(link), 1);
    });
  });

  Deno.test(`${engine.name} engine: a renewing wait request with no permit gets the parking 204 in time; the next one is held again`, async () => {
    await engine.run(hello, async (open) => {
      const p = permits(0);
      const link = open(p.hooks);
      await link.hub.write(bytes(GET("/x")));
      assert.match(await response(link), /^HTTP\/1\.1 408 /);
      await link.hub.write(renewingWaitRequest(50));
      const renewed = await response(link);
      assert.match(renewed, /^HTTP\/1\.1 204 /);
      assert.match(renewed, /\r\nconnection: pothead-park\r\n/i);
      // Still parked: the hub's next wait request is held, and answered
      // when a permit frees.
      await link.hub.write(renewingWaitRequest(60_000));
      await until(() => p.waits.length === 2, "the second wait is held");
      p.hooks.release();
      p.waits[1](true);
      const ready = await response(link);
      assert.match(ready, /^HTTP\/1\.1 204 /);
      assert.doesNotMatch(ready, /pothead-park/i);
      await link.hub.write(bytes(GET("/y")));
      const ok = await response(link);
      assert.ok(ok.endsWith("/y"), ok);
      assert.deepEqual(p.log, [
        "decline",
        "wait",
        "wait",
        "release",
        "acquire",
        "release",
      ]);
      link.hub.close();
      assert.equal(await ended(link), 1);
    });
  });

  Deno.test(`${engine.name} engine: a held wait request given back is answered with the closing 408`, async () => {
    await engine.run(hello, async (open) => {
      const p = permits(0);
      const link = open(p.hooks);
      await parkLink(link, p);
      p.waits[0](false);
      const back = await response(link);
      assert.match(back, /^HTTP\/1\.1 408 /);
      assert.match(back, /\r\nx-pothead-not-started: 1\r\n/i);
      assert.match(back, /\r\nconnection: close\r\n/i);
      assert.equal(await ended(link), 0);
    });
  });

  Deno.test(`${engine.name} engine: a response sent with "park" parks the connection; a hub that sends a request instead is served`, async () => {
    await engine.run(hello, async (open) => {
      const p = permits(1);
      const link = open({ ...p.hooks, reuse: () => "park" });
      await link.hub.write(bytes(GET("/a")));
      const first = await response(link);
      assert.match(first, /^HTTP\/1\.1 200 /);
      assert.match(first, /\r\nconnection: pothead-park\r\n/i);
      // An older hub drops the unknown option and sends its next request.
      await link.hub.write(bytes(GET("/b")));
      const second = await response(link);
      assert.match(second, /^HTTP\/1\.1 200 /);
      assert.ok(second.endsWith("/b"), second);
      // Told once; this connection then parks no more.
      assert.deepEqual(p.log, [
        "acquire",
        "release",
        "noPark",
        "acquire",
        "release",
      ]);
      assert.doesNotMatch(second, /pothead-park/i);
      link.hub.close();
      assert.equal(await ended(link), 2);
    });
  });

  Deno.test(`${engine.name} engine: a hub that closes a parked connection ends it, and the held wait is not answered`, async () => {
    await engine.run(hello, async (open) => {
      const p = permits(0);
      const link = open(p.hooks);
      await parkLink(link, p);
      link.hub.close();
      assert.equal(await ended(link), 0);
    });
  });

  Deno.test(`${engine.name} engine: a declined request with a body that waits for 100 Continue is not parked`, async () => {
    await engine.run(hello, async (open) => {
      const p = permits(0);
      const link = open(p.hooks);
      await link.hub.write(
        bytes(
          "POST /up HTTP/1.1\r\nhost: h\r\nexpect: 100-continue\r\n" +
            "content-length: 5\r\n\r\n",
        ),
      );
      const declined = await response(link);
      assert.match(declined, /^HTTP\/1\.1 408 /);
      assert.match(declined, /\r\nconnection: close\r\n/i);
      assert.doesNotMatch(declined, /pothead-park/i);
      assert.equal(await ended(link), 0);
    });
  });

  Deno.test(`${engine.name} engine: a taken request that asks for 100 Continue gets it before its body is sent`, async () => {
    await engine.run(async (req) => {
      return new Response(`got ${(await req.text()).length}`);
    }, async (open) => {
      const p = permits(1);
      const link = open(p.hooks);
      await link.hub.write(
        bytes(
          "POST /up HTTP/1.1\r\nhost: h\r\nexpect: 100-continue\r\n" +
            "content-length: 5\r\n\r\n",
        ),
      );
      // The hub sends the body only after the 100 (it would wait a second).
      assert.match(await response(link), /^HTTP\/1\.1 100 Continue\r\n/);
      await link.hub.write(bytes("hello"));
      const ok = await response(link);
      assert.match(ok, /^HTTP\/1\.1 200 /);
      assert.ok(ok.endsWith("got 5"), ok);
      link.hub.close();
      assert.equal(await ended(link), 1);
    });
  });

  Deno.test(`${engine.name} engine: an empty upload that asked for 100 Continue leaves nothing that lets a later declined one's 100 out`, async () => {
    await engine.run(hello, async (open) => {
      let calls = 0;
      const link = open({ acquire: () => ++calls === 1, release: () => {} });
      const upload = (length: number) =>
        bytes(
          "POST /up HTTP/1.1\r\nhost: h\r\nexpect: 100-continue\r\n" +
            `content-length: ${length}\r\n\r\n`,
        );
      await link.hub.write(upload(0));
      assert.match(await response(link), /^HTTP\/1\.1 200 /);
      await link.hub.write(upload(5));
      const declined = await response(link);
      assert.match(declined, /^HTTP\/1\.1 408 /);
      assert.match(declined, /\r\nx-pothead-not-started: 1\r\n/i);
      assert.equal(await ended(link), 1);
    });
  });

  Deno.test(`${engine.name} engine: a declined request with a short body sent at once is skipped and parks`, async () => {
    await engine.run(hello, async (open) => {
      const p = permits(0);
      const link = open(p.hooks);
      const declined = await parkLink(
        link,
        p,
        "POST /up HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\n\r\nhello",
      );
      assert.match(declined, /\r\nconnection: pothead-park\r\n/i);
      p.hooks.release();
      p.waits[0](true);
      assert.match(await response(link), /^HTTP\/1\.1 204 /);
      link.hub.close();
      assert.equal(await ended(link), 0);
    });
  });
}

Deno.test("holdWait: an offer, a renewal, a hub gone, and a permit that wakes the wait as it stops", async () => {
  const never = new Promise<void>(() => {});
  assert.equal(await holdWait(() => Promise.resolve(true), 0, never), "offer");
  assert.equal(await holdWait(() => Promise.resolve(false), 0, never), "back");
  const stopped: boolean[] = [];
  const pending = (signal?: AbortSignal) =>
    new Promise<boolean>((resolve) =>
      signal?.addEventListener("abort", () => {
        stopped.push(true);
        resolve(false);
      })
    );
  assert.equal(await holdWait(pending, 20, never), "renew");
  assert.equal(await holdWait(pending, 0, Promise.resolve()), "back");
  assert.deepEqual(stopped, [true, true], "the wait is stopped both times");
  // The permit came just as the renewal time passed: it is not lost.
  const woken = (signal?: AbortSignal) =>
    new Promise<boolean>((resolve) =>
      signal?.addEventListener("abort", () => resolve(true))
    );
  assert.equal(await holdWait(woken, 20, never), "offer");
  assert.equal(renewTime(null), 0);
  assert.equal(renewTime("30000"), 30_000);
  assert.equal(renewTime("1"), 10, "raised to the smallest");
  assert.equal(renewTime("soon"), 0);
  assert.equal(renewTime("-5"), 0);
});

Deno.test("the wait request is a plain GET any HTTP/1.1 server can parse", () => {
  assert.match(WAIT, /^GET \/\.pothead\/wait HTTP\/1\.1\r\n/);
  assert.match(WAIT, /\r\nx-pothead-wait: 1\r\n\r\n$/);
});

Deno.test("hub: a worker that parks gets the wait request, and the declined request back once it answers", async () => {
  const logs: HubLogRecord[] = [];
  const server = startHub({
    queueTimeout: 20_000,
    onLog: (r) => logs.push(r),
  });
  let raw: RawSocket | undefined;
  try {
    const hub = server.hub;
    raw = await RawSocket.connect(server.workerAddr.port);
    await waitFor(() => hub.stats.idle === 1, "the plain worker attached");
    const res = fetch(`http://127.0.0.1:${server.addr.port}/job`);
    const first = await deadline(raw.readMessage(), 10_000, "the request");
    assert.equal(first?.start, "GET /job HTTP/1.1");
    await raw.write(PARKED_RESPONSE);
    const wait = await deadline(raw.readMessage(), 10_000, "the wait");
    assert.equal(wait?.start, "GET /.pothead/wait HTTP/1.1");
    assert.ok(wait?.headers.some(([n]) => n === "x-pothead-wait"));
    // The declined request waits in the queue; the connection is kept.
    await waitFor(() => hub.stats.queued === 1, "the request queued again");
    assert.equal(hub.stats.parked, 1);
    assert.equal(hub.stats.idle, 0);
    assert.equal(hub.stats.slots, 1);
    assert.equal(hub.stats.retries, 1);
    // Routine for workers serving several hubs: not worth an info line.
    const resent = logs.filter((r) =>
      r.msg === "retrying request on another worker"
    );
    assert.deepEqual(resent.map((r) => r.level), ["debug"]);
    await raw.write(READY_RESPONSE);
    const again = await deadline(raw.readMessage(), 10_000, "the request");
    assert.equal(again?.start, "GET /job HTTP/1.1");
    await raw.write(
      "HTTP/1.1 200 OK\r\nconnection: pothead-park\r\n" +
        "content-length: 4\r\n\r\ndone",
    );
    const answer = await res;
    assert.equal(answer.status, 200);
    assert.equal(await answer.text(), "done");
    assert.equal(answer.headers.get("connection"), null);
    // Parked after that response: the next thing on the wire is a wait.
    const wait2 = await deadline(raw.readMessage(), 10_000, "the wait");
    assert.equal(wait2?.start, "GET /.pothead/wait HTTP/1.1");
    await waitFor(() => hub.stats.parked === 1, "parked after the response");
    // A parked connection the worker closes leaves at once.
    raw.conn.close();
    raw = undefined;
    await waitFor(() => hub.stats.slots === 0, "the slot detached");
    assert.equal(hub.stats.parked, 0);
    assert.equal(hub.stats.failed, 0);
  } finally {
    raw?.conn.close();
    await server.shutdown();
  }
});

const HANDSHAKE = "GET / HTTP/1.1\r\nHost: hub\r\nUpgrade: ptth\r\n" +
  "Connection: Upgrade\r\nALPN: http%2F1.1\r\n";

// A raw worker that has passed the handshake with `extra` fields, parked by
// declining the request `fetch` sends; answers pings meanwhile. Returns the
// wait request the hub sent.
async function parkedRawWorker(
  port: number,
  extra: string,
  url: string,
): Promise<
  {
    raw: RawSocket;
    wait: { headers: [string, string][] };
    res: Promise<Response>;
  }
> {
  const raw = await RawSocket.connect(port);
  await raw.write(HANDSHAKE + extra + "\r\n");
  const answer = await deadline(raw.readHead(), 10_000, "the 101");
  assert.ok(answer?.startsWith("HTTP/1.1 101 "), `handshake: ${answer}`);
  const res = fetch(url);
  let req = await deadline(raw.readMessage(), 10_000, "the request");
  while (req !== null && req.start.startsWith("GET /.pothead/ping ")) {
    await raw.write(READY_RESPONSE);
    req = await deadline(raw.readMessage(), 10_000, "the request");
  }
  assert.equal(req?.start, "GET /job HTTP/1.1");
  await raw.write(PARKED_RESPONSE);
  const wait = await deadline(raw.readMessage(), 10_000, "the wait");
  assert.equal(wait?.start, "GET /.pothead/wait HTTP/1.1");
  return { raw, wait: wait!, res };
}

Deno.test("hub: a worker that renews parked connections is asked to every ping interval; one that falls silent is closed", async () => {
  const logs: HubLogRecord[] = [];
  const server = startHub({
    pingInterval: 100,
    pingTimeout: 300,
    queueTimeout: 2000,
    onLog: (r) => logs.push(r),
  });
  let raw: RawSocket | undefined;
  try {
    const parked = await parkedRawWorker(
      server.workerAddr.port,
      "Pothead-Worker-Id: renewer\r\nPothead-Ping: 1\r\nPothead-Park-Renew: 1\r\n",
      `http://127.0.0.1:${server.addr.port}/job`,
    );
    const r = parked.raw;
    raw = r;
    assert.deepEqual(
      parked.wait.headers.find(([n]) => n === "x-pothead-renew"),
      ["x-pothead-renew", "100"],
    );
    // Renewed twice: each time the hub asks again, and it stays parked.
    for (let i = 0; i < 2; i++) {
      await r.write(STILL_PARKED_RESPONSE);
      const again = await deadline(r.readMessage(), 10_000, "a new wait");
      assert.equal(again?.start, "GET /.pothead/wait HTTP/1.1");
      assert.equal(server.hub.stats.parked, 1);
    }
    // Now silent, as a worker that vanished: closed after 100 + 300 ms.
    assert.equal(await deadline(r.readMessage(), 10_000, "the close"), null);
    await waitFor(() => server.hub.stats.slots === 0, "the slot detached");
    assert.equal(server.hub.stats.pingTimeouts, 1);
    assert.equal(server.hub.stats.parked, 0);
    const warning = logs.find((r) => r.msg.includes("did not answer a ping"));
    assert.equal(warning?.worker, "renewer");
    assert.match(String(warning?.reason), /did not renew a parked connection/);
    const res = await parked.res;
    assert.equal(res.status, 503, "the request timed out in the queue");
    await res.body?.cancel();
  } finally {
    raw?.conn.close();
    await server.shutdown();
  }
});

Deno.test("hub: a worker that does not declare renewal is never asked to, and its parked connection stays", async () => {
  const server = startHub({ pingInterval: 50, pingTimeout: 100 });
  let raw: RawSocket | undefined;
  let res: Promise<Response> | undefined;
  try {
    const parked = await parkedRawWorker(
      server.workerAddr.port,
      "Pothead-Worker-Id: older\r\nPothead-Ping: 1\r\n",
      `http://127.0.0.1:${server.addr.port}/job`,
    );
    raw = parked.raw;
    res = parked.res;
    assert.equal(
      parked.wait.headers.find(([n]) => n === "x-pothead-renew"),
      undefined,
    );
    // Several times the interval and timeout: still parked.
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(server.hub.stats.parked, 1);
    assert.equal(server.hub.stats.pingTimeouts, 0);
  } finally {
    raw?.conn.close();
    await server.shutdown();
    await (await res)?.body?.cancel();
  }
});

// Answers every wait request at once "still parked" for `ms`; the number
// of wait requests that came, and the time it took.
async function renewAtOnce(
  raw: RawSocket,
  ms: number,
): Promise<{ waits: number; elapsed: number }> {
  const started = performance.now();
  let waits = 0;
  // Bounded by time and, should the hub not pace them, by count.
  while (performance.now() - started < ms && waits < 100_000) {
    await raw.write(STILL_PARKED_RESPONSE);
    const wait = await deadline(raw.readMessage(), 10_000, "a new wait");
    assert.equal(wait?.start, "GET /.pothead/wait HTTP/1.1");
    waits++;
  }
  return { waits, elapsed: performance.now() - started };
}

Deno.test("hub: a worker that answers each wait request at once, still parked, gets the next no sooner than half the renewal time", async () => {
  const server = startHub({
    pingInterval: 200,
    pingTimeout: 1000,
    queueTimeout: 5000,
  });
  let raw: RawSocket | undefined;
  let res: Promise<Response> | undefined;
  try {
    const parked = await parkedRawWorker(
      server.workerAddr.port,
      "Pothead-Worker-Id: eager\r\nPothead-Ping: 1\r\nPothead-Park-Renew: 1\r\n",
      `http://127.0.0.1:${server.addr.port}/job`,
    );
    raw = parked.raw;
    res = parked.res;
    const { waits, elapsed } = await renewAtOnce(raw, 1000);
    // One every 100 ms at most (back to back, thousands came).
    assert.ok(waits <= 2 + elapsed / 100, `${waits} waits in ${elapsed} ms`);
    assert.equal(server.hub.stats.parked, 1);
  } finally {
    raw?.conn.close();
    await server.shutdown();
    await (await res)?.body?.cancel();
  }
});

Deno.test("hub: a plain worker that answers each wait request unasked, still parked, gets at most one a second", async () => {
  const server = startHub({ queueTimeout: 5000 });
  let raw: RawSocket | undefined;
  let res: Promise<Response> | undefined;
  try {
    raw = await RawSocket.connect(server.workerAddr.port);
    await waitFor(() => server.hub.stats.idle === 1, "the plain worker");
    res = fetch(`http://127.0.0.1:${server.addr.port}/job`);
    const first = await deadline(raw.readMessage(), 10_000, "the request");
    assert.equal(first?.start, "GET /job HTTP/1.1");
    await raw.write(PARKED_RESPONSE);
    const wait = await deadline(raw.readMessage(), 10_000, "the wait");
    assert.equal(wait?.start, "GET /.pothead/wait HTTP/1.1");
    const { waits, elapsed } = await renewAtOnce(raw, 1500);
    assert.ok(waits <= 2 + elapsed / 1000, `${waits} waits in ${elapsed} ms`);
    assert.equal(server.hub.stats.parked, 1);
    // Closed by the worker while the hub holds off: it leaves at once.
    raw.conn.close();
    raw = undefined;
    await waitFor(() => server.hub.stats.slots === 0, "the slot detached");
  } finally {
    raw?.conn.close();
    await server.shutdown();
    await (await res)?.body?.cancel();
  }
});
