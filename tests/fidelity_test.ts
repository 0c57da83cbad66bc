/**
 * Protocol fidelity against implementations that are not ours.
 *
 * 1. A plain `Deno.serve` server is a worker: a dumb TCP relay dials the
 *    hub's worker port and pipes each connection to the server (the original
 *    POTHEAD protocol: a worker is anything that connects and then speaks
 *    HTTP/1.1 server). `fetch`, curl and raw sockets talk to the hub.
 * 2. Our worker runner is put straight in front of real HTTP clients: a relay
 *    pairs each client connection with a connection the runner dialed.
 */

import assert from "node:assert/strict";
import { type HubServer, QUEUE_TIME_HEADER, serveHub } from "../hub.ts";
import type { WorkerHandle } from "../worker.ts";
import {
  deadline,
  dialRelay,
  latin1Text,
  type PairingRelay,
  pairingRelay,
  RawSocket,
  waitFor,
} from "./_relay.ts";
import { connectWorker } from "./_hub.ts";
import { sha256 } from "./_data.ts";
import { runTool, type ToolResult } from "./_procs.ts";

const CURL = "/usr/bin/curl";
const HAS_CURL = (() => {
  try {
    return Deno.statSync(CURL).isFile;
  } catch {
    return false;
  }
})();
if (!HAS_CURL) {
  console.warn(`fidelity_test: ${CURL} not found, curl tests are skipped`);
}

const HANG = 20_000;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const enc = new TextEncoder();
const dec = new TextDecoder();

function pattern(size: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++) out[i] = (i * 31 + (i >> 9)) & 0xff;
  return out;
}

function field(headers: [string, string][], name: string): string | undefined {
  return headers.find(([n]) => n === name)?.[1];
}

function curl(args: string[], stdin?: Uint8Array): Promise<ToolResult> {
  return runTool(CURL, ["-sS", "--max-time", "20", ...args], stdin, HANG);
}

/** Splits curl `-i` output into response heads and the final body. */
function parseCurlInclude(out: Uint8Array): {
  status: number;
  headers: [string, string][];
  body: Uint8Array;
} {
  const text = latin1Text(out);
  let at = 0;
  let head = "";
  // Skip interim (1xx) heads; the last head is the final response.
  for (let i = 0; i < 10; i++) {
    const end = text.indexOf("\r\n\r\n", at);
    assert.ok(end >= 0, `curl output has no head: ${JSON.stringify(text)}`);
    head = text.slice(at, end);
    at = end + 4;
    if (!/^HTTP\/1\.1 1\d\d/.test(head)) break;
  }
  const lines = head.split("\r\n");
  const status = Number(lines[0].split(" ")[1]);
  const headers = lines.slice(1).map((l): [string, string] => {
    const i = l.indexOf(":");
    return [l.slice(0, i).toLowerCase(), l.slice(i + 1).trim()];
  });
  return { status, headers, body: out.slice(at) };
}

// --- 1. A plain Deno.serve server as a worker -------------------------------

interface Seen {
  method: string;
  target: string;
  headers: Headers;
  remotePort: number;
}

interface OriginCtx {
  server: HubServer;
  hubUrl: string;
  client: Deno.HttpClient;
  seen: Seen[];
  relayPairs: number;
  /** Resolve to let the /stream response finish. */
  releaseStream(): void;
  /** Resolves when the /stream response sent its first part. */
  streamStarted: Promise<void>;
}

