// Holding ahead, the worker's half (_hold.ts, the serve engine in
// _serve_native.ts): a scripted hub on a raw listener answers the runner's
// handshake, then writes requests (a held one pipelined behind the one in
// progress, revokes) and reads the answers as bytes.

import assert from "node:assert/strict";
import { connectWorker, type WorkerOptions } from "../worker.ts";
import { HOLD_FIELD, REVOKE_REQUEST } from "../_hold.ts";
import { RequestFraming } from "../_serve_native.ts";
import {
  latin1Bytes,
  latin1Text,
  type RawMessage,
  RawSocket,
} from "./_relay.ts";
import { deadline, waitFor } from "./_wait.ts";

const A = "GET /a HTTP/1.1\r\nhost: h\r\n\r\n";
const HELD = `GET /held HTTP/1.1\r\nhost: h\r\n${HOLD_FIELD}: 1\r\n\r\n`;
const REVOKE = latin1Text(REVOKE_REQUEST);

interface Ctx {
  /** The hub's end of the runner's first connection. */
  hub: RawSocket;
  /** Every connection the runner opened, with its handshake head. */
  accepted: { sock: RawSocket; head: string }[];
  /**
   * What the handler did, in order: "start /a", "end /a" (returned), "out
   * /a" (written whole), "abort /a" (its signal).
   */
  events: string[];
  /** Opens the gate of a path: its handler (or its body) goes on. */
  open(path: string): void;
  drain(): Promise<void>;
}

// Handlers: `/a` and `/gated` wait for their gate before answering;
// `/stream...` answers at once and ends its body when its gate opens; others
// answer at once.
// "out" is logged when Deno.serve has written the response whole.
// With `concurrency` 2 a permit is free for a held request at once: it must
// still wait for the response before it. (The runner then opens two
// connections; the tests use the first.) With `hubs` 2 the runner dials a
// second listener too, and parks a connection after each response.
async function scripted(
  fn: (ctx: Ctx) => Promise<void>,
  { engine = "serve", concurrency = 1, hubs = 1 }: {
    engine?: WorkerOptions["engine"];
    concurrency?: number;
    hubs?: number;
  } = {},
): Promise<void> {
  const listeners = Array.from(
    { length: hubs },
    () => Deno.listen({ hostname: "127.0.0.1", port: 0 }),
  );
  const listener = listeners[0];
  const accepted: Ctx["accepted"] = [];
  const loop = Promise.all(listeners.map(async (listener) => {
    for await (const conn of listener) {
      const sock = new RawSocket(conn);
      const head = await sock.readHead();
      if (head === null) {
        sock.close();
        continue;
      }
      accepted.push({ sock, head });
      await sock.write(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: ptth\r\n" +
          "connection: Upgrade\r\n\r\n",
      );
    }
  }));
  const events: string[] = [];
  const gates = new Map<string, PromiseWithResolvers<void>>();
  const gate = (path: string) => {
    let g = gates.get(path);
    if (g === undefined) gates.set(path, g = Promise.withResolvers());
    return g.promise;
  };
  const worker = connectWorker(async (req, info) => {
    const path = new URL(req.url).pathname;
    events.push(`start ${path}`);
    info.completed.then(() => events.push(`out ${path}`), () => {});
    req.signal.addEventListener("abort", () => events.push(`abort ${path}`));
    if (path.startsWith("/stream")) {
      const body = new ReadableStream<Uint8Array>({
        async start(c) {
          c.enqueue(new TextEncoder().encode("first "));
          await gate(path);
          c.enqueue(new TextEncoder().encode("last"));
          c.close();
        },
      });
      events.push(`end ${path}`);
      return new Response(body);
    }
    if (path === "/a" || path === "/gated") await gate(path);

    events.push(`end ${path}`);
    return new Response(`ok ${path}`);
  }, {
    engine,
    hubs: listeners.map((l) => `127.0.0.1:${(l.addr as Deno.NetAddr).port}`),
    workerId: "w",
    concurrency,
    minBackoff: 10,
    maxBackoff: 100,
  });
  try {
    await waitFor(
      () => accepted.length >= concurrency * hubs,
      "the runner connects",
    );
    const first = accepted.find((a) =>
      (a.sock.conn.localAddr as Deno.NetAddr).port ===
        (listener.addr as Deno.NetAddr).port
    )!;
    await deadline(
      fn({
        hub: first.sock,
        accepted,
        events,
        open(path) {
          gate(path);
          gates.get(path)!.resolve();
        },
        drain: () => worker.drain(),
      }),
      30_000,
      "test body",
    );
  } finally {
    for (const g of gates.values()) g.resolve();
    worker.close();
    await worker.finished;
    for (const l of listeners) l.close();
    await loop.catch(() => {});
    for (const a of accepted) a.sock.close();
  }
}

