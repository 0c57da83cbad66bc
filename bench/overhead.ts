/**
 * What the hub adds: closed-loop throughput with `wrk` (and the hub's CPU
 * time per request), and open-loop latency at a fixed request rate, each
 * against the same handler served directly by `Deno.serve`.
 *
 * Run as a program it is the open-loop latency client:
 * `deno run -A bench/overhead.ts --client --targets direct=URL,hub=URL ...`
 * prints one JSON line with the latencies.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { parseResponseHead } from "../_codec.ts";
import {
  cpuSeconds,
  DENO,
  listeningPorts,
  machineCpu,
  percentile,
  type Proc,
  round,
  runWrk,
  sleep,
  spawn,
  startDirect,
  startHub,
  startWorkers,
  stopAll,
  summarizeNewestProfile,
  type WrkResult,
} from "./_util.ts";

const TRIVIAL = "bench/workers/trivial.ts";

// ------------------------------------------------------------- throughput

/** Settings of the throughput run. */
export interface ThroughputOptions {
  /** Worker processes. */
  workers: number;
  /** Slots per worker process. */
  concurrency: number;
  /** wrk threads and connections. */
  threads: number;
  connections: number;
  /** Warm-up and measured seconds. */
  warmupSeconds: number;
  seconds: number;
}

/** One measured wrk run with CPU accounting. */
export interface ThroughputRun extends WrkResult {
  /** CPU seconds of the server process (hub, or Deno.serve). */
  serverCpu: number;
  /** Server CPU microseconds per request. */
  serverCpuUsPerRequest: number;
  /** CPU seconds of all worker processes (hub run only). */
  workersCpu: number;
  /** Worker CPU microseconds per request (hub run only). */
  workersCpuUsPerRequest: number;
  /** Whole-machine busy CPU seconds over the run, and the capacity. */
  machineBusy: number;
  machineCapacity: number;
  /** Busy CPU seconds not charged to server, workers or wrk. */
  otherCpu: number;
}

/** Results of {@linkcode throughput}. */
export interface ThroughputResult {
  options: ThroughputOptions;
  hub: ThroughputRun;
  /** The same number of slots, all in one worker process. */
  oneProcess?: ThroughputRun;
  /** The same slots with the workers' inline engine (`--engine inline`). */
  inline?: ThroughputRun;
  /**
   * The same shape through `bench/workers/floor_hub.ts` and
   * `floor_worker.ts`: the design's floor in Deno, with none of the work.
   */
  floor?: ThroughputRun;
  direct: ThroughputRun;
}

async function measure(
  url: string,
  server: Proc,
  workers: Proc[],
  o: ThroughputOptions,
): Promise<ThroughputRun> {
  await runWrk({
    url,
    threads: o.threads,
    connections: o.connections,
    seconds: o.warmupSeconds,
  });
  await sleep(200);
  const cpu0 = cpuSeconds(server.pid);
  const w0 = workers.reduce((s, w) => s + cpuSeconds(w.pid), 0);
  const m0 = machineCpu();
  const r = await runWrk({
    url,
    threads: o.threads,
    connections: o.connections,
    seconds: o.seconds,
  });
  const m1 = machineCpu();
  const serverCpu = cpuSeconds(server.pid) - cpu0;
  const workersCpu = workers.reduce((s, w) => s + cpuSeconds(w.pid), 0) - w0;
  const busy = m1.busy - m0.busy;
  return {
    ...r,
    serverCpu: round(serverCpu),
    serverCpuUsPerRequest: round(serverCpu / r.requests * 1e6, 1),
    workersCpu: round(workersCpu),
    workersCpuUsPerRequest: round(workersCpu / r.requests * 1e6, 1),
    machineBusy: round(busy),
    machineCapacity: round(m1.total - m0.total),
    otherCpu: round(Math.max(0, busy - serverCpu - workersCpu - r.wrkCpu)),
    wrkCpu: round(r.wrkCpu),
    rps: round(r.rps, 0),
  };
}

/**
 * Throughput of the trivial handler through the hub (CLI subprocess with
 * `workers` worker CLI subprocesses) and directly on `Deno.serve`.
 */
