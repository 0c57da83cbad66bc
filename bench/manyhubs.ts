/**
 * The many-hubs benchmark: what spreading workers over several hubs costs in
 * latency, against one hub holding the same workers.
 *
 * The same 4 worker processes (`--concurrency 1`, a job that sleeps for an
 * exponential 20 ms on average) and the same seeded open-loop Poisson trace
 * are run through:
 *
 * - A: one hub on 127.0.0.1 with all workers;
 * - B: two hubs on 127.0.0.2 and 127.0.0.3, every worker connected to both,
 *   consumer requests alternating between the hubs;
 * - C: three hubs on 127.0.0.2 to 127.0.0.4, likewise;
 * - B·id and C·id: as B and C, with workers that send the PTTH handshake
 *   (`--worker-id`), so a hub attaches a reopened connection at once instead
 *   of waiting `--handshake-wait` (50 ms) for a handshake that never comes.
 *
 * Before the cells, a starvation probe: one worker, two hubs, one hub kept
 * busy by closed-loop consumers, requests sent to the other one at a time.
 *
 * A separate load client process (this file with `--client`) sends every
 * request at its scheduled time whatever came back, over as many keep-alive
 * connections as it needs, and records each latency. Hubs log at `debug` to
 * a file: lines with "retrying request" are declined requests the hub resent
 * (logged at `info`), lines with "worker connection attached" are worker
 * (re)connections.
 *
 * ```sh
 * deno run -A bench/manyhubs.ts [--quick] [--smoke] [--loads=0.7,0.9]
 *   [--setups=A,B,C,B-id,C-id] [--duration=S] [--seed=N] [--out=DIR]
 * ```
 *
 * Writes `manyhubs.md` and `manyhubs.json` under `bench/results/`
 * (`bench/results/quick/` for `--quick`, a temporary directory for
 * `--smoke`, removed afterwards).
 *
 * @module
 */

import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import {
  cpuSeconds,
  DENO,
  formatMs,
  killAll,
  listeningPorts,
  loadAverage,
  machineInfo,
  type Proc,
  ROOT,
  sleep,
  spawn,
  stopAll,
  withTimeout,
} from "./_util.ts";
import { makeTrace, type Trace, type TraceOptions } from "./_trace.ts";
import { type Percentiles, simulateFifo, summarize } from "./_sim.ts";
import { setNiceness } from "./_systems.ts";

// ------------------------------------------------------------------ options

/** One arrangement of hubs and workers. */
interface Setup {
  /** Short name: `A`, `B`, `C`, `B-id`, `C-id`. */
  name: string;
  /** Addresses the hubs bind. */
  hosts: string[];
  /** Whether workers send the PTTH handshake (`--worker-id`). */
  ids: boolean;
}

const SETUPS: Record<string, Setup> = {
  A: { name: "A", hosts: ["127.0.0.1"], ids: false },
  B: { name: "B", hosts: ["127.0.0.2", "127.0.0.3"], ids: false },
  C: { name: "C", hosts: ["127.0.0.2", "127.0.0.3", "127.0.0.4"], ids: false },
  "B-id": { name: "B-id", hosts: ["127.0.0.2", "127.0.0.3"], ids: true },
  "C-id": {
    name: "C-id",
    hosts: ["127.0.0.2", "127.0.0.3", "127.0.0.4"],
    ids: true,
  },
};

/** Everything one invocation runs. */
interface Plan {
  mode: "full" | "quick" | "smoke";
  setups: string[];
  loads: number[];
  workers: number;
  meanMs: number;
  /** Trace length per cell, seconds. */
  durationS: number;
  /** Longest wait for answers after the last arrival, milliseconds. */
  drainMs: number;
  /** Concurrent warm-up requests per hub, and rounds of them. */
  warmConcurrency: number;
  warmRounds: number;
  /** Bound of the starvation probe's one request, milliseconds. */
  probeMs: number;
  seed: number;
  /** Output directory, or null for a temporary one. */
  out: string | null;
  nice: number;
  /** Hard bound on the whole run, seconds. */
  maxSeconds: number;
}

const HELP = `Usage: deno run -A bench/manyhubs.ts [options]

  --quick           6 s per cell (about 2 min)
  --smoke           1.5 s per cell, setups A, B, C at 70%; proves it runs,
                    judges nothing, writes to a temporary directory (< 40 s)
  --setups=A,B,C,B-id,C-id
  --loads=0.7,0.9   utilisations
  --duration=S      trace length per cell (default 20, quick 6)
  --seed=N          trace seed (default 1)
  --out=DIR         where to write manyhubs.{md,json} (default bench/results,
                    bench/results/quick with --quick)
  --nice=N          nice value for the benchmark and all it starts
                    (default -10 as root)
  --render=FILE     rewrite manyhubs.md (and the notes in FILE) from a
                    manyhubs.json with this version's text; run nothing
`;

function parsePlan(args: string[]): Plan | "help" | { render: string } {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: "boolean" },
      smoke: { type: "boolean" },
      setups: { type: "string" },
      loads: { type: "string" },
      duration: { type: "string" },
      seed: { type: "string" },
      out: { type: "string" },
      nice: { type: "string" },
      render: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) return "help";
  if (values.render !== undefined) return { render: values.render };
  const mode = values.smoke ? "smoke" : values.quick ? "quick" : "full";
  const setups = (values.setups ??
    (mode === "smoke" ? "A,B,C" : "A,B,C,B-id,C-id")).split(",").map((s) =>
      s.trim()
    );
  for (const s of setups) {
    if (!(s in SETUPS)) {
      throw new RangeError(
        `Invalid --setups: expected some of ${
          Object.keys(SETUPS).join(",")
        }, got "${s}"`,
      );
    }
  }
  if (!setups.includes("A")) setups.unshift("A"); // the reference
  const loads = (values.loads ?? (mode === "smoke" ? "0.7" : "0.7,0.9"))
    .split(",").map(Number);
  for (const l of loads) {
    if (!(l > 0 && l < 1)) {
      throw new RangeError(`Invalid --loads: expected (0, 1), got ${l}`);
    }
  }
  const durationS = Number(
    values.duration ?? (mode === "smoke" ? 1.5 : mode === "quick" ? 6 : 20),
  );
  if (!(durationS > 0 && durationS <= 600)) {
    throw new RangeError(`Invalid --duration: got "${values.duration}"`);
  }
  const seed = Number(values.seed ?? 1);
  if (!Number.isInteger(seed)) {
    throw new RangeError(`Invalid --seed: got "${values.seed}"`);
  }
  const root = Deno.uid?.() === 0;
  const nice = Number(values.nice ?? (root ? -10 : 0));
  if (!Number.isInteger(nice) || nice < -20 || nice > 19) {
    throw new RangeError(`Invalid --nice: got "${values.nice}"`);
  }
  const drainMs = mode === "full" ? 10_000 : 4_000;
  const cells = setups.length * loads.length;
  return {
    mode,
    setups,
    loads,
    workers: 4,
    meanMs: 20,
    durationS,
    drainMs,
    warmConcurrency: mode === "smoke" ? 8 : 32,
    warmRounds: mode === "smoke" ? 1 : 3,
    probeMs: mode === "full" ? 5000 : mode === "quick" ? 3000 : 2000,
    seed,
    // Quick runs never overwrite the committed full results.
    out: mode === "smoke" ? null : values.out ??
      join(ROOT, mode === "quick" ? "bench/results/quick" : "bench/results"),
    nice,
    maxSeconds: mode === "smoke"
      ? 40
      : Math.ceil(cells * (durationS + drainMs / 1000 + 25) + 120),
  };
}

