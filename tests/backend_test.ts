/**
 * The backend handler against servers we did not write: Python's
 * `http.server` and Debian's nginx, on the full path consumer → hub → worker
 * → backend. A few raw sockets cover broken and silent backends.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { serveHub } from "../hub.ts";

import {
  type BackendHandler,
  backendHandler,
  type BackendOptions,
} from "../_backend.ts";
import { connectWorker } from "./_hub.ts";
import { RawSocket } from "./_relay.ts";
import { bytes } from "./_data.ts";

const NGINX = "/usr/sbin/nginx";
const CURL = "/usr/bin/curl";
const HANG_GUARD = 20_000;

/**
 * `Deno.test` with the op and resource sanitizers on: Deno 2.9 leaves them
 * off unless asked, and these tests rely on them to catch leaked timers,
 * connections and processes.
 */
function test(
  nameOrDef: string | Deno.TestDefinition,
  fn?: (t: Deno.TestContext) => void | Promise<void>,
): void {
  const def = typeof nameOrDef === "string"
    ? { name: nameOrDef, fn: fn! }
    : nameOrDef;
  Deno.test({ sanitizeOps: true, sanitizeResources: true, ...def });
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

function which(name: string): boolean {
  try {
    const { success } = new Deno.Command("sh", {
      args: ["-c", `command -v ${name}`],
      stdout: "null",
      stderr: "null",
    }).outputSync();
    return success;
  } catch {
    return false;
  }
}

const HAVE_PYTHON = which("python3");
const HAVE_NGINX = exists(NGINX);
const HAVE_CURL = exists(CURL);

/** Rejects after `ms`, so a broken test fails instead of hanging. */
async function guard<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`Timed out waiting for ${what}`)),
      HANG_GUARD,
    );
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function text(s: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(s);
}

interface Running {
  port: number;
  close(): Promise<void>;
}

/** Reads a child's stdout until a line matches; returns the match. */
async function readUntil(
  stream: ReadableStream<Uint8Array>,
  pattern: RegExp,
): Promise<{ match: RegExpExecArray; rest: Promise<void> }> {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  for (let i = 0; i < 10_000; i++) {
    const { done, value } = await reader.read();
    if (done) break;
    seen += value;
    const match = pattern.exec(seen);
    if (match !== null) {
      // Keep draining so the child never blocks on a full pipe.
      const rest = (async () => {
        while (!(await reader.read()).done) { /* discard */ }
      })();
      return { match, rest };
    }
  }
  reader.releaseLock();
  throw new Error(`Child exited before printing ${pattern}: ${seen}`);
}

