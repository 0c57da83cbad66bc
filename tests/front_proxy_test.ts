// Real reverse proxies IN FRONT of the hub, as deployments put them:
// consumer → HAProxy or nginx (Debian's, child processes with generated
// configs) → hub → in-process worker. The proxies are HTTP clients of the
// hub's consumer side that we did not write. For each proxy: large bodies
// both ways byte for byte over a reused proxy→hub connection,
// X-Forwarded-* with and without `trustForwarded` (the proxy terminates
// TLS), the consumer named by X-Forwarded-For or, with `forwardedField`,
// by Forwarded (which the proxies append to as well), a streamed response that arrives in pieces, a WebSocket with its
// close codes, the hub's 503 for a full queue, and a consumer that leaves
// mid-request aborting the worker handler's signal.

import assert from "node:assert/strict";
import { join } from "node:path";
import type { HubServer, ServeHubOptions } from "../hub.ts";
import type { FetchHandler, WorkerHandle } from "../worker.ts";
import { ENGINE, startHub, startWorker } from "./_hub.ts";
import { freePort } from "./_procs.ts";
import { bytes, sha256 } from "./_data.ts";
import { wsClient } from "./_ws_client.ts";
import { deadline, pipeBoth, waitFor } from "./_relay.ts";
import {
  haveOpenssl,
  makeCerts,
  type TestCerts,
} from "./fixtures/tls/make_certs.ts";

const BINARIES = {
  haproxy: "/usr/sbin/haproxy",
  nginx: "/usr/sbin/nginx",
} as const;
type Kind = keyof typeof BINARIES;

/** Hang guard for each wait; never a timing assertion. */
const HANG = 20_000;
/**
 * The proxies dial the hub from this loopback address, so the worker can
 * tell the proxy's address (the hub's peer) from the client's (127.0.0.1).
 */
const PROXY_SOURCE = "127.0.0.2";
/** The Host the proxies send upstream; the public one goes in X-Forwarded-Host. */
const UPSTREAM_HOST = "hub.internal";
/** `Deno.upgradeWebSocket` needs a request `Deno.serve` made. */
const SERVE = ENGINE !== "inline";

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

let made: Promise<TestCerts> | undefined;
function certs(): Promise<TestCerts> {
  return made ??= makeCerts();
}

/** A promise with its resolve, for steps the test releases one at a time. */
function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((r) => open = r);
  return { promise, open };
}

function haproxyConfig(
  port: number,
  upstream: number,
  tls: { port: number; pem: string } | undefined,
): string {
  return [
    "global",
    "  nbthread 1",
    "defaults",
    "  mode http",
    "  option http-keep-alive",
    // Without it HAProxy takes the client's close as a half-close (its
    // HTTP-compliant default) and waits for the response, so the hub never
    // hears that the client left (seen here: the handler's signal did not
    // abort within 20 s). Deployments that run long jobs set it.
    "  option abortonclose",
    "  timeout connect 5s",
    "  timeout client 60s",
    "  timeout server 60s",
    // Applies once a WebSocket is up (both sides then count as one tunnel).
    "  timeout tunnel 60s",
    "  timeout http-keep-alive 60s",
    "frontend front",
    `  bind 127.0.0.1:${port}`,
    ...(tls ? [`  bind 127.0.0.1:${tls.port} ssl crt ${tls.pem}`] : []),
    // Appends the client's address as a new X-Forwarded-For field.
    "  option forwardfor",
    "  http-request set-header X-Forwarded-Proto https if { ssl_fc }",
    "  http-request set-header X-Forwarded-Proto http if !{ ssl_fc }",
    // Before Host is replaced: the public name the client asked for.
    "  http-request set-header X-Forwarded-Host %[req.hdr(host)]",
    // HAProxy 2.6 has no `option forwarded`: a field line of its own after
    // the client's, which the hub reads as the last element.
    "  http-request add-header Forwarded for=%[src]",
    `  http-request set-header Host ${UPSTREAM_HOST}`,
    "  default_backend hub",
    "backend hub",
    `  server hub 127.0.0.1:${upstream} source ${PROXY_SOURCE}`,
    "",
  ].join("\n");
}

