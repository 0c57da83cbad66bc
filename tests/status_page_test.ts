// The status page in a real headless browser: Debian's chromium driven by
// playwright-core (tests/status_page.mjs, run by Node) against a real hub
// with a real worker and the admin handler on Deno.serve. The test holds
// requests in the worker so the queue grows, and asserts that the numbers
// the page shows follow. A screenshot goes to tests/output/status.png.
// The same browser also opens a WebSocket through the hub (an independent
// client that offers compression).
//
// Needs: /usr/bin/chromium (`apt-get install -y chromium`) and
// node_modules/playwright-core (`npm install --no-save playwright-core`);
// without them the test is registered as ignored and says which is missing.

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { createAdminHandler } from "../_admin.ts";
import { hash32, mix32 } from "../_hash.ts";
import { HubMetrics } from "../_metrics.ts";
import { statusPage } from "../_status_page.ts";
import { serveHub } from "../hub.ts";
import { connectWorker, ENGINE } from "./_hub.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const CHROMIUM = "/usr/bin/chromium";
const OUTPUT = `${ROOT}tests/output`;
const HANG_GUARD = 60_000;

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

function findNode(): string | null {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (dir && exists(`${dir}/node`)) return `${dir}/node`;
  }
  return null;
}

const NODE = findNode();
const missing = [
  exists(CHROMIUM) ? null : `${CHROMIUM} (apt-get install -y chromium)`,
  exists(`${ROOT}node_modules/playwright-core/package.json`)
    ? null
    : "node_modules/playwright-core (npm install --no-save playwright-core)",
  NODE === null ? "node on PATH" : null,
].filter((m) => m !== null);

async function guard<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`Hang guard: ${what} did not happen`)),
      HANG_GUARD,
    );
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

interface PageState {
  values: Record<string, string>;
  charts: Record<string, { last: string | null; paths: number }>;
  workers: string[][];
  mode: string;
  title: string;
}

/** The Node process that drives chromium, spoken to in JSON lines. */
class Browser {
  #child: Deno.ChildProcess;
  #stdin: WritableStreamDefaultWriter<Uint8Array>;
  #lines: ReadableStreamDefaultReader<string>;
  #buffer = "";
  #stderr: Promise<string>;
  /** Page errors and console errors reported so far. */
  readonly errors: string[] = [];

  constructor() {
    this.#child = new Deno.Command(NODE!, {
      args: ["tests/status_page.mjs"],
      cwd: ROOT,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#stdin = this.#child.stdin.getWriter();
    this.#lines = this.#child.stdout.pipeThrough(new TextDecoderStream())
      .getReader();
    this.#stderr = new Response(this.#child.stderr).text();
  }

