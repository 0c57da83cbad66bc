/**
 * The fairness benchmark: what fair queuing (`--fair-by`) buys light
 * tenants that share one-at-a-time workers with a heavy tenant's burst.
 *
 * K `worker.ts --concurrency 1` workers running the queueing benchmark's
 * job (`bench/workers/pothead_job.ts`, sleep-based), exponential service
 * times. One seeded trace: light tenants send open-loop Poisson traffic
 * (each request's tenant drawn from its own seeded stream), and one heavy
 * tenant sends a burst of several hundred requests at one instant. Each
 * request carries its tenant in `X-Bench-Tenant`. The heavy tenant's jobs
 * may run longer than the light tenants' (`--heavy-ms`). The trace is
 * replayed through three hubs in turn: **fifo** (no `--fair-by`: one FIFO
 * queue), **fair** (`--fair-by header:x-bench-tenant`, a turn per request)
 * and **time** (the same with `--fair-share time`). Each is set against a
 * discrete-event simulation of the ideal central queue on the same trace:
 * FIFO (`simulateFifo`) and per-tenant fair queuing by requests or by time
 * (`simulateFair`), with and without a dispatch gap (`--model-gap-ms`).
 *
 * ```sh
 * deno run -A bench/fairness.ts [--smoke] [--k=4] [--mean-ms=20]
 *   [--heavy-ms=20] [--light-load=0.5] [--tenants=3] [--burst=400]
 *   [--duration=20] [--seed=1] [--name=fairness] [--out=DIR]
 * ```
 *
 * Writes `NAME.md` and `NAME.json` (`fairness.*` by default) under
 * `bench/results/` (a temporary directory for `--smoke`, which checks only
 * that every request was answered, never a timing).
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { exponential, makeRandom, makeTrace, type Trace } from "./_trace.ts";
import {
  type Percentiles,
  simulateFair,
  simulateFifo,
  summarize,
} from "./_sim.ts";
import { killAll, ROOT, setNiceness, startSystems } from "./_systems.ts";
import {
  formatMs,
  loadAverage,
  type MachineInfo,
  machineInfo,
  numberFlag,
  writeReport,
} from "./_util.ts";
import { replay, type Sample, saturate } from "./queueing.ts";

/** Everything one invocation runs. */
export interface Plan {
  /** `full` or `smoke`. */
  mode: "full" | "smoke";
  /** Workers, each serving one request at a time. */
  workers: number;
  /** Mean service time (exponential) of the light tenants' jobs, ms. */
  meanMs: number;
  /** Mean service time (exponential) of the heavy tenant's jobs, ms. */
  heavyMs: number;
  /** Utilisation of the light tenants' traffic alone. */
  lightLoad: number;
  /** How many light tenants share that traffic. */
  tenants: number;
  /** Requests of the heavy tenant's burst, all at one instant. */
  burst: number;
  /** When the burst comes, ms from the start. */
  burstAtMs: number;
  /** Trace length, seconds. */
  durationS: number;
  /** Warm-up (saturated burst of 1 ms jobs), seconds. */
  warmS: number;
  /** Seed of the trace and of the tenant draws. */
  seed: number;
  /** Dispatch gap of the model simulations, ms (0: none). */
  modelGapMs: number;
  /** Output directory, or null for a temporary one. */
  out: string | null;
  /** Report file name, without extension. */
  name: string;
  /** Nice value for the benchmark and every process it starts (0: as is). */
  nice: number;
}

