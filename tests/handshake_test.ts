// The PTTH handshake on the worker link: pure tests of the handshake
// functions on heads and bytes, then a real hub (serveHub on loopback) with
// workers that send the handshake (connectWorker, or a raw socket writing
// exact bytes) and plain workers that do not. One test asserts on a duration
// (the bound on a handshake sent slowly), with margins of hundreds of ms.

import assert from "node:assert/strict";
import {
  DEFAULT_LIMITS,
  parseRequestHead,
  parseResponseHead,
  type RequestHead,
} from "../_codec.ts";
import {
  checkToken,
  DEFAULT_POOL,
  encodeHandshake,
  HandshakeError,
  parseHandshake,
  refusal,
  switchingProtocols,
  workerHandshake,
} from "../_handshake.ts";
import { BufferedReader } from "../_io.ts";
import {
  Hub,
  type HubLogRecord,
  type HubServer,
  serveHub,
  type ServeHubOptions,
} from "../hub.ts";
import type { WorkerHandle, WorkerOptions } from "../worker.ts";
import {
  deadline,
  latin1Bytes,
  latin1Text,
  RawSocket,
  waitFor,
} from "./_relay.ts";
import { connectWorker } from "./_hub.ts";
import { PARKED_RESPONSE } from "../_park.ts";

const HANG = 15_000;
const TOKEN_A = "token-alpha-0123456789";
const TOKEN_B = "token-bravo-9876543210";

function head(text: string): RequestHead {
  const bytes = latin1Bytes(text);
  const parsed = parseRequestHead(bytes, 0, bytes.length, DEFAULT_LIMITS);
  assert.ok(parsed !== null, "test head must be complete");
  return parsed.value;
}

function isStatus(status: number) {
  return (error: unknown) => {
    assert.ok(error instanceof HandshakeError, String(error));
    assert.equal(error.status, status);
    return true;
  };
}

const KAZUHO = "GET / HTTP/1.1\r\nHost: hub.example\r\nUpgrade: ptth\r\n" +
  "Connection: Upgrade\r\nALPN: http%2F1.1\r\n";

// ---------------------------------------------------------------------------
// Pure tests: parseHandshake, checkToken, encodeHandshake, refusal

Deno.test("parseHandshake accepts the draft-kazuho form (Upgrade: ptth with ALPN http%2F1.1)", () => {
  assert.deepEqual(parseHandshake(head(KAZUHO + "\r\n")), {
    id: null,
    pool: DEFAULT_POOL,
    labels: {},
    protocol: "ptth",
    ping: false,
    renew: false,
    hold: false,
  });
});

Deno.test("parseHandshake accepts the 2009 form (Upgrade: PTTH/1.0, no ALPN)", () => {
  const h = head(
    "GET / HTTP/1.1\r\nHost: hub\r\nUpgrade: PTTH/1.0\r\n" +
      "Connection: keep-alive, Upgrade\r\n\r\n",
  );
  assert.deepEqual(parseHandshake(h), {
    id: null,
    pool: "default",
    labels: {},
    protocol: "PTTH/1.0",
    ping: false,
    renew: false,
    hold: false,
  });
});

Deno.test("parseHandshake reads worker id, pool and labels", () => {
  const h = head(
    KAZUHO + "Pothead-Worker-Id: gpu-box.1\r\nPothead-Pool: images\r\n" +
      "Pothead-Labels: gpu=a100, zone=eu-1\r\nPothead-Labels: spot\r\n\r\n",
  );
  assert.deepEqual(parseHandshake(h), {
    id: "gpu-box.1",
    pool: "images",
    labels: { gpu: "a100", zone: "eu-1", spot: "" },
    protocol: "ptth",
    ping: false,
    renew: false,
    hold: false,
  });
});

Deno.test("parseHandshake refuses a head without a ptth upgrade with 426", () => {
  assert.throws(
    () => parseHandshake(head("GET / HTTP/1.1\r\nHost: hub\r\n\r\n")),
    isStatus(426),
  );
  assert.throws(
    () =>
      parseHandshake(
        head(
          "GET / HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\n" +
            "Connection: Upgrade\r\n\r\n",
        ),
      ),
    isStatus(426),
  );
});

Deno.test("parseHandshake refuses malformed handshakes with 400", () => {
  const cases = [
    // no Connection: Upgrade
    "GET / HTTP/1.1\r\nHost: hub\r\nUpgrade: ptth\r\nALPN: http%2F1.1\r\n\r\n",
    // HTTP/1.0
    "GET / HTTP/1.0\r\nHost: hub\r\nUpgrade: ptth\r\nConnection: Upgrade\r\n\r\n",
    // a body
    KAZUHO + "Content-Length: 3\r\n\r\n",
    KAZUHO + "Transfer-Encoding: chunked\r\n\r\n",
    // ALPN that does not offer http/1.1
    "GET / HTTP/1.1\r\nHost: hub\r\nUpgrade: ptth\r\nConnection: Upgrade\r\n" +
    "ALPN: h2\r\n\r\n",
    // invalid names
    KAZUHO + "Pothead-Worker-Id: has space\r\n\r\n",
    KAZUHO + "Pothead-Pool: -leading-dash\r\n\r\n",
    KAZUHO + "Pothead-Labels: bad key=1\r\n\r\n",
  ];
  for (const text of cases) {
    assert.throws(() => parseHandshake(head(text)), isStatus(400), text);
  }
});

Deno.test({
  name:
    "parseHandshake refuses a malformed percent-encoded ALPN with a 400 HandshakeError",
  fn: () => {
    assert.throws(
      () =>
        parseHandshake(head(KAZUHO.replace("http%2F1.1", "%E0%A4%A") + "\r\n")),
      isStatus(400),
    );
  },
});