// ------------------------------------------------------------ load client

/** What the parent tells the load client. */
interface ClientSpec {
  /** Consumer base URLs of the hubs; request i goes to urls[i % length]. */
  urls: string[];
  trace: TraceOptions;
  drainMs: number;
  warmConcurrency: number;
  warmRounds: number;
  /** Where to write the samples (JSON). */
  out: string;
}

/** One request of a replay; times in the client's performance.now(). */
interface Sample {
  hub: number;
  scheduled: number;
  sent: number;
  done: number;
  status: number;
  error?: string;
  worker?: string;
  slept?: number;
  overlap?: boolean;
  /** The start of the body of a non-200 answer. */
  body?: string;
}

async function send(
  base: string,
  ms: number,
  signal: AbortSignal,
): Promise<Omit<Sample, "hub" | "scheduled">> {
  const sent = performance.now();
  try {
    const response = await fetch(`${base}/job?ms=${ms.toFixed(3)}`, {
      signal,
    });
    const bytes = await response.arrayBuffer();
    const slept = response.headers.get("x-bench-slept");
    return {
      sent,
      done: performance.now(),
      status: response.status,
      worker: response.headers.get("x-bench-worker") ?? undefined,
      slept: slept === null ? undefined : Number(slept),
      overlap: response.headers.get("x-bench-overlap") === "1" || undefined,
      body: response.status === 200
        ? undefined
        : new TextDecoder().decode(bytes.slice(0, 200)).trim(),
    };
  } catch (error) {
    return {
      sent,
      done: performance.now(),
      status: 0,
      error: signal.aborted ? "timeout" : (error as Error).name,
    };
  }
}

/**
 * Sends request i at `t0 + arrivals[i]` to hub `i % urls.length`, whatever
 * happened to earlier ones. Requests still open `drainMs` after the last
 * arrival are aborted and count as errors.
 */
async function replay(
  urls: string[],
  trace: Trace,
  drainMs: number,
): Promise<Sample[]> {
  const n = trace.arrivals.length;
  const samples: Sample[] = new Array(n);
  const pending: Promise<void>[] = [];
  const controller = new AbortController();
  const t0 = performance.now() + 20;
  const last = n > 0 ? trace.arrivals[n - 1] : 0;
  const hardStop = t0 + last + 30_000;
  // setTimeout fires about a millisecond late: ask for the learned lateness
  // less, and send at once when the arrival is closer than that.
  let late = 1;
  let i = 0;
  while (i < n && performance.now() < hardStop) {
    const now = performance.now();
    const due = t0 + trace.arrivals[i];
    const ask = due - now - late;
    if (ask > 0.2) {
      await new Promise((resolve) => setTimeout(resolve, ask));
      const over = Math.min(performance.now() - now - ask, 5);
      late += 0.1 * (over - late);
      continue;
    }
    const index = i++;
    const hub = index % urls.length;
    pending.push(
      send(urls[hub], trace.service[index], controller.signal).then((s) => {
        samples[index] = { hub, scheduled: due, ...s };
      }),
    );
  }
  for (let j = i; j < n; j++) {
    const scheduled = t0 + trace.arrivals[j];
    samples[j] = {
      hub: j % urls.length,
      scheduled,
      sent: scheduled,
      done: scheduled,
      status: 0,
      error: "not sent",
    };
  }
  const remaining = Math.max(0, t0 + last + drainMs - performance.now());
  const timer = setTimeout(() => controller.abort(), remaining);
  await Promise.all(pending);
  clearTimeout(timer);
  return samples;
}

async function readLine(
  reader: ReadableStreamDefaultReader<string>,
): Promise<string | null> {
  let text = "";
  for (let guard = 0; guard < 10_000; guard++) {
    const { value, done } = await reader.read();
    if (done) return text === "" ? null : text;
    text += value;
    const nl = text.indexOf("\n");
    if (nl >= 0) return text.slice(0, nl);
  }
  return null;
}

/**
 * The load client: warms connections (prints `warm N` with N failed warm-up
 * requests), waits for `go` on stdin, replays the trace, writes the samples
 * to `spec.out` and prints `done`.
 */
async function client(spec: ClientSpec): Promise<number> {
  const trace = makeTrace(spec.trace);
  let warmFailures = 0;
  const controller = new AbortController();
  const guard = setTimeout(() => controller.abort(), 30_000);
  for (let round = 0; round < spec.warmRounds; round++) {
    const batch = spec.urls.flatMap((url) =>
      Array.from(
        { length: spec.warmConcurrency },
        () => send(url, 0, controller.signal),
      )
    );
    for (const s of await Promise.all(batch)) {
      if (s.status !== 200) warmFailures++;
    }
  }
  clearTimeout(guard);
  console.log(`warm ${warmFailures}`);
  const reader = Deno.stdin.readable.pipeThrough(new TextDecoderStream())
    .getReader();
  const line = await readLine(reader);
  await reader.cancel();
  if (line?.trim() !== "go") return 1;
  const began = Date.now();
  const samples = await replay(spec.urls, trace, spec.drainMs);
  await Deno.writeTextFile(spec.out, JSON.stringify({ began, samples }));
  console.log("done");
  return 0;
}