const HELP = `Usage: deno run -A bench/fairness.ts [options]

  --smoke             K=2, a burst of 60, 3 s; proves it runs, judges nothing
  --k=N               workers (default 4), one slot each
  --mean-ms=20        mean (exponential) service time
  --heavy-ms=MS       the heavy tenant's mean service time (default: mean-ms)
  --light-load=0.5    utilisation of the light tenants' Poisson traffic
  --tenants=3         light tenants sharing it
  --burst=400         requests of the heavy tenant, all at once
  --burst-at=2        when the burst comes, seconds from the start
  --duration=S        trace length in seconds (default 20)
  --seed=N            trace seed (default 1)
  --model-gap-ms=MS   dispatch gap of the model simulations (default 0.5)
  --out=DIR           where to write NAME.{md,json}
  --name=fairness     the report's file name
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
      "mean-ms": { type: "string" },
      "heavy-ms": { type: "string" },
      name: { type: "string" },
      "light-load": { type: "string" },
      tenants: { type: "string" },
      burst: { type: "string" },
      "burst-at": { type: "string" },
      duration: { type: "string" },
      seed: { type: "string" },
      "model-gap-ms": { type: "string" },
      out: { type: "string" },
      nice: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) return "help";
  const smoke = values.smoke ?? false;
  const integer = (lo: number, hi: number) => (n: number) =>
    Number.isInteger(n) && n >= lo && n <= hi;
  const durationS = numberFlag(
    "duration",
    values.duration,
    smoke ? 3 : 20,
    (n) => n > 0 && n <= 600,
    "(0, 600]",
  );
  const burstAtS = numberFlag(
    "burst-at",
    values["burst-at"],
    smoke ? 0.5 : 2,
    (n) => n >= 0 && n < durationS,
    "[0, duration)",
  );
  const meanMs = numberFlag(
    "mean-ms",
    values["mean-ms"],
    20,
    (n) => n > 0 && n <= 10_000,
    "(0, 10000]",
  );
  const name = values.name ?? "fairness";
  if (!/^[A-Za-z0-9_-]+$/.test(name)) {
    throw new RangeError(
      `Invalid --name: expected letters, digits, "-" or "_", got "${name}"`,
    );
  }
  return {
    mode: smoke ? "smoke" : "full",
    workers: numberFlag("k", values.k, smoke ? 2 : 4, integer(1, 64), "1..64"),
    meanMs,
    heavyMs: numberFlag(
      "heavy-ms",
      values["heavy-ms"],
      meanMs,
      (n) => n > 0 && n <= 100_000,
      "(0, 100000]",
    ),
    lightLoad: numberFlag(
      "light-load",
      values["light-load"],
      0.5,
      (n) => n > 0 && n < 1,
      "(0, 1)",
    ),
    tenants: numberFlag(
      "tenants",
      values.tenants,
      3,
      integer(1, 100),
      "1..100",
    ),
    burst: numberFlag(
      "burst",
      values.burst,
      smoke ? 60 : 400,
      integer(1, 5000),
      "1..5000",
    ),
    burstAtMs: burstAtS * 1000,
    durationS,
    warmS: smoke ? 0.5 : 3,
    seed: numberFlag("seed", values.seed, 1, integer(0, 2 ** 31), "an integer"),
    modelGapMs: numberFlag(
      "model-gap-ms",
      values["model-gap-ms"],
      0.5,
      (n) => n >= 0 && n <= 100,
      "[0, 100]",
    ),
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

/** Rough wall time of the plan, in seconds. */
export function estimateSeconds(plan: Plan): number {
  const backlog = (plan.burst * plan.heavyMs) /
    (plan.workers * (1 - plan.lightLoad) * 1000);
  return Math.round(10 + 2 * (plan.warmS + plan.durationS + backlog + 3));
}

/** The seeded trace: light Poisson traffic plus the heavy tenant's burst. */
export interface FairTrace {
  /** Arrivals and service times, arrivals ascending (for `replay`). */
  trace: Trace;
  /** Tenant of each request: 0 is the heavy one, 1.. the light ones. */
  tenant: Int32Array;
}

/** Makes the trace of `plan`. */
export function makeFairTrace(plan: Plan): FairTrace {
  const light = makeTrace({
    workers: plan.workers,
    load: plan.lightLoad,
    meanMs: plan.meanMs,
    dist: "exp",
    durationMs: plan.durationS * 1000,
    seed: plan.seed,
  });
  const pick = makeRandom(plan.seed ^ 0x5eed0f01);
  const heavy = makeRandom(plan.seed ^ 0x5eed0f02);
  const arrivals: number[] = [];
  const service: number[] = [];
  const tenant: number[] = [];
  let burstDone = false;
  const addBurst = () => {
    for (let b = 0; b < plan.burst; b++) {
      arrivals.push(plan.burstAtMs);
      service.push(exponential(heavy, plan.heavyMs));
      tenant.push(0);
    }
    burstDone = true;
  };
  for (let i = 0; i < light.arrivals.length; i++) {
    if (!burstDone && light.arrivals[i] > plan.burstAtMs) addBurst();
    arrivals.push(light.arrivals[i]);
    service.push(light.service[i]);
    tenant.push(1 + Math.floor(pick() * plan.tenants));
  }
  if (!burstDone) addBurst();
  return {
    trace: {
      options: light.options,
      arrivals: Float64Array.from(arrivals),
      service: Float64Array.from(service),
      rate: light.rate,
    },
    tenant: Int32Array.from(tenant),
  };
}

/** The runs, one hub each. */
export type RunName = "fifo" | "fair" | "time";

/** The runs in the order they go, with the hub's arguments for each. */
export const RUNS: readonly [RunName, string[]][] = [
  ["fifo", []],
  ["fair", ["--fair-by", "header:x-bench-tenant"]],
  ["time", [
    "--fair-by",
    "header:x-bench-tenant",
    "--fair-share",
    "time",
  ]],
];
/** The two groups of tenants. */
export type Group = "light" | "heavy";

/** One group's figures in one run. */
export interface GroupResult {
  /** Latencies of the answered (200) requests, ms. */
  latency: Percentiles;
  /** Requests not answered 200. */
  errors: number;
  /** Errors by kind. */
  errorKinds: Record<string, number>;
}

/** Splits samples (or simulated latencies) by group. */
export function byGroup(
  latencyOf: (i: number) => number | null,
  tenant: Int32Array,
): Record<Group, GroupResult> {
  const out = {} as Record<Group, GroupResult>;
  for (const group of ["light", "heavy"] as const) {
    const values: number[] = [];
    let errors = 0;
    for (let i = 0; i < tenant.length; i++) {
      if ((tenant[i] === 0) !== (group === "heavy")) continue;
      const l = latencyOf(i);
      if (l === null) errors++;
      else values.push(l);
    }
    out[group] = { latency: summarize(values), errors, errorKinds: {} };
  }
  return out;
}

function measured(
  samples: Sample[],
  tenant: Int32Array,
): Record<Group, GroupResult> {
  const out = byGroup(
    (i) =>
      samples[i]?.status === 200 ? samples[i].done - samples[i].sent : null,
    tenant,
  );
  for (let i = 0; i < tenant.length; i++) {
    const s = samples[i];
    if (s?.status === 200) continue;
    const kind = s === undefined ? "unsent" : s.error ?? `HTTP ${s.status}`;
    const kinds = out[tenant[i] === 0 ? "heavy" : "light"].errorKinds;
    kinds[kind] = (kinds[kind] ?? 0) + 1;
  }
  return out;
}

/** Everything the report is made of (also the `.json`). */
export interface Report {
  machine: MachineInfo & { loadAverageAtEnd: number };
  plan: Omit<Plan, "out">;
  nice: number;
  elapsedS: number;
  requests: number;
  /** The trace's own utilisation: its work over its span and K servers. */
  utilisation: number;
  runs: Partial<Record<RunName, Record<Group, GroupResult>>>;
  ideal: Record<RunName, Record<Group, GroupResult>>;
  model: Record<RunName, Record<Group, GroupResult>>;
  args: string[];
}

/** The ideal of each run's discipline on the trace, with a dispatch gap of `gap` ms. */
function simulated(
  trace: Trace,
  tenant: Int32Array,
  workers: number,
  gap: number,
): Record<RunName, Record<Group, GroupResult>> {
  const { arrivals, service } = trace;
  const options = { dispatchGapMs: gap };
  const fifo = simulateFifo(arrivals, service, workers, options).latency;
  const fair = simulateFair(arrivals, service, tenant, workers, options)
    .latency;
  const time = simulateFair(arrivals, service, tenant, workers, {
    ...options,
    share: "time",
  }).latency;
  return {
    fifo: byGroup((i) => fifo[i], tenant),
    fair: byGroup((i) => fair[i], tenant),
    time: byGroup((i) => time[i], tenant),
  };
}

const ms = formatMs;

/** The Markdown report. */
export function renderMarkdown(report: Report): string {
  const { plan, machine } = report;
  const lines = [
    "# Fair queuing: light tenants sharing workers with a heavy tenant's burst",
    "",
    `${machine.date}; ${machine.cpuModel}, ${machine.cpus} vCPUs; Deno ${machine.deno}; ` +
    `load average ${machine.loadAverageAtStart} at the start, ${machine.loadAverageAtEnd} at the end; ` +
    `${Math.round(report.elapsedS)} s; mode ${plan.mode}${
      report.nice ? `; nice ${report.nice}` : ""
    }.`,
    "",
    `${plan.workers} \`worker.ts --concurrency 1\` workers running the queueing benchmark's job (sleep-based), all on loopback with the client. ` +
    `${plan.tenants} light tenants send open-loop Poisson traffic at ${
      plan.lightLoad * 100
    }% of the workers' capacity (seed ${plan.seed}; each request's tenant drawn at random), ` +
    `exponential service times with mean ${plan.meanMs} ms, for ${plan.durationS} s; ` +
    `the heavy tenant sends ${plan.burst} requests (${
      plan.heavyMs === plan.meanMs
        ? "same distribution"
        : `exponential, mean ${plan.heavyMs} ms`
    }) at once, ${
      plan.burstAtMs / 1000
    } s in. ${report.requests} requests in all; the trace's own utilisation ${
      (report.utilisation * 100).toFixed(1)
    }%. ` +
    "The same trace runs through three hubs in turn: **fifo** (no `--fair-by`), **fair** (`--fair-by header:x-bench-tenant`, each request carrying its tenant: a turn per request) and **time** (the same with `--fair-share time`: equal shares of worker time). " +
    "Latency runs from the client sending a request to the last byte of its answer. " +
    "**ideal** is a discrete-event simulation of one central queue on the same trace with no dispatch or network cost: FIFO (`simulateFifo`), per-tenant round robin and per-tenant shares of server time with every job's length known when it starts (`simulateFair`, bench/_sim.ts); " +
    `**model** is the same with each server idle ${plan.modelGapMs} ms after each job before it takes a queued request.`,
    "",
  ];
  if (plan.mode === "smoke") {
    lines.push("**Smoke run: timings are not judged.**", "");
  }
  lines.push(
    "Latencies in ms.",
    "",
    "| run | tenants | n | p50 | p90 | p99 | max | errors | ideal p50 | ideal p99 | model p50 | model p99 |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  );
  for (const [run] of RUNS) {
    const r = report.runs[run];
    for (const group of ["light", "heavy"] as const) {
      const x = r?.[group];
      const ideal = report.ideal[run][group].latency;
      const model = report.model[run][group].latency;
      const errors = x === undefined
        ? "not run"
        : x.errors
        ? `${x.errors} (${
          Object.entries(x.errorKinds).map(([k, v]) => `${k}: ${v}`).join(", ")
        })`
        : "0";
      const l = x?.latency;
      lines.push(
        `| ${run} | ${group} | ${l?.n ?? 0} | ${ms(l?.p50 ?? NaN)} | ${
          ms(l?.p90 ?? NaN)
        } | ${ms(l?.p99 ?? NaN)} | ${ms(l?.max ?? NaN)} | ${errors} | ${
          ms(ideal.p50)
        } | ${ms(ideal.p99)} | ${ms(model.p50)} | ${ms(model.p99)} |`,
      );
    }
  }
  lines.push(
    "",
    "## What limited these figures",
    "",
    `- ${machine.cpus} shared vCPUs run the client, the hub and every worker, so absolute figures move from run to run; compare each run with its simulation.`,
    "- The burst's requests leave the client at one instant: the client and the hub take some milliseconds to open and read that many connections, which no simulation counts.",
    "- Most light requests arrive outside the burst's backlog and see an idle worker in either run: the p50 says little, the p99 and max are where the burst shows.",
    "",
  );
  return lines.join("\n");
}