function origin(
  seen: Seen[],
  streamGate: Promise<void>,
  onStreamStart: () => void,
): Deno.ServeHandler<Deno.NetAddr> {
  return async (req, info) => {
    const url = new URL(req.url);
    seen.push({
      method: req.method,
      target: url.pathname + url.search,
      headers: new Headers(req.headers),
      remotePort: info.remoteAddr.port,
    });
    switch (url.pathname) {
      case "/upload": {
        const body = await req.bytes();
        return Response.json({
          length: body.length,
          sha256: await sha256(body),
          contentLength: req.headers.get("content-length"),
          transferEncoding: req.headers.get("transfer-encoding"),
        });
      }
      case "/echo":
        return new Response(req.body, {
          headers: { "content-type": "application/octet-stream" },
        });
      case "/hello":
        return new Response("hello", {
          headers: { "content-type": "text/plain" },
        });
      case "/no-content":
        return new Response(null, {
          status: 204,
          headers: { "x-kind": "204" },
        });
      case "/not-modified":
        return new Response(null, {
          status: 304,
          headers: { etag: '"v1"', "x-kind": "304" },
        });
      case "/cookies": {
        const headers = new Headers({ "content-type": "text/plain" });
        headers.append("set-cookie", "a=1; Path=/");
        headers.append("set-cookie", "b=2; HttpOnly");
        return new Response("cookies", { headers });
      }
      case "/hop":
        return new Response("hop", {
          headers: {
            connection: "x-secret",
            "x-secret": "1",
            "keep-alive": "timeout=5",
            "proxy-authenticate": "Basic",
            upgrade: "foo/1",
            "x-end-to-end": "kept",
          },
        });
      case "/stream": {
        const body = new ReadableStream<Uint8Array>({
          async start(controller) {
            controller.enqueue(enc.encode("first part\n"));
            onStreamStart();
            await streamGate;
            controller.enqueue(enc.encode("second part\n"));
            controller.close();
          },
        });
        return new Response(body, {
          headers: { "content-type": "text/event-stream" },
        });
      }
      default:
        return Response.json({ method: req.method, target: url.search });
    }
  };
}

/**
 * A hub whose only workers are `pairs` relay connections to a plain
 * `Deno.serve` server.
 */
async function withOrigin(
  fn: (ctx: OriginCtx) => Promise<void>,
  pairs = 2,
): Promise<void> {
  const seen: Seen[] = [];
  const gate = Promise.withResolvers<void>();
  const started = Promise.withResolvers<void>();
  const originServer = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen() {},
  }, origin(seen, gate.promise, started.resolve));
  const server = serveHub({
    hostname: "127.0.0.1",
    port: 0,
    workerPort: 0,
    queueTimeout: 10_000,
    headTimeout: 10_000,
  });
  const client = Deno.createHttpClient({});
  let relay;
  try {
    relay = await dialRelay(server.workerAddr, originServer.addr, pairs);
    await waitFor(
      () => server.hub.stats.idle === pairs,
      "relay connections idle on the hub",
    );
    await deadline(
      fn({
        server,
        hubUrl: `http://127.0.0.1:${server.addr.port}`,
        client,
        seen,
        relayPairs: relay.pairs,
        releaseStream: gate.resolve,
        streamStarted: started.promise,
      }),
      HANG * 2,
      "test body",
    );
  } finally {
    gate.resolve();
    client.close();
    await server.shutdown();
    await relay?.close();
    await originServer.shutdown();
  }
}

Deno.test("hub forwards GET with a query to a plain Deno.serve worker", async () => {
  await withOrigin(async ({ hubUrl, client, seen }) => {
    const res = await fetch(`${hubUrl}/q?x=1&y=%20two`, { client });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {
      method: "GET",
      target: "?x=1&y=%20two",
    });
    assert.equal(seen.length, 1);
    assert.equal(seen[0].target, "/q?x=1&y=%20two");
  });
});

Deno.test("hub forwards small and 5 MB POST bodies to Deno.serve intact", async () => {
  await withOrigin(async ({ hubUrl, client }) => {
    for (const size of [11, 5 * 1024 * 1024]) {
      const data = pattern(size);
      const res = await fetch(`${hubUrl}/upload`, {
        method: "POST",
        body: data,
        client,
      });
      assert.equal(res.status, 200);
      const got = await res.json();
      assert.equal(got.length, size);
      assert.equal(got.sha256, await sha256(data));
      assert.equal(got.contentLength, String(size));
      assert.equal(got.transferEncoding, null);
    }
    // And back: the 5 MB body echoed as a streamed (chunked) response.
    const data = pattern(5 * 1024 * 1024);
    const res = await fetch(`${hubUrl}/echo`, {
      method: "POST",
      body: data,
      client,
    });
    assert.equal(res.status, 200);
    const back = await res.bytes();
    assert.equal(back.length, data.length);
    assert.equal(await sha256(back), await sha256(data));
  });
});

Deno.test("hub forwards a chunked fetch upload to Deno.serve intact", async () => {
  await withOrigin(async ({ hubUrl, client }) => {
    const parts = [pattern(1000), pattern(70_000), enc.encode("tail")];
    const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) all.set(p, at), at += p.length;
    let i = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (i < parts.length) controller.enqueue(parts[i++]);
        else controller.close();
      },
    });
    const res = await fetch(`${hubUrl}/upload`, {
      method: "POST",
      body,
      duplex: "half",
      client,
    } as RequestInit);
    assert.equal(res.status, 200);
    const got = await res.json();
    assert.equal(got.length, all.length);
    assert.equal(got.sha256, await sha256(all));
    assert.equal(got.contentLength, null);
    assert.equal(got.transferEncoding, "chunked");
  });
});

