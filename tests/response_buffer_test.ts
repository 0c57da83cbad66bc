// The hub reads a worker's response ahead of a slow consumer
// (`responseBuffer`), so the worker takes its next request before the
// consumer has downloaded the last one. Real hub and worker on loopback; the
// slow consumer is a fetch whose body is not read yet. Bodies are checked by
// length and SHA-256; no durations are asserted, every wait has a hang guard.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { deadline, waitFor as waitUntil } from "./_wait.ts";
import { startHub, startWorker } from "./_hub.ts";
import type { HubServer, ServeHubOptions } from "../hub.ts";
import type { WorkerHandle } from "../worker.ts";

const HANG_GUARD = 30_000;
const CHUNK = 64 * 1024;
// Far more than loopback socket buffers and the HTTP stacks on both ends
// hold for a consumer that does not read (a few MiB).
const CHUNKS = 512; // 32 MiB

const waitFor = (check: () => boolean, what: string) =>
  waitUntil(check, what, HANG_GUARD);

function chunkAt(i: number): Uint8Array {
  const c = new Uint8Array(CHUNK).fill(i & 0xff);
  new DataView(c.buffer).setUint32(0, i);
  return c;
}

function expectedDigest(): string {
  const hash = createHash("sha256");
  for (let i = 0; i < CHUNKS; i++) hash.update(chunkAt(i));
  return hash.digest("hex");
}

async function digest(
  body: ReadableStream<Uint8Array>,
): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash("sha256");
  let bytes = 0;
  for await (const chunk of body) {
    bytes += chunk.length;
    hash.update(chunk);
  }
  return { bytes, sha256: hash.digest("hex") };
}

interface Setup {
  server: HubServer;
  worker: WorkerHandle;
  /** Worker connections opened so far. */
  connects: () => number;
  /** True once the worker's handler has produced all of /big. */
  produced: () => boolean;
  url: (path: string) => string;
  stop: () => Promise<void>;
}

// One worker with one slot: /big is 32 MiB with a Content-Length, anything
// else a short text.
function setup(options: ServeHubOptions): Setup {
  const server = startHub(options);
  let connects = 0;
  let produced = false;
  const worker = startWorker(server, (req) => {
    if (new URL(req.url).pathname !== "/big") return new Response("small");
    let i = 0;
    return new Response(
      new ReadableStream<Uint8Array>({
        pull(controller) {
          if (i === CHUNKS) {
            produced = true;
            controller.close();
          } else {
            controller.enqueue(chunkAt(i++));
          }
        },
      }, { highWaterMark: 0 }),
      { headers: { "content-length": String(CHUNKS * CHUNK) } },
    );
  }, { onConnect: () => connects++ });
  return {
    server,
    worker,
    connects: () => connects,
    produced: () => produced,
    url: (path) => `http://127.0.0.1:${server.addr.port}${path}`,
    stop: async () => {
      worker.close();
      await worker.finished;
      await server.shutdown();
    },
  };
}

Deno.test("a consumer that has not read its large response does not hold the worker (responseBuffer)", async () => {
  const t = setup({ responseBuffer: 64 * 1024 * 1024 });
  let big: Response | undefined;
  try {
    await waitFor(() => t.server.hub.stats.idle === 1, "1 idle slot");
    big = await deadline(fetch(t.url("/big")), HANG_GUARD, "the big head");
    assert.equal(big.status, 200);
    // The one slot is free again while the consumer has read nothing.
    await waitFor(() => t.server.hub.stats.idle === 1, "the slot idle again");
    assert.ok(t.produced(), "the worker produced the whole body");
    const held = t.server.hub.stats.responseBuffered;
    assert.ok(
      held > 0 && held <= CHUNKS * CHUNK,
      `response bytes held: ${held}`,
    );
    const small = await deadline(
      fetch(t.url("/small")),
      HANG_GUARD,
      "a second request while the first is not downloaded",
    );
    assert.equal(await small.text(), "small");
    const got = await deadline(digest(big.body!), HANG_GUARD, "the big body");
    assert.deepEqual(got, {
      bytes: CHUNKS * CHUNK,
      sha256: expectedDigest(),
    });
    assert.equal(t.server.hub.stats.responseBuffered, 0);
    assert.equal(t.server.hub.stats.failed, 0);
  } finally {
    await big?.body?.cancel().catch(() => {});
    await t.stop();
  }
});