function nginxConfig(
  dir: string,
  port: number,
  upstream: number,
  tls: { port: number; cert: string; key: string } | undefined,
): string {
  return [
    "daemon off;",
    "master_process off;",
    "worker_processes 1;",
    `pid ${join(dir, "nginx.pid")};`,
    "error_log stderr warn;",
    "events { worker_connections 256; }",
    "http {",
    "  access_log off;",
    `  client_body_temp_path ${join(dir, "body")};`,
    `  proxy_temp_path ${join(dir, "proxy")};`,
    `  fastcgi_temp_path ${join(dir, "fastcgi")};`,
    `  uwsgi_temp_path ${join(dir, "uwsgi")};`,
    `  scgi_temp_path ${join(dir, "scgi")};`,
    // Upgrade for a WebSocket handshake; otherwise no Connection field at
    // all, which upstream keep-alive needs.
    "  map $http_upgrade $connection_upgrade {",
    "    default upgrade;",
    `    "" "";`,
    "  }",
    // nginx appends nothing to Forwarded by itself: the client's value,
    // then the address the proxy saw.
    "  map $http_forwarded $proxy_add_forwarded {",
    `    "" "for=$remote_addr;proto=$scheme";`,
    `    default "$http_forwarded, for=$remote_addr;proto=$scheme";`,
    "  }",
    "  upstream hub {",
    `    server 127.0.0.1:${upstream} max_fails=0;`,
    "    keepalive 8;",
    "  }",
    "  server {",
    `    listen 127.0.0.1:${port};`,
    ...(tls
      ? [
        `    listen 127.0.0.1:${tls.port} ssl;`,
        `    ssl_certificate ${tls.cert};`,
        `    ssl_certificate_key ${tls.key};`,
      ]
      : []),
    "    client_max_body_size 64m;",
    "    proxy_http_version 1.1;",
    `    proxy_bind ${PROXY_SOURCE};`,
    `    proxy_set_header Host ${UPSTREAM_HOST};`,
    "    proxy_set_header Upgrade $http_upgrade;",
    "    proxy_set_header Connection $connection_upgrade;",
    "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    "    proxy_set_header X-Forwarded-Proto $scheme;",
    "    proxy_set_header X-Forwarded-Host $http_host;",
    "    proxy_set_header Forwarded $proxy_add_forwarded;",
    "    location / {",
    "      proxy_pass http://hub;",
    "    }",
    // Streamed responses: the usual setting for event streams (nginx
    // buffers proxied responses by default).
    "    location /sse/ {",
    "      proxy_pass http://hub;",
    "      proxy_buffering off;",
    "    }",
    "  }",
    "}",
    "",
  ].join("\n");
}

/** A proxy child process listening on loopback. */
interface Proxy {
  /** Plain HTTP port. */
  port: number;
  /** TLS port, when asked for. */
  tlsPort?: number;
  /** What it printed so far. */
  output(): string;
  /** Stops it and waits for its exit; never throws. */
  close(): Promise<void>;
}

