// A request the hub sends on a connection right after a keep-alive response
// is never lost: a worker that cannot go on with that connection (it began
// draining while the response streamed, or part of the request body it
// answered is unread) answers it with the "not started" 408, so the hub
// sends it to another worker. Runs with either engine (POTHEAD_ENGINE).

import assert from "node:assert/strict";
import { connectWorker, ENGINE, startHub } from "./_hub.ts";
import { deadline, waitFor } from "./_wait.ts";

const WORKER = { hostname: "127.0.0.1", minBackoff: 10, maxBackoff: 100 };

Deno.test(`[${ENGINE}] a drain during a streamed response loses no request the hub sends right after it`, async () => {
  const server = startHub({ queueTimeout: 10_000 });
  const base = `http://127.0.0.1:${server.addr.port}`;
  const enc = new TextEncoder();
  const { promise: ended, resolve: end } = Promise.withResolvers<void>();
  const handler = (req: Request) => {
    if (new URL(req.url).pathname !== "/slow") return new Response("next");
    let step = 0;
    return new Response(
      new ReadableStream({
        async pull(c) {
          if (step++ === 0) return c.enqueue(enc.encode("a"));
          await ended;
          c.enqueue(enc.encode("b"));
          c.close();
        },
      }),
    );
  };
  const opts = { ...WORKER, port: server.workerAddr.port };
  const first = connectWorker(handler, opts);
  let second: ReturnType<typeof connectWorker> | undefined;
  try {
    await waitFor(() => server.hub.stats.idle === 1, "slot");
    const slow = await fetch(`${base}/slow`);
    const reader = slow.body!.getReader();
    await reader.read(); // the response is streaming
    const post = fetch(`${base}/next`, { method: "POST", body: "x" });
    await waitFor(() => server.hub.stats.queued === 1, "POST queued");
    const drained = first.drain();
    end();
    while (!(await reader.read()).done); // the response ends
    await deadline(drained, 5000, "drain");
    // Another worker takes whatever the hub still has.
    second = connectWorker(handler, opts);
    const res = await deadline(post, 10_000, "POST answered");
    const text = await res.text();
    assert.equal(res.status, 200, text);
    assert.equal(text, "next");
    assert.equal(server.hub.stats.failed, 0);
  } finally {
    end();
    first.close();
    second?.close();
    await first.finished;
    await second?.finished;
    await server.shutdown();
  }
});

for (const how of ["cancel", "partial read"] as const) {
  Deno.test(`[${ENGINE}] a request queued behind one whose handler answers after a ${how} of its body is not lost`, async () => {
    const server = startHub({ queueTimeout: 10_000 });
    const base = `http://127.0.0.1:${server.addr.port}`;
    let entered = false;
    const { promise: go, resolve } = Promise.withResolvers<void>();
    const worker = connectWorker(async (req) => {
      if (new URL(req.url).pathname === "/next") return new Response("next");
      entered = true;
      await go;
      if (how === "cancel") await req.body?.cancel();
      else await req.body!.getReader().read();
      return new Response("first");
    }, { ...WORKER, port: server.workerAddr.port });
    try {
      await waitFor(() => server.hub.stats.idle === 1, "slot");
      const first = fetch(`${base}/first`, { method: "POST", body: "hello" });
      await waitFor(() => entered, "first running");
      const next = fetch(`${base}/next`, { method: "POST", body: "x" });
      await waitFor(() => server.hub.stats.queued === 1, "next queued");
      resolve();
      assert.equal(await (await first).text(), "first");
      const res = await deadline(next, 8000, "next");
      const text = await res.text();
      assert.equal(res.status, 200, text);
      assert.equal(text, "next");
      assert.equal(server.hub.stats.failed, 0);
    } finally {
      resolve();
      worker.close();
      await worker.finished;
      await server.shutdown();
    }
  });
}
