/**
 * The command lines as real processes: the hub (`hub.ts`, `mod.ts`), the
 * worker (`worker.ts`) and the demo, on port 0, talking over loopback.
 * Nothing here asserts on durations; timeouts are only hang guards.
 */

import assert from "node:assert/strict";
import config from "../deno.json" with { type: "json" };
import {
  closeAll,
  freePort,
  hubPorts,
  LINE_TIMEOUT,
  type Proc,
  ROOT,
  RUN_PERMISSIONS,
  runDeno,
  spawnDeno,
  startHub,
  startWorker,
} from "./_procs.ts";
import { chooseToken, defaultWorkerId, tokenFromFile } from "../_worker_cli.ts";
import {
  optionsFrom,
  parseRoute,
  watchTokens,
  workerTokensFrom,
} from "../_hub_cli.ts";
import { Hub } from "../hub.ts";
import { parseDuration } from "../_cli.ts";
import { deadline, waitFor } from "./_wait.ts";

const CURL = "/usr/bin/curl";
const HANG_GUARD = 30_000;

/** Rejects if `promise` has not settled after `ms` milliseconds. */
async function guard<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`Hang guard: ${what} took over ${HANG_GUARD} ms`)),
      HANG_GUARD,
    );
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Runs the hub CLI on free ports with `args` (and `env`) where it must exit
 * at once, as on a usage error: one that starts serving instead is killed
 * after HANG_GUARD and fails the test.
 */
function runHubToExit(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return runDeno([
    "run",
    ...RUN_PERMISSIONS,
    "hub.ts",
    "--port",
    "0",
    "--worker-port",
    "0",
    ...args,
  ], { env, timeout: HANG_GUARD });
}

/** Fetches with a hang guard on the response head. */
function get(url: string): Promise<Response> {
  return guard(fetch(url), `GET ${url}`);
}

/** Reads a text body incrementally, up to markers. */
class BodyReader {
  #reader: ReadableStreamDefaultReader<string>;
  text = "";
  done = false;