Deno.test("checkToken accepts any configured bearer token and refuses others", async () => {
  const valid = [TOKEN_A, TOKEN_B];
  const withAuth = (v: string) => head(KAZUHO + `Authorization: ${v}\r\n\r\n`);
  assert.equal(await checkToken(withAuth(`Bearer ${TOKEN_A}`), valid), TOKEN_A);
  assert.equal(await checkToken(withAuth(`Bearer ${TOKEN_B}`), valid), TOKEN_B);
  assert.equal(await checkToken(withAuth(`bearer ${TOKEN_B}`), valid), TOKEN_B);
  // It names the token matched (the hub ends connections whose token is
  // withdrawn), listed twice or not.
  assert.equal(
    await checkToken(withAuth(`Bearer ${TOKEN_A}`), [
      TOKEN_B,
      TOKEN_A,
      "another-token",
      TOKEN_A,
    ]),
    TOKEN_A,
  );
  await assert.rejects(checkToken(head(KAZUHO + "\r\n"), valid), isStatus(401));
  await assert.rejects(
    checkToken(withAuth(`Basic ${btoa(`user:${TOKEN_A}`)}`), valid),
    isStatus(401),
  );
  await assert.rejects(
    checkToken(withAuth("Bearer token-alpha-01234567890"), valid),
    isStatus(403),
  );
  await assert.rejects(
    checkToken(withAuth("Bearer token-alpha"), valid),
    isStatus(403),
  );
  await assert.rejects(checkToken(withAuth("Bearer x"), []), isStatus(403));
});

Deno.test("encodeHandshake writes the draft-kazuho form that parseHandshake reads back", async () => {
  const bytes = encodeHandshake({
    host: "hub.example",
    token: TOKEN_A,
    workerId: "w-1",
    pool: "images",
    labels: { gpu: "a100", zone: "eu" },
    ping: true,
    renew: true,
    hold: true,
  });
  assert.equal(
    latin1Text(bytes),
    "GET / HTTP/1.1\r\nhost: hub.example\r\nupgrade: ptth\r\n" +
      "connection: Upgrade\r\nalpn: http%2F1.1\r\n" +
      `authorization: Bearer ${TOKEN_A}\r\npothead-worker-id: w-1\r\n` +
      "pothead-pool: images\r\npothead-labels: gpu=a100, zone=eu\r\n" +
      "pothead-ping: 1\r\npothead-park-renew: 1\r\npothead-hold: 1\r\n\r\n",
  );
  const h = head(latin1Text(bytes));
  assert.deepEqual(parseHandshake(h), {
    id: "w-1",
    pool: "images",
    labels: { gpu: "a100", zone: "eu" },
    protocol: "ptth",
    ping: true,
    renew: true,
    hold: true,
  });
  await checkToken(h, [TOKEN_B, TOKEN_A]);
  // Without a token or declarations only the upgrade fields are sent.
  assert.equal(
    latin1Text(encodeHandshake({ host: "h" })),
    "GET / HTTP/1.1\r\nhost: h\r\nupgrade: ptth\r\nconnection: Upgrade\r\n" +
      "alpn: http%2F1.1\r\n\r\n",
  );
});

Deno.test("switchingProtocols echoes the upgrade token the worker asked for", () => {
  for (const protocol of ["ptth", "PTTH/1.0"]) {
    const bytes = switchingProtocols(protocol);
    const parsed = parseResponseHead(bytes, 0, bytes.length, DEFAULT_LIMITS);
    assert.ok(parsed !== null);
    assert.equal(parsed.used, bytes.length);
    assert.equal(parsed.value.status, 101);
    assert.deepEqual(parsed.value.headers, [
      ["upgrade", protocol],
      ["connection", "Upgrade"],
    ]);
  }
});

Deno.test("switchingProtocols names the hub and its ping interval when given", () => {
  const bytes = switchingProtocols("ptth", {
    pingInterval: 1500,
    hubId: "h-1",
  });
  const parsed = parseResponseHead(bytes, 0, bytes.length, DEFAULT_LIMITS);
  assert.ok(parsed !== null);
  assert.deepEqual(parsed.value.headers, [
    ["upgrade", "ptth"],
    ["connection", "Upgrade"],
    ["pothead-ping-interval", "1500"],
    ["pothead-hub-id", "h-1"],
  ]);
});

// What a worker's handshake makes of the hub's 101 `answer`.
async function answerTo(answer: string) {
  let unread: Uint8Array | null = latin1Bytes(answer);
  const conn = {
    read(p: Uint8Array): Promise<number | null> {
      if (unread === null) return Promise.resolve(null);
      p.set(unread);
      const n = unread.length;
      unread = null;
      return Promise.resolve(n);
    },
    write: (p: Uint8Array) => Promise.resolve(p.length),
    close() {},
  };
  return await workerHandshake(conn, new BufferedReader(conn), { host: "h" });
}

Deno.test("a worker reads the hub's id from the 101, and ignores a malformed one", async () => {
  const up = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: ptth\r\n";
  assert.deepEqual(
    await answerTo(`${up}Pothead-Hub-Id: 3f2a\r\n\r\n`),
    { pingInterval: 0, hubId: "3f2a" },
  );
  // An earlier hub sends none.
  assert.deepEqual(
    await answerTo(`${up}Pothead-Ping-Interval: 30000\r\n\r\n`),
    {
      pingInterval: 30000,
      hubId: undefined,
    },
  );
  for (const bad of ["a b", "x".repeat(129), ""]) {
    const got = await answerTo(`${up}Pothead-Hub-Id: ${bad}\r\n\r\n`);
    assert.equal(got.hubId, undefined, bad);
  }
});

