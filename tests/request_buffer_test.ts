// The hub reads a streamed upload ahead while its request waits in the
// queue (`requestBuffer`, `requestSpillDir`): the worker that takes it finds
// the body already there, and a consumer that leaves (or sends too much)
// while it waits is answered without costing a worker. Real hub and worker
// on loopback; the one worker slot is held busy by /hold until the test
// lets it go. Bodies are checked by length and SHA-256; no durations are
// asserted, every wait has a hang guard.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { deadline, waitFor as waitUntil } from "./_wait.ts";
import { startHub, startWorker } from "./_hub.ts";
import { RawSocket } from "./_relay.ts";
import type { AccessRecord, HubServer, ServeHubOptions } from "../hub.ts";
import type { WorkerHandle } from "../worker.ts";

const HANG_GUARD = 30_000;
const CHUNK = 16 * 1024;

const waitFor = (check: () => boolean, what: string) =>
  waitUntil(check, what, HANG_GUARD);

function chunkAt(i: number): Uint8Array {
  const c = new Uint8Array(CHUNK).fill(i & 0xff);
  new DataView(c.buffer).setUint32(0, i);
  return c;
}

function expected(chunks: number): string {
  const hash = createHash("sha256");
  for (let i = 0; i < chunks; i++) hash.update(chunkAt(i));
  return `${chunks * CHUNK} ${hash.digest("hex")}`;
}

interface Setup {
  server: HubServer;
  worker: WorkerHandle;
  /** Paths the worker's handler was called with, in order. */
  seen: string[];
  /** Per path: its framing fields as the handler saw them. */
  framing: Map<string, string>;
  /** Per path: its X-Pothead-Queue-Ms, and performance.now() when seen. */
  queueMs: Map<string, { ms: number; at: number }>;
  /** Lets the request on /hold finish. */
  release: () => void;
  /** Sends GET /hold and waits until the worker has it; then its answer. */
  hold: () => Promise<{ answer: Promise<Response> }>;
  url: (path: string) => string;
  stop: () => Promise<void>;
}

// One worker with one slot: /hold waits for release(); any other request
// is answered with its body's length and SHA-256.
function setup(options: ServeHubOptions): Setup {
  const server = startHub(options);
  const seen: string[] = [];
  const framing = new Map<string, string>();
  const queueMs = new Map<string, { ms: number; at: number }>();
  let released = Promise.withResolvers<void>();
  const worker = startWorker(server, async (req) => {
    const path = new URL(req.url).pathname;
    seen.push(path);
    queueMs.set(path, {
      ms: Number(req.headers.get("x-pothead-queue-ms")),
      at: performance.now(),
    });
    framing.set(
      path,
      ["content-length", "transfer-encoding", "expect"]
        .map((name) => `${name}: ${req.headers.get(name)}`).join(", "),
    );
    if (path === "/hold") {
      await released.promise;
      released = Promise.withResolvers<void>();
      return new Response("held");
    }
    const hash = createHash("sha256");
    let bytes = 0;
    for await (const chunk of req.body ?? []) {
      bytes += chunk.length;
      hash.update(chunk);
    }
    return new Response(`${bytes} ${hash.digest("hex")}`);
  });
  const url = (path: string) => `http://127.0.0.1:${server.addr.port}${path}`;
  return {
    server,
    worker,
    seen,
    framing,
    queueMs,
    release: () => released.resolve(),
    hold: async () => {
      await waitFor(() => server.hub.stats.idle === 1, "the worker's slot");
      const answer = fetch(url("/hold"));
      await waitFor(() => seen.includes("/hold"), "/hold at the worker");
      return { answer };
    },
    url,
    stop: async () => {
      worker.close();
      await worker.finished;
      await server.shutdown();
    },
  };
}

// The end of a test whose upload was answered while /hold ran: what was
// read ahead is given back, and no worker saw the upload.
async function refusedWhileHeld(
  t: Setup,
  held: { answer: Promise<Response> },
): Promise<void> {
  await waitFor(
    () => t.server.hub.stats.requestBuffered === 0,
    "the read-ahead bytes given back",
  );
  t.release();
  await (await held.answer).text();
  assert.deepEqual(t.seen, ["/hold"]);
}

