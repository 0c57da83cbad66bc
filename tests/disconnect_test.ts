// End-to-end tests of consumers and workers going away: a real hub
// (serveHub on loopback, port 0), in-process workers (connectWorker), and a
// worker subprocess for a crash. Outcomes are asserted, never durations:
// every wait is a bounded poll or has a hang guard.

import { deadline, waitFor as waitUntil } from "./_wait.ts";
import { startHub, startWorker } from "./_hub.ts";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import type { AccessRecord, HubLogRecord, HubServer } from "../hub.ts";
import type { WorkerHandle } from "../worker.ts";

const HANG_GUARD = 20_000;

const waitFor = (check: () => boolean | Promise<boolean>, what: string) =>
  waitUntil(check, what, HANG_GUARD);
const guard = <T>(promise: Promise<T>, what: string): Promise<T> =>
  deadline(promise, HANG_GUARD, what);
const ROOT = fileURLToPath(new URL("../", import.meta.url));
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function url(server: HubServer, path: string): string {
  return `http://127.0.0.1:${server.addr.port}${path}`;
}

/** A fetch awaited later; its rejection never counts as unhandled. */
function later(input: string, init?: RequestInit): Promise<Response> {
  const p = fetch(input, init);
  p.catch(() => {});
  return p;
}

/** Resolves when `signal` aborts. */
function aborted(signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) =>
    signal.addEventListener("abort", () => resolve(), { once: true })
  );
}

async function stop(
  server: HubServer,
  workers: WorkerHandle[],
  release?: () => void,
): Promise<void> {
  release?.();
  for (const w of workers) w.close();
  await Promise.all(workers.map((w) => w.finished));
  await server.shutdown();
}

Deno.test("hub never sends a queued request to a worker after its consumer left", async () => {
  const server = startHub();
  const seen: string[] = [];
  const holdEntered = Promise.withResolvers<void>();
  const release = Promise.withResolvers<void>();
  let connects = 0;
  const worker = startWorker(server, async (req) => {
    const path = new URL(req.url).pathname;
    seen.push(path);
    if (path === "/hold") {
      holdEntered.resolve();
      await release.promise;
    }
    return new Response(`done ${path}`);
  }, { onConnect: () => connects++ });
  try {
    await waitFor(() => server.hub.stats.idle === 1, "1 idle slot");
    const hold = later(url(server, "/hold"));
    await guard(holdEntered.promise, "/hold reaching the worker");
    const controllers = [0, 1, 2].map(() => new AbortController());
    const queued: Promise<Response>[] = [];
    for (const [i, path] of ["/A", "/B", "/C"].entries()) {
      queued.push(later(url(server, path), { signal: controllers[i].signal }));
      await waitFor(() => server.hub.stats.queued === i + 1, `${path} queued`);
    }

    controllers[1].abort();
    await assert.rejects(queued[1], (e: Error) => e.name === "AbortError");
    await waitFor(
      () => server.hub.stats.abandoned === 1,
      "the hub to notice the consumer left",
    );
    assert.equal(server.hub.stats.queued, 2);

    release.resolve();
    for (const [i, path] of [[0, "/A"], [2, "/C"]] as const) {
      const res = await guard(queued[i], `${path} answer`);
      assert.equal(res.status, 200);
      assert.equal(await res.text(), `done ${path}`);
    }
    const first = await guard(hold, "/hold answer");
    assert.equal(await first.text(), "done /hold");
    assert.deepEqual(seen, ["/hold", "/A", "/C"]);

    await waitFor(() => server.hub.stats.idle === 1, "the slot to be idle");
    const stats = server.hub.stats;
    assert.equal(stats.abandoned, 1);
    assert.equal(stats.slots, 1);
    assert.equal(stats.busy, 0);
    assert.equal(stats.queued, 0);
    // The abandoned request never touched the worker connection.
    assert.equal(connects, 1);
  } finally {
    await stop(server, [worker], () => release.resolve());
  }
});