const notAbort = (event: string) => !event.startsWith("abort");

function field(m: RawMessage | null, name: string): string | undefined {
  return m?.headers.find(([n]) => n === name)?.[1];
}

async function read(hub: RawSocket): Promise<RawMessage> {
  const m = await deadline(hub.readMessage(), 15_000, "a response");
  assert.ok(m !== null, "the connection ended");
  return m;
}

function assertTakenBack(m: RawMessage): void {
  assert.equal(m.status, 408, m.start);
  assert.equal(field(m, "x-pothead-not-started"), "1");
  assert.equal(field(m, "content-length"), "0");
  assert.equal(field(m, "connection"), undefined, "the connection stays");
}

// The connection still carries requests.
async function assertUsable(ctx: Ctx): Promise<void> {
  await ctx.hub.write("GET /after HTTP/1.1\r\nhost: h\r\n\r\n");
  const m = await read(ctx.hub);
  assert.equal(m.status, 200);
  assert.equal(latin1Text(m.body), "ok /after");
}

Deno.test("the serve engine says Pothead-Hold in its handshake, the inline engine does not", async () => {
  await scripted((ctx) => {
    assert.match(ctx.accepted[0].head.toLowerCase(), /\r\npothead-hold: 1\r\n/);
    return Promise.resolve();
  }, { engine: "serve" });
  await scripted((ctx) => {
    assert.doesNotMatch(ctx.accepted[0].head.toLowerCase(), /pothead-hold/);
    return Promise.resolve();
  }, { engine: "inline" });
});

const STREAM = "GET /stream HTTP/1.1\r\nhost: h\r\n\r\n";

// Sends /stream and the held request, and reads /stream's head.
async function streamThenHeld(ctx: Ctx): Promise<void> {
  await ctx.hub.write(STREAM + HELD);
  const head = await deadline(ctx.hub.readHead(), 15_000, "its head");
  assert.match(head ?? "", /^HTTP\/1\.1 200/);
}

Deno.test("a held request starts once the response before it is out, even with a permit free", async () => {
  for (const concurrency of [1, 2]) {
    await scripted(async (ctx) => {
      await ctx.hub.write(A + HELD);
      await waitFor(() => ctx.events.includes("start /a"), "/a starts");
      ctx.open("/a");
      assert.equal(latin1Text((await read(ctx.hub)).body), "ok /a");
      const held = await read(ctx.hub);
      assert.equal(held.status, 200, held.start);
      assert.equal(latin1Text(held.body), "ok /held");
      // (Without --unstable-no-legacy-abort the signal aborts once out.)
      assert.deepEqual(ctx.events.filter(notAbort).slice(0, 4), [
        "start /a",
        "end /a",
        "out /a",
        "start /held",
      ]);
      await assertUsable(ctx);
    }, { concurrency });
    await scripted(async (ctx) => {
      await streamThenHeld(ctx);
      assert.ok(!ctx.events.includes("start /held"), ctx.events.join(", "));
      ctx.open("/stream");
      const rest = latin1Text(await readUntil(ctx.hub, "0\r\n\r\n"));
      assert.ok(rest.includes("last"), rest);
      const held = await read(ctx.hub);
      assert.equal(held.status, 200, held.start);
      assert.equal(latin1Text(held.body), "ok /held");
      assert.deepEqual(
        ctx.events.filter(notAbort).slice(0, 4),
        ["start /stream", "end /stream", "out /stream", "start /held"],
      );
      await assertUsable(ctx);
    }, { concurrency });
  }
});

Deno.test("a revoke before the request in progress answers gets the 150 at once, then 200, the held 408 and 204", async () => {
  await scripted(async (ctx) => {
    await ctx.hub.write(A + HELD);
    await waitFor(() => ctx.events.includes("start /a"), "/a starts");
    await ctx.hub.write(REVOKE);
    // While /a's handler still waits.
    const interim = await read(ctx.hub);
    assert.equal(interim.status, 150, interim.start);
    assert.equal(field(interim, "x-pothead-revoked"), "1");
    assert.ok(!ctx.events.includes("end /a"));
    ctx.open("/a");
    const first = await read(ctx.hub);
    assert.equal(latin1Text(first.body), "ok /a");
    assertTakenBack(await read(ctx.hub));
    assert.equal((await read(ctx.hub)).status, 204);
    await assertUsable(ctx);
    assert.ok(!ctx.events.includes("start /held"), ctx.events.join(", "));
  });
});

