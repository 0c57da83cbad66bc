/**
 * The affinity benchmark: what soft worker affinity (`--affinity-by`) buys
 * when requests run faster on a worker that has their "model" loaded.
 *
 * K `worker.ts --concurrency 1` workers running
 * `bench/workers/affinity_job.ts`: each keeps the C models it used last
 * loaded (an LRU); a request for a loaded model costs `--warm-ms`, one for
 * a model not loaded `--cold-ms` (the load), after which it is loaded.
 * Sleep-based, so CPU does not decide the result. One seeded trace per load
 * level: open-loop Poisson arrivals at a share of the workers' capacity
 * *at the warm cost* (constant `--warm-ms` jobs), each request's model drawn
 * from M models with Zipf popularity (its own seeded stream, the same
 * sequence of models at every load), carried in `X-Bench-Model`. Each trace
 * is replayed through three hubs in turn, each with fresh workers (nothing
 * loaded): **none** (no affinity: least-loaded dispatch), **affinity**
 * (`--affinity-by header:x-bench-model`) and **wait** (the same with
 * `--affinity-wait`, `--wait-ms`). The hub's affinity counters are read
 * from its admin listener's `/metrics` around each replay.
 *
 * ```sh
 * deno run -A bench/affinity.ts [--smoke] [--k=4] [--models=8] [--slots=2]
 *   [--warm-ms=10] [--cold-ms=60] [--wait-ms=60] [--zipf=1] [--loads=0.1,0.2,0.5]
 *   [--duration=15] [--seed=1] [--name=affinity] [--out=DIR]
 * ```
 *
 * Writes `NAME.md` and `NAME.json` (`affinity.*` by default) under
 * `bench/results/` (a temporary directory for `--smoke`, which checks only
 * that every request was answered, never a timing).
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { makeRandom, makeTrace, type Trace } from "./_trace.ts";
import { type Percentiles, summarize } from "./_sim.ts";
import {
  freePort,
  killAll,
  ROOT,
  setNiceness,
  startSystems,
} from "./_systems.ts";
import {
  formatMs,
  loadAverage,
  type MachineInfo,
  machineInfo,
  numberFlag,
  round,
  writeReport,
} from "./_util.ts";
import { replay, type Sample, saturate } from "./queueing.ts";

/** Everything one invocation runs. */
export interface Plan {
  /** `full` or `smoke`. */
  mode: "full" | "smoke";
  /** Workers, each serving one request at a time. */
  workers: number;
  /** Models the requests are spread over. */
  models: number;
  /** Models each worker keeps loaded. */
  slots: number;
  /** Cost of a request whose model is loaded, ms. */
  warmMs: number;
  /** Cost of a request whose model is not loaded (the load), ms. */
  coldMs: number;
  /** The wait hub's `--affinity-wait`, ms. */
  waitMs: number;
  /** Zipf exponent of the models' popularity. */
  zipf: number;
  /** Load levels: arrival rate × warm cost / workers. */
  loads: number[];
  /** Trace length, seconds. */
  durationS: number;
  /** Warm-up (saturated burst of 1 ms jobs), seconds. */
  warmS: number;
  /** Seed of the traces and of the model draws. */
  seed: number;
  /** Output directory, or null for a temporary one. */
  out: string | null;
  /** Report file name, without extension. */
  name: string;
  /** Nice value for the benchmark and every process it starts (0: as is). */
  nice: number;
}

const HELP = `Usage: deno run -A bench/affinity.ts [options]

  --smoke             K=2, load 0.2, 2 s; proves it runs, judges nothing
  --k=N               workers (default 4), one slot each
  --models=8          models the requests are spread over
  --slots=2           models each worker keeps loaded (LRU)
  --warm-ms=10        cost of a request whose model is loaded
  --cold-ms=60        cost of one whose model is not (the load)
  --wait-ms=60        the wait hub's --affinity-wait (default: the cold cost)
  --zipf=1            Zipf exponent of the models' popularity
  --loads=0.1,0.2,0.5 load levels, as shares of the capacity at the warm cost
  --duration=S        trace length in seconds (default 15)
  --seed=N            trace seed (default 1)
  --out=DIR           where to write NAME.{md,json}
  --name=affinity     the report's file name
  --nice=N            nice value (default -10 as root)
`;