  async #readLine(): Promise<string | null> {
    for (let i = 0; i < 100_000; i++) {
      const nl = this.#buffer.indexOf("\n");
      if (nl >= 0) {
        const line = this.#buffer.slice(0, nl);
        this.#buffer = this.#buffer.slice(nl + 1);
        return line;
      }
      const { value, done } = await this.#lines.read();
      if (done) return null;
      this.#buffer += value;
    }
    throw new Error("driver output has no line end");
  }

  async send(command: Record<string, unknown>): Promise<PageState> {
    await this.#stdin.write(
      new TextEncoder().encode(JSON.stringify(command) + "\n"),
    );
    const line = await guard(
      this.#readLine(),
      `browser command ${command.cmd}`,
    );
    if (line === null) {
      throw new Error(`browser driver exited: ${await this.#stderr}`);
    }
    const reply = JSON.parse(line);
    if (Array.isArray(reply.errors)) this.errors.push(...reply.errors);
    if (!reply.ok) {
      throw new Error(`browser command ${command.cmd} failed: ${reply.error}`);
    }
    return reply as PageState;
  }

  open(url: string, noEventSource = false): Promise<PageState> {
    return this.send({ cmd: "open", url, noEventSource });
  }

  read(): Promise<PageState> {
    return this.send({ cmd: "read" });
  }

  waitFor(metric: string, value: string): Promise<PageState> {
    return this.send({ cmd: "waitFor", metric, value });
  }

  waitForChart(chart: string, value: string): Promise<PageState> {
    return this.send({ cmd: "waitForChart", chart, value });
  }

  async screenshot(path: string): Promise<void> {
    await this.send({ cmd: "screenshot", path });
  }

  /** Closes the browser and waits for the driver to exit. */
  async close(): Promise<void> {
    try {
      await this.#stdin.write(new TextEncoder().encode('{"cmd":"quit"}\n'));
      await this.#stdin.close();
    } catch {
      // the driver already exited
    }
    const rest: string[] = [];
    for (
      let line;
      (line = await guard(this.#readLine(), "driver exit")) !== null;
    ) {
      rest.push(line);
    }
    const status = await guard(this.#child.status, "driver exit status");
    const stderr = await this.#stderr;
    if (!status.success) {
      throw new Error(`browser driver failed (${status.code}): ${stderr}`);
    }
  }

  kill(): void {
    try {
      this.#child.kill();
    } catch {
      // already exited
    }
  }
}

Deno.test({
  name: missing.length === 0
    ? "status page in headless chromium shows queue depth and counters that follow the load"
    : `status page in headless chromium (ignored: missing ${
      missing.join(", ")
    })`,
  ignore: missing.length > 0,
  async fn() {
    await Deno.mkdir(OUTPUT, { recursive: true });
    const metrics = new HubMetrics();
    const server = serveHub({
      hostname: "127.0.0.1",
      port: 0,
      workerPort: 0,
      shutdownGrace: 1000,
      trustPriority: true,
      fairBy: "header:x-tenant",
      onAccess: (r) => metrics.observe(r),
    });
    const adminStop = new AbortController();
    const admin = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      createAdminHandler(server.hub, metrics, {
        version: "0.0.0-test",
        eventInterval: 250,
        signal: adminStop.signal,
      }),
    );
    // Requests to /hold wait while the gate is shut.
    let gate = Promise.withResolvers<void>();
    const shut = () => {
      gate.resolve();
      gate = Promise.withResolvers<void>();
    };
    const open = () => gate.resolve();
    const worker = connectWorker(async (req) => {
      const path = new URL(req.url).pathname;
      if (path === "/hold") await gate.promise;
      return new Response(`done ${path}\n`);
    }, {
      hostname: "127.0.0.1",
      port: server.workerAddr.port,
      concurrency: 2,
      minBackoff: 10,
      maxBackoff: 100,
    });
    const base = `http://127.0.0.1:${server.addr.port}`;
    const adminUrl = `http://127.0.0.1:${admin.addr.port}/`;
    const consumers: Promise<Response>[] = [];
    const browser = new Browser();
    let closed = false;
    const finish = async () => {
      for (const res of await Promise.all(consumers.splice(0))) {
        assert.equal(res.status, 200);
        await res.text();
      }
    };
    try {
      let page = await browser.open(adminUrl);
      assert.equal(page.values.version, "0.0.0-test");
      page = await browser.waitFor("slots", "2");
      assert.equal(page.values.queued, "0");
      assert.equal(page.values.received, "0");
      assert.equal(page.values.idle, "2");
      assert.equal(page.values.parked, "0");
      assert.equal(page.mode, "live", "the page uses the event stream");

      // Three quick requests: the request counter moves.
      for (const path of ["/a", "/b", "/c"]) {
        const res = await fetch(base + path);
        await res.text();
      }
      page = await browser.waitFor("received", "3");
      assert.equal(page.values.queued, "0");

      // Six held requests on two slots: two busy, four queued, two of them
      // in class 5 (sent last, so that they queue).
      for (let i = 0; i < 4; i++) consumers.push(fetch(`${base}/hold`));
      page = await browser.waitFor("queued", "2");
      assert.equal(page.values.classes, "");
      assert.equal(page.values.keys, "from 1 consumer");
      for (let i = 0; i < 2; i++) {
        consumers.push(fetch(`${base}/hold`, {
          headers: { "x-pothead-priority": "5", "x-tenant": "t" },
        }));
      }
      page = await browser.waitFor("queued", "4");
      assert.equal(page.values.classes, "by class 5: 2 · 0: 2");
      assert.equal(page.values.keys, "from 2 consumers");
      page = await browser.waitFor("busy", "2");
      assert.equal(page.values.idle, "0");
      assert.equal(page.values.received, "9");
      assert.notEqual(page.values.oldest, "–");
      page = await browser.waitForChart("queue", "4");
      assert.ok(page.charts.queue.paths >= 1, "the queue chart has a line");
      assert.match(page.title, /4 queued/);
      // The worker row shows the worker with both slots busy.
      assert.ok(
        page.workers.some((row) =>
          row[0] === "addr:127.0.0.1" && row[1] === "2 / 2"
        ),
        `worker row in ${JSON.stringify(page.workers)}`,
      );
      await browser.screenshot(`${OUTPUT}/status.png`);

      // Let them all through: the queue drains and the counters follow.
      open();
      await guard(finish(), "held requests to finish");
      page = await browser.waitFor("queued", "0");
      page = await browser.waitFor("busy", "0");
      assert.equal(page.values.received, "9");
      page = await browser.waitForChart("queue", "0");
      assert.notEqual(page.values.workerP99, "–");
      assert.ok(page.charts.latency.paths >= 1, "the latency chart has lines");
      await browser.screenshot(`${OUTPUT}/status-drained.png`);

      // Without EventSource the page polls /status and still follows.
      page = await browser.open(adminUrl, true);
      assert.equal(page.mode, "polling");
      shut();
      for (let i = 0; i < 3; i++) consumers.push(fetch(`${base}/hold`));
      page = await browser.waitFor("queued", "1");
      assert.equal(page.values.received, "12");
      assert.equal(page.mode, "polling");
      open();
      await guard(finish(), "held requests to finish");
      page = await browser.waitFor("queued", "0");
      page = await browser.waitFor("received", "12");

      await browser.close();
      closed = true;
      assert.deepEqual(browser.errors, [], "no errors in the page");
    } finally {
      open();
      if (!closed) {
        // Closing stdin makes the driver close chromium; kill it if not.
        await browser.close().catch(() => browser.kill());
      }
      await Promise.allSettled(
        consumers.map(async (p) => await (await p).body?.cancel()),
      );
      worker.close();
      await guard(worker.finished, "worker to stop");
      await guard(server.shutdown(), "hub shutdown");
      adminStop.abort();
      await guard(admin.shutdown(), "admin shutdown");
    }
  },
});

Deno.test({
  name: missing.length === 0
    ? "status page shows the requests waiting for their worker (affinityWait)"
    : `status page, affinity waits (ignored: missing ${missing.join(", ")})`,
  ignore: missing.length > 0,
  async fn() {
    const metrics = new HubMetrics();
    const server = serveHub({
      hostname: "127.0.0.1",
      port: 0,
      workerPort: 0,
      shutdownGrace: 1000,
      affinityBy: "header:x-model",
      affinityWait: HANG_GUARD,
      onAccess: (r) => metrics.observe(r),
    });
    const adminStop = new AbortController();
    const admin = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      createAdminHandler(server.hub, metrics, {
        eventInterval: 250,
        signal: adminStop.signal,
      }),
    );
    // A key that worker "a" ranks above worker "b" (rendezvous hashing).
    let model = "";
    for (let i = 0; model === ""; i++) {
      const h = hash32(`m${i}`);
      if (mix32(h ^ hash32("a")) > mix32(h ^ hash32("b"))) model = `m${i}`;
    }
    const gate = Promise.withResolvers<void>();
    const workers = ["a", "b"].map((id) =>
      connectWorker(async (req) => {
        if (new URL(req.url).pathname === "/hold") await gate.promise;
        return new Response(`${id}\n`);
      }, {
        hostname: "127.0.0.1",
        port: server.workerAddr.port,
        workerId: id,
        minBackoff: 10,
        maxBackoff: 100,
      })
    );
    const base = `http://127.0.0.1:${server.addr.port}`;
    const send = (path: string) =>
      fetch(base + path, { headers: { "x-model": model } });
    const consumers: Promise<Response>[] = [];
    const browser = new Browser();
    let closed = false;
    try {
      let page = await browser.open(`http://127.0.0.1:${admin.addr.port}/`);
      page = await browser.waitFor("slots", "2");
      assert.equal(page.values.waiting, "");
      // a is busy with /hold; b idles, so the next two of a's key wait.
      consumers.push(send("/hold"));
      page = await browser.waitFor("busy", "1");
      consumers.push(send("/x"));
      page = await browser.waitFor("waiting", "+ 1 waiting for its worker");
      consumers.push(send("/y"));
      page = await browser.waitFor("waiting", "+ 2 waiting for their workers");
      assert.equal(page.values.queued, "0");
      assert.equal(page.values.idle, "1");
      gate.resolve();
      for (const res of await guard(Promise.all(consumers), "requests")) {
        assert.equal(await res.text(), "a\n");
      }
      page = await browser.waitFor("waiting", "");
      await browser.close();
      closed = true;
      assert.deepEqual(browser.errors, [], "no errors in the page");
    } finally {
      gate.resolve();
      if (!closed) await browser.close().catch(() => browser.kill());
      await Promise.allSettled(
        consumers.map(async (p) => await (await p).body?.cancel()),
      );
      for (const w of workers) w.close();
      for (const w of workers) await guard(w.finished, "worker to stop");
      await guard(server.shutdown(), "hub shutdown");
      adminStop.abort();
      await guard(admin.shutdown(), "admin shutdown");
    }
  },
});