Deno.test("refusal is a complete response that closes the connection", () => {
  const cases: [number, string, [string, string] | null][] = [
    [400, "Bad Request", null],
    [401, "Unauthorized", ["www-authenticate", 'Bearer realm="pothead"']],
    [403, "Forbidden", null],
    [426, "Upgrade Required", ["upgrade", "ptth"]],
  ];
  for (const [status, reason, extra] of cases) {
    const bytes = refusal(new HandshakeError(status, `why ${status}`));
    const parsed = parseResponseHead(bytes, 0, bytes.length, DEFAULT_LIMITS);
    assert.ok(parsed !== null);
    const { value } = parsed;
    assert.equal(value.status, status);
    assert.equal(value.reason, reason);
    const get = (n: string) => value.headers.find(([k]) => k === n)?.[1];
    assert.equal(get("connection"), "close");
    const body = latin1Text(bytes.subarray(parsed.used));
    assert.equal(body, `why ${status}\n`);
    assert.equal(get("content-length"), String(body.length));
    if (extra !== null) assert.equal(get(extra[0]), extra[1]);
    else assert.equal(get("www-authenticate"), undefined);
  }
});

// ---------------------------------------------------------------------------
// A real hub

interface Ctx {
  server: HubServer;
  url: string;
  logs: HubLogRecord[];
  workers: WorkerHandle[];
  raws: RawSocket[];
}

async function withHub(
  options: Partial<ServeHubOptions>,
  fn: (ctx: Ctx) => Promise<void>,
): Promise<void> {
  const logs: HubLogRecord[] = [];
  const server = serveHub({
    hostname: "127.0.0.1",
    port: 0,
    workerPort: 0,
    shutdownGrace: 500,
    queueTimeout: HANG,
    onLog: (r) => logs.push(r),
    ...options,
  });
  const ctx: Ctx = {
    server,
    url: `http://127.0.0.1:${server.addr.port}`,
    logs,
    workers: [],
    raws: [],
  };
  try {
    await deadline(fn(ctx), HANG * 2, "test body");
  } finally {
    for (const r of ctx.raws) r.close();
    for (const w of ctx.workers) w.close();
    await Promise.all(ctx.workers.map((w) => w.finished));
    await server.shutdown();
  }
}

function worker(
  ctx: Ctx,
  options: Parameters<typeof connectWorker>[1] = {},
  name = "w",
): WorkerHandle {
  const w = connectWorker(
    (req) => new Response(`${name} ${new URL(req.url).pathname}`),
    {
      hostname: "127.0.0.1",
      port: ctx.server.workerAddr.port,
      minBackoff: 10,
      maxBackoff: 100,
      ...options,
    },
  );
  ctx.workers.push(w);
  return w;
}

async function raw(ctx: Ctx): Promise<RawSocket> {
  const r = await RawSocket.connect(ctx.server.workerAddr.port);
  ctx.raws.push(r);
  return r;
}

async function get(url: string): Promise<[number, string]> {
  const res = await fetch(url);
  return [res.status, await res.text()];
}

Deno.test("with tokens, a worker presenting a valid token serves requests", async () => {
  await withHub({ workerTokens: [TOKEN_A] }, async (ctx) => {
    worker(ctx, { token: TOKEN_A, workerId: "good-1" }, "good");
    await waitFor(() => ctx.server.hub.stats.idle === 1, "worker attached");
    assert.deepEqual(await get(`${ctx.url}/hello`), [200, "good /hello"]);
    assert.equal(ctx.server.hub.stats.handshakesRefused, 0);
  });
});

Deno.test("with tokens, a wrong token gets 403 and the connection is closed", async () => {
  await withHub({ workerTokens: [TOKEN_A] }, async (ctx) => {
    const r = await raw(ctx);
    await r.write(KAZUHO + "Authorization: Bearer wrong-token-555\r\n\r\n");
    const msg = await r.readMessage();
    assert.ok(msg !== null);
    assert.equal(msg.start, "HTTP/1.1 403 Forbidden");
    assert.equal(
      new TextDecoder().decode(msg.body),
      "Cannot accept worker: invalid token\n",
    );
    assert.equal((await r.readToEnd()).length, 0);
    assert.equal(r.eof, true);
    assert.equal(ctx.server.hub.stats.slots, 0);
    assert.equal(ctx.server.hub.stats.handshakesRefused, 1);
  });
});

Deno.test("with tokens, a handshake without a token gets 401 with WWW-Authenticate", async () => {
  await withHub({ workerTokens: [TOKEN_A] }, async (ctx) => {
    const r = await raw(ctx);
    await r.write(KAZUHO + "\r\n");
    const msg = await r.readMessage();
    assert.ok(msg !== null);
    assert.equal(msg.start, "HTTP/1.1 401 Unauthorized");
    assert.deepEqual(
      msg.headers.find(([n]) => n === "www-authenticate"),
      ["www-authenticate", 'Bearer realm="pothead"'],
    );
    assert.equal((await r.readToEnd()).length, 0);
    assert.equal(ctx.server.hub.stats.handshakesRefused, 1);
  });
});

Deno.test("with tokens, a plain worker is refused after handshakeTimeout and never sees a queued request", async () => {
  await withHub(
    { workerTokens: [TOKEN_A], handshakeTimeout: 200 },
    async (ctx) => {
      // The consumer's request is queued before the plain worker connects,
      // so it is there to be (wrongly) sent the whole time.
      const res = fetch(`${ctx.url}/secret?q=1`, {
        headers: { cookie: "session=s3cr3t-cookie" },
      });
      res.catch(() => {});
      await waitFor(() => ctx.server.hub.stats.queued === 1, "request queued");
      const r = await raw(ctx);
      const msg = await r.readMessage();
      assert.ok(msg !== null);
      assert.equal(msg.start, "HTTP/1.1 401 Unauthorized");
      assert.equal(
        new TextDecoder().decode(msg.body),
        "Cannot accept worker: no handshake\n",
      );
      const rest = await r.readToEnd();
      assert.equal(
        rest.length,
        0,
        `plain worker got more: ${latin1Text(rest)}`,
      );
      assert.equal(ctx.server.hub.stats.handshakesRefused, 1);
      assert.equal(ctx.server.hub.stats.queued, 1);
      // An authenticated worker then serves the request that waited.
      worker(ctx, { token: TOKEN_A }, "good");
      const out = await res;
      assert.equal(out.status, 200);
      assert.equal(await out.text(), "good /secret");
    },
  );
});