Deno.test("consumer leaving mid-stream aborts the handler, closes that worker connection, and the worker reconnects", async () => {
  const logs: HubLogRecord[] = [];
  const server = startHub({ onLog: (r) => logs.push(r) });
  const handlerAborted = Promise.withResolvers<void>();
  const padding = encoder.encode(`: ${"x".repeat(16 * 1024)}\n\n`);
  let connects = 0;
  let streams = 0;
  const worker = startWorker(server, (req) => {
    if (new URL(req.url).pathname !== "/events") {
      return new Response("later ok");
    }
    streams++;
    aborted(req.signal).then(() => handlerAborted.resolve());
    let n = 0;
    // An endless event stream: only the consumer leaving ends it.
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        controller.enqueue(
          n++ === 0 ? encoder.encode("data: 0\n\n") : padding.slice(),
        );
      },
    });
    return new Response(body, {
      headers: { "content-type": "text/event-stream" },
    });
  }, { onConnect: () => connects++ });
  try {
    await waitFor(() => server.hub.stats.idle === 1, "1 idle slot");
    assert.equal(connects, 1);
    const consumer = new AbortController();
    const res = await fetch(url(server, "/events"), {
      signal: consumer.signal,
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "text/event-stream");
    const reader = res.body!.getReader();
    const first = await guard(reader.read(), "the first event");
    assert.ok(decoder.decode(first.value).startsWith("data: 0\n\n"));

    consumer.abort();
    await reader.cancel().catch(() => {});

    await guard(handlerAborted.promise, "the handler's signal to abort");
    await waitFor(
      () => connects === 2 && server.hub.stats.idle === 1,
      "the worker to reconnect",
    );
    assert.ok(
      logs.some((r) => r.msg === "worker connection closed"),
      "the hub did not close the worker connection",
    );
    const stats = server.hub.stats;
    assert.equal(stats.slots, 1);
    assert.equal(stats.busy, 0);

    const next = await guard(fetch(url(server, "/next")), "a later request");
    assert.equal(next.status, 200);
    assert.equal(await next.text(), "later ok");
    assert.equal(streams, 1);
  } finally {
    await stop(server, [worker]);
  }
});

Deno.test("consumer leaving before the response head aborts the handler and the slot recovers", async () => {
  const server = startHub();
  const entered = Promise.withResolvers<void>();
  const handlerAborted = Promise.withResolvers<void>();
  let connects = 0;
  const worker = startWorker(server, async (req) => {
    if (new URL(req.url).pathname !== "/slow") {
      return new Response("later ok");
    }
    entered.resolve();
    await aborted(req.signal);
    handlerAborted.resolve();
    return new Response("too late");
  }, { onConnect: () => connects++ });
  try {
    await waitFor(() => server.hub.stats.idle === 1, "1 idle slot");
    const consumer = new AbortController();
    const slow = later(url(server, "/slow"), { signal: consumer.signal });
    await guard(entered.promise, "/slow reaching the worker");
    consumer.abort();
    await assert.rejects(slow, (e: Error) => e.name === "AbortError");

    await guard(handlerAborted.promise, "the handler's signal to abort");
    await waitFor(
      () => connects === 2 && server.hub.stats.idle === 1,
      "the worker to reconnect",
    );
    const stats = server.hub.stats;
    assert.equal(stats.abandoned, 1);
    assert.equal(stats.failed, 0);
    assert.equal(stats.slots, 1);

    const next = await guard(fetch(url(server, "/next")), "a later request");
    assert.equal(next.status, 200);
    assert.equal(await next.text(), "later ok");
  } finally {
    await stop(server, [worker]);
  }
});

Deno.test("consumer leaving aborts a handler that has not read its small request body", async () => {
  const server = startHub();
  const entered = Promise.withResolvers<void>();
  const handlerAborted = Promise.withResolvers<void>();
  const over = Promise.withResolvers<void>(); // lets a failed test end
  const worker = startWorker(server, async (req) => {
    if (new URL(req.url).pathname !== "/slow") return new Response("ok");
    entered.resolve();
    // Never reads the body.
    await Promise.race([aborted(req.signal), over.promise]);
    if (req.signal.aborted) handlerAborted.resolve();
    return new Response("too late");
  });
  try {
    await waitFor(() => server.hub.stats.idle === 1, "1 idle slot");
    const consumer = new AbortController();
    const slow = later(url(server, "/slow"), {
      method: "POST",
      body: "a small body",
      signal: consumer.signal,
    });
    await guard(entered.promise, "/slow reaching the worker");
    consumer.abort();
    await assert.rejects(slow, (e: Error) => e.name === "AbortError");
    await guard(handlerAborted.promise, "the handler's signal to abort");
  } finally {
    over.resolve();
    await stop(server, [worker]);
  }
});

