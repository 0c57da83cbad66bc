// End-to-end streaming through a real hub (serveHub on loopback, port 0) and
// an in-process worker (connectWorker): large uploads and downloads are
// checked by byte count and SHA-256, and that they stream is shown with
// promises (the producer waits for the far end to see the first bytes, which
// would deadlock if any hop buffered the whole body). No durations are
// asserted; every wait has a hang guard.

import { deadline, waitFor as waitUntil } from "./_wait.ts";
import { startHub, startWorker } from "./_hub.ts";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import type { HubServer } from "../hub.ts";
import type { FetchHandler, WorkerHandle } from "../worker.ts";

const HANG_GUARD = 40_000;

const waitFor = (check: () => boolean | Promise<boolean>, what: string) =>
  waitUntil(check, what, HANG_GUARD);
const guard = <T>(promise: Promise<T>, what: string): Promise<T> =>
  deadline(promise, HANG_GUARD, what);
const CHUNK = 64 * 1024;
const encoder = new TextEncoder();

function url(server: HubServer, path: string): string {
  return `http://127.0.0.1:${server.addr.port}${path}`;
}

async function stop(server: HubServer, worker: WorkerHandle): Promise<void> {
  worker.close();
  await worker.finished;
  await server.shutdown();
}

// Pseudo-random bytes, so a dropped, repeated or reordered chunk changes the
// hash; each chunk also carries its own index.
const BASE = (() => {
  const b = new Uint8Array(CHUNK);
  let x = 0x12345678;
  for (let i = 0; i < b.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
})();

function chunkAt(index: number): Uint8Array {
  const c = BASE.slice();
  new DataView(c.buffer).setUint32(0, index);
  return c;
}

function expectedDigest(chunks: number): string {
  const hash = createHash("sha256");
  for (let i = 0; i < chunks; i++) hash.update(chunkAt(i));
  return hash.digest("hex");
}

/** Counts and hashes a byte stream as it arrives. */
async function measure(
  body: ReadableStream<Uint8Array>,
  onFirst?: () => void,
): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash("sha256");
  let bytes = 0;
  for await (const chunk of body) {
    if (bytes === 0 && chunk.length > 0) onFirst?.();
    bytes += chunk.length;
    hash.update(chunk);
  }
  return { bytes, sha256: hash.digest("hex") };
}

/**
 * A body of `chunks` chunks; producing chunk `stallAt` waits for `until`, so
 * the far end must have seen earlier bytes before the producer can finish.
 */
function produce(
  chunks: number,
  stallAt: number,
  until: Promise<void>,
): ReadableStream<Uint8Array> {
  let i = 0;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (i === stallAt) await until;
      if (i === chunks) {
        controller.close();
        return;
      }
      controller.enqueue(chunkAt(i++));
    },
  }, { highWaterMark: 0 });
}

/** A handler that hashes the request body and answers JSON. */
function hashingHandler(
  firstBytes: PromiseWithResolvers<void>,
): FetchHandler {
  return async (req) => {
    const { bytes, sha256 } = await measure(
      req.body!,
      () => firstBytes.resolve(),
    );
    return Response.json({
      bytes,
      sha256,
      contentLength: req.headers.get("content-length"),
      transferEncoding: req.headers.get("transfer-encoding"),
    });
  };
}

Deno.test("hub streams a 100 MB chunked upload to the worker", async () => {
  const chunks = 1600; // 100 MiB
  const firstBytes = Promise.withResolvers<void>();
  const server = startHub();
  const worker = startWorker(server, hashingHandler(firstBytes));
  try {
    await waitFor(() => server.hub.stats.idle === 1, "1 idle slot");
    // Chunk 32 (2 MiB in) is produced only after the handler has read the
    // first bytes: the upload cannot be buffered whole on the way.
    const body = produce(chunks, 32, firstBytes.promise);
    const res = await guard(
      fetch(url(server, "/upload"), {
        method: "POST",
        body,
        duplex: "half",
      } as RequestInit),
      "the upload answer",
    );
    assert.equal(res.status, 200);
    const got = await res.json();
    assert.equal(got.bytes, chunks * CHUNK);
    assert.equal(got.sha256, expectedDigest(chunks));
    assert.equal(got.contentLength, null);
    assert.equal(server.hub.stats.failed, 0);
  } finally {
    firstBytes.resolve();
    await stop(server, worker);
  }
});