Deno.test("hub answers HEAD from Deno.serve with its content-length and no body", async () => {
  await withOrigin(async ({ server, hubUrl, client }) => {
    const res = await fetch(`${hubUrl}/hello`, { method: "HEAD", client });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-length"), "5");
    assert.equal((await res.bytes()).length, 0);
    // On the wire: no body bytes, so the next response parses at once.
    const raw = await RawSocket.connect(server.addr.port);
    try {
      await raw.write(
        "HEAD /hello HTTP/1.1\r\nHost: h\r\n\r\nGET /hello HTTP/1.1\r\nHost: h\r\n\r\n",
      );
      const head = await raw.readMessage(true);
      assert.equal(head?.status, 200);
      assert.equal(field(head!.headers, "content-length"), "5");
      const get = await raw.readMessage();
      assert.equal(get?.status, 200);
      assert.equal(dec.decode(get!.body), "hello");
    } finally {
      raw.close();
    }
  });
});

Deno.test("hub passes 204 and 304 from Deno.serve through without a body", async () => {
  await withOrigin(async ({ server, hubUrl, client }) => {
    const r204 = await fetch(`${hubUrl}/no-content`, { client });
    assert.equal(r204.status, 204);
    assert.equal(r204.headers.get("x-kind"), "204");
    assert.equal(r204.body, null);
    const r304 = await fetch(`${hubUrl}/not-modified`, { client });
    assert.equal(r304.status, 304);
    assert.equal(r304.headers.get("etag"), '"v1"');
    assert.equal((await r304.bytes()).length, 0);
    const raw = await RawSocket.connect(server.addr.port);
    try {
      await raw.write(
        "GET /no-content HTTP/1.1\r\nHost: h\r\n\r\n" +
          "GET /not-modified HTTP/1.1\r\nHost: h\r\n\r\n" +
          "GET /hello HTTP/1.1\r\nHost: h\r\n\r\n",
      );
      const a = await raw.readMessage();
      assert.equal(a?.status, 204);
      assert.equal(field(a!.headers, "transfer-encoding"), undefined);
      const b = await raw.readMessage();
      assert.equal(b?.status, 304);
      const c = await raw.readMessage();
      assert.equal(c?.status, 200);
      assert.equal(dec.decode(c!.body), "hello");
    } finally {
      raw.close();
    }
  });
});

Deno.test("hub streams a Deno.serve response to the consumer before it ends", async () => {
  await withOrigin(async ({ hubUrl, client, releaseStream, streamStarted }) => {
    const res = await fetch(`${hubUrl}/stream`, { client });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "text/event-stream");
    const reader = res.body!.getReader();
    // The origin holds its second part until we have the first: a hub that
    // buffered the body would never deliver it (the hang guard fails).
    let text = "";
    while (!text.includes("\n")) {
      const { done, value } = await deadline(reader.read(), HANG, "part 1");
      assert.equal(done, false);
      text += dec.decode(value);
    }
    assert.equal(text, "first part\n");
    await streamStarted;
    releaseStream();
    while (true) {
      const { done, value } = await deadline(reader.read(), HANG, "part 2");
      if (done) break;
      text += dec.decode(value);
    }
    assert.equal(text, "first part\nsecond part\n");
  });
});

Deno.test("hub preserves multiple Set-Cookie headers from Deno.serve", async () => {
  await withOrigin(async ({ hubUrl, client }) => {
    const res = await fetch(`${hubUrl}/cookies`, { client });
    assert.equal(res.status, 200);
    assert.deepEqual(res.headers.getSetCookie(), [
      "a=1; Path=/",
      "b=2; HttpOnly",
    ]);
    assert.equal(await res.text(), "cookies");
  });
});

