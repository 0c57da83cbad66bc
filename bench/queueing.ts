/**
 * The queueing benchmark: the latency of expensive one-at-a-time requests
 * through POTHEAD, HAProxy (`maxconn 1`), nginx (round-robin and
 * `least_conn`), against the ideal central FIFO queue on the same trace.
 *
 * For each cell (K workers, service distribution, mean service time) and
 * load, one seeded open-loop Poisson trace is replayed against every system
 * (send at the scheduled time, whatever came back) and fed to a
 * discrete-event simulation of the ideal queue. A saturated closed-loop run
 * per system (2K requests outstanding) measures the dispatch gap: the time
 * from a worker finishing one job to it starting the next.
 *
 * ```sh
 * deno run -A bench/queueing.ts [--quick] [--smoke] [--k=4,16]
 *   [--loads=0.5,0.8,0.9,0.95] [--dist=const,exp] [--mean-ms=20,100]
 * ```
 *
 * Writes `queueing.md`, `queueing.svg` and `queueing.json` under
 * `bench/results/` (a temporary directory for `--smoke`).
 *
 * @module
 */

import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import {
  type Distribution,
  DISTRIBUTIONS,
  makeTrace,
  type Trace,
} from "./_trace.ts";
import {
  dispatchGaps,
  type JobTiming,
  type Percentiles,
  simulateFifo,
  summarize,
} from "./_sim.ts";
import {
  cpuMs,
  ensureProgram,
  killAll,
  ROOT,
  setNiceness,
  startSystems,
  type System,
  SYSTEM_LABELS,
  type SystemName,
  SYSTEMS,
  versions,
} from "./_systems.ts";
import { lineChart, type Series } from "./_svg.ts";
import type { ServiceMode } from "./workers/serial_worker.ts";

// ------------------------------------------------------------------ options

/** Everything one invocation runs. */
export interface Plan {
  /** `full`, `quick` or `smoke`. */
  mode: "full" | "quick" | "smoke";
  /** Worker counts. */
  ks: number[];
  /** Utilisations. */
  loads: number[];
  /** Service time distributions. */
  dists: Distribution[];
  /** Mean service times in milliseconds. */
  means: number[];
  /** Systems to run. */
  systems: SystemName[];
  /** Base trace length per cell, seconds. */
  durationS: number;
  /** Lengthen a cell's trace (up to 2× the base) to reach this many requests. */
  minRequests: number;
  /** Saturated run length per system and round, seconds. */
  gapDurationS: number;
  /**
   * Rounds of the saturated runs: each round runs every system once, in an
   * order rotated from round to round, so a drift in the machine's speed
   * falls on every system alike.
   */
  gapRounds: number;
  /**
   * Warm-up per system before its first cell, seconds: a saturated burst of
   * 1 ms jobs, long enough for V8 to finish tiering up the hub's and the
   * workers' code (a few thousand requests), so cells measure steady state.
   */
  warmS: number;
  /** Service time of the saturated run, milliseconds. */
  gapMs: number;
  /** Seed of every trace. */
  seed: number;
  /**
   * Where the systems' rotation starts: cell i runs them in the order given,
   * rotated by `orderOffset + i`. Drawn at random for each run unless
   * given, so that over many runs no system always takes the same turn in
   * a cell (before 12-07 every run used 0: within a cell, each system ran
   * at the same place in every run).
   */
  orderOffset: number;
  /** How jobs spend their time. */
  service: ServiceMode;
  /** Output directory, or null for a temporary one. */
  out: string | null;
  /** Nice value for the benchmark and every process it starts (0: as is). */
  nice: number;
}

const HELP = `Usage: deno run -A bench/queueing.ts [options]

  --quick             K=4, exponential 20 ms jobs, loads 0.5 and 0.9 (< 3 min)
  --smoke             a few seconds per system; proves it runs, judges nothing
  --k=4,16            worker counts
  --loads=0.5,0.8,0.9,0.95
  --dist=const,exp    service time distributions
  --mean-ms=20,100    mean service times
  --systems=pothead,haproxy,nginx-rr,nginx-lc (the default; also
                      pothead-hold: the hub with --hold-ahead, and
                      haproxy-b: a second HAProxy, the run's noise control)
  --duration=S        base trace length per cell in seconds
  --min-requests=N    lengthen short-rate cells (up to 2x) to N requests
  --gap-duration=S    saturated dispatch-gap run per system and round
  --gap-rounds=N      rounds of gap runs, systems interleaved (default 3)
  --gap-ms=MS         job length in the saturated run (default 20)
  --seed=N            trace seed (default 1)
  --order-offset=N    start the systems' rotation at N (default: drawn at
                      random per run, and recorded)
  --service=sleep|cpu jobs sleep on a timer (default) or spin the CPU
  --out=DIR           where to write queueing.{md,svg,json}
  --nice=N            nice value for the benchmark and all it starts
                      (default -10 as root, to keep other jobs' noise out)
  --render=FILE       rewrite queueing.{md,svg} from a queueing.json (the
                      targets judged again); run nothing
`;

function list<T>(
  text: string | undefined,
  parse: (s: string) => T,
): T[] | null {
  if (text === undefined) return null;
  return text.split(",").map((s) => s.trim()).filter(Boolean).map(parse);
}

function positiveNumber(name: string) {
  return (s: string): number => {
    const n = Number(s);
    if (!(n > 0) || !Number.isFinite(n)) {
      throw new RangeError(`Invalid --${name}: got "${s}"`);
    }
    return n;
  };
}

/**
 * Turns command-line arguments into a plan.
 *
 * @throws {RangeError|TypeError} on a bad value, naming the flag.
 */