// A chunked upload of `chunks` chunks that the test sends when it likes.
function upload(): {
  body: ReadableStream<Uint8Array>;
  send: (from: number, to: number) => void;
  end: () => void;
} {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    },
  });
  return {
    body,
    send: (from, to) => {
      for (let i = from; i < to; i++) controller.enqueue(chunkAt(i));
    },
    end: () => controller.close(),
  };
}

Deno.test("a streamed upload is read ahead while it waits in the queue and reaches its worker whole", async () => {
  const t = setup({});
  try {
    const held = await t.hold();
    const up = upload();
    const answer = fetch(t.url("/up"), { method: "POST", body: up.body });
    up.send(0, 32); // 512 KiB
    up.end();
    const hub = t.server.hub;
    await waitFor(
      () => hub.stats.requestBuffered === 32 * CHUNK,
      "the whole upload read ahead while queued",
    );
    assert.deepEqual(t.seen, ["/hold"]);
    t.release();
    await (await held.answer).text();
    const res = await deadline(answer, HANG_GUARD, "the upload's answer");
    assert.equal(res.status, 200);
    assert.equal(await res.text(), expected(32));
    assert.equal(hub.stats.requestBuffered, 0);
    // Read whole into memory while it waited: it went as bytes, with its
    // length and without a 100 Continue round trip (the consumer sent it
    // chunked).
    assert.equal(
      t.framing.get("/up"),
      `content-length: ${32 * CHUNK}, transfer-encoding: null, expect: null`,
    );
  } finally {
    t.release();
    await t.stop();
  }
});

Deno.test("a consumer that leaves while its streamed upload waits in the queue never reaches a worker", async () => {
  const t = setup({});
  try {
    const held = await t.hold();
    const conn = await Deno.connect({
      hostname: "127.0.0.1",
      port: t.server.addr.port,
    });
    const head = "POST /gone HTTP/1.1\r\nhost: hub\r\n" +
      "transfer-encoding: chunked\r\n\r\n";
    const chunk = chunkAt(0);
    await conn.write(new TextEncoder().encode(head));
    await conn.write(new TextEncoder().encode(`${CHUNK.toString(16)}\r\n`));
    await conn.write(chunk);
    await conn.write(new TextEncoder().encode("\r\n"));
    const hub = t.server.hub;
    await waitFor(
      () => hub.stats.queued === 1 && hub.stats.requestBuffered === CHUNK,
      "the upload queued and its first chunk read",
    );
    conn.close(); // gone, its upload unfinished
    await waitFor(
      () => hub.stats.abandoned === 1 && hub.stats.queued === 0,
      "the upload counted as abandoned while the worker is still busy",
    );
    assert.equal(hub.stats.requestBuffered, 0);
    t.release();
    await (await held.answer).text();
    const after = await fetch(t.url("/after"), {
      method: "POST",
      body: "x",
    });
    assert.equal(after.status, 200);
    await after.text();
    assert.deepEqual(t.seen, ["/hold", "/after"]);
  } finally {
    t.release();
    await t.stop();
  }
});