async function startProxy(
  kind: Kind,
  dir: string,
  upstream: number,
  withTls: boolean,
): Promise<Proxy> {
  const port = freePort();
  let tlsPort: number | undefined;
  let config: string;
  if (kind === "haproxy") {
    let tls;
    if (withTls) {
      const c = await certs();
      const pem = join(dir, "proxy.pem");
      // HAProxy reads the certificate and its key from one file.
      await Deno.writeTextFile(pem, `${c.cert.trim()}\n${c.key.trim()}\n`);
      tls = { port: tlsPort = freePort(), pem };
    }
    config = haproxyConfig(port, upstream, tls);
  } else {
    let tls;
    if (withTls) {
      const c = await certs();
      const cert = join(dir, "proxy.crt");
      const key = join(dir, "proxy.key");
      await Deno.writeTextFile(cert, c.cert);
      await Deno.writeTextFile(key, c.key);
      tls = { port: tlsPort = freePort(), cert, key };
    }
    config = nginxConfig(dir, port, upstream, tls);
  }
  const file = join(dir, `${kind}.conf`);
  await Deno.writeTextFile(file, config);
  const args = kind === "haproxy"
    ? ["-db", "-f", file]
    : ["-e", "stderr", "-p", dir, "-c", file];
  const child = new Deno.Command(BINARIES[kind], {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let printed = "";
  const decoder = new TextDecoder();
  const read = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) {
      printed += decoder.decode(chunk, { stream: true });
    }
  };
  const pipes = Promise.all([read(child.stdout), read(child.stderr)]);
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const close = async () => {
    if (!exited) {
      try {
        child.kill("SIGTERM");
      } catch {
        // it exited meanwhile
      }
      try {
        await deadline(status, 10_000, `${kind} to exit`);
      } catch {
        child.kill("SIGKILL");
      }
    }
    await status;
    await pipes;
  };
  const connectable = async (p: number) => {
    if (exited) {
      throw new Error(`${kind} exited at start:\n${printed}`);
    }
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port: p })).close();
      return true;
    } catch {
      return false;
    }
  };
  try {
    await waitFor(() => connectable(port), `${kind} listening`, HANG);
    if (tlsPort !== undefined) {
      const p = tlsPort;
      await waitFor(() => connectable(p), `${kind} listening on TLS`, HANG);
    }
  } catch (error) {
    await close();
    throw new Error(`${(error as Error).message}\n${printed}`);
  }
  return { port, tlsPort, output: () => printed, close };
}

/** A TCP relay that counts the connections it accepts (proxy → hub). */
interface CountingRelay {
  port: number;
  readonly accepted: number;
  close(): Promise<void>;
}