Deno.test("with tokens, a handshake sent a byte at a time is refused one handshakeTimeout after the connection came, not one after its first byte", async () => {
  const timeout = 1500;
  const first = 900;
  await withHub(
    { workerTokens: [TOKEN_A], handshakeTimeout: timeout },
    async (ctx) => {
      const start = performance.now();
      const r = await raw(ctx);
      // Its first byte late in the first timeout, then one every 100 ms for
      // longer than two timeouts (the head never ends).
      let stop = false;
      const dribble = (async () => {
        const text = KAZUHO + "X-Pad: " + "a".repeat(100);
        await new Promise((go) => setTimeout(go, first));
        for (let i = 0; i < text.length && !stop; i++) {
          if (!await r.write(text[i])) break;
          await new Promise((go) => setTimeout(go, 100));
        }
      })();
      const msg = await r.readMessage();
      const took = performance.now() - start;
      stop = true;
      await dribble;
      // 408, not 401: the first byte came in time, so the bound is the one
      // on the whole handshake.
      assert.equal(msg?.start, "HTTP/1.1 408 Request Timeout");
      // Timing out from the first byte, as the hub used to, refuses it no
      // sooner than first + timeout (2 400 ms); 600 ms of slack for a slow
      // timer on a loaded machine.
      assert.ok(
        took >= timeout - 50 && took < timeout + 600,
        `refused after ${Math.round(took)} ms`,
      );
      assert.equal(ctx.server.hub.stats.handshakesRefused, 1);
    },
  );
});

Deno.test("with two tokens configured, workers with either one serve (rotation)", async () => {
  await withHub({ workerTokens: [TOKEN_A, TOKEN_B] }, async (ctx) => {
    const entered: string[] = [];
    const release = Promise.withResolvers<void>();
    const both = Promise.withResolvers<void>();
    for (const [id, token] of [["old", TOKEN_A], ["new", TOKEN_B]]) {
      const w = connectWorker(async () => {
        entered.push(id);
        if (entered.length === 2) both.resolve();
        await release.promise;
        return new Response(id);
      }, {
        hostname: "127.0.0.1",
        port: ctx.server.workerAddr.port,
        token,
        workerId: id,
        minBackoff: 10,
        maxBackoff: 100,
      });
      ctx.workers.push(w);
    }
    await waitFor(() => ctx.server.hub.stats.idle === 2, "both attached");
    assert.deepEqual(
      ctx.server.hub.stats.workers.map((w) => w.id).sort(),
      ["new", "old"],
    );
    // Two requests at once: least-loaded dispatch gives one to each.
    const a = fetch(`${ctx.url}/1`);
    const b = fetch(`${ctx.url}/2`);
    await deadline(both.promise, HANG, "both workers entered");
    release.resolve();
    const bodies = [await (await a).text(), await (await b).text()].sort();
    assert.deepEqual(bodies, ["new", "old"]);
    assert.equal(ctx.server.hub.stats.handshakesRefused, 0);
  });
});

Deno.test("hub logs a refused handshake without the token and counts it", async () => {
  await withHub({ workerTokens: [TOKEN_A, TOKEN_B] }, async (ctx) => {
    const wrong = "wrong-secret-token-xyz";
    const errors: string[] = [];
    worker(ctx, {
      token: wrong,
      onError: (e) => errors.push(String(e)),
    });
    await waitFor(
      () => ctx.server.hub.stats.handshakesRefused >= 2,
      "refusals",
    );
    await waitFor(() => errors.length >= 2, "worker errors");
    // The runner names the hub's answer.
    assert.match(
      errors[0],
      /Hub refused the handshake: 403 Forbidden: Cannot accept worker: invalid token/,
    );
    // One address: the first refusal in full, the rest summed up later.
    const refusals = ctx.logs.filter((r) =>
      r.msg === "worker handshake refused"
    );
    assert.ok(refusals.length >= 1);
    for (const r of refusals) {
      assert.equal(r.level, "warn");
      assert.equal(r.status, 403);
      assert.equal(r.reason, "Cannot accept worker: invalid token");
    }
    const text = JSON.stringify(ctx.logs);
    for (const secret of [wrong, TOKEN_A, TOKEN_B]) {
      assert.ok(!text.includes(secret), `log contains ${secret}`);
    }
    assert.equal(ctx.server.hub.stats.slots, 0);
  });
});

Deno.test("refused handshakes from one address are logged in full once, the rest summed up in one line", async () => {
  const attempts = 30;
  let logs: HubLogRecord[] = [];
  let refused = 0;
  const started = performance.now();
  await withHub({ workerTokens: [TOKEN_A] }, async (ctx) => {
    logs = ctx.logs;
    for (let i = 0; i < attempts; i++) {
      const r = await raw(ctx);
      await r.write(KAZUHO + "Authorization: Bearer wrong-token-555\r\n\r\n");
      const msg = await r.readMessage();
      assert.equal(msg?.start, "HTTP/1.1 403 Forbidden");
      await r.readToEnd();
    }
    refused = ctx.server.hub.stats.handshakesRefused;
  });
  // Every refusal counts; shutdown wrote the summary of the window.
  assert.equal(refused, attempts);
  const full = logs.filter((r) => r.msg === "worker handshake refused");
  const summed = logs.filter((r) => r.msg === "more worker handshakes refused");
  assert.equal(full[0].reason, "Cannot accept worker: invalid token");
  assert.match(String(full[0].worker), /^127\.0\.0\.1:[0-9]+$/);
  for (const s of summed) {
    assert.equal(s.worker, "127.0.0.1");
    assert.equal(s.within, "10s");
  }
  const counted = summed.reduce((n, s) => n + (s.count as number), 0);
  assert.equal(full.length + counted, attempts);
  // One line in full per 10 s window (the windows this test spanned).
  const windows = 1 + Math.floor((performance.now() - started) / 10_000);
  assert.ok(full.length <= windows, `${full.length} lines in full`);
  assert.ok(summed.length <= windows, `${summed.length} summaries`);
});