// ------------------------------------------------------------ processes

/**
 * Spawns `cmd` with its stderr appended to `logFile` (the parent reads the
 * file, so a chatty process never fills a pipe).
 */
function spawnLogged(
  cmd: string[],
  logFile: string,
  name: string,
  maxSeconds: number,
  env?: Record<string, string>,
  stdin = false,
): Promise<Proc> {
  return spawn(
    ["sh", "-c", 'f="$1"; shift; exec "$@" 2>>"$f"', "sh", logFile, ...cmd],
    { name, maxSeconds, env, stdin },
  );
}

async function tail(file: string, chars = 1500): Promise<string> {
  try {
    return (await Deno.readTextFile(file)).slice(-chars);
  } catch {
    return "";
  }
}

interface HubRun {
  host: string;
  proc: Proc;
  port: number;
  workerPort: number;
  log: string;
}

async function startHub(
  host: string,
  log: string,
  maxSeconds: number,
): Promise<HubRun> {
  const proc = await spawnLogged(
    [
      DENO,
      "run",
      "-A",
      "--unstable-no-legacy-abort",
      "hub.ts",
      "--hostname",
      host,
      "--port",
      "0",
      "--worker-port",
      "0",
      "--log-level",
      "debug",
      "--shutdown-grace",
      "1s",
    ],
    log,
    `hub ${host}`,
    maxSeconds,
  );
  try {
    return { host, proc, ...await listeningPorts(proc), log };
  } catch (error) {
    await proc.stop("SIGKILL");
    throw new Error(`${(error as Error).message}; log: ${await tail(log)}`);
  }
}

interface WorkerRun {
  proc: Proc;
  log: string;
}

async function startWorker(
  index: number,
  hubs: HubRun[],
  ids: boolean,
  log: string,
  maxSeconds: number,
): Promise<WorkerRun> {
  const id = `w${index + 1}`;
  const proc = await spawnLogged(
    [
      DENO,
      "run",
      "-A",
      "worker.ts",
      ...hubs.flatMap((h) => ["--connect", `${h.host}:${h.workerPort}`]),
      "--concurrency",
      "1",
      ...(ids ? ["--worker-id", id] : []),
      "bench/workers/sleep_job.ts",
    ],
    log,
    `worker ${id}`,
    maxSeconds,
    { BENCH_WORKER_ID: id },
  );
  return { proc, log };
}

/** Waits until `proc` printed `count` lines "Connected to …" (one per hub). */
async function connectedToAll(
  w: WorkerRun,
  count: number,
  ms: number,
): Promise<void> {
  const deadline = performance.now() + ms;
  while (performance.now() < deadline) {
    const n = w.proc.lines.filter((l) => l.startsWith("Connected to ")).length;
    if (n >= count) return;
    if (w.proc.exited) break;
    await sleep(25);
  }
  throw new Error(
    `${w.proc.name} did not connect to ${count} hubs within ${ms} ms; ` +
      `stdout: ${JSON.stringify(w.proc.lines.slice(-5))}; log: ${await tail(
        w.log,
      )}`,
  );
}

/** Counts lines of `file` containing each of `needles`. */
async function countLines(
  file: string,
  needles: string[],
): Promise<number[]> {
  let text = "";
  try {
    text = await Deno.readTextFile(file);
  } catch {
    return needles.map(() => 0);
  }
  const counts = needles.map(() => 0);
  for (const line of text.split("\n")) {
    needles.forEach((n, i) => {
      if (line.includes(n)) counts[i]++;
    });
    // Refusals past the first of an address in a 10 s window come as one
    // summary line (written when the window ends) counting them.
    const summed = REFUSED_SUMMED.exec(line);
    const at = needles.indexOf(REFUSED);
    if (summed !== null && at >= 0) counts[at] += Number(summed[1]);
  }
  return counts;
}

const RETRY = "retrying request";
const ATTACH = "worker connection attached";
const REFUSED = "worker handshake refused";
const REFUSED_SUMMED = /more worker handshakes refused .*count=([0-9]+)/;
// Log lines read `<ISO date> <level> <message> key=value…`.
const WARN = "Z warn ";
const ERROR = "Z error ";

// ------------------------------------------------------------------ results

/** Per-hub figures of one run. */
interface HubResult {
  host: string;
  requests: number;
  latency: Percentiles;
  /** Declined requests the hub resent. */
  retries: number;
  /** Worker connections attached during the replay. */
  attaches: number;
  /** New worker connections refused as a bad handshake during the replay. */
  refused: number;
  /** WARN and ERROR log lines during the replay. */
  warnings: number;
}

/** One setup at one load. */
interface CellResult {
  setup: string;
  hubs: number;
  ids: boolean;
  load: number;
  requests: number;
  /** Latency of answered (200) requests, ms (client send to last byte). */
  latency: Percentiles;
  /** Queue wait: latency minus the time the job slept, ms. */
  wait: Percentiles;
  /** p99 divided by setup A's p99 at the same load (this run). */
  p99VsA: number;
  /** p99 divided by the simulated ideal central FIFO queue's p99. */
  p99VsIdeal: number;
  /** Answered requests per second, first send to last answer. */
  throughput: number;
  /** Requests not answered 200. */
  errors: number;
  errorKinds: Record<string, number>;
  /** Hub log lines "retrying request", summed over hubs. */
  retries: number;
  retriesPerRequest: number;
  /** Hub log lines "worker connection attached", summed over hubs. */
  attaches: number;
  attachesPerRequest: number;
  /**
   * Hub log lines "worker handshake refused", summed over hubs: a plain
   * worker's new connection withdrawn (with the 408) within the hub's
   * handshake wait, which the hub reads as a malformed handshake.
   */
  refused: number;
  /** Hub WARN/ERROR log lines during the replay (refusals included). */
  hubWarnings: number;
  /** Worker stderr lines over the whole cell, and a few of them. */
  workerLogLines: number;
  workerLogSample: string[];
  /** Responses whose job overlapped another job of the same worker. */
  overlaps: number;
  /** Warm-up requests that failed. */
  warmFailures: number;
  /** Client send lateness, ms. */
  sendLateP99: number;
  sendLateMax: number;
  /**
   * Mean of (time the job slept − time asked), ms: timers firing late on a
   * loaded machine make jobs longer and the real utilisation higher.
   */
  serviceErrorMs: number;
  /**
   * Worker log lines "received "GET …"" where a 101 was expected: the hub
   * took a late handshake for a plain worker and sent it a request.
   */
  handshakeMisreads: number;
  /** CPU per answered request, ms: all hubs together, all workers. */
  hubCpuMs: number;
  workerCpuMs: number;
  /** Requests answered per worker. */
  perWorker: Record<string, number>;
  perHub: HubResult[];
  /** 1-minute load average after the cell. */
  loadAverage: number;
}