Deno.test("worker process that exits mid-request gives its consumer 502 while other workers keep serving", async () => {
  const server = startHub();
  const holdEntered = Promise.withResolvers<void>();
  const release = Promise.withResolvers<void>();
  const inProcess = startWorker(server, async (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/hold") {
      holdEntered.resolve();
      await release.promise;
    }
    return new Response(`in-process ${req.method} ${path}`);
  });
  let child: Deno.ChildProcess | undefined;
  let stderr: Promise<string> = Promise.resolve("");
  try {
    await waitFor(() => server.hub.stats.idle === 1, "the in-process worker");
    // Keep the in-process worker busy so /crash can only go to the
    // subprocess.
    const hold = later(url(server, "/hold"));
    await guard(holdEntered.promise, "/hold reaching the worker");

    child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-net",
        "--allow-env",
        "--allow-read",
        "worker.ts",
        "--connect",
        `127.0.0.1:${server.workerAddr.port}`,
        "tests/fixtures/crash_handler.ts",
      ],
      cwd: ROOT,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    stderr = new Response(child.stderr).text();
    await waitFor(
      () => server.hub.stats.slots === 2 && server.hub.stats.idle === 1,
      "the subprocess worker to connect",
    ).catch(async (error) => {
      child?.kill("SIGKILL");
      throw new Error(`${error.message}; worker stderr: ${await stderr}`);
    });

    // POST is not idempotent, so the hub must not retry it elsewhere.
    const crash = await guard(
      fetch(url(server, "/crash"), { method: "POST", body: "boom" }),
      "the /crash answer",
    );
    assert.equal(crash.status, 502);
    assert.equal(crash.headers.get("x-pothead-error"), "1");
    await crash.body?.cancel();
    const status = await guard(child.status, "the subprocess to exit");
    assert.equal(status.code, 1);
    assert.equal(server.hub.stats.failed, 1);
    await waitFor(() => server.hub.stats.slots === 1, "the dead slot removed");

    // The request in progress on the other worker is unaffected.
    release.resolve();
    const held = await guard(hold, "/hold answer");
    assert.equal(held.status, 200);
    assert.equal(await held.text(), "in-process GET /hold");
    for (let i = 0; i < 3; i++) {
      const res = await guard(fetch(url(server, `/after${i}`)), "later answer");
      assert.equal(res.status, 200);
      assert.equal(await res.text(), `in-process GET /after${i}`);
    }
    assert.equal(server.hub.stats.failed, 1);
  } finally {
    if (child !== undefined) {
      try {
        child.kill("SIGKILL");
      } catch {
        // already exited
      }
      await child.status;
    }
    await stderr;
    await stop(server, [inProcess], () => release.resolve());
  }
});