Deno.test("a plain worker at a hub with tokens reports the hub's 401 instead of saying nothing", async () => {
  await withHub(
    { workerTokens: [TOKEN_A], handshakeTimeout: 200 },
    async (ctx) => {
      const errors: string[] = [];
      // No token, id, pool or labels: the runner sends no handshake.
      worker(ctx, { onError: (e) => errors.push(String(e)) });
      await waitFor(
        () => errors.some((e) => e.includes('"HTTP/1.1 401 Unauthorized"')),
        `an error naming the 401 (got ${JSON.stringify(errors)})`,
      );
      assert.equal(ctx.server.hub.stats.slots, 0);
    },
  );
});

Deno.test("hub counts refusals of each kind in stats.handshakesRefused", async () => {
  await withHub(
    { workerTokens: [TOKEN_A], handshakeTimeout: 200 },
    async (ctx) => {
      const attempts = [
        KAZUHO + "\r\n", // 401
        KAZUHO + "Authorization: Bearer nope-nope-nope\r\n\r\n", // 403
        "GET / HTTP/1.1\r\nHost: hub\r\n\r\n", // 426
        null, // plain: no handshake in time
      ];
      const statuses: string[] = [];
      for (const a of attempts) {
        const r = await raw(ctx);
        if (a !== null) await r.write(a);
        const msg = await r.readMessage();
        statuses.push(msg?.start ?? "none");
        await r.readToEnd();
      }
      assert.deepEqual(statuses, [
        "HTTP/1.1 401 Unauthorized",
        "HTTP/1.1 403 Forbidden",
        "HTTP/1.1 426 Upgrade Required",
        "HTTP/1.1 401 Unauthorized",
      ]);
      assert.equal(ctx.server.hub.stats.handshakesRefused, 4);
      assert.equal(ctx.server.hub.stats.slots, 0);
    },
  );
});

Deno.test("without tokens, a plain raw-socket worker (no handshake) serves requests", async () => {
  await withHub({}, async (ctx) => {
    const r = await raw(ctx);
    await waitFor(() => ctx.server.hub.stats.idle === 1, "plain worker idle");
    const res = fetch(`${ctx.url}/plain`);
    const req = await r.readMessage();
    assert.ok(req !== null);
    assert.equal(req.start, "GET /plain HTTP/1.1");
    await r.write("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain");
    const out = await res;
    assert.equal(out.status, 200);
    assert.equal(await out.text(), "plain");
    assert.deepEqual(ctx.server.hub.stats.workers.map((w) => w.id), [
      "addr:127.0.0.1",
    ]);
    assert.equal(ctx.server.hub.stats.handshakesRefused, 0);
  });
});

Deno.test("without tokens, the 2009 handshake (Upgrade: PTTH/1.0) is optional and works", async () => {
  await withHub({}, async (ctx) => {
    const r = await raw(ctx);
    await r.write(
      "GET / HTTP/1.1\r\nHost: hub\r\nUpgrade: PTTH/1.0\r\n" +
        "Connection: Upgrade\r\nPothead-Worker-Id: legacy-7\r\n\r\n",
    );
    const up = await r.readMessage();
    assert.ok(up !== null);
    assert.equal(up.start, "HTTP/1.1 101 Switching Protocols");
    assert.deepEqual(up.headers, [
      ["upgrade", "PTTH/1.0"],
      ["connection", "Upgrade"],
      ["pothead-hub-id", ctx.server.hub.id],
    ]);
    await waitFor(() => ctx.server.hub.stats.idle === 1, "worker idle");
    const res = fetch(`${ctx.url}/after-upgrade`);
    const req = await r.readMessage();
    assert.ok(req !== null);
    assert.equal(req.start, "GET /after-upgrade HTTP/1.1");
    await r.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    const out = await res;
    assert.equal(await out.text(), "ok");
    assert.deepEqual(ctx.server.hub.stats.workers.map((w) => w.id), [
      "legacy-7",
    ]);
  });
});

Deno.test("with tokens, the 2009 handshake form with a valid token is accepted", async () => {
  await withHub({ workerTokens: [TOKEN_B] }, async (ctx) => {
    const r = await raw(ctx);
    await r.write(
      "GET / HTTP/1.1\r\nHost: hub\r\nUpgrade: PTTH/1.0\r\n" +
        `Connection: Upgrade\r\nAuthorization: Bearer ${TOKEN_B}\r\n\r\n`,
    );
    const up = await r.readMessage();
    assert.equal(up?.start, "HTTP/1.1 101 Switching Protocols");
    await waitFor(() => ctx.server.hub.stats.idle === 1, "worker idle");
    assert.equal(ctx.server.hub.stats.handshakesRefused, 0);
  });
});

Deno.test("hub refuses bytes sent after the handshake with 400", async () => {
  await withHub({}, async (ctx) => {
    const r = await raw(ctx);
    await r.write(KAZUHO + "\r\nHTTP/1.1 200 OK\r\n\r\n");
    const msg = await r.readMessage();
    assert.equal(msg?.start, "HTTP/1.1 400 Bad Request");
    await r.readToEnd();
    assert.equal(ctx.server.hub.stats.handshakesRefused, 1);
    assert.equal(ctx.server.hub.stats.slots, 0);
  });
});