Deno.test({
  name: missing.length === 0
    ? `[${ENGINE}] a WebSocket from headless chromium passes through the hub, with no extension agreed`
    : `WebSocket from headless chromium (ignored: missing ${
      missing.join(", ")
    })`,
  // The inline engine cannot run Deno.upgradeWebSocket (websocket_test.ts).
  ignore: missing.length > 0 || ENGINE === "inline",
  async fn() {
    const server = serveHub({
      hostname: "127.0.0.1",
      port: 0,
      workerPort: 0,
      shutdownGrace: 1000,
    });
    const offered: (string | null)[] = [];
    const handlerClose = Promise.withResolvers<number>();
    const worker = connectWorker((req) => {
      offered.push(req.headers.get("sec-websocket-extensions"));
      const { socket, response } = Deno.upgradeWebSocket(req, {
        protocol: "chat",
      });
      socket.onmessage = (e) =>
        socket.send(typeof e.data === "string" ? `echo:${e.data}` : e.data);
      socket.onclose = (e) => handlerClose.resolve(e.code);
      return response;
    }, {
      hostname: "127.0.0.1",
      port: server.workerAddr.port,
      minBackoff: 10,
      maxBackoff: 100,
    });
    const browser = new Browser();
    let closed = false;
    try {
      await guard(
        (async () => {
          while (server.hub.stats.idle < 1) {
            await new Promise((r) => setTimeout(r, 10));
          }
        })(),
        "the worker's slot",
      );
      const result = await browser.send({
        cmd: "websocket",
        url: `ws://127.0.0.1:${server.addr.port}/live`,
        send: ["hello", "é✓".repeat(40_000)],
        close: 4000,
      }) as unknown as {
        protocol: string;
        extensions: string;
        replies: (string | number[])[];
        code: number;
        wasClean: boolean;
      };
      assert.equal(result.protocol, "chat");
      assert.equal(result.extensions, "");
      assert.deepEqual(result.replies, [
        "echo:hello",
        "echo:" + "é✓".repeat(40_000),
        [1, 2, 3],
      ]);
      assert.equal(result.code, 4000);
      assert.equal(result.wasClean, true);
      assert.equal(
        await guard(handlerClose.promise, "the handler's close"),
        4000,
      );
      // Chromium offers permessage-deflate; the worker is offered nothing.
      assert.deepEqual(offered, [null]);
      await browser.close();
      closed = true;
    } finally {
      if (!closed) await browser.close().catch(() => browser.kill());
      worker.close();
      await guard(worker.finished, "worker to stop");
      await guard(server.shutdown(), "hub shutdown");
    }
  },
});

