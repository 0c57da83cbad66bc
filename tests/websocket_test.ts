// WebSockets through the hub: Deno's WebSocket client as the consumer, a
// worker runner whose handler calls Deno.upgradeWebSocket (serve engine), or
// a raw TCP worker that writes exact bytes. Each test checks what both ends
// see and that the hub serves plain requests afterwards.
import assert from "node:assert/strict";
import type {
  AccessRecord,
  HubLogRecord,
  HubServer,
  ServeHubOptions,
} from "../hub.ts";
import type { FetchHandler, WorkerHandle } from "../worker.ts";
import { connectWorker, ENGINE, startHub, startWorker } from "./_hub.ts";
import { deadline, RawSocket, waitFor } from "./_relay.ts";
import { type WsClient as Client, wsClient as client } from "./_ws_client.ts";
import { closePayload, encodeFrame, Op } from "../_ws_frame.ts";
import { bridgeWebSocket } from "../_ws_bridge.ts";
import { BufferedReader } from "../_io.ts";
import {
  type Proc,
  startHub as startHubProc,
  startWorker as startWorkerProc,
} from "./_procs.ts";

interface Ctx {
  server: HubServer;
  http: string;
  ws: string;
  access: AccessRecord[];
}

async function withHub(
  options: Partial<ServeHubOptions>,
  handler: FetchHandler | null,
  fn: (ctx: Ctx) => Promise<void>,
): Promise<void> {
  const access: AccessRecord[] = [];
  const server = startHub({ onAccess: (r) => access.push(r), ...options });
  let worker: WorkerHandle | undefined;
  if (handler !== null) {
    worker = startWorker(server, handler);
    await waitFor(() => server.hub.stats.idle === 1, "the worker's slot");
  }
  try {
    await fn({
      server,
      http: `http://127.0.0.1:${server.addr.port}`,
      ws: `ws://127.0.0.1:${server.addr.port}`,
      access,
    });
  } finally {
    worker?.close();
    await worker?.finished;
    await server.shutdown();
  }
}

// Echoes text as "echo:<text>" and bytes as they are; "close <code>" closes
// with that code; the close event the handler sees goes to `seen`.
function echo(seen?: (e: CloseEvent) => void): FetchHandler {
  return (req) => {
    if (req.headers.get("upgrade") !== "websocket") {
      return new Response(`plain ${new URL(req.url).pathname}`);
    }
    const offered = req.headers.get("sec-websocket-protocol");
    const { socket, response } = Deno.upgradeWebSocket(
      req,
      offered === null ? {} : { protocol: offered.split(",")[1].trim() },
    );
    socket.onmessage = (e) => {
      if (typeof e.data === "string" && e.data.startsWith("close ")) {
        socket.close(Number(e.data.slice(6)), "as asked");
      } else if (typeof e.data === "string") socket.send(`echo:${e.data}`);
      else socket.send(e.data);
    };
    socket.onclose = (e) => seen?.(e);
    return response;
  };
}

const SERVE = ENGINE !== "inline";

Deno.test({
  name:
    `[${ENGINE}] a WebSocket passes through: text, binary, 1 MiB, subprotocol, the worker's close code`,
  ignore: !SERVE,
  fn: () =>
    withHub({}, echo(), async ({ server, ws, http, access }) => {
      const c = await client(`${ws}/chat?room=1`, ["first", "second"]);
      assert.equal(c.ws.protocol, "second"); // the worker's choice
      assert.equal(server.hub.stats.webSockets, 1);
      assert.equal(server.hub.stats.busy, 1);
      c.ws.send("hello");
      assert.equal(await c.next(), "echo:hello");
      c.ws.send(new Uint8Array([0, 1, 2, 255]));
      assert.deepEqual(await c.next(), new Uint8Array([0, 1, 2, 255]));
      const big = new Uint8Array(1 << 20).map((_, i) => (i * 7) & 0xff);
      c.ws.send(big);
      assert.deepEqual(await c.next(), big);
      c.ws.send("héllo ✓");
      assert.equal(await c.next(), "echo:héllo ✓");
      c.ws.send("close 4001");
      const ev = await deadline(c.closed, 10_000, "the close");
      assert.equal(ev.code, 4001);
      assert.equal(ev.reason, "as asked");
      assert.equal(ev.wasClean, true);
      // The worker's connection was the WebSocket's; it dials a new one.
      await waitFor(() => server.hub.stats.idle === 1, "the slot back");
      assert.equal(server.hub.stats.webSockets, 0);
      assert.equal(await (await fetch(`${http}/after`)).text(), "plain /after");
      await waitFor(() => access.length === 2, "two access records");
      const rec = access.find((r) => r.status === 101)!;
      assert.equal(rec.path, "/chat?room=1");
      assert.equal(rec.outcome, "ok");
      assert.equal(rec.bytesIn, 5 + 4 + (1 << 20) + 10 + 10);
      assert.equal(rec.bytesOut, 10 + 4 + (1 << 20) + 15);
    }),
});

Deno.test({
  name:
    `[${ENGINE}] the consumer's close code reaches the handler, and a WebSocket holds its slot until then`,
  ignore: !SERVE,
  fn: async () => {
    const seen = Promise.withResolvers<CloseEvent>();
    await withHub(
      {},
      echo((e) => seen.resolve(e)),
      async ({ server, ws, http }) => {
        const c = await client(`${ws}/`);
        // The only slot is the WebSocket's: a request waits for it.
        const plain = fetch(`${http}/queued`).then((r) => r.text());
        await waitFor(
          () => server.hub.stats.queued === 1,
          "the queued request",
        );
        c.ws.send("ping");
        assert.equal(await c.next(), "echo:ping");
        assert.equal(server.hub.stats.queued, 1);
        c.ws.close(3999, "done here");
        const ev = await deadline(seen.promise, 10_000, "the handler's close");
        assert.equal(ev.code, 3999);
        assert.equal(ev.reason, "done here");
        assert.equal((await c.closed).code, 3999);
        assert.equal(
          await deadline(plain, 10_000, "the queued answer"),
          "plain /queued",
        );
      },
    );
  },
});