Deno.test("hub strips hop-by-hop headers in both directions with Deno.serve", async () => {
  await withOrigin(async ({ server, seen }) => {
    const raw = await RawSocket.connect(server.addr.port);
    try {
      await raw.write(
        "GET /info HTTP/1.1\r\nHost: h\r\nConnection: foo\r\nFoo: secret\r\n" +
          "Keep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: foo/1\r\n" +
          "Proxy-Authorization: Basic eDp5\r\nX-Keep: 1\r\n\r\n",
      );
      const a = await raw.readMessage();
      assert.equal(a?.status, 200);
      const got = seen.at(-1)!.headers;
      for (const name of ["foo", "keep-alive", "te", "upgrade"]) {
        assert.equal(got.get(name), null, `${name} reached the worker`);
      }
      assert.equal(got.get("proxy-authorization"), null);
      assert.ok(!(got.get("connection") ?? "").includes("foo"));
      assert.equal(got.get("x-keep"), "1");

      await raw.write("GET /hop HTTP/1.1\r\nHost: h\r\n\r\n");
      const b = await raw.readMessage();
      assert.equal(b?.status, 200);
      assert.equal(dec.decode(b!.body), "hop");
      const names = b!.headers.map(([n]) => n);
      for (const name of ["x-secret", "keep-alive", "proxy-authenticate"]) {
        assert.ok(!names.includes(name), `${name} reached the consumer`);
      }
      assert.ok(!names.includes("upgrade"), "upgrade reached the consumer");
      assert.ok(!(field(b!.headers, "connection") ?? "").includes("x-secret"));
      assert.equal(field(b!.headers, "x-end-to-end"), "kept");
    } finally {
      raw.close();
    }
  });
});

Deno.test("hub sets X-Forwarded-* and replaces a client X-Forwarded-For", async () => {
  await withOrigin(async ({ server, hubUrl, client, seen }) => {
    const res = await fetch(`${hubUrl}/info`, {
      headers: {
        "x-forwarded-for": "6.6.6.6",
        "x-forwarded-proto": "gopher",
        "x-forwarded-host": "evil.example",
      },
      client,
    });
    assert.equal(res.status, 200);
    await res.body?.cancel();
    const got = seen.at(-1)!.headers;
    assert.equal(got.get("x-forwarded-for"), "127.0.0.1");
    assert.equal(got.get("x-forwarded-proto"), "http");
    assert.equal(got.get("x-forwarded-host"), `127.0.0.1:${server.addr.port}`);
  });
});

Deno.test("hub takes an absolute-form target's authority as the Host (RFC 9112 §3.2.2), and its scheme is not the consumer's word", async () => {
  await withOrigin(async ({ server, seen }) => {
    const raw = await RawSocket.connect(server.addr.port);
    try {
      await raw.write(
        "GET http://b.example:81/info?x=1 HTTP/1.1\r\nHost: a.example\r\n\r\n" +
          "GET HTTPS://c.example?q HTTP/1.1\r\nHost: c.example\r\n\r\n" +
          "GET http://u:p@d.example/info HTTP/1.1\r\nHost: d.example\r\n\r\n",
      );
      const a = await raw.readMessage();
      assert.equal(a?.status, 200);
      let got = seen.at(-1)!;
      assert.equal(got.target, "/info?x=1");
      assert.equal(got.headers.get("host"), "b.example:81");
      assert.equal(got.headers.get("x-forwarded-host"), "b.example:81");
      assert.equal(got.headers.get("x-forwarded-proto"), "http");
      const b = await raw.readMessage();
      assert.equal(b?.status, 200);
      got = seen.at(-1)!;
      // No path: the query is kept on "/".
      assert.equal(got.target, "/?q");
      assert.equal(got.headers.get("host"), "c.example");
      // The consumer came over plain TCP, whatever its target said.
      assert.equal(got.headers.get("x-forwarded-proto"), "http");
      const c = await raw.readMessage();
      assert.equal(c?.status, 400);
      assert.match(
        dec.decode(c!.body),
        /invalid authority in the request target/,
      );
      assert.equal(seen.length, 2);
    } finally {
      raw.close();
    }
  });
});