Deno.test("upload read-ahead stops at requestBuffer and at requestBufferTotal, and goes on once a worker takes the upload", async () => {
  for (
    const [options, most] of [
      // Each of two uploads may read one chunk past its limit (Deno's
      // chunks are up to 64 KiB); without the limits both would hold 1 MiB.
      [{ requestBuffer: 64 * 1024 }, 2 * (64 * 1024 + 64 * 1024)],
      [{ requestBufferTotal: 96 * 1024 }, 96 * 1024 + 2 * 64 * 1024],
    ] as const
  ) {
    const t = setup(options);
    try {
      const held = await t.hold();
      const ups = [upload(), upload()];
      const answers = ups.map((up) =>
        fetch(t.url("/up"), { method: "POST", body: up.body })
      );
      for (const up of ups) up.send(0, 64); // 1 MiB each
      const hub = t.server.hub;
      await waitFor(
        () => hub.stats.queued === 2 && hub.stats.requestBuffered >= 64 * 1024,
        "uploads read ahead up to the limit",
      );
      // Had the reading not stopped, it would go on to 2 MiB meanwhile.
      await new Promise((r) => setTimeout(r, 300));
      const held1 = hub.stats.requestBuffered;
      assert.ok(
        held1 <= most,
        `${
          JSON.stringify(options)
        }: ${held1} bytes held, at most ${most} expected`,
      );
      for (const up of ups) up.end();
      t.release();
      await (await held.answer).text();
      for (const answer of answers) {
        const res = await deadline(answer, HANG_GUARD, "an upload's answer");
        assert.equal(await res.text(), expected(64));
      }
      assert.equal(hub.stats.requestBuffered, 0);
    } finally {
      t.release();
      await t.stop();
    }
  }
});

Deno.test("a queued upload goes on into a spill file past its requestBuffer (requestSpillDir), and nothing is left there", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pothead-upload-spill-" });
  const t = setup({ requestBuffer: 64 * 1024, requestSpillDir: dir });
  try {
    const held = await t.hold();
    const up = upload();
    const answer = fetch(t.url("/up"), { method: "POST", body: up.body });
    up.send(0, 128); // 2 MiB
    up.end();
    const hub = t.server.hub;
    await waitFor(
      () =>
        hub.stats.requestBuffered + hub.stats.requestSpilled === 128 * CHUNK,
      "the whole upload read ahead, in memory and on disk",
    );
    assert.ok(hub.stats.requestSpilled >= 128 * CHUNK - 64 * 1024 - CHUNK);
    const files = [];
    for await (const entry of Deno.readDir(dir)) files.push(entry.name);
    assert.deepEqual(files, [], "spill files are unlinked when opened");
    t.release();
    await (await held.answer).text();
    const res = await deadline(answer, HANG_GUARD, "the upload's answer");
    assert.equal(await res.text(), expected(128));
    assert.equal(hub.stats.requestBuffered, 0);
    assert.equal(hub.stats.requestSpilled, 0);
  } finally {
    t.release();
    await t.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a queued upload that grows past maxRequestBodySize gets its 413 while it waits, and no worker sees it", async () => {
  const t = setup({ maxRequestBodySize: 100 * 1024 });
  try {
    const held = await t.hold();
    const up = upload();
    const answer = fetch(t.url("/big"), { method: "POST", body: up.body });
    up.send(0, 16); // 256 KiB
    const res = await deadline(answer, HANG_GUARD, "the 413");
    assert.equal(res.status, 413);
    assert.match(await res.text(), /larger than the limit of 102400 bytes/);
    up.end();
    assert.equal(t.server.hub.stats.queued, 0);
    await refusedWhileHeld(t, held);
  } finally {
    t.release();
    await t.stop();
  }
});

Deno.test("a queued upload that times out in the queue gives back what was read ahead", async () => {
  const t = setup({ queueTimeout: 300 });
  try {
    const held = await t.hold();
    const up = upload();
    const answer = fetch(t.url("/late"), { method: "POST", body: up.body });
    up.send(0, 8);
    const res = await deadline(answer, HANG_GUARD, "the 503");
    assert.equal(res.status, 503);
    await res.body?.cancel();
    up.end();
    await refusedWhileHeld(t, held);
  } finally {
    t.release();
    await t.stop();
  }
});

// bufferUploads: the upload is read before its request queues.