Deno.test("response read-ahead stops at responseBufferTotal and at responseBuffer", async () => {
  for (
    const options of [
      { responseBuffer: 64 * 1024 * 1024, responseBufferTotal: 1024 * 1024 },
      { responseBuffer: 1024 * 1024, responseBufferTotal: 64 * 1024 * 1024 },
    ]
  ) {
    const t = setup(options);
    const cap = 1024 * 1024 + 64 * 1024; // one read may start under the cap
    let big: Response | undefined;
    let most = 0;
    try {
      await waitFor(() => t.server.hub.stats.idle === 1, "1 idle slot");
      big = await deadline(fetch(t.url("/big")), HANG_GUARD, "the big head");
      await waitFor(() => {
        most = Math.max(most, t.server.hub.stats.responseBuffered);
        return most >= 1024 * 1024;
      }, "the read-ahead to reach 1 MiB");
      // Let it run on for a while: it must stay under the cap, and the
      // worker stays busy (the rest does not fit).
      for (let i = 0; i < 20; i++) {
        await new Promise((r) => setTimeout(r, 25));
        most = Math.max(most, t.server.hub.stats.responseBuffered);
      }
      assert.ok(most <= cap, `${JSON.stringify(options)}: held ${most}`);
      assert.equal(t.server.hub.stats.busy, 1, "the worker is still sending");
      const got = await deadline(digest(big.body!), HANG_GUARD, "the body");
      assert.deepEqual(got, {
        bytes: CHUNKS * CHUNK,
        sha256: expectedDigest(),
      });
      assert.equal(t.server.hub.stats.responseBuffered, 0);
    } finally {
      await big?.body?.cancel().catch(() => {});
      await t.stop();
    }
  }
});

Deno.test("a consumer that leaves after its response was read ahead costs the worker nothing", async () => {
  const t = setup({ responseBuffer: 64 * 1024 * 1024 });
  try {
    await waitFor(() => t.server.hub.stats.idle === 1, "1 idle slot");
    const big = await deadline(fetch(t.url("/big")), HANG_GUARD, "the head");
    await waitFor(() => t.server.hub.stats.idle === 1, "the slot idle again");
    await big.body!.cancel();
    await waitFor(
      () => t.server.hub.stats.responseBuffered === 0,
      "the held bytes to be dropped",
    );
    const small = await deadline(fetch(t.url("/small")), HANG_GUARD, "next");
    assert.equal(await small.text(), "small");
    assert.equal(t.connects(), 1, "the worker kept its one connection");
    assert.equal(t.server.hub.stats.failed, 0);
  } finally {
    await t.stop();
  }
});

Deno.test("responseBuffer 0 streams at the consumer's pace: the worker waits for the download", async () => {
  const t = setup({ responseBuffer: 0 });
  let big: Response | undefined;
  try {
    await waitFor(() => t.server.hub.stats.idle === 1, "1 idle slot");
    big = await deadline(fetch(t.url("/big")), HANG_GUARD, "the head");
    for (let i = 0; i < 10; i++) {
      await new Promise((r) => setTimeout(r, 25));
      assert.equal(t.server.hub.stats.responseBuffered, 0);
    }
    assert.equal(t.server.hub.stats.busy, 1, "the slot is held");
    const got = await deadline(digest(big.body!), HANG_GUARD, "the body");
    assert.equal(got.bytes, CHUNKS * CHUNK);
    await waitFor(() => t.server.hub.stats.idle === 1, "the slot idle");
  } finally {
    await big?.body?.cancel().catch(() => {});
    await t.stop();
  }
});