Deno.test("an absolute-form target without a Host field (HTTP/1.0): an invalid authority is a 400 too", async () => {
  await withOrigin(async ({ server, seen }) => {
    const ask = async (head: string) => {
      const raw = await RawSocket.connect(server.addr.port);
      try {
        await raw.write(head);
        return await deadline(raw.readMessage(), HANG, "the answer");
      } finally {
        raw.close();
      }
    };
    // Userinfo, and bytes a Host field may not carry: no worker hears them.
    for (const target of ["http://u@d.example/info", "http://a<b>/info"]) {
      const msg = await ask(`GET ${target} HTTP/1.0\r\n\r\n`);
      assert.equal(msg?.status, 400, target);
      assert.match(
        dec.decode(msg!.body),
        /invalid authority in the request target/,
      );
    }
    assert.equal(seen.length, 0);
    // A valid one is the Host; origin form still gets Deno.serve's address.
    assert.equal(
      (await ask("GET http://e.example/info HTTP/1.0\r\n\r\n"))?.status,
      200,
    );
    assert.equal(seen.at(-1)!.headers.get("host"), "e.example");
    assert.equal((await ask("GET /info HTTP/1.0\r\n\r\n"))?.status, 200);
    assert.match(seen.at(-1)!.headers.get("host")!, /^localhost:[0-9]+$/);
  });
});

Deno.test("hub answers CONNECT itself with a 501 and keeps the connection", async () => {
  await withOrigin(async ({ server, seen }) => {
    const raw = await RawSocket.connect(server.addr.port);
    try {
      // Authority form (RFC 9110 §9.3.6), then a request on the same
      // connection: the refusal costs no worker and no connection.
      await raw.write(
        "CONNECT d.example:443 HTTP/1.1\r\nHost: d.example:443\r\n\r\n",
      );
      const msg = await deadline(raw.readMessage(), HANG, "the answer");
      assert.equal(msg?.status, 501);
      assert.match(dec.decode(msg!.body), /CONNECT is not supported/);
      await raw.write("GET /info HTTP/1.1\r\nHost: d.example\r\n\r\n");
      const next = await deadline(raw.readMessage(), HANG, "the next answer");
      assert.equal(next?.status, 200);
      assert.equal(seen.length, 1);
      assert.equal(seen[0].method, "GET");
    } finally {
      raw.close();
    }
  });
});

Deno.test("hub sets X-Request-Id, the queue-time header and Server-Timing", async () => {
  await withOrigin(async ({ hubUrl, client, seen }) => {
    const res = await fetch(`${hubUrl}/info`, { client });
    assert.equal(res.status, 200);
    await res.body?.cancel();
    const id = res.headers.get("x-request-id");
    assert.match(id ?? "", UUID);
    const got = seen.at(-1)!.headers;
    assert.equal(got.get("x-request-id"), id);
    assert.match(got.get(QUEUE_TIME_HEADER) ?? "", /^\d+(\.\d+)?$/);
    assert.match(
      res.headers.get("server-timing") ?? "",
      /queue;dur=[\d.]+.*worker;dur=[\d.]+/,
    );

    const given = await fetch(`${hubUrl}/info`, {
      headers: { "x-request-id": "client-chosen-42" },
      client,
    });
    await given.body?.cancel();
    assert.equal(given.headers.get("x-request-id"), "client-chosen-42");
    assert.equal(seen.at(-1)!.headers.get("x-request-id"), "client-chosen-42");
  });
});

Deno.test("hub reuses the relay connections to Deno.serve across requests", async () => {
  await withOrigin(async ({ server, hubUrl, client, seen, relayPairs }) => {
    for (let i = 0; i < 8; i++) {
      const res = await fetch(`${hubUrl}/hello`, { client });
      assert.equal(await res.text(), "hello");
    }
    assert.equal(seen.length, 8);
    // Deno.serve saw at most `relayPairs` distinct client sockets, and the
    // hub still holds every relay connection.
    const ports = new Set(seen.map((s) => s.remotePort));
    assert.ok(ports.size <= relayPairs, `ports: ${[...ports]}`);
    await waitFor(() => server.hub.stats.idle === relayPairs, "slots idle");
    assert.equal(server.hub.stats.slots, relayPairs);
  });
});