function countingRelay(target: number): CountingRelay {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open = new Set<Deno.Conn>();
  const pipes = new Set<Promise<void>>();
  let accepted = 0;
  const quiet = (c: Deno.Conn) => {
    try {
      c.close();
    } catch {
      // already closed
    }
  };
  const relay = async (c: Deno.Conn) => {
    open.add(c);
    let up: Deno.Conn | undefined;
    try {
      up = await Deno.connect({ hostname: "127.0.0.1", port: target });
      open.add(up);
      await pipeBoth(c, up);
    } catch {
      quiet(c);
    } finally {
      open.delete(c);
      if (up) open.delete(up);
    }
  };
  const loop = (async () => {
    try {
      for await (const c of listener) {
        accepted++;
        const p = relay(c);
        pipes.add(p);
        p.finally(() => pipes.delete(p));
      }
    } catch {
      // listener closed
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    get accepted() {
      return accepted;
    },
    async close() {
      try {
        listener.close();
      } catch {
        // already closed
      }
      await loop;
      for (const c of open) quiet(c);
      await Promise.all([...pipes]);
    },
  };
}

interface Front {
  server: HubServer;
  proxy: Proxy;
  /** `http://127.0.0.1:PORT` of the proxy. */
  url: string;
  /** `https://127.0.0.1:PORT` of the proxy, with `tls`. */
  tlsUrl: string;
  /** Trusts the test CA, with `tls`. */
  client?: Deno.HttpClient;
  /** Between proxy and hub, with `relay`. */
  relay?: CountingRelay;
}

/**
 * consumer → proxy (`kind`) → hub → one in-process worker (one slot)
 * running `handler`; everything is stopped and removed afterwards.
 */
async function withFront(
  kind: Kind,
  setup: {
    hub?: ServeHubOptions;
    handler: FetchHandler;
    tls?: boolean;
    relay?: boolean;
  },
  fn: (front: Front) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "pothead-front-" });
  const server = startHub({ queueTimeout: HANG, ...setup.hub });
  let worker: WorkerHandle | undefined;
  let relay: CountingRelay | undefined;
  let proxy: Proxy | undefined;
  let client: Deno.HttpClient | undefined;
  try {
    worker = startWorker(server, setup.handler);
    await waitFor(() => server.hub.stats.idle === 1, "the worker's slot", HANG);
    if (setup.relay) relay = countingRelay(server.addr.port);
    proxy = await startProxy(
      kind,
      dir,
      relay?.port ?? server.addr.port,
      setup.tls ?? false,
    );
    if (setup.tls) {
      client = Deno.createHttpClient({ caCerts: [(await certs()).ca] });
    }
    const p = proxy;
    await deadline(
      fn({
        server,
        proxy: p,
        url: `http://127.0.0.1:${p.port}`,
        tlsUrl: `https://127.0.0.1:${p.tlsPort}`,
        client,
        relay,
      }),
      HANG * 3,
      "the test body",
    ).catch((error) => {
      throw new Error(`${(error as Error).stack}\n--- ${kind}:\n${p.output()}`);
    });
  } finally {
    await proxy?.close();
    await relay?.close();
    client?.close();
    worker?.close();
    await worker?.finished;
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
}

/** `Deno.test` per proxy, skipped where its binary is missing. */
function test(
  name: string,
  fn: (kind: Kind) => Promise<void>,
  options: { ignore?: boolean } = {},
): void {
  for (const kind of Object.keys(BINARIES) as Kind[]) {
    Deno.test({
      name: `${kind} in front: ${name}`,
      ignore: !exists(BINARIES[kind]) || (options.ignore ?? false),
      sanitizeOps: true,
      sanitizeResources: true,
      fn: () => fn(kind),
    });
  }
}

// 1. Bodies of a few MiB both ways, and proxy → hub keep-alive.

test("large bodies pass byte for byte on a reused hub connection", async (kind) => {
  const download = bytes(3 * 1024 * 1024 + 17, 7);
  const received: { length: number; sha: string }[] = [];
  const handler: FetchHandler = async (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/blob") return new Response(download);
    if (path === "/echo") {
      const body = new Uint8Array(await req.arrayBuffer());
      const sha = await sha256(body);
      received.push({ length: body.length, sha });
      return new Response(body, { headers: { "x-sha256": sha } });
    }
    return new Response("small");
  };
  await withFront(kind, { handler, relay: true }, async ({ url, relay }) => {
    const expected = await sha256(download);
    let requests = 0;
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`${url}/blob`);
      requests++;
      assert.equal(res.status, 200);
      const got = new Uint8Array(await res.arrayBuffer());
      assert.equal(got.length, download.length);
      assert.equal(await sha256(got), expected);
    }

    // A body with a length, then a streamed one (chunked from the client:
    // nginx reads it whole and sends it on with a length, HAProxy passes
    // it on chunked, so the hub reads both framings).
    const upload = bytes(4 * 1024 * 1024 + 3, 11);
    const uploadSha = await sha256(upload);
    const res = await fetch(`${url}/echo`, { method: "POST", body: upload });
    requests++;
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("x-sha256"), uploadSha);
    const echoed = new Uint8Array(await res.arrayBuffer());
    assert.equal(await sha256(echoed), uploadSha);

    const streamed = bytes(2 * 1024 * 1024 + 5, 13);
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        for (let at = 0; at < streamed.length; at += 100_000) {
          c.enqueue(streamed.slice(at, at + 100_000));
        }
        c.close();
      },
    });
    const res2 = await fetch(`${url}/echo`, { method: "POST", body });
    requests++;
    assert.equal(res2.status, 200);
    const echoed2 = new Uint8Array(await res2.arrayBuffer());
    assert.equal(await sha256(echoed2), await sha256(streamed));

    assert.deepEqual(received.map((r) => [r.length, r.sha]), [
      [upload.length, uploadSha],
      [streamed.length, await sha256(streamed)],
    ]);

    for (let i = 0; i < 4; i++) {
      const small = await fetch(`${url}/small`);
      requests++;
      assert.equal(await small.text(), "small");
    }
    // One request at a time: a proxy that keeps its hub connection alive
    // needs one (or two, should a client connection have been replaced)
    // for all of them; one that does not would open one per request.
    assert.ok(
      relay!.accepted >= 1 && relay!.accepted <= 2,
      `${relay!.accepted} proxy→hub connections for ${requests} requests`,
    );
  });
});

// 2. X-Forwarded-*: the proxy terminates TLS and sets them; the hub keeps
// them and appends the proxy's address only when told to trust them.