/** The whole report. */
interface Report {
  date: string;
  machine: {
    uname: string;
    cpuModel: string;
    cpus: number;
    deno: string;
    v8: string;
    loadAverageAtStart: number;
    loadAverageAtEnd: number;
  };
  plan: Plan;
  nice: number;
  elapsedS: number;
  /** The ideal central FIFO queue (K=4) on each load's trace. */
  ideal: Record<string, Percentiles>;
  cells: CellResult[];
  /** The starvation probe, plain and handshaking worker. */
  probes: ProbeResult[];
  notes: string[];
}

function analyse(
  samples: Sample[],
  service: Float64Array,
  hubs: HubRun[],
  hubCounts: number[][],
): Omit<
  CellResult,
  | "setup"
  | "hubs"
  | "ids"
  | "load"
  | "p99VsA"
  | "p99VsIdeal"
  | "hubWarnings"
  | "workerLogLines"
  | "workerLogSample"
  | "warmFailures"
  | "hubCpuMs"
  | "workerCpuMs"
  | "loadAverage"
  | "retries"
  | "retriesPerRequest"
  | "attaches"
  | "attachesPerRequest"
  | "refused"
  | "handshakeMisreads"
> {
  const ok = samples.filter((s) => s.status === 200);
  const errorKinds: Record<string, number> = {};
  for (const s of samples) {
    if (s.status === 200) continue;
    const kind = s.error ??
      `HTTP ${s.status}${s.body ? `: ${s.body.slice(0, 80)}` : ""}`;
    errorKinds[kind] = (errorKinds[kind] ?? 0) + 1;
  }
  const first = Math.min(...samples.map((s) => s.sent));
  const last = Math.max(...ok.map((s) => s.done));
  const perWorker: Record<string, number> = {};
  for (const s of ok) {
    const w = s.worker ?? "?";
    perWorker[w] = (perWorker[w] ?? 0) + 1;
  }
  const late = summarize(samples.map((s) => s.sent - s.scheduled));
  let over = 0;
  let slept = 0;
  samples.forEach((s, i) => {
    if (s.status !== 200 || s.slept === undefined) return;
    over += s.slept - service[i];
    slept++;
  });
  return {
    requests: samples.length,
    latency: summarize(ok.map((s) => s.done - s.sent)),
    wait: summarize(ok.map((s) => s.done - s.sent - (s.slept ?? 0))),
    throughput: last > first ? (ok.length * 1000) / (last - first) : 0,
    errors: samples.length - ok.length,
    errorKinds,
    overlaps: ok.filter((s) => s.overlap).length,
    sendLateP99: late.p99,
    sendLateMax: late.max,
    serviceErrorMs: slept > 0 ? over / slept : NaN,
    perWorker,
    perHub: hubs.map((h, i) => {
      const mine = ok.filter((s) => s.hub === i);
      return {
        host: h.host,
        requests: samples.filter((s) => s.hub === i).length,
        latency: summarize(mine.map((s) => s.done - s.sent)),
        retries: hubCounts[i][0],
        attaches: hubCounts[i][1],
        refused: hubCounts[i][2],
        warnings: hubCounts[i][3] + hubCounts[i][4],
      };
    }),
  };
}

// ------------------------------------------------------------------ a cell

/**
 * The values of `results` if all were fulfilled; otherwise kills the
 * processes that did start and throws the first rejection.
 */
function settled<T>(results: PromiseSettledResult<T>[]): T[] {
  const bad = results.find((r) => r.status === "rejected");
  if (bad !== undefined) {
    for (const r of results) {
      if (r.status === "fulfilled") {
        (r.value as { proc?: Proc }).proc?.kill("SIGKILL");
      }
    }
    throw (bad as PromiseRejectedResult).reason;
  }
  return results.map((r) => (r as PromiseFulfilledResult<T>).value);
}