Deno.test("a response past the memory buffer goes on to disk (responseSpillDir): the worker is free, nothing is left in the directory", async () => {
  const dir = await Deno.makeTempDir();
  const t = setup({ responseBuffer: 1024 * 1024, responseSpillDir: dir });
  let big: Response | undefined;
  try {
    await waitFor(() => t.server.hub.stats.idle === 1, "1 idle slot");
    big = await deadline(fetch(t.url("/big")), HANG_GUARD, "the big head");
    await waitFor(() => t.server.hub.stats.idle === 1, "the slot idle again");
    const { responseBuffered, responseSpilled } = t.server.hub.stats;
    assert.ok(responseBuffered <= 1024 * 1024 + CHUNK, `${responseBuffered}`);
    assert.ok(responseSpilled > 16 * 1024 * 1024, `${responseSpilled}`);
    assert.deepEqual([...Deno.readDirSync(dir)], [], "the file is unlinked");
    const small = await deadline(fetch(t.url("/small")), HANG_GUARD, "next");
    assert.equal(await small.text(), "small");
    const got = await deadline(digest(big.body!), HANG_GUARD, "the big body");
    assert.deepEqual(got, {
      bytes: CHUNKS * CHUNK,
      sha256: expectedDigest(),
    });
    assert.equal(t.server.hub.stats.responseSpilled, 0);
    assert.equal(t.server.hub.stats.responseBuffered, 0);
  } finally {
    await big?.body?.cancel().catch(() => {});
    await t.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a spill directory that is gone is logged, and the response still arrives whole at the consumer's pace", async () => {
  const dir = await Deno.makeTempDir();
  const logs: { level: string; msg: string }[] = [];
  const t = setup({
    responseBuffer: 1024 * 1024,
    responseSpillDir: dir,
    onLog: (r) => logs.push(r),
  });
  await Deno.remove(dir);
  let big: Response | undefined;
  try {
    await waitFor(() => t.server.hub.stats.idle === 1, "1 idle slot");
    big = await deadline(fetch(t.url("/big")), HANG_GUARD, "the big head");
    await waitFor(
      () => logs.some((r) => r.msg === "cannot spill a response body to disk"),
      "the spill failure logged",
    );
    assert.equal(
      t.server.hub.stats.busy,
      1,
      "the worker waits for the consumer",
    );
    const got = await deadline(digest(big.body!), HANG_GUARD, "the big body");
    assert.equal(got.sha256, expectedDigest());
    assert.equal(t.server.hub.stats.failed, 0);
  } finally {
    await big?.body?.cancel().catch(() => {});
    await t.stop();
  }
});

Deno.test("responseSpillDir must be an existing directory", () => {
  assert.throws(
    () => startHub({ responseSpillDir: "/nonexistent/pothead-spill" }),
    (e: Error) =>
      e instanceof TypeError && /responseSpillDir/.test(e.message) &&
      /nonexistent/.test(e.message),
  );
});

Deno.test("shutdown gives a response read ahead of a slow consumer the rest of the grace to go out", async () => {
  const t = setup({ responseBuffer: 64 * 1024 * 1024, shutdownGrace: 20_000 });
  let big: Response | undefined;
  let stopped = false;
  let stopping: Promise<void> | undefined;
  try {
    await waitFor(() => t.server.hub.stats.idle === 1, "1 idle slot");
    big = await deadline(fetch(t.url("/big")), HANG_GUARD, "the big head");
    await waitFor(() => t.server.hub.stats.idle === 1, "the slot idle again");
    t.worker.close();
    await t.worker.finished;
    stopping = t.server.shutdown().then(() => {
      stopped = true;
    });
    // Longer than the one second serveHub gives the consumer side once
    // the hub has nothing in progress: the download is not over yet.
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(stopped, false, "shutdown waited for the download");
    const got = await deadline(digest(big.body!), HANG_GUARD, "the big body");
    assert.equal(got.sha256, expectedDigest());
    await deadline(stopping, HANG_GUARD, "shutdown after the download");
  } finally {
    await big?.body?.cancel().catch(() => {});
    await stopping;
    await t.server.shutdown();
  }
});

Deno.test("a response still read ahead when shutdown's grace ends is cut, and shutdown resolves with nothing held", async () => {
  const logs: string[] = [];
  const t = setup({
    responseBuffer: 64 * 1024 * 1024,
    shutdownGrace: 1000,
    onLog: (r) => logs.push(`${r.level} ${r.msg} ${r.reason ?? ""}`),
  });
  let big: Response | undefined;
  try {
    await waitFor(() => t.server.hub.stats.idle === 1, "1 idle slot");
    big = await deadline(fetch(t.url("/big")), HANG_GUARD, "the big head");
    await waitFor(() => t.server.hub.stats.idle === 1, "the slot idle again");
    const held = () =>
      t.server.hub.stats.responseBuffered + t.server.hub.stats.responseSpilled;
    assert.ok(held() > 0, "the body is held for its consumer");
    t.worker.close();
    await t.worker.finished;
    // The consumer reads nothing while the hub shuts down.
    await deadline(t.server.shutdown(), HANG_GUARD, "shutdown");
    assert.equal(held(), 0);
    await assert.rejects(
      deadline(digest(big.body!), HANG_GUARD, "the cut body"),
    );
    // Logged by the hub (not a stack trace from Deno on stderr).
    await waitFor(
      () => logs.some((l) => l.startsWith("debug response to a consumer cut")),
      "the cut logged",
    );
    assert.match(
      logs.find((l) => l.includes("response to a consumer cut"))!,
      /hub shut down before the consumer read it/,
    );
  } finally {
    await big?.body?.cancel().catch(() => {});
    await t.server.shutdown();
  }
});

Deno.test("many consumers reading fast, slowly or leaving midway: every body whole, and nothing held after", async () => {
  const dir = await Deno.makeTempDir();
  const size = 1024 * 1024;
  const body = new Uint8Array(size).map((_, i) => (i * 7) & 0xff);
  const server = startHub({
    responseBuffer: 128 * 1024,
    responseBufferTotal: 1024 * 1024,
    responseSpillDir: dir,
    responseSpillMax: 512 * 1024,
  });
  const workers = [0, 1, 2].map(() =>
    startWorker(server, () => new Response(body))
  );
  try {
    await waitFor(() => server.hub.stats.idle === 3, "3 idle slots");
    let whole = 0;
    let left = 0;
    const consumer = async (kind: number) => {
      const res = await fetch(`http://127.0.0.1:${server.addr.port}/`);
      const reader = res.body!.getReader();
      let got = 0;
      while (true) {
        const { done, value } = await reader.read();
        if (done) break;
        for (let j = 0; j < value.length; j += 997) {
          if (value[j] !== ((got + j) * 7 & 0xff)) throw new Error("bad byte");
        }
        got += value.length;
        if (kind === 1) await new Promise((r) => setTimeout(r, 5));
        if (kind === 2 && got > size / 3) {
          await reader.cancel();
          left++;
          return;
        }
      }
      assert.equal(got, size);
      whole++;
    };
    await deadline(
      Promise.all(Array.from({ length: 30 }, (_, i) => consumer(i % 3))),
      HANG_GUARD,
      "30 consumers",
    );
    assert.equal(whole, 20);
    assert.equal(left, 10);
    await waitFor(
      () =>
        server.hub.stats.responseBuffered === 0 &&
        server.hub.stats.responseSpilled === 0,
      "nothing held",
    );
    assert.deepEqual([...Deno.readDirSync(dir)], []);
  } finally {
    for (const w of workers) w.close();
    await Promise.all(workers.map((w) => w.finished));
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});