Deno.test({
  name: "hub serves curl with a Deno.serve worker",
  ignore: !HAS_CURL,
  async fn() {
    await withOrigin(async ({ hubUrl, seen }) => {
      const get = parseCurlInclude(
        (await curl(["-i", `${hubUrl}/q?a=b`])).stdout,
      );
      assert.equal(get.status, 200);
      assert.deepEqual(JSON.parse(dec.decode(get.body)), {
        method: "GET",
        target: "?a=b",
      });
      assert.match(field(get.headers, "x-request-id") ?? "", UUID);
      assert.ok(field(get.headers, "server-timing"));

      const small = await curl([
        "--data-binary",
        "@-",
        "-H",
        "content-type: application/octet-stream",
        `${hubUrl}/upload`,
      ], enc.encode("hello curl"));
      assert.equal(small.code, 0, small.stderr);
      const s = JSON.parse(dec.decode(small.stdout));
      assert.equal(s.length, 10);
      assert.equal(s.sha256, await sha256(enc.encode("hello curl")));

      const big = pattern(5 * 1024 * 1024);
      const upload = await curl([
        "--data-binary",
        "@-",
        "-H",
        "transfer-encoding: chunked",
        `${hubUrl}/upload`,
      ], big);
      assert.equal(upload.code, 0, upload.stderr);
      const u = JSON.parse(dec.decode(upload.stdout));
      assert.equal(u.length, big.length);
      assert.equal(u.sha256, await sha256(big));
      assert.equal(u.transferEncoding, "chunked");

      const head = parseCurlInclude(
        (await curl(["-I", `${hubUrl}/hello`])).stdout,
      );
      assert.equal(head.status, 200);
      assert.equal(field(head.headers, "content-length"), "5");
      assert.equal(head.body.length, 0);

      const cookies = parseCurlInclude(
        (await curl(["-i", `${hubUrl}/cookies`])).stdout,
      );
      assert.deepEqual(
        cookies.headers.filter(([n]) => n === "set-cookie").map(([, v]) => v),
        ["a=1; Path=/", "b=2; HttpOnly"],
      );

      const hop = await curl([
        "-i",
        "-H",
        "Connection: foo",
        "-H",
        "Foo: secret",
        "-H",
        "Proxy-Authorization: Basic eDp5",
        "-H",
        "TE: trailers",
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        `${hubUrl}/hop`,
      ]);
      const h = parseCurlInclude(hop.stdout);
      assert.equal(h.status, 200);
      assert.equal(field(h.headers, "x-secret"), undefined);
      assert.equal(field(h.headers, "keep-alive"), undefined);
      assert.equal(field(h.headers, "x-end-to-end"), "kept");
      const sent = seen.at(-1)!.headers;
      assert.equal(sent.get("foo"), null);
      assert.equal(sent.get("proxy-authorization"), null);
      assert.equal(sent.get("te"), null);
      assert.equal(sent.get("x-forwarded-for"), "127.0.0.1");
    });
  },
});

// --- 2. Our worker runner in front of real HTTP clients ---------------------

interface RunnerCtx {
  relay: PairingRelay;
  url: string;
  client: Deno.HttpClient;
  worker: WorkerHandle;
  errors: [unknown, string][];
  releaseStream(): void;
}

function runnerHandler(
  streamGate: Promise<void>,
): (req: Request) => Promise<Response> {
  return async (req) => {
    const url = new URL(req.url);
    switch (url.pathname) {
      case "/hello":
        return new Response(`hello${url.search}`);
      case "/sized":
        return new Response(req.method === "HEAD" ? null : "sized", {
          headers: { "content-length": "5" },
        });
      case "/echo": {
        const body = await req.bytes();
        return new Response(body, {
          headers: {
            "x-request-content-length": req.headers.get("content-length") ??
              "none",
            "x-request-chunked": String(
              req.headers.get("transfer-encoding") === "chunked",
            ),
          },
        });
      }
      case "/stream":
        return new Response(
          new ReadableStream<Uint8Array>({
            async start(controller) {
              controller.enqueue(enc.encode("one\n"));
              await streamGate;
              controller.enqueue(enc.encode("two\n"));
              controller.close();
            },
          }),
        );
      case "/throw":
        throw new Error("handler exploded");
      case "/no-content":
        return new Response(null, { status: 204 });
      default:
        return new Response("not found", { status: 404 });
    }
  };
}

async function withRunner(fn: (ctx: RunnerCtx) => Promise<void>) {
  const relay = pairingRelay();
  const gate = Promise.withResolvers<void>();
  const errors: [unknown, string][] = [];
  const worker = connectWorker(runnerHandler(gate.promise), {
    hostname: "127.0.0.1",
    port: relay.workerAddr.port,
    concurrency: 2,
    minBackoff: 10,
    maxBackoff: 100,
    onError: (e, c) => errors.push([e, c]),
  });
  const client = Deno.createHttpClient({});
  try {
    await waitFor(() => worker.connected === 2, "worker connected");
    await deadline(
      fn({
        relay,
        url: `http://127.0.0.1:${relay.clientAddr.port}`,
        client,
        worker,
        errors,
        releaseStream: gate.resolve,
      }),
      HANG * 2,
      "test body",
    );
  } finally {
    gate.resolve();
    client.close();
    worker.close();
    await worker.finished;
    await relay.close();
  }
}