async function runCell(
  plan: Plan,
  setup: Setup,
  load: number,
  dir: string,
  tag: string,
): Promise<CellResult> {
  const bound = Math.ceil(plan.durationS + plan.drainMs / 1000 + 90);
  const hubs: HubRun[] = [];
  const workers: WorkerRun[] = [];
  let clientProc: Proc | undefined;
  try {
    hubs.push(
      ...settled(
        await Promise.allSettled(
          setup.hosts.map((host, i) =>
            startHub(host, join(dir, `${tag}-hub${i + 1}.log`), bound)
          ),
        ),
      ),
    );
    workers.push(
      ...settled(
        await Promise.allSettled(
          Array.from(
            { length: plan.workers },
            (_, i) =>
              startWorker(
                i,
                hubs,
                setup.ids,
                join(dir, `${tag}-worker${i + 1}.log`),
                bound,
              ),
          ),
        ),
      ),
    );
    await Promise.all(
      workers.map((w) => connectedToAll(w, hubs.length, 30_000)),
    );
    // "Connected" follows the first connection to a hub; a plain worker's
    // connection is attached after the hub's 50 ms handshake wait.
    await sleep(300);

    const trace: TraceOptions = {
      workers: plan.workers,
      load,
      meanMs: plan.meanMs,
      dist: "exp",
      durationMs: plan.durationS * 1000,
      seed: plan.seed,
    };
    const out = join(dir, `${tag}-samples.json`);
    const spec: ClientSpec = {
      urls: hubs.map((h) => `http://${h.host}:${h.port}`),
      trace,
      drainMs: plan.drainMs,
      warmConcurrency: plan.warmConcurrency,
      warmRounds: plan.warmRounds,
      out,
    };
    clientProc = await spawnLogged(
      [
        DENO,
        "run",
        "-A",
        "bench/manyhubs.ts",
        "--client",
        JSON.stringify(spec),
      ],
      join(dir, `${tag}-client.log`),
      "load client",
      bound,
      undefined,
      true,
    );
    const warm = await clientProc.waitFor(/^warm (\d+)$/, 60_000);
    const needles = [RETRY, ATTACH, REFUSED, WARN, ERROR];
    const before = await Promise.all(
      hubs.map((h) => countLines(h.log, needles)),
    );
    const cpu = () => ({
      hubs: hubs.reduce((t, h) => t + cpuSeconds(h.proc.pid), 0),
      workers: workers.reduce((t, w) => t + cpuSeconds(w.proc.pid), 0),
    });
    const cpu0 = cpu();
    await clientProc.send("go");
    await clientProc.waitFor(
      /^done$/,
      plan.durationS * 1000 + plan.drainMs + 30_000,
    );
    const cpu1 = cpu();
    const after = await Promise.all(
      hubs.map((h) => countLines(h.log, needles)),
    );
    const hubCounts = after.map((a, i) => a.map((n, j) => n - before[i][j]));
    const { samples } = JSON.parse(await Deno.readTextFile(out)) as {
      samples: Sample[];
    };
    const base = analyse(
      samples,
      makeTrace(trace).service,
      hubs,
      hubCounts,
    );
    const answered = Math.max(1, base.latency.n);
    const retries = hubCounts.reduce((t, c) => t + c[0], 0);
    const attaches = hubCounts.reduce((t, c) => t + c[1], 0);
    const workerLines: string[] = [];
    for (const w of workers) {
      const text = await tail(w.log, 1_000_000);
      workerLines.push(...text.split("\n").filter((l) => l.trim() !== ""));
    }
    return {
      setup: setup.name,
      hubs: hubs.length,
      ids: setup.ids,
      load,
      ...base,
      p99VsA: NaN,
      p99VsIdeal: NaN,
      retries,
      retriesPerRequest: retries / answered,
      attaches,
      attachesPerRequest: attaches / answered,
      refused: hubCounts.reduce((t, c) => t + c[2], 0),
      hubWarnings: hubCounts.reduce((t, c) => t + c[3] + c[4], 0),
      workerLogLines: workerLines.length,
      handshakeMisreads: workerLines.filter((l) =>
        /Cannot parse status line: received \\?"GET /.test(l)
      ).length,
      workerLogSample: [...new Set(workerLines)].slice(0, 5),
      warmFailures: Number(warm[1]),
      hubCpuMs: ((cpu1.hubs - cpu0.hubs) * 1000) / answered,
      workerCpuMs: ((cpu1.workers - cpu0.workers) * 1000) / answered,
      loadAverage: loadAverage(),
    };
  } finally {
    await stopAll([clientProc, ...workers.map((w) => w.proc)]);
    await stopAll(hubs.map((h) => h.proc));
  }
}

// ------------------------------------------------------------ starvation

/** The starvation probe with one kind of worker. */
interface ProbeResult {
  /** Whether the worker sent the PTTH handshake. */
  ids: boolean;
  /**
   * The quiet hub's requests, one after another: latency in ms (the bound
   * if unanswered), whether answered, and how many requests the busy hub
   * answered meanwhile. The probe stops after the first unanswered one.
   */
  requests: {
    latencyMs: number;
    answered: boolean;
    /** HTTP status, or 0 with the error's name. */
    status: number;
    error?: string;
    /** The hub's `X-Pothead-Error` text body, if it answered an error. */
    body?: string;
    busyAnswered: number;
  }[];
  /** "worker handshake refused" lines at the quiet hub during the probe. */
  refused: number;
  /** "retrying request" lines at both hubs during the probe. */
  retries: number;
}

/** Requests the starvation probe sends to the quiet hub, one at a time. */
const PROBE_REQUESTS = 5;

/**
 * One worker (`--concurrency 1`), two hubs. Two closed-loop consumers keep
 * the first hub's queue non-empty with jobs of the mean length; then
 * requests go to the second hub one at a time. If the worker's free permit
 * reaches the second hub, each waits about one job; if not, it waits until
 * the bound (`plan.probeMs`) or until the first hub's load stops.
 */
async function runProbe(
  plan: Plan,
  ids: boolean,
  dir: string,
): Promise<ProbeResult> {
  const tag = `probe-${ids ? "id" : "plain"}`;
  const bound = Math.ceil(plan.probeMs / 1000 + 60);
  const hubs: HubRun[] = [];
  let worker: WorkerRun | undefined;
  const stop = new AbortController();
  try {
    hubs.push(
      ...settled(
        await Promise.allSettled(
          ["127.0.0.2", "127.0.0.3"].map((host, i) =>
            startHub(host, join(dir, `${tag}-hub${i + 1}.log`), bound)
          ),
        ),
      ),
    );
    worker = await startWorker(
      0,
      hubs,
      ids,
      join(dir, `${tag}-worker.log`),
      bound,
    );
    await connectedToAll(worker, 2, 30_000);
    await sleep(300);
    const [busy, quiet] = hubs.map((h) => `http://${h.host}:${h.port}`);
    const guard = setTimeout(() => stop.abort(), plan.probeMs + 10_000);
    let busyAnswered = 0;
    const loop = async () => {
      for (let i = 0; i < 100_000 && !stop.signal.aborted; i++) {
        const s = await send(busy, plan.meanMs, stop.signal);
        if (s.status !== 200) break;
        busyAnswered++;
      }
    };
    const loops = [loop(), loop()];
    await sleep(300);
    const needles = [REFUSED, RETRY];
    const before = await Promise.all(
      hubs.map((h) => countLines(h.log, needles)),
    );
    const requests: ProbeResult["requests"] = [];
    for (let i = 0; i < PROBE_REQUESTS; i++) {
      const busyBefore = busyAnswered;
      const s = await send(
        quiet,
        plan.meanMs,
        AbortSignal.any([stop.signal, AbortSignal.timeout(plan.probeMs)]),
      );
      requests.push({
        latencyMs: s.done - s.sent,
        answered: s.status === 200,
        status: s.status,
        error: s.error,
        body: s.body,
        busyAnswered: busyAnswered - busyBefore,
      });
      if (s.status !== 200) break;
    }
    const after = await Promise.all(
      hubs.map((h) => countLines(h.log, needles)),
    );
    stop.abort();
    await Promise.all(loops);
    clearTimeout(guard);
    return {
      ids,
      requests,
      refused: after[1][0] - before[1][0],
      retries: after[0][1] - before[0][1] + after[1][1] - before[1][1],
    };
  } finally {
    stop.abort();
    await stopAll([worker?.proc]);
    await stopAll(hubs.map((h) => h.proc));
  }
}