async function startPython(dir: string): Promise<Running> {
  const child = new Deno.Command("python3", {
    args: ["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"],
    cwd: dir,
    stdout: "piped",
    stderr: "null",
  }).spawn();
  try {
    const { match, rest } = await guard(
      readUntil(child.stdout, /port ([0-9]+)/),
      "python3 -m http.server to listen",
    );
    return {
      port: Number(match[1]),
      async close() {
        child.kill("SIGTERM");
        await child.status;
        await rest;
      },
    };
  } catch (error) {
    child.kill("SIGKILL");
    await child.status;
    await child.stdout.cancel().catch(() => {});
    throw error;
  }
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

async function waitConnectable(port: number, child: Deno.ChildProcess) {
  let exited = false;
  child.status.then(() => exited = true);
  for (let i = 0; i < 400 && !exited; i++) {
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      conn.close();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  throw new Error(`nginx did not listen on port ${port}`);
}

async function startNginx(dir: string): Promise<Running> {
  const root = join(dir, "root");
  const temp = join(dir, "tmp");
  await Deno.mkdir(join(root, "dav"), { recursive: true });
  await Deno.mkdir(temp, { recursive: true });
  const port = freePort();
  const conf = `
daemon off;
master_process off;
worker_processes 1;
pid ${join(dir, "nginx.pid")};
error_log stderr warn;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path ${temp}/body;
  proxy_temp_path ${temp}/proxy;
  fastcgi_temp_path ${temp}/fastcgi;
  uwsgi_temp_path ${temp}/uwsgi;
  scgi_temp_path ${temp}/scgi;
  types { text/plain txt; application/octet-stream bin; }
  default_type application/octet-stream;
  keepalive_requests 1000;
  server {
    listen 127.0.0.1:${port};
    root ${root};
    gzip on;
    gzip_types text/plain;
    gzip_min_length 1;
    location /echo {
      add_header Set-Cookie "a=1; Path=/" always;
      add_header Set-Cookie "b=2; Path=/" always;
      add_header X-Conn-Requests $connection_requests always;
      default_type text/plain;
      return 200 "$request_method $request_uri x-test=$http_x_test host=$http_host te=$http_te";
    }
    location /dav/ {
      dav_methods PUT;
      client_max_body_size 64m;
      create_full_put_path on;
    }
  }
}
`;
  const confPath = join(dir, "nginx.conf");
  await Deno.writeTextFile(confPath, conf);
  const child = new Deno.Command(NGINX, {
    args: ["-e", "stderr", "-p", dir, "-c", confPath],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  try {
    await waitConnectable(port, child);
  } catch (error) {
    child.kill("SIGKILL");
    await child.status;
    throw new Error(`${(error as Error).message}: ${await stderr}`);
  }
  return {
    port,
    async close() {
      child.kill("SIGTERM");
      await child.status;
      await stderr;
    },
  };
}

interface Path {
  /** The hub's consumer URL, without a trailing slash. */
  url: string;
  close(): Promise<void>;
}

/** consumer → hub → worker(backendHandler(origin)) → backend. */
async function startPath(
  origin: string,
  options: BackendOptions = {},
): Promise<Path> {
  const hub = serveHub({ hostname: "127.0.0.1", port: 0, workerPort: 0 });
  const backend = backendHandler(origin, options);
  const worker = connectWorker(backend, {
    hostname: "127.0.0.1",
    port: hub.workerAddr.port,
    concurrency: 1,
  });
  // Wait until the worker's slot is attached, so the first request does not
  // race the connection.
  for (let i = 0; i < 2000 && hub.hub.stats.slots < 1; i++) {
    await new Promise((r) => setTimeout(r, 5));
  }
  return {
    url: `http://127.0.0.1:${hub.addr.port}`,
    async close() {
      await worker.drain();
      backend.close();
      await hub.shutdown();
    },
  };
}

interface Raw {
  status: number;
  headers: [string, string][];
  body: Uint8Array;
}

/**
 * GETs with curl, which (without `--compressed`) neither decodes content
 * codings nor adds headers we do not ask for: the body bytes are what the
 * hub sent, after the transfer coding.
 */
async function curl(url: string, headers: string[] = []): Promise<Raw> {
  const dir = await Deno.makeTempDir();
  try {
    const out = await new Deno.Command(CURL, {
      args: [
        "-sS",
        "-D",
        join(dir, "head"),
        "-o",
        join(dir, "body"),
        ...headers.flatMap((h) => ["-H", h]),
        url,
      ],
      stdout: "null",
      stderr: "piped",
    }).output();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    const head = (await Deno.readTextFile(join(dir, "head"))).split("\r\n");
    const status = Number(head[0].split(" ")[1]);
    const fields: [string, string][] = [];
    for (const line of head.slice(1)) {
      const colon = line.indexOf(":");
      if (colon > 0) {
        fields.push([
          line.slice(0, colon).toLowerCase(),
          line.slice(colon + 1).trim(),
        ]);
      }
    }
    return {
      status,
      headers: fields,
      body: await Deno.readFile(join(dir, "body")),
    };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function field(raw: Raw, name: string): string[] {
  return raw.headers.filter(([n]) => n === name).map(([, v]) => v);
}

test({
  name:
    "backend handler serves python http.server files byte-exact through a hub",
  ignore: !HAVE_PYTHON,
  async fn(t) {
    const dir = await Deno.makeTempDir();
    const big = bytes(3 * 1024 * 1024 + 17, 7);
    await Deno.writeFile(join(dir, "big.bin"), big);
    await Deno.writeTextFile(join(dir, "hello.txt"), "hello, world\n");
    const python = await startPython(dir);
    const path = await startPath(`http://127.0.0.1:${python.port}`);
    try {
      await t.step("GET of a small text file", async () => {
        const res = await fetch(`${path.url}/hello.txt`);
        assert.equal(res.status, 200);
        assert.equal(res.headers.get("content-type"), "text/plain");
        assert.match(res.headers.get("server") ?? "", /SimpleHTTP/);
        assert.equal(await res.text(), "hello, world\n");
      });
      await t.step("GET of a 3 MiB file arrives byte-exact", async () => {
        const res = await fetch(`${path.url}/big.bin`);
        assert.equal(res.status, 200);
        assert.equal(res.headers.get("content-length"), String(big.length));
        const got = await res.bytes();
        assert.equal(got.length, big.length);
        assert.deepEqual(got, big);
      });
      await t.step("HEAD keeps Content-Length and has no body", async () => {
        const res = await fetch(`${path.url}/big.bin`, { method: "HEAD" });
        assert.equal(res.status, 200);
        assert.equal(res.headers.get("content-length"), String(big.length));
        assert.equal((await res.bytes()).length, 0);
      });
      await t.step("a missing file is the backend's 404", async () => {
        const res = await fetch(`${path.url}/missing.txt?x=1`);
        assert.equal(res.status, 404);
        assert.match(await res.text(), /File not found/);
      });
      await t.step("the query string reaches the backend", async () => {
        const res = await fetch(`${path.url}/hello.txt?a=1&b=%20`);
        assert.equal(res.status, 200);
        assert.equal(await res.text(), "hello, world\n");
      });
    } finally {
      await path.close();
      await python.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

test({
  name: "backend handler keeps the backend's reason phrase",
  ignore: !HAVE_PYTHON,
  async fn() {
    // Called directly, as a fetch handler: the hub's consumer side
    // (Deno.serve) writes canonical reason phrases, so this is the only place
    // the backend's own phrase is visible.
    const dir = await Deno.makeTempDir();
    const python = await startPython(dir);
    const handler = backendHandler(`http://127.0.0.1:${python.port}`);
    try {
      const res = await handler(
        new Request("http://consumer.test/nothing-here"),
        {
          remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 1 },
          completed: Promise.resolve(),
        },
      );
      assert.equal(res.status, 404);
      assert.equal(res.statusText, "File not found");
      await res.body?.cancel();
    } finally {
      handler.close();
      await python.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

test({
  name: "backend handler forwards to nginx: headers, cookies, gzip, keep-alive",
  ignore: !HAVE_NGINX || !HAVE_CURL,
  async fn(t) {
    const dir = await Deno.makeTempDir();
    const nginx = await startNginx(dir);
    const origin = `http://127.0.0.1:${nginx.port}`;
    const words = Array.from({ length: 4000 }, (_, i) => `line ${i}\n`).join(
      "",
    );
    await Deno.writeTextFile(join(dir, "root", "words.txt"), words);
    const path = await startPath(origin);
    try {
      await t.step(
        "method, path, query and headers reach nginx; Host is the consumer's",
        async () => {
          const raw = await curl(`${path.url}/echo/a%20b?q=1&r=two`, [
            "X-Test: forty-two",
            "Host: consumer.example",
            "TE: trailers",
          ]);
          assert.equal(raw.status, 200);
          assert.equal(
            new TextDecoder().decode(raw.body),
            // TE is hop-by-hop: it must not reach the backend.
            "GET /echo/a%20b?q=1&r=two x-test=forty-two host=consumer.example te=",
          );
        },
      );
      await t.step("each Set-Cookie arrives as its own field", async () => {
        const raw = await curl(`${path.url}/echo`);
        assert.deepEqual(field(raw, "set-cookie"), [
          "a=1; Path=/",
          "b=2; Path=/",
        ]);
      });
      await t.step(
        "sequential requests reuse one backend connection",
        async () => {
          const first = await curl(`${path.url}/echo`);
          const second = await curl(`${path.url}/echo`);
          const n1 = Number(field(first, "x-conn-requests")[0]);
          const n2 = Number(field(second, "x-conn-requests")[0]);
          assert.equal(n2, n1 + 1);
        },
      );
      await t.step(
        "a gzip body arrives with Content-Encoding and the bytes nginx sent",
        async () => {
          const direct = await curl(`${origin}/words.txt`, [
            "Accept-Encoding: gzip",
          ]);
          assert.deepEqual(field(direct, "content-encoding"), ["gzip"]);
          const via = await curl(`${path.url}/words.txt`, [
            "Accept-Encoding: gzip",
          ]);
          assert.equal(via.status, 200);
          assert.deepEqual(field(via, "content-encoding"), ["gzip"]);
          assert.deepEqual(via.body, direct.body);
          assert.equal(new TextDecoder().decode(gunzipSync(via.body)), words);
        },
      );
      await t.step("without Accept-Encoding the body is plain", async () => {
        const raw = await curl(`${path.url}/words.txt`);
        assert.deepEqual(field(raw, "content-encoding"), []);
        assert.equal(new TextDecoder().decode(raw.body), words);
      });
      await t.step(
        "a streamed (chunked) upload is stored byte-exact by nginx",
        async () => {
          const data = bytes(700 * 1024 + 3, 11);
          let at = 0;
          const body = new ReadableStream<Uint8Array>({
            pull(controller) {
              if (at >= data.length) return controller.close();
              const n = Math.min(10_007, data.length - at);
              controller.enqueue(data.slice(at, at + n));
              at += n;
            },
          });
          const res = await fetch(`${path.url}/dav/up.bin`, {
            method: "PUT",
            body,
          });
          assert.equal(res.status, 201, await res.text());
          const stored = await Deno.readFile(
            join(dir, "root", "dav", "up.bin"),
          );
          assert.equal(stored.length, data.length);
          assert.deepEqual(stored, data);
        },
      );
      await t.step(
        "an upload with Content-Length is stored byte-exact",
        async () => {
          const data = bytes(200 * 1024, 5);
          const res = await fetch(`${path.url}/dav/sized.bin`, {
            method: "PUT",
            body: data,
          });
          assert.equal(res.status, 201, await res.text());
          assert.deepEqual(
            await Deno.readFile(join(dir, "root", "dav", "sized.bin")),
            data,
          );
        },
      );
    } finally {
      await path.close();
      await nginx.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

test({
  name: "backend handler sends options.host as Host instead of the consumer's",
  ignore: !HAVE_NGINX || !HAVE_CURL,
  async fn() {
    const dir = await Deno.makeTempDir();
    const nginx = await startNginx(dir);
    const path = await startPath(`http://127.0.0.1:${nginx.port}`, {
      host: "backend.internal",
    });
    try {
      const raw = await curl(`${path.url}/echo`, ["Host: consumer.example"]);
      assert.match(
        new TextDecoder().decode(raw.body),
        /host=backend\.internal /,
      );
    } finally {
      await path.close();
      await nginx.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

test("backend handler answers 502 when the backend is unreachable", async () => {
  const port = freePort(); // nothing listens here any more
  const path = await startPath(`http://127.0.0.1:${port}`);
  try {
    const res = await fetch(`${path.url}/x`);
    assert.equal(res.status, 502);
    const body = await res.text();
    assert.match(
      body,
      /^502 Bad Gateway: cannot connect to http:\/\/127\.0\.0\.1:/,
    );
  } finally {
    await path.close();
  }
});

/** A raw TCP backend that runs `serve` on each connection. */
function rawBackend(serve: (conn: Deno.Conn) => Promise<void>): {
  port: number;
  close(): Promise<void>;
} {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const tasks: Promise<void>[] = [];
  const open = new Set<Deno.Conn>();
  const closeConn = (conn: Deno.Conn) => {
    if (!open.delete(conn)) return;
    try {
      conn.close();
    } catch {
      // already closed
    }
  };
  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        open.add(conn);
        tasks.push(
          serve(conn).catch(() => {}).finally(() => closeConn(conn)),
        );
      }
    } catch {
      // listener closed
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    async close() {
      listener.close();
      await accepting;
      // A connection still open here belongs to a failed test: end it so
      // the failure is reported instead of hanging.
      for (const conn of [...open]) closeConn(conn);
      await Promise.all(tasks);
    },
  };
}

/** Reads until the end of a request head; null at end of stream. */
async function readHead(conn: Deno.Conn): Promise<string | null> {
  const buf = new Uint8Array(64 * 1024);
  let seen = "";
  for (let i = 0; i < 1000; i++) {
    const n = await conn.read(buf);
    if (n === null) return null;
    seen += new TextDecoder().decode(buf.subarray(0, n));
    if (seen.includes("\r\n\r\n")) return seen;
  }
  return null;
}

// Reads requests from a raw backend's connection in order: the head, then
// (when the caller is ready for it) the body by Content-Length or chunked.
function requestReader(conn: Deno.Conn) {
  const buf = new Uint8Array(64 * 1024);
  let seen = "";
  const more = async () => {
    const got = await conn.read(buf);
    if (got === null) return false;
    seen += new TextDecoder().decode(buf.subarray(0, got));
    return true;
  };
  return {
    async head(): Promise<string | null> {
      while (!seen.includes("\r\n\r\n")) if (!(await more())) return null;
      const end = seen.indexOf("\r\n\r\n") + 4;
      const head = seen.slice(0, end);
      seen = seen.slice(end);
      return head;
    },
    async body(head: string): Promise<string | null> {
      const length = /\r\ncontent-length: (\d+)/i.exec(head);
      const done = () =>
        length !== null
          ? seen.length >= Number(length[1])
          : seen.endsWith("0\r\n\r\n");
      while (!done()) if (!(await more())) return null;
      const body = seen;
      seen = "";
      return body;
    },
  };
}

const INFO = {
  remoteAddr: { transport: "tcp" as const, hostname: "127.0.0.1", port: 1 },
  completed: Promise.resolve(),
};

// One streamed upload per tag through `handler`, one after another; each
// must be answered "ok".
async function streamedUploads(
  handler: BackendHandler,
  tags: string[],
): Promise<void> {
  for (const tag of tags) {
    const res = await guard(
      Promise.resolve(handler(
        new Request(`http://consumer.test/${tag}`, {
          method: "POST",
          body: ReadableStream.from([text(tag)]),
        }),
        INFO,
      )),
      `streamed upload ${tag}`,
    );
    assert.equal(await res.text(), "ok");
  }
}

test("backend handler answers 502 when the backend closes without responding", async () => {
  const backend = rawBackend(async (conn) => {
    await readHead(conn);
  });
  const path = await startPath(`http://127.0.0.1:${backend.port}`);
  try {
    const res = await fetch(`${path.url}/x`);
    assert.equal(res.status, 502);
    assert.match(
      await res.text(),
      /^502 Bad Gateway: backend http:\/\/127\.0\.0\.1:[0-9]+\/ failed: .*closed/,
    );
  } finally {
    await path.close();
    await backend.close();
  }
});

test("backend handler answers 502 on an invalid response head", async () => {
  const backend = rawBackend(async (conn) => {
    await readHead(conn);
    await conn.write(text("HTTP/1.1 2x0 Nope\r\n\r\n"));
  });
  const path = await startPath(`http://127.0.0.1:${backend.port}`);
  try {
    const res = await fetch(`${path.url}/x`);
    assert.equal(res.status, 502);
    assert.match(await res.text(), /Invalid response/);
  } finally {
    await path.close();
    await backend.close();
  }
});

test("backend handler answers 504 when the backend sends no head in time", async () => {
  const { promise: release, resolve } = Promise.withResolvers<void>();
  const backend = rawBackend(async (conn) => {
    await readHead(conn);
    await release;
  });
  const path = await startPath(`http://127.0.0.1:${backend.port}`, {
    headTimeout: 200,
  });
  try {
    const res = await fetch(`${path.url}/slow`);
    assert.equal(res.status, 504);
    assert.match(await res.text(), /no complete response head within 200 ms/);
  } finally {
    resolve();
    await path.close();
    await backend.close();
  }
});

test("backend handler errors the consumer's body when the backend dies mid-body", async () => {
  const backend = rawBackend(async (conn) => {
    await readHead(conn);
    await conn.write(
      text("HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\npartial"),
    );
  });
  const path = await startPath(`http://127.0.0.1:${backend.port}`);
  try {
    const res = await fetch(`${path.url}/x`);
    assert.equal(res.status, 200);
    await assert.rejects(res.bytes());
  } finally {
    await path.close();
    await backend.close();
  }
});

test("a consumer that leaves closes the backend connection", async () => {
  const { promise: received, resolve: gotRequest } = Promise.withResolvers<
    void
  >();
  const { promise: closed, resolve: sawClose } = Promise.withResolvers<
    void
  >();
  const backend = rawBackend(async (conn) => {
    if ((await readHead(conn)) === null) return;
    gotRequest();
    // Never respond; wait for the proxy to close the connection.
    const buf = new Uint8Array(1024);
    for (let i = 0; i < 1000; i++) {
      try {
        if ((await conn.read(buf)) === null) break;
      } catch {
        break;
      }
    }
    sawClose();
  });
  const path = await startPath(`http://127.0.0.1:${backend.port}`);
  const controller = new AbortController();
  try {
    const pending = fetch(`${path.url}/never`, { signal: controller.signal });
    await guard(received, "the backend to receive the request");
    controller.abort();
    await assert.rejects(pending);
    await guard(closed, "the backend connection to close");
  } finally {
    await path.close();
    await backend.close();
  }
});

test("a consumer that leaves after a streamed upload closes the backend connection", async () => {
  const { promise: uploaded, resolve: gotUpload } = Promise.withResolvers<
    void
  >();
  const { promise: closed, resolve: sawClose } = Promise.withResolvers<
    void
  >();
  const backend = rawBackend(async (conn) => {
    const head = await readHead(conn);
    if (head === null) return;
    // Read the chunked body to its last chunk, then never respond.
    let seen = head.slice(head.indexOf("\r\n\r\n") + 4);
    const buf = new Uint8Array(16 * 1024);
    for (let i = 0; i < 10_000 && !seen.endsWith("0\r\n\r\n"); i++) {
      const n = await conn.read(buf);
      if (n === null) return;
      seen += new TextDecoder().decode(buf.subarray(0, n));
    }
    gotUpload();
    for (let i = 0; i < 1000; i++) {
      try {
        if ((await conn.read(buf)) === null) break;
      } catch {
        break;
      }
    }
    sawClose();
  });
  // Called directly: the request signal is ours to abort.
  const handler = backendHandler(`http://127.0.0.1:${backend.port}`);
  const controller = new AbortController();
  try {
    const pending = handler(
      new Request("http://consumer.test/up", {
        method: "POST",
        body: ReadableStream.from([text("abc"), text("def")]),
        signal: controller.signal,
      }),
      {
        remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 1 },
        completed: Promise.resolve(),
      },
    );
    await guard(uploaded, "the backend to receive the upload");
    controller.abort();
    await guard(closed, "the backend connection to close");
    const res = await pending;
    assert.equal(res.status, 502);
    await res.body?.cancel();
  } finally {
    handler.close();
    await backend.close();
  }
});

/** A raw backend answering keep-alive 200s; `onRequest` decides per request. */
function keepAliveBackend(
  onRequest: (conn: number, request: number) => "answer" | "drop",
) {
  let conns = 0;
  const backend = rawBackend(async (conn) => {
    const id = ++conns;
    for (let n = 1; n <= 100; n++) {
      if ((await readHead(conn)) === null) return;
      if (onRequest(id, n) === "drop") return;
      await conn.write(
        text(`HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n${id}:${n}\n`),
      );
    }
  });
  return { ...backend, connections: () => conns };
}

test("backend handler retries a GET once when a reused connection was closed", async () => {
  // The second request on the first connection is dropped unanswered, as
  // when the backend's idle timeout races our request.
  const backend = keepAliveBackend((conn, n) =>
    conn === 1 && n === 2 ? "drop" : "answer"
  );
  const path = await startPath(`http://127.0.0.1:${backend.port}`);
  try {
    const first = await fetch(`${path.url}/a`);
    assert.equal(await first.text(), "1:1\n");
    const second = await fetch(`${path.url}/b`);
    assert.equal(second.status, 200);
    assert.equal(await second.text(), "2:1\n");
    assert.equal(backend.connections(), 2);
  } finally {
    await path.close();
    await backend.close();
  }
});

test("backend handler with maxIdle 0 opens a connection per request", async () => {
  const backend = keepAliveBackend(() => "answer");
  const path = await startPath(`http://127.0.0.1:${backend.port}`, {
    maxIdle: 0,
  });
  try {
    for (let i = 1; i <= 3; i++) {
      const res = await fetch(`${path.url}/x`);
      assert.equal(await res.text(), `${i}:1\n`);
    }
    assert.equal(backend.connections(), 3);
  } finally {
    await path.close();
    await backend.close();
  }
});

test("backendHandler rejects origins it cannot use", () => {
  assert.throws(() => backendHandler("ftp://x"), TypeError);
  assert.throws(() => backendHandler("not a url"), TypeError);
  assert.throws(() => backendHandler("http://x/?q=1"), TypeError);
  assert.throws(
    () => backendHandler("http://x", { maxIdle: -1 }),
    /Invalid option "maxIdle"/,
  );
});

test({
  name:
    "hub closes the worker connection when the consumer leaves after a streamed upload",
  async fn() {
    const hub = serveHub({
      hostname: "127.0.0.1",
      port: 0,
      workerPort: 0,
      shutdownGrace: 100,
    });
    // A raw worker: reads the chunked upload, never answers, and reports
    // when the hub closes the connection.
    const conn = await Deno.connect({
      hostname: "127.0.0.1",
      port: hub.workerAddr.port,
    });
    const { promise: uploaded, resolve: gotUpload } = Promise.withResolvers<
      void
    >();
    const worker = (async () => {
      const buf = new Uint8Array(16 * 1024);
      let seen = "";
      for (let i = 0; i < 10_000; i++) {
        let n: number | null;
        try {
          n = await conn.read(buf);
        } catch {
          return "closed";
        }
        if (n === null) return "closed";
        seen += new TextDecoder().decode(buf.subarray(0, n));
        if (seen.endsWith("0\r\n\r\n")) gotUpload();
      }
      return "looped";
    })();
    const controller = new AbortController();
    try {
      for (let i = 0; i < 2000 && hub.hub.stats.slots < 1; i++) {
        await new Promise((r) => setTimeout(r, 5));
      }
      const pending = fetch(`http://127.0.0.1:${hub.addr.port}/up`, {
        method: "POST",
        body: ReadableStream.from([text("abc"), text("def")]),
        signal: controller.signal,
      });
      await guard(uploaded, "the worker to receive the upload");
      controller.abort();
      await assert.rejects(pending);
      assert.equal(await guard(worker, "the hub to close the link"), "closed");
    } finally {
      try {
        conn.close();
      } catch {
        // closed by the hub
      }
      await worker;
      await hub.shutdown();
    }
  },
});

test({
  name:
    "backend handler answers 504 when a streamed upload gets no head in time",
  async fn() {
    const { promise: release, resolve } = Promise.withResolvers<void>();
    const backend = rawBackend(async (conn) => {
      const head = await readHead(conn);
      if (head === null) return;
      await conn.write(text("HTTP/1.1 100 Continue\r\n\r\n"));
      await release;
    });
    const handler = backendHandler(`http://127.0.0.1:${backend.port}`, {
      headTimeout: 500,
    });
    try {
      const res = await guard(
        Promise.resolve(handler(
          new Request("http://consumer.test/up", {
            method: "POST",
            body: ReadableStream.from([text("abc"), text("def")]),
          }),
          {
            remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 1 },
            completed: Promise.resolve(),
          },
        )),
        "the 504",
      );
      assert.equal(res.status, 504);
      await res.body?.cancel();
    } finally {
      resolve();
      handler.close();
      await backend.close();
    }
  },
});

test("backend handler keeps sending Expect to a backend that has answered 100 Continue, after one upload it took without a 100", async () => {
  const heads: string[] = [];
  const backend = rawBackend(async (conn) => {
    const requests = requestReader(conn);
    for (let n = 0; n < 3; n++) {
      const head = await requests.head();
      if (head === null) return;
      heads.push(head);
      // The second upload's handler takes the body without a 100.
      if (n !== 1 && /\r\nexpect: 100-continue\r\n/i.test(head)) {
        await conn.write(text("HTTP/1.1 100 Continue\r\n\r\n"));
      }
      if ((await requests.body(head)) === null) return;
      await conn.write(text("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
    }
  });
  const handler = backendHandler(`http://127.0.0.1:${backend.port}`);
  try {
    await streamedUploads(handler, ["first", "second", "third"]);
    const expects = heads.map((h) => /\r\nexpect: 100-continue\r\n/i.test(h));
    assert.deepEqual(expects, [true, true, true]);
  } finally {
    handler.close();
    await backend.close();
  }
});

test("backend handler sends a small body with its head, and streams to a backend that never answers 100 Continue at once after the first time", async () => {
  const heads: string[] = [];
  const bodies: string[] = [];
  const backend = rawBackend(async (conn) => {
    const requests = requestReader(conn);
    for (let n = 0; n < 3; n++) {
      // One request: head, then its body, never a 100 Continue.
      const head = await requests.head();
      if (head === null) return;
      heads.push(head);
      const body = await requests.body(head);
      if (body === null) return;
      bodies.push(body);
      await conn.write(text("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
    }
  });
  const handler = backendHandler(`http://127.0.0.1:${backend.port}`);
  try {
    const small = await handler(
      new Request("http://consumer.test/small", {
        method: "POST",
        body: "hello",
        headers: { "content-length": "5" },
      }),
      INFO,
    );
    assert.equal(await small.text(), "ok");
    await streamedUploads(handler, ["first", "second"]);
    const expects = heads.map((h) => /\r\nexpect: 100-continue\r\n/i.test(h));
    assert.deepEqual(expects, [false, true, false]);
    assert.match(heads[0], /\r\ncontent-length: 5\r\n/);
    assert.equal(bodies[0], "hello");
    assert.match(heads[1], /\r\ntransfer-encoding: chunked\r\n/);
    assert.equal(bodies[1], "5\r\nfirst\r\n0\r\n\r\n");
    assert.equal(bodies[2], "6\r\nsecond\r\n0\r\n\r\n");
  } finally {
    handler.close();
    await backend.close();
  }
});

test("backend handler forwards the consumer's target as it was sent (dot segments, quotes and braces unchanged)", async () => {
  const target = "/a/./b/../c/%2e%2e/d?q='x'&r={y}|z";
  const seen = Promise.withResolvers<string>();
  const backend = rawBackend(async (conn) => {
    const head = await requestReader(conn).head();
    seen.resolve(head?.split("\r\n")[0] ?? "");
    await conn.write(text("HTTP/1.1 204 No Content\r\n\r\n"));
  });
  const path = await startPath(`http://127.0.0.1:${backend.port}`);
  try {
    const consumer = await RawSocket.connect(Number(new URL(path.url).port));
    await consumer.write(`GET ${target} HTTP/1.1\r\nHost: h\r\n\r\n`);
    const answer = await guard(consumer.readMessage(), "the answer");
    consumer.close();
    assert.equal(answer?.status, 204);
    assert.equal(
      await guard(seen.promise, "the backend"),
      `GET ${target} HTTP/1.1`,
    );
  } finally {
    await path.close();
    await backend.close();
  }
});

test("backend handler resends a streamed upload without Expect to a backend that answers it with 417", async () => {
  const heads: string[] = [];
  let connections = 0;
  const backend = rawBackend(async (conn) => {
    const requests = requestReader(conn);
    const head = await requests.head();
    if (head === null) return;
    heads.push(head);
    if (connections++ === 0) {
      await conn.write(
        text("HTTP/1.1 417 Expectation Failed\r\ncontent-length: 0\r\n\r\n"),
      );
      return;
    }
    if ((await requests.body(head)) === null) return;
    await conn.write(text("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
  });
  const handler = backendHandler(`http://127.0.0.1:${backend.port}`);
  try {
    await streamedUploads(handler, ["first"]);
    const expects = heads.map((h) => /\r\nexpect: 100-continue\r\n/i.test(h));
    assert.deepEqual(expects, [true, false]);
  } finally {
    handler.close();
    await backend.close();
  }
});