// A raw consumer connection sending a chunked upload of /path by hand.
async function rawUpload(server: HubServer, path: string) {
  const conn = await Deno.connect({
    hostname: "127.0.0.1",
    port: server.addr.port,
  });
  const enc = new TextEncoder();
  await conn.write(
    enc.encode(
      `POST ${path} HTTP/1.1\r\nhost: hub\r\ntransfer-encoding: chunked\r\n\r\n`,
    ),
  );
  const write = async (bytes: Uint8Array) => {
    let at = 0;
    while (at < bytes.length) at += await conn.write(bytes.subarray(at));
  };
  return {
    conn,
    send: async (from: number, to: number) => {
      for (let i = from; i < to; i++) {
        await write(enc.encode(`${CHUNK.toString(16)}\r\n`));
        await write(chunkAt(i));
        await write(enc.encode("\r\n"));
      }
    },
    end: () => write(enc.encode("0\r\n\r\n")),
    // The whole answer, up to the close (the hub answers after the end).
    answer: async () => {
      const parts: Uint8Array[] = [];
      const buf = new Uint8Array(64 * 1024);
      while (true) {
        const n = await conn.read(buf);
        if (n === null) break;
        parts.push(buf.slice(0, n));
        const text = new TextDecoder().decode(
          new Uint8Array(parts.flatMap((p) => [...p])),
        );
        const [head, body] = text.split("\r\n\r\n");
        const length = /content-length: (\d+)/i.exec(head ?? "")?.[1];
        if (length !== undefined && (body ?? "").length >= Number(length)) {
          return { head, body: body.slice(0, Number(length)) };
        }
      }
      throw new Error("connection closed before a whole answer");
    },
  };
}

Deno.test("bufferUploads: an upload is read whole before its request queues, even with a worker idle", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pothead-upload-spill-" });
  const t = setup({
    bufferUploads: true,
    requestBuffer: 64 * 1024,
    requestSpillDir: dir,
  });
  try {
    await waitFor(() => t.server.hub.stats.idle === 1, "the worker's slot");
    const up = await rawUpload(t.server, "/up");
    await up.send(0, 32); // 512 KiB
    const hub = t.server.hub;
    await waitFor(
      () => hub.stats.requestBuffered + hub.stats.requestSpilled === 32 * CHUNK,
      "the upload so far read ahead",
    );
    // Still arriving: no worker has it, though one is idle.
    assert.deepEqual(t.seen, []);
    assert.equal(hub.stats.idle, 1);
    await up.send(32, 64);
    await up.end();
    const { head, body } = await deadline(
      up.answer(),
      HANG_GUARD,
      "the upload's answer",
    );
    up.conn.close();
    assert.match(head, /^HTTP\/1\.1 200/);
    assert.equal(body, expected(64));
    assert.deepEqual(t.seen, ["/up"]);
    assert.equal(hub.stats.requestBuffered + hub.stats.requestSpilled, 0);
  } finally {
    await t.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bufferUploads: an upload larger than the buffer queues once the buffer is full and streams the rest", async () => {
  const t = setup({ bufferUploads: true, requestBuffer: 64 * 1024 });
  try {
    await waitFor(() => t.server.hub.stats.idle === 1, "the worker's slot");
    const up = await rawUpload(t.server, "/up");
    // Well past the buffer (and what the sockets hold): the worker must
    // have taken the request before the upload ends.
    const sending = up.send(0, 64 * 16); // 16 MiB
    await waitFor(() => t.seen.includes("/up"), "the upload at the worker");
    await sending;
    await up.end();
    const { body } = await deadline(
      up.answer(),
      HANG_GUARD,
      "the upload's answer",
    );
    up.conn.close();
    assert.equal(body, expected(64 * 16));
  } finally {
    await t.stop();
  }
});

Deno.test("bufferUploads: a consumer that stalls or leaves while its upload is read is answered, and no worker sees it", async () => {
  const t = setup({ bufferUploads: true, uploadIdleTimeout: 300 });
  try {
    await waitFor(() => t.server.hub.stats.idle === 1, "the worker's slot");
    const stalled = await rawUpload(t.server, "/stalled");
    await stalled.send(0, 2);
    const { head } = await deadline(
      stalled.answer(),
      HANG_GUARD,
      "the 408",
    );
    stalled.conn.close();
    assert.match(head, /^HTTP\/1\.1 408/);
    const gone = await rawUpload(t.server, "/gone");
    await gone.send(0, 2);
    const hub = t.server.hub;
    await waitFor(
      () => hub.stats.requestBuffered === 2 * CHUNK,
      "the upload so far read",
    );
    gone.conn.close();
    await waitFor(() => hub.stats.abandoned === 1, "the upload abandoned");
    await waitFor(
      () => hub.stats.requestBuffered === 0,
      "its bytes given back",
    );
    const res = await fetch(t.url("/after"), { method: "POST", body: "x" });
    assert.equal(res.status, 200);
    await res.text();
    assert.deepEqual(t.seen, ["/after"]);
  } finally {
    await t.stop();
  }
});