function log(line: string): void {
  console.log(line);
}

/**
 * Runs the benchmark. Returns the exit code: 0 when both runs completed, 1
 * when one failed (or, in a smoke run, left requests unanswered), 2 on bad
 * arguments.
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
    console.error(`fairness: ${(error as Error).message}\n\n${HELP}`);
    return 2;
  }
  const began = performance.now();
  const estimate = estimateSeconds(plan);
  log(
    `fairness benchmark (${plan.mode}): K=${plan.workers}, exp ${plan.meanMs} ms, ${plan.tenants} light tenants at ${
      plan.lightLoad * 100
    }%, a burst of ${plan.burst}; estimated ${estimate} s`,
  );
  const niced = plan.nice !== 0 && await setNiceness(plan.nice);
  if (plan.nice !== 0 && !niced) log(`could not set nice ${plan.nice}`);
  const maxSeconds = estimate * 3 + 300;
  // Everything is bounded: each child by `timeout -s KILL`, each replay by
  // its drain allowance, and the whole run by this watchdog.
  const watchdog = setTimeout(() => {
    console.error(`fairness: took longer than ${maxSeconds} s; killed`);
    killAll();
    Deno.exit(1);
  }, maxSeconds * 1000);
  Deno.unrefTimer(watchdog);
  const info = await machineInfo();
  const { trace, tenant } = makeFairTrace(plan);
  const n = trace.arrivals.length;
  let work = 0;
  for (const s of trace.service) work += s;
  const ideal = simulated(trace, tenant, plan.workers, 0);
  const model = simulated(trace, tenant, plan.workers, plan.modelGapMs);
  const runs: Report["runs"] = {};
  const dir = await Deno.makeTempDir({ prefix: "pothead-fairness-" });
  let failed = false;
  try {
    for (const [run, hubArgs] of RUNS) {
      const running = await startSystems(["pothead"], {
        workers: plan.workers,
        mode: "sleep",
        dir,
        maxSeconds,
        hubArgs,
      });
      try {
        const [hub] = running.systems;
        await saturate(hub.url, {
          concurrency: 2 * plan.workers,
          ms: 1,
          durationMs: plan.warmS * 1000,
          run: "warm",
        });
        const samples = await replay(
          hub.url,
          trace,
          run,
          Math.max(15_000, estimate * 1000),
          (i) => ({ "x-bench-tenant": `tenant-${tenant[i]}` }),
        );
        const r = measured(samples, tenant);
        runs[run] = r;
        log(
          `${run.padEnd(4)} light n=${r.light.latency.n} p50=${
            ms(r.light.latency.p50)
          } p99=${ms(r.light.latency.p99)} (ideal ${
            ms(ideal[run].light.latency.p99)
          }) | heavy n=${r.heavy.latency.n} p50=${
            ms(r.heavy.latency.p50)
          } p99=${ms(r.heavy.latency.p99)} (ideal ${
            ms(ideal[run].heavy.latency.p99)
          }) | errors ${r.light.errors + r.heavy.errors}`,
        );
      } finally {
        await running.stop();
      }
    }
  } catch (error) {
    failed = true;
    console.error(`fairness: ${(error as Error).stack ?? error}`);
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
    requests: n,
    utilisation: n ? work / (trace.arrivals[n - 1] * plan.workers) : 0,
    runs,
    ideal,
    model,
    args,
  };
  for (const [run] of RUNS) {
    const r = runs[run];
    const answered = r ? r.light.latency.n + r.heavy.latency.n : 0;
    const errors = r ? r.light.errors + r.heavy.errors : n;
    // Every request answered (a smoke run allows 1% errors), both groups.
    const bad = !r || r.light.latency.n === 0 || r.heavy.latency.n === 0 ||
      answered + errors !== n || errors > (plan.mode === "smoke" ? n / 100 : 0);
    if (bad) {
      console.error(
        `fairness: the ${run} run failed: ${answered} answered, ${errors} errors of ${n}`,
      );
      failed = true;
    }
  }
  const dirOut = out ?? await Deno.makeTempDir({ prefix: "pothead-smoke-" });
  if (!failed || plan.mode === "smoke") {
    await writeReport(dirOut, plan.name, renderMarkdown(report), report);
  }
  log(`done in ${Math.round(report.elapsedS)} s`);
  if (plan.mode === "smoke") log("smoke: timings not judged");
  return failed ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main());