// ------------------------------------------------------------------ report

const ms = formatMs;

function x(n: number): string {
  return Number.isFinite(n) ? `${n.toFixed(2)}×` : "–";
}

/** "" for an answered probe request, else what happened, in parentheses. */
function outcome(r: ProbeResult["requests"][number]): string {
  if (r.answered) return "";
  if (r.status === 0) return ` (${r.error ?? "error"})`;
  return ` (HTTP ${r.status}${r.body ? `: ${r.body}` : ""})`;
}

function describe(setup: string): string {
  const s = SETUPS[setup];
  const hubs = s.hosts.length === 1
    ? `1 hub (${s.hosts[0]})`
    : `${s.hosts.length} hubs (${s.hosts[0]}–${s.hosts.at(-1)!.split(".")[3]})`;
  return `${setup}: ${hubs}${s.ids ? ", workers handshake" : ""}`;
}

function findings(report: Report): string[] {
  const get = (setup: string, load: number) =>
    report.cells.find((c) => c.setup === setup && c.load === load);
  const pct = (l: number) => `${Math.round(l * 100)}%`;
  const lines: string[] = [];
  for (const pr of report.probes) {
    const answered = pr.requests.filter((r) => r.answered).length;
    lines.push(
      `Probe, ${
        pr.ids ? "handshaking" : "plain"
      } worker: ${answered} of ${pr.requests.length} requests at the quiet hub answered (latencies ${
        pr.requests.map((r) => ms(r.latencyMs) + outcome(r)).join(", ")
      } ms) while the busy hub answered ${
        pr.requests.reduce((t, r) => t + r.busyAnswered, 0)
      }; ${pr.retries} resent declines, ${pr.refused} refused handshakes.`,
    );
  }
  for (const setup of ["B", "C", "B-id", "C-id"]) {
    const cells = report.plan.loads.map((l) => get(setup, l)).filter((c) =>
      c !== undefined
    );
    if (cells.length === 0) continue;
    lines.push(
      `${describe(setup)}: ${
        cells.map((c) =>
          `at ${pct(c.load)} p99 ${x(c.p99VsA)} A's, ${
            c.retriesPerRequest.toFixed(2)
          } resent declines and ${c.attachesPerRequest.toFixed(2)} reconnects${
            c.refused > 0
              ? ` and ${
                (c.refused / Math.max(1, c.latency.n)).toFixed(2)
              } refused handshakes`
              : ""
          } per answered request, hub CPU ${
            c.hubCpuMs.toFixed(2)
          } ms/request (A: ${
            get("A", c.load)?.hubCpuMs.toFixed(2) ?? "–"
          }), ${c.errors} errors`
        ).join("; ")
      }.`,
    );
  }
  return lines;
}