Deno.test("bufferUploads: an upload the full queue would refuse gets its 503 before it is read", async () => {
  const t = setup({ bufferUploads: true, maxQueue: 1 });
  try {
    const held = await t.hold();
    const queued = fetch(t.url("/queued"));
    await waitFor(() => t.server.hub.stats.queued === 1, "a request queued");
    const up = await rawUpload(t.server, "/refused");
    await up.send(0, 1); // and no more: the upload stays open
    const { head } = await deadline(up.answer(), HANG_GUARD, "the 503");
    up.conn.close();
    assert.match(head, /^HTTP\/1\.1 503/);
    assert.equal(t.server.hub.stats.requestBuffered, 0);
    t.release();
    await (await held.answer).text();
    await (await queued).text();
    assert.deepEqual(t.seen, ["/hold", "/queued"]);
  } finally {
    t.release();
    await t.stop();
  }
});

// With `worker` (a fake, idle) busy on a GET, an upload to `path` queues
// and `chunks` of it are read ahead; then the worker is freed and takes the
// upload's head (not its body).
async function uploadTaken(
  server: HubServer,
  worker: RawSocket,
  path: string,
  chunks: number,
): Promise<Awaited<ReturnType<typeof rawUpload>>> {
  const hub = server.hub;
  await waitFor(() => hub.stats.idle === 1, "the fake worker idle");
  const held = fetch(`http://127.0.0.1:${server.addr.port}/hold`);
  assert.match((await worker.readHead())!, /^GET \/hold/);
  const up = await rawUpload(server, path);
  await up.send(0, chunks);
  await waitFor(
    () =>
      hub.stats.queued === 1 && hub.stats.requestBuffered === chunks * CHUNK,
    "the upload queued and read ahead",
  );
  await worker.write("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
  await (await held).text();
  const head = (await worker.readHead())!;
  assert.ok(head.startsWith(`POST ${path} `), head);
  return up;
}

// Connects raw fake workers to `server`, each kept in `workers` to close.
function fakeWorker(
  server: HubServer,
  workers: RawSocket[],
): () => Promise<RawSocket> {
  return async () => {
    const w = await RawSocket.connect(server.workerAddr.port);
    workers.push(w);
    return w;
  };
}

Deno.test("an upload read ahead past maxRequestBodySize while a worker had it is answered 413 when that worker declines it, not sent on as bytes", async () => {
  const server = startHub({ maxRequestBodySize: 100 * 1024 });
  const hub = server.hub;
  const workers: RawSocket[] = [];
  const fake = fakeWorker(server, workers);
  try {
    const a = await fake();
    // 64 KiB: under the limit while it waits.
    const up = await uploadTaken(server, a, "/big", 4);
    // The worker has the request and has not asked for its body: the hub
    // goes on reading it ahead, past the limit.
    await up.send(4, 16); // 256 KiB
    await up.end();
    await waitFor(
      () => hub.stats.requestBuffered === 16 * CHUNK,
      "the whole upload read ahead",
    );
    await a.write(
      "HTTP/1.1 408 Request Timeout\r\nx-pothead-not-started: 1\r\n" +
        "connection: close\r\ncontent-length: 0\r\n\r\n",
    );
    const b = await fake();
    // Had the upload gone on, the second worker answers it.
    const reached = b.readHead().then((head) =>
      head !== null &&
      b.write("HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nworker")
    );
    const { head } = await answerOf(up);
    assert.match(head, /^HTTP\/1\.1 413/);
    b.close();
    assert.equal(await reached, false);
    await waitFor(
      () => hub.stats.requestBuffered === 0,
      "the read-ahead bytes given back",
    );
  } finally {
    for (const w of workers) w.close();
    await server.shutdown();
  }
});

// The worker that holds a read-ahead upload when its consumer sends a bad
// chunk-size line: declines it, or asks for its body.
for (const move of ["declines", "asks for its body"] as const) {
  Deno.test(`a malformed chunk read ahead while a worker held the upload is answered 400 when that worker ${move}, not counted as abandoned`, async () => {
    const records: AccessRecord[] = [];
    const server = startHub({ onAccess: (r) => void records.push(r) });
    const hub = server.hub;
    const workers: RawSocket[] = [];
    const fake = fakeWorker(server, workers);
    try {
      const a = await fake();
      const up = await uploadTaken(server, a, "/bad", 2);
      await up.conn.write(new TextEncoder().encode("zz\r\n"));
      let reached: Promise<boolean> = Promise.resolve(false);
      if (move === "declines") {
        // Time for the read-ahead to meet it (nothing shows when; had the
        // decline come first, the queue would answer the same 400).
        await new Promise((r) => setTimeout(r, 300));
        await a.write(
          "HTTP/1.1 408 Request Timeout\r\nx-pothead-not-started: 1\r\n" +
            "connection: close\r\ncontent-length: 0\r\n\r\n",
        );
        // Had the request gone on, the next worker asks for its body.
        const b = await fake();
        reached = b.readHead().then((head) =>
          head !== null && b.write("HTTP/1.1 100 Continue\r\n\r\n")
        );
      } else {
        await a.write("HTTP/1.1 100 Continue\r\n\r\n");
      }
      const { head } = await answerOf(up);
      assert.match(head, /^HTTP\/1\.1 400/);
      for (const w of workers) w.close();
      assert.equal(await reached, false);
      await waitFor(
        () => records.some((r) => r.path === "/bad"),
        "the access record",
      );
      const record = records.find((r) => r.path === "/bad")!;
      assert.equal(record.outcome, "bad-request");
      assert.equal(hub.stats.abandoned, 0);
      await waitFor(
        () => hub.stats.requestBuffered === 0,
        "the read-ahead bytes given back",
      );
    } finally {
      for (const w of workers) w.close();
      await server.shutdown();
    }
  });
}

Deno.test("a malformed chunk its worker's connection meets while the worker reads the upload is answered 400, not counted as abandoned", async () => {
  const t = setup({});
  try {
    await waitFor(() => t.server.hub.stats.idle === 1, "the worker's slot");
    // Sent at once to the idle worker: not read ahead.
    const up = await rawUpload(t.server, "/up");
    await up.send(0, 2);
    await waitFor(() => t.seen.includes("/up"), "the upload at the worker");
    await up.conn.write(new TextEncoder().encode("zz\r\n"));
    const { head } = await answerOf(up);
    assert.match(head, /^HTTP\/1\.1 400/);
    assert.equal(t.server.hub.stats.abandoned, 0);
    // The worker reconnects and serves the next request.
    const res = await fetch(t.url("/after"), { method: "POST", body: "x" });
    assert.equal(res.status, 200);
    await res.text();
  } finally {
    await t.stop();
  }
});

Deno.test("an upload its worker answered without taking gives back what was read ahead while the answer still streams", async () => {
  const server = startHub({});
  const hub = server.hub;
  const worker = await RawSocket.connect(server.workerAddr.port);
  try {
    const up = await uploadTaken(server, worker, "/up", 8);
    // A final answer before asking for the body: the body is never sent,
    // and the answer may stream for as long as it likes.
    await worker.write(
      "HTTP/1.1 403 Forbidden\r\ntransfer-encoding: chunked\r\n\r\n" +
        "2\r\nno\r\n",
    );
    await waitFor(
      () => hub.stats.requestBuffered === 0,
      "the read-ahead bytes given back while the answer streams",
    );
    await worker.write("0\r\n\r\n");
    const buf = new Uint8Array(1024);
    const n = await deadline(up.conn.read(buf), HANG_GUARD, "the answer");
    assert.match(
      new TextDecoder().decode(buf.subarray(0, n!)),
      /^HTTP\/1\.1 403/,
    );
    up.conn.close();
  } finally {
    worker.close();
    await server.shutdown();
  }
});

Deno.test("bufferUploads: requests queue in the order their uploads were read, not the order they arrived", async () => {
  const t = setup({ bufferUploads: true });
  try {
    const held = await t.hold();
    const hub = t.server.hub;
    const first = await rawUpload(t.server, "/first");
    await first.send(0, 2);
    await waitFor(
      () => hub.stats.requestBuffered === 2 * CHUNK,
      "the first upload being read",
    );
    const second = await rawUpload(t.server, "/second");
    await second.send(0, 2);
    await second.end();
    await waitFor(() => hub.stats.queued === 1, "the second upload queued");
    await first.send(2, 4);
    await first.end();
    await waitFor(() => hub.stats.queued === 2, "the first upload queued");
    t.release();
    await (await held.answer).text();
    for (const [up, chunks] of [[second, 2], [first, 4]] as const) {
      const { body } = await deadline(up.answer(), HANG_GUARD, "an answer");
      up.conn.close();
      assert.equal(body, expected(chunks));
    }
    assert.deepEqual(t.seen, ["/hold", "/second", "/first"]);
  } finally {
    t.release();
    await t.stop();
  }
});

Deno.test("bufferUploads: the queue timeout counts from when the upload was read, not from its arrival", async () => {
  const t = setup({ bufferUploads: true, queueTimeout: 2000 });
  try {
    const held = await t.hold();
    const hub = t.server.hub;
    const up = await rawUpload(t.server, "/slow");
    // Longer than the queue timeout to arrive, never idle for long.
    for (let i = 0; i < 25; i++) {
      await up.send(i, i + 1);
      await new Promise((r) => setTimeout(r, 100));
    }
    await up.end();
    await waitFor(
      () => hub.stats.queued === 1 || hub.stats.timedOutQueued > 0,
      "the upload queued",
    );
    t.release();
    await (await held.answer).text();
    const { head, body } = await answerOf(up);
    assert.match(head, /^HTTP\/1\.1 200/);
    assert.equal(body, expected(25));
    assert.equal(hub.stats.timedOutQueued, 0);
  } finally {
    t.release();
    await t.stop();
  }
});

// The answer to a raw upload; its connection is then closed.
async function answerOf(
  up: Awaited<ReturnType<typeof rawUpload>>,
): Promise<{ head: string; body: string }> {
  const answer = await deadline(up.answer(), HANG_GUARD, "the answer");
  up.conn.close();
  return answer;
}

// Sends a chunk of /slow every 100 ms for about 1 s, then its end;
// resolves performance.now() before the first chunk and before the end.
async function trickle(
  up: Awaited<ReturnType<typeof rawUpload>>,
): Promise<{ start: number; end: number }> {
  const start = performance.now();
  for (let i = 0; i < 10; i++) {
    await up.send(i, i + 1);
    await new Promise((r) => setTimeout(r, 100));
  }
  const end = performance.now();
  await up.end();
  return { start, end };
}

Deno.test("bufferUploads: the queue time the worker and the access log see counts from when the upload was read, not from its arrival", async () => {
  for (const bufferUploads of [false, true]) {
    const records = new Map<string, AccessRecord>();
    const t = setup({
      bufferUploads,
      onAccess: (r) => void records.set(r.path, r),
    });
    try {
      const held = await t.hold();
      const hub = t.server.hub;
      const up = await rawUpload(t.server, "/slow");
      // Without bufferUploads it queues on arrival, before its first chunk.
      if (!bufferUploads) {
        await waitFor(() => hub.stats.queued === 1, "the upload queued");
      }
      const { start, end } = await trickle(up);
      await waitFor(() => hub.stats.queued === 1, "the upload queued");
      t.release();
      await (await held.answer).text();
      const { head, body } = await answerOf(up);
      assert.match(head, /^HTTP\/1\.1 200/);
      assert.equal(body, expected(10));
      const seen = t.queueMs.get("/slow")!;
      await waitFor(() => records.has("/slow"), "the access record");
      const logged = records.get("/slow")!.queueMs;
      // Sent on, one decimal, at dispatch, which precedes the handler.
      const bound = seen.at - (bufferUploads ? end : start) + 0.05;
      if (bufferUploads) {
        // Queued no earlier than its end was sent.
        assert.ok(seen.ms <= bound, `${seen.ms} ms queued, at most ${bound}`);
        assert.ok(seen.ms < (end - start) / 2, `${seen.ms} ms queued`);
        assert.ok(logged <= bound, `${logged} ms logged, at most ${bound}`);
      } else {
        // Queued before its first chunk was sent, sent on after the end.
        assert.ok(seen.ms >= end - start, `${seen.ms} ms queued`);
        assert.ok(logged >= end - start, `${logged} ms logged`);
      }
    } finally {
      t.release();
      await t.stop();
    }
  }
});

Deno.test("many uploads at once, fast, slow or left midway, with spilling: every whole one arrives intact and nothing stays held", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pothead-upload-stress-" });
  const size = 1024 * 1024;
  const byteAt = (i: number) => (i * 7 + (i >> 12)) & 0xff;
  const server = startHub({
    requestBuffer: 128 * 1024,
    requestBufferTotal: 512 * 1024,
    requestSpillDir: dir,
    requestSpillMax: 512 * 1024,
    requestSpillTotal: 2 * 1024 * 1024,
    queueTimeout: HANG_GUARD,
  });
  // Two one-slot workers that check every byte they get.
  const workers = [0, 1].map(() =>
    startWorker(server, async (req) => {
      let at = 0;
      let good = true;
      for await (const chunk of req.body!) {
        for (let j = 0; j < chunk.length; j += 997) {
          if (chunk[j] !== byteAt(at + j)) good = false;
        }
        at += chunk.length;
      }
      return new Response(`${at} ${good}`);
    })
  );
  const hub = server.hub;
  try {
    await waitFor(() => hub.stats.idle === 2, "both workers");
    const consumer = async (kind: "fast" | "slow" | "leaves", i: number) => {
      const abort = new AbortController();
      let sent = 0;
      const body = new ReadableStream<Uint8Array>({
        async pull(c) {
          if (kind === "leaves" && sent >= 256 * 1024) {
            abort.abort();
            c.error(new Error("left"));
            return;
          }
          if (sent >= size) return c.close();
          const n = Math.min(64 * 1024, size - sent);
          c.enqueue(new Uint8Array(n).map((_, j) => byteAt(sent + j)));
          sent += n;
          if (kind === "slow") await new Promise((r) => setTimeout(r, 5));
        },
      });
      try {
        const res = await fetch(`http://127.0.0.1:${server.addr.port}/u${i}`, {
          method: "POST",
          body,
          signal: abort.signal,
          // Every fourth with its length, the rest chunked.
          headers: i % 4 === 0 ? { "content-length": String(size) } : {},
        });
        return `${res.status} ${await res.text()}`;
      } catch {
        return kind === "leaves" ? "left" : "failed";
      }
    };
    const kinds = ["fast", "slow", "leaves"] as const;
    const results = await deadline(
      Promise.all(
        Array.from({ length: 24 }, (_, i) => consumer(kinds[i % 3], i)),
      ),
      HANG_GUARD * 2,
      "24 uploads",
    );
    results.forEach((r, i) => {
      assert.equal(
        r,
        kinds[i % 3] === "leaves" ? "left" : `200 ${size} true`,
        `upload ${i} (${kinds[i % 3]})`,
      );
    });
    await waitFor(() => hub.stats.abandoned === 8, "the 8 that left counted");
    await waitFor(
      () => hub.stats.requestBuffered === 0 && hub.stats.requestSpilled === 0,
      "nothing held",
    );
    const files = [];
    for await (const entry of Deno.readDir(dir)) files.push(entry.name);
    assert.deepEqual(files, []);
  } finally {
    for (const w of workers) w.close();
    await Promise.all(workers.map((w) => w.finished));
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});