Deno.test("without tokens, a worker's handshake declares id, pool and labels shown in stats.workers", async () => {
  await withHub(
    { routes: [{ pool: "images", pathPrefix: "/images/" }] },
    async (ctx) => {
      worker(ctx, {
        workerId: "gpu-1",
        pool: "images",
        labels: { gpu: "a100", zone: "eu" },
        concurrency: 2,
      }, "gpu");
      await waitFor(() => ctx.server.hub.stats.idle === 2, "worker attached");
      assert.deepEqual(ctx.server.hub.stats.workers, [{
        id: "gpu-1",
        pool: "images",
        slots: 2,
        busy: 0,
        labels: { gpu: "a100", zone: "eu" },
      }]);
      assert.deepEqual(await get(`${ctx.url}/images/cat.png`), [
        200,
        "gpu /images/cat.png",
      ]);
    },
  );
});

Deno.test({
  name: "a handshake that stalls mid-head is refused with 408 Request Timeout",
  fn: async () => {
    await withHub(
      { workerTokens: [TOKEN_A], handshakeTimeout: 200 },
      async (ctx) => {
        const r = await raw(ctx);
        await r.write("GET / HTTP/1.1\r\nHost: hub\r\n");
        const msg = await r.readMessage();
        assert.equal(msg?.start, "HTTP/1.1 408 Request Timeout");
        await r.readToEnd();
        assert.equal(ctx.server.hub.stats.handshakesRefused, 1);
      },
    );
  },
});

// The "how" of each "worker connection attached" log record, in order.
function attachedHow(logs: HubLogRecord[]): unknown[] {
  return logs.filter((r) => r.msg === "worker connection attached").map((r) =>
    r.how
  );
}

// Three plain connections from 127.0.0.1, each attached (after the wait)
// and closed again: the hub now knows the address as plain.
async function threePlain(ctx: Ctx): Promise<void> {
  for (let i = 1; i <= 3; i++) {
    const r = await raw(ctx);
    await waitFor(() => attachedHow(ctx.logs).length === i, `plain ${i}`);
    r.close();
  }
  await waitFor(() => ctx.server.hub.stats.slots === 0, "plain slots gone");
}

Deno.test("without tokens, an address whose last three connections proved plain has its next ones taken at once", async () => {
  await withHub({}, async (ctx) => {
    await threePlain(ctx);
    const first = await raw(ctx);
    await waitFor(() => ctx.server.hub.stats.idle === 1, "first known slot");
    const second = await raw(ctx);
    await waitFor(() => ctx.server.hub.stats.idle === 2, "second known slot");
    assert.deepEqual(attachedHow(ctx.logs), [
      "plain, after waiting",
      "plain, after waiting",
      "plain, after waiting",
      "plain, address known",
      "plain, address known",
    ]);
    // The remembered connection is a slot like any other.
    const res = fetch(`${ctx.url}/known`);
    const [a, b] = [first.readMessage(), second.readMessage()];
    const [got, other] = await Promise.race([
      a.then((m) => [m, second] as const),
      b.then((m) => [m, first] as const),
    ]);
    assert.equal(got?.start, "GET /known HTTP/1.1");
    const answering = other === second ? first : second;
    await answering.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    assert.equal(await (await res).text(), "ok");
  });
});

Deno.test("a handshake that crosses the first request on a remembered address is resent, and that address waits again", async () => {
  await withHub({}, async (ctx) => {
    await threePlain(ctx);
    const res = fetch(`${ctx.url}/crossed`);
    await waitFor(() => ctx.server.hub.stats.queued === 1, "request queued");

    // Taken at once, so the queued request goes down it before the worker
    // says anything; the worker, expecting a 101, sends its handshake.
    const crossing = await raw(ctx);
    const sent = await crossing.readMessage(true);
    assert.equal(sent?.start, "GET /crossed HTTP/1.1");
    await crossing.write(
      "GET / HTTP/1.1\r\nHost: hub\r\nUpgrade: PTTH/1.0\r\n" +
        "Connection: Upgrade\r\nPothead-Worker-Id: late-1\r\n\r\n",
    );
    await crossing.readToEnd();
    await waitFor(() => ctx.server.hub.stats.queued === 1, "request resent");

    // The address is no longer taken for plain: this handshake is waited for.
    const next = await raw(ctx);
    await next.write(
      "GET / HTTP/1.1\r\nHost: hub\r\nUpgrade: PTTH/1.0\r\n" +
        "Connection: Upgrade\r\nPothead-Worker-Id: late-1\r\n\r\n",
    );
    assert.equal(
      (await next.readMessage())?.start,
      "HTTP/1.1 101 Switching Protocols",
    );
    const again = await next.readMessage(true);
    assert.equal(again?.start, "GET /crossed HTTP/1.1");
    await next.write("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nonce");
    const out = await res;
    assert.equal(out.status, 200);
    assert.equal(await out.text(), "once");
    assert.equal(ctx.server.hub.stats.failed, 0);
    assert.deepEqual(attachedHow(ctx.logs), [
      "plain, after waiting",
      "plain, after waiting",
      "plain, after waiting",
      "plain, address known",
      "handshake",
    ]);
    // Once an address has sent a handshake, it is never taken at once again.
    const again2 = await raw(ctx);
    await waitFor(() => attachedHow(ctx.logs).length === 6, "a plain again");
    again2.close();
    const last = await raw(ctx);
    await waitFor(() => attachedHow(ctx.logs).length === 7, "another plain");
    last.close();
    assert.deepEqual(attachedHow(ctx.logs).slice(5), [
      "plain, after waiting",
      "plain, after waiting",
    ]);
  });
});

Deno.test("a hub that accepts and never answers the handshake does not keep the worker's close() waiting", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of listener) accepted.push(conn); // and says nothing
  })();
  const worker = connectWorker(() => new Response("never"), {
    hostname: "127.0.0.1",
    port: (listener.addr as Deno.NetAddr).port,
    workerId: "silent-hub-test",
    minBackoff: 10,
    maxBackoff: 100,
  });
  try {
    const until = performance.now() + 10_000;
    while (accepted.length === 0 && performance.now() < until) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(accepted.length, 1, "the worker dialed");
    worker.close();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const finished = await Promise.race([
      worker.finished.then(() => true),
      new Promise<false>((r) => timer = setTimeout(() => r(false), 5_000)),
    ]);
    clearTimeout(timer);
    assert.ok(finished, "close() did not finish while the handshake waited");
  } finally {
    worker.close();
    await deadline(worker.finished, 10_000, "the worker to finish");
    listener.close();
    await accepting.catch(() => {});
    for (const c of accepted) c.close();
  }
});

