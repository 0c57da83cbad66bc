// HTTP/2 consumers through the hub, with real sockets: Deno's fetch on a
// client that speaks only h2 (`http1: false`, so ALPN must pick h2), curl
// `--http2` and nghttp2's `nghttp` as independent clients. Consumers reach
// the hub's Deno.serve over TLS with a private CA (certificates made at test
// time, as in tls_test.ts); workers speak HTTP/1.1 to the hub as always.

import assert from "node:assert/strict";
import {
  type AccessRecord,
  type HubServer,
  serveHub,
  type ServeHubOptions,
} from "../hub.ts";
import type { FetchHandler, WorkerHandle } from "../worker.ts";
import { deadline, pipeBoth, waitFor } from "./_relay.ts";
import { bytes, sha256 } from "./_data.ts";
import {
  haveOpenssl,
  makeCerts,
  type TestCerts,
} from "./fixtures/tls/make_certs.ts";
import { connectWorker } from "./_hub.ts";
import { runTool, type ToolResult } from "./_procs.ts";

const HANG = 20_000;
const CURL = "/usr/bin/curl";
const NGHTTP = "/usr/bin/nghttp";
const MiB = 1024 * 1024;

function have(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

const ignore = !haveOpenssl();
const noCurl = ignore || !have(CURL);
const noNghttp = ignore || !have(NGHTTP);
if (ignore) console.warn("http2_test: openssl not found, tests are skipped");
if (!have(CURL)) console.warn(`http2_test: ${CURL} not found, its tests skip`);
if (!have(NGHTTP)) {
  console.warn(
    `http2_test: ${NGHTTP} not found (Debian's nghttp2-client), its tests skip`,
  );
}

const enc = new TextEncoder();
const dec = new TextDecoder();

let made: Promise<TestCerts & { caFile: string }> | undefined;
/** The test certificates, and the CA in a file for curl (removed at exit). */
function certs(): Promise<TestCerts & { caFile: string }> {
  return made ??= (async () => {
    const c = await makeCerts();
    const dir = Deno.makeTempDirSync({ prefix: "pothead-h2-" });
    const caFile = `${dir}/ca.pem`;
    Deno.writeTextFileSync(caFile, c.ca);
    globalThis.addEventListener("unload", () => {
      Deno.removeSync(dir, { recursive: true });
    });
    return { ...c, caFile };
  })();
}

interface Ctx {
  server: HubServer;
  port: number;
  /** `https://localhost:PORT` + path. */
  url(path: string): string;
  /** A fetch client that speaks only HTTP/2 (closed after the test). */
  client: Deno.HttpClient;
  caFile: string;
  access: AccessRecord[];
  /** Starts an in-process worker (closed after the test). */
  worker(
    handler: FetchHandler,
    options?: { concurrency?: number; pool?: string },
  ): WorkerHandle;
}

async function withH2Hub(
  options: Partial<ServeHubOptions>,
  fn: (ctx: Ctx) => Promise<void>,
): Promise<void> {
  const c = await certs();
  const access: AccessRecord[] = [];
  const server = serveHub({
    hostname: "127.0.0.1",
    port: 0,
    workerPort: 0,
    shutdownGrace: 1000,
    queueTimeout: HANG,
    cert: c.cert,
    key: c.key,
    onAccess: (r) => access.push(r),
    ...options,
  });
  const workers: WorkerHandle[] = [];
  const client = Deno.createHttpClient({
    caCerts: [c.ca],
    http1: false,
    http2: true,
  });
  const port = server.addr.port;
  try {
    await deadline(
      fn({
        server,
        port,
        url: (path) => `https://localhost:${port}${path}`,
        client,
        caFile: c.caFile,
        access,
        worker(handler, o = {}) {
          const w = connectWorker(handler, {
            hostname: "127.0.0.1",
            port: server.workerAddr.port,
            concurrency: o.concurrency ?? 1,
            pool: o.pool,
            minBackoff: 10,
            maxBackoff: 100,
          });
          workers.push(w);
          return w;
        },
      }),
      HANG * 2,
      "test body",
    );
  } finally {
    client.close();
    for (const w of workers) w.close();
    await Promise.all(workers.map((w) => w.finished));
    await server.shutdown();
  }
}

/** Idle slots of one pool. */
function idleIn(server: HubServer, pool = "default"): number {
  return server.hub.stats.pools.find((p) => p.name === pool)?.idle ?? 0;
}

/** A TCP relay in front of the hub that counts the connections it takes. */
function countingRelay(port: number) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open = new Set<Deno.Conn>();
  const pipes = new Set<Promise<void>>();
  let connections = 0;
  const loop = (async () => {
    try {
      for await (const down of listener) {
        connections++;
        open.add(down);
        const up = await Deno.connect({ hostname: "127.0.0.1", port });
        open.add(up);
        const p = pipeBoth(down, up).finally(() => {
          open.delete(down);
          open.delete(up);
          pipes.delete(p);
        });
        pipes.add(p);
      }
    } catch {
      // listener closed
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    get connections() {
      return connections;
    },
    async close() {
      listener.close();
      await loop;
      for (const c of open) {
        try {
          c.close();
        } catch {
          // closed already
        }
      }
      await Promise.all([...pipes]);
    },
  };
}

function run(
  tool: string,
  args: string[],
  stdin?: Uint8Array,
): Promise<ToolResult> {
  return runTool(tool, args, stdin, HANG);
}

/** curl over HTTP/2 only (TLS with ALPN h2), trusting the test CA. */
function curl(
  ctx: Ctx,
  args: string[],
  stdin?: Uint8Array,
): Promise<ToolResult> {
  return run(CURL, [
    "-sS",
    "--max-time",
    "20",
    "--http2",
    "--cacert",
    ctx.caFile,
    ...args,
  ], stdin);
}

/** Status, fields and body of curl `-i` output for one HTTP/2 response. */
function curlResponse(out: Uint8Array): {
  version: string;
  status: number;
  headers: [string, string][];
  body: Uint8Array;
} {
  const text = dec.decode(out);
  const end = text.indexOf("\r\n\r\n");
  assert.ok(end >= 0, `no head in curl output: ${JSON.stringify(text)}`);
  const lines = text.slice(0, end).split("\r\n");
  const [version, status] = lines[0].split(" ");
  const headers = lines.slice(1).map((l): [string, string] => {
    const i = l.indexOf(":");
    return [l.slice(0, i).toLowerCase(), l.slice(i + 1).trim()];
  });
  const headBytes = enc.encode(text.slice(0, end + 4)).length;
  return {
    version,
    status: Number(status),
    headers,
    body: out.slice(headBytes),
  };
}

// ---------------------------------------------------------------------------

Deno.test({
  name:
    "the h2-only fetch client cannot speak HTTP/1.1: it fails against a TLS server offering only http/1.1",
  ignore,
  fn: async () => {
    // What makes every fetch below an HTTP/2 request: the same client
    // refuses a server whose ALPN offers http/1.1 alone.
    const c = await certs();
    const listener = Deno.listenTls({
      hostname: "127.0.0.1",
      port: 0,
      cert: c.cert,
      key: c.key,
      alpnProtocols: ["http/1.1"],
    });
    const served = (async () => {
      try {
        for await (const conn of listener) {
          await conn.handshake().catch(() => {});
          await conn.write(enc.encode(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nh1",
          )).catch(() => {});
          conn.close();
        }
      } catch {
        // listener closed
      }
    })();
    const port = (listener.addr as Deno.NetAddr).port;
    const h2only = Deno.createHttpClient({
      caCerts: [c.ca],
      http1: false,
      http2: true,
    });
    const h1ok = Deno.createHttpClient({ caCerts: [c.ca] });
    try {
      await assert.rejects(
        deadline(
          fetch(`https://localhost:${port}/`, { client: h2only }),
          HANG,
          "h2-only fetch",
        ),
      );
      // The server works for a client that may speak HTTP/1.1.
      const res = await fetch(`https://localhost:${port}/`, { client: h1ok });
      assert.equal(await res.text(), "h1");
    } finally {
      h2only.close();
      h1ok.close();
      listener.close();
      await served;
    }
  },
});

Deno.test({
  name:
    "many requests multiplexed on one h2 connection queue first come first served, each answered on its own stream",
  ignore,
  fn: async () => {
    await withH2Hub({}, async (ctx) => {
      const N = 12;
      const order: number[] = [];
      let inFlight = 0;
      let maxInFlight = 0;
      const go = Promise.withResolvers<void>();
      ctx.worker(async (req) => {
        const id = Number(new URL(req.url).searchParams.get("id"));
        order.push(id);
        maxInFlight = Math.max(maxInFlight, ++inFlight);
        await go.promise;
        inFlight--;
        // Bodies of different lengths, so a response on the wrong stream
        // shows.
        return new Response(`answer ${id} `.repeat(id + 1), {
          headers: { "x-id": String(id) },
        });
      }, { concurrency: 2 });
      await waitFor(() => idleIn(ctx.server) === 2, "two slots attached");
      const relay = countingRelay(ctx.port);
      try {
        const answers: Promise<Response>[] = [];
        for (let id = 0; id < N; id++) {
          answers.push(
            fetch(`https://localhost:${relay.port}/job?id=${id}`, {
              client: ctx.client,
            }),
          );
          // Each request arrives before the next is sent, so the order of
          // arrival is the order of the ids.
          await waitFor(
            () => ctx.server.hub.stats.received === id + 1,
            `request ${id} at the hub`,
          );
        }
        // All twelve in flight at once, two at the worker and ten queued,
        // on a single TCP connection: only HTTP/2 multiplexes so.
        await waitFor(
          () => ctx.server.hub.stats.queued === N - 2 && order.length === 2,
          "ten queued",
        );
        assert.equal(relay.connections, 1);
        go.resolve();
        for (let id = 0; id < N; id++) {
          const res = await deadline(answers[id], HANG, `answer ${id}`);
          assert.equal(res.status, 200);
          assert.equal(res.headers.get("x-id"), String(id));
          assert.equal(await res.text(), `answer ${id} `.repeat(id + 1));
        }
        assert.deepEqual(order, Array.from({ length: N }, (_, i) => i));
        assert.equal(maxInFlight, 2);
        assert.equal(relay.connections, 1);
      } finally {
        await relay.close();
      }
    });
  },
});

Deno.test({
  name:
    "curl --http2 --parallel: one connection, every transfer HTTP/2 and answered right, at most the worker's concurrency at once",
  ignore: noCurl,
  fn: async () => {
    await withH2Hub({}, async (ctx) => {
      let inFlight = 0;
      let maxInFlight = 0;
      let seen = 0;
      ctx.worker(async (req) => {
        seen++;
        maxInFlight = Math.max(maxInFlight, ++inFlight);
        // Long enough that the transfers overlap and queue.
        await new Promise((r) => setTimeout(r, 20));
        inFlight--;
        const id = new URL(req.url).searchParams.get("id")!;
        return new Response(`<${id}>`.repeat(Number(id) + 1));
      }, { concurrency: 2 });
      await waitFor(() => idleIn(ctx.server) === 2, "two slots attached");
      const N = 10;
      const dir = await Deno.makeTempDir({ prefix: "pothead-h2-par-" });
      try {
        const args = [
          "--parallel",
          "--parallel-max",
          String(N),
          "-w",
          "[%{url} %{http_version} %{num_connects} %{response_code}]\n",
        ];
        for (let id = 0; id < N; id++) {
          args.push("-o", `${dir}/${id}`, ctx.url(`/p?id=${id}`));
        }
        const out = await curl(ctx, args);
        assert.equal(out.code, 0, out.stderr);
        const text = dec.decode(out.stdout);
        let connects = 0;
        for (let id = 0; id < N; id++) {
          const m = new RegExp(`\\?id=${id} (\\S+) (\\d+) (\\d+)\\]`).exec(
            text,
          );
          assert.ok(m, `no summary for transfer ${id}: ${text}`);
          assert.equal(m[1], "2");
          assert.equal(m[3], "200");
          connects += Number(m[2]);
          assert.equal(
            await Deno.readTextFile(`${dir}/${id}`),
            `<${id}>`.repeat(id + 1),
          );
        }
        assert.equal(connects, 1, "one connection for all transfers");
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
      assert.equal(seen, N);
      assert.ok(maxInFlight <= 2, `worker saw ${maxInFlight} at once`);
    });
  },
});

Deno.test({
  name:
    "an h2 stream reset while queued never reaches a worker; one reset at the worker aborts the handler's signal; the connection's other streams are unaffected",
  ignore,
  fn: async () => {
    await withH2Hub({}, async (ctx) => {
      const seen: string[] = [];
      const release = Promise.withResolvers<void>();
      const handlerAborted = Promise.withResolvers<void>();
      ctx.worker(async (req) => {
        const path = new URL(req.url).pathname;
        seen.push(path);
        if (path === "/first") await release.promise;
        if (path === "/running") {
          req.signal.addEventListener("abort", () => handlerAborted.resolve());
          await handlerAborted.promise;
        }
        return new Response(`done ${path}`);
      });
      await waitFor(() => idleIn(ctx.server) === 1, "worker attached");
      const relay = countingRelay(ctx.port);
      const on = (path: string, signal?: AbortSignal) =>
        fetch(`https://localhost:${relay.port}${path}`, {
          client: ctx.client,
          signal,
        });
      try {
        const hub = ctx.server.hub;
        const first = on("/first");
        await waitFor(() => seen.includes("/first"), "first at the worker");
        const cancelQueued = new AbortController();
        const queued = on("/queued", cancelQueued.signal);
        queued.catch(() => {});
        await waitFor(() => hub.stats.queued === 1, "one queued");
        const cancelRunning = new AbortController();
        const running = on("/running", cancelRunning.signal);
        running.catch(() => {});
        const after = on("/after");
        await waitFor(() => hub.stats.queued === 3, "three queued");
        // RST_STREAM for a queued stream: it leaves the queue at once.
        cancelQueued.abort();
        await assert.rejects(queued, { name: "AbortError" });
        await waitFor(
          () => hub.stats.abandoned === 1 && hub.stats.queued === 2,
          "queued stream abandoned",
        );
        assert.deepEqual(
          ctx.access.map((r) => [r.path, r.outcome, r.status]),
          [["/queued", "abandoned", 499]],
        );
        release.resolve();
        const res = await deadline(first, HANG, "first answer");
        assert.equal(await res.text(), "done /first");
        // RST_STREAM for a stream at the worker: its handler hears it.
        await waitFor(() => seen.includes("/running"), "running at worker");
        cancelRunning.abort();
        await deadline(handlerAborted.promise, HANG, "handler's abort");
        await assert.rejects(running, { name: "AbortError" });
        const last = await deadline(after, HANG, "the stream after");
        assert.equal(last.status, 200);
        assert.equal(await last.text(), "done /after");
        await waitFor(() => hub.stats.abandoned === 2, "two abandoned");
        assert.deepEqual(seen, ["/first", "/running", "/after"]);
        assert.equal(relay.connections, 1);
        const outcomes = Object.fromEntries(
          ctx.access.map((r) => [r.path, r.outcome]),
        );
        assert.deepEqual(outcomes, {
          "/first": "ok",
          "/queued": "abandoned",
          "/running": "abandoned",
          "/after": "ok",
        });
      } finally {
        await relay.close();
      }
    });
  },
});

Deno.test({
  name:
    "curl --http2 killed while its request is queued: the request leaves the queue and never reaches a worker",
  ignore: noCurl,
  fn: async () => {
    await withH2Hub({}, async (ctx) => {
      const seen: string[] = [];
      const release = Promise.withResolvers<void>();
      ctx.worker(async (req) => {
        const path = new URL(req.url).pathname;
        seen.push(path);
        if (path === "/hold") await release.promise;
        return new Response(path);
      });
      await waitFor(() => idleIn(ctx.server) === 1, "worker attached");
      const hold = fetch(ctx.url("/hold"), { client: ctx.client });
      await waitFor(() => seen.length === 1, "hold at the worker");
      const child = new Deno.Command(CURL, {
        args: ["-sS", "--http2", "--cacert", ctx.caFile, ctx.url("/gone")],
        stdout: "null",
        stderr: "null",
      }).spawn();
      await waitFor(() => ctx.server.hub.stats.queued === 1, "curl queued");
      child.kill("SIGKILL");
      await child.status;
      await waitFor(
        () => ctx.server.hub.stats.abandoned === 1,
        "killed curl abandoned",
      );
      assert.equal(ctx.server.hub.stats.queued, 0);
      release.resolve();
      assert.equal(await (await hold).text(), "/hold");
      const again = await fetch(ctx.url("/next"), { client: ctx.client });
      assert.equal(await again.text(), "/next");
      assert.deepEqual(seen, ["/hold", "/next"]);
      assert.equal(
        ctx.access.find((r) => r.path === "/gone")?.outcome,
        "abandoned",
      );
    });
  },
});

/** A worker that hashes uploads and streams downloads of `size` bytes. */
const bodies = (size: number): FetchHandler => async (req) => {
  const path = new URL(req.url).pathname;
  if (path === "/download") {
    const data = bytes(size, 7);
    let at = 0;
    return new Response(
      new ReadableStream<Uint8Array>({
        pull(c) {
          if (at >= data.length) return c.close();
          c.enqueue(data.slice(at, at += 64 * 1024));
        },
      }),
    );
  }
  if (path === "/early") {
    // Answers without reading the upload.
    return new Response("not this one", { status: 403 });
  }
  const body = await req.bytes();
  return Response.json({
    length: body.length,
    sha: await sha256(body),
    contentLength: req.headers.get("content-length"),
  });
};

/**
 * A body of `data` in 64 KiB chunks, without a declared length; `onEnd`
 * runs once it is read to its end or cancelled.
 */
function streamOf(
  data: Uint8Array,
  onEnd: () => void = () => {},
): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream<Uint8Array>({
    pull(c) {
      if (at >= data.length) {
        onEnd();
        return c.close();
      }
      c.enqueue(data.slice(at, at += 64 * 1024));
    },
    cancel: onEnd,
  });
}

Deno.test({
  name:
    "large bodies over h2 both ways byte for byte: uploads with and without a length (fetch and curl), a streamed download",
  ignore,
  fn: async () => {
    const size = 6 * MiB + 12345;
    const data = bytes(size, 3);
    const digest = await sha256(data);
    await withH2Hub({}, async (ctx) => {
      ctx.worker(bodies(size), { concurrency: 2 });
      await waitFor(() => idleIn(ctx.server) === 2, "slots attached");
      const sized = await fetch(ctx.url("/upload"), {
        method: "POST",
        body: data,
        client: ctx.client,
      });
      assert.deepEqual(await sized.json(), {
        length: size,
        sha: digest,
        contentLength: String(size),
      });
      const streamed = await fetch(ctx.url("/upload"), {
        method: "POST",
        body: streamOf(data),
        client: ctx.client,
      });
      // No length over h2 and none made up on the worker link (chunked).
      assert.deepEqual(await streamed.json(), {
        length: size,
        sha: digest,
        contentLength: null,
      });
      const down = await fetch(ctx.url("/download"), { client: ctx.client });
      assert.equal(down.status, 200);
      assert.equal(
        await sha256(await down.bytes()),
        await sha256(bytes(size, 7)),
      );
      if (noCurl) return;
      // curl: a length from a file (--data-binary), none from stdin (-T -).
      const dir = await Deno.makeTempDir({ prefix: "pothead-h2-up-" });
      try {
        await Deno.writeFile(`${dir}/up`, data);
        const withLength = await curl(ctx, [
          "--data-binary",
          `@${dir}/up`,
          "-H",
          "content-type: application/octet-stream",
          "-w",
          "\n%{http_version}",
          ctx.url("/upload"),
        ]);
        assert.equal(withLength.code, 0, withLength.stderr);
        const [json1, v1] = dec.decode(withLength.stdout).split("\n");
        assert.equal(v1, "2");
        assert.deepEqual(JSON.parse(json1), {
          length: size,
          sha: digest,
          contentLength: String(size),
        });
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
      const noLength = await curl(
        ctx,
        [
          "-X",
          "POST",
          "-T",
          "-",
          "-w",
          "\n%{http_version}",
          ctx.url("/upload"),
        ],
        data,
      );
      assert.equal(noLength.code, 0, noLength.stderr);
      const [json2, v2] = dec.decode(noLength.stdout).split("\n");
      assert.equal(v2, "2");
      assert.deepEqual(JSON.parse(json2), {
        length: size,
        sha: digest,
        contentLength: null,
      });
      const got = await curl(ctx, [ctx.url("/download")]);
      assert.equal(got.code, 0, got.stderr);
      assert.equal(await sha256(got.stdout), await sha256(bytes(size, 7)));
    });
  },
});

Deno.test({
  name:
    "an h2 upload the worker answers without reading: the consumer gets the answer, and the connection serves the next stream",
  ignore,
  // Deno's fetch keeps the upload's "requestBody" resource open after the
  // server ended the stream (seen here 12-06 with Deno 2.9.6; the server's
  // RST_STREAM NO_ERROR comes right after the answer): a client-side leak
  // the sanitizer reports, not the hub's.
  sanitizeResources: false,
  fn: async () => {
    await withH2Hub({}, async (ctx) => {
      ctx.worker(bodies(0));
      await waitFor(() => idleIn(ctx.server) === 1, "worker attached");
      // A length-less upload of 8 MiB that the worker never reads: over h2
      // the answer may come while the body is still being sent.
      const upload = streamOf(bytes(8 * MiB, 5));
      const early = await fetch(ctx.url("/early"), {
        method: "POST",
        body: upload,
        client: ctx.client,
      });
      assert.equal(early.status, 403);
      assert.equal(await early.text(), "not this one");
      // Deno.serve ends the stream once the answer is out (RST_STREAM
      // NO_ERROR, see the 413 test); the hub's worker link, whose upload
      // then fails, closes and the worker dials again.
      await waitFor(() => idleIn(ctx.server) === 1, "worker back");
      // Also one with a length, read whole into memory at the hub first.
      const small = await fetch(ctx.url("/early"), {
        method: "POST",
        body: bytes(1000, 5),
        client: ctx.client,
      });
      assert.equal(small.status, 403);
      assert.equal(await small.text(), "not this one");
      await waitFor(() => idleIn(ctx.server) === 1, "worker back");
      const next = await fetch(ctx.url("/upload"), {
        method: "POST",
        body: bytes(100_000, 9),
        client: ctx.client,
      });
      assert.equal(
        (await next.json()).sha,
        await sha256(bytes(100_000, 9)),
      );
    });
  },
});

Deno.test({
  name:
    "maxRequestBodySize over h2: a declared length past it is 413 at once, a streamed body that grows past it is 413",
  ignore,
  fn: async () => {
    await withH2Hub({ maxRequestBodySize: MiB }, async (ctx) => {
      const seen: string[] = [];
      ctx.worker(async (req) => {
        seen.push(new URL(req.url).pathname);
        return new Response(String((await req.bytes()).length));
      });
      await waitFor(() => idleIn(ctx.server) === 1, "worker attached");
      const declared = await fetch(ctx.url("/declared"), {
        method: "POST",
        body: bytes(2 * MiB),
        client: ctx.client,
      });
      assert.equal(declared.status, 413);
      assert.equal(declared.headers.get("x-pothead-error"), "1");
      await declared.body?.cancel();
      assert.deepEqual(seen, []);
      const streamed = await fetch(ctx.url("/streamed"), {
        method: "POST",
        body: streamOf(bytes(2 * MiB)),
        client: ctx.client,
      });
      assert.equal(streamed.status, 413);
      await streamed.body?.cancel();
      // Within the limit still goes through, on the same client.
      const fits = await fetch(ctx.url("/fits"), {
        method: "POST",
        body: streamOf(bytes(MiB)),
        client: ctx.client,
      });
      assert.equal(await fits.text(), String(MiB));
      const outcomes = ctx.access.map((r) => [r.path, r.status]);
      assert.deepEqual(outcomes, [
        ["/declared", 413],
        ["/streamed", 413],
        ["/fits", 200],
      ]);
      if (noNghttp) return;
      // Deno sends the whole 413 and then RST_STREAM with NO_ERROR while
      // the upload is still coming, as RFC 9113 §8.1 asks. (curl 7.88
      // reports that reset as error 92 and prints nothing, against a plain
      // Deno.serve too, so it is not the witness here.)
      const dir = await Deno.makeTempDir({ prefix: "pothead-h2-413-" });
      try {
        await Deno.writeFile(`${dir}/big`, bytes(2 * MiB));
        const ng = await run(NGHTTP, [
          "-v",
          "-d",
          `${dir}/big`,
          ctx.url("/ng"),
        ]);
        const log = dec.decode(ng.stdout);
        assert.match(log, /:status: 413/);
        assert.match(log, /recv RST_STREAM.*\n.*NO_ERROR/);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    });
  },
});

Deno.test({
  name:
    "routing by :authority over h2: host and path rules pick the pool as for HTTP/1.1; the worker hears Host, X-Forwarded-Proto https and X-Forwarded-Host",
  ignore: noCurl,
  fn: async () => {
    await withH2Hub({
      routes: [
        { host: "img.test", pathPrefix: "/big/", pool: "big" },
        { host: "img.test", pool: "img" },
        { pathPrefix: "/api/", pool: "api" },
      ],
    }, async (ctx) => {
      for (const pool of ["default", "big", "img", "api"]) {
        ctx.worker((req) =>
          Response.json({
            pool,
            url: req.url,
            host: req.headers.get("host"),
            proto: req.headers.get("x-forwarded-proto"),
            fwdHost: req.headers.get("x-forwarded-host"),
          }), { pool });
      }
      await waitFor(
        () =>
          ["default", "big", "img", "api"].every((p) =>
            idleIn(ctx.server, p) === 1
          ),
        "four pools served",
      );
      const p = ctx.port;
      // The test certificate names localhost only: curl goes to img.test
      // with --resolve and without verifying the name (-k); nghttp below
      // sets :authority itself.
      // Host rules match without case; the worker hears the host as sent.
      const cases: [string, string, string][] = [
        [`https://img.test:${p}/big/x`, "big", `img.test:${p}`],
        [`https://IMG.test:${p}/small`, "img", `IMG.test:${p}`],
        [`https://localhost:${p}/api/v1`, "api", `localhost:${p}`],
        [`https://localhost:${p}/big/x`, "default", `localhost:${p}`],
      ];
      for (const [url, pool, host] of cases) {
        const out = await curl(ctx, [
          "-k",
          "--resolve",
          `img.test:${p}:127.0.0.1`,
          "-w",
          "\n%{http_version}",
          url,
        ]);
        assert.equal(out.code, 0, out.stderr);
        const [json, version] = dec.decode(out.stdout).split("\n");
        assert.equal(version, "2");
        const got = JSON.parse(json);
        assert.deepEqual(got, {
          pool,
          url: `https://${host.toLowerCase()}${new URL(url).pathname}`,
          host,
          proto: "https",
          fwdHost: host,
        }, url);
      }
      // Fetch's :authority is its URL's.
      const res = await fetch(ctx.url("/api/f"), { client: ctx.client });
      assert.equal((await res.json()).pool, "api");
      if (noNghttp) return;
      // nghttp sends exactly the :authority it is given (no Host field).
      const ng = await run(NGHTTP, [
        "-H",
        ":authority: img.test",
        ctx.url("/big/n"),
      ]);
      assert.equal(ng.code, 0, ng.stderr);
      assert.deepEqual(JSON.parse(dec.decode(ng.stdout)), {
        pool: "big",
        url: "https://img.test/big/n",
        host: "img.test",
        proto: "https",
        fwdHost: "img.test",
      });
    });
  },
});

/**
 * A plain worker on one raw connection: for each request head it reads it
 * writes the bytes `answer` gives for "METHOD PATH", so the fields come as
 * written, not as an HTTP library would make them.
 */
async function rawWorker(
  server: HubServer,
  answer: (request: string) => string,
): Promise<{ conn: Deno.Conn; done: Promise<void> }> {
  const conn = await Deno.connect({
    hostname: "127.0.0.1",
    port: server.workerAddr.port,
  });
  const done = (async () => {
    const buf = new Uint8Array(64 * 1024);
    let pending = "";
    try {
      while (true) {
        const n = await conn.read(buf);
        if (n === null) return;
        pending += dec.decode(buf.subarray(0, n));
        let end;
        while ((end = pending.indexOf("\r\n\r\n")) >= 0) {
          const head = pending.slice(0, end);
          pending = pending.slice(end + 4);
          const [method, path] = head.split(" ");
          await conn.write(enc.encode(answer(`${method} ${path}`)));
        }
      }
    } catch {
      // closed
    }
  })();
  return { conn, done };
}

const HOP_RESPONSE = "HTTP/1.1 200 OK\r\n" +
  "Connection: keep-alive, X-Private\r\n" +
  "Keep-Alive: timeout=5\r\n" +
  "Proxy-Connection: keep-alive\r\n" +
  "Upgrade: h2c\r\n" +
  "X-Private: named by Connection\r\n" +
  "Set-Cookie: a=1; Path=/\r\n" +
  "Set-Cookie: b=2; HttpOnly\r\n" +
  "X-Kept: yes\r\n" +
  "Transfer-Encoding: chunked\r\n\r\n" +
  "5\r\nhello\r\n0\r\n\r\n";

function rawAnswers(request: string): string {
  switch (request) {
    case "GET /hop":
      return HOP_RESPONSE;
    case "GET /no-content":
      return "HTTP/1.1 204 No Content\r\nX-Kept: 204\r\n\r\n";
    case "GET /not-modified":
      return 'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 42\r\n\r\n';
    case "HEAD /head":
      return "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\r\n";
    case "GET /no-reason":
      return "HTTP/1.1 299 \r\nContent-Length: 2\r\n\r\nok";
    case "GET /no-reason-no-space":
      return "HTTP/1.1 404\r\nContent-Length: 7\r\n\r\nmissing";
  }
  return "HTTP/1.1 500 Unknown\r\nContent-Length: 0\r\n\r\n";
}

// Deno.serve's h2 drops the fixed connection-specific fields itself (with
// the hub's hop-by-hop rule for Keep-Alive removed, none reached a consumer,
// seen 12-06); a field a worker's Connection names (X-Private) is the hub's
// alone to drop (with that rule removed, this test fails).
const CONNECTION_SPECIFIC = [
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
  "x-private",
];

Deno.test({
  name:
    "a worker's connection-specific response fields never reach an h2 consumer (curl and nghttp accept the response); Set-Cookie twice, 204, 304, HEAD with a length, no reason phrase",
  ignore: noCurl,
  fn: async () => {
    await withH2Hub({ handshakeWait: 0 }, async (ctx) => {
      const raw = await rawWorker(ctx.server, rawAnswers);
      try {
        await waitFor(() => idleIn(ctx.server) === 1, "raw worker attached");
        const hop = await curl(ctx, ["-i", ctx.url("/hop")]);
        // curl (nghttp2) refuses a response with connection-specific
        // fields (RFC 9113 §8.2.2): exit 0 says there were none.
        assert.equal(hop.code, 0, hop.stderr);
        const res = curlResponse(hop.stdout);
        assert.equal(res.version, "HTTP/2");
        assert.equal(res.status, 200);
        assert.equal(dec.decode(res.body), "hello");
        for (const name of CONNECTION_SPECIFIC) {
          assert.ok(
            !res.headers.some(([n]) => n === name),
            `${name} reached the consumer`,
          );
        }
        assert.deepEqual(
          res.headers.filter(([n]) => n === "set-cookie").map(([, v]) => v),
          ["a=1; Path=/", "b=2; HttpOnly"],
        );
        assert.equal(
          res.headers.find(([n]) => n === "x-kept")?.[1],
          "yes",
        );
        // fetch over h2 too.
        const f = await fetch(ctx.url("/hop"), { client: ctx.client });
        assert.deepEqual(f.headers.getSetCookie(), [
          "a=1; Path=/",
          "b=2; HttpOnly",
        ]);
        for (const name of CONNECTION_SPECIFIC) {
          assert.equal(f.headers.get(name), null, name);
        }
        assert.equal(await f.text(), "hello");
        if (!noNghttp) {
          // nghttp2 treats connection-specific fields as a malformed
          // response and resets the stream; -v shows what came.
          const ng = await run(NGHTTP, ["-v", ctx.url("/hop")]);
          const log = dec.decode(ng.stdout);
          assert.equal(ng.code, 0, log + ng.stderr);
          assert.match(log, /recv DATA frame/);
          assert.doesNotMatch(log, /RST_STREAM/);
          for (const name of CONNECTION_SPECIFIC) {
            assert.doesNotMatch(log, new RegExp(`^ +${name}:`, "m"));
          }
        }

        const noContent = curlResponse(
          (await curl(ctx, ["-i", ctx.url("/no-content")])).stdout,
        );
        assert.equal(noContent.status, 204);
        assert.equal(noContent.body.length, 0);
        assert.equal(
          noContent.headers.find(([n]) => n === "x-kept")?.[1],
          "204",
        );
        const notModified = await curl(ctx, ["-i", ctx.url("/not-modified")]);
        assert.equal(notModified.code, 0, notModified.stderr);
        const nm = curlResponse(notModified.stdout);
        assert.equal(nm.status, 304);
        assert.equal(nm.body.length, 0);
        assert.equal(nm.headers.find(([n]) => n === "etag")?.[1], '"v1"');
        const head = await curl(ctx, ["-I", ctx.url("/head")]);
        assert.equal(head.code, 0, head.stderr);
        const h = curlResponse(head.stdout);
        assert.equal(h.status, 200);
        assert.equal(
          h.headers.find(([n]) => n === "content-length")?.[1],
          "1234",
        );
        assert.equal(h.body.length, 0);
        for (
          const [path, status, body] of [
            ["/no-reason", 299, "ok"],
            ["/no-reason-no-space", 404, "missing"],
          ] as const
        ) {
          const out = await curl(ctx, ["-i", ctx.url(path)]);
          assert.equal(out.code, 0, out.stderr);
          const r = curlResponse(out.stdout);
          assert.equal(r.status, status);
          assert.equal(dec.decode(r.body), body);
          const viaFetch = await fetch(ctx.url(path), { client: ctx.client });
          // h2 has no reason phrase; Deno's fetch makes up the standard
          // one ("Not Found") for a known code.
          assert.equal(viaFetch.status, status);
          assert.equal(await viaFetch.text(), body);
        }
      } finally {
        raw.conn.close();
        await raw.done;
      }
    });
  },
});

Deno.test({
  name:
    "request fields of an h2 consumer are forwarded by the hub's rules: te: trailers dropped, split cookies joined, forwarding fields the hub's own",
  ignore: noNghttp,
  fn: async () => {
    await withH2Hub({}, async (ctx) => {
      ctx.worker((req) => Response.json(Object.fromEntries(req.headers)));
      await waitFor(() => idleIn(ctx.server) === 1, "worker attached");
      // nghttp sends each field as given: two cookie fields (as browsers do
      // over h2, RFC 9113 §8.2.3) and te: trailers, the only TE h2 allows.
      const out = await run(NGHTTP, [
        "-H",
        "te: trailers",
        "-H",
        "cookie: a=1",
        "-H",
        "cookie: b=2",
        "-H",
        "x-forwarded-for: 6.6.6.6",
        "-H",
        "x-forwarded-host: evil.test",
        "-H",
        "x-pothead-ping: 1",
        "-H",
        "x-custom: kept",
        ctx.url("/fields"),
      ]);
      assert.equal(out.code, 0, out.stderr);
      const h = JSON.parse(dec.decode(out.stdout));
      assert.equal(h["te"], undefined);
      // Joined with "; " for HTTP/1.1, not ", " (a cookie value may hold
      // a comma for all the worker knows).
      assert.equal(h["cookie"], "a=1; b=2");
      assert.equal(h["x-custom"], "kept");
      assert.equal(h["x-forwarded-for"], "127.0.0.1");
      assert.equal(h["x-forwarded-host"], `localhost:${ctx.port}`);
      assert.equal(h["x-forwarded-proto"], "https");
      assert.equal(h["host"], `localhost:${ctx.port}`);
      assert.equal(h["x-pothead-ping"], undefined);
      // Any other TE is malformed in h2 (RFC 9113 §8.2.2): Deno refuses
      // the stream itself; it never reaches the hub.
      const received = ctx.server.hub.stats.received;
      const bad = await run(NGHTTP, ["-H", "te: gzip", ctx.url("/te-gzip")]);
      assert.match(bad.stderr, /not processed/);
      assert.equal(ctx.server.hub.stats.received, received);
    });
  },
});

Deno.test({
  name:
    "an h2 consumer asking for a WebSocket gets an answer, not a hang: Upgrade is refused by Deno's h2 server; without it the worker's answer comes back",
  ignore: noNghttp || noCurl,
  fn: async () => {
    await withH2Hub({}, async (ctx) => {
      const seen: string[] = [];
      // The README's handler: WebSockets only.
      ctx.worker((req) => {
        seen.push(new URL(req.url).pathname);
        if (req.headers.get("upgrade") !== "websocket") {
          return new Response("ws only", { status: 426 });
        }
        return Deno.upgradeWebSocket(req).response;
      });
      await waitFor(() => idleIn(ctx.server) === 1, "worker attached");
      const wsFields = [
        "-H",
        "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
        "-H",
        "sec-websocket-version: 13",
      ];
      // Connection and Upgrade are connection-specific: a request with
      // them is malformed in h2, and Deno resets the stream (PROTOCOL_ERROR)
      // before the hub sees it. (Deno.serve does not offer RFC 8441's
      // extended CONNECT, the h2 way to open a WebSocket.)
      const ng = await run(NGHTTP, [
        "-v",
        "-H",
        "upgrade: websocket",
        "-H",
        "connection: Upgrade",
        ...wsFields,
        ctx.url("/ws"),
      ]);
      assert.match(
        dec.decode(ng.stdout),
        /recv RST_STREAM.*\n.*PROTOCOL_ERROR/,
      );
      assert.equal(ctx.server.hub.stats.received, 0);
      // curl drops Upgrade and Connection over h2 itself: the handshake
      // arrives as a plain GET, and the worker's answer is relayed.
      const out = await curl(ctx, [
        "-i",
        "-H",
        "upgrade: websocket",
        "-H",
        "connection: Upgrade",
        ...wsFields,
        ctx.url("/ws"),
      ]);
      assert.equal(out.code, 0, out.stderr);
      const res = curlResponse(out.stdout);
      assert.equal(res.status, 426);
      assert.equal(dec.decode(res.body), "ws only");
      // So does fetch.
      const f = await fetch(ctx.url("/ws2"), {
        client: ctx.client,
        headers: { upgrade: "websocket", connection: "Upgrade" },
      });
      assert.equal(f.status, 426);
      await f.body?.cancel();
      assert.deepEqual(seen, ["/ws", "/ws2"]);
      assert.equal(ctx.server.hub.stats.webSockets, 0);
    });
  },
});

Deno.test({
  name:
    "queue full and queue timeout over h2: 503 with Retry-After, on a connection that goes on serving",
  ignore,
  fn: async () => {
    await withH2Hub({
      maxQueue: 1,
      routes: [{ pathPrefix: "/nobody/", pool: "nobody" }],
      pools: { nobody: { queueTimeout: 200 } },
    }, async (ctx) => {
      const release = Promise.withResolvers<void>();
      ctx.worker(async (req) => {
        await release.promise;
        return new Response(new URL(req.url).pathname);
      });
      await waitFor(() => idleIn(ctx.server) === 1, "worker attached");
      const busy = fetch(ctx.url("/busy"), { client: ctx.client });
      await waitFor(() => idleIn(ctx.server) === 0, "worker busy");
      const queued = fetch(ctx.url("/queued"), { client: ctx.client });
      await waitFor(() => ctx.server.hub.stats.queued === 1, "one queued");
      const full = await fetch(ctx.url("/full"), { client: ctx.client });
      assert.equal(full.status, 503);
      assert.equal(full.headers.get("retry-after"), "1");
      assert.equal(full.headers.get("x-pothead-error"), "1");
      await full.body?.cancel();
      // A pool without workers: its queue timeout answers.
      const late = await fetch(ctx.url("/nobody/x"), { client: ctx.client });
      assert.equal(late.status, 503);
      assert.equal(late.headers.get("retry-after"), "1");
      assert.match(await late.text(), /waited/);
      release.resolve();
      assert.equal(await (await busy).text(), "/busy");
      assert.equal(await (await queued).text(), "/queued");
      assert.equal(ctx.server.hub.stats.rejectedFull, 1);
      assert.equal(ctx.server.hub.stats.timedOutQueued, 1);
      if (noCurl) return;
      const out = await curl(ctx, ["-i", ctx.url("/nobody/curl")]);
      assert.equal(out.code, 0, out.stderr);
      const res = curlResponse(out.stdout);
      assert.equal(res.version, "HTTP/2");
      assert.equal(res.status, 503);
      assert.equal(res.headers.find(([n]) => n === "retry-after")?.[1], "1");
    });
  },
});

Deno.test({
  name:
    "graceful shutdown with h2 connections open: streams in flight and queued finish, new ones are refused, nghttp sees GOAWAY",
  ignore,
  fn: async () => {
    const c = await certs();
    const server = serveHub({
      hostname: "127.0.0.1",
      port: 0,
      workerPort: 0,
      cert: c.cert,
      key: c.key,
      shutdownGrace: HANG,
      queueTimeout: HANG,
    });
    const seen: string[] = [];
    const release = Promise.withResolvers<void>();
    const worker = connectWorker(async (req) => {
      const path = new URL(req.url).pathname;
      seen.push(path);
      if (path === "/in-flight" || path === "/nghttp") await release.promise;
      return new Response(`finished ${path}`);
    }, {
      hostname: "127.0.0.1",
      port: server.workerAddr.port,
      concurrency: 2,
      minBackoff: 10,
      maxBackoff: 100,
    });
    const client = Deno.createHttpClient({
      caCerts: [c.ca],
      http1: false,
      http2: true,
    });
    const url = (path: string) =>
      `https://localhost:${server.addr.port}${path}`;
    let stopping: Promise<void> | undefined;
    try {
      await waitFor(() => idleIn(server) === 2, "slots attached");
      const inFlight = fetch(url("/in-flight"), { client });
      let ng: Promise<ToolResult> | undefined;
      if (!noNghttp) {
        ng = run(NGHTTP, ["-v", url("/nghttp")]);
        await waitFor(() => seen.length === 2, "both at the worker");
      } else {
        await waitFor(() => seen.length === 1, "in flight at the worker");
        seen.push("/nghttp"); // hold the second slot's place in `seen`
      }
      const queued = fetch(url("/queued"), { client });
      await waitFor(() => server.hub.stats.queued === 1, "one queued");
      stopping = server.shutdown();
      // A new stream on the same connection, or on a new one: refused
      // (503, or the connection's GOAWAY or closed listener as an error),
      // and it never reaches a worker.
      const refused = await deadline(
        fetch(url("/new"), { client }).then(
          async (res) => {
            await res.body?.cancel();
            return res.status;
          },
          (error) => String(error),
        ),
        HANG,
        "new stream refused",
      );
      assert.ok(
        refused === 503 || typeof refused === "string",
        `new stream got ${refused}`,
      );
      release.resolve();
      const first = await deadline(inFlight, HANG, "in-flight answer");
      assert.equal(await first.text(), "finished /in-flight");
      const second = await deadline(queued, HANG, "queued answer");
      assert.equal(await second.text(), "finished /queued");
      if (ng !== undefined) {
        const out = await ng;
        const log = dec.decode(out.stdout);
        assert.equal(out.code, 0, log + out.stderr);
        assert.match(log, /finished \/nghttp/);
        assert.match(log, /recv GOAWAY frame/);
      }
      await deadline(stopping, HANG, "shutdown");
      assert.deepEqual(seen.slice(2), ["/queued"]);
      assert.deepEqual(seen.slice(0, 2).sort(), ["/in-flight", "/nghttp"]);
    } finally {
      client.close();
      release.resolve();
      worker.close();
      await worker.finished;
      await (stopping ?? server.shutdown());
    }
  },
});