interface Forwarded {
  for: string | null;
  proto: string | null;
  host: string | null;
  hostField: string | null;
}

function recordForwarded(seen: Forwarded[]): FetchHandler {
  return (req) => {
    seen.push({
      for: req.headers.get("x-forwarded-for"),
      proto: req.headers.get("x-forwarded-proto"),
      host: req.headers.get("x-forwarded-host"),
      hostField: req.headers.get("host"),
    });
    return new Response("seen");
  };
}

test(
  "with trustForwarded the worker sees the proxy's X-Forwarded-* and the proxy appended",
  async (kind) => {
    const seen: Forwarded[] = [];
    await withFront(
      kind,
      {
        hub: { trustForwarded: true },
        handler: recordForwarded(seen),
        tls: true,
      },
      async ({ tlsUrl, client, proxy }) => {
        const res = await fetch(`${tlsUrl}/who`, { client });
        assert.equal(res.status, 200);
        assert.equal(await res.text(), "seen");
        assert.deepEqual(seen, [{
          // The client (as the proxy saw it), then the proxy (as the hub saw it).
          for: `127.0.0.1, ${PROXY_SOURCE}`,
          proto: "https",
          host: `127.0.0.1:${proxy.tlsPort}`,
          hostField: UPSTREAM_HOST,
        }]);
      },
    );
  },
  { ignore: !haveOpenssl() },
);

test(
  "without trustForwarded the hub replaces the proxy's X-Forwarded-*",
  async (kind) => {
    const seen: Forwarded[] = [];
    await withFront(
      kind,
      { handler: recordForwarded(seen), tls: true },
      async ({ tlsUrl, client }) => {
        // A client's own fields, which the proxy passes on or overwrites.
        const res = await fetch(`${tlsUrl}/who`, {
          client,
          headers: {
            "x-forwarded-for": "203.0.113.9",
            "x-forwarded-host": "spoofed.example",
            "x-forwarded-proto": "gopher",
          },
        });
        assert.equal(res.status, 200);
        assert.equal(await res.text(), "seen");
        // All from the hub: its peer (the proxy), its own scheme, the Host
        // it heard.
        assert.deepEqual(seen, [{
          for: PROXY_SOURCE,
          proto: "http",
          host: UPSTREAM_HOST,
          hostField: UPSTREAM_HOST,
        }]);
      },
    );
  },
  { ignore: !haveOpenssl() },
);

test("with trustedProxies the consumer is the address the trusted proxy saw, and a chain of them is walked", async (kind) => {
  const seen: { for: string | null; remote: string }[] = [];
  const clients: (string | null)[] = [];
  // The consumer dials from its own loopback address, so it can be told
  // from the proxy's (127.0.0.2) and from 127.0.0.1.
  const consumer = Deno.createHttpClient({ localAddress: "127.0.0.3" });
  const spoofed = { "x-forwarded-for": "203.0.113.9" };
  try {
    for (
      const [trusted, expected, directFor] of [
        // The proxy alone is trusted: the consumer is who dialled it, and
        // what that consumer wrote itself does not count. Straight to the
        // hub, 127.0.0.3 is not trusted: its X-Forwarded-For is replaced.
        [[PROXY_SOURCE], "127.0.0.3", "127.0.0.3"],
        // 127.0.0.3 is a trusted proxy too (say, a CDN in front): its word
        // is taken, one hop further, through the proxy and straight.
        [
          [PROXY_SOURCE, "127.0.0.3/32"],
          "203.0.113.9",
          "203.0.113.9, 127.0.0.3",
        ],
      ] as const
    ) {
      seen.length = 0;
      clients.length = 0;
      await withFront(
        kind,
        {
          hub: {
            trustedProxies: [...trusted],
            onAccess: (r) => void clients.push(r.client),
          },
          handler: (req, info) => {
            seen.push({
              for: req.headers.get("x-forwarded-for"),
              remote: info.remoteAddr.hostname,
            });
            return new Response("seen");
          },
        },
        async ({ url, server }) => {
          const via = await fetch(`${url}/via`, {
            client: consumer,
            headers: spoofed,
          });
          assert.equal(await via.text(), "seen");
          const direct = await fetch(`http://127.0.0.1:${server.addr.port}/`, {
            client: consumer,
            headers: spoofed,
          });
          assert.equal(await direct.text(), "seen");
          await waitFor(() => clients.length === 2, "two access records", HANG);
        },
      );
      assert.deepEqual(clients, [expected, expected], String(trusted));
      assert.deepEqual(seen, [
        // Kept from the trusted proxy, with what it appended, and the
        // proxy appended by the hub; the handler's remoteAddr is the
        // consumer the hub worked out.
        {
          for: `203.0.113.9, 127.0.0.3, ${PROXY_SOURCE}`,
          remote: expected,
        },
        { for: directFor, remote: expected },
      ]);
    }
  } finally {
    consumer.close();
  }
});