function renderMarkdown(report: Report): string {
  const m = report.machine;
  const out: string[] = [];
  out.push("# Many hubs: latency with workers spread over 2 and 3 hubs");
  out.push("");
  out.push(
    "Generated by `deno run -A bench/manyhubs.ts" +
      (report.plan.mode === "full" ? "" : ` --${report.plan.mode}`) +
      "`. Do not edit by hand.",
  );
  out.push("");
  out.push(`- Date: ${report.date}`);
  out.push(`- Machine: \`${m.uname}\``);
  out.push(`- CPU: ${m.cpuModel} (${m.cpus} cores)`);
  out.push(`- Deno ${m.deno} (V8 ${m.v8})`);
  out.push(
    `- Load average at start ${m.loadAverageAtStart}, at end ${m.loadAverageAtEnd}; nice ${report.nice}; wall time ${
      Math.round(report.elapsedS)
    } s`,
  );
  out.push("");
  out.push(
    "**The machine is shared and noisy** (2 cores, other jobs running " +
      "tests at the same time, every process of the benchmark on it " +
      "too). Absolute latencies move between runs; compare the ratios " +
      "within this one run, and treat differences of a few percent as " +
      "noise.",
  );
  out.push("");
  out.push("## What ran");
  out.push("");
  const p = report.plan;
  out.push(
    `${p.workers} worker processes (\`worker.ts --concurrency 1 bench/workers/sleep_job.ts\`), ` +
      `jobs that sleep an exponential ${p.meanMs} ms on average, one seeded ` +
      `open-loop Poisson trace per load (seed ${p.seed}, ${p.durationS} s, ` +
      `the same trace for every setup), sent by a separate Deno client at ` +
      `the scheduled times whatever came back. Request i goes to hub ` +
      `i mod M. Fresh hubs and workers for every cell; cells run load by ` +
      `load, setups in order. Latency is from the client's send to the ` +
      `last byte of the answer. "ideal" is a simulation of one central ` +
      `FIFO queue with ${p.workers} servers and no dispatch cost on the ` +
      `same trace. Retries are the hubs' "retrying request" log lines ` +
      `(requests a worker declined with the "not started" 408, resent); ` +
      `reconnects are "worker connection attached" lines (hubs at ` +
      `\`--log-level debug\`); refused handshakes are "worker handshake ` +
      `refused" lines: a plain worker's new connection withdrawn before ` +
      `the hub attached it (so for plain workers the churn shows there, ` +
      `not under reconnects). All counted over the replay only.`,
  );
  out.push("");
  out.push("Setups:");
  for (const s of p.setups) out.push(`- ${describe(s)}`);
  out.push("");
  for (const load of p.loads) {
    const ideal = report.ideal[String(load)];
    out.push(
      `## ${Math.round(load * 100)}% utilisation (ideal p50 ${
        ms(ideal.p50)
      }, p90 ${ms(ideal.p90)}, p99 ${ms(ideal.p99)}, max ${
        ms(ideal.max)
      } ms; ${ideal.n} requests)`,
    );
    out.push("");
    out.push(
      "| setup | p50 ms | p90 ms | p99 ms | max ms | p99 / A | p99 / ideal | req/s | errors | retries (/req) | reconnects (/req) | refused handshakes | hub CPU ms/req | send late p99 ms | job overrun ms |",
    );
    out.push(
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    );
    for (const c of report.cells.filter((c) => c.load === load)) {
      out.push(
        `| ${c.setup} (${c.hubs} hub${c.hubs > 1 ? "s" : ""}${
          c.ids ? ", handshake" : ""
        }) | ${ms(c.latency.p50)} | ${ms(c.latency.p90)} | ${
          ms(c.latency.p99)
        } | ${ms(c.latency.max)} | ${x(c.p99VsA)} | ${x(c.p99VsIdeal)} | ${
          c.throughput.toFixed(1)
        } | ${c.errors} | ${c.retries} (${
          c.retriesPerRequest.toFixed(2)
        }) | ${c.attaches} (${
          c.attachesPerRequest.toFixed(2)
        }) | ${c.refused} | ${c.hubCpuMs.toFixed(2)} | ${
          c.sendLateP99.toFixed(1)
        } | ${c.serviceErrorMs.toFixed(2)} |`,
      );
    }
    out.push("");
    const perHub = report.cells.filter((c) => c.load === load && c.hubs > 1);
    if (perHub.length > 0) {
      out.push(
        "Per hub p99 (ms): " + perHub.map((c) =>
          `${c.setup} ${
            c.perHub.map((h) => `${h.host.split(".")[3]}: ${ms(h.latency.p99)}`)
              .join(", ")
          }`
        ).join("; ") + ".",
      );
      out.push("");
    }
  }
  if (report.probes.length > 0) {
    out.push("## Starvation probe");
    out.push("");
    out.push(
      `One worker (\`--concurrency 1\`), two hubs. Two closed-loop consumers ` +
        `keep hub 1's queue non-empty with ${p.meanMs} ms jobs; then up to ` +
        `${PROBE_REQUESTS} requests of ${p.meanMs} ms go to hub 2 one after ` +
        `another, each given ${p.probeMs} ms (the probe stops at the first ` +
        `unanswered one). A fair spread serves each after about one job ` +
        `(hub 1 answering about 1 meanwhile).`,
    );
    out.push("");
    out.push(
      "| worker | hub 2 requests answered | their latencies ms | hub 1 answered meanwhile (each) | refused handshakes at hub 2 | retries |",
    );
    out.push("| --- | ---: | --- | --- | ---: | ---: |");
    for (const pr of report.probes) {
      out.push(
        `| ${pr.ids ? "handshake (`--worker-id`)" : "plain"} | ${
          pr.requests.filter((r) => r.answered).length
        }/${pr.requests.length} | ${
          pr.requests.map((r) => ms(r.latencyMs) + outcome(r))
            .join(", ")
        } | ${
          pr.requests.map((r) => r.busyAnswered).join(", ")
        } | ${pr.refused} | ${pr.retries} |`,
      );
    }
    out.push("");
  }
  out.push("## What the design gives and where it falls short");
  out.push("");
  for (const line of report.notes) {
    out.push(line);
    out.push("");
  }
  out.push("Measured, this run:");
  out.push("");
  for (const line of findings(report)) out.push(`- ${line}`);
  const odd = report.cells.filter((c) =>
    c.errors > 0 || c.overlaps > 0 || c.hubWarnings > 0 ||
    c.warmFailures > 0 || c.handshakeMisreads > 0
  );
  if (odd.length > 0) {
    out.push("");
    out.push("Irregularities:");
    out.push("");
    for (const c of odd) {
      const items = [
        c.errors > 0
          ? `${c.errors} errors ${JSON.stringify(c.errorKinds)}`
          : "",
        c.overlaps > 0 ? `${c.overlaps} overlapping jobs` : "",
        c.hubWarnings > 0
          ? `${c.hubWarnings} hub warnings (${c.refused} of them refused handshakes)`
          : "",
        c.warmFailures > 0 ? `${c.warmFailures} failed warm-up requests` : "",
        c.handshakeMisreads > 0
          ? `${c.handshakeMisreads} handshakes the hub took for a plain worker`
          : "",
      ].filter((t) => t !== "");
      out.push(
        `- ${c.setup} at ${Math.round(c.load * 100)}%: ${items.join(", ")}`,
      );
    }
  }
  out.push("");
  return out.join("\n");
}

const NOTES = [
  "**What the design gives.** A worker with N free permits offers N idle " +
  "connections to every hub it knows, so a request queued at any hub can be " +
  "taken by a worker that frees, wherever it served last, and consumers can " +
  "be spread over the hubs at will. No request is served twice (the " +
  "handler's overlap check stays at 0): a worker offered two requests at " +
  'once declines one with the "not started" 408 and its hub resends it at ' +
  "the head of its queue; declines never fail a request (only its queue " +
  "timeout can). The declining connection is parked, not closed, and with " +
  "several hubs every response parks its connection too; when a permit " +
  "frees the worker answers the parked connections' wait requests, so the " +
  "permit is offered to every hub at once over connections already open " +
  "(reconnects above: 0). Hubs that had a request declined hear first, " +
  "the one whose declined request is oldest first; the others in an order " +
  "that turns, so no hub starves while another keeps the worker busy " +
  "(the probe: every request at the quiet hub answered after about one " +
  "job). With one hub it is exactly N connections and nothing is parked.",
  "**Where it falls short.** (1) Declines: a hub sees a worker busy " +
  "elsewhere as idle until it sends it a request; that request is declined " +
  "(one round trip) and sent to the next worker, so about M−1 offers per " +
  "answered request are declined and hub CPU per request is still above one " +
  "hub's. (2) Which hub wins a freed permit is a race between their answers, " +
  "not a global FIFO: each hub keeps FIFO order only for its own queue, so " +
  "at high load the p99 stays above one hub holding the same workers. (3) A " +
  "handshake slower than `--handshake-wait` (50 ms) on a loaded machine can " +
  "still cross a request; the hub then sees a request line where it " +
  "expected a status line and resends the request elsewhere, and the " +
  "worker reconnects. For latency-critical deployments one hub per worker " +
  "pool (and hubs scaled by sharding pools) beats spreading workers over " +
  "many hubs.",
];

// ------------------------------------------------------------------ main

/** Rewrites `manyhubs.md` beside `file` (a manyhubs.json) with current text. */
async function render(file: string): Promise<number> {
  const report = JSON.parse(await Deno.readTextFile(file)) as Report;
  report.notes = NOTES;
  await Deno.writeTextFile(file, JSON.stringify(report, null, 2) + "\n");
  const md = join(dirname(file), "manyhubs.md");
  await Deno.writeTextFile(md, renderMarkdown(report));
  log(`wrote ${md}`);
  return 0;
}