Deno.test("connectWorker refuses an id, pool or label that hubs would refuse", () => {
  const cases: WorkerOptions[] = [
    { workerId: "has space" },
    { pool: "" },
    { labels: { zone: "a,b" } },
    { labels: { "bad key": "v" } },
  ];
  for (const options of cases) {
    assert.throws(
      () =>
        connectWorker(() => new Response("x"), {
          hostname: "127.0.0.1",
          port: 9,
          ...options,
        }),
      TypeError,
      JSON.stringify(options),
    );
  }
});

// ---------------------------------------------------------------------------
// Rotating tokens without a restart (setWorkerTokens)

const TOKEN_C = "token-charlie-5555555555";

Deno.test("setWorkerTokens: a withdrawn token ends its idle connections at once; the others serve on, and its worker is refused on redial", async () => {
  await withHub({ workerTokens: [TOKEN_A, TOKEN_B] }, async (ctx) => {
    worker(ctx, { token: TOKEN_A, workerId: "old", concurrency: 2 }, "old");
    worker(ctx, { token: TOKEN_B, workerId: "new" }, "new");
    await waitFor(() => ctx.server.hub.stats.idle === 3, "workers attached");
    const refusedBefore = ctx.server.hub.stats.handshakesRefused;
    assert.equal(ctx.server.hub.setWorkerTokens([TOKEN_B, TOKEN_C]), 2);
    await waitFor(() => ctx.server.hub.stats.slots === 1, "old slots ended");
    // The old worker redials with its old token and is refused.
    await waitFor(
      () => ctx.server.hub.stats.handshakesRefused > refusedBefore,
      "old worker refused",
    );
    assert.equal(ctx.server.hub.stats.slots, 1);
    for (let i = 0; i < 3; i++) {
      assert.deepEqual(await get(`${ctx.url}/x${i}`), [200, `new /x${i}`]);
    }
    // A worker with the token just added is taken.
    worker(ctx, { token: TOKEN_C, workerId: "newest" }, "newest");
    await waitFor(() => ctx.server.hub.stats.slots === 2, "newest attached");
    const replaced = ctx.logs.find((r) => r.msg === "worker tokens replaced");
    assert.deepEqual(
      { tokens: replaced?.tokens, ended: replaced?.ended },
      { tokens: 2, ended: 2 },
    );
    // No token in any log record.
    for (const r of ctx.logs) {
      assert.doesNotMatch(JSON.stringify(r), /token-(alpha|bravo|charlie)/);
    }
  });
});

Deno.test("setWorkerTokens: a connection whose token is withdrawn mid-request finishes that request, then ends instead of taking the next", async () => {
  await withHub({ workerTokens: [TOKEN_A, TOKEN_B] }, async (ctx) => {
    const entered = Promise.withResolvers<void>();
    const release = Promise.withResolvers<void>();
    const old = connectWorker(async (req) => {
      entered.resolve();
      await release.promise;
      return new Response(`old ${new URL(req.url).pathname}`);
    }, {
      port: ctx.server.workerAddr.port,
      token: TOKEN_A,
      workerId: "old",
      minBackoff: 10,
      maxBackoff: 100,
    });
    ctx.workers.push(old);
    await waitFor(() => ctx.server.hub.stats.idle === 1, "old attached");
    const job = fetch(`${ctx.url}/job`);
    await deadline(entered.promise, HANG, "job started");
    assert.equal(ctx.server.hub.setWorkerTokens([TOKEN_B]), 1);
    // The next request waits: the old connection is busy, and not reused.
    const next = fetch(`${ctx.url}/next`);
    await waitFor(() => ctx.server.hub.stats.queued === 1, "next queued");
    release.resolve();
    const res = await job;
    assert.deepEqual([res.status, await res.text()], [200, "old /job"]);
    await waitFor(() => ctx.server.hub.stats.slots === 0, "old slot ended");
    worker(ctx, { token: TOKEN_B, workerId: "new" }, "new");
    const later = await next;
    assert.deepEqual([later.status, await later.text()], [200, "new /next"]);
  });
});

Deno.test("a connection added after shutdown is closed, and one closed already (a TLS handshake shutdown ended as it completed) does not throw", async () => {
  const hub = new Hub({});
  await hub.shutdown(0);
  let closes = 0;
  const conn = {
    read: () => Promise.resolve(null),
    write: (p: Uint8Array) => Promise.resolve(p.length),
    close() {
      if (++closes > 1) throw new Deno.errors.BadResource("closed already");
    },
  };
  hub.addWorker(conn, "w");
  assert.equal(closes, 1);
  hub.addWorker(conn, "w");
  assert.equal(closes, 2);
});

Deno.test("shutdown ends worker connections still in their handshake at once, refusing none", async () => {
  await withHub(
    { workerTokens: [TOKEN_A], handshakeTimeout: HANG },
    async (ctx) => {
      const silent = await raw(ctx);
      const half = await raw(ctx);
      await half.write(KAZUHO + `Authorization: Bearer ${TOKEN_A}\r\n`);
      // Let the hub take both from its listener (one still in the backlog
      // is reset when the listener closes: EOF as well).
      await new Promise((go) => setTimeout(go, 200));
      await ctx.server.shutdown();
      // Ended by the shutdown, not by the handshake timeout (HANG): the
      // test's leak check would also see the timer the hub left running.
      for (const r of [silent, half]) {
        const rest = await deadline(r.readToEnd(), HANG / 3, "closed");
        assert.equal(rest.length, 0);
      }
      assert.equal(ctx.server.hub.stats.handshakesRefused, 0);
      assert.deepEqual(
        ctx.logs.filter((r) => r.level === "warn").map((r) => r.msg),
        [],
      );
    },
  );
});