test('with forwardedField "forwarded" the consumer is read from Forwarded\'s for= and the hub appends its element', async (kind) => {
  const seen: { forwarded: string | null; remote: string }[] = [];
  const clients: (string | null)[] = [];
  const consumer = Deno.createHttpClient({ localAddress: "127.0.0.3" });
  // A forged Forwarded, and an X-Forwarded-For that names yet another
  // address: in this mode only Forwarded counts.
  const forged = {
    forwarded: "for=203.0.113.9",
    "x-forwarded-for": "198.51.100.7",
  };
  // A stray quote that would swallow what the proxy appends after it.
  const quote = { forwarded: 'for="' };
  try {
    for (
      const [trusted, expected] of [
        // The proxy alone is trusted: the consumer is who dialled it.
        [[PROXY_SOURCE], "127.0.0.3"],
        // 127.0.0.3 is trusted too: its word is taken.
        [[PROXY_SOURCE, "127.0.0.3/32"], "203.0.113.9"],
      ] as const
    ) {
      seen.length = 0;
      clients.length = 0;
      let direct = "";
      await withFront(
        kind,
        {
          hub: {
            trustedProxies: [...trusted],
            forwardedField: "forwarded",
            onAccess: (r) => void clients.push(r.client),
          },
          handler: (req, info) => {
            seen.push({
              forwarded: req.headers.get("forwarded"),
              remote: info.remoteAddr.hostname,
            });
            return new Response("seen");
          },
        },
        async ({ url, server }) => {
          direct = `127.0.0.1:${server.addr.port}`;
          for (
            const [target, headers] of [
              [`${url}/via`, forged],
              [`http://${direct}/`, forged],
              [`${url}/quote`, quote],
            ] as const
          ) {
            const res = await fetch(target, { client: consumer, headers });
            assert.equal(await res.text(), "seen");
          }
          await waitFor(
            () => clients.length === 3,
            "three access records",
            HANG,
          );
        },
      );
      // nginx writes proto= after for=; HAProxy only for=.
      const proxied = kind === "nginx" ? ";proto=http" : "";
      // The hub's element: a host with a port is no token, so quoted.
      const hub = (peer: string, host: string) =>
        `for=${peer};proto=http;host=${
          host.includes(":") ? `"${host}"` : host
        }`;
      const trustsConsumer = trusted.length === 2;
      assert.deepEqual(
        clients,
        [expected, expected, "127.0.0.3"],
        String(trusted),
      );
      assert.deepEqual(seen, [
        // Kept from the trusted proxy, with what it appended, and the
        // hub's element for the proxy.
        {
          forwarded: `for=203.0.113.9, for=127.0.0.3${proxied}, ${
            hub(PROXY_SOURCE, UPSTREAM_HOST)
          }`,
          remote: expected,
        },
        // Straight to the hub: kept only when 127.0.0.3 is trusted.
        {
          forwarded: trustsConsumer
            ? `for=203.0.113.9, ${hub("127.0.0.3", direct)}`
            : hub("127.0.0.3", direct),
          remote: expected,
        },
        // The stray quote spoils its own element only: the proxy's is read.
        {
          forwarded: `for=", for=127.0.0.3${proxied}, ${
            hub(PROXY_SOURCE, UPSTREAM_HOST)
          }`,
          remote: "127.0.0.3",
        },
      ]);
    }
  } finally {
    consumer.close();
  }
});