// The page's own script run against a minimal fake DOM, for what a browser
// test cannot set up cheaply: pools that come and go between snapshots.
class El {
  id: string;
  children: unknown[] = [];
  dataset: Record<string, string> = {};
  hidden = false;
  textContent = "";
  innerHTML = "";
  className = "";
  style: Record<string, string> = {};
  clientWidth = 600;
  listeners: Record<string, (e: unknown) => void> = {};
  constructor(id = "") {
    this.id = id;
  }
  setAttribute() {}
  replaceChildren(...c: unknown[]) {
    this.children = c;
  }
  append(...c: unknown[]) {
    this.children.push(...c);
  }
  addEventListener(t: string, f: (e: unknown) => void) {
    this.listeners[t] = f;
  }
}
class Select extends El {
  #value = "";
  get options() {
    return this.children as { text: string; value: string }[];
  }
  get value() {
    return this.#value;
  }
  set value(v: string) {
    this.#value = this.options.some((o) => o.value === v) ? v : "";
  }
}

function pool(name: string) {
  const series = {
    requests: [0],
    errors: [0],
    queued: [0],
    busy: [0],
    idle: [0],
    queueP50Ms: [null],
    queueP99Ms: [null],
    workerP50Ms: [null],
    workerP99Ms: [null],
  };
  return {
    name,
    stats: {
      queued: 0,
      keys: 0,
      oldestWaitMs: 0,
      waiting: 0,
      slots: 1,
      idle: 1,
      parked: 0,
      busy: 0,
      workers: 1,
      classes: [],
    },
    recent: {
      requestsPerSecond: 0,
      queueP50Ms: null,
      queueP99Ms: null,
      workerP50Ms: null,
      workerP99Ms: null,
    },
    series,
    workers: [],
  };
}
function snap(names: string[]) {
  return {
    version: "x",
    uptimeSeconds: 5,
    now: Date.now(),
    stats: {
      received: 0,
      failed: 0,
      rejectedFull: 0,
      timedOutQueued: 0,
      abandoned: 0,
      retries: 0,
    },
    pools: names.map(pool),
  };
}