Deno.test("hub streams a 20 MB Content-Length upload to the worker with its length", async () => {
  const chunks = 320; // 20 MiB
  const data = new Uint8Array(chunks * CHUNK);
  for (let i = 0; i < chunks; i++) data.set(chunkAt(i), i * CHUNK);
  const firstBytes = Promise.withResolvers<void>();
  const server = startHub();
  const worker = startWorker(server, hashingHandler(firstBytes));
  try {
    await waitFor(() => server.hub.stats.idle === 1, "1 idle slot");
    const res = await guard(
      fetch(url(server, "/upload"), { method: "PUT", body: data }),
      "the upload answer",
    );
    assert.equal(res.status, 200);
    const got = await res.json();
    assert.equal(got.bytes, data.length);
    assert.equal(got.sha256, expectedDigest(chunks));
    assert.equal(got.contentLength, String(data.length));
    assert.equal(got.transferEncoding, null);
  } finally {
    await stop(server, worker);
  }
});

Deno.test("hub streams a 100 MB response with Content-Length to the consumer", async () => {
  const chunks = 1600; // 100 MiB
  const consumerFirst = Promise.withResolvers<void>();
  const server = startHub();
  const worker = startWorker(
    server,
    () =>
      new Response(produce(chunks, 32, consumerFirst.promise), {
        headers: {
          "content-type": "application/octet-stream",
          "content-length": String(chunks * CHUNK),
        },
      }),
  );
  try {
    await waitFor(() => server.hub.stats.idle === 1, "1 idle slot");
    const res = await guard(fetch(url(server, "/download")), "the head");
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-length"), String(chunks * CHUNK));
    const got = await guard(
      measure(res.body!, () => consumerFirst.resolve()),
      "the whole body",
    );
    assert.equal(got.bytes, chunks * CHUNK);
    assert.equal(got.sha256, expectedDigest(chunks));
    await waitFor(() => server.hub.stats.idle === 1, "the slot to be idle");
    assert.equal(server.hub.stats.failed, 0);
  } finally {
    consumerFirst.resolve();
    await stop(server, worker);
  }
});

Deno.test("hub streams a chunked response of unknown length to the consumer", async () => {
  const chunks = 320; // 20 MiB
  const consumerFirst = Promise.withResolvers<void>();
  const server = startHub();
  const worker = startWorker(
    server,
    () => new Response(produce(chunks, 32, consumerFirst.promise)),
  );
  try {
    await waitFor(() => server.hub.stats.idle === 1, "1 idle slot");
    const res = await guard(fetch(url(server, "/download")), "the head");
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-length"), null);
    const got = await guard(
      measure(res.body!, () => consumerFirst.resolve()),
      "the whole body",
    );
    assert.equal(got.bytes, chunks * CHUNK);
    assert.equal(got.sha256, expectedDigest(chunks));
  } finally {
    consumerFirst.resolve();
    await stop(server, worker);
  }
});

Deno.test("hub delivers each server-sent event before the handler sends the next", async () => {
  const server = startHub();
  const sendSecond = Promise.withResolvers<void>();
  const sendThird = Promise.withResolvers<void>();
  const sent: number[] = [];
  const worker = startWorker(server, () => {
    const body = new ReadableStream<Uint8Array>({
      async start(controller) {
        sent.push(1);
        controller.enqueue(encoder.encode("id: 1\ndata: one\n\n"));
        await sendSecond.promise;
        sent.push(2);
        controller.enqueue(encoder.encode("id: 2\ndata: two\n\n"));
        await sendThird.promise;
        sent.push(3);
        controller.enqueue(encoder.encode("id: 3\ndata: three\n\n"));
        controller.close();
      },
    });
    return new Response(body, {
      headers: {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
      },
    });
  });
  try {
    await waitFor(() => server.hub.stats.idle === 1, "1 idle slot");
    const res = await guard(fetch(url(server, "/events")), "the head");
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "text/event-stream");
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    const until = async (marker: string) => {
      while (!text.includes(marker)) {
        const { done, value } = await guard(reader.read(), `"${marker}"`);
        if (done) throw new Error(`stream ended before "${marker}"`);
        text += value;
      }
    };
    await until("data: one\n\n");
    assert.deepEqual(sent, [1]);
    sendSecond.resolve();
    await until("data: two\n\n");
    assert.deepEqual(sent, [1, 2]);
    sendThird.resolve();
    await until("data: three\n\n");
    const rest = await guard(reader.read(), "the end of the stream");
    assert.equal(rest.done, true);
    assert.equal(
      text,
      "id: 1\ndata: one\n\nid: 2\ndata: two\n\nid: 3\ndata: three\n\n",
    );
  } finally {
    sendSecond.resolve();
    sendThird.resolve();
    await stop(server, worker);
  }
});
