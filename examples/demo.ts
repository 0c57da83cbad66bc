/**
 * The POTHEAD demo: starts a hub and two workers as separate processes on
 * this machine, prints how to try them, and stops them all on Ctrl-C.
 *
 * ```sh
 * deno task demo          # hub on :8080 (workers on :4040), two workers
 * curl localhost:8080/
 * ```
 *
 * Or directly, with every option:
 *
 * ```sh
 * deno run --allow-net --allow-env --allow-read --allow-run examples/demo.ts \
 *   --port 8080 --worker-port 4040 --workers 2 --concurrency 2
 * ```
 *
 * The workers run `examples/demo_handler.ts`, which answers `/cpu?ms=N`
 * (CPU-bound work), `/sse?n=N&interval=MS` (server-sent events) and, on any
 * other path, a hello line naming the worker's pid. The hub has a single
 * pool, so every worker serves every path.
 *
 * Each child runs in its own process group, so Ctrl-C in a terminal reaches
 * only the demo, which then stops the children in order: it sends SIGTERM to
 * the workers (they finish requests in progress), then to the hub. A second
 * Ctrl-C kills them all at once (a copy of the first arriving within half a
 * second, as `deno task` forwards it, does not count). The children's output is shown prefixed
 * with their names, and each child's pid is printed when it starts.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { flagOrEnv, parseInteger, UsageError } from "../_cli.ts";

const HELP = `POTHEAD demo: a hub and workers on this machine.

Usage: deno task demo [options]

Options (each also as the environment variable in brackets):
  --hostname ADDR     address the hub binds [POTHEAD_HOSTNAME] (127.0.0.1)
  --port N            consumer HTTP port, 0 = any free one [POTHEAD_PORT] (8080)
  --worker-port N     worker port, 0 = any free one [POTHEAD_WORKER_PORT] (4040)
  --workers N         worker processes [POTHEAD_DEMO_WORKERS] (2)
  --concurrency N     connections per worker [POTHEAD_CONCURRENCY] (2)
  -h, --help          show this help
`;

// The children need no more than the demo itself has, minus --allow-run.
const CHILD_PERMISSIONS = ["--allow-net", "--allow-env", "--allow-read"];
const STARTUP_TIMEOUT = 30_000;
// Milliseconds during which a repeated signal counts as the first one.
const DUPLICATE_SIGNAL_WINDOW = 500;

interface Child {
  name: string;
  process: Deno.ChildProcess;
  status: Promise<Deno.CommandStatus>;
  exited: boolean;
  /** Resolves with the first output line that matches, rejects on exit. */
  waitFor(pattern: RegExp, timeout: number): Promise<RegExpMatchArray>;
}

function start(name: string, args: string[]): Child {
  const process = new Deno.Command(Deno.execPath(), {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    // Its own process group: a terminal's Ctrl-C reaches only the demo,
    // which forwards one signal in the right order.
    detached: true,
  }).spawn();
  const waiters = new Set<(line: string) => void>();
  const pump = async (stream: ReadableStream<Uint8Array>, err: boolean) => {
    let rest = "";
    const show = (line: string) => {
      const text = `[${name}] ${line}`;
      if (err) console.error(text);
      else console.log(text);
      for (const waiter of [...waiters]) waiter(line);
    };
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      const lines = (rest + text).split("\n");
      rest = lines.pop()!;
      for (const line of lines) show(line.replace(/\r$/, ""));
    }
    if (rest !== "") show(rest);
  };
  const pumps = Promise.all([
    pump(process.stdout, false),
    pump(process.stderr, true),
  ]);
  const child: Child = {
    name,
    process,
    exited: false,
    status: process.status.then(async (status) => {
      child.exited = true;
      await pumps.catch(() => {});
      return status;
    }),
    waitFor(pattern, timeout) {
      return new Promise((resolve, reject) => {
        const done = () => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        const check = (line: string) => {
          const m = pattern.exec(line);
          if (m === null) return;
          done();
          resolve(m);
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`${name} printed no line matching ${pattern}`));
        }, timeout);
        waiters.add(check);
        child.status.then((status) => {
          done();
          reject(new Error(`${name} exited with code ${status.code}`));
        });
      });
    },
  };
  console.log(`[demo] started ${name} (pid ${process.pid})`);
  return child;
}

function signal(child: Child, sig: Deno.Signal): void {
  if (child.exited) return;
  try {
    child.process.kill(sig);
  } catch {
    // it exited in the meantime
  }
}