Deno.test("worker runner answers fetch GET and POST echo with length and chunked bodies", async () => {
  await withRunner(async ({ url, client }) => {
    const get = await fetch(`${url}/hello?x=1`, { client });
    assert.equal(get.status, 200);
    assert.equal(await get.text(), "hello?x=1");

    const data = pattern(200_000);
    const post = await fetch(`${url}/echo`, {
      method: "POST",
      body: data,
      client,
    });
    assert.equal(post.status, 200);
    assert.equal(post.headers.get("x-request-content-length"), "200000");
    assert.equal(post.headers.get("x-request-chunked"), "false");
    assert.equal(await sha256(await post.bytes()), await sha256(data));

    const parts = [enc.encode("chunk-a "), pattern(50_000), enc.encode(" z")];
    let i = 0;
    const chunked = await fetch(`${url}/echo`, {
      method: "POST",
      body: new ReadableStream<Uint8Array>({
        pull(c) {
          if (i < parts.length) c.enqueue(parts[i++]);
          else c.close();
        },
      }),
      duplex: "half",
      client,
    } as RequestInit);
    assert.equal(chunked.status, 200);
    assert.equal(chunked.headers.get("x-request-content-length"), "none");
    assert.equal(chunked.headers.get("x-request-chunked"), "true");
    const back = await chunked.bytes();
    assert.equal(back.length, 50_010);
    assert.equal(dec.decode(back.subarray(0, 8)), "chunk-a ");
    assert.equal(dec.decode(back.subarray(-2)), " z");
  });
});

Deno.test("worker runner streams a handler's ReadableStream as a chunked response", async () => {
  await withRunner(async ({ relay, releaseStream }) => {
    const raw = await RawSocket.connect(relay.clientAddr.port);
    try {
      await raw.write("GET /stream HTTP/1.1\r\nHost: w\r\n\r\n");
      const head = await deadline(raw.readHead(), HANG, "stream head");
      assert.match(head ?? "", /^HTTP\/1\.1 200 /);
      assert.match(head ?? "", /\r\ntransfer-encoding: chunked\r\n/i);
      // The first chunk arrives while the handler still holds the second.
      const first = await deadline(raw.readExactly(7), HANG, "first chunk");
      assert.equal(latin1Text(first), "4\r\none\n");
      releaseStream();
      const rest = latin1Text(
        await deadline(raw.readExactly(16), HANG, "rest"),
      );
      assert.equal(rest, "\r\n4\r\ntwo\n\r\n0\r\n\r\n");
    } finally {
      raw.close();
    }
  });
});

Deno.test("worker runner answers 500 when the handler throws and serves the next request", async () => {
  await withRunner(async ({ relay, url, client, errors }) => {
    const res = await fetch(`${url}/throw`, { client });
    assert.equal(res.status, 500);
    assert.equal(await res.text(), "500 Internal Server Error\n");
    assert.ok(
      errors.some(([e, c]) =>
        c === "handler" && (e as Error).message === "handler exploded"
      ),
    );
    // Same connection: two requests written one after the other.
    const raw = await RawSocket.connect(relay.clientAddr.port);
    try {
      await raw.write("GET /throw HTTP/1.1\r\nHost: w\r\n\r\n");
      const a = await raw.readMessage();
      assert.equal(a?.status, 500);
      await raw.write("GET /hello HTTP/1.1\r\nHost: w\r\n\r\n");
      const b = await raw.readMessage();
      assert.equal(b?.status, 200);
      assert.equal(dec.decode(b!.body), "hello");
    } finally {
      raw.close();
    }
  });
});