function log(text: string): void {
  console.log(text);
}

/**
 * Runs the benchmark (or, with `--client SPEC`, the load client).
 *
 * @param args command-line arguments.
 * @returns the exit code.
 */
export async function main(args: string[] = Deno.args): Promise<number> {
  if (args[0] === "--client") {
    return await client(JSON.parse(args[1]) as ClientSpec);
  }
  let plan: Plan;
  try {
    const parsed = parsePlan(args);
    if (parsed === "help") {
      console.log(HELP);
      return 0;
    }
    if ("render" in parsed) return await render(parsed.render);
    plan = parsed;
  } catch (error) {
    console.error(`manyhubs: ${(error as Error).message}\n\n${HELP}`);
    return 2;
  }
  const began = performance.now();
  // The whole run is bounded; children die with us (pdeathsig) or by this.
  const watchdog = setTimeout(() => {
    console.error(`manyhubs: took longer than ${plan.maxSeconds} s; killed`);
    killAll();
    Deno.exit(1);
  }, plan.maxSeconds * 1000);
  Deno.unrefTimer(watchdog);
  log(
    `many-hubs benchmark (${plan.mode}): setups ${plan.setups.join(",")}, ` +
      `loads ${plan.loads.join(",")}, ${plan.durationS} s per cell, ` +
      `bound ${plan.maxSeconds} s`,
  );
  const niced = plan.nice !== 0 && await setNiceness(plan.nice);
  if (plan.nice !== 0 && !niced) log(`could not set nice ${plan.nice}`);
  const info = await machineInfo();
  const dir = await Deno.makeTempDir({ prefix: "pothead-manyhubs-" });
  const report: Report = {
    date: info.date,
    machine: {
      uname: info.uname,
      cpuModel: info.cpuModel,
      cpus: info.cpus,
      deno: info.deno,
      v8: info.v8,
      loadAverageAtStart: info.loadAverageAtStart,
      loadAverageAtEnd: NaN,
    },
    plan,
    nice: niced ? plan.nice : 0,
    elapsedS: 0,
    ideal: {},
    cells: [],
    probes: [],
    notes: NOTES,
  };
  let failed = false;
  try {
    for (const ids of [false, true]) {
      const probe = await withTimeout(
        runProbe(plan, ids, dir),
        plan.probeMs + 90_000,
        "starvation probe",
      );
      report.probes.push(probe);
      log(
        `probe (${ids ? "handshake" : "plain"} worker): quiet hub latencies ${
          probe.requests.map((r) => ms(r.latencyMs) + outcome(r)).join(", ")
        } ms; busy hub answered ${
          probe.requests.map((r) => r.busyAnswered).join(", ")
        } meanwhile; ${probe.refused} refused handshakes, ${probe.retries} retries`,
      );
    }
    for (const load of plan.loads) {
      const trace = makeTrace({
        workers: plan.workers,
        load,
        meanMs: plan.meanMs,
        dist: "exp",
        durationMs: plan.durationS * 1000,
        seed: plan.seed,
      });
      const ideal = summarize(
        simulateFifo(trace.arrivals, trace.service, plan.workers).latency,
      );
      report.ideal[String(load)] = ideal;
      log(
        `\n== ${Math.round(load * 100)}%: ${trace.arrivals.length} requests, ` +
          `ideal p50 ${ms(ideal.p50)} p99 ${ms(ideal.p99)} max ${
            ms(ideal.max)
          } ms`,
      );
      let reference: CellResult | undefined;
      for (const name of plan.setups) {
        const setup = SETUPS[name];
        const cell = await withTimeout(
          runCell(
            plan,
            setup,
            load,
            dir,
            `${Math.round(load * 100)}-${name}`,
          ),
          (plan.durationS + plan.drainMs / 1000 + 120) * 1000,
          `cell ${name} at ${load}`,
        );
        if (name === "A") reference = cell;
        cell.p99VsA = reference
          ? cell.latency.p99 / reference.latency.p99
          : NaN;
        cell.p99VsIdeal = cell.latency.p99 / ideal.p99;
        report.cells.push(cell);
        log(
          `${name.padEnd(5)} n=${cell.latency.n} p50=${
            ms(cell.latency.p50)
          } p90=${ms(cell.latency.p90)} p99=${ms(cell.latency.p99)} max=${
            ms(cell.latency.max)
          } p99/A=${x(cell.p99VsA)} p99/ideal=${x(cell.p99VsIdeal)} ` +
            `rps=${cell.throughput.toFixed(1)} errors=${cell.errors} ` +
            `retries=${cell.retries} reconnects=${cell.attaches} ` +
            `hubCPU/req=${cell.hubCpuMs.toFixed(2)} ms late p99=${
              cell.sendLateP99.toFixed(1)
            } overrun=${
              cell.serviceErrorMs.toFixed(2)
            } ms overlaps=${cell.overlaps} misreads=${cell.handshakeMisreads} load=${cell.loadAverage}`,
        );
        if (cell.errors > 0) {
          log(`  errors: ${JSON.stringify(cell.errorKinds)}`);
        }
        if (cell.workerLogLines > 0) {
          log(
            `  worker log: ${cell.workerLogLines} lines, e.g. ${
              JSON.stringify(cell.workerLogSample)
            }`,
          );
        }
        if (cell.latency.n === 0) failed = true;
      }
    }
  } catch (error) {
    failed = true;
    console.error(`manyhubs: ${(error as Error).stack ?? error}`);
  } finally {
    killAll();
    clearTimeout(watchdog);
  }
  report.elapsedS = (performance.now() - began) / 1000;
  report.machine.loadAverageAtEnd = loadAverage();
  const md = renderMarkdown(report);
  const outDir = plan.out ?? dir;
  if (report.cells.length > 0) {
    await Deno.mkdir(outDir, { recursive: true });
    await Deno.writeTextFile(join(outDir, "manyhubs.md"), md);
    await Deno.writeTextFile(
      join(outDir, "manyhubs.json"),
      JSON.stringify(report, null, 2) + "\n",
    );
    log(`\nwrote ${join(outDir, "manyhubs.md")} and manyhubs.json`);
  }
  if (plan.out === null) log("\n" + md);
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  log(`elapsed ${Math.round(report.elapsedS)} s`);
  return failed ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main());