export async function throughput(
  o: ThroughputOptions,
): Promise<ThroughputResult> {
  const bound = (o.warmupSeconds + o.seconds) + 60;
  const viaHub = async (
    count: number,
    concurrency: number,
    args: string[] = [],
  ) => {
    const h = await startHub({ maxSeconds: bound });
    let workers: Proc[] = [];
    try {
      workers = await startWorkers({
        count,
        concurrency,
        handler: TRIVIAL,
        workerPort: h.workerPort,
        maxSeconds: bound,
        args,
      });
      return await measure(`http://127.0.0.1:${h.port}/`, h.proc, workers, o);
    } finally {
      await stopAll([h.proc, ...workers]);
    }
  };
  const hub = await viaHub(o.workers, o.concurrency);
  // The same shape with the other worker engine: what `serve` saves.
  const inline = await viaHub(o.workers, o.concurrency, [
    "--engine",
    "inline",
  ]);
  const floor = await floorRun(o, bound);
  // The same slots in one process: what the split into processes costs.
  const oneProcess = o.workers > 1
    ? await viaHub(1, o.workers * o.concurrency)
    : undefined;
  let direct: ThroughputRun;
  {
    const d = await startDirect({ handler: TRIVIAL, maxSeconds: bound });
    try {
      direct = await measure(`http://127.0.0.1:${d.port}/`, d.proc, [], o);
    } finally {
      await stopAll([d.proc]);
    }
  }
  return { options: o, hub, inline, oneProcess, floor, direct };
}

/** The floor relay and its raw-socket workers, running. */
interface FloorProcs {
  relay: Proc;
  port: number;
  workers: Proc[];
}

// Starts bench/workers/floor_hub.ts and `count` floor workers of
// `concurrency` connections each.
async function startFloor(
  count: number,
  concurrency: number,
  bound: number,
): Promise<FloorProcs> {
  const relay = await spawn([DENO, "run", "-A", "bench/workers/floor_hub.ts"], {
    name: "floor relay",
    maxSeconds: bound,
  });
  const workers: Proc[] = [];
  try {
    const { port, workerPort } = await listeningPorts(relay);
    for (let i = 0; i < count; i++) {
      workers.push(
        await spawn([
          DENO,
          "run",
          "-A",
          "bench/workers/floor_worker.ts",
          `127.0.0.1:${workerPort}`,
          String(concurrency),
        ], { name: `floor worker ${i + 1}`, maxSeconds: bound }),
      );
    }
    for (const p of workers) await p.waitFor(/^Connected to /, 30_000);
    return { relay, port, workers };
  } catch (error) {
    await stopAll([relay, ...workers]);
    throw error;
  }
}

// The floor run: a minimal relay and raw-socket workers of the same shape.
async function floorRun(
  o: ThroughputOptions,
  bound: number,
): Promise<ThroughputRun> {
  const f = await startFloor(o.workers, o.concurrency, bound);
  try {
    return await measure(
      `http://127.0.0.1:${f.port}/`,
      f.relay,
      f.workers,
      o,
    );
  } finally {
    await stopAll([f.relay, ...f.workers]);
  }
}

// ---------------------------------------------------------------- profile

/** Where the hub's CPU went during a saturated throughput run. */
export interface HubProfile {
  /** How it was taken: `perf` (CPU samples) or `v8` (wall-time samples). */
  tool: "perf" | "v8";
  /** Requests served while profiling, and the hub's CPU per request. */
  requests: number;
  rps: number;
  hubCpuUsPerRequest: number;
  /** Rows: share of samples, CPU µs per request, what. */
  sections: { title: string; rows: [number, number, string][] }[];
}

async function haveCommand(cmd: string, args: string[]): Promise<boolean> {
  try {
    await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" })
      .output();
    return true;
  } catch {
    return false;
  }
}