  constructor(res: Response) {
    assert.ok(res.body, "response has a body");
    this.#reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  }

  /** Reads until `needle` has been received; fails if the body ends first. */
  async until(needle: string): Promise<void> {
    while (!this.text.includes(needle)) {
      const { value, done } = await guard(
        this.#reader.read(),
        `reading until ${JSON.stringify(needle)}`,
      );
      if (done) {
        this.done = true;
        assert.fail(
          `Body ended before ${JSON.stringify(needle)}: ${
            JSON.stringify(this.text)
          }`,
        );
      }
      this.text += value;
    }
  }

  /** Reads to the end; returns the error if the body failed instead. */
  async rest(): Promise<unknown> {
    try {
      while (!this.done) {
        const { value, done } = await guard(
          this.#reader.read(),
          "reading the body to its end",
        );
        if (done) this.done = true;
        else this.text += value;
      }
      return undefined;
    } catch (error) {
      this.done = true;
      return error;
    }
  }

  async cancel(): Promise<void> {
    if (!this.done) await this.#reader.cancel().catch(() => {});
    this.done = true;
  }
}

async function hasCurl(): Promise<boolean> {
  try {
    return (await Deno.stat(CURL)).isFile;
  } catch {
    return false;
  }
}

// --- hub CLI ----------------------------------------------------------------

Deno.test("hub --help exits 0 and lists its options", async () => {
  const { code, stdout } = await runDeno([
    "run",
    ...RUN_PERMISSIONS,
    "hub.ts",
    "--help",
  ]);
  assert.equal(code, 0);
  for (
    const option of [
      "--port",
      "--worker-port",
      "--hostname",
      "--max-queue",
      "--queue-timeout",
      "--max-request-body",
      "--fair-by",
      "--fair-share",
      "--fair-weight",
      "--max-queue-per-key",
      "--priority-step",
      "--forwarded-field",
      "--help",
      "--version",
      "POTHEAD_PORT",
      "POTHEAD_WORKER_PORT",
      "POTHEAD_FAIR_BY",
      "POTHEAD_FAIR_SHARE",
      "POTHEAD_FAIR_WEIGHTS",
      "POTHEAD_MAX_QUEUE_PER_KEY",
      "POTHEAD_PRIORITY_STEP",
      "POTHEAD_FORWARDED_FIELD",
    ]
  ) {
    assert.ok(stdout.includes(option), `help lists ${option}:\n${stdout}`);
  }
});

Deno.test("hub --version prints the version from deno.json", async () => {
  const { code, stdout } = await runDeno([
    "run",
    ...RUN_PERMISSIONS,
    "hub.ts",
    "--version",
  ]);
  assert.equal(code, 0);
  assert.equal(stdout.trim(), `pothead ${config.version}`);
});

Deno.test("hub exits 2 naming an unknown flag", async () => {
  const { code, stdout, stderr } = await runDeno([
    "run",
    ...RUN_PERMISSIONS,
    "hub.ts",
    "--no-such-flag",
  ]);
  assert.equal(code, 2, stderr);
  assert.match(stderr, /--no-such-flag/);
  assert.equal(stdout, "", "nothing on stdout, so no Listening line");
});

Deno.test("hub exits 2 naming --max-queue (or POTHEAD_MAX_QUEUE, where the value came from) when its value is invalid", async () => {
  const flag = await runHubToExit(["--max-queue", "lots"]);
  assert.equal(flag.code, 2, flag.stderr);
  assert.match(flag.stderr, /--max-queue/);
  assert.match(flag.stderr, /"lots"/);
  assert.doesNotMatch(flag.stdout, /Listening/);
  // The same check applies to the environment variable.
  const env = await runHubToExit([], { POTHEAD_MAX_QUEUE: "-5" });
  assert.equal(env.code, 2, env.stderr);
  assert.match(env.stderr, /Invalid POTHEAD_MAX_QUEUE: /);
  assert.match(env.stderr, /"-5"/);
  // An empty address (a variable set to nothing) is a usage error too.
  const empty = await runHubToExit([], { POTHEAD_HOSTNAME: "" });
  assert.equal(empty.code, 2, empty.stderr);
  assert.match(empty.stderr, /Invalid POTHEAD_HOSTNAME: /);
});

Deno.test("hub exits 2 naming --response-spill-dir or --request-spill-dir when it cannot make files there", async () => {
  for (const flag of ["--response-spill-dir", "--request-spill-dir"]) {
    const { code, stdout, stderr } = await runHubToExit([
      flag,
      "/nonexistent/pothead-spill",
    ]);
    assert.equal(code, 2, stderr);
    assert.match(stderr, new RegExp(`Invalid ${flag}: `));
    assert.match(stderr, /\/nonexistent\/pothead-spill/);
    assert.doesNotMatch(stdout, /Listening/);
  }
});

Deno.test("hub exits 2 on --ready-min-slots or --admin-hostname (flag or variable) without --admin-port", async () => {
  const cases: [string[], Record<string, string>, string][] = [
    [["--ready-min-slots", "abc"], {}, "--ready-min-slots"],
    [["--admin-hostname", "::"], {}, "--admin-hostname"],
    [[], { POTHEAD_ADMIN_HOSTNAME: "::" }, "POTHEAD_ADMIN_HOSTNAME"],
    [[], { POTHEAD_READY_MIN_SLOTS: "2" }, "POTHEAD_READY_MIN_SLOTS"],
  ];
  for (const [args, env, name] of cases) {
    const { code, stdout, stderr } = await runHubToExit(args, env);
    assert.equal(code, 2, stderr);
    assert.match(stderr, new RegExp(`Invalid ${name}: .*needs --admin-port`));
    assert.doesNotMatch(stdout, /Listening/);
  }
});

Deno.test("hub exits 2 naming the flag or variable when --cert or --worker-cert comes without its key, or a key without its certificate", async () => {
  const dir = await Deno.makeTempDir();
  const pem = `${dir}/x.pem`;
  await Deno.writeTextFile(pem, "not read: the pair is checked first\n");
  try {
    const cases: [string[], Record<string, string>, RegExp][] = [
      [["--cert", pem], {}, /Invalid --cert: it needs --key as well/],
      [[], { POTHEAD_KEY: pem }, /Invalid POTHEAD_KEY: it needs --cert/],
      [
        ["--worker-key", pem],
        {},
        /Invalid --worker-key: it needs --worker-cert as well/,
      ],
      [
        [],
        { POTHEAD_WORKER_CERT: pem },
        /Invalid POTHEAD_WORKER_CERT: it needs --worker-key as well/,
      ],
    ];
    for (const [args, env, message] of cases) {
      const { code, stdout, stderr } = await runHubToExit(args, env);
      assert.equal(code, 2, stderr);
      assert.match(stderr, message);
      assert.doesNotMatch(stdout, /Listening/);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("hub listens on POTHEAD_PORT and POTHEAD_WORKER_PORT", async () => {
  const port = freePort();
  let workerPort = freePort();
  for (let i = 0; i < 10 && workerPort === port; i++) workerPort = freePort();
  const proc = spawnDeno("hub", [
    "run",
    ...RUN_PERMISSIONS,
    "hub.ts",
    "--hostname",
    "127.0.0.1",
  ], {
    env: {
      POTHEAD_PORT: String(port),
      POTHEAD_WORKER_PORT: String(workerPort),
    },
  });
  try {
    const hub = await hubPorts(proc);
    assert.equal(hub.port, port);
    assert.equal(hub.workerPort, workerPort);
  } finally {
    await closeAll(proc);
  }
});

Deno.test("deno run mod.ts starts a hub that answers consumers", async () => {
  // With no workers and no room in the queue, the hub answers 503 itself.
  const hub = await startHub(["--max-queue", "0"], { entry: "mod.ts" });
  try {
    const res = await get(`http://127.0.0.1:${hub.port}/`);
    assert.equal(res.status, 503);
    assert.equal(res.headers.get("x-pothead-error"), "1");
    assert.match(await res.text(), /queue .*is full/);
    hub.proc.kill("SIGTERM");
    assert.equal((await guard(hub.proc.status, "hub exit")).code, 0);
  } finally {
    await closeAll(hub.proc);
  }
});

Deno.test("SIGTERM makes the hub exit 0", async () => {
  let worker: Proc | undefined;
  const hub = await startHub();
  try {
    // With an idle worker connection attached, which the hub must let go.
    worker = await startWorker(hub.workerPort, "examples/hello.ts");
    hub.proc.kill("SIGTERM");
    await hub.proc.stderr.next(/shutting down/);
    const status = await guard(hub.proc.status, "hub exit");
    assert.equal(status.code, 0, hub.proc.describe());
  } finally {
    await closeAll(hub.proc, worker);
  }
});

Deno.test({
  name: "SIGTERM makes the hub finish the request in progress before it exits",
  async fn() {
    let worker: Proc | undefined;
    const hub = await startHub();
    try {
      worker = await startWorker(hub.workerPort, "examples/sse.ts");
      const res = await get(`http://127.0.0.1:${hub.port}/?n=3&interval=200`);
      assert.equal(res.status, 200);
      const body = new BodyReader(res);
      try {
        await body.until("id: 1\n");
        hub.proc.kill("SIGTERM");
        await hub.proc.stderr.next(/shutting down/);
        assert.equal(await body.rest(), undefined, "the body ends cleanly");
        assert.match(body.text, /id: 3\n/);
      } finally {
        await body.cancel();
      }
      const status = await guard(hub.proc.status, "hub exit");
      assert.equal(status.code, 0, hub.proc.describe());
    } finally {
      await closeAll(hub.proc, worker);
    }
  },
});

// --- worker CLI -------------------------------------------------------------

Deno.test("worker --help exits 0 and lists its options; --version prints the version", async () => {
  const help = await runDeno([
    "run",
    ...RUN_PERMISSIONS,
    "worker.ts",
    "--help",
  ]);
  assert.equal(help.code, 0);
  for (const option of ["--connect", "--concurrency", "HANDLER", "--help"]) {
    assert.ok(help.stdout.includes(option), `help lists ${option}`);
  }
  const version = await runDeno([
    "run",
    ...RUN_PERMISSIONS,
    "worker.ts",
    "--version",
  ]);
  assert.equal(version.code, 0);
  assert.equal(version.stdout.trim(), `pothead-worker ${config.version}`);
});

Deno.test("worker exits 2 when no handler module is given", async () => {
  const { code, stderr } = await runDeno([
    "run",
    ...RUN_PERMISSIONS,
    "worker.ts",
    "--connect",
    "127.0.0.1:9",
  ]);
  assert.equal(code, 2, stderr);
  assert.match(stderr, /handler module/);
});

Deno.test("worker exits 1 naming what a module without a valid default export has", async () => {
  const { code, stdout, stderr } = await runDeno([
    "run",
    ...RUN_PERMISSIONS,
    "worker.ts",
    "--connect",
    "127.0.0.1:9",
    "examples/bad_export.ts",
  ]);
  assert.equal(code, 1, stderr);
  assert.match(stderr, /examples\/bad_export\.ts/);
  assert.match(stderr, /no default export \(exports: fetch\)/);
  assert.match(stderr, /expected a default export/);
  assert.doesNotMatch(stdout, /Connected/);
});

Deno.test("with --access-log json, stdout carries only access records (the start lines go to stderr)", async () => {
  const hub = await startHub(["--access-log", "json"], {
    listening: "stderr",
  });
  const proc = hub.proc;
  let worker: Proc | undefined;
  try {
    worker = await startWorker(hub.workerPort, "examples/hello.ts");
    const res = await fetch(`http://127.0.0.1:${hub.port}/logged`);
    await res.text();
    const line = await proc.stdout.next(/logged/);
    const record = JSON.parse(line.input!);
    assert.equal(record.path, "/logged");
    assert.equal(record.status, 200);
    assert.equal(record.client, "127.0.0.1");
    // Every line on stdout is a record.
    for (const l of proc.stdout.lines) JSON.parse(l);
  } finally {
    await closeAll(worker, proc);
  }
});

Deno.test("POTHEAD_TRUSTED_PROXIES: from a trusted peer the consumer is the address it forwarded, in the access log", async () => {
  for (
    const [env, expected] of [
      ["127.0.0.1/32, ::1", "203.0.113.9"],
      ["10.0.0.0/8", "127.0.0.1"],
    ]
  ) {
    const hub = await startHub(["--access-log", "json"], {
      listening: "stderr",
      env: { POTHEAD_TRUSTED_PROXIES: env },
    });
    let worker: Proc | undefined;
    try {
      worker = await startWorker(hub.workerPort, "examples/hello.ts");
      const res = await fetch(`http://127.0.0.1:${hub.port}/who`, {
        headers: { "x-forwarded-for": "203.0.113.9" },
      });
      await res.text();
      const line = await hub.proc.stdout.next(/who/);
      assert.equal(JSON.parse(line.input!).client, expected, env);
    } finally {
      await closeAll(worker, hub.proc);
    }
  }
});

Deno.test("worker --max-requests 2 serves two requests, says so, drains and exits 0; the next request waits for another worker", async () => {
  const hub = await startHub();
  let first: Proc | undefined;
  let second: Proc | undefined;
  try {
    first = await startWorker(hub.workerPort, "examples/hello.ts", [
      "--max-requests",
      "2",
    ]);
    for (const path of ["/one", "/two"]) {
      const res = await fetch(`http://127.0.0.1:${hub.port}${path}`);
      assert.match(await res.text(), new RegExp(`^Hello from ${path}`));
    }
    await first.stderr.next(/2 requests started \(--max-requests\): draining/);
    const status = await deadline(first.status, 20_000, "the worker's exit");
    assert.equal(status.code, 0, first.describe());
    // Queued at the hub, not lost: served once another worker comes.
    const third = fetch(`http://127.0.0.1:${hub.port}/three`);
    second = await startWorker(hub.workerPort, "examples/hello.ts");
    assert.match(await (await third).text(), /^Hello from \/three/);
  } finally {
    await closeAll(first, second, hub.proc);
  }
});

Deno.test("worker --max-rss: a handler that leaks is recycled once the process is over the limit, and nothing is lost", async () => {
  const hub = await startHub();
  let leaky: Proc | undefined;
  let fresh: Proc | undefined;
  try {
    leaky = await startWorker(
      hub.workerPort,
      "tests/fixtures/leaky_handler.ts",
      [
        "--max-rss",
        "200",
      ],
    );
    // Each request keeps 48 MiB: within a few the process is over 200 MiB.
    // One at a time; a request sent as the worker recycles waits at the hub
    // for the fresh worker below.
    const worker = leaky;
    const recycled = () => worker.stderr.lines.some((l) => /--max-rss/.test(l));
    let kept = 0;
    let pending: Promise<Response> | undefined;
    while (!recycled()) {
      assert.ok(kept < 10, `no recycle after ${kept} requests`);
      const res = fetch(`http://127.0.0.1:${hub.port}/`);
      let done = false;
      res.then(() => done = true, () => done = true);
      await waitFor(() => done || recycled(), "a response or the recycle");
      if (!done) {
        pending = res;
        break;
      }
      assert.equal(await (await res).text(), `kept ${++kept}\n`);
    }
    const line = leaky.stderr.lines.find((l) => /--max-rss/.test(l))!;
    const m =
      /resident memory (\d+) MiB is over --max-rss 200 after (\d+) requests: draining/
        .exec(line);
    assert.ok(m !== null, line);
    assert.ok(Number(m[1]) > 200, line);
    const status = await deadline(leaky.status, 20_000, "the worker's exit");
    assert.equal(status.code, 0, leaky.describe());
    fresh = await startWorker(
      hub.workerPort,
      "tests/fixtures/leaky_handler.ts",
    );
    // A request in flight as the line came was served by the leaky worker
    // (its last) or waited at the hub for the fresh one; none is lost.
    if (pending !== undefined) {
      const text = await (await pending).text();
      if (text === `kept ${kept + 1}\n`) kept++;
      else assert.equal(text, "kept 1\n");
    }
    assert.equal(Number(m[2]), kept, line);
    const next = await fetch(`http://127.0.0.1:${hub.port}/`);
    assert.match(await next.text(), /^kept [12]\n$/);
  } finally {
    await closeAll(leaky, fresh, hub.proc);
  }
});

Deno.test("worker --connect :PORT connects to 127.0.0.1", async () => {
  let worker: Proc | undefined;
  const hub = await startHub();
  try {
    worker = spawnDeno("worker", [
      "run",
      ...RUN_PERMISSIONS,
      "worker.ts",
      "--connect",
      `:${hub.workerPort}`,
      "examples/hello.ts",
    ]);
    await worker.stdout.next(/^Connected to /);
    const res = await fetch(`http://127.0.0.1:${hub.port}/local`);
    assert.match(await res.text(), /^Hello from \/local/);
  } finally {
    await closeAll(worker, hub.proc);
  }
});

Deno.test("a handler's error is printed by the worker with its stack", async () => {
  let worker: Proc | undefined;
  const hub = await startHub();
  try {
    worker = await startWorker(
      hub.workerPort,
      "tests/fixtures/crash_handler.ts",
    );
    const res = await fetch(`http://127.0.0.1:${hub.port}/throw`);
    assert.equal(res.status, 500);
    await res.body?.cancel();
    const line = await worker.stderr.next(/handler: /);
    assert.match(line.input!, /pothead-worker: handler: boom from the fixture/);
    const at = await worker.stderr.next(/^\s+at /);
    assert.match(at.input!, /crash_handler\.ts/);
  } finally {
    await closeAll(worker, hub.proc);
  }
});

Deno.test("a hub and a worker process answer fetch and curl through the hub", async () => {
  let worker: Proc | undefined;
  const hub = await startHub();
  try {
    worker = await startWorker(hub.workerPort, "examples/hello.ts");
    const url = `http://127.0.0.1:${hub.port}/some/path?q=1`;
    const expected = `Hello from /some/path (pid ${worker.pid})\n`;
    const res = await get(url);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), expected);
    if (await hasCurl()) {
      const out = await new Deno.Command(CURL, {
        args: ["-sS", "--max-time", "30", "-w", "%{http_code}", url],
        stdin: "null",
      }).output();
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      assert.equal(new TextDecoder().decode(out.stdout), `${expected}200`);
    } else {
      console.warn(`${CURL} not found: skipping the curl assertion`);
    }
  } finally {
    await closeAll(worker, hub.proc);
  }
});

Deno.test("hub CLI --ping-interval/--ping-timeout: a frozen worker process is dropped and logged", async () => {
  let worker: Proc | undefined;
  const hub = await startHub([
    "--ping-interval",
    "100ms",
    "--ping-timeout",
    "300ms",
  ]);
  try {
    worker = await startWorker(hub.workerPort, "examples/hello.ts");
    worker.kill("SIGSTOP");
    const line = await hub.proc.stderr.next(/did not answer a ping/);
    assert.match(line[0], /did not answer a ping/);
  } finally {
    worker?.kill("SIGCONT");
    await closeAll(worker, hub.proc);
  }
});

Deno.test("worker exits 2 naming --engine when its value is invalid", async () => {
  const flag = await runDeno([
    "run",
    ...RUN_PERMISSIONS,
    "worker.ts",
    "--engine",
    "turbo",
    "examples/hello.ts",
  ]);
  assert.equal(flag.code, 2, flag.stderr);
  assert.match(flag.stderr, /--engine/);
  assert.match(flag.stderr, /"turbo"/);
  const env = await runDeno(
    ["run", ...RUN_PERMISSIONS, "worker.ts", "examples/hello.ts"],
    { env: { POTHEAD_ENGINE: "fast" } },
  );
  assert.equal(env.code, 2, env.stderr);
  assert.match(env.stderr, /"fast"/);
});

Deno.test("a worker that may not listen on 127.0.0.1 falls back to the inline engine and says so", async () => {
  let worker: Proc | undefined;
  const hub = await startHub();
  try {
    // Net permission for the hub's worker port only: the private listener
    // of the serve engine is refused.
    worker = spawnDeno("worker", [
      "run",
      `--allow-net=127.0.0.1:${hub.workerPort}`,
      "--allow-read",
      "--allow-env",
      "worker.ts",
      "--connect",
      `127.0.0.1:${hub.workerPort}`,
      "--engine",
      "auto",
      "examples/hello.ts",
    ]);
    await worker.stdout.next(/^Connected to /);
    await worker.stderr.next(/inline engine/);
    const res = await get(`http://127.0.0.1:${hub.port}/`);
    assert.equal(res.status, 200);
    assert.match(await res.text(), /hello/i);
  } finally {
    await closeAll(worker, hub.proc);
  }
});

Deno.test("a worker with --concurrency 2 serves exactly two requests at once", async () => {
  let worker: Proc | undefined;
  const bodies: BodyReader[] = [];
  // No room in the queue: a request that finds no idle connection gets 503.
  const hub = await startHub(["--max-queue", "0", "--log-level", "debug"]);
  try {
    worker = await startWorker(hub.workerPort, "examples/sse.ts", [
      "--concurrency",
      "2",
    ]);
    await hub.proc.stderr.next(/worker connection attached/);
    await hub.proc.stderr.next(/worker connection attached/);
    const base = `http://127.0.0.1:${hub.port}`;
    // Two long streams, each proven in progress by its first event.
    for (let i = 0; i < 2; i++) {
      const res = await get(`${base}/?n=1000&interval=100`);
      assert.equal(res.status, 200, `stream ${i + 1} got a connection`);
      const body = new BodyReader(res);
      bodies.push(body);
      await body.until("id: 1\n");
    }
    const third = await get(`${base}/?n=1`);
    assert.equal(third.status, 503, "no third connection");
    assert.match(await third.text(), /queue .*is full/);
    for (const body of bodies) {
      assert.equal(body.done, false, "both streams still open");
    }
  } finally {
    for (const body of bodies) await body.cancel();
    await closeAll(worker, hub.proc);
  }
});

Deno.test("SIGTERM lets the worker finish the request in progress, then it exits 0", async () => {
  let worker: Proc | undefined;
  const hub = await startHub();
  try {
    worker = await startWorker(hub.workerPort, "examples/sse.ts");
    const res = await get(`http://127.0.0.1:${hub.port}/?n=5&interval=200`);
    assert.equal(res.status, 200);
    const body = new BodyReader(res);
    try {
      await body.until("id: 1\n");
      worker.kill("SIGTERM");
      await worker.stderr.next(/draining/);
      assert.equal(await body.rest(), undefined, "the body ends without error");
      assert.match(body.text, /id: 5\n/);
    } finally {
      await body.cancel();
    }
    const status = await guard(worker.status, "worker exit");
    assert.equal(status.code, 0, worker.describe());
  } finally {
    await closeAll(worker, hub.proc);
  }
});

Deno.test("a second SIGTERM during the drain makes the worker exit at once with code 1", async () => {
  let worker: Proc | undefined;
  const hub = await startHub();
  try {
    worker = await startWorker(hub.workerPort, "examples/sse.ts");
    // 1000 events 100 ms apart: only an early exit ends this within the test.
    const res = await get(
      `http://127.0.0.1:${hub.port}/?n=1000&interval=100`,
    );
    assert.equal(res.status, 200);
    const body = new BodyReader(res);
    try {
      await body.until("id: 1\n");
      worker.kill("SIGTERM");
      await worker.stderr.next(/draining/);
      worker.kill("SIGTERM");
      const status = await guard(worker.status, "worker exit");
      assert.equal(status.code, 1, worker.describe());
      // The consumer sees the response cut off, not completed.
      const error = await body.rest();
      assert.doesNotMatch(body.text, /id: 1000\n/);
      assert.ok(error !== undefined, "the cut-off body ends with an error");
    } finally {
      await body.cancel();
    }
  } finally {
    await closeAll(worker, hub.proc);
  }
});

for (const concurrency of [1, 2]) {
  Deno.test({
    name:
      `a worker started before its hub keeps retrying and connects once the hub is up (concurrency ${concurrency})`,
    async fn() {
      let hub: Proc | undefined;
      const workerPort = freePort();
      const worker = await startWorker(workerPort, "examples/hello.ts", [
        "--concurrency",
        String(concurrency),
        "--max-backoff",
        "200ms",
      ], false);
      try {
        await worker.stderr.next(
          /cannot connect to 127\.0\.0\.1:[0-9]+: .*\(retrying\)/,
        );
        hub = spawnDeno("hub", [
          "run",
          ...RUN_PERMISSIONS,
          "hub.ts",
          "--hostname",
          "127.0.0.1",
          "--port",
          "0",
          "--worker-port",
          String(workerPort),
        ]);
        const { port } = await hubPorts(hub);
        await worker.stdout.next(
          new RegExp(`^Connected to 127\\.0\\.0\\.1:${workerPort} `),
        );
        const res = await get(`http://127.0.0.1:${port}/late`);
        assert.equal(res.status, 200);
        assert.equal(
          await res.text(),
          `Hello from /late (pid ${worker.pid})\n`,
        );
      } finally {
        await closeAll(worker, hub);
      }
    },
  });
}

Deno.test("a worker whose hub went away and came back says it connected again", async () => {
  const workerPort = freePort();
  const hubArgs = [
    "run",
    ...RUN_PERMISSIONS,
    "hub.ts",
    "--hostname",
    "127.0.0.1",
    "--port",
    "0",
    "--worker-port",
    String(workerPort),
  ];
  let hub: Proc | undefined = spawnDeno("hub", hubArgs);
  let worker: Proc | undefined;
  try {
    await hubPorts(hub);
    worker = await startWorker(workerPort, "examples/hello.ts", [
      "--max-backoff",
      "200ms",
    ]);
    hub.kill("SIGTERM");
    assert.equal((await hub.status).code, 0);
    await worker.stderr.next(
      /cannot connect to 127\.0\.0\.1:[0-9]+: .*\(retrying\)/,
    );
    hub = spawnDeno("hub", hubArgs);
    const { port } = await hubPorts(hub);
    // Otherwise the worker's last line would still say it cannot connect.
    await worker.stdout.next(
      new RegExp(`^Connected to 127\\.0\\.0\\.1:${workerPort} again$`),
    );
    const res = await get(`http://127.0.0.1:${port}/back`);
    assert.equal(res.status, 200);
    await res.body?.cancel();
  } finally {
    await closeAll(worker, hub);
  }
});

// --- demo -------------------------------------------------------------------

Deno.test("the demo starts a hub and two workers, serves every example path, and stops on SIGTERM", async () => {
  // Exactly the permissions of `deno task demo`.
  const demo = spawnDeno("demo", [
    "run",
    "--allow-net",
    "--allow-env",
    "--allow-read",
    "--allow-run",
    "examples/demo.ts",
    "--port",
    "0",
    "--worker-port",
    "0",
  ]);
  let stopped = false;
  try {
    const ready = await demo.stdout.next(
      /^POTHEAD demo ready: hub on http:\/\/localhost:([0-9]+)\//,
      LINE_TIMEOUT * 2,
    );
    const base = `http://127.0.0.1:${ready[1]}`;
    const workerPids = demo.stdout.lines
      .map((line) =>
        /^\[demo\] started worker \d+ \(pid ([0-9]+)\)$/.exec(line)
      )
      .filter((m) => m !== null)
      .map((m) => Number(m[1]));
    assert.equal(workerPids.length, 2);

    const hello = await get(`${base}/hello`);
    assert.equal(hello.status, 200);
    const m = /^Hello from \/hello \(pid ([0-9]+)\)\n$/.exec(
      await hello.text(),
    );
    assert.ok(m !== null);
    assert.ok(workerPids.includes(Number(m[1])), "a demo worker answered");

    const cpu = await get(`${base}/cpu?ms=5`);
    assert.equal(cpu.status, 200);
    const json = await cpu.json();
    assert.equal(json.requested, 5);
    assert.ok(workerPids.includes(json.pid));

    const sse = await get(`${base}/sse?n=2&interval=10`);
    assert.equal(sse.status, 200);
    assert.equal(sse.headers.get("content-type"), "text/event-stream");
    assert.equal((await sse.text()).match(/^event: tick$/gm)?.length, 2);

    demo.kill("SIGTERM");
    const status = await guard(demo.status, "demo exit");
    stopped = demo.stdout.lines.includes("[demo] stopped");
    assert.equal(status.code, 0, demo.describe());
    assert.ok(stopped, demo.describe());
  } finally {
    await closeAll(demo);
    if (!stopped) {
      // The demo's children run in their own process groups; if the demo
      // did not stop them, do it here.
      for (const line of demo.stdout.lines) {
        const pid = /^\[demo\] started .+ \(pid ([0-9]+)\)$/.exec(line)?.[1];
        if (pid === undefined) continue;
        try {
          Deno.kill(Number(pid), "SIGKILL");
        } catch {
          // already gone
        }
      }
    }
  }
});

Deno.test("worker CLI given a URL forwards requests to that HTTP server", async () => {
  const origin = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req) =>
      new Response(`origin saw ${req.method} ${new URL(req.url).pathname}`),
  );
  const hub = await startHub();
  let worker: Proc | undefined;
  try {
    worker = await startWorker(
      hub.workerPort,
      `http://127.0.0.1:${origin.addr.port}`,
    );
    const res = await fetch(`http://127.0.0.1:${hub.port}/through?q=1`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "origin saw GET /through");
  } finally {
    await closeAll(worker, hub.proc);
    await origin.shutdown();
  }
});

Deno.test("CLI: token file, pool routes and a worker that declares its pool", async () => {
  const dir = await Deno.makeTempDir();
  const tokens = `${dir}/tokens`;
  await Deno.writeTextFile(
    tokens,
    "# rotated weekly\nold-token-123\nnew-token-456\n",
  );
  await Deno.writeTextFile(`${dir}/worker-token`, "new-token-456\n");
  await Deno.writeTextFile(`${dir}/bad-token`, "not-a-valid-token\n");
  const hub = await startHub([
    "--worker-token-file",
    tokens,
    "--route",
    "/img/=images",
    "--queue-timeout",
    "1s",
  ]);
  let good: Proc | undefined;
  let bad: Proc | undefined;
  try {
    good = await startWorker(hub.workerPort, "examples/hello.ts", [
      "--token-file",
      `${dir}/worker-token`,
      "--pool",
      "images",
      "--worker-id",
      "img-1",
    ]);
    const res = await fetch(`http://127.0.0.1:${hub.port}/img/cat.png`);
    assert.equal(res.status, 200);
    assert.equal(
      await res.text(),
      `Hello from /img/cat.png (pid ${good.pid})\n`,
    );
    // Nothing serves the default pool: the queue timeout answers.
    const other = await fetch(`http://127.0.0.1:${hub.port}/other`);
    assert.equal(other.status, 503);
    assert.match(await other.text(), /pool "default"/);
    bad = await startWorker(hub.workerPort, "examples/hello.ts", [
      "--token-file",
      `${dir}/bad-token`,
      "--pool",
      "images",
    ], false);
    await bad.stderr.next(
      /cannot connect to [^ ]+: Hub refused the handshake: 403 Forbidden/,
    );
    // The hub logs the refusal without the token.
    const line = await hub.proc.stderr.next(/worker handshake refused/);
    assert.doesNotMatch(line.input ?? "", /not-a-valid-token/);
  } finally {
    await closeAll(good, bad, hub.proc);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("CLI: a hub reads its worker token file again on SIGHUP and cuts off a withdrawn token; the worker reads its own again and redials with the new one", async () => {
  const dir = await Deno.makeTempDir();
  const tokens = `${dir}/tokens`;
  const mine = `${dir}/mine`;
  await Deno.writeTextFile(tokens, "old-token-123\n");
  await Deno.writeTextFile(mine, "old-token-123\n");
  // Replaced as a mounted secret is: a new file renamed over the old.
  const replace = async (path: string, text: string) => {
    await Deno.writeTextFile(`${path}.tmp`, text);
    await Deno.rename(`${path}.tmp`, path);
  };
  const hub = await startHub(["--worker-token-file", tokens]);
  let worker: Proc | undefined;
  try {
    worker = await startWorker(hub.workerPort, "examples/hello.ts", [
      "--token-file",
      mine,
      "--max-backoff",
      "200ms",
    ]);
    const url = `http://127.0.0.1:${hub.port}/x`;
    const byWorker = new RegExp(`pid ${worker.pid}`);
    assert.match(await (await fetch(url)).text(), byWorker);
    await replace(tokens, "# rotated\nnew-token-456\n");
    hub.proc.kill("SIGHUP");
    const line = await hub.proc.stderr.next(/worker tokens replaced/);
    assert.match(line.input ?? "", /tokens=1 ended=1/);
    // Its connection ended, the worker redials with the old token: refused.
    await worker.stderr.next(/Hub refused the handshake: 403 Forbidden/);
    // Its own secret is rotated: the next dial takes the new token.
    await replace(mine, "new-token-456\n");
    assert.match(await (await fetch(url)).text(), byWorker);
    // A hub token file that holds no token now keeps the tokens in force.
    await Deno.writeTextFile(tokens, "# nothing yet\n");
    hub.proc.kill("SIGHUP");
    await hub.proc.stderr.next(/worker tokens not reloaded/);
    assert.match(await (await fetch(url)).text(), byWorker);
    assert.doesNotMatch(hub.proc.stderr.text(), /old-token|new-token/);
    assert.doesNotMatch(worker.stderr.text(), /old-token|new-token/);
  } finally {
    await closeAll(worker, hub.proc);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tokenFromFile: a new valid token is used from the next call; an unreadable or invalid file keeps the last good one, reported once", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/token`;
  const warnings: string[] = [];
  try {
    await Deno.writeTextFile(path, "first-token-1\n");
    const token = tokenFromFile(path, "first-token-1", (m) => warnings.push(m));
    assert.equal(token(), "first-token-1");
    await Deno.writeTextFile(path, "  second-token-2\n");
    assert.equal(token(), "second-token-2");
    await Deno.writeTextFile(path, "has a space\n");
    assert.equal(token(), "second-token-2");
    assert.equal(token(), "second-token-2");
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], /using the one read before/);
    assert.doesNotMatch(warnings[0], /second-token/);
    await Deno.remove(path);
    assert.equal(token(), "second-token-2");
    assert.equal(warnings.length, 2);
    await Deno.writeTextFile(path, "third-token-3");
    assert.equal(token(), "third-token-3");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("watchTokens: applies a changed list only, keeps the tokens on a failed read (logged once), stops on abort", async () => {
  let next: string[] | Error = ["token-one-1"];
  let reads = 0;
  const applied: string[][] = [];
  const logs: string[] = [];
  const stop = new AbortController();
  watchTokens(
    () => {
      reads++;
      if (next instanceof Error) throw next;
      return next;
    },
    (t) => applied.push(t),
    (r) => logs.push(`${r.level} ${r.msg} ${r.reason}`),
    { current: ["token-one-1"], every: 10, signal: stop.signal },
  );
  try {
    await waitFor(() => reads >= 3, "reads");
    assert.deepEqual(applied, []);
    next = ["token-one-1", "token-two-2"];
    await waitFor(() => applied.length === 1, "applied");
    assert.deepEqual(applied, [["token-one-1", "token-two-2"]]);
    next = new Error("no token in it");
    const at = reads;
    await waitFor(() => reads >= at + 3, "failed reads");
    assert.deepEqual(logs, [
      "warn worker tokens not reloaded: the old ones stay valid no token in it",
    ]);
    next = ["token-one-1", "token-two-2"];
    const back = reads;
    await waitFor(() => reads >= back + 2, "reads after");
    assert.equal(applied.length, 1);
  } finally {
    stop.abort();
  }
  const stopped = reads;
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(reads, stopped);
});

Deno.test("workerTokensFrom: the file is read at each call", async () => {
  const file = await Deno.makeTempFile();
  try {
    await Deno.writeTextFile(file, "first-token-1\n");
    const values = { "worker-token-file": file };
    assert.deepEqual(workerTokensFrom(values), ["first-token-1"]);
    await Deno.writeTextFile(file, "second-token-2\nthird-token-3\n");
    assert.deepEqual(workerTokensFrom(values), [
      "second-token-2",
      "third-token-3",
    ]);
    await Deno.writeTextFile(file, "\n");
    assert.throws(() => workerTokensFrom(values), /holds no token/);
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("default worker id: host and pid; $HOSTNAME without sys permission; else a random tag", () => {
  const denied = () => {
    throw new Deno.errors.NotCapable('Requires sys access to "hostname"');
  };
  assert.equal(defaultWorkerId(() => "vm", () => undefined, 7), "vm-7");
  assert.equal(
    defaultWorkerId(denied, (n) => n === "HOSTNAME" ? "pod-abc" : undefined, 1),
    "pod-abc-1",
  );
  // In containers every worker may be pid 1: two ids must still differ.
  const a = defaultWorkerId(denied, () => undefined, 1);
  const b = defaultWorkerId(denied, () => undefined, 1);
  assert.match(a, /^worker-[0-9a-f]{8}-1$/);
  assert.notEqual(a, b);
  assert.equal(defaultWorkerId(() => "a b/c", () => undefined, 2), "a-b-c-2");
});

Deno.test("hub exits 2 on a --config that is not an object, a route without a pool, pools that are not objects, or a value the hub refuses; 1 on a busy port", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cases: [string, number, RegExp][] = [
      ["null", 2, /Invalid --config: expected an object/],
      ['{"routes": 5}', 2, /"routes" must be an array/],
      ['{"routes": [{"pathPrefix": "/x"}]}', 2, /invalid pool name undefined/],
      ['{"pools": {"gpu": null}}', 2, /pool "gpu" must be an object, got null/],
      ['{"pools": ["gpu"]}', 2, /"pools": expected an object by pool name/],
      [
        '{"routes": [{"pool": "gpu", "priority": "high"}]}',
        2,
        /priority must be an integer from -1000 to 1000, got "high"/,
      ],
      // Misspelled keys: a route without its condition would take every
      // request, a pool's limit would not apply (found by review).
      [
        '{"routes": [{"pool": "video", "prefix": "/transcode/"}]}',
        2,
        /"routes": unknown key "prefix" \(known: pool, host, pathPrefix, priority\)/,
      ],
      ['{"route": []}', 2, /Invalid --config: unknown key "route"/],
      [
        '{"pools": {"default": {"maxqueue": 5}}}',
        2,
        /"pools\.default": unknown key "maxqueue"/,
      ],
      // Past the longest timer, which would fire at once, again and again.
      [
        '{"pools": {"gpu": {"queueTimeout": 3000000000}}}',
        2,
        /"pools\.gpu\.queueTimeout": 3000000000 ms is longer than the longest timer/,
      ],
      [
        '{"pools": {"default": {"affinityWait": "50ms"}}}',
        2,
        /"pools\.default\.affinityWait": .* pool "default" has no affinityBy/,
      ],
      // Matched against the host without its port, and a path.
      [
        '{"routes": [{"pool": "x", "host": "example.com:8080"}]}',
        2,
        /host must be a host name without a port, got "example\.com:8080"/,
      ],
      [
        '{"routes": [{"pool": "x", "pathPrefix": "api/"}]}',
        2,
        /pathPrefix must start with "\/", got "api\/"/,
      ],
    ];
    for (const [text, want, message] of cases) {
      const file = `${dir}/config.json`;
      await Deno.writeTextFile(file, text);
      const { code, stdout, stderr } = await runDeno([
        "run",
        ...RUN_PERMISSIONS,
        "hub.ts",
        "--port",
        "0",
        "--worker-port",
        "0",
        "--config",
        file,
      ]);
      assert.equal(code, want, `${text}: ${stderr}`);
      assert.match(stderr, message, text);
      assert.doesNotMatch(stderr, /^\s+at /m, "no stack trace");
      assert.equal(stdout, "", "no Listening line");
    }
    // Values the hub refuses are usage errors too; a busy port is not.
    const busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const flagCases: [string[], number, RegExp][] = [
      [["--route", "/x=a b"], 2, /invalid pool name "a b"/],
      [["--route", "/x=gpu@high"], 2, /Invalid --route: .*@PRIORITY/],
      [
        ["--route", "/x=gpu@5000"],
        2,
        /priority must be an integer from -1000 to 1000, got 5000/,
      ],
      [["--ping-timeout", "0"], 2, /Invalid --ping-timeout: /],
      [
        ["--trusted-proxies", "10.0.0.0/8,10.0.0.0/33"],
        2,
        /Invalid --trusted-proxies: Invalid address range "10\.0\.0\.0\/33"/,
      ],
      [
        ["--trusted-proxies", "::1", "--trust-forwarded"],
        2,
        /--trusted-proxies names the proxies to trust and --trust-forwarded/,
      ],
      [
        ["--trusted-proxies", "::1", "--forwarded-field", "Forwarded"],
        2,
        /Invalid --forwarded-field: expected x-forwarded-for or forwarded, got "Forwarded"/,
      ],
      [
        ["--hostname", "127.0.0.1", "--port", String(busy.addr.port)],
        1,
        /in use/,
      ],
    ];
    try {
      for (const [args, want, message] of flagCases) {
        const { code, stdout, stderr } = await runDeno([
          "run",
          ...RUN_PERMISSIONS,
          "hub.ts",
          "--port",
          "0",
          "--worker-port",
          "0",
          ...args,
        ]);
        assert.equal(code, want, `${args}: ${stderr}`);
        assert.match(stderr, message, args.join(" "));
        assert.doesNotMatch(stderr, /^\s+at /m, "no stack trace");
        assert.equal(stdout, "", "no Listening line");
      }
    } finally {
      busy.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("worker token: each flag wins over both variables; the token file variable over the token variable", () => {
  const env = (vars: Record<string, string>) => (n: string) => vars[n];
  const read = (path: string) => `from ${path}`;
  const both = env({ POTHEAD_TOKEN_FILE: "envfile", POTHEAD_TOKEN: "envtok" });
  assert.equal(chooseToken("f", "t", both, read), "from f");
  assert.equal(chooseToken(undefined, "t", both, read), "t");
  assert.equal(chooseToken(undefined, undefined, both, read), "from envfile");
  assert.equal(
    chooseToken(undefined, undefined, env({ POTHEAD_TOKEN: "envtok" }), read),
    "envtok",
  );
  assert.equal(chooseToken(undefined, undefined, env({}), read), undefined);
});

Deno.test("hub tokens: --worker-token flags replace POTHEAD_WORKER_TOKENS, which counts only without them", () => {
  const before = Deno.env.get("POTHEAD_WORKER_TOKENS");
  Deno.env.set("POTHEAD_WORKER_TOKENS", "old-token-123");
  try {
    const log = () => {};
    const flagged = optionsFrom({ "worker-token": ["new-token-456"] }, log);
    assert.deepEqual(flagged.workerTokens, ["new-token-456"]);
    const envOnly = optionsFrom({}, log);
    assert.deepEqual(envOnly.workerTokens, ["old-token-123"]);
  } finally {
    if (before === undefined) Deno.env.delete("POTHEAD_WORKER_TOKENS");
    else Deno.env.set("POTHEAD_WORKER_TOKENS", before);
  }
});

Deno.test("hub --config: a pool's queueTimeout is milliseconds as a number, a duration as a string", async () => {
  const file = await Deno.makeTempFile({ suffix: ".json" });
  const log = () => {};
  try {
    await Deno.writeTextFile(
      file,
      JSON.stringify({
        pools: { gpu: { queueTimeout: "2m" }, cpu: { queueTimeout: 1500 } },
      }),
    );
    const { pools } = optionsFrom({ config: file }, log);
    assert.equal(pools?.gpu.queueTimeout, 120_000);
    assert.equal(pools?.cpu.queueTimeout, 1500);
    await Deno.writeTextFile(
      file,
      JSON.stringify({ pools: { gpu: { queueTimeout: "soon" } } }),
    );
    assert.throws(
      () => optionsFrom({ config: file }, log),
      /Invalid --config pools\.gpu\.queueTimeout: .*"soon"/,
    );
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("hub --config: a pool's own timeouts take durations, its body sizes bytes with 0 for no limit, and the hub checks them", async () => {
  const file = await Deno.makeTempFile({ suffix: ".json" });
  const log = () => {};
  try {
    await Deno.writeTextFile(
      file,
      JSON.stringify({
        pools: {
          video: {
            headTimeout: "20m",
            bodyIdleTimeout: 0,
            uploadIdleTimeout: "90s",
            maxRequestBodySize: 0,
            maxResponseBodySize: 4096,
          },
          thumbs: { headTimeout: 2500, maxRequestBodySize: 1024 },
        },
      }),
    );
    const { pools } = optionsFrom({ config: file }, log);
    assert.deepEqual(pools?.video, {
      headTimeout: 1_200_000,
      bodyIdleTimeout: 0,
      uploadIdleTimeout: 90_000,
      maxRequestBodySize: Infinity,
      maxResponseBodySize: 4096,
    });
    assert.deepEqual(pools?.thumbs, {
      headTimeout: 2500,
      maxRequestBodySize: 1024,
    });
    await Deno.writeTextFile(
      file,
      JSON.stringify({ pools: { video: { headTimeout: "never" } } }),
    );
    assert.throws(
      () => optionsFrom({ config: file }, log),
      /Invalid --config pools\.video\.headTimeout: .*"never"/,
    );
    // A number the hub cannot take is the hub's error, naming the pool.
    assert.throws(
      () => new Hub({ pools: { video: { maxRequestBodySize: -1 } } }),
      /Invalid option "pools\.video\.maxRequestBodySize": expected a number >= 0, got -1/,
    );
    assert.throws(
      () => new Hub({ pools: { video: { bodyIdleTimeout: NaN } } }),
      /Invalid option "pools\.video\.bodyIdleTimeout"/,
    );
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("hub --affinity-by: ip or header:NAME, from the flag or POTHEAD_AFFINITY_BY; anything else is refused by name", () => {
  const log = () => {};
  const before = Deno.env.get("POTHEAD_AFFINITY_BY");
  try {
    Deno.env.delete("POTHEAD_AFFINITY_BY");
    assert.equal(optionsFrom({}, log).affinityBy, undefined);
    assert.equal(
      optionsFrom({ "affinity-by": "header:X-Model" }, log).affinityBy,
      "header:X-Model",
    );
    Deno.env.set("POTHEAD_AFFINITY_BY", "ip");
    assert.equal(optionsFrom({}, log).affinityBy, "ip");
    for (const bad of ["IP", "header:", "model"]) {
      assert.throws(
        () => optionsFrom({ "affinity-by": bad }, log),
        new RegExp(
          `Invalid --affinity-by: expected ip or header:NAME, got "${bad}"`,
        ),
      );
    }
  } finally {
    if (before === undefined) Deno.env.delete("POTHEAD_AFFINITY_BY");
    else Deno.env.set("POTHEAD_AFFINITY_BY", before);
  }
});

Deno.test("hub exits 2 when its token file or variable holds no token, instead of taking any worker", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const empty = `${dir}/empty`;
    const comments = `${dir}/comments`;
    await Deno.writeTextFile(empty, "");
    await Deno.writeTextFile(comments, "# tokens go here\n\n");
    const cases: [string[], Record<string, string>, RegExp][] = [
      [["--worker-token-file", empty], {}, /--worker-token-file: .*no token/],
      [["--worker-token-file", comments], {}, /--worker-token-file/],
      [[], { POTHEAD_WORKER_TOKENS: " , " }, /POTHEAD_WORKER_TOKENS/],
    ];
    for (const [args, env, message] of cases) {
      const { code, stdout, stderr } = await runHubToExit(args, env);
      assert.equal(code, 2, `${args} ${JSON.stringify(env)}: ${stdout}`);
      assert.match(stderr, message);
      assert.equal(stdout, "", "no Listening line");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("durations: longer than a timer can wait, or shorter than a millisecond, are refused", () => {
  assert.equal(parseDuration("596h", "--x", 0), 596 * 3_600_000);
  assert.equal(parseDuration("0", "--x", 5), 0);
  assert.equal(parseDuration("1.5ms", "--x", 0), 2);
  assert.throws(
    () => parseDuration("600h", "--x", 0),
    /longer than the longest timer/,
  );
  assert.throws(
    () => parseDuration("0.4ms", "--x", 0),
    /shorter than a millisecond/,
  );
});

Deno.test("worker exits 2 on an id, pool, label or token a hub would refuse, or an --adaptive setting it would ignore, instead of retrying for ever", async () => {
  const cases: [string[], RegExp][] = [
    [["--pool", "bad pool"], /invalid pool name "bad pool"/],
    [["--worker-id", ""], /invalid worker id ""/],
    [["--label", "a=b,c"], /invalid label value "b,c"/],
    [["--token", "two words-secret"], /invalid token/],
    [["--adaptive", "--min-idle-cpu", "Infinity"], /Invalid --min-idle-cpu/],
    [["--adaptive", "--min-idle-cpu", "0x10"], /Invalid --min-idle-cpu/],
    [["--min-idle-cpu", "1.5"], /--min-idle-cpu needs --adaptive/],
    [["--settle", "1s"], /--settle needs --adaptive/],
    [["--max-requests", "1.5"], /Invalid --max-requests/],
    // More MiB than bytes can count exactly: named as the flag, not as
    // connectWorker's option.
    [["--max-rss", "9999999999999"], /Invalid --max-rss: .* is outside/],
    [
      ["--max-requests-jitter", "3"],
      /--max-requests-jitter needs --max-requests/,
    ],
  ];
  // The hub's token file format (a comment, several lines) is not a worker's:
  // sent as is, the line break would end the Authorization field.
  const tokenFile = await Deno.makeTempFile();
  await Deno.writeTextFile(tokenFile, "# workers\nsecret-token-1\n");
  cases.push([["--token-file", tokenFile], /invalid token/]);
  try {
    await refusedAtOnce(cases);
  } finally {
    await Deno.remove(tokenFile);
  }
});

/** Runs workers that must exit 2 at once (killed after HANG_GUARD if not). */
async function refusedAtOnce(cases: [string[], RegExp][]): Promise<void> {
  for (const [args, message] of cases) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        ...RUN_PERMISSIONS,
        "worker.ts",
        "--connect",
        "127.0.0.1:9",
        ...args,
        "examples/hello.ts",
      ],
      cwd: ROOT,
      env: { NO_COLOR: "1" },
      stdin: "null",
      signal: AbortSignal.timeout(HANG_GUARD),
    }).output();
    const { code } = out;
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(code, 2, `${args}: ${stderr}`);
    assert.match(stderr, message, args.join(" "));
    assert.doesNotMatch(stderr, /secret/, "the token is not shown");
  }
}

Deno.test("hub read-ahead and spill flags reach the hub's options", () => {
  const log = () => {};
  const options = optionsFrom({
    "request-buffer": "65536",
    "request-buffer-total": "1048576",
    "request-spill-max": "2048",
    "request-spill-total": "4096",
    "response-spill-total": "8192",
    "buffer-uploads": true,
  }, log);
  assert.equal(options.requestSpillTotal, 4096);
  assert.equal(options.responseSpillTotal, 8192);
  assert.equal(options.requestBuffer, 65536);
  assert.equal(options.requestBufferTotal, 1048576);
  assert.equal(options.requestSpillMax, 2048);
  assert.equal(options.bufferUploads, true);
  const defaults = optionsFrom({}, log);
  assert.equal(defaults.requestBuffer, 1024 * 1024);
  assert.equal(defaults.bufferUploads, false);
});

Deno.test("hub WebSocket flags reach the hub's options", () => {
  const log = () => {};
  const options = optionsFrom({
    "no-websockets": true,
    "max-websocket-message": "4096",
  }, log);
  assert.equal(options.webSockets, false);
  assert.equal(options.maxWebSocketMessage, 4096);
  const defaults = optionsFrom({}, log);
  assert.equal(defaults.webSockets, true);
  assert.equal(defaults.maxWebSocketMessage, 16 * 1024 * 1024);
  assert.throws(
    () => optionsFrom({ "max-websocket-message": "0" }, log),
    /--max-websocket-message: 0 is outside 1\.\./,
  );
});

Deno.test("hub --trust-priority (or POTHEAD_TRUST_PRIORITY) and a --config route's priority reach the hub's options", async () => {
  const log = () => {};
  const file = await Deno.makeTempFile({ suffix: ".json" });
  const before = Deno.env.get("POTHEAD_TRUST_PRIORITY");
  try {
    await Deno.writeTextFile(
      file,
      JSON.stringify({
        routes: [{ pool: "default", pathPrefix: "/batch/", priority: -5 }],
      }),
    );
    const options = optionsFrom({ config: file, "trust-priority": true }, log);
    assert.equal(options.trustPriority, true);
    assert.deepEqual(options.routes, [
      { pool: "default", pathPrefix: "/batch/", priority: -5 },
    ]);
    Deno.env.delete("POTHEAD_TRUST_PRIORITY");
    assert.equal(optionsFrom({}, log).trustPriority, false);
    Deno.env.set("POTHEAD_TRUST_PRIORITY", "1");
    assert.equal(optionsFrom({}, log).trustPriority, true);
  } finally {
    if (before === undefined) Deno.env.delete("POTHEAD_TRUST_PRIORITY");
    else Deno.env.set("POTHEAD_TRUST_PRIORITY", before);
    await Deno.remove(file);
  }
});

Deno.test("parseRoute reads /prefix=POOL, host=POOL and host/prefix=POOL, each with an optional @PRIORITY", () => {
  assert.deepEqual(parseRoute("/images/=images"), {
    pool: "images",
    pathPrefix: "/images/",
  });
  assert.deepEqual(parseRoute("thumbs.example=images"), {
    pool: "images",
    host: "thumbs.example",
  });
  assert.deepEqual(parseRoute("api.example/batch/=gpu@-10"), {
    pool: "gpu",
    host: "api.example",
    pathPrefix: "/batch/",
    priority: -10,
  });
  assert.deepEqual(parseRoute("/live/=gpu @ +5"), {
    pool: "gpu",
    pathPrefix: "/live/",
    priority: 5,
  });
  for (const bad of ["/x=", "=gpu", "/x=gpu@", "/x=gpu@1.5", "/x=gpu@hi"]) {
    assert.throws(() => parseRoute(bad), /Invalid --route/, bad);
  }
});

Deno.test("hub --forwarded-field (or its variable) reaches the hub's options; a bad value names the flag", () => {
  const log = () => {};
  const before = Deno.env.get("POTHEAD_FORWARDED_FIELD");
  try {
    Deno.env.delete("POTHEAD_FORWARDED_FIELD");
    assert.equal(optionsFrom({}, log).forwardedField, undefined);
    const trusted = { "trusted-proxies": "10.0.0.0/8" };
    assert.equal(
      optionsFrom({ ...trusted, "forwarded-field": "forwarded" }, log)
        .forwardedField,
      "forwarded",
    );
    Deno.env.set("POTHEAD_FORWARDED_FIELD", "forwarded");
    assert.equal(optionsFrom(trusted, log).forwardedField, "forwarded");
    assert.equal(
      optionsFrom({ ...trusted, "forwarded-field": "x-forwarded-for" }, log)
        .forwardedField,
      "x-forwarded-for",
    );
    Deno.env.delete("POTHEAD_FORWARDED_FIELD");
    for (const bad of ["", "Forwarded", "x-real-ip", "both"]) {
      assert.throws(
        () => optionsFrom({ ...trusted, "forwarded-field": bad }, log),
        new RegExp(
          `Invalid --forwarded-field: expected x-forwarded-for or forwarded, got "${bad}"`,
        ),
      );
    }
  } finally {
    if (before === undefined) Deno.env.delete("POTHEAD_FORWARDED_FIELD");
    else Deno.env.set("POTHEAD_FORWARDED_FIELD", before);
  }
});

Deno.test("hub --fair-by, --fair-share and --max-queue-per-key (or their variables) reach the hub's options; a flag wins over its variable", () => {
  const log = () => {};
  const names = [
    "POTHEAD_FAIR_BY",
    "POTHEAD_MAX_QUEUE_PER_KEY",
    "POTHEAD_FAIR_SHARE",
    "POTHEAD_FAIR_WEIGHTS",
  ];
  const before = names.map((n) => Deno.env.get(n));
  try {
    for (const n of names) Deno.env.delete(n);
    const off = optionsFrom({}, log);
    assert.equal(off.fairBy, undefined);
    assert.equal(off.maxQueuePerKey, undefined);
    assert.equal(off.fairShare, undefined);
    const flags = optionsFrom(
      {
        "fair-by": "header:X-Tenant",
        "max-queue-per-key": "20",
        "fair-share": "time",
      },
      log,
    );
    assert.equal(flags.fairBy, "header:X-Tenant");
    assert.equal(flags.maxQueuePerKey, 20);
    assert.equal(flags.fairShare, "time");
    Deno.env.set("POTHEAD_FAIR_BY", "ip");
    Deno.env.set("POTHEAD_MAX_QUEUE_PER_KEY", "5");
    Deno.env.set("POTHEAD_FAIR_SHARE", "time");
    const env = optionsFrom({}, log);
    assert.equal(env.fairBy, "ip");
    assert.equal(env.maxQueuePerKey, 5);
    assert.equal(env.fairShare, "time");
    const both = optionsFrom(
      {
        "fair-by": "header:x-user",
        "max-queue-per-key": "7",
        "fair-share": "requests",
      },
      log,
    );
    assert.equal(both.fairBy, "header:x-user");
    assert.equal(both.maxQueuePerKey, 7);
    assert.equal(both.fairShare, "requests");
    for (const bad of ["", "Time", "turns", "worker-time"]) {
      assert.throws(
        () => optionsFrom({ "fair-by": "ip", "fair-share": bad }, log),
        new RegExp(
          `Invalid --fair-share: expected requests or time, got "${bad}"`,
        ),
      );
    }
    Deno.env.delete("POTHEAD_FAIR_SHARE");
    // Weights: repeatable KEY=W, or the variable's KEY=W,KEY=W.
    assert.equal(optionsFrom({}, log).fairWeights, undefined);
    assert.deepEqual(
      optionsFrom({
        "fair-weight": ["gold=4", "tenant=a=b=0.5", "=2", "gold=3"],
      }, log).fairWeights,
      { gold: 3, "tenant=a=b": 0.5, "": 2 },
    );
    const proto = optionsFrom({ "fair-weight": ["__proto__=2"] }, log)
      .fairWeights!;
    assert.deepEqual(Object.entries(proto), [["__proto__", 2]]);
    Deno.env.set("POTHEAD_FAIR_WEIGHTS", "a=2, b=3");
    assert.deepEqual(optionsFrom({}, log).fairWeights, { a: 2, b: 3 });
    assert.deepEqual(
      optionsFrom({ "fair-weight": ["c=5"] }, log).fairWeights,
      { c: 5 },
    );
    for (const bad of ["gold", "gold=", "gold=0", "gold=-1", "gold=x"]) {
      assert.throws(
        () => optionsFrom({ "fair-weight": [bad] }, log),
        new RegExp(
          `Invalid --fair-weight: expected KEY=W with W a number above 0, got "${bad}"`,
        ),
      );
    }
    Deno.env.delete("POTHEAD_FAIR_WEIGHTS");
    for (
      const bad of ["IP", "header:", "header:a b", "cookie:x", "ip,header:x"]
    ) {
      assert.throws(
        () => optionsFrom({ "fair-by": bad }, log),
        new RegExp(
          `Invalid --fair-by: expected ip or header:NAME, got "${bad}"`,
        ),
      );
    }
    Deno.env.set("POTHEAD_FAIR_BY", "anything");
    assert.throws(
      () => optionsFrom({}, log),
      /Invalid POTHEAD_FAIR_BY: .*"anything"/,
    );
    for (const bad of ["0", "-1", "many", "1.5"]) {
      assert.throws(
        () => optionsFrom({ "fair-by": "ip", "max-queue-per-key": bad }, log),
        /Invalid --max-queue-per-key/,
        bad,
      );
    }
  } finally {
    for (const [i, n] of names.entries()) {
      if (before[i] === undefined) Deno.env.delete(n);
      else Deno.env.set(n, before[i]!);
    }
  }
});

Deno.test("hub --priority-step (or its variable, or a pool's priorityStep in --config) reaches the hub's options as milliseconds", async () => {
  const log = () => {};
  const before = Deno.env.get("POTHEAD_PRIORITY_STEP");
  const file = await Deno.makeTempFile({ suffix: ".json" });
  try {
    Deno.env.delete("POTHEAD_PRIORITY_STEP");
    assert.equal(optionsFrom({}, log).priorityStep, undefined);
    assert.equal(
      optionsFrom({ "priority-step": "2s" }, log).priorityStep,
      2000,
    );
    assert.equal(optionsFrom({ "priority-step": "0" }, log).priorityStep, 0);
    Deno.env.set("POTHEAD_PRIORITY_STEP", "250ms");
    assert.equal(optionsFrom({}, log).priorityStep, 250);
    assert.equal(
      optionsFrom({ "priority-step": "1m" }, log).priorityStep,
      60_000,
    );
    for (const bad of ["-1s", "soon", "1d"]) {
      assert.throws(
        () => optionsFrom({ "priority-step": bad }, log),
        /Invalid --priority-step: expected a duration/,
        bad,
      );
    }
    await Deno.writeTextFile(
      file,
      JSON.stringify({
        pools: { gpu: { priorityStep: "500ms" }, cpu: { priorityStep: 30 } },
      }),
    );
    assert.deepEqual(optionsFrom({ config: file }, log).pools, {
      gpu: { priorityStep: 500 },
      cpu: { priorityStep: 30 },
    });
    await Deno.writeTextFile(
      file,
      JSON.stringify({ pools: { gpu: { priorityStep: "fast" } } }),
    );
    assert.throws(
      () => optionsFrom({ config: file }, log),
      /Invalid --config pools\.gpu\.priorityStep: expected a duration/,
    );
  } finally {
    await Deno.remove(file);
    if (before === undefined) Deno.env.delete("POTHEAD_PRIORITY_STEP");
    else Deno.env.set("POTHEAD_PRIORITY_STEP", before);
  }
});

Deno.test("hub --config: a pool's fairBy, fairShare, fairWeights and maxQueuePerKey reach the hub's options", async () => {
  const file = await Deno.makeTempFile({ suffix: ".json" });
  const log = () => {};
  try {
    await Deno.writeTextFile(
      file,
      JSON.stringify({
        pools: {
          gpu: {
            fairBy: "header:x-tenant",
            maxQueuePerKey: 3,
            fairShare: "time",
            fairWeights: { gold: 4 },
          },
          cpu: { fairBy: null },
        },
      }),
    );
    const { pools } = optionsFrom({ config: file, "fair-by": "ip" }, log);
    assert.deepEqual(pools, {
      gpu: {
        fairBy: "header:x-tenant",
        maxQueuePerKey: 3,
        fairShare: "time",
        fairWeights: { gold: 4 },
      },
      cpu: { fairBy: null },
    });
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("hub exits 2 on an invalid --fair-by or --max-queue-per-key, in flags, variables or --config", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/config.json`;
    const cases: [string[], Record<string, string>, string | null, RegExp][] = [
      [["--fair-by", "cookie:x"], {}, null, /Invalid --fair-by: .*"cookie:x"/],
      [
        [],
        { POTHEAD_FAIR_BY: "ipv6" },
        null,
        /Invalid POTHEAD_FAIR_BY: .*"ipv6"/,
      ],
      [
        ["--fair-by", "ip", "--max-queue-per-key", "0"],
        {},
        null,
        /Invalid --max-queue-per-key: 0 is outside 1\.\./,
      ],
      [
        ["--max-queue-per-key", "3"],
        {},
        null,
        /Invalid --max-queue-per-key: it is a fair-queuing setting, which needs --fair-by/,
      ],
      [
        [],
        { POTHEAD_MAX_QUEUE_PER_KEY: "3" },
        null,
        /Invalid POTHEAD_MAX_QUEUE_PER_KEY: .*needs --fair-by/,
      ],
      [
        [],
        {},
        '{"pools": {"gpu": {"fairBy": "tenant"}}}',
        /Invalid option "pools.gpu.fairBy": expected "ip", "header:NAME"/,
      ],
      [
        [],
        {},
        '{"pools": {"gpu": {"maxQueuePerKey": 2}}}',
        /Invalid option "pools.gpu.maxQueuePerKey": .*pool "gpu" has no fairBy/,
      ],
      [
        ["--fair-by", "ip"],
        {},
        '{"pools": {"gpu": {"maxQueuePerKey": 0}}}',
        /Invalid option "pools.gpu.maxQueuePerKey": expected a number >= 1/,
      ],
      [
        ["--fair-share", "time"],
        {},
        null,
        /Invalid --fair-share: .*needs --fair-by/,
      ],
      [
        ["--fair-by", "ip"],
        { POTHEAD_FAIR_SHARE: "weights" },
        null,
        /Invalid POTHEAD_FAIR_SHARE: .*"weights"/,
      ],
      [
        ["--fair-by", "ip"],
        {},
        '{"pools": {"gpu": {"fairShare": "cost"}}}',
        /Invalid option "pools.gpu.fairShare": expected "requests" or "time"/,
      ],
      [
        ["--fair-by", "ip"],
        {},
        '{"pools": {"gpu": {"fairWeights": {"gold": "4"}}}}',
        /Invalid option "pools.gpu.fairWeights": the weight of "gold" must be a number above 0/,
      ],
      [
        ["--fair-weight", "a=2"],
        {},
        null,
        /Invalid --fair-weight: .*needs --fair-by/,
      ],
      [
        [],
        { POTHEAD_FAIR_WEIGHTS: "a=2" },
        null,
        /Invalid POTHEAD_FAIR_WEIGHTS: .*needs --fair-by/,
      ],
      [
        ["--fair-by", "ip", "--fair-share", "time"],
        { POTHEAD_FAIR_WEIGHTS: "a=heavy" },
        null,
        /Invalid POTHEAD_FAIR_WEIGHTS: .*"a=heavy"/,
      ],
    ];
    for (const [args, env, text, message] of cases) {
      const config = text === null ? [] : ["--config", file];
      if (text !== null) await Deno.writeTextFile(file, text);
      const { code, stdout, stderr } = await runHubToExit(
        [...config, ...args],
        env,
      );
      const what = `${args.join(" ")} ${JSON.stringify(env)} ${text}`;
      assert.equal(code, 2, `${what}: ${stderr}`);
      assert.match(stderr, message, what);
      assert.doesNotMatch(stderr, /^\s+at /m, "no stack trace");
      assert.equal(stdout, "", "no Listening line");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("hub --fair-by header:NAME --max-queue-per-key 1 answers a second queued request of one key 429, not another key's", async () => {
  // No worker: every request queues, so the limit shows at once.
  const hub = await startHub([
    "--fair-by",
    "header:x-tenant",
    "--max-queue-per-key",
    "1",
  ]);
  const leave = new AbortController();
  try {
    const url = `http://127.0.0.1:${hub.port}/`;
    const ask = (tenant: string) =>
      fetch(url, { headers: { "x-tenant": tenant }, signal: leave.signal });
    const other = ask("B");
    other.catch(() => {});
    // Whichever of A's two arrives first queues; the other is refused at
    // once.
    const both = [ask("A"), ask("A")];
    for (const p of both) p.catch(() => {});
    const refused = await guard(Promise.race(both), "the 429");
    assert.equal(refused.status, 429);
    assert.equal(refused.headers.get("retry-after"), "1");
    assert.match(await refused.text(), /too many requests of this consumer/);
    leave.abort();
    // One of A's was queued (its consumer left), the other refused; B's was
    // queued, not refused.
    const settled = await Promise.allSettled(both);
    assert.deepEqual(settled.map((s) => s.status).sort(), [
      "fulfilled",
      "rejected",
    ]);
    await assert.rejects(other);
    hub.proc.kill("SIGTERM");
    assert.equal((await guard(hub.proc.status, "hub exit")).code, 0);
  } finally {
    leave.abort();
    await closeAll(hub.proc);
  }
});

Deno.test("hub --affinity-wait: a duration, from the flag or POTHEAD_AFFINITY_WAIT, in a --config pool as ms or a duration; refused without any --affinity-by", async () => {
  const log = () => {};
  const before = Deno.env.get("POTHEAD_AFFINITY_WAIT");
  const file = await Deno.makeTempFile({ suffix: ".json" });
  try {
    Deno.env.delete("POTHEAD_AFFINITY_WAIT");
    assert.equal(optionsFrom({}, log).affinityWait, 0);
    assert.equal(
      optionsFrom({ "affinity-by": "ip", "affinity-wait": "30ms" }, log)
        .affinityWait,
      30,
    );
    Deno.env.set("POTHEAD_AFFINITY_WAIT", "0.05");
    assert.equal(optionsFrom({ "affinity-by": "ip" }, log).affinityWait, 50);
    // Without affinity it would be ignored: refused, saying why.
    assert.throws(
      () => optionsFrom({}, log),
      /--affinity-wait needs --affinity-by/,
    );
    assert.throws(
      () => optionsFrom({ "affinity-by": "ip", "affinity-wait": "soon" }, log),
      /Invalid --affinity-wait: .*"soon"/,
    );
    // A pool's affinityBy is enough; its own wait as ms or a duration.
    await Deno.writeTextFile(
      file,
      JSON.stringify({
        pools: {
          gpu: { affinityBy: "header:x-model", affinityWait: "40ms" },
          cpu: { affinityWait: 25 },
        },
      }),
    );
    const options = optionsFrom({ config: file }, log);
    assert.equal(options.affinityWait, 50);
    assert.equal(options.pools!.gpu.affinityWait, 40);
    assert.equal(options.pools!.cpu.affinityWait, 25);
  } finally {
    await Deno.remove(file);
    if (before === undefined) Deno.env.delete("POTHEAD_AFFINITY_WAIT");
    else Deno.env.set("POTHEAD_AFFINITY_WAIT", before);
  }
});

// Sets environment variables for `fn` and puts them back after.
function withEnv(vars: Record<string, string>, fn: () => void): void {
  const before = new Map(
    Object.keys(vars).map((k) => [k, Deno.env.get(k)] as const),
  );
  try {
    for (const [k, v] of Object.entries(vars)) Deno.env.set(k, v);
    fn();
  } finally {
    for (const [k, v] of before) {
      if (v === undefined) Deno.env.delete(k);
      else Deno.env.set(k, v);
    }
  }
}

Deno.test("hub: an invalid value from an environment variable is reported by the variable's name, not a flag's", () => {
  const log = () => {};
  const cases: [Record<string, string>, RegExp][] = [
    [{ POTHEAD_PORT: "abc" }, /Invalid POTHEAD_PORT: expected an integer/],
    [{ POTHEAD_QUEUE_TIMEOUT: "soon" }, /Invalid POTHEAD_QUEUE_TIMEOUT: /],
    [{ POTHEAD_FAIR_BY: "model" }, /Invalid POTHEAD_FAIR_BY: /],
    [{ POTHEAD_FAIR_WEIGHTS: "a=x" }, /Invalid POTHEAD_FAIR_WEIGHTS: /],
    [
      { POTHEAD_RESPONSE_SPILL_DIR: "/nonexistent/pothead" },
      /Invalid POTHEAD_RESPONSE_SPILL_DIR: cannot make a file/,
    ],
    [{ POTHEAD_WORKER_TOKENS: "short" }, /in POTHEAD_WORKER_TOKENS: use 8/],
  ];
  for (const [vars, message] of cases) {
    withEnv(vars, () => {
      assert.throws(() => optionsFrom({}, log), message, JSON.stringify(vars));
    });
  }
  // The flag, where one was given.
  withEnv({ POTHEAD_PORT: "1" }, () => {
    assert.throws(
      () => optionsFrom({ port: "abc" }, log),
      /Invalid --port: /,
    );
  });
});

Deno.test("hub exits 2 before listening on an invalid POTHEAD_ACCESS_LOG, POTHEAD_LOG_LEVEL or an empty admin address, naming the variable or flag that gave it", async () => {
  const cases: [string[], Record<string, string>, RegExp][] = [
    [[], { POTHEAD_ACCESS_LOG: "yes" }, /Invalid POTHEAD_ACCESS_LOG: /],
    [[], { POTHEAD_LOG_LEVEL: "loud" }, /Invalid POTHEAD_LOG_LEVEL: /],
    [["--log-level", "loud"], {}, /Invalid --log-level: /],
    [
      ["--admin-port", "0", "--admin-hostname", ""],
      {},
      /Invalid --admin-hostname: .*empty/,
    ],
    [
      [],
      { POTHEAD_ADMIN_PORT: "0", POTHEAD_ADMIN_HOSTNAME: " " },
      /Invalid POTHEAD_ADMIN_HOSTNAME: .*empty/,
    ],
  ];
  for (const [args, env, message] of cases) {
    const { code, stdout, stderr } = await runHubToExit(args, env);
    const what = JSON.stringify({ args, env });
    assert.equal(code, 2, `${what}: ${stderr}`);
    assert.match(stderr, message, what);
    assert.doesNotMatch(stdout + stderr, /Listening/, what);
  }
});

Deno.test("hub --ping-timeout 0 (or POTHEAD_PING_TIMEOUT=0) is refused by its name, not as the library's pingTimeout", () => {
  const log = () => {};
  assert.throws(
    () => optionsFrom({ "ping-timeout": "0" }, log),
    /Invalid --ping-timeout: expected a duration above 0/,
  );
  withEnv({ POTHEAD_PING_TIMEOUT: "0ms" }, () => {
    assert.throws(
      () => optionsFrom({}, log),
      /Invalid POTHEAD_PING_TIMEOUT: expected a duration above 0/,
    );
  });
});

Deno.test("worker: an invalid value from an environment variable is reported by the variable's name, not a flag's", async () => {
  const cases: [Record<string, string>, string][] = [
    [{ POTHEAD_CONCURRENCY: "two" }, "POTHEAD_CONCURRENCY"],
    [{ POTHEAD_ENGINE: "fast" }, "POTHEAD_ENGINE"],
    [{ POTHEAD_MAX_REQUESTS: "-1" }, "POTHEAD_MAX_REQUESTS"],
    [{ POTHEAD_MAX_RSS: "1GB" }, "POTHEAD_MAX_RSS"],
    [{ POTHEAD_MAX_BACKOFF: "soon" }, "POTHEAD_MAX_BACKOFF"],
    [{ POTHEAD_RESOLVE_INTERVAL: "soon" }, "POTHEAD_RESOLVE_INTERVAL"],
    [{ POTHEAD_CONNECT: "hub" }, "POTHEAD_CONNECT"],
  ];
  for (const [env, name] of cases) {
    const { code, stderr } = await runDeno(
      ["run", ...RUN_PERMISSIONS, "worker.ts", "examples/hello.ts"],
      { env: { POTHEAD_CONNECT: "127.0.0.1:9", ...env } },
    );
    assert.equal(code, 2, `${name}: ${stderr}`);
    assert.match(stderr, new RegExp(`Invalid ${name}: `), stderr);
  }
  // The flag, where one was given.
  const flag = await runDeno(
    [
      "run",
      ...RUN_PERMISSIONS,
      "worker.ts",
      "--connect",
      "127.0.0.1:9",
      "--concurrency",
      "two",
      "examples/hello.ts",
    ],
    { env: { POTHEAD_CONCURRENCY: "1" } },
  );
  assert.equal(flag.code, 2, flag.stderr);
  assert.match(flag.stderr, /Invalid --concurrency: /);
});

Deno.test("hub: a switch from the environment is on for 1, true or yes, off for 0, false, no or empty, and anything else is refused", () => {
  const log = () => {};
  for (
    const [value, on] of [
      ["1", true],
      ["YES", true],
      ["true", true],
      ["0", false],
      ["no", false],
      ["", false],
    ] as const
  ) {
    withEnv({ POTHEAD_BUFFER_UPLOADS: value }, () => {
      assert.equal(optionsFrom({}, log).bufferUploads, on, value);
    });
  }
  withEnv({ POTHEAD_BUFFER_UPLOADS: "on" }, () => {
    assert.throws(
      () => optionsFrom({}, log),
      /Invalid POTHEAD_BUFFER_UPLOADS: expected 1, true or yes \(on\), or 0, false, no or empty \(off\), got "on"/,
    );
  });
});

Deno.test("hub --config: a number written as a string is refused showing it quoted, not as the number it looks like", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const config = `${dir}/pothead.json`;
    await Deno.writeTextFile(
      config,
      JSON.stringify({ pools: { default: { maxQueue: "10" } } }),
    );
    const { code, stderr } = await runHubToExit(["--config", config]);
    assert.equal(code, 2, stderr);
    assert.match(
      stderr,
      /"pools\.default\.maxQueue": expected a number >= 0, got "10"/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assert.throws(
    () => new Hub({ headTimeout: "5s" as unknown as number }),
    /"headTimeout": expected a number >= 0, got "5s"/,
  );
});

Deno.test("hub options: a hub-wide affinityWait with no affinityBy anywhere, or a timer past 2^31 - 1 ms, is refused", () => {
  assert.throws(
    () => new Hub({ affinityWait: 50 }),
    /"affinityWait": .* no pool has affinityBy/,
  );
  new Hub({ affinityWait: 50, pools: { gpu: { affinityBy: "ip" } } });
  assert.throws(
    () => new Hub({ queueTimeout: 2 ** 31 }),
    /"queueTimeout": 2147483648 ms is longer than the longest timer/,
  );
  assert.throws(
    () => new Hub({ pools: { a: { headTimeout: Infinity } } }),
    /"pools\.a\.headTimeout": Infinity ms is longer/,
  );
});