Deno.test("worker runner answers HEAD and 204 without a body", async () => {
  await withRunner(async ({ relay, url, client }) => {
    const head = await fetch(`${url}/sized`, { method: "HEAD", client });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get("content-length"), "5");
    assert.equal((await head.bytes()).length, 0);
    const nc = await fetch(`${url}/no-content`, { client });
    assert.equal(nc.status, 204);
    assert.equal(nc.body, null);

    const raw = await RawSocket.connect(relay.clientAddr.port);
    try {
      await raw.write(
        "HEAD /sized HTTP/1.1\r\nHost: w\r\n\r\n" +
          "HEAD /hello HTTP/1.1\r\nHost: w\r\n\r\n" +
          "GET /no-content HTTP/1.1\r\nHost: w\r\n\r\n" +
          "GET /hello HTTP/1.1\r\nHost: w\r\n\r\n",
      );
      const a = await raw.readMessage(true);
      assert.equal(a?.status, 200);
      assert.equal(field(a!.headers, "content-length"), "5");
      const b = await raw.readMessage(true);
      assert.equal(b?.status, 200);
      const c = await raw.readMessage();
      assert.equal(c?.status, 204);
      assert.equal(field(c!.headers, "content-length"), undefined);
      assert.equal(field(c!.headers, "transfer-encoding"), undefined);
      // Had any of those carried body bytes, this would not parse.
      const d = await raw.readMessage();
      assert.equal(d?.status, 200);
      assert.equal(dec.decode(d!.body), "hello");
    } finally {
      raw.close();
    }
  });
});

Deno.test("worker runner keeps one client connection alive across requests", async () => {
  await withRunner(async ({ relay, url, client }) => {
    for (let i = 0; i < 5; i++) {
      const res = await fetch(`${url}/hello?n=${i}`, { client });
      assert.equal(await res.text(), `hello?n=${i}`);
    }
    assert.equal(relay.clients, 1);

    // A GET, then a POST with a body once the first response is in.
    const raw = await RawSocket.connect(relay.clientAddr.port);
    try {
      await raw.write("GET /hello?p=1 HTTP/1.1\r\nHost: w\r\n\r\n");
      const a = await raw.readMessage();
      assert.equal(dec.decode(a!.body), "hello?p=1");
      await raw.write(
        "POST /echo HTTP/1.1\r\nHost: w\r\nContent-Length: 3\r\n\r\nabc",
      );
      const b = await raw.readMessage();
      assert.equal(b?.status, 200);
      assert.equal(dec.decode(b!.body), "abc");
    } finally {
      raw.close();
    }
    assert.equal(relay.clients, 2);
  });
});

Deno.test({
  name: "worker runner answers a pipelined request that has a body",
  async fn() {
    await withRunner(async ({ relay }) => {
      const raw = await RawSocket.connect(relay.clientAddr.port);
      try {
        await raw.write(
          "GET /hello?p=1 HTTP/1.1\r\nHost: w\r\n\r\n" +
            "POST /echo HTTP/1.1\r\nHost: w\r\nContent-Length: 3\r\n\r\nabc",
        );
        const a = await raw.readMessage();
        assert.equal(dec.decode(a!.body), "hello?p=1");
        const b = await deadline(raw.readMessage(), 5_000, "second response");
        assert.equal(b?.status, 200);
        assert.equal(dec.decode(b!.body), "abc");
      } finally {
        raw.close();
      }
    });
  },
});

Deno.test({
  name: "worker runner answers curl and reuses the connection for two URLs",
  ignore: !HAS_CURL,
  async fn() {
    await withRunner(async ({ relay, url }) => {
      const before = relay.clients;
      const out = await curl([
        "-v",
        `${url}/hello?a=1`,
        `${url}/hello?b=2`,
      ]);
      assert.equal(out.code, 0, out.stderr);
      assert.equal(dec.decode(out.stdout), "hello?a=1hello?b=2");
      assert.match(out.stderr, /Re-using existing connection/i);
      assert.equal(relay.clients - before, 1);

      const post = await curl([
        "-i",
        "--data-binary",
        "@-",
        "-H",
        "transfer-encoding: chunked",
        `${url}/echo`,
      ], enc.encode("curl chunked body"));
      const p = parseCurlInclude(post.stdout);
      assert.equal(p.status, 200);
      assert.equal(field(p.headers, "x-request-chunked"), "true");
      assert.equal(dec.decode(p.body), "curl chunked body");

      const thrown = parseCurlInclude(
        (await curl(["-i", `${url}/throw`])).stdout,
      );
      assert.equal(thrown.status, 500);

      const head = parseCurlInclude(
        (await curl(["-I", `${url}/sized`])).stdout,
      );
      assert.equal(head.status, 200);
      assert.equal(field(head.headers, "content-length"), "5");
      assert.equal(head.body.length, 0);
    });
  },
});