test("by default Forwarded is never read, even when it names another address through trusted proxies", async (kind) => {
  const seen: { forwarded: string | null; remote: string }[] = [];
  const clients: (string | null)[] = [];
  const consumer = Deno.createHttpClient({ localAddress: "127.0.0.3" });
  try {
    await withFront(
      kind,
      {
        // Read from Forwarded, this chain would name 203.0.113.9.
        hub: {
          trustedProxies: [PROXY_SOURCE, "127.0.0.3/32"],
          onAccess: (r) => void clients.push(r.client),
        },
        handler: (req, info) => {
          seen.push({
            forwarded: req.headers.get("forwarded"),
            remote: info.remoteAddr.hostname,
          });
          return new Response("seen");
        },
      },
      async ({ url }) => {
        const res = await fetch(`${url}/via`, {
          client: consumer,
          headers: { forwarded: "for=203.0.113.9" },
        });
        assert.equal(await res.text(), "seen");
        await waitFor(() => clients.length === 1, "the access record", HANG);
      },
    );
    // X-Forwarded-For holds only 127.0.0.3, a trusted address: the first.
    assert.deepEqual(clients, ["127.0.0.3"]);
    // Passed on as it came, from a trusted peer; the hub adds nothing.
    const proxied = kind === "nginx" ? ";proto=http" : "";
    assert.deepEqual(seen, [{
      forwarded: `for=203.0.113.9, for=127.0.0.3${proxied}`,
      remote: "127.0.0.3",
    }]);
  } finally {
    consumer.close();
  }
});

// 3. A streamed response arrives piece by piece: the worker sends each
// event only once the client has read the one before, so a proxy (or hub)
// that held the body until its end would stall the test.

test("a streamed response reaches the client before it ends", async (kind) => {
  const steps = [gate(), gate()];
  const handler: FetchHandler = (req) => {
    if (!new URL(req.url).pathname.startsWith("/sse/")) {
      return new Response("plain");
    }
    const encoder = new TextEncoder();
    let i = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(c) {
        if (i > 0) await steps[i - 1].promise;
        c.enqueue(encoder.encode(`data: event ${i}\n\n`));
        if (++i === 3) c.close();
      },
    });
    return new Response(body, {
      headers: { "content-type": "text/event-stream" },
    });
  };
  try {
    await withFront(kind, { handler }, async ({ url }) => {
      const res = await deadline(
        fetch(`${url}/sse/events`),
        HANG,
        `the response head through ${kind}`,
      );
      assert.equal(res.status, 200);
      const reader = res.body!.pipeThrough(new TextDecoderStream())
        .getReader();
      let text = "";
      const readUntil = async (want: string) => {
        while (!text.includes(want)) {
          const { done, value } = await deadline(
            reader.read(),
            HANG,
            `"${want.trim()}" through ${kind}`,
          );
          if (done) throw new Error(`the stream ended before "${want}"`);
          text += value;
        }
      };
      await readUntil("data: event 0\n\n");
      steps[0].open();
      await readUntil("data: event 1\n\n");
      steps[1].open();
      await readUntil("data: event 2\n\n");
      for (let r = await reader.read(); !r.done; r = await reader.read()) {
        text += r.value;
      }
      assert.equal(
        text,
        "data: event 0\n\ndata: event 1\n\ndata: event 2\n\n",
      );
    });
  } finally {
    for (const s of steps) s.open();
  }
});

// 4. A WebSocket: proxy → hub → worker, messages both ways, each side's
// close code reaching the other.