Deno.test("a body the worker cuts counts as failed; one the consumer stops reading does not", async () => {
  const { RawSocket } = await import("./_relay.ts");
  const outcomes: string[] = [];
  const logs: HubLogRecord[] = [];
  const server = startHub({
    onAccess: (r) => outcomes.push(r.outcome),
    onLog: (r) => logs.push(r),
  });
  try {
    // The worker dies in the middle of a body.
    const worker = await RawSocket.connect(server.workerAddr.port);
    await waitFor(() => server.hub.stats.idle === 1, "the raw worker idle");
    const res = later(url(server, "/cut"));
    await guard(worker.readHead(), "the request at the worker");
    await worker.write(
      "HTTP/1.1 200 OK\r\ncontent-length: 200000\r\n\r\n" + "a".repeat(1000),
    );
    const reader = (await guard(res, "the head")).body!.getReader();
    await reader.read();
    worker.close();
    await assert.rejects(async () => {
      while (!(await reader.read()).done) { /* drain */ }
    });
    await waitFor(() => outcomes.length === 1, "the access record");
    assert.equal(server.hub.stats.failed, 1);
    const cut = logs.filter((r) => r.msg === "response body cut");
    assert.equal(cut.length, 1);
    assert.equal(cut[0].level, "warn");
    assert.equal(cut[0].bytes, 1000);

    // The consumer leaves in the middle of a body.
    const worker2 = await RawSocket.connect(server.workerAddr.port);
    await waitFor(() => server.hub.stats.idle === 1, "the second raw worker");
    const consumer = await Deno.connect({
      hostname: "127.0.0.1",
      port: server.addr.port,
    });
    await consumer.write(
      encoder.encode("GET /left HTTP/1.1\r\nhost: a\r\n\r\n"),
    );
    await guard(worker2.readHead(), "the second request at the worker");
    await worker2.write(
      "HTTP/1.1 200 OK\r\ncontent-length: 2000000\r\n\r\n" + "b".repeat(100000),
    );
    const buf = new Uint8Array(1024);
    await guard(consumer.read(buf), "the consumer's first bytes");
    consumer.close();
    await waitFor(() => outcomes.length === 2, "the second access record");
    assert.equal(server.hub.stats.failed, 1, `outcomes ${outcomes}`);
    assert.equal(
      logs.filter((r) => r.msg === "response body cut").length,
      1,
      "a consumer that left is not a cut body",
    );
    worker2.close();
  } finally {
    await server.shutdown();
  }
});

Deno.test("a consumer that leaves during its streamed upload counts as abandoned, not as a worker failure", async () => {
  const { RawSocket } = await import("./_relay.ts");
  const outcomes: string[] = [];
  const logs: HubLogRecord[] = [];
  const server = startHub({
    onAccess: (r) => outcomes.push(r.outcome),
    onLog: (r) => logs.push(r),
  });
  const worker = await RawSocket.connect(server.workerAddr.port);
  try {
    await waitFor(() => server.hub.stats.idle === 1, "the raw worker idle");
    const consumer = await RawSocket.connect(server.addr.port);
    await consumer.write(
      "POST /up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n" +
        "5\r\nhello\r\n",
    );
    await guard(worker.readHead(), "the upload's head at the worker");
    await worker.write("HTTP/1.1 100 Continue\r\n\r\n");
    await guard(worker.readExactly(3), "the first body bytes");
    consumer.close(); // gone in the middle of its upload
    await waitFor(() => outcomes.length === 1, "the access record");
    assert.deepEqual(outcomes, ["abandoned"]);
    assert.equal(server.hub.stats.abandoned, 1);
    assert.equal(server.hub.stats.failed, 0);
    assert.ok(
      !logs.some((r) => r.msg === "worker failed"),
      JSON.stringify(logs.map((r) => r.msg)),
    );
  } finally {
    worker.close();
    await server.shutdown();
  }
});

Deno.test("a consumer that leaves while its request is at a worker is recorded with that worker and its real queue time, not as a queue wait", async () => {
  const records: AccessRecord[] = [];
  const server = startHub({ onAccess: (r) => records.push(r) });
  const entered = Promise.withResolvers<string>();
  const worker = startWorker(server, async (req) => {
    // The queue time the hub sent with the request: what the record keeps.
    entered.resolve(req.headers.get("x-pothead-queue-ms") ?? "");
    await aborted(req.signal);
    return new Response("too late");
  });
  try {
    await waitFor(() => server.hub.stats.idle === 1, "1 idle slot");
    const consumer = new AbortController();
    const slow = later(url(server, "/slow"), { signal: consumer.signal });
    const sent = Number(await guard(entered.promise, "the handler"));
    // Long enough at the worker that a queue time counted to the end shows.
    await new Promise((r) => setTimeout(r, 100));
    consumer.abort();
    await assert.rejects(slow, (e: Error) => e.name === "AbortError");
    await waitFor(() => records.length === 1, "the access record");
    const [record] = records;
    assert.equal(record.outcome, "abandoned");
    assert.ok(Math.abs(record.queueMs - sent) < 0.1, `${record.queueMs}`);
    assert.ok(record.workerMs >= 100, `${record.workerMs}`);
    assert.ok(record.worker !== null, "the worker is named");
  } finally {
    await stop(server, [worker]);
  }
});