Deno.test({
  name:
    `[${ENGINE}] a handler that refuses the upgrade answers as usual, and the connection stays`,
  ignore: !SERVE,
  fn: () =>
    withHub(
      {},
      (req) =>
        req.headers.get("upgrade") === "websocket"
          ? new Response("no sockets here\n", { status: 403 })
          : new Response("plain"),
      async ({ server, ws, http }) => {
        await assert.rejects(client(`${ws}/`), /WebSocket failed/);
        assert.equal(await (await fetch(http)).text(), "plain");
        assert.equal(server.hub.stats.slots, 1);
        assert.equal(server.hub.stats.failed, 0);
      },
    ),
});

Deno.test(`[${ENGINE}] with webSockets off, the worker sees a plain GET without Upgrade`, () =>
  withHub({ webSockets: false }, (req) =>
    new Response(
      `upgrade=${req.headers.get("upgrade")} key=${
        req.headers.has("sec-websocket-key")
      }`,
    ), async ({ server }) => {
    const s = await RawSocket.connect(server.addr.port);
    await s.write(
      "GET / HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n" +
        "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    );
    const res = await s.readMessage();
    assert.equal(res?.status, 200);
    assert.equal(new TextDecoder().decode(res!.body), "upgrade=null key=true");
    s.conn.close();
  }));

Deno.test(`[${ENGINE}] a bad handshake is answered by the hub: 426 for another version, 400 without a key`, () =>
  withHub({}, null, async ({ server }) => {
    const ask = async (fields: string) => {
      const s = await RawSocket.connect(server.addr.port);
      await s.write(
        `GET / HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n${fields}\r\n`,
      );
      const res = await s.readMessage();
      s.conn.close();
      return res!;
    };
    const old = await ask(
      "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 8\r\n",
    );
    assert.equal(old.status, 426);
    assert.equal(
      old.headers.find(([n]) => n === "sec-websocket-version")?.[1],
      "13",
    );
    const nokey = await ask("sec-websocket-version: 13\r\n");
    assert.equal(nokey.status, 400);
    assert.match(new TextDecoder().decode(nokey.body), /Sec-WebSocket-Key/);
  }));

// A raw worker: reads the upgrade request, answers with `answer(key)`.
async function rawWorker(server: HubServer): Promise<RawSocket> {
  const idle = server.hub.stats.idle;
  const w = await RawSocket.connect(server.workerAddr.port);
  await waitFor(() => server.hub.stats.idle > idle, "the raw worker idle");
  return w;
}

async function readUpgrade(w: RawSocket): Promise<string> {
  const head = await deadline(w.readHead(), 10_000, "the upgrade request");
  assert.ok(head !== null);
  assert.match(head, /^GET \/ws HTTP\/1\.1\r\n/);
  assert.match(head, /\r\nupgrade: websocket\r\n/i);
  assert.match(head, /\r\nconnection: Upgrade\r\n/i);
  assert.doesNotMatch(head, /sec-websocket-extensions/i);
  return /sec-websocket-key: (\S+)/i.exec(head)![1];
}

async function accept101(key: string): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-1",
    new TextEncoder().encode(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"),
  );
  const accept = btoa(String.fromCharCode(...new Uint8Array(digest)));
  return "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n" +
    `connection: Upgrade\r\nsec-websocket-accept: ${accept}\r\n\r\n`;
}

Deno.test(`[${ENGINE}] a worker's 101 with a wrong accept key is a 502, and the hub serves on`, () =>
  withHub({}, null, async ({ server, ws }) => {
    const w = await rawWorker(server);
    const opening = client(`${ws}/ws`);
    await readUpgrade(w);
    await w.write(await accept101("not the key"));
    await assert.rejects(opening, /WebSocket failed/);
    await waitFor(() => server.hub.stats.failed === 1, "the failure counted");
    assert.equal(server.hub.stats.answered, 0); // not an answer the consumer got
    assert.equal(server.hub.stats.slots, 0); // that connection is closed
    w.conn.close();
  }));