/**
 * Turns command-line arguments into a plan.
 *
 * @throws {RangeError} on a bad value, naming the flag.
 */
export function parsePlan(args: string[]): Plan | "help" {
  const { values } = parseArgs({
    args,
    options: {
      smoke: { type: "boolean" },
      k: { type: "string" },
      models: { type: "string" },
      slots: { type: "string" },
      "warm-ms": { type: "string" },
      "cold-ms": { type: "string" },
      "wait-ms": { type: "string" },
      zipf: { type: "string" },
      loads: { type: "string" },
      duration: { type: "string" },
      seed: { type: "string" },
      out: { type: "string" },
      name: { type: "string" },
      nice: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) return "help";
  const smoke = values.smoke ?? false;
  const integer = (lo: number, hi: number) => (n: number) =>
    Number.isInteger(n) && n >= lo && n <= hi;
  const loadsText = values.loads ?? (smoke ? "0.2" : "0.1,0.2,0.5");
  const loads = loadsText.split(",").map((text) =>
    numberFlag("loads", text.trim(), NaN, (n) => n > 0 && n < 1.5, "(0, 1.5)")
  );
  if (loads.length === 0 || loads.length > 10) {
    throw new RangeError(`Invalid --loads: expected 1 to 10 levels`);
  }
  const name = values.name ?? "affinity";
  if (!/^[A-Za-z0-9_-]+$/.test(name)) {
    throw new RangeError(
      `Invalid --name: expected letters, digits, "-" or "_", got "${name}"`,
    );
  }
  const range = (lo: number, hi: number) => (n: number) => n > lo && n <= hi;
  const coldMs = numberFlag(
    "cold-ms",
    values["cold-ms"],
    60,
    range(0, 100_000),
    "(0, 100000]",
  );
  return {
    mode: smoke ? "smoke" : "full",
    workers: numberFlag("k", values.k, smoke ? 2 : 4, integer(1, 64), "1..64"),
    models: numberFlag("models", values.models, 8, integer(1, 1000), "1..1000"),
    slots: numberFlag("slots", values.slots, 2, integer(1, 1000), "1..1000"),
    warmMs: numberFlag(
      "warm-ms",
      values["warm-ms"],
      10,
      range(0, 10_000),
      "(0, 10000]",
    ),
    coldMs,
    waitMs: numberFlag(
      "wait-ms",
      values["wait-ms"],
      coldMs,
      range(0, 100_000),
      "(0, 100000]",
    ),
    zipf: numberFlag(
      "zipf",
      values.zipf,
      1,
      (n) => n >= 0 && n <= 10,
      "[0, 10]",
    ),
    loads,
    durationS: numberFlag(
      "duration",
      values.duration,
      smoke ? 2 : 15,
      range(0, 600),
      "(0, 600]",
    ),
    warmS: smoke ? 0.5 : 3,
    seed: numberFlag("seed", values.seed, 1, integer(0, 2 ** 31), "an integer"),
    out: values.out ?? (smoke ? null : join(ROOT, "bench/results")),
    name,
    nice: numberFlag(
      "nice",
      values.nice,
      Deno.uid?.() === 0 ? -10 : 0,
      integer(-20, 19),
      "-20..19",
    ),
  };
}

/** Worst-case work of one trace per worker, ms: every request cold. */
function worstWorkMs(plan: Plan, load: number): number {
  const requests = (plan.workers * load / plan.warmMs) * plan.durationS * 1000;
  return requests * plan.coldMs / plan.workers;
}

/** Rough wall time of the plan, in seconds (two thirds of requests cold). */
export function estimateSeconds(plan: Plan): number {
  let total = 10;
  for (const load of plan.loads) {
    const likely = (worstWorkMs(plan, load) * 2 / 3 +
      worstWorkMs(plan, load) * plan.warmMs / plan.coldMs / 3) / 1000;
    total += RUNS.length * (4 + plan.warmS + Math.max(plan.durationS, likely));
  }
  return Math.round(total);
}

/** Zipf popularity: the share of each of `models` models, exponent `s`. */
export function zipfShares(models: number, s: number): number[] {
  const weights = Array.from({ length: models }, (_, i) => 1 / (i + 1) ** s);
  const total = weights.reduce((a, b) => a + b, 0);
  return weights.map((w) => w / total);
}

/**
 * The model of each request: Zipf popularity with exponent `s` over
 * `models` models (model 0 the most popular), from its own seeded stream.
 */
export function drawModels(
  n: number,
  models: number,
  s: number,
  seed: number,
): Int32Array {
  const cumulative: number[] = [];
  let sum = 0;
  for (const share of zipfShares(models, s)) cumulative.push(sum += share);
  const random = makeRandom(seed ^ 0x5eedaff1);
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const u = random();
    let m = 0;
    while (m < models - 1 && u >= cumulative[m]) m++;
    out[i] = m;
  }
  return out;
}

/** Makes the trace of one load level: constant warm-cost jobs, Poisson arrivals. */
export function makeAffinityTrace(plan: Plan, load: number): Trace {
  return makeTrace({
    workers: plan.workers,
    load,
    meanMs: plan.warmMs,
    dist: "const",
    durationMs: plan.durationS * 1000,
    seed: plan.seed,
  });
}

/** The hubs, in the order they run. */
export type RunName = "none" | "affinity" | "wait";

/** The runs, in order. */
export const RUNS: readonly RunName[] = ["none", "affinity", "wait"];

/** The hub's arguments for a run. */
export function runArgs(run: RunName, plan: Plan): string[] {
  const affinity = ["--affinity-by", "header:x-bench-model"];
  if (run === "none") return [];
  if (run === "affinity") return affinity;
  return [...affinity, "--affinity-wait", `${plan.waitMs}ms`];
}

/** One hub's figures on one trace. */
export interface RunResult {
  /** Requests in the trace. */
  requests: number;
  /** Latencies of the answered (200) requests, ms. */
  latency: Percentiles;
  /** Requests not answered 200. */
  errors: number;
  /** Errors by kind. */
  errorKinds: Record<string, number>;
  /** Answered requests whose model was loaded. */
  warm: number;
  /** Answered requests whose model had to be loaded. */
  cold: number;
  /** cold / answered. */
  coldShare: number;
  /** Answered requests per second, first send to last answer. */
  throughput: number;
  /** The work the jobs cost (warm and cold) over the workers' time in the trace's span. */
  busy: number;
  /** Affinity hits counted by the hub during the replay (its `/metrics`). */
  affinityHits: number | null;
  /** Affinity misses counted by the hub during the replay. */
  affinityMisses: number | null;
  /** Requests that waited for their key's first worker (the wait hub). */
  affinityWaits: number | null;
  /** Of those, the ones whose wait ran out. */
  affinityWaitTimeouts: number | null;
  /** Queued requests a freed slot took out of order, for its own keys. */
  affinityPicks: number | null;
  /** Per worker: requests served, and distinct models among them. */
  perWorker: Record<string, { requests: number; models: number }>;
}

/** Everything the report is made of (also the `.json`). */
export interface Report {
  machine: MachineInfo & { loadAverageAtEnd: number };
  plan: Omit<Plan, "out">;
  nice: number;
  elapsedS: number;
  /** Share of the requests that ask for each model, most popular first. */
  modelShares: number[];
  /** Per load level (as given), per hub. */
  levels: {
    load: number;
    requests: number;
    runs: Partial<Record<RunName, RunResult>>;
  }[];
  args: string[];
}

/** Works out a run's figures from its samples. */
export function measure(
  samples: Sample[],
  models: Int32Array,
  plan: Plan,
  span: number,
  counters: AffinityCounters | null,
): RunResult {
  const n = samples.length;
  const latencies: number[] = [];
  const errorKinds: Record<string, number> = {};
  let warm = 0, cold = 0, first = Infinity, last = -Infinity;
  const perWorker: Record<string, { requests: number; models: number }> = {};
  const seen = new Map<string, Set<number>>();
  for (let i = 0; i < n; i++) {
    const s = samples[i];
    if (s?.status !== 200) {
      const kind = s === undefined ? "unsent" : s.error ?? `HTTP ${s.status}`;
      errorKinds[kind] = (errorKinds[kind] ?? 0) + 1;
      continue;
    }
    latencies.push(s.done - s.sent);
    first = Math.min(first, s.sent);
    last = Math.max(last, s.done);
    if (s.job?.cache === "cold") cold++;
    else if (s.job?.cache === "warm") warm++;
    const worker = s.job?.worker ?? "?";
    perWorker[worker] ??= { requests: 0, models: 0 };
    perWorker[worker].requests++;
    let set = seen.get(worker);
    if (set === undefined) seen.set(worker, set = new Set());
    set.add(models[i]);
  }
  for (const [worker, set] of seen) perWorker[worker].models = set.size;
  const answered = latencies.length;
  return {
    requests: n,
    latency: summarize(latencies),
    errors: n - answered,
    errorKinds,
    warm,
    cold,
    coldShare: answered ? cold / answered : NaN,
    throughput: answered && last > first
      ? answered / ((last - first) / 1000)
      : 0,
    busy: span > 0
      ? (warm * plan.warmMs + cold * plan.coldMs) / (plan.workers * span)
      : NaN,
    affinityHits: counters?.hits ?? null,
    affinityMisses: counters?.misses ?? null,
    affinityWaits: counters?.waits ?? null,
    affinityWaitTimeouts: counters?.timeouts ?? null,
    affinityPicks: counters?.picks ?? null,
    perWorker: Object.fromEntries(
      Object.entries(perWorker).sort(([a], [b]) => a.localeCompare(b)),
    ),
  };
}

/** The hub's affinity counters (see `HubStats`). */
export interface AffinityCounters {
  /** `pothead_affinity_hits_total`. */
  hits: number;
  /** `pothead_affinity_misses_total`. */
  misses: number;
  /** `pothead_affinity_waits_total`. */
  waits: number;
  /** `pothead_affinity_wait_timeouts_total`. */
  timeouts: number;
  /** `pothead_affinity_picks_total`. */
  picks: number;
}

/** Reads the hub's affinity counters from its admin `/metrics`; null if it cannot. */
export async function readAffinityCounters(
  adminUrl: string,
): Promise<AffinityCounters | null> {
  try {
    const response = await fetch(new URL("/metrics", adminUrl), {
      signal: AbortSignal.timeout(5000),
    });
    const text = await response.text();
    if (!response.ok) return null;
    const value = (name: string) => {
      const m = text.match(new RegExp(`^${name} (\\d+)`, "m"));
      return m === null ? NaN : Number(m[1]);
    };
    const counters = {
      hits: value("pothead_affinity_hits_total"),
      misses: value("pothead_affinity_misses_total"),
      waits: value("pothead_affinity_waits_total"),
      timeouts: value("pothead_affinity_wait_timeouts_total"),
      picks: value("pothead_affinity_picks_total"),
    };
    return Object.values(counters).every(Number.isFinite) ? counters : null;
  } catch {
    return null;
  }
}

const ms = formatMs;
const pct = (x: number) =>
  Number.isFinite(x) ? `${(x * 100).toFixed(1)}%` : "–";

/** Sentences on what the runs show, worked out from the figures. */
export function findings(report: Report): string[] {
  const out: string[] = [];
  const cold = report.plan.coldMs;
  for (const level of report.levels) {
    const none = level.runs.none;
    if (none === undefined) continue;
    const load = `${level.load * 100}%`;
    const parts: string[] = [];
    for (const run of ["affinity", "wait"] as const) {
      const r = level.runs[run];
      if (r === undefined) continue;
      const drop = none.coldShare - r.coldShare;
      const effect = Math.abs(drop) < 0.02
        ? `left the cold share about as it was (${pct(none.coldShare)} → ${
          pct(r.coldShare)
        })`
        : `${drop > 0 ? "cut" : "raised"} the cold share from ${
          pct(none.coldShare)
        } to ${pct(r.coldShare)}`;
      const seen = (r.affinityHits ?? 0) + (r.affinityMisses ?? 0);
      const counted = seen
        ? `${r.affinityHits} hits and ${r.affinityMisses} misses${
          run === "wait"
            ? `, ${r.affinityWaits} waits of which ${r.affinityWaitTimeouts} ran out, ${r.affinityPicks} taken out of the queue out of order`
            : ""
        }`
        : "no hits or misses";
      parts.push(
        `**${run}** ${effect}, p50 ${ms(none.latency.p50)} → ${
          ms(r.latency.p50)
        } ms, p99 ${ms(none.latency.p99)} → ${ms(r.latency.p99)}, mean ${
          ms(none.latency.mean)
        } → ${ms(r.latency.mean)} (${counted})`,
      );
    }
    const backlog = RUNS.every((run) => {
      const r = level.runs[run];
      return r !== undefined && r.latency.p50 > 3 * cold;
    });
    out.push(
      `- At ${load} of the warm capacity, against **none**: ${
        parts.join("; ")
      }.${
        backlog
          ? " Every hub ran a backlog (p50 over three cold loads): each freed slot took the head of the queue whatever its model, so affinity had nothing to choose."
          : ""
      }`,
    );
  }
  return out;
}

/** The Markdown report. */
export function renderMarkdown(report: Report): string {
  const { plan, machine } = report;
  const lines = [
    "# Worker affinity: requests that run faster where their model is loaded",
    "",
    `${machine.date}; ${machine.cpuModel}, ${machine.cpus} vCPUs; Deno ${machine.deno}; ` +
    `load average ${machine.loadAverageAtStart} at the start, ${machine.loadAverageAtEnd} at the end; ` +
    `${Math.round(report.elapsedS)} s; mode ${plan.mode}${
      report.nice ? `; nice ${report.nice}` : ""
    }.`,
    "",
    `${plan.workers} \`worker.ts --concurrency 1\` workers running \`bench/workers/affinity_job.ts\` (sleep-based), all on loopback with the client. ` +
    `Each worker keeps the ${plan.slots} models it used last loaded (LRU); a request for a loaded model costs ${plan.warmMs} ms, ` +
    `one for a model not loaded ${plan.coldMs} ms (the load), and then it is loaded. ` +
    `Requests name one of ${plan.models} models in \`X-Bench-Model\`, drawn with Zipf popularity (s = ${plan.zipf}: ${
      report.modelShares.map((s) => `${(s * 100).toFixed(0)}%`).join(", ")
    }). ` +
    `Open-loop Poisson arrivals for ${plan.durationS} s (seed ${plan.seed}); the load is the arrival rate × ${plan.warmMs} ms / ${plan.workers} workers, ` +
    "the share of the workers' capacity if every request were warm. " +
    "Each trace runs through three hubs in turn, each with fresh workers (nothing loaded) and a warm-up of 1 ms jobs without a model: " +
    "**none** (no affinity: least-loaded dispatch), **affinity** (`--affinity-by header:x-bench-model`) and " +
    `**wait** (the same with \`--affinity-wait ${plan.waitMs}ms\`: a request whose model's first worker is busy while others idle waits up to that long for it). ` +
    "Latency runs from the client sending a request to the last byte of its answer. " +
    "*Busy* is the work the jobs cost (warm and cold) over the workers' time in the trace's span: over 100% means a backlog that drains after the last arrival. " +
    "Hits, misses, waits, waits that ran out and picks (queued requests a freed slot took out of order, its worker being their model's first) are the hub's own counters (`pothead_affinity_hits_total`, `_misses_total`, `_waits_total`, `_wait_timeouts_total`, `_picks_total` on its admin listener) over the replay.",
    "",
  ];
  if (plan.mode === "smoke") {
    lines.push("**Smoke run: timings are not judged.**", "");
  }
  lines.push(
    "Latencies in ms.",
    "",
    "| load | hub | requests | errors | cold share | p50 | p90 | p99 | max | mean | req/s | busy | hits | misses | waits (ran out) | picks |",
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  );
  for (const level of report.levels) {
    for (const run of RUNS) {
      const r = level.runs[run];
      if (r === undefined) {
        lines.push(
          `| ${
            level.load * 100
          }% | ${run} | ${level.requests} | not run | | | | | | | | | | | | |`,
        );
        continue;
      }
      const l = r.latency;
      const errors = r.errors
        ? `${r.errors} (${
          Object.entries(r.errorKinds).map(([k, v]) => `${k}: ${v}`).join(", ")
        })`
        : "0";
      const counter = (x: number | null) =>
        run === "none" ? "–" : x === null ? "?" : String(x);
      lines.push(
        `| ${level.load * 100}% | ${run} | ${r.requests} | ${errors} | ${
          pct(r.coldShare)
        } | ${ms(l.p50)} | ${ms(l.p90)} | ${ms(l.p99)} | ${ms(l.max)} | ${
          ms(l.mean)
        } | ${r.throughput.toFixed(0)} | ${pct(r.busy)} | ${
          counter(r.affinityHits)
        } | ${counter(r.affinityMisses)} | ${
          run === "wait"
            ? `${counter(r.affinityWaits)} (${
              counter(r.affinityWaitTimeouts)
            }) | ${counter(r.affinityPicks)}`
            : "– | –"
        } |`,
      );
    }
  }
  lines.push(
    "",
    "Requests per worker (distinct models among them):",
    "",
    "| load | hub | per worker |",
    "|---:|---|---|",
  );
  for (const level of report.levels) {
    for (const run of RUNS) {
      const r = level.runs[run];
      if (r === undefined) continue;
      lines.push(
        `| ${level.load * 100}% | ${run} | ${
          Object.entries(r.perWorker).map(([w, x]) =>
            `${w}: ${x.requests} (${x.models})`
          ).join(", ")
        } |`,
      );
    }
  }
  lines.push(
    "",
    "## What it shows",
    "",
    ...findings(report),
    "",
    "Without a wait, affinity only chooses among idle slots: a request that finds none waits in the queue, and the slot that frees next takes the head of the queue whatever its model, " +
      "so in a backlog (busy over 100%) it dispatches as none does. " +
      "With a wait, a slot that frees takes first a request that waited for its worker, then the oldest of the first 32 queued requests whose model ranks its worker first, passing over the head of the queue for at most the wait. " +
      `The load is counted at the warm cost, and a cold request costs ${
        round(plan.coldMs / plan.warmMs, 1)
      }× a warm one, so the busy column, not the load, says how near the workers came to a backlog. ` +
      "Each key ranks the workers by rendezvous hashing, and a request goes to the idle worker its key ranks highest, so without a wait a key whose first worker is busy spills over to the same next ones; " +
      "the per-worker table shows how many models each worker served.",
    "",
    "## What limited these figures",
    "",
    `- ${machine.cpus} shared vCPUs run the client, the hub and every worker, so absolute figures move from run to run; compare the hubs at one load.`,
    "- Each hub starts with fresh workers, so both pay the same first loads; the traces are short, so those first loads are part of the cold share.",
    `- The workers have the default ids (host and pid), new for every hub and load, so which worker each model ranks first is chance and changes from run to run; with ${plan.models} models over ${plan.workers} workers that split is seldom even (see the per-worker table).`,
    "",
  );
  return lines.join("\n");
}

function log(line: string): void {
  console.log(line);
}

/**
 * Runs the benchmark. Returns the exit code: 0 when every run completed
 * with every request answered, 1 otherwise, 2 on bad arguments.
 *
 * @param args command-line arguments.
 */
export async function main(args: string[] = Deno.args): Promise<number> {
  let plan: Plan;
  try {
    const parsed = parsePlan(args);
    if (parsed === "help") {
      console.log(HELP);
      return 0;
    }
    plan = parsed;
  } catch (error) {
    console.error(`affinity: ${(error as Error).message}\n\n${HELP}`);
    return 2;
  }
  const began = performance.now();
  const estimate = estimateSeconds(plan);
  log(
    `affinity benchmark (${plan.mode}): K=${plan.workers}, ${plan.models} models (Zipf ${plan.zipf}), ${plan.slots} loaded per worker, ${plan.warmMs}/${plan.coldMs} ms warm/cold, loads ${
      plan.loads.join(", ")
    }; estimated ${estimate} s`,
  );
  const niced = plan.nice !== 0 && await setNiceness(plan.nice);
  if (plan.nice !== 0 && !niced) log(`could not set nice ${plan.nice}`);
  let worst = 0;
  for (const load of plan.loads) worst += worstWorkMs(plan, load) / 1000;
  const maxSeconds = estimate * 3 + worst + 300;
  // Everything is bounded: each child by `timeout -s KILL`, each replay by
  // its drain allowance, and the whole run by this watchdog.
  const watchdog = setTimeout(() => {
    console.error(`affinity: took longer than ${maxSeconds} s; killed`);
    killAll();
    Deno.exit(1);
  }, maxSeconds * 1000);
  Deno.unrefTimer(watchdog);
  const info = await machineInfo();
  const dir = await Deno.makeTempDir({ prefix: "pothead-affinity-" });
  const levels: Report["levels"] = [];
  let failed = false;
  try {
    for (const load of plan.loads) {
      const trace = makeAffinityTrace(plan, load);
      const n = trace.arrivals.length;
      const models = drawModels(n, plan.models, plan.zipf, plan.seed);
      const level: Report["levels"][number] = { load, requests: n, runs: {} };
      levels.push(level);
      const span = n ? trace.arrivals[n - 1] : 0;
      // Time for the worst case (every request cold) to drain, and more.
      const drain = Math.max(15_000, worstWorkMs(plan, load) * 1.5 + 10_000);
      for (const run of RUNS) {
        const adminPort = freePort();
        const running = await startSystems(["pothead"], {
          workers: plan.workers,
          mode: "sleep",
          dir,
          maxSeconds,
          hubArgs: [...runArgs(run, plan), "--admin-port", String(adminPort)],
          handler: "bench/workers/affinity_job.ts",
          workerEnv: {
            BENCH_MODEL_SLOTS: String(plan.slots),
            BENCH_COLD_MS: String(plan.coldMs),
          },
        });
        try {
          const [hub] = running.systems;
          const adminUrl = `http://127.0.0.1:${adminPort}/`;
          await saturate(hub.url, {
            concurrency: 2 * plan.workers,
            ms: 1,
            durationMs: plan.warmS * 1000,
            run: "warm",
          });
          const before = await readAffinityCounters(adminUrl);
          const samples = await replay(
            hub.url,
            trace,
            `${run}-${load}`,
            drain,
            (i) => ({ "x-bench-model": `model-${models[i]}` }),
          );
          const after = await readAffinityCounters(adminUrl);
          const counters = before && after
            ? {
              hits: after.hits - before.hits,
              misses: after.misses - before.misses,
              waits: after.waits - before.waits,
              timeouts: after.timeouts - before.timeouts,
              picks: after.picks - before.picks,
            }
            : null;
          const r = measure(samples, models, plan, span, counters);
          level.runs[run] = r;
          log(
            `load ${load} ${
              run.padEnd(8)
            } n=${r.requests} errors=${r.errors} cold=${pct(r.coldShare)} p50=${
              ms(r.latency.p50)
            } p99=${ms(r.latency.p99)} mean=${ms(r.latency.mean)} busy=${
              pct(r.busy)
            }${
              run === "none"
                ? ""
                : ` hits=${r.affinityHits ?? "?"} misses=${
                  r.affinityMisses ?? "?"
                } waits=${r.affinityWaits ?? "?"} ran out=${
                  r.affinityWaitTimeouts ?? "?"
                } picks=${r.affinityPicks ?? "?"}`
            }`,
          );
        } finally {
          await running.stop();
        }
      }
    }
  } catch (error) {
    failed = true;
    console.error(`affinity: ${(error as Error).stack ?? error}`);
  } finally {
    killAll();
    clearTimeout(watchdog);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  const { out, ...planShown } = plan;
  const report: Report = {
    machine: { ...info, loadAverageAtEnd: loadAverage() },
    plan: planShown,
    nice: niced ? plan.nice : 0,
    elapsedS: (performance.now() - began) / 1000,
    modelShares: zipfShares(plan.models, plan.zipf),
    levels,
    args,
  };
  for (const level of levels) {
    for (const run of RUNS) {
      const r = level.runs[run];
      // Every request answered.
      if (r === undefined || r.errors > 0 || r.latency.n !== level.requests) {
        console.error(
          `affinity: the ${run} run at load ${level.load} failed: ${
            r?.latency.n ?? 0
          } answered of ${level.requests}`,
        );
        failed = true;
      }
    }
  }
  if (levels.length !== plan.loads.length) failed = true;
  const dirOut = out ?? await Deno.makeTempDir({ prefix: "pothead-smoke-" });
  if (!failed || plan.mode === "smoke") {
    await writeReport(dirOut, plan.name, renderMarkdown(report), report);
  }
  log(`done in ${Math.round(report.elapsedS)} s`);
  if (plan.mode === "smoke") log("smoke: timings not judged");
  return failed ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main());