export function parsePlan(
  args: string[],
): Plan | "help" | { render: string } {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: "boolean" },
      smoke: { type: "boolean" },
      k: { type: "string" },
      loads: { type: "string" },
      dist: { type: "string" },
      "mean-ms": { type: "string" },
      systems: { type: "string" },
      duration: { type: "string" },
      "min-requests": { type: "string" },
      "gap-duration": { type: "string" },
      "gap-ms": { type: "string" },
      "gap-rounds": { type: "string" },
      seed: { type: "string" },
      "order-offset": { type: "string" },
      service: { type: "string" },
      out: { type: "string" },
      render: { type: "string" },
      nice: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) return "help";
  if (values.render !== undefined) return { render: values.render };
  const mode = values.smoke ? "smoke" : values.quick ? "quick" : "full";
  const base: Omit<
    Plan,
    "systems" | "seed" | "orderOffset" | "service" | "out" | "gapMs" | "nice"
  > = mode === "smoke"
    ? {
      mode,
      ks: [2],
      loads: [0.8],
      dists: ["exp"],
      means: [20],
      durationS: 2,
      minRequests: 0,
      gapDurationS: 1,
      gapRounds: 1,
      warmS: 0.5,
    }
    : mode === "quick"
    ? {
      mode,
      ks: [4],
      loads: [0.5, 0.9],
      dists: ["exp"],
      means: [20],
      durationS: 12,
      minRequests: 0,
      gapDurationS: 2,
      gapRounds: 2,
      warmS: 3,
    }
    : {
      mode,
      ks: [4, 16],
      loads: [0.5, 0.8, 0.9, 0.95],
      dists: ["const", "exp"],
      means: [20, 100],
      durationS: 10,
      minRequests: 1500,
      gapDurationS: 3,
      gapRounds: 3,
      warmS: 3,
    };
  const ks = list(values.k, (s) => {
    const k = Number(s);
    if (!Number.isInteger(k) || k < 1 || k > 64) {
      throw new RangeError(`Invalid --k: expected 1..64, got "${s}"`);
    }
    return k;
  });
  const loads = list(values.loads, (s) => {
    const l = Number(s);
    if (!(l > 0 && l < 1)) {
      throw new RangeError(`Invalid --loads: expected (0, 1), got "${s}"`);
    }
    return l;
  });
  const dists = list(values.dist, (s) => {
    if (!DISTRIBUTIONS.includes(s as Distribution)) {
      throw new TypeError(
        `Invalid --dist: expected ${DISTRIBUTIONS.join(" or ")}, got "${s}"`,
      );
    }
    return s as Distribution;
  });
  const systems = list(values.systems, (s) => {
    if (!SYSTEMS.includes(s as SystemName)) {
      throw new TypeError(
        `Invalid --systems: expected some of ${SYSTEMS.join(",")}, got "${s}"`,
      );
    }
    return s as SystemName;
  });
  const service = values.service ?? "sleep";
  if (service !== "sleep" && service !== "cpu") {
    throw new TypeError(
      `Invalid --service: expected sleep or cpu, got "${service}"`,
    );
  }
  const rounds = values["gap-rounds"];
  const gapRounds = rounds === undefined ? undefined : Number(rounds);
  if (
    gapRounds !== undefined &&
    !(Number.isInteger(gapRounds) && gapRounds >= 1 && gapRounds <= 20)
  ) {
    throw new RangeError(
      `Invalid --gap-rounds: expected 1..20, got "${rounds}"`,
    );
  }
  const one = (name: string, text: string | undefined, fallback: number) =>
    text === undefined ? fallback : positiveNumber(name)(text);
  const offsetText = values["order-offset"];
  const orderOffset = offsetText === undefined
    ? Math.floor(Math.random() * 720) // 6!: as likely any turn of up to 6
    : Number(offsetText);
  if (!(Number.isInteger(orderOffset) && orderOffset >= 0)) {
    throw new RangeError(
      `Invalid --order-offset: expected an integer from 0, got "${offsetText}"`,
    );
  }
  return {
    ...base,
    ks: ks ?? base.ks,
    loads: (loads ?? base.loads).sort((a, b) => a - b),
    dists: dists ?? base.dists,
    means: list(values["mean-ms"], positiveNumber("mean-ms")) ?? base.means,
    systems: systems ?? [...DEFAULT_SYSTEMS],
    durationS: one("duration", values.duration, base.durationS),
    minRequests: values["min-requests"] === undefined
      ? base.minRequests
      : Number(values["min-requests"]) || 0,
    gapDurationS: one(
      "gap-duration",
      values["gap-duration"],
      base.gapDurationS,
    ),
    gapRounds: gapRounds ?? base.gapRounds,
    gapMs: one("gap-ms", values["gap-ms"], 20),
    warmS: base.warmS,
    seed: Math.trunc(one("seed", values.seed, 1)),
    orderOffset,
    service,
    // Quick runs never overwrite the committed full results.
    out: values.out ??
      (mode === "smoke" ? null : join(
        ROOT,
        mode === "quick" ? "bench/results/quick" : "bench/results",
      )),
    nice: nice(values.nice),
  };
}

function nice(text: string | undefined): number {
  if (text === undefined) return Deno.uid?.() === 0 ? -10 : 0;
  const n = Number(text);
  if (!Number.isInteger(n) || n < -20 || n > 19) {
    throw new RangeError(`Invalid --nice: expected -20..19, got "${text}"`);
  }
  return n;
}

/** One cell of the plan: K, distribution, mean and load. */
interface CellSpec {
  workers: number;
  dist: Distribution;
  meanMs: number;
  load: number;
  durationMs: number;
}

function cellsOf(plan: Plan, workers: number): CellSpec[] {
  const cells: CellSpec[] = [];
  for (const dist of plan.dists) {
    for (const meanMs of plan.means) {
      for (const load of plan.loads) {
        const perSecond = (workers * load * 1000) / meanMs;
        const base = plan.durationS * 1000;
        const wanted = (plan.minRequests / perSecond) * 1000;
        cells.push({
          workers,
          dist,
          meanMs,
          load,
          durationMs: Math.round(Math.min(Math.max(base, wanted), 2 * base)),
        });
      }
    }
  }
  return cells;
}

/**
 * `items` rotated left by `turn` (modulo their count): the order in which
 * one cell runs the systems.
 */
export function rotated<T>(items: readonly T[], turn: number): T[] {
  const n = items.length;
  return items.map((_, j) => items[(j + turn) % n]);
}

/**
 * The sum of counter `name` (`pothead_held_total` unless given) over every
 * pool in a hub's Prometheus text, or null if it has none.
 */
export function counterInMetrics(
  text: string,
  name = "pothead_held_total",
): number | null {
  let sum: number | null = null;
  const prefix = `${name}{`, bare = `${name} `;
  for (const line of text.split("\n")) {
    if (!line.startsWith(prefix) && !line.startsWith(bare)) continue;
    const m = line.match(/^\S+ (\S+)$/);
    if (m === null) continue;
    const value = Number(m[1]);
    if (Number.isFinite(value)) sum = (sum ?? 0) + value;
  }
  return sum;
}

/**
 * A counter of the `pothead-hold` hub so far (`pothead_held_total`, the
 * requests it held ahead, unless `name` is given; see
 * {@linkcode counterInMetrics}), read from its admin listener between runs;
 * null for the other systems (they hold none) or when it cannot be read.
 */
export async function hubCounter(
  system: System,
  name?: string,
): Promise<number | null> {
  if (system.name !== "pothead-hold" || system.metricsUrl === undefined) {
    return null;
  }
  try {
    const res = await fetch(system.metricsUrl, {
      signal: AbortSignal.timeout(5000),
    });
    return res.ok ? counterInMetrics(await res.text(), name) : null;
  } catch {
    return null;
  }
}

/** Drain allowance after a trace's last arrival. */
function drainMs(cell: CellSpec): number {
  return Math.max(15_000, cell.durationMs, cell.meanMs * 200);
}

/** Rough wall time of the plan, in seconds (excluding installs). */
export function estimateSeconds(plan: Plan): number {
  let total = 0;
  for (const k of plan.ks) {
    total += 3 + k * 0.3; // starting processes
    total += plan.systems.length *
      (plan.warmS + plan.gapRounds * (1 + plan.gapDurationS + 1));
    for (const cell of cellsOf(plan, k)) {
      total += plan.systems.length *
        (cell.durationMs / 1000 + 0.6 + (cell.meanMs * 10) / 1000);
    }
  }
  return Math.round(total);
}

// ------------------------------------------------------------ load generator

/** One request of a replay, in the client's milliseconds (performance.now). */
export interface Sample {
  scheduled: number;
  sent: number;
  done: number;
  status: number;
  error?: string;
  job?: JobTiming;
}