Deno.test(`[${ENGINE}] a raw worker's frames: fragments joined, its ping answered, masked frames from the hub, close echoed`, () =>
  withHub({}, null, async ({ server, ws }) => {
    const w = await rawWorker(server);
    const opening = client(`${ws}/ws`);
    const key = await readUpgrade(w);
    // The 101 and a first message in one write.
    const hello = encodeFrame(Op.text, new TextEncoder().encode("hi"), null);
    const head = new TextEncoder().encode(await accept101(key));
    const both = new Uint8Array(head.length + hello.length);
    both.set(head);
    both.set(hello, head.length);
    await w.write(both);
    const c = await opening;
    assert.equal(await c.next(), "hi");
    // A message in three fragments with a ping between them.
    await w.write(
      encodeFrame(Op.text, new TextEncoder().encode("one "), null, false),
    );
    await w.write(encodeFrame(Op.ping, new Uint8Array([7, 8]), null));
    await w.write(
      encodeFrame(
        Op.continuation,
        new TextEncoder().encode("two "),
        null,
        false,
      ),
    );
    await w.write(
      encodeFrame(Op.continuation, new TextEncoder().encode("three"), null),
    );
    assert.equal(await c.next(), "one two three");
    // The hub's pong: masked (client to server), same payload.
    const pong = await w.readExactly(8);
    assert.equal(pong[0], 0x8a);
    assert.equal(pong[1], 0x82);
    assert.deepEqual([pong[6] ^ pong[2], pong[7] ^ pong[3]], [7, 8]);
    // The consumer's message arrives masked.
    c.ws.send("up");
    const up = await w.readExactly(8);
    assert.equal(up[0], 0x81);
    assert.equal(up[1], 0x82);
    assert.equal(String.fromCharCode(up[6] ^ up[2], up[7] ^ up[3]), "up");
    // The worker closes; the consumer gets its code, the worker its echo.
    await w.write(encodeFrame(Op.close, closePayload(1001, "bye"), null));
    const ev = await deadline(c.closed, 10_000, "the consumer's close");
    assert.equal(ev.code, 1001);
    assert.equal(ev.reason, "bye");
    const echoed = await w.readExactly(8);
    assert.equal(echoed[0], 0x88);
    assert.equal(echoed[1], 0x82);
    assert.deepEqual([echoed[6] ^ echoed[2], echoed[7] ^ echoed[3]], [
      0x03,
      0xe9,
    ]);
    await waitFor(() => server.hub.stats.webSockets === 0, "the tunnel ended");
    await deadline(w.readHead(), 10_000, "the hub closing the connection");
    assert.equal(w.eof, true);
    w.conn.close();
  }));

Deno.test(`[${ENGINE}] a worker breaking the protocol (masked frame, bad UTF-8, too big, a bad close frame) closes 1011 for the consumer`, async () => {
  const cases: [string, (key: string) => Promise<Uint8Array>, number][] = [
    ["masked", () =>
      Promise.resolve(
        encodeFrame(Op.text, new Uint8Array([104]), new Uint8Array(4)),
      ), 1002],
    [
      "bad UTF-8",
      () =>
        Promise.resolve(
          encodeFrame(Op.text, new Uint8Array([0xff, 0xfe]), null),
        ),
      1007,
    ],
    [
      "too big",
      () => Promise.resolve(encodeFrame(Op.binary, new Uint8Array(2048), null)),
      1009,
    ],
    // A bad close frame is not a close: the worker still hears why.
    [
      "close code 1005",
      () => Promise.resolve(encodeFrame(Op.close, closePayload(1005), null)),
      1002,
    ],
    [
      "close reason not UTF-8",
      () =>
        Promise.resolve(
          encodeFrame(Op.close, new Uint8Array([0x03, 0xe8, 0xff]), null),
        ),
      1007,
    ],
  ];
  for (const [what, frame, workerCode] of cases) {
    await withHub(
      { maxWebSocketMessage: 1024 },
      null,
      async ({ server, ws, http }) => {
        const w = await rawWorker(server);
        const opening = client(`${ws}/ws`);
        const key = await readUpgrade(w);
        await w.write(await accept101(key));
        const c = await opening;
        await w.write(await frame(key));
        const ev = await deadline(
          c.closed,
          10_000,
          `${what}: the consumer's close`,
        );
        assert.equal(ev.code, 1011, what);
        // The worker is told why, in a masked close frame.
        const b = await w.readExactly(6 + 2);
        assert.equal(b[0], 0x88, what);
        assert.equal(((b[6] ^ b[2]) << 8) | (b[7] ^ b[3]), workerCode, what);
        await waitFor(
          () => server.hub.stats.webSockets === 0,
          "the tunnel ended",
        );
        w.conn.close();
        // The hub still answers (no worker left: a 503 from the queue).
        const res = await fetch(`${http}/`, { signal: AbortSignal.timeout(50) })
          .catch(() => null);
        await res?.body?.cancel();
      },
    );
  }
});

Deno.test(`[${ENGINE}] a worker's text that starts with U+FEFF reaches the consumer with it (a BOM is text, not a marker)`, () =>
  withHub({}, null, async ({ server, ws }) => {
    const w = await rawWorker(server);
    const opening = client(`${ws}/ws`);
    await w.write(await accept101(await readUpgrade(w)));
    const c = await opening;
    await w.write(
      encodeFrame(Op.text, new TextEncoder().encode("\uFEFFhi"), null),
    );
    assert.equal(await c.next(), "\uFEFFhi");
    w.conn.close();
    await deadline(c.closed, 10_000, "the consumer's close");
    await waitFor(() => server.hub.stats.webSockets === 0, "the tunnel ended");
  }));

Deno.test(`[${ENGINE}] a worker that drops the connection: the consumer hears 1011`, () =>
  withHub({}, null, async ({ server, ws }) => {
    const w = await rawWorker(server);
    const opening = client(`${ws}/ws`);
    await w.write(await accept101(await readUpgrade(w)));
    const c = await opening;
    w.conn.close();
    const ev = await deadline(c.closed, 10_000, "the consumer's close");
    assert.equal(ev.code, 1011);
    assert.equal(ev.reason, "worker connection lost");
    await waitFor(() => server.hub.stats.webSockets === 0, "the tunnel ended");
  }));

/**
 * A hub with one echo worker and one WebSocket open through it that has
 * echoed a message, for the shutdown tests; `seen` is the handler's close.
 */