test("a WebSocket passes both ways with its close codes", async (kind) => {
  const workerSaw: { code: number; reason: string }[] = [];
  const handler: FetchHandler = (req) => {
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return new Response("plain");
    }
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.binaryType = "arraybuffer";
    socket.onmessage = (e) => {
      if (e.data === "bye") socket.close(4001, "worker says bye");
      else if (typeof e.data === "string") socket.send(`echo: ${e.data}`);
      else socket.send(new Uint8Array(e.data as ArrayBuffer).reverse());
    };
    socket.onclose = (e) => workerSaw.push({ code: e.code, reason: e.reason });
    return response;
  };
  await withFront(kind, { handler }, async ({ url }) => {
    const wsUrl = url.replace("http:", "ws:");
    // The worker closes.
    const a = await wsClient(`${wsUrl}/ws`, undefined, HANG);
    a.ws.send("hello");
    assert.equal(await a.next(), "echo: hello");
    const blob = bytes(100_000, 3);
    a.ws.send(blob);
    assert.deepEqual(await a.next(), blob.slice().reverse());
    a.ws.send("bye");
    const closeA = await deadline(a.closed, HANG, "the worker's close");
    assert.equal(closeA.code, 4001);
    assert.equal(closeA.reason, "worker says bye");

    // The client closes (the slot came back: this one got the worker).
    const b = await wsClient(`${wsUrl}/ws`, undefined, HANG);
    b.ws.send("again");
    assert.equal(await b.next(), "echo: again");
    b.ws.close(4002, "client leaves");
    await deadline(b.closed, HANG, "the client's close");
    await waitFor(
      () => workerSaw.length === 2,
      "the worker to see both closes",
      HANG,
    );
    // The first close came back as the client's echo of 4001.
    assert.deepEqual(workerSaw.map((c) => c.code), [4001, 4002]);
    assert.equal(workerSaw[1].reason, "client leaves");

    // The worker's slot serves plain requests again.
    const res = await fetch(`${url}/after`);
    assert.equal(await res.text(), "plain");
  });
}, { ignore: !SERVE });

// 5. The hub's own 503 for a full queue is what the client gets.

test("the hub's 503 for a full queue passes through with Retry-After", async (kind) => {
  const release = gate();
  let started = 0;
  const handler: FetchHandler = async (req) => {
    if (new URL(req.url).pathname === "/hold") {
      started++;
      await release.promise;
    }
    return new Response("done");
  };
  const text = async (res: Response) => `${res.status} ${await res.text()}`;
  try {
    await withFront(
      kind,
      { hub: { maxQueue: 1 }, handler },
      async ({ url, server }) => {
        // One request at the worker, one in the queue: the queue is full.
        const held = fetch(`${url}/hold`).then(text);
        await waitFor(() => started === 1, "the first request to start", HANG);
        const queued = fetch(`${url}/hold`).then(text);
        await waitFor(
          () => server.hub.stats.queued === 1,
          "the second request to queue",
          HANG,
        );
        const res = await fetch(`${url}/over`);
        assert.equal(res.status, 503);
        assert.equal(res.headers.get("retry-after"), "1");
        assert.equal(res.headers.get("x-pothead-error"), "1");
        assert.match(await res.text(), /queue .* is full/);
        assert.equal(server.hub.stats.rejectedFull, 1);
        release.open();
        assert.deepEqual(await Promise.all([held, queued]), [
          "200 done",
          "200 done",
        ]);
      },
    );
  } finally {
    release.open();
  }
});

// 6. A client that leaves while its request is at the worker: the proxy
// drops its hub connection, the hub drops the worker's, the handler's
// signal aborts, and the next request is served.

test("a client that leaves mid-request aborts the handler's signal", async (kind) => {
  let started = 0;
  let aborted = 0;
  const handler: FetchHandler = async (req) => {
    if (new URL(req.url).pathname !== "/wait") return new Response("next");
    started++;
    await new Promise<void>((resolve) => {
      if (req.signal.aborted) resolve();
      else req.signal.addEventListener("abort", () => resolve());
    });
    aborted++;
    return new Response("too late");
  };
  await withFront(kind, { handler }, async ({ url, server }) => {
    const leave = new AbortController();
    const pending = fetch(`${url}/wait`, { signal: leave.signal });
    await waitFor(() => started === 1, "the request to reach the worker", HANG);
    leave.abort();
    await assert.rejects(pending);
    await waitFor(
      () => aborted === 1,
      `the handler's signal to abort through ${kind}`,
      HANG,
    );
    const res = await fetch(`${url}/next`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "next");
    assert.equal(server.hub.stats.abandoned, 1);
  });
});