async function main(args: string[]): Promise<number> {
  let options;
  try {
    const { values } = parseArgs({
      args,
      options: {
        hostname: { type: "string" },
        port: { type: "string" },
        "worker-port": { type: "string" },
        workers: { type: "string" },
        concurrency: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    });
    if (values.help) {
      console.log(HELP);
      return 0;
    }
    options = {
      hostname: flagOrEnv(values.hostname, "POTHEAD_HOSTNAME") ?? "127.0.0.1",
      port: parseInteger(
        flagOrEnv(values.port, "POTHEAD_PORT"),
        "--port",
        8080,
        0,
        65535,
      ),
      workerPort: parseInteger(
        flagOrEnv(values["worker-port"], "POTHEAD_WORKER_PORT"),
        "--worker-port",
        4040,
        0,
        65535,
      ),
      workers: parseInteger(
        flagOrEnv(values.workers, "POTHEAD_DEMO_WORKERS"),
        "--workers",
        2,
        1,
        64,
      ),
      concurrency: parseInteger(
        flagOrEnv(values.concurrency, "POTHEAD_CONCURRENCY"),
        "--concurrency",
        2,
        1,
        1000,
      ),
    };
  } catch (error) {
    if (error instanceof UsageError || error instanceof TypeError) {
      console.error(`demo: ${error.message}\n\n${HELP}`);
      return 2;
    }
    throw error;
  }

  const children: Child[] = [];
  let stopping: Promise<void> | null = null;
  const { promise: stopRequested, resolve: requestStop } = Promise
    .withResolvers<"signal">();
  const stopAll = () =>
    stopping ??= (async () => {
      // Workers first, so requests in progress finish and no worker keeps
      // redialling a hub that is gone; then the hub.
      const workers = children.filter((c) => c.name !== "hub");
      for (const child of workers) signal(child, "SIGTERM");
      await Promise.all(workers.map((c) => c.status));
      for (const child of children) signal(child, "SIGTERM");
      await Promise.all(children.map((c) => c.status));
    })();
  let signals = 0;
  let firstSignalAt = 0;
  const onSignal = () => {
    if (signals === 0) {
      signals = 1;
      firstSignalAt = performance.now();
      console.log("[demo] stopping (press Ctrl-C again to kill at once)");
      requestStop("signal");
      return;
    }
    // `deno task` forwards the terminal's Ctrl-C, which reached the demo
    // directly too: a copy arriving right after the first is the same one.
    if (performance.now() - firstSignalAt < DUPLICATE_SIGNAL_WINDOW) return;
    signals++;
    console.log("[demo] killing");
    for (const child of children) signal(child, "SIGKILL");
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);

  const here = (path: string) => new URL(path, import.meta.url).href;
  let code = 0;
  try {
    const hub = start("hub", [
      "run",
      // The hub watches request.signal only for consumers that leave; this
      // opts in to Deno's fixed behaviour and silences its legacy warning.
      "--unstable-no-legacy-abort",
      ...CHILD_PERMISSIONS,
      here("../hub.ts"),
      "--hostname",
      options.hostname,
      "--port",
      String(options.port),
      "--worker-port",
      String(options.workerPort),
    ]);
    children.push(hub);
    const startup = (async () => {
      // Both waits start now: the two lines may arrive in one read.
      const [consumers, workerLine] = await Promise.all([
        hub.waitFor(
          /^Listening on \S+:([0-9]+)\/ \(consumers\)/,
          STARTUP_TIMEOUT,
        ),
        hub.waitFor(
          /^Listening on \S+:([0-9]+)\/ \(workers\b/,
          STARTUP_TIMEOUT,
        ),
      ]);
      const port = Number(consumers[1]);
      const workerPort = Number(workerLine[1]);
      const host = options.hostname === "0.0.0.0"
        ? "127.0.0.1"
        : options.hostname === "::"
        ? "::1"
        : options.hostname;
      const connect = host.includes(":")
        ? `[${host}]:${workerPort}`
        : `${host}:${workerPort}`;
      const connected: Promise<unknown>[] = [];
      for (let i = 1; i <= options.workers; i++) {
        const worker = start(`worker ${i}`, [
          "run",
          // The handler runs under Deno.serve (the worker's default engine):
          // its request.signal then fires only when the hub drops the
          // connection, as the worker contract says.
          "--unstable-no-legacy-abort",
          ...CHILD_PERMISSIONS,
          here("../worker.ts"),
          "--connect",
          connect,
          "--concurrency",
          String(options.concurrency),
          here("./demo_handler.ts"),
        ]);
        children.push(worker);
        connected.push(worker.waitFor(/^Connected to /, STARTUP_TIMEOUT));
      }
      await Promise.all(connected);
      return port;
    })();
    const first = await Promise.race([startup, stopRequested]);
    if (first === "signal") {
      startup.catch(() => {});
    } else {
      const base = `http://localhost:${first}`;
      console.log(`
POTHEAD demo ready: hub on ${base}/ with ${options.workers} workers x ${options.concurrency} connections.
Try:
  curl ${base}/
  curl '${base}/cpu?ms=100'
  curl -N '${base}/sse?n=5&interval=200'
  for i in 1 2 3 4; do curl -s '${base}/cpu?ms=300' & done; wait   # at once: several pids
Press Ctrl-C to stop.
`);
      // Run until a signal, or until a child exits on its own.
      const ended = await Promise.race([
        stopRequested,
        ...children.map((c) => c.status.then(() => c)),
      ]);
      if (ended !== "signal") {
        console.error(`[demo] ${ended.name} exited unexpectedly; stopping`);
        code = 1;
      }
    }
  } catch (error) {
    console.error(`[demo] ${(error as Error).message}; stopping`);
    code = 1;
  } finally {
    await stopAll();
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
  if (code === 0 && signals > 1) code = 1;
  for (const child of children) {
    const status = await child.status;
    if (status.code !== 0 && code === 0) {
      console.error(`[demo] ${child.name} exited with code ${status.code}`);
      code = 1;
    }
  }
  console.log(`[demo] stopped`);
  return code;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