async function withSession(
  grace: number,
  fn: (
    server: HubServer,
    c: Client,
    seen: Promise<CloseEvent>,
  ) => Promise<void>,
): Promise<void> {
  const seen = Promise.withResolvers<CloseEvent>();
  const server = startHub({ shutdownGrace: grace });
  const worker = startWorker(server, echo((e) => seen.resolve(e)));
  try {
    await waitFor(() => server.hub.stats.idle === 1, "the worker's slot");
    const c = await client(`ws://127.0.0.1:${server.addr.port}/`);
    c.ws.send("x");
    assert.equal(await c.next(), "echo:x");
    await fn(server, c, seen.promise);
  } finally {
    worker.close();
    await worker.finished;
    await server.shutdown();
  }
}

Deno.test({
  name:
    `[${ENGINE}] hub shutdown gives open WebSockets the grace: messages still flow, new requests get 503, then 1001 to both sides`,
  ignore: !SERVE,
  fn: () =>
    withSession(3000, async (server, c, seen) => {
      const t0 = performance.now();
      const stopping = server.shutdown();
      c.ws.send("y");
      assert.equal(await c.next(), "echo:y");
      const late = await fetch(`http://127.0.0.1:${server.addr.port}/`, {
        signal: AbortSignal.timeout(10_000),
      });
      assert.equal(late.status, 503);
      assert.match(await late.text(), /shutting down/);
      await deadline(stopping, 30_000, "the shutdown");
      // Held open until the grace ran out: the session never ended itself.
      assert.ok(performance.now() - t0 >= 3000 - 50);
      const ev = await deadline(c.closed, 10_000, "the consumer's close");
      assert.equal(ev.code, 1001);
      assert.equal(ev.reason, "hub is shutting down");
      assert.equal(
        (await deadline(seen, 10_000, "the handler's close")).code,
        1001,
      );
    }),
});

Deno.test({
  name:
    `[${ENGINE}] hub shutdown ends as soon as the last WebSocket closes, within the grace`,
  ignore: !SERVE,
  fn: () =>
    withSession(60_000, async (server, c, seen) => {
      const t0 = performance.now();
      const stopping = server.shutdown();
      // Still open after a while: the shutdown waits for it.
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(server.hub.stats.webSockets, 1);
      c.ws.close(1000, "done");
      const ev = await deadline(seen, 10_000, "the handler's close");
      assert.equal(ev.code, 1000);
      assert.equal(ev.reason, "done");
      await deadline(stopping, 30_000, "the shutdown");
      assert.ok(performance.now() - t0 < 30_000);
      assert.equal((await c.closed).code, 1000);
    }),
});