Deno.test("a revoke split byte by byte across writes is still seen", async () => {
  await scripted(async (ctx) => {
    await ctx.hub.write(A + HELD);
    await waitFor(() => ctx.events.includes("start /a"), "/a starts");
    for (const byte of REVOKE_REQUEST) {
      await ctx.hub.write(new Uint8Array([byte]));
      // Gives the relay a read between bytes (no timing depends on it).
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    assert.equal((await read(ctx.hub)).status, 150);
    ctx.open("/a");
    assert.equal((await read(ctx.hub)).status, 200);
    assertTakenBack(await read(ctx.hub));
    assert.equal((await read(ctx.hub)).status, 204);
    assert.ok(!ctx.events.includes("start /held"), ctx.events.join(", "));
  });
});

Deno.test("a revoke once the response before it has begun gets no 150: the held 408, then 204", async () => {
  await scripted(async (ctx) => {
    // The revoke must reach the runner before the streamed response ends,
    // which the hub cannot see: if it came too late (the held request ran,
    // then 204, as it should), again with a longer wait.
    let taken = false;
    for (let attempt = 0; attempt < 6 && !taken; attempt++) {
      const path = `/stream${attempt}`;
      await ctx.hub.write(`GET ${path} HTTP/1.1\r\nhost: h\r\n\r\n` + HELD);
      const head = await deadline(ctx.hub.readHead(), 15_000, "its head");
      assert.match(head ?? "", /^HTTP\/1\.1 200/);
      await ctx.hub.write(REVOKE);
      await new Promise((resolve) => setTimeout(resolve, 25 << attempt));
      const ran = ctx.events.filter((e) => e === "start /held").length;
      ctx.open(path);
      // The rest of the chunked body, then the answers in turn.
      const rest = latin1Text(await readUntil(ctx.hub, "0\r\n\r\n"));
      assert.ok(!rest.includes("HTTP/1.1 150"), rest);
      assert.ok(rest.includes("last"), rest);
      const held = await read(ctx.hub);
      if (held.status === 200) {
        assert.equal(latin1Text(held.body), "ok /held");
      } else {
        assertTakenBack(held);
        assert.equal(
          ctx.events.filter((e) => e === "start /held").length,
          ran,
          ctx.events.join(", "),
        );
        taken = true;
      }
      assert.equal((await read(ctx.hub)).status, 204);
    }
    assert.ok(taken, "never taken back");
    await assertUsable(ctx);
  });
});

Deno.test("a revoke after the held request started is answered 204 after its real response", async () => {
  await scripted(async (ctx) => {
    const gated = `GET /gated HTTP/1.1\r\nhost: h\r\n${HOLD_FIELD}: 1\r\n\r\n`;
    await ctx.hub.write(A + gated);
    await waitFor(() => ctx.events.includes("start /a"), "/a starts");
    ctx.open("/a");
    assert.equal(latin1Text((await read(ctx.hub)).body), "ok /a");
    await waitFor(() => ctx.events.includes("start /gated"), "held starts");
    await ctx.hub.write(REVOKE);
    ctx.open("/gated");
    const held = await read(ctx.hub);
    assert.equal(held.status, 200, held.start);
    assert.equal(latin1Text(held.body), "ok /gated");
    assert.equal((await read(ctx.hub)).status, 204);
    await assertUsable(ctx);
  });
});

Deno.test("a revoke with nothing held is answered 204, and a consumer's request for its path runs", async () => {
  await scripted(async (ctx) => {
    await ctx.hub.write(REVOKE);
    assert.equal((await read(ctx.hub)).status, 204);
    // Without the field only the hub sends (it drops consumers' X-Pothead-*).
    await ctx.hub.write("GET /.pothead/revoke HTTP/1.1\r\nhost: h\r\n\r\n");
    const m = await read(ctx.hub);
    assert.equal(latin1Text(m.body), "ok /.pothead/revoke");
  });
});

Deno.test("a held request never runs when the hub closes the connection first", async () => {
  await scripted(async (ctx) => {
    // A permit is free, and Deno.serve has read the held request.
    await streamThenHeld(ctx);
    ctx.hub.close();
    // Once the runner has seen the close (it aborts the request's signal).
    await waitFor(() => ctx.events.includes("abort /stream"), "it hears");
    ctx.open("/stream");
    // The runner dials again once the link has ended; /held had its chance.
    await waitFor(() => ctx.accepted.length >= 3, "the runner dials again");
    await ctx.accepted[2].sock.write("GET /later HTTP/1.1\r\nhost: h\r\n\r\n");
    assert.equal((await read(ctx.accepted[2].sock)).status, 200);
    assert.ok(!ctx.events.includes("start /held"), ctx.events.join(", "));
  }, { concurrency: 2 });
});

Deno.test("a held request behind a response that parks runs as one just arrived, or taken back leaves the link parked", async () => {
  const wait =
    "GET /.pothead/wait HTTP/1.1\r\nhost: h\r\nx-pothead-wait: 1\r\n\r\n";
  await scripted(async (ctx) => {
    await ctx.hub.write(A + HELD);
    await waitFor(() => ctx.events.includes("start /a"), "/a starts");
    ctx.open("/a");
    const first = await read(ctx.hub);
    assert.equal(field(first, "connection"), "pothead-park");
    const held = await read(ctx.hub);
    assert.equal(latin1Text(held.body), "ok /held");
    assert.equal(field(held, "connection"), "pothead-park");
    await ctx.hub.write(wait);
    assert.equal((await read(ctx.hub)).status, 204, "offered again");
    // Taken back: the park of the response before it stands.
    await ctx.hub.write("GET /gated HTTP/1.1\r\nhost: h\r\n\r\n" + HELD);
    await waitFor(() => ctx.events.includes("start /gated"), "/gated starts");
    await ctx.hub.write(REVOKE);
    assert.equal((await read(ctx.hub)).status, 150);
    ctx.open("/gated");
    const gated = await read(ctx.hub);
    assert.equal(field(gated, "connection"), "pothead-park");
    assertTakenBack(await read(ctx.hub));
    assert.equal((await read(ctx.hub)).status, 204);
    await ctx.hub.write(wait);
    const again = await read(ctx.hub);
    assert.equal(again.status, 204, "the wait request, not a handler's");
    assert.equal(
      ctx.events.filter((e) => e === "start /held").length,
      1,
      ctx.events.join(", "),
    );
    assert.ok(!ctx.events.includes("start /.pothead/wait"));
  }, { hubs: 2 });
});

Deno.test("a worker that drains answers its held request with the not-started 408", async () => {
  for (const drainWhile of ["handler", "response"] as const) {
    await scripted(async (ctx) => {
      if (drainWhile === "handler") {
        await ctx.hub.write(A + HELD);
        await waitFor(() => ctx.events.includes("start /a"), "/a starts");
      } else await streamThenHeld(ctx);
      const drained = ctx.drain();
      if (drainWhile === "handler") {
        ctx.open("/a");
        assert.equal((await read(ctx.hub)).status, 200);
      } else {
        ctx.open("/stream");
        await readUntil(ctx.hub, "0\r\n\r\n");
      }
      const held = await read(ctx.hub);
      assert.equal(held.status, 408, `${drainWhile}: ${held.start}`);
      assert.equal(field(held, "x-pothead-not-started"), "1");
      assert.equal(field(held, "connection"), "close");
      assert.equal(await ctx.hub.readMessage(), null);
      await drained;
      assert.ok(!ctx.events.includes("start /held"), ctx.events.join(", "));
    }, { concurrency: 2 });
  }
});

// Reads until `end` has come (inclusive).
async function readUntil(sock: RawSocket, end: string): Promise<Uint8Array> {
  let got = "";
  for (let guard = 0; guard < 10_000 && !got.endsWith(end); guard++) {
    got += latin1Text(await deadline(sock.readExactly(1), 15_000, end));
  }
  return latin1Bytes(got);
}

// RequestFraming, alone: every split of the bytes gives the same marks.
Deno.test("RequestFraming reports held requests and revokes however the bytes are split", () => {
  const bytes = latin1Bytes(
    "GET /x HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n" +
      "GET /y HTTP/1.1\r\nhost: h\r\nX-Pothead-Hold: 1\r\n\r\n" +
      REVOKE +
      // Not ours: a body, a consumer's path, a field without the line.
      "POST /z HTTP/1.1\r\nhost: h\r\nx-pothead-hold: 1\r\ncontent-length: 3\r\n\r\nabc" +
      "GET /.pothead/revoke HTTP/1.1\r\nhost: h\r\n\r\n" +
      "GET /.pothead/revokes HTTP/1.1\r\nx-pothead-revoke: 1\r\n\r\n" +
      "GET /w HTTP/1.1\r\nx-pothead-hold: 0\r\n\r\n" +
      "GET /.pothead/revoke HTTP/1.1\r\nx-pothead-hevoke: 1\r\n\r\n" +
      "GET /v HTTP/1.1\r\nx-pothead-holds: 1\r\nX-POTHEAD-REVOKE-X: 1\r\n\r\n" +
      "GET /.pothead/revoke HTTP/1.1\r\nHost: h\r\nX-Pothead-Revoke: 1\r\n\r\n",
  );
  const want = ["hold", "revoke", "revoke"];
  const marksOf = (chunks: Uint8Array[]) => {
    const marks: string[] = [];
    const framing = new RequestFraming((m) => marks.push(m));
    for (const c of chunks) framing.push(c);
    return marks;
  };
  assert.deepEqual(marksOf([bytes]), want);
  assert.deepEqual(
    marksOf([...bytes].map((b) => new Uint8Array([b]))),
    want,
  );
  for (let at = 0; at <= bytes.length; at++) {
    assert.deepEqual(
      marksOf([bytes.subarray(0, at), bytes.subarray(at)]),
      want,
      `split at ${at}`,
    );
  }
});