Deno.test("status page script (in a minimal fake DOM): the pool picker follows the pools' names, when one goes and another comes too", async () => {
  const html = statusPage({ version: "x" });
  const script = html.slice(
    html.indexOf("<script>") + 8,
    html.lastIndexOf("</script>"),
  );
  const els = new Map<string, El>();
  const picker = new Select("pool");
  els.set("pool", picker);
  const document = {
    title: "",
    documentElement: {},
    getElementById: (id: string) => {
      if (!els.has(id)) els.set(id, new El(id));
      return els.get(id)!;
    },
    querySelectorAll: () => [],
    createElement: () => new El(),
  };
  const snaps = [snap(["default", "a"]), snap(["default", "b"])];
  let next = 0;
  let poll: (() => void) | null = null;
  const fakeFetch = () =>
    Promise.resolve({
      ok: true,
      json: () => Promise.resolve(snaps[Math.min(next++, snaps.length - 1)]),
    });
  const Option = function (
    this: { text: string; value: string },
    text: string,
    value: string,
  ) {
    this.text = text;
    this.value = value;
  };
  new Function(
    "document",
    "fetch",
    "setInterval",
    "clearInterval",
    "setTimeout",
    "clearTimeout",
    "getComputedStyle",
    "addEventListener",
    "Option",
    "EventSource",
    script,
  )(
    document,
    fakeFetch,
    (f: () => void) => {
      poll = f;
      return 1;
    },
    () => {},
    () => 0,
    () => {},
    () => ({ getPropertyValue: () => "" }),
    () => {},
    Option,
    undefined,
  );
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(picker.options.map((o) => o.value), ["default", "a"]);
  poll!();
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(
    picker.options.map((o) => o.value),
    ["default", "b"],
    "the picker lists the pools of the latest snapshot",
  );
});