function jobTiming(headers: Headers): JobTiming | undefined {
  const worker = headers.get("x-bench-worker");
  if (worker === null) return undefined;
  const cache = headers.get("x-bench-cache");
  return {
    worker,
    arrived: Number(headers.get("x-bench-arrived")),
    started: Number(headers.get("x-bench-started")),
    finished: Number(headers.get("x-bench-finished")),
    ...(cache === null ? {} : { cache }),
  };
}

async function request(
  url: string,
  ms: number,
  run: string,
  seq: number,
  signal: AbortSignal,
  extra?: Record<string, string>,
): Promise<Omit<Sample, "scheduled">> {
  const sent = performance.now();
  try {
    const response = await fetch(`${url}?ms=${ms.toFixed(3)}`, {
      headers: {
        ...extra,
        "x-service-ms": ms.toFixed(3),
        "x-bench-run": run,
        "x-bench-seq": String(seq),
      },
      signal,
    });
    await response.arrayBuffer();
    return {
      sent,
      done: performance.now(),
      status: response.status,
      job: jobTiming(response.headers),
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
 * Replays a trace open-loop: request i is sent at its arrival time whatever
 * happened to earlier ones. Requests still open `drain` ms after the last
 * arrival are aborted and count as errors. `headersOf(i)`, when given, adds
 * header fields to request i (the priority benchmark's class field).
 */
export async function replay(
  url: string,
  trace: Trace,
  run: string,
  drain: number,
  headersOf?: (index: number) => Record<string, string> | undefined,
): Promise<Sample[]> {
  const n = trace.arrivals.length;
  const samples: Sample[] = new Array(n);
  const pending: Promise<void>[] = [];
  const controller = new AbortController();
  const t0 = performance.now() + 50;
  const hardStop = t0 + (n ? trace.arrivals[n - 1] : 0) + 60_000;
  // The timer fires late by about a millisecond: ask for that much less, and
  // send at once when the arrival is closer than that (early by < 1 ms on
  // average rather than always late).
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
    pending.push(
      request(
        url,
        trace.service[index],
        run,
        index,
        controller.signal,
        headersOf?.(index),
      ).then(
        (s) => {
          samples[index] = { scheduled: due, ...s };
        },
      ),
    );
  }
  for (let j = i; j < n; j++) {
    const scheduled = t0 + trace.arrivals[j];
    samples[j] = {
      scheduled,
      sent: scheduled,
      done: scheduled,
      status: 0,
      error: "not sent",
    };
  }
  const timer = setTimeout(() => controller.abort(), drain);
  await Promise.all(pending);
  clearTimeout(timer);
  return samples;
}

/**
 * A saturated closed-loop run: `concurrency` loops each send the next
 * request as soon as the previous one is answered, for `durationMs`.
 */
export async function saturate(
  url: string,
  options: { concurrency: number; ms: number; durationMs: number; run: string },
): Promise<{ samples: Sample[]; start: number; stop: number }> {
  const samples: Sample[] = [];
  const start = performance.now();
  const stop = start + options.durationMs;
  const controller = new AbortController();
  const timer = setTimeout(
    () => controller.abort(),
    options.durationMs + 30_000 + options.ms * 20,
  );
  let seq = 0;
  const loop = async () => {
    for (
      let guard = 0;
      guard < 1_000_000 && performance.now() < stop;
      guard++
    ) {
      const s = await request(
        url,
        options.ms,
        options.run,
        seq++,
        controller.signal,
      );
      samples.push({ scheduled: s.sent, ...s });
      if (s.status === 0) break;
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, loop));
  clearTimeout(timer);
  return { samples, start, stop };
}

// ------------------------------------------------------------------ results

/** The measurements of one system on one trace. */
export interface RunResult {
  /** Latency percentiles of the answered (200) requests, ms. */
  latency: Percentiles;
  /** Each percentile divided by the ideal's. */
  ratio: { p50: number; p90: number; p99: number; p999: number; max: number };
  /** Answered requests per second, first send to last answer. */
  throughput: number;
  /** Requests not answered 200. */
  errors: number;
  /** Kinds of errors seen, with counts. */
  errorKinds: Record<string, number>;
  /** How late the client sent requests: p99 and max, ms. */
  sendLateP99: number;
  /** Largest send lateness, ms. */
  sendLateMax: number;
  /** Mean of (job length measured by the worker − requested), ms. */
  serviceErrorMs: number;
  /** CPU the load generator used during the run, as a share of one core. */
  clientCpuShare: number;
  /** CPU the balancer used per request, ms. */
  balancerCpuMs: number;
  /** CPU the workers used per request, ms (the jobs sleep). */
  workerCpuMs: number;
  /**
   * Requests the hub held ahead during the run (`pothead-hold`, from its
   * `pothead_held_total`; absent for other systems and in results before
   * 12-07).
   */
  held?: number;
}

/** One cell and load: the ideal and every system. */
export interface CellResult {
  /** Workers. */
  workers: number;
  /** Service time distribution. */
  dist: Distribution;
  /** Mean service time, ms. */
  meanMs: number;
  /** Utilisation. */
  load: number;
  /** Trace length, ms. */
  durationMs: number;
  /** Requests in the trace. */
  requests: number;
  /** The ideal central FIFO queue on the trace. */
  ideal: Percentiles;
  /** Per system. */
  systems: Partial<Record<SystemName, RunResult>>;
}

/** The saturated run of one system. */
export interface GapResult {
  /** Workers. */
  workers: number;
  /** Which system. */
  system: SystemName;
  /** Job length, ms. */
  ms: number;
  /** Dispatch gaps of all rounds together, ms. */
  gap: Percentiles;
  /** The median gap of each round, ms (absent in older results). */
  roundMedians?: number[];
  /** Answered requests per second. */
  throughput: number;
  /** The most the workers could do: K × 1000 / ms. */
  capacity: number;
  /** Requests not answered 200. */
  errors: number;
  /** CPU the load generator used, as a share of one core. */
  clientCpuShare: number;
  /** CPU the balancer used per request, ms. */
  balancerCpuMs: number;
  /** CPU the workers used per request, ms. */
  workerCpuMs: number;
}

function ratioOf(x: number, ideal: number): number {
  return ideal > 0 ? x / ideal : NaN;
}

function analyseReplay(
  trace: Trace,
  samples: Sample[],
  ideal: Percentiles,
): RunResult {
  const latencies: number[] = [];
  const late: number[] = [];
  const errorKinds: Record<string, number> = {};
  let serviceError = 0;
  let serviceCount = 0;
  let first = Infinity, last = -Infinity;
  samples.forEach((s, i) => {
    late.push(s.sent - s.scheduled);
    first = Math.min(first, s.sent);
    if (s.status === 200) {
      latencies.push(s.done - s.sent);
      last = Math.max(last, s.done);
      if (s.job) {
        serviceError += s.job.finished - s.job.started - trace.service[i];
        serviceCount++;
      }
    } else {
      const kind = s.error ?? `HTTP ${s.status}`;
      errorKinds[kind] = (errorKinds[kind] ?? 0) + 1;
    }
  });
  const latency = summarize(latencies);
  const lateness = summarize(late);
  return {
    latency,
    ratio: {
      p50: ratioOf(latency.p50, ideal.p50),
      p90: ratioOf(latency.p90, ideal.p90),
      p99: ratioOf(latency.p99, ideal.p99),
      p999: ratioOf(latency.p999, ideal.p999),
      max: ratioOf(latency.max, ideal.max),
    },
    throughput: last > first ? (latencies.length * 1000) / (last - first) : 0,
    errors: samples.length - latencies.length,
    errorKinds,
    sendLateP99: lateness.p99,
    sendLateMax: lateness.max,
    serviceErrorMs: serviceCount ? serviceError / serviceCount : NaN,
    clientCpuShare: NaN,
    balancerCpuMs: NaN,
    workerCpuMs: NaN,
  };
}

/**
 * Starts measuring the CPU of the client, the balancer and the workers;
 * the returned function gives the shares and per-request costs of a run.
 */
function cpuMeter(
  system: System,
): (
  samples: Sample[],
) => Pick<RunResult, "clientCpuShare" | "balancerCpuMs" | "workerCpuMs"> {
  const sum = (pids: number[]) =>
    pids.reduce((total, pid) => total + cpuMs(pid), 0);
  const client = cpuMs(Deno.pid);
  const balancer = sum(system.balancerPids);
  const workers = sum(system.workerPids);
  return (samples) => {
    const n = Math.max(1, samples.length);
    const span = Math.max(
      1,
      Math.max(...samples.map((s) => s.done)) -
        Math.min(...samples.map((s) => s.sent)),
    );
    return {
      clientCpuShare: (cpuMs(Deno.pid) - client) / span,
      balancerCpuMs: (sum(system.balancerPids) - balancer) / n,
      workerCpuMs: (sum(system.workerPids) - workers) / n,
    };
  };
}

// The saturated runs: `plan.gapRounds` rounds, each running every system once
// in an order rotated per round; a system's gaps are pooled over its rounds.
async function gapRounds(
  plan: Plan,
  workers: number,
  systems: System[],
): Promise<GapResult[]> {
  const pooled = systems.map(() => ({
    gaps: [] as number[],
    medians: [] as number[],
    ok: 0,
    spanMs: 0,
    errors: 0,
    client: 0,
    balancer: 0,
    worker: 0,
  }));
  for (let round = 0; round < plan.gapRounds; round++) {
    for (let j = 0; j < systems.length; j++) {
      const index = (j + round) % systems.length;
      const system = systems[index];
      const acc = pooled[index];
      const cpu = cpuMeter(system);
      const { samples, start, stop } = await saturate(system.url, {
        concurrency: 2 * workers,
        ms: plan.gapMs,
        durationMs: plan.gapDurationS * 1000,
        run: `gap-${system.name}-${round}`,
      });
      const jobs = samples.flatMap((s) =>
        s.status === 200 && s.job ? [s.job] : []
      );
      // Skip the first fifth (connections settling) and everything after
      // the loops stopped sending (the queue empties then).
      const origin = performance.timeOrigin;
      const from = origin + start + (stop - start) * 0.2;
      const to = origin + stop - plan.gapMs;
      const gaps = dispatchGaps(jobs, { from, to });
      const ok = samples.filter((s) => s.status === 200);
      const span = ok.length === 0 ? 0 : Math.max(...ok.map((s) => s.done)) -
        Math.min(...samples.map((s) => s.sent));
      const used = cpu(samples);
      const median = summarize(gaps).p50;
      acc.gaps.push(...gaps);
      acc.medians.push(median);
      acc.ok += ok.length;
      acc.spanMs += Math.max(0, span);
      acc.errors += samples.length - ok.length;
      // Weighted by requests, so the pooled figure is per request overall.
      acc.client += used.clientCpuShare * Math.max(0, span);
      acc.balancer += used.balancerCpuMs * samples.length;
      acc.worker += used.workerCpuMs * samples.length;
      log(
        `K=${workers} gap ${system.name.padEnd(9)} round ${
          round + 1
        }/${plan.gapRounds} median=${
          median.toFixed(3)
        } ms (${gaps.length} gaps) throughput ${
          span > 0 ? ((ok.length * 1000) / span).toFixed(1) : "0"
        }/s; cpu/req balancer=${used.balancerCpuMs.toFixed(2)} workers=${
          used.workerCpuMs.toFixed(2)
        } ms`,
      );
      await new Promise((resolve) => setTimeout(resolve, 300));
    }
  }
  return systems.map((system, index) => {
    const acc = pooled[index];
    const requests = Math.max(1, acc.ok + acc.errors);
    const result: GapResult = {
      workers,
      system: system.name,
      ms: plan.gapMs,
      gap: summarize(acc.gaps),
      roundMedians: acc.medians,
      throughput: acc.spanMs > 0 ? (acc.ok * 1000) / acc.spanMs : 0,
      capacity: (workers * 1000) / plan.gapMs,
      errors: acc.errors,
      clientCpuShare: acc.spanMs > 0 ? acc.client / acc.spanMs : 0,
      balancerCpuMs: acc.balancer / requests,
      workerCpuMs: acc.worker / requests,
    };
    log(
      `K=${workers} gap ${system.name.padEnd(9)} median=${
        result.gap.p50.toFixed(3)
      } p90=${result.gap.p90.toFixed(3)} ms (${result.gap.n} gaps; rounds ${
        acc.medians.map((m) => m.toFixed(3)).join(" ")
      }) throughput ${
        result.throughput.toFixed(1)
      }/s of ${result.capacity}; cpu/req balancer=${
        result.balancerCpuMs.toFixed(2)
      } workers=${result.workerCpuMs.toFixed(2)} ms`,
    );
    return result;
  });
}

// ------------------------------------------------------------------ machine

async function readText(path: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch {
    return "";
  }
}

async function machine(): Promise<Record<string, string | number>> {
  let uname = "unavailable";
  try {
    const out = await new Deno.Command("uname", {
      args: ["-a"],
      stdout: "piped",
    })
      .output();
    uname = new TextDecoder().decode(out.stdout).trim();
  } catch {
    // not available
  }
  const cpuinfo = await readText("/proc/cpuinfo");
  return {
    uname,
    cpu: cpuinfo.match(/^model name\s*:\s*(.*)$/m)?.[1] ?? "unknown",
    cores: navigator.hardwareConcurrency,
    loadavg: (await readText("/proc/loadavg")).split(" ").slice(0, 3).join(" "),
  };
}

// ------------------------------------------------------------------ targets

/** A stated target and whether this run met it. */
export interface Target {
  /** What was promised. */
  target: string;
  /**
   * `pass`, `FAIL` or `not measured`; `control` for the line that sets the
   * second HAProxy against the first, which judges nothing.
   */
  result: "pass" | "FAIL" | "not measured" | "control";
  /** The numbers behind the verdict. */
  detail: string;
}

function cellName(
  c: { workers: number; dist: string; meanMs: number; load: number },
): string {
  return `K=${c.workers} ${c.dist} ${c.meanMs} ms @ ${
    Math.round(c.load * 100)
  }%`;
}

/**
 * The verdicts on a run: for each POTHEAD system in it (always "pothead";
 * "pothead-hold" when it ran), its targets against HAProxy and the ideal
 * queue; with a second HAProxy (`haproxy-b`), a last line setting it
 * against the first, the run's noise control.
 */
export function judge(cells: CellResult[], gaps: GapResult[]): Target[] {
  const ours = (["pothead", "pothead-hold"] as const).filter((s) =>
    s === "pothead" ||
    cells.some((c) => c.systems[s]) || gaps.some((g) => g.system === s)
  );
  const control = judgeControl(cells, gaps);
  const targets = ours.flatMap((s) => judgeOne(cells, gaps, s, control));
  return control === null ? targets : [...targets, control.line];
}

// A system's p99 over HAProxy's in a cell that has both.
function overHaproxy(c: CellResult, system: SystemName): number {
  return c.systems[system]!.latency.p99 / c.systems.haproxy!.latency.p99;
}

// The noise control: a second HAProxy on the same backends, run in the same
// rotation. How far it lands from the first is how far two runs of one
// system land apart on this machine in this run.
interface Control {
  line: Target;
  // The median |2nd / 1st - 1| of p99 over the cells.
  spread: number;
}

function judgeControl(
  cells: CellResult[],
  gaps: GapResult[],
): Control | null {
  const paired = cells.filter((c) =>
    c.systems.haproxy && c.systems["haproxy-b"]
  );
  if (paired.length === 0) return null;
  const ratios = paired.map((c) => overHaproxy(c, "haproxy-b"));
  const off = ratios.map((r) => Math.abs(r - 1)).sort((a, b) => a - b);
  const spread = off[Math.floor(off.length / 2)];
  const atOrBelow = ratios.filter((r) => r <= 1).length;
  const long = paired.filter((c) => c.meanMs >= 100);
  const within = (s: "haproxy" | "haproxy-b") =>
    long.filter((c) => c.systems[s]!.ratio.p99 <= 1.05).length;
  const gapText = [...new Set(gaps.map((g) => g.workers))].flatMap((k) => {
    const a = gaps.find((g) => g.workers === k && g.system === "haproxy");
    const b = gaps.find((g) => g.workers === k && g.system === "haproxy-b");
    return a && b
      ? [
        `K=${k} median gap ${b.gap.p50.toFixed(3)} vs ${
          a.gap.p50.toFixed(3)
        } ms`,
      ]
      : [];
  });
  return {
    spread,
    line: {
      target: `Control: ${SYSTEM_LABELS["haproxy-b"]} against the first`,
      result: "control",
      detail: `p99 at or below the first's in ${atOrBelow}/${paired.length} ` +
        `cells; 2nd/1st p99 from ${Math.min(...ratios).toFixed(3)} to ${
          Math.max(...ratios).toFixed(3)
        } (difference: median ${percent(spread)}, largest ${
          percent(off.at(-1)!)
        })` +
        (long.length
          ? `; 100 ms jobs within 1.05× of the ideal: first ${
            within("haproxy")
          }/${long.length}, 2nd ${within("haproxy-b")}/${long.length}`
          : "") +
        (gapText.length ? `; ${gapText.join(", ")}` : ""),
    },
  };
}

function judgeOne(
  cells: CellResult[],
  gaps: GapResult[],
  ours: "pothead" | "pothead-hold",
  control: Control | null,
): Target[] {
  const targets: Target[] = [];
  const name = SYSTEM_LABELS[ours];
  const paired = cells.filter((c) => c.systems[ours] && c.systems.haproxy);
  if (paired.length === 0) {
    targets.push({
      target: `${name} p99 ≤ HAProxy maxconn 1 p99 in every cell`,
      result: "not measured",
      detail: "needs both systems",
    });
  } else {
    const worse = paired.filter((c) => overHaproxy(c, ours) > 1);
    const excess = (c: CellResult) => overHaproxy(c, ours) - 1;
    // How far over, and how far the control landed from HAProxy there.
    const over = (c: CellResult) =>
      `+${percent(excess(c))}` +
      (c.systems["haproxy-b"] === undefined
        ? ""
        : `; control ${signed(overHaproxy(c, "haproxy-b") - 1)}`);
    const ratios = paired.map((c) => ({
      c,
      r: overHaproxy(c, ours),
    })).sort((a, b) => b.r - a.r);
    targets.push({
      target: `${name} p99 ≤ HAProxy maxconn 1 p99 in every cell`,
      result: worse.length === 0 ? "pass" : "FAIL",
      detail: `${paired.length - worse.length}/${paired.length} cells; ` +
        `${name}/HAProxy p99 from ${ratios.at(-1)!.r.toFixed(3)} to ${
          ratios[0].r.toFixed(3)
        } (worst: ${cellName(ratios[0].c)})` +
        (worse.length
          ? `; worse in: ${
            worse.map((c) => `${cellName(c)} (${over(c)})`).join(", ")
          }`
          : "") +
        (worse.length && control !== null
          ? `; ${
            worse.filter((c) => excess(c) <= control.spread).length
          } of ${worse.length} over by no more than the control's median difference (${
            percent(control.spread)
          })`
          : ""),
    });
  }
  const ks = [...new Set(gaps.map((g) => g.workers))];
  const gapPairs = ks.map((k) => ({
    k,
    p: gaps.find((g) => g.workers === k && g.system === ours),
    h: gaps.find((g) => g.workers === k && g.system === "haproxy"),
  })).filter((x) => x.p && x.h);
  targets.push(
    gapPairs.length === 0
      ? {
        target: `${name} dispatch gap < HAProxy's`,
        result: "not measured",
        detail: "needs both systems",
      }
      : {
        target: `${name} dispatch gap < HAProxy's`,
        result: gapPairs.every((x) => x.p!.gap.p50 < x.h!.gap.p50)
          ? "pass"
          : "FAIL",
        detail: gapPairs.map((x) =>
          `K=${x.k}: median ${x.p!.gap.p50.toFixed(3)} vs ${
            x.h!.gap.p50.toFixed(3)
          } ms, p90 ${x.p!.gap.p90.toFixed(3)} vs ${x.h!.gap.p90.toFixed(3)} ms`
        ).join("; "),
      },
  );
  const long = cells.filter((c) => c.meanMs >= 100 && c.systems[ours]);
  if (long.length === 0) {
    targets.push({
      target: `100 ms jobs: ${name} p99 ≤ 1.05 × ideal p99`,
      result: "not measured",
      detail: "no 100 ms cell in this run",
    });
  } else {
    const bad = long.filter((c) => c.systems[ours]!.ratio.p99 > 1.05);
    const worst = long.map((c) =>
      c.systems[ours]!.ratio.p99
    ).sort((a, b) => b - a)[0];
    targets.push({
      target: `100 ms jobs: ${name} p99 ≤ 1.05 × ideal p99`,
      result: bad.length === 0 ? "pass" : "FAIL",
      detail:
        `${long.length - bad.length}/${long.length} cells; worst ${
          worst.toFixed(3)
        }×` + (bad.length
          ? `; over in: ${
            bad.map((c) =>
              `${cellName(c)} (${c.systems[ours]!.ratio.p99.toFixed(3)}×)`
            )
              .join(", ")
          }`
          : ""),
    });
  }
  return targets;
}

// ------------------------------------------------------------------ report

// What runs without --systems: POTHEAD as it starts by default.
const DEFAULT_SYSTEMS: SystemName[] = [
  "pothead",
  "haproxy",
  "nginx-rr",
  "nginx-lc",
];

const COLORS: Record<SystemName | "ideal", string> = {
  ideal: "#222",
  pothead: "#1b9e3e",
  "pothead-hold": "#7fc97f",
  haproxy: "#1f5fbf",
  "haproxy-b": "#7fa7e0",
  "nginx-rr": "#d9541e",
  "nginx-lc": "#b0309b",
};

function percent(share: number): string {
  const n = share * 100;
  return `${n.toFixed(Math.abs(n) < 0.1 ? 2 : 1)}%`;
}

function signed(share: number): string {
  return `${share < 0 ? "−" : "+"}${percent(Math.abs(share))}`;
}

function ms(n: number): string {
  if (!Number.isFinite(n)) return "–";
  return n >= 1000 ? n.toFixed(0) : n >= 100 ? n.toFixed(1) : n.toFixed(2);
}

function num(n: number | null | undefined, digits: number): string {
  return typeof n === "number" && Number.isFinite(n) ? n.toFixed(digits) : "–";
}

function x(n: number): string {
  return Number.isFinite(n) ? `${n.toFixed(2)}×` : "–";
}

function groupKey(
  c: { workers: number; dist: string; meanMs: number },
): string {
  return `K=${c.workers}, ${
    c.dist === "exp" ? "exponential" : "constant"
  } ${c.meanMs} ms`;
}

/** Everything the report is made from. */
export interface Report {
  /** ISO date of the run. */
  date: string;
  /** uname, CPU, cores, load average. */
  machine: Record<string, string | number>;
  /** Program versions. */
  versions: Record<string, string>;
  /** What was run. */
  plan: Plan;
  /** Wall time, seconds. */
  elapsedS: number;
  /** Per cell and load. */
  cells: CellResult[];
  /** Saturated runs. */
  gaps: GapResult[];
  /** Verdicts (empty for smoke). */
  targets: Target[];
  /** Systems that could not run, with why. */
  skipped: Record<string, string>;
  /** The nice value every benchmark process ran at. */
  nice: number;
  /** The command-line arguments. */
  args: string[];
}

/** Client lateness (p99, ms) above which a run is flagged as disturbed. */
const NOISY_LATE_MS = 20;

/** Lines naming the runs during which the client itself was held up. */
function noisyRuns(report: Report): string[] {
  const runs: string[] = [];
  let total = 0;
  for (const c of report.cells) {
    for (const [name, r] of Object.entries(c.systems)) {
      total++;
      if (r.sendLateP99 > NOISY_LATE_MS) {
        runs.push(
          `${cellName(c)} ${SYSTEM_LABELS[name as SystemName]} (${
            r.sendLateP99.toFixed(0)
          } ms)`,
        );
      }
    }
  }
  if (runs.length === 0) return [];
  return [
    `- In ${runs.length} of ${total} runs the load generator itself sent its p99 request more than ${NOISY_LATE_MS} ms late, ` +
    "a sign that the CPUs were contended (by other jobs on the machine or by the system under test itself); treat those cells with care: " +
    runs.join(", ") + ".",
  ];
}

/** The markdown report. */
export function renderMarkdown(report: Report): string {
  const { plan } = report;
  const lines: string[] = [];
  const systems = plan.systems.filter((s) => !(s in report.skipped));
  lines.push(
    "# Queueing benchmark",
    "",
    `Generated by \`deno run -A bench/queueing.ts${
      (report.args ?? []).map((a) => " " + a).join("")
    }\` (${plan.mode} mode) on ${report.date} in ${
      Math.round(report.elapsedS)
    } s.`,
    "",
    `- Machine: \`${report.machine.uname}\``,
    `- CPU: ${report.machine.cpu}, ${report.machine.cores} cores; load average at start ${report.machine.loadavg}` +
      ` (shared machine: other jobs were running, so tails are noisier than on a quiet host)`,
    `- ${
      report.versions.pothead
        ? `POTHEAD build ${report.versions.pothead}; `
        : ""
    }${report.versions.deno}; ${report.versions.haproxy}; ${report.versions.nginx}`,
    `- Jobs: ${
      plan.service === "sleep"
        ? "**sleep-based** (a timer per job, corrected for timer lateness), so 16 one-at-a-time workers fit on a 2-core machine; the CPU is left to the balancers and the client"
        : "**CPU-burning** (each job spins); with more workers than cores the jobs compete for the CPU"
    }.`,
    `- Each worker runs one job at a time; requests that reach a busy worker wait inside it in FIFO order (nginx). ` +
      `HAProxy has \`maxconn 1\` per server (its central queue), POTHEAD runs \`worker.ts --concurrency 1\`, nginx keeps upstream keep-alive.`,
    `- Traces: seeded (seed ${plan.seed}) open-loop Poisson arrivals, the same trace for every system and the ideal; ` +
      `base length ${plan.durationS} s per cell${
        plan.minRequests
          ? `, lengthened up to 2× to reach ${plan.minRequests} requests`
          : ""
      }. ` +
      `Latency runs from the client sending the request to the last byte of the answer; the ideal has no network or proxy cost at all.`,
    `- Each system is first warmed up for ${plan.warmS} s by a saturated burst of 1 ms jobs (connections, and V8's tier-up of the hub's and workers' code); worker processes (not the hub) run with V8's memory reducer off, whose idle-time GCs the workers otherwise ran in lockstep. Systems run one after another within each cell (their order rotates from cell to cell${
      plan.orderOffset === undefined
        ? ""
        : `; this run's first cell started at turn ${
          plan.orderOffset % systems.length
        } of the \`--systems\` order`
    }) on the same machine as the client` +
      (report.nice
        ? `; the client, the balancers and every worker ran at nice ${report.nice} so that other jobs on the machine disturbed them less (all systems alike).`
        : "."),
  );
  if (plan.systems.includes("haproxy-b")) {
    lines.push(
      "- Control: a second HAProxy process with the same configuration and backends runs as a system of its own, in the same rotation. Nothing differs between the two but when they ran, so how far its figures land from the first's is how far two runs of one system differ in this run.",
    );
  }
  lines.push("");
  if (plan.mode === "smoke") {
    lines.push("**Smoke run: timings are not judged.**", "");
  }
  if (Object.keys(report.skipped).length) {
    lines.push(
      "Skipped: " +
        Object.entries(report.skipped).map(([s, why]) => `${s} (${why})`).join(
          "; ",
        ),
      "",
    );
  }
  if (report.targets.length) {
    lines.push(
      "## Targets",
      "",
      "| target | result | detail |",
      "|---|---|---|",
    );
    for (const t of report.targets) {
      lines.push(`| ${t.target} | **${t.result}** | ${t.detail} |`);
    }
    lines.push("");
  }
  lines.push(
    "## p99 latency (ms) by load",
    "",
    `| cell | load | ideal | ${
      systems.map((s) => SYSTEM_LABELS[s]).join(" | ")
    } |`,
    `|---|---:|---:|${systems.map(() => "---:").join("|")}|`,
  );
  for (const c of report.cells) {
    lines.push(
      `| ${groupKey(c)} | ${Math.round(c.load * 100)}% | ${ms(c.ideal.p99)} | ${
        systems.map((s) => {
          const r = c.systems[s];
          return r ? `${ms(r.latency.p99)} (${x(r.ratio.p99)})` : "–";
        }).join(" | ")
      } |`,
    );
  }
  const held = report.cells.filter((c) =>
    c.systems["pothead-hold"]?.held !== undefined
  );
  if (held.length > 0) {
    lines.push(
      "",
      "## Requests held ahead",
      "",
      `${
        SYSTEM_LABELS["pothead-hold"]
      }: the requests its hub held ahead during each cell's run (\`pothead_held_total\` read before and after), of the requests in the trace.`,
      "",
      "| cell | load | held | of requests |",
      "|---|---:|---:|---:|",
    );
    for (const c of held) {
      const n = c.systems["pothead-hold"]!.held!;
      lines.push(
        `| ${groupKey(c)} | ${Math.round(c.load * 100)}% | ${n} | ${
          ((n / c.requests) * 100).toFixed(1)
        }% |`,
      );
    }
  }
  lines.push(
    "",
    "## Dispatch gap",
    "",
    `Saturated closed loop: 2K requests outstanding, constant ${plan.gapMs} ms jobs, ${
      plan.gapRounds ?? 1
    } round(s) of ${plan.gapDurationS} s per system${
      (plan.gapRounds ?? 1) > 1
        ? ", systems interleaved (order rotated per round), gaps pooled over rounds"
        : ""
    }. ` +
      "Gap = a worker's next job start minus its previous job end (on the worker's clock). " +
      "For nginx the next request is usually already waiting inside the worker, so its gap is only the in-process hand-over; its cost shows up as queueing behind the wrong worker instead.",
    "",
    "| K | system | gaps | median | round medians | p90 | p99 | mean | throughput /s | of capacity | errors | balancer CPU ms/req | workers CPU ms/req |",
    "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  );
  for (const g of report.gaps) {
    lines.push(
      `| ${g.workers} | ${SYSTEM_LABELS[g.system]} | ${g.gap.n} | ${
        num(g.gap.p50, 3)
      } | ${g.roundMedians?.map((m) => num(m, 3)).join(", ") ?? "–"} | ${
        num(g.gap.p90, 3)
      } | ${num(g.gap.p99, 3)} | ${num(g.gap.mean, 3)} | ${
        g.throughput.toFixed(1)
      } | ${((g.throughput / g.capacity) * 100).toFixed(1)}% | ${g.errors} | ${
        num(g.balancerCpuMs, 3)
      } | ${num(g.workerCpuMs, 3)} |`,
    );
  }
  lines.push(
    "",
    "## All results",
    "",
    "Latencies in ms; `×` columns are the ratio to the ideal queue's same percentile on the same trace. " +
      "`late p99` is how late the client sent (ms), `svc err` the mean difference between the job length the worker measured and the one asked for (ms), " +
      "`bal. CPU` the CPU time the balancer process used per request (ms).",
  );
  const groups = new Map<string, CellResult[]>();
  for (const c of report.cells) {
    const key = groupKey(c);
    groups.set(key, [...(groups.get(key) ?? []), c]);
  }
  for (const [key, cells] of groups) {
    lines.push(
      "",
      `### ${key}`,
      "",
      "| system | load | n | p50 | p90 | p99 | p99.9 | max | req/s | errors | ×p50 | ×p90 | ×p99 | ×p99.9 | late p99 | svc err | bal. CPU |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    );
    for (const c of cells) {
      const load = `${Math.round(c.load * 100)}%`;
      lines.push(
        `| ideal | ${load} | ${c.ideal.n} | ${ms(c.ideal.p50)} | ${
          ms(c.ideal.p90)
        } | ${ms(c.ideal.p99)} | ${ms(c.ideal.p999)} | ${
          ms(c.ideal.max)
        } | | | | | | | | | |`,
      );
      for (const s of systems) {
        const r = c.systems[s];
        if (!r) continue;
        const errs = r.errors
          ? `${r.errors} (${
            Object.entries(r.errorKinds).map(([k, v]) => `${k}: ${v}`).join(
              ", ",
            )
          })`
          : "0";
        lines.push(
          `| ${SYSTEM_LABELS[s]} | ${load} | ${r.latency.n} | ${
            ms(r.latency.p50)
          } | ${ms(r.latency.p90)} | ${ms(r.latency.p99)} | ${
            ms(r.latency.p999)
          } | ${ms(r.latency.max)} | ${r.throughput.toFixed(1)} | ${errs} | ${
            x(r.ratio.p50)
          } | ${x(r.ratio.p90)} | ${x(r.ratio.p99)} | ${x(r.ratio.p999)} | ${
            num(r.sendLateP99, 2)
          } | ${num(r.serviceErrorMs, 2)} | ${num(r.balancerCpuMs, 3)} |`,
        );
      }
    }
  }
  lines.push(
    "",
    "## What limited these figures",
    "",
    ...noisyRuns(report),
    "- Two shared cores run the client, the balancer, every worker process and (at times) other people's jobs; " +
      "a scheduling hiccup of a few ms lands in the tail of whichever system was running, so p99.9 and max are noisy.",
    "- Jobs sleep instead of computing: a worker costs no CPU while busy, which is what lets 16 workers run here; " +
      "timer lateness makes single jobs up to about a millisecond off (the `svc err` column shows the mean).",
    "- Short traces: a cell has hundreds to a few thousand requests, so p99.9 rests on a handful of samples. " +
      "Every system sees the same trace, which makes the comparison between them much tighter than each figure alone.",
    "",
  );
  return lines.join("\n");
}

/** The SVG chart: p99 against load, one panel per K, distribution and mean. */
export function renderChart(report: Report): string {
  const systems = report.plan.systems.filter((s) => !(s in report.skipped));
  const groups = new Map<string, CellResult[]>();
  for (const c of report.cells) {
    const key = groupKey(c);
    groups.set(key, [...(groups.get(key) ?? []), c]);
  }
  const panels = [...groups].map(([title, cells]) => {
    const series: Series[] = [{
      name: "ideal FIFO queue (floor)",
      color: COLORS.ideal,
      dash: "6 4",
      points: cells.map((c) => [c.load * 100, c.ideal.p99]),
    }];
    for (const s of systems) {
      series.push({
        name: SYSTEM_LABELS[s],
        color: COLORS[s],
        width: s === "pothead" ? 3 : 2,
        points: cells.filter((c) => c.systems[s]).map((
          c,
        ) => [c.load * 100, c.systems[s]!.latency.p99]),
      });
    }
    return { title, series };
  });
  return lineChart({
    title: "p99 latency against load: one-at-a-time workers",
    subtitle:
      `${
        report.date.slice(0, 10)
      }, ${report.machine.cpu} × ${report.machine.cores}, ` +
      `${
        report.plan.service === "sleep" ? "sleep-based" : "CPU"
      } jobs, open-loop Poisson, same trace for all`,
    xLabel: "utilisation (%)",
    yLabel: "p99 latency (ms, log scale)",
    panels,
    columns: Math.min(4, panels.length),
    logY: true,
    formatX: (v) => `${Math.round(v)}`,
  });
}

// ------------------------------------------------------------------ main

async function render(file: string): Promise<number> {
  const report = JSON.parse(await Deno.readTextFile(file)) as Report;
  // Judged again: the targets as this version states them.
  if (report.targets.length > 0) {
    report.targets = judge(report.cells, report.gaps);
  }
  const dir = dirname(file);
  await Deno.writeTextFile(join(dir, "queueing.md"), renderMarkdown(report));
  await Deno.writeTextFile(join(dir, "queueing.svg"), renderChart(report));
  console.log(`wrote ${join(dir, "queueing.{md,svg}")}`);
  return 0;
}

function log(line: string): void {
  console.log(line);
}

/**
 * Runs the benchmark. Returns the exit code: 0 when every run completed
 * (targets are reported, not enforced), 1 when a system failed to run, 2 on
 * bad arguments.
 *
 * @param args command-line arguments.
 */
export async function main(args: string[] = Deno.args): Promise<number> {
  let plan: Plan | undefined;
  let renderFile: string | undefined;
  try {
    const parsed = parsePlan(args);
    if (parsed === "help") {
      console.log(HELP);
      return 0;
    }
    if ("render" in parsed) {
      renderFile = parsed.render;
    } else {
      plan = parsed;
    }
  } catch (error) {
    console.error(`queueing: ${(error as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (renderFile !== undefined) return await render(renderFile);
  if (plan === undefined) return 2;
  const began = performance.now();
  const estimate = estimateSeconds(plan);
  log(
    `queueing benchmark (${plan.mode}): K=${plan.ks.join(",")}, loads ${
      plan.loads.join(",")
    }, ${plan.dists.join(",")} ${plan.means.join(",")} ms, systems ${
      plan.systems.join(",")
    }, ${plan.service} jobs`,
  );
  log(`estimated time: ${Math.ceil(estimate / 60)} min (${estimate} s)`);

  const niced = plan.nice !== 0 && await setNiceness(plan.nice);
  if (plan.nice !== 0 && !niced) log(`could not set nice ${plan.nice}`);
  const skipped: Record<string, string> = {};
  if (plan.systems.some((s) => s.startsWith("haproxy"))) {
    if (!await ensureProgram("haproxy", "haproxy", log)) {
      for (const s of plan.systems) {
        if (s.startsWith("haproxy")) skipped[s] = "haproxy not installed";
      }
    }
  }
  if (plan.systems.some((s) => s.startsWith("nginx"))) {
    if (!await ensureProgram("nginx", "nginx", log)) {
      for (const s of plan.systems) {
        if (s.startsWith("nginx")) skipped[s] = "nginx not installed";
      }
    }
  }
  const names = plan.systems.filter((s) => !(s in skipped));
  const report: Report = {
    date: new Date().toISOString(),
    machine: await machine(),
    versions: await versions(),
    plan,
    elapsedS: 0,
    cells: [],
    gaps: [],
    targets: [],
    skipped,
    nice: niced ? plan.nice : 0,
    args,
  };
  const dir = await Deno.makeTempDir({ prefix: "pothead-queueing-" });
  // Every child dies by this bound even if we are killed.
  const maxSeconds = estimate * 3 + 600;
  let failed = false;
  try {
    for (const workers of plan.ks) {
      log(`\n== K=${workers}: starting ${names.join(", ")}`);
      const running = await startSystems(names, {
        workers,
        mode: plan.service,
        dir,
        maxSeconds,
      });
      try {
        for (const system of running.systems) {
          // Warm up connections and JIT: a saturated burst of tiny jobs.
          // Half a second was too short: a hub 2 s into a load still woke
          // V8's compiler threads on every other request, and its dispatch
          // turnaround was 62 µs at the median (47 µs after 30 s).
          await saturate(system.url, {
            concurrency: 2 * workers,
            ms: 1,
            durationMs: plan.warmS * 1000,
            run: "warm",
          });
        }
        const cells = cellsOf(plan, workers);
        for (const [index, spec] of cells.entries()) {
          const trace = makeTrace({ ...spec, seed: plan.seed });
          const ideal = summarize(
            simulateFifo(trace.arrivals, trace.service, workers).latency,
          );
          const cell: CellResult = {
            ...spec,
            requests: trace.arrivals.length,
            ideal,
            systems: {},
          };
          const order = rotated(running.systems, plan.orderOffset + index);
          for (const system of order) {
            const cpu = cpuMeter(system);
            const heldBefore = await hubCounter(system);
            const samples = await replay(
              system.url,
              trace,
              `${system.name}-${index}`,
              drainMs(spec),
            );
            const heldAfter = await hubCounter(system);
            const result = analyseReplay(trace, samples, ideal);
            Object.assign(result, cpu(samples));
            if (heldBefore !== null && heldAfter !== null) {
              result.held = heldAfter - heldBefore;
            }
            cell.systems[system.name] = result;
            log(
              `${cellName(spec)} ${
                system.name.padEnd(9)
              } n=${result.latency.n} ` +
                `p50=${ms(result.latency.p50)} p99=${ms(result.latency.p99)} ` +
                `(${x(result.ratio.p99)} ideal ${ms(ideal.p99)}) max=${
                  ms(result.latency.max)
                } errors=${result.errors} late p99=${
                  result.sendLateP99.toFixed(1)
                } cpu/req balancer=${result.balancerCpuMs.toFixed(2)} workers=${
                  result.workerCpuMs.toFixed(2)
                } ms client=${(result.clientCpuShare * 100).toFixed(0)}%${
                  result.held === undefined ? "" : ` held=${result.held}`
                }`,
            );
            if (result.errors > 0) {
              log(`  errors: ${JSON.stringify(result.errorKinds)}`);
            }
            await new Promise((resolve) => setTimeout(resolve, 300));
          }
          report.cells.push(cell);
        }
        report.gaps.push(...await gapRounds(plan, workers, running.systems));
      } finally {
        await running.stop();
      }
    }
  } catch (error) {
    failed = true;
    console.error(`queueing: ${(error as Error).stack ?? error}`);
  } finally {
    killAll();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  report.elapsedS = (performance.now() - began) / 1000;
  if (plan.mode !== "smoke") report.targets = judge(report.cells, report.gaps);
  const out = plan.out ?? await Deno.makeTempDir({ prefix: "pothead-smoke-" });
  await Deno.mkdir(out, { recursive: true });
  await Deno.writeTextFile(join(out, "queueing.md"), renderMarkdown(report));
  await Deno.writeTextFile(join(out, "queueing.svg"), renderChart(report));
  await Deno.writeTextFile(
    join(out, "queueing.json"),
    JSON.stringify(report, null, 1) + "\n",
  );
  log(
    `\nwrote ${join(out, "queueing.{md,svg,json}")} in ${
      Math.round(report.elapsedS)
    } s`,
  );
  for (const t of report.targets) {
    log(`target: ${t.target}: ${t.result} — ${t.detail}`);
  }
  if (plan.mode === "smoke") {
    log("smoke: timings not judged");
    // It must still have worked: every run answered, (almost) no errors.
    for (const c of report.cells) {
      for (const [name, r] of Object.entries(c.systems)) {
        if (r.latency.n === 0 || r.errors > c.requests * 0.01) {
          console.error(
            `queueing: ${name} failed in the smoke run: ${r.errors} errors`,
          );
          failed = true;
        }
      }
    }
    if (report.cells.length === 0) failed = true;
  }
  return failed ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main());