// `JS:+'name file:///…/hub.ts:12:34 (/tmp/perf-1.map)` → `name (hub.ts)`.
// Line numbers in the perf map are of the type-stripped JS, so dropped
// except to tell anonymous functions apart.
function shortFrame(f: string): string {
  const m = f.match(/^JS:[*+~^]?'?(.*?) ?(\S+?):(\d+):\d+(?: \(|$)/);
  if (m === null) return f;
  const file = m[2].replace(/^.*\//, "");
  return m[1] === ""
    ? `(anonymous, ${file} js line ${m[3]})`
    : `${m[1]} (${file})`;
}

/**
 * Classifies `perf script` samples of the hub: by thread and stack kind, by
 * kernel entry, and by the innermost hub-code JS function on the stack
 * (which includes the runtime code it called).
 */
export function classifyPerfSamples(
  text: string,
  requests: number,
  sampleUs: number,
): HubProfile["sections"] {
  const samples: { comm: string; frames: string[] }[] = [];
  let cur: { comm: string; frames: string[] } | null = null;
  for (const line of text.split("\n")) {
    if (line.trim() === "") {
      if (cur !== null) samples.push(cur);
      cur = null;
    } else if (line[0] !== " " && line[0] !== "\t") {
      cur = { comm: line.trim().split(/\s+/)[0], frames: [] };
    } else if (cur !== null) {
      const t = line.trim();
      const sp = t.indexOf(" ");
      cur.frames.push(sp < 0 ? "" : t.slice(sp + 1));
    }
  }
  if (cur !== null) samples.push(cur);
  const kinds = new Map<string, number>();
  const kernel = new Map<string, number>();
  const inner = new Map<string, number>();
  const add = (m: Map<string, number>, k: string) =>
    m.set(k, (m.get(k) ?? 0) + 1);
  const SYSCALLS = [
    "__x64_sys_sendto",
    "__x64_sys_write",
    "__x64_sys_writev",
    "__x64_sys_recvfrom",
    "__x64_sys_read",
    "__x64_sys_epoll_wait",
    "__x64_sys_futex",
    "exc_page_fault",
    "__x64_sys_madvise",
    "__x64_sys_mmap",
    "__x64_sys_munmap",
    "__x64_sys_mprotect",
    "schedule",
  ];
  for (const s of samples) {
    if (!s.comm.startsWith("deno")) {
      add(kinds, "V8 background threads (concurrent GC, compiler)");
      continue;
    }
    const inKernel = s.frames.length > 0 &&
      s.frames[0].includes("[kernel.kallsyms]");
    const js = s.frames.filter((f) => f.includes("JS:"));
    const hub = js.filter((f) => f.includes("file:///"));
    const where = inKernel ? " — in the kernel" : "";
    if (hub.length > 0) {
      add(kinds, `main thread, hub JS on the stack${where}`);
      add(inner, shortFrame(hub[0]));
    } else if (js.length > 0) {
      add(kinds, `main thread, only Deno's own JS on the stack${where}`);
      add(inner, `[Deno JS] ${shortFrame(js[0])}`);
    } else {
      add(
        kinds,
        `main thread, no JS on the stack (Deno.serve/hyper, tokio, op completions, GC)${where}`,
      );
    }
    if (inKernel) {
      const names = new Set(s.frames.map((f) => f.split(" ")[0]));
      add(kernel, SYSCALLS.find((k) => names.has(k)) ?? "other kernel");
    }
  }
  const rows = (m: Map<string, number>, n: number) =>
    [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, n).map((
      [k, v],
    ) =>
      [
        round(100 * v / samples.length, 1),
        round(v * sampleUs / requests, 1),
        k,
      ] as [number, number, string]
    );
  return [
    { title: "Thread and stack", rows: rows(kinds, 20) },
    { title: "Kernel time by entry point", rows: rows(kernel, 14) },
    {
      title:
        "Innermost hub function on the stack (includes the runtime code it calls)",
      rows: rows(inner, 30),
    },
  ];
}

/**
 * Profiles the hub under the throughput load: with `perf record` (CPU
 * samples, JIT names from `--perf-basic-prof`) when perf is installed, else
 * with V8's `--cpu-prof` (wall-time samples of the JS thread).
 */
export async function profileHub(o: ThroughputOptions): Promise<HubProfile> {
  const usePerf = await haveCommand("perf", ["--version"]);
  const dir = await Deno.makeTempDir({ prefix: "pothead-prof-" });
  const bound = o.warmupSeconds + o.seconds + 90;
  const h = await startHub({
    maxSeconds: bound,
    denoFlags: usePerf
      ? ["--v8-flags=--perf-basic-prof"]
      : ["--cpu-prof", `--cpu-prof-dir=${dir}`],
  });
  let workers: Proc[] = [];
  const hz = 1999;
  try {
    workers = await startWorkers({
      count: o.workers,
      concurrency: o.concurrency,
      handler: TRIVIAL,
      workerPort: h.workerPort,
      maxSeconds: bound,
    });
    const url = `http://127.0.0.1:${h.port}/`;
    const load = { url, threads: o.threads, connections: o.connections };
    await runWrk({ ...load, seconds: o.warmupSeconds });
    const cpu0 = cpuSeconds(h.proc.pid);
    const recording = usePerf
      ? new Deno.Command("perf", {
        args: [
          "record",
          "-e",
          "cpu-clock",
          "-F",
          String(hz),
          "-g",
          "-p",
          String(h.proc.pid),
          "-o",
          `${dir}/perf.data`,
          "--",
          "sleep",
          String(o.seconds),
        ],
        stdout: "null",
        stderr: "null",
        signal: AbortSignal.timeout((o.seconds + 30) * 1000),
      }).output()
      : null;
    const r = await runWrk({ ...load, seconds: o.seconds });
    const hubCpu = cpuSeconds(h.proc.pid) - cpu0;
    await recording;
    const base = {
      requests: r.requests,
      rps: round(r.rps, 0),
      hubCpuUsPerRequest: round(hubCpu / r.requests * 1e6, 1),
    };
    if (usePerf) {
      const out = await new Deno.Command("perf", {
        args: ["script", "-i", `${dir}/perf.data`, "-F", "comm,tid,ip,sym,dso"],
        stdout: "piped",
        stderr: "null",
        signal: AbortSignal.timeout(120_000),
      }).output();
      return {
        tool: "perf",
        ...base,
        sections: classifyPerfSamples(
          new TextDecoder().decode(out.stdout),
          r.requests,
          1e6 / hz,
        ),
      };
    }
    await stopAll([h.proc, ...workers]);
    const p = await summarizeNewestProfile(dir, 30);
    const perRequest = (ms: number) => round(ms * 1000 / r.requests, 1);
    return {
      tool: "v8",
      ...base,
      sections: [{
        title:
          `V8 wall-time samples of the JS thread, self time (busy ${p.busyMs} of ${p.wallMs} ms)`,
        rows: p.bySelf.map((e) =>
          [
            round(100 * e.selfMs / p.busyMs, 1),
            perRequest(e.selfMs),
            e.fn,
          ] as [number, number, string]
        ),
      }],
    };
  } finally {
    await stopAll([h.proc, ...workers]);
    await Deno.remove(`/tmp/perf-${h.proc.pid}.map`).catch(() => {});
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

// ---------------------------------------------------------------- latency

/** Settings of the open-loop latency run. */
export interface LatencyOptions {
  /** Requests per second sent to one target. */
  rate: number;
  /** Measured requests per target. */
  count: number;
  /** Requests per block; blocks alternate between the targets. */
  block: number;
  /** Unmeasured requests per target first. */
  warmup: number;
}

/** Latency percentiles of one target in milliseconds. */
export interface LatencySummary {
  count: number;
  errors: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  /** Median of each block, in order. */
  blockMedians: number[];
}

/** Results of {@linkcode latency}. */
export interface LatencyResult {
  options: LatencyOptions;
  direct: LatencySummary;
  hub: LatencySummary;
  /** hub p50 minus direct p50, in milliseconds. */
  addedP50: number;
  /** The floor relay (`bench/workers/floor_hub.ts`, one raw worker). */
  floor: LatencySummary;
  /** floor p50 minus direct p50, in milliseconds. */
  floorAddedP50: number;
  /** CPU microseconds per request of the floor relay and its worker. */
  floorCpuUsPerRequest: number;
  floorWorkerCpuUsPerRequest: number;
  /** Latest a send left after its scheduled time, in milliseconds. */
  maxSendLag: number;
  /** Most sockets the client had open to one target. */
  maxSockets: number;
  /** CPU microseconds of the hub per request during the run. */
  hubCpuUsPerRequest: number;
  /** CPU microseconds of the worker process per request during the run. */
  workerCpuUsPerRequest: number;
  /** CPU microseconds of the direct Deno.serve per request during the run. */
  directCpuUsPerRequest: number;
  /** The hub's latency split by its Server-Timing field. */
  serverTiming: ServerTimingSplit;
}

/**
 * Open-loop latency: the trivial handler behind a hub (one worker process,
 * concurrency 4) and directly on `Deno.serve`, measured by a client
 * subprocess that sends at a fixed rate regardless of responses.
 */
export async function latency(o: LatencyOptions): Promise<LatencyResult> {
  const seconds = (2 * (o.count + o.warmup)) / o.rate;
  const bound = seconds + 90;
  const procs: Proc[] = [];
  try {
    const h = await startHub({ maxSeconds: bound });
    procs.push(h.proc);
    procs.push(
      ...await startWorkers({
        count: 1,
        concurrency: 4,
        handler: TRIVIAL,
        workerPort: h.workerPort,
        maxSeconds: bound,
      }),
    );
    const d = await startDirect({ handler: TRIVIAL, maxSeconds: bound });
    procs.push(d.proc);
    const f = await startFloor(1, 4, bound);
    procs.push(f.relay, ...f.workers);
    const client = await spawn([
      DENO,
      "run",
      "-A",
      "bench/overhead.ts",
      "--client",
      "--targets",
      `direct=127.0.0.1:${d.port},hub=127.0.0.1:${h.port},floor=127.0.0.1:${f.port}`,
      "--rate",
      String(o.rate),
      "--count",
      String(o.count),
      "--block",
      String(o.block),
      "--warmup",
      String(o.warmup),
    ], { name: "latency client", maxSeconds: seconds + 60 });
    procs.push(client);
    const worker = procs[1];
    const measured = [h.proc, worker, d.proc, f.relay, f.workers[0]];
    const cpu0 = measured.map((p) => cpuSeconds(p.pid));
    const line = await client.waitFor(/^\{.*\}$/, (seconds + 50) * 1000);
    const [hubCpu, workerCpu, directCpu, floorCpu, floorWorkerCpu] = measured
      .map((p, i) => cpuSeconds(p.pid) - cpu0[i]);
    // warm-up requests count too: they were served in the window
    const perRequest = (cpu: number) =>
      round(cpu / (o.count + o.warmup) * 1e6, 1);
    const out = JSON.parse(line[0]) as ClientReport;
    const direct = out.targets.direct;
    const hub = out.targets.hub;
    return {
      options: o,
      direct,
      hub,
      floor: out.targets.floor,
      addedP50: round(hub.p50 - direct.p50, 3),
      floorAddedP50: round(out.targets.floor.p50 - direct.p50, 3),
      floorCpuUsPerRequest: perRequest(floorCpu),
      floorWorkerCpuUsPerRequest: perRequest(floorWorkerCpu),
      maxSendLag: out.maxSendLag,
      maxSockets: out.maxSockets,
      serverTiming: out.serverTiming,
      hubCpuUsPerRequest: perRequest(hubCpu),
      workerCpuUsPerRequest: perRequest(workerCpu),
      directCpuUsPerRequest: perRequest(directCpu),
    };
  } finally {
    await stopAll(procs);
  }
}

// ------------------------------------------------- the open-loop client

interface ClientReport {
  targets: Record<string, LatencySummary>;
  maxSendLag: number;
  maxSockets: number;
  serverTiming: ServerTimingSplit;
}

/** Hub responses split by their Server-Timing field (medians, ms). */
export interface ServerTimingSplit {
  /** Responses that carried `worker;dur`. */
  count: number;
  /** Median worker time: the hub sending the request to the response. */
  workerP50: number;
  /** Median of client-seen latency minus worker time (hub and network). */
  restP50: number;
}

const MAX_SOCKETS = 64;

/** A keep-alive HTTP/1.1 socket that carries one GET at a time. */
class Socket {
  #conn: Deno.TcpConn;
  #buf = new Uint8Array(16 * 1024);
  #end = 0;
  constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
  }

  /**
   * Sends `request` and resolves when the whole response has arrived, with
   * the status and the Server-Timing field (if any).
   */
  async exchange(
    request: Uint8Array,
  ): Promise<{ status: number; timing: string | null }> {
    let at = 0;
    while (at < request.length) {
      at += await this.#conn.write(request.subarray(at));
    }
    while (true) {
      const head = parseResponseHead(this.#buf, 0, this.#end);
      if (head !== null) {
        const cl = head.value.headers.find(([n]) => n === "content-length");
        if (cl === undefined) {
          throw new Error("response without Content-Length");
        }
        const total = head.used + Number(cl[1]);
        while (this.#end < total) await this.#fill();
        this.#buf.copyWithin(0, total, this.#end);
        this.#end -= total;
        const timing = head.value.headers.find(([n]) => n === "server-timing");
        return { status: head.value.status, timing: timing?.[1] ?? null };
      }
      await this.#fill();
    }
  }

  async #fill(): Promise<void> {
    if (this.#end === this.#buf.length) {
      const bigger = new Uint8Array(this.#buf.length * 2);
      bigger.set(this.#buf);
      this.#buf = bigger;
    }
    const n = await this.#conn.read(this.#buf.subarray(this.#end));
    if (n === null) throw new Error("connection closed");
    this.#end += n;
  }

  close(): void {
    try {
      this.#conn.close();
    } catch {
      // gone
    }
  }
}

async function clientMain(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      client: { type: "boolean" },
      targets: { type: "string" },
      rate: { type: "string" },
      count: { type: "string" },
      block: { type: "string" },
      warmup: { type: "string" },
    },
  });
  const rate = Number(values.rate ?? 200);
  const count = Number(values.count ?? 2000);
  const block = Number(values.block ?? 500);
  const warmup = Number(values.warmup ?? 200);
  const targets = (values.targets ?? "").split(",").map((t) => {
    const [name, addr] = t.split("=");
    const [hostname, port] = addr.split(":");
    return { name, hostname, port: Number(port) };
  });
  const interval = 1000 / rate;
  let maxSendLag = 0;
  let maxSockets = 0;

  const pools = new Map<string, { idle: Socket[]; open: number }>();
  const runTarget = async (
    t: (typeof targets)[number],
    n: number,
    into: number[] | null,
    errors: { n: number },
  ) => {
    const pool = pools.get(t.name) ?? { idle: [], open: 0 };
    pools.set(t.name, pool);
    const idle = pool.idle;
    const request = new TextEncoder().encode(
      `GET / HTTP/1.1\r\nhost: ${t.hostname}:${t.port}\r\n\r\n`,
    );
    const inflight = new Set<Promise<void>>();
    const t0 = performance.now() + 20;
    for (let i = 0; i < n; i++) {
      const due = t0 + i * interval;
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait);
      maxSendLag = Math.max(maxSendLag, performance.now() - due);
      const one = (async () => {
        let sock = idle.pop();
        if (sock === undefined) {
          if (pool.open >= MAX_SOCKETS) {
            errors.n++;
            return;
          }
          pool.open++;
          maxSockets = Math.max(maxSockets, pool.open);
          const conn = await Deno.connect({
            hostname: t.hostname,
            port: t.port,
          });
          conn.setNoDelay(true);
          sock = new Socket(conn);
        }
        const start = performance.now();
        try {
          const { status, timing } = await sock.exchange(request);
          const ms = performance.now() - start;
          if (status !== 200) errors.n++;
          else {
            into?.push(ms);
            const w = timing?.match(/worker;dur=([\d.]+)/);
            if (w && into !== null) {
              workerMs.push(Number(w[1]));
              ownMs.push(ms - Number(w[1]));
            }
          }
          idle.push(sock);
        } catch {
          errors.n++;
          pool.open--;
          sock.close();
        }
      })();
      inflight.add(one);
      one.finally(() => inflight.delete(one));
    }
    // Bounded: sockets still busy after 10 s are abandoned with the process.
    await Promise.race([Promise.all(inflight), sleep(10_000)]);
  };

  // From the hub's Server-Timing: time at the worker (send to response) and
  // the rest of what the client saw.
  const workerMs: number[] = [];
  const ownMs: number[] = [];
  const samples = new Map<string, number[]>();
  const errors = new Map<string, { n: number }>();
  const blockMedians = new Map<string, number[]>();
  for (const t of targets) {
    samples.set(t.name, []);
    errors.set(t.name, { n: 0 });
    blockMedians.set(t.name, []);
    await runTarget(t, warmup, null, { n: 0 });
  }
  for (let done = 0; done < count; done += block) {
    const n = Math.min(block, count - done);
    for (const t of targets) {
      const got: number[] = [];
      await runTarget(t, n, got, errors.get(t.name)!);
      samples.get(t.name)!.push(...got);
      got.sort((a, b) => a - b);
      blockMedians.get(t.name)!.push(round(percentile(got, 50), 3));
    }
  }
  for (const pool of pools.values()) for (const s of pool.idle) s.close();
  workerMs.sort((a, b) => a - b);
  ownMs.sort((a, b) => a - b);
  const report: ClientReport = {
    targets: {},
    maxSendLag: round(maxSendLag, 2),
    maxSockets,
    serverTiming: {
      count: workerMs.length,
      workerP50: round(percentile(workerMs, 50), 3),
      restP50: round(percentile(ownMs, 50), 3),
    },
  };
  for (const t of targets) {
    const s = samples.get(t.name)!.sort((a, b) => a - b);
    report.targets[t.name] = {
      count: s.length,
      errors: errors.get(t.name)!.n,
      p50: round(percentile(s, 50), 3),
      p90: round(percentile(s, 90), 3),
      p99: round(percentile(s, 99), 3),
      max: round(s[s.length - 1] ?? NaN, 3),
      blockMedians: blockMedians.get(t.name)!,
    };
  }
  console.log(JSON.stringify(report));
}

if (import.meta.main) {
  if (!Deno.args.includes("--client")) {
    console.error("usage: overhead.ts --client --targets name=host:port,...");
    Deno.exit(2);
  }
  await clientMain(Deno.args);
  Deno.exit(0);
}