Deno.test("setWorkerTokens: turning tokens on ends plain connections; an empty list or a bad token is refused and changes nothing", async () => {
  await withHub({}, async (ctx) => {
    const plain = await raw(ctx);
    await waitFor(() => ctx.server.hub.stats.idle === 1, "plain attached");
    assert.throws(
      () => ctx.server.hub.setWorkerTokens([]),
      /give at least one/,
    );
    assert.throws(
      () => ctx.server.hub.setWorkerTokens(["short"]),
      /8 or more visible ASCII characters/,
    );
    assert.equal(ctx.server.hub.stats.idle, 1);
    assert.equal(ctx.server.hub.setWorkerTokens([TOKEN_A]), 1);
    assert.equal((await plain.readToEnd()).length, 0);
    assert.equal(plain.eof, true);
    worker(ctx, { token: TOKEN_A, workerId: "w" }, "w");
    await waitFor(() => ctx.server.hub.stats.idle === 1, "worker attached");
    assert.deepEqual(await get(`${ctx.url}/a`), [200, "w /a"]);
  });
});

Deno.test("a worker's token given as a function is asked for each connection: after a rotation it redials with the new one", async () => {
  await withHub({ workerTokens: [TOKEN_A] }, async (ctx) => {
    let current = TOKEN_A;
    const asked: string[] = [];
    const errors: string[] = [];
    worker(ctx, {
      token: () => {
        asked.push(current);
        return current;
      },
      workerId: "w",
      onError: (where, error) => errors.push(`${where}: ${error}`),
    }, "w");
    await waitFor(() => ctx.server.hub.stats.idle === 1, "attached");
    assert.deepEqual(await get(`${ctx.url}/a`), [200, "w /a"]);
    // An invalid token fails that dial, before it reaches a hub.
    current = "no good";
    ctx.server.hub.setWorkerTokens([TOKEN_B]);
    await waitFor(() => errors.length > 0, "a failed dial");
    assert.match(errors[0], /invalid token/);
    assert.doesNotMatch(errors.join("\n"), /no good/);
    current = TOKEN_B;
    assert.deepEqual(await get(`${ctx.url}/b`), [200, "w /b"]);
    assert.equal(asked[0], TOKEN_A);
    assert.equal(asked.at(-1), TOKEN_B);
  });
});

Deno.test("setWorkerTokens: a connection whose token is withdrawn mid-request ends after it even when the worker parks it (after its response, or declining)", async () => {
  await withHub({ workerTokens: [TOKEN_A, TOKEN_B] }, async (ctx) => {
    const hub = ctx.server.hub;
    // A raw worker with token A that has the request for `path`.
    const busyWorker = async (path: string) => {
      const r = await raw(ctx);
      await r.write(
        KAZUHO + `Authorization: Bearer ${TOKEN_A}\r\n` +
          "Pothead-Worker-Id: parker\r\n\r\n",
      );
      const answer = await deadline(r.readHead(), HANG, "the 101");
      assert.ok(answer?.startsWith("HTTP/1.1 101 "), `handshake: ${answer}`);
      await waitFor(() => hub.stats.idle === 1, "attached");
      const res = fetch(`${ctx.url}${path}`);
      const req = await deadline(r.readMessage(), HANG, "the request");
      assert.equal(req?.start, `GET ${path} HTTP/1.1`);
      return { r, res };
    };
    // Parked by its response: the request is answered, the connection ends.
    const first = await busyWorker("/job");
    assert.equal(hub.setWorkerTokens([TOKEN_B]), 1);
    await first.r.write(
      "HTTP/1.1 200 OK\r\nconnection: pothead-park\r\n" +
        "content-length: 4\r\n\r\ndone",
    );
    const res = await first.res;
    assert.deepEqual([res.status, await res.text()], [200, "done"]);
    assert.equal(
      await deadline(first.r.readMessage(), HANG, "the close"),
      null,
      "no wait request on a withdrawn connection",
    );
    await waitFor(() => hub.stats.slots === 0, "the slot ended");
    assert.equal(hub.stats.parked, 0);
    // Parked by declining: the request waits for another worker.
    hub.setWorkerTokens([TOKEN_A, TOKEN_B]);
    const second = await busyWorker("/declined");
    assert.equal(hub.setWorkerTokens([TOKEN_B]), 1);
    await second.r.write(PARKED_RESPONSE);
    assert.equal(
      await deadline(second.r.readMessage(), HANG, "the close"),
      null,
      "no wait request on a withdrawn connection",
    );
    await waitFor(() => hub.stats.slots === 0, "the slot ended");
    assert.equal(hub.stats.parked, 0);
    worker(ctx, { token: TOKEN_B, workerId: "new" }, "new");
    const later = await second.res;
    assert.deepEqual([later.status, await later.text()], [
      200,
      "new /declined",
    ]);
  });
});

Deno.test("setWorkerTokens during a plain connection's late handshake: the handshake is checked against the new tokens when it ends, not cut and counted as refused", async () => {
  await withHub({}, async (ctx) => {
    const r = await raw(ctx);
    await waitFor(() => ctx.server.hub.stats.idle === 1, "plain attached");
    // The handshake starts late (after handshakeWait) and is not whole yet.
    await r.write(KAZUHO);
    await waitFor(() => ctx.server.hub.stats.idle === 0, "late handshake");
    assert.equal(ctx.server.hub.setWorkerTokens([TOKEN_B]), 0);
    await r.write(`Authorization: Bearer ${TOKEN_B}\r\n\r\n`);
    const msg = await r.readMessage();
    assert.equal(msg?.start, "HTTP/1.1 101 Switching Protocols");
    await waitFor(() => ctx.server.hub.stats.idle === 1, "attached again");
    assert.equal(ctx.server.hub.stats.handshakesRefused, 0);
  });
});