Deno.test({
  name:
    `[${ENGINE}] hub shutdown held by a WebSocket: a keep-alive consumer's next request gets 503 with Connection: close`,
  ignore: !SERVE,
  fn: async () => {
    const server = startHub({ shutdownGrace: 60_000 });
    const worker = startWorker(server, echo());
    const raw = await RawSocket.connect(server.addr.port);
    try {
      await waitFor(() => server.hub.stats.idle === 1, "the worker's slot");
      await raw.write("GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
      const first = await deadline(raw.readMessage(), 10_000, "the answer");
      assert.equal(first?.status, 200);
      await waitFor(() => server.hub.stats.idle === 1, "the slot back");
      const c = await client(`ws://127.0.0.1:${server.addr.port}/`);
      const stopping = server.shutdown();
      await waitFor(() => server.hub.stats.draining, "the drain");
      // Deno.serve's shutdown, which closes idle keep-alive connections, is
      // held: the consumer must hear that this connection is done.
      await raw.write("GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
      const late = await deadline(raw.readMessage(), 10_000, "the 503");
      assert.equal(late?.status, 503);
      assert.deepEqual(
        late!.headers.filter(([name]) => name === "connection"),
        [["connection", "close"]],
      );
      // As a client does on Connection: close.
      raw.close();
      c.ws.close(1000, "done");
      assert.equal((await deadline(c.closed, 10_000, "the close")).code, 1000);
      await deadline(stopping, 30_000, "the shutdown");
    } finally {
      raw.close();
      worker.close();
      await worker.finished;
      await server.shutdown();
    }
  },
});

Deno.test({
  name:
    `[${ENGINE}] a WebSocket handshake still queued when shutdown starts gets 503 and never reaches a worker`,
  ignore: !SERVE,
  fn: async () => {
    const seen: string[] = [];
    const hold = Promise.withResolvers<void>();
    const server = startHub({ shutdownGrace: 30_000 });
    const worker = connectWorker(async (req) => {
      seen.push(
        `${req.headers.get("upgrade") ?? "plain"} ${new URL(req.url).pathname}`,
      );
      if (req.headers.get("upgrade") === "websocket") {
        return Deno.upgradeWebSocket(req).response;
      }
      await hold.promise;
      return new Response("held");
    }, {
      hostname: "127.0.0.1",
      port: server.workerAddr.port,
      concurrency: 1,
    });
    try {
      await waitFor(() => server.hub.stats.idle === 1, "the worker's slot");
      const held = fetch(`http://127.0.0.1:${server.addr.port}/held`);
      await waitFor(() => seen.length === 1, "the held request");
      const opening = client(`ws://127.0.0.1:${server.addr.port}/ws`);
      opening.catch(() => {});
      await waitFor(
        () => server.hub.stats.queued === 1,
        "the handshake queued",
      );
      const stopping = server.shutdown();
      await waitFor(() => server.hub.stats.draining, "the drain");
      hold.resolve();
      assert.equal(await (await held).text(), "held");
      await assert.rejects(opening, /WebSocket failed/);
      await deadline(stopping, 30_000, "the shutdown");
      assert.deepEqual(seen, ["plain /held"]);
    } finally {
      hold.resolve();
      worker.close();
      await worker.finished;
      await server.shutdown();
    }
  },
});

Deno.test(`[${ENGINE}] at the end of the grace, queued requests get 503 before WebSockets get their moment to close`, async () => {
  // A raw consumer that never answers the hub's close keeps the hub in its
  // last second of shutdown; a worker that attaches then takes nothing.
  const grace = 500;
  const server = startHub({ shutdownGrace: grace });
  const seen: string[] = [];
  let late: WorkerHandle | undefined;
  const consumer = await RawSocket.connect(server.addr.port);
  try {
    const w = await rawWorker(server);
    await consumer.write(
      "GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n" +
        "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    );
    await w.write(await accept101(await readUpgrade(w)));
    const head = await deadline(consumer.readHead(), 10_000, "the 101");
    assert.match(head ?? "", /^HTTP\/1\.1 101 /);
    await waitFor(() => server.hub.stats.webSockets === 1, "the tunnel");
    // Queued: the only slot is the WebSocket's.
    const queued = fetch(`http://127.0.0.1:${server.addr.port}/queued`);
    await waitFor(() => server.hub.stats.queued === 1, "the request queued");
    const t0 = performance.now();
    const stopping = server.shutdown();
    // Past the grace, inside the second given to close handshakes.
    await new Promise((r) => setTimeout(r, grace + 200));
    late = connectWorker((req) => {
      seen.push(new URL(req.url).pathname);
      return new Response("late");
    }, { hostname: "127.0.0.1", port: server.workerAddr.port });
    const res = await deadline(queued, 10_000, "the queued request's answer");
    assert.equal(res.status, 503);
    await res.body?.cancel();
    await deadline(stopping, 30_000, "the shutdown");
    assert.ok(performance.now() - t0 >= grace - 50);
    assert.deepEqual(seen, []);
    w.conn.close();
  } finally {
    consumer.close();
    late?.close();
    await late?.finished;
    await server.shutdown();
  }
});

Deno.test({
  name:
    "[inline] a handler that upgrades fails with an error naming the serve engine",
  fn: async () => {
    const server = startHub();
    const errors: string[] = [];
    const worker = connectWorker((req) => Deno.upgradeWebSocket(req).response, {
      engine: "inline",
      hostname: "127.0.0.1",
      port: server.workerAddr.port,
      onError: (error) => errors.push(String(error)),
    });
    try {
      await waitFor(() => server.hub.stats.idle === 1, "the worker's slot");
      await assert.rejects(
        client(`ws://127.0.0.1:${server.addr.port}/`),
        /WebSocket failed/,
      );
      await waitFor(() => errors.length >= 1, "the handler's error");
      assert.match(errors[0], /use the serve engine/);
    } finally {
      worker.close();
      await worker.finished;
      await server.shutdown();
    }
  },
});

Deno.test(`[${ENGINE}] a raw consumer's handshake: the 101 it gets carries its accept key, the worker's own fields and the request id`, () =>
  withHub({}, null, async ({ server }) => {
    const w = await rawWorker(server);
    const s = await RawSocket.connect(server.addr.port);
    const key = "x3JJHMbDL1EzLkh9GBhXDw==";
    await s.write(
      "GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n" +
        `sec-websocket-key: ${key}\r\nsec-websocket-version: 13\r\n` +
        "sec-websocket-extensions: permessage-deflate\r\nx-request-id: ws-1\r\n\r\n",
    );
    const forwarded = await readUpgrade(w);
    assert.equal(forwarded, key);
    await w.write(
      (await accept101(key)).replace(
        "\r\n\r\n",
        "\r\nset-cookie: room=1\r\n\r\n",
      ),
    );
    const head = await deadline(s.readHead(), 10_000, "the 101");
    assert.match(head!, /^HTTP\/1\.1 101 /);
    // RFC 6455 §1.3's second example key and its answer.
    assert.match(
      head!,
      /\r\nsec-websocket-accept: HSmrc0sMlYUkAGmm5OPpG2HaGWk=\r\n/i,
    );
    assert.match(head!, /\r\nset-cookie: room=1\r\n/i);
    assert.match(head!, /\r\nx-request-id: ws-1\r\n/i);
    assert.doesNotMatch(head!, /sec-websocket-extensions/i);
    // A masked "hi" from the consumer reaches the worker.
    await s.write(
      encodeFrame(
        Op.text,
        new TextEncoder().encode("hi"),
        new Uint8Array([1, 2, 3, 4]),
      ),
    );
    const up = await w.readExactly(8);
    assert.equal(String.fromCharCode(up[6] ^ up[2], up[7] ^ up[3]), "hi");
    s.conn.close();
    // The consumer gone: the worker is sent a close frame, then the end.
    const close = await w.readExactly(2);
    assert.equal(close[0], 0x88);
    await waitFor(() => server.hub.stats.webSockets === 0, "the tunnel ended");
    w.conn.close();
  }));

Deno.test({
  name:
    "[cli] WebSocket sessions through the hub and worker CLIs: a second session waits for the one slot",
  ignore: !SERVE,
  fn: async () => {
    const hub = await startHubProc(["--log-level", "warn"]);
    let worker: Proc | undefined;
    try {
      worker = await startWorkerProc(hub.workerPort, "examples/websocket.ts", [
        "--concurrency",
        "1",
      ]);
      const url = `ws://127.0.0.1:${hub.port}/session`;
      const first = await client(url);
      first.ws.send("hello");
      const reply = await first.next();
      assert.match(reply as string, /^HELLO \(pid \d+\)$/);
      // The worker's one slot is the first session's: the second waits.
      let opened = false;
      const second = client(url).then((c) => {
        opened = true;
        return c;
      });
      // Were the slot free, the second would open well within this.
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(opened, false);
      first.ws.send("bye");
      const ev = await deadline(first.closed, 10_000, "the first close");
      assert.equal(ev.code, 1000);
      assert.equal(ev.reason, "session over");
      const s2 = await deadline(second, 20_000, "the second session");
      assert.equal(opened, true);
      s2.ws.send("again");
      assert.match(await s2.next() as string, /^AGAIN/);
      s2.ws.send("bye");
      await deadline(s2.closed, 10_000, "the second close");
      // The slot is back for plain requests.
      const plain = await deadline(
        fetch(`http://127.0.0.1:${hub.port}/`),
        20_000,
        "a plain request",
      );
      assert.equal(plain.status, 426);
      assert.equal(await plain.text(), "Open a WebSocket to this URL\n");
      // SIGTERM drains the worker: an open session hears 1001 from its
      // handler (the request's signal aborts), and the worker exits 0.
      const third = await client(url);
      third.ws.send("last");
      assert.match(await third.next() as string, /^LAST/);
      worker.kill("SIGTERM");
      const gone = await deadline(third.closed, 20_000, "the drain's close");
      assert.equal(gone.code, 1001);
      assert.equal(gone.reason, "worker going away");
      assert.equal((await deadline(worker.status, 20_000, "the exit")).code, 0);
    } finally {
      await worker?.close();
      await hub.proc.close();
    }
  },
});

Deno.test({
  name:
    `[${ENGINE}] a consumer that leaves while the handler thinks, before its 101: the worker's permit comes back, its socket closes`,
  ignore: !SERVE,
  fn: async () => {
    const called = Promise.withResolvers<void>();
    const go = Promise.withResolvers<void>();
    const upgraded = Promise.withResolvers<void>();
    const closed = Promise.withResolvers<void>();
    await withHub({}, async (req) => {
      if (req.headers.get("upgrade") !== "websocket") {
        return new Response("plain");
      }
      called.resolve();
      await go.promise;
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.onclose = () => closed.resolve();
      upgraded.resolve();
      return response;
    }, async ({ server, http }) => {
      const s = await RawSocket.connect(server.addr.port);
      await s.write(
        "GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n" +
          "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
      );
      await deadline(called.promise, 10_000, "the handler called");
      s.conn.close();
      // The hub drops that worker connection; the handler answers later.
      await waitFor(() => server.hub.stats.busy === 0, "the slot dropped");
      go.resolve();
      await deadline(upgraded.promise, 10_000, "the handler's 101");
      // The worker's only permit is free again: a plain request is served.
      const res = await fetch(`${http}/after`, {
        signal: AbortSignal.timeout(20_000),
      });
      assert.equal(await res.text(), "plain");
      // The handler's socket hears the end (and Deno.serve's shutdown, in
      // the worker's close, is not held by a half-made upgrade).
      await deadline(closed.promise, 10_000, "the handler's socket closed");
    });
  },
});

Deno.test(`[${ENGINE}] a worker's close that the consumer never answers: the tunnel ends after the close timeout, not Deno's idle timeout`, () =>
  withHub({}, null, async ({ server, access }) => {
    const w = await rawWorker(server);
    const s = await RawSocket.connect(server.addr.port);
    await s.write(
      "GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n" +
        "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    );
    await w.write(await accept101(await readUpgrade(w)));
    assert.match(
      (await deadline(s.readHead(), 10_000, "the 101"))!,
      /^HTTP\/1\.1 101 /,
    );
    await waitFor(() => server.hub.stats.webSockets === 1, "the tunnel open");
    await w.write(encodeFrame(Op.close, closePayload(1000, "bye"), null));
    // The consumer hears the close and stays silent.
    const close = await deadline(s.readExactly(2), 10_000, "the close frame");
    assert.equal(close[0], 0x88);
    await waitFor(
      () => server.hub.stats.webSockets === 0 && server.hub.stats.busy === 0,
      "the tunnel ended",
      30_000,
    );
    await waitFor(() => access.length === 1, "the access record");
    assert.equal(access[0].status, 101);
    s.conn.close();
    w.conn.close();
  }));

Deno.test({
  name:
    `[${ENGINE}] a consumer's message larger than --max-websocket-message reaches a worker that reads (the limit is on what waits, not on one message)`,
  ignore: !SERVE,
  fn: () =>
    withHub({ maxWebSocketMessage: 1024 }, (req) => {
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.onmessage = (e) =>
        socket.send(`got ${(e.data as ArrayBuffer).byteLength}`);
      return response;
    }, async ({ server, ws }) => {
      const c = await client(`${ws}/`);
      c.ws.send(new Uint8Array(4096));
      assert.equal(await c.next(), "got 4096");
      c.ws.send(new Uint8Array(1024));
      assert.equal(await c.next(), "got 1024");
      c.ws.close(1000);
      assert.equal((await c.closed).code, 1000);
      await waitFor(
        () => server.hub.stats.webSockets === 0,
        "the tunnel ended",
      );
    }),
});

Deno.test(`[${ENGINE}] a worker that does not read: messages piling up past --max-websocket-message close both sides with 1008`, () => {
  const closes: HubLogRecord[] = [];
  return withHub(
    {
      maxWebSocketMessage: 1024,
      onLog: (r) => void (r.msg === "websocket closed" && closes.push(r)),
    },
    null,
    async ({ server, ws }) => {
      const w = await rawWorker(server);
      const opening = client(`${ws}/ws`);
      await w.write(await accept101(await readUpgrade(w)));
      const c = await opening;
      // More than the socket buffers hold; the worker reads none of it.
      for (let i = 0; i < 64 && c.ws.readyState === WebSocket.OPEN; i++) {
        c.ws.send(new Uint8Array(1 << 20));
        await new Promise((r) => setTimeout(r, 5));
      }
      const ev = await deadline(c.closed, 20_000, "the consumer's close");
      // Deno's client may still be writing a message when the hub's close
      // comes (its send() runs after it has answered the close), and then
      // hears the connection's end as an unclean close instead of the code.
      if (ev.wasClean) assert.equal(ev.code, 1008);
      await waitFor(
        () => server.hub.stats.webSockets === 0,
        "the tunnel ended",
      );
      assert.equal(closes.length, 1);
      assert.equal(closes[0].by, "hub");
      assert.equal(closes[0].code, 1008);
      assert.match(String(closes[0].reason), /worker is not reading/);
      w.conn.close();
    },
  );
});

Deno.test({
  name:
    `[${ENGINE}] a handshake from a TLS consumer shows the handler an https URL, and Deno.upgradeWebSocket still works`,
  ignore: !SERVE,
  fn: () =>
    // The hub trusts the client's X-Forwarded-Proto here, as behind a
    // TLS-terminating proxy.
    withHub({ trustForwarded: true }, (req) => {
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.onopen = () => socket.send(req.url);
      return response;
    }, async ({ server }) => {
      const s = await RawSocket.connect(server.addr.port);
      await s.write(
        "GET /tls?x=1 HTTP/1.1\r\nhost: example.com\r\nconnection: Upgrade\r\n" +
          "upgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
          "sec-websocket-version: 13\r\nx-forwarded-proto: https\r\n\r\n",
      );
      const head = await deadline(s.readHead(), 10_000, "the 101");
      assert.match(head!, /^HTTP\/1\.1 101 /);
      const frame = await s.readExactly(2);
      const url = new TextDecoder().decode(
        await s.readExactly(frame[1] & 0x7f),
      );
      assert.equal(url, "https://example.com/tls?x=1");
      s.conn.close();
      await waitFor(
        () => server.hub.stats.webSockets === 0,
        "the tunnel ended",
      );
    }),
});

Deno.test({
  name:
    `[${ENGINE}] a worker's drain aborts an open WebSocket's request signal, so its handler can close it with 1001`,
  ignore: !SERVE,
  fn: async () => {
    const server = startHub();
    const worker = startWorker(server, (req) => {
      const { socket, response } = Deno.upgradeWebSocket(req);
      req.signal.addEventListener("abort", () => {
        socket.close(
          1001,
          `going away: ${(req.signal.reason as Error).message}`,
        );
      });
      socket.onmessage = (e) => socket.send(e.data);
      return response;
    });
    try {
      await waitFor(() => server.hub.stats.idle === 1, "the worker's slot");
      const c = await client(`ws://127.0.0.1:${server.addr.port}/`);
      c.ws.send("x");
      assert.equal(await c.next(), "x");
      const drained = worker.drain();
      const ev = await deadline(c.closed, 10_000, "the consumer's close");
      assert.equal(ev.code, 1001);
      assert.equal(ev.reason, "going away: Worker is draining");
      // The WebSocket was all the drain waited for.
      await deadline(drained, 10_000, "the drain");
    } finally {
      worker.close();
      await worker.finished;
      await server.shutdown();
    }
  },
});

// A consumer's WebSocket as the bridge sees it, open (its handlers are the
// bridge's to set, the test's to call).
function openFakeSocket(): WebSocket {
  return {
    readyState: WebSocket.OPEN,
    bufferedAmount: 0,
    close() {},
  } as unknown as WebSocket;
}

Deno.test(`[${ENGINE}] a consumer message that comes as the bridge's last write to the worker ends is still written`, async () => {
  // The bridge on fakes: a consumer socket already open, and a worker
  // connection whose writes resolve at once. A second message that comes a
  // few microtasks after the first must not wait in the queue for a third.
  for (let ticks = 0; ticks < 20; ticks++) {
    const written: number[] = [];
    const conn = {
      read: () => new Promise<null>(() => {}),
      write: (p: Uint8Array) => {
        written.push(p[0]);
        return Promise.resolve(p.length);
      },
      close() {},
    };
    const socket = openFakeSocket();
    const bridged = bridgeWebSocket(socket, conn, new BufferedReader(conn), {
      maxMessage: 1024,
      maxBacklog: 1024,
      closeTimeout: 10,
    });
    const message = (data: string) =>
      socket.onmessage!(new MessageEvent("message", { data }));
    message("one");
    for (let i = 0; i < ticks; i++) await Promise.resolve();
    message("two");
    await new Promise((r) => setTimeout(r, 0));
    assert.deepEqual(
      written,
      [0x81, 0x81],
      `second message after ${ticks} ticks`,
    );
    socket.onclose!(new CloseEvent("close", { code: 1000 }));
    await deadline(bridged, 10_000, "the bridge's end");
  }
});

Deno.test(`[${ENGINE}] small consumer messages that wait behind a write to the worker go out together, in order`, async () => {
  // The bridge on fakes: the worker connection's first write is held until
  // released, as a worker that reads slowly holds it. Each message queued
  // behind it was kept and written alone (10 000 writes for 10 000 messages,
  // and several times their bytes in memory).
  const writes: Uint8Array[] = [];
  let release = () => {};
  const held = new Promise<void>((r) => release = r);
  const conn = {
    read: () => new Promise<null>(() => {}),
    write: async (p: Uint8Array) => {
      writes.push(p.slice());
      if (writes.length === 1) await held;
      return p.length;
    },
    close() {},
  };
  const socket = openFakeSocket();
  const bridged = bridgeWebSocket(socket, conn, new BufferedReader(conn), {
    maxMessage: 1 << 20,
    maxBacklog: 1 << 20,
    closeTimeout: 10,
  });
  const count = 10_000;
  for (let i = 0; i < count; i++) {
    socket.onmessage!(new MessageEvent("message", { data: `m${i}` }));
  }
  release();
  await waitFor(() => {
    const n = writes.reduce((t, w) => t + w.length, 0);
    // Each: 2 bytes of head, 4 of mask, the text.
    return n >= count * 6 + textBytes(count);
  }, "every message written");
  assert.ok(writes.length <= 20, `${writes.length} writes`);
  // The frames, unmasked, are the messages in order.
  const all = new Uint8Array(writes.reduce((t, w) => t + w.length, 0));
  let at = 0;
  for (const w of writes) {
    all.set(w, at);
    at += w.length;
  }
  at = 0;
  for (let i = 0; i < count; i++) {
    assert.equal(all[at], 0x81);
    const len = all[at + 1] & 0x7f;
    const mask = all.subarray(at + 2, at + 6);
    const payload = all.subarray(at + 6, at + 6 + len).map((b, j) =>
      b ^ mask[j % 4]
    );
    assert.equal(new TextDecoder().decode(payload), `m${i}`);
    at += 6 + len;
  }
  assert.equal(at, all.length);
  socket.onclose!(new CloseEvent("close", { code: 1000 }));
  await deadline(bridged, 10_000, "the bridge's end");
});

// Bytes of the texts m0 … m(count - 1).
function textBytes(count: number): number {
  let n = 0;
  for (let i = 0; i < count; i++) n += `m${i}`.length;
  return n;
}

Deno.test(`[${ENGINE}] a ping inside a fragmented message near --max-websocket-message is answered, and the message arrives (the limit is a message's, not a control frame's)`, async () => {
  const server = startHub({ maxWebSocketMessage: 1000 });
  try {
    const w = await rawWorker(server);
    const opening = client(`ws://127.0.0.1:${server.addr.port}/ws`);
    await w.write(await accept101(await readUpgrade(w)));
    const c = await opening;
    // 950 bytes of a 1000-byte message, a 100-byte ping, the last 50 bytes.
    await w.write(
      encodeFrame(Op.binary, new Uint8Array(950).fill(1), null, false),
    );
    await w.write(encodeFrame(Op.ping, new Uint8Array(100).fill(9), null));
    await w.write(
      encodeFrame(Op.continuation, new Uint8Array(50).fill(2), null, true),
    );
    const got = await deadline(c.next(), 10_000, "the message");
    assert.equal((got as Uint8Array).length, 1000);
    // The hub's pong: masked, 100 bytes of payload.
    const head = await w.readExactly(2);
    assert.deepEqual([head[0], head[1]], [0x8a, 0x80 | 100]);
    await w.readExactly(104);
    c.ws.close(1000);
    await deadline(c.closed, 10_000, "close");
    w.close();
    await waitFor(() => server.hub.stats.webSockets === 0, "tunnel ended");
  } finally {
    await server.shutdown();
  }
});

Deno.test({
  name:
    `[${ENGINE}] a consumer message of the largest size, then another at once, to a worker that reads: both go through (no 1008 for a frame's head)`,
  ignore: !SERVE,
  async fn() {
    const max = 1 << 20;
    const closes: HubLogRecord[] = [];
    const server = startHub({
      maxWebSocketMessage: max,
      onLog: (r) => void (r.msg === "websocket closed" && closes.push(r)),
    });
    const worker = startWorker(server, (req) => {
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.onmessage = (e) => socket.send(e.data);
      return response;
    });
    try {
      await waitFor(() => server.hub.stats.idle === 1, "slot");
      const c = await client(`ws://127.0.0.1:${server.addr.port}/`);
      const big = new Uint8Array(max).fill(7);
      c.ws.send(big);
      c.ws.send("small");
      assert.deepEqual(await deadline(c.next(), 10_000, "the echo"), big);
      assert.equal(await deadline(c.next(), 10_000, "the second"), "small");
      c.ws.close(1000);
      await deadline(c.closed, 10_000, "close");
      await waitFor(() => server.hub.stats.webSockets === 0, "tunnel ended");
      assert.equal(closes[0]?.code, 1000, JSON.stringify(closes));
    } finally {
      worker.close();
      await worker.finished;
      await server.shutdown();
    }
  },
});

Deno.test(`[${ENGINE}] a second Hub.shutdown() after the grace resolves with the first, once its WebSocket close wait is over`, () =>
  withHub({}, null, async ({ server, ws }) => {
    const w = await rawWorker(server);
    const opening = client(`${ws}/ws`);
    const key = await readUpgrade(w);
    await w.write(new TextEncoder().encode(await accept101(key)));
    const c = await opening;
    await waitFor(() => server.hub.stats.webSockets === 1, "the tunnel open");
    // The grace is over at once; the raw worker never answers the hub's
    // close, so the tunnel is held for the close wait (about a second).
    const order: string[] = [];
    const first = server.hub.shutdown(0).then(() => order.push("first"));
    const second = server.hub.shutdown(0).then(() => order.push("second"));
    await deadline(second, 10_000, "the second shutdown");
    assert.deepEqual(order, ["first", "second"]);
    // A third, after all is done, resolves at once.
    await deadline(server.hub.shutdown(0), 1_000, "a third shutdown");
    await first;
    await deadline(c.closed, 10_000, "the consumer's close");
    w.conn.close();
  }));
