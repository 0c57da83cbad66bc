/**
 * The overload benchmark: what holding ahead (`--hold-ahead`) trades in
 * steady overload, measured and set against a model.
 *
 * K `worker.ts --concurrency 1` workers behind a plain hub and K behind a
 * `--hold-ahead` hub (both started together); a closed loop keeps
 * `--outstanding` requests in flight (each answer is replaced at once), so
 * the queue stays long and the hold's long-queue arm fires on most requests.
 * Job lengths come from one seeded sequence, the same for both hubs. The two
 * run in interleaved rounds (order alternating) after a warm-up; each run
 * counts the answers after its first quarter. Reported per run and as
 * medians: throughput, p50 and p99 latency, CPU per request of the hub and of
 * the workers, requests held.
 *
 * The model (`_closed_sim.ts`) runs the same closed loop with two costs per
 * job, fitted so that its throughputs match the measured ones (plain: the
 * gap from a finish to the next queued start; hold: a held request's start
 * after the job before it). Its p50 and p99 are not fitted: where they match
 * the measured ones, the model's account of what holding costs is right.
 *
 * ```sh
 * deno run -A bench/overload.ts [--smoke] [--k=16] [--outstanding=96]
 *   [--mean-ms=20] [--dist=exp] [--duration=8] [--rounds=4] [--seed=1]
 *   [--out=DIR]
 * ```
 *
 * Writes `overload.md` and `overload.json` under `bench/results/` (a
 * temporary directory for `--smoke`, which judges nothing).
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { type Distribution, makeRandom, serviceSampler } from "./_trace.ts";
import { percentile } from "./_sim.ts";
import { costForThroughput, simulateClosed } from "./_closed_sim.ts";
import { hubCounter } from "./queueing.ts";
import { cpuMs, killAll, startSystems, type System } from "./_systems.ts";
import {
  machineInfo,
  median,
  numberFlag,
  ROOT,
  sleep,
  writeReport,
} from "./_util.ts";

// The hub's counter of held requests asked back.
const TAKE_BACKS = "pothead_take_backs_total";

/** What one invocation runs. */
export interface Plan {
  /** Workers per hub, one slot each. */
  k: number;
  /** Requests kept in flight. */
  outstanding: number;
  /** Mean job, ms. */
  meanMs: number;
  /** Job lengths: constant or exponential. */
  dist: Distribution;
  /** Length of each run, s. */
  durationS: number;
  /** Rounds (each runs both hubs once). */
  rounds: number;
  /** Seed of the job lengths. */
  seed: number;
}

/** One run of one hub. */
export interface Run {
  system: "pothead" | "pothead-hold";
  round: number;
  /** Answers per second after the first quarter. */
  throughput: number;
  /** Latency of those answers, ms. */
  p50: number;
  p99: number;
  /** Answers other than 200, and failed requests. */
  errors: number;
  /** CPU per request, ms. */
  hubCpuMs: number;
  workerCpuMs: number;
  /** Requests held during the run (the hold's hub; 0 for plain). */
  held: number;
  /** Held requests asked back during the run (the hold's hub). */
  takeBacks: number;
  /** Requests answered during the run, counted or not. */
  answered: number;
}

/** Medians over one hub's runs, and the model's figures for it. */
export interface Summary {
  system: Run["system"];
  throughput: number;
  p50: number;
  p99: number;
  hubCpuMs: number;
  workerCpuMs: number;
  /** Share of answered requests that were held, and that were asked back. */
  heldShare: number;
  takeBackShare: number;
  /** The model with the fitted cost (shares as above). */
  model: {
    costMs: number;
    throughput: number;
    p50: number;
    p99: number;
    heldShare: number;
    takeBackShare: number;
  };
}

// The median of unsorted values.
function medianOf(values: number[]): number {
  return median([...values].sort((a, b) => a - b));
}

/** Runs one closed loop against `system` and measures it. */
async function runOnce(
  system: System,
  plan: Plan,
  jobs: Float64Array,
  durationMs: number,
  round: number,
): Promise<Run> {
  const sum = (pids: number[]) => pids.reduce((t, pid) => t + cpuMs(pid), 0);
  const hub0 = sum(system.balancerPids);
  const workers0 = sum(system.workerPids);
  const held0 = await hubCounter(system) ?? 0;
  const backs0 = await hubCounter(system, TAKE_BACKS) ?? 0;
  const start = performance.now();
  const stop = start + durationMs;
  const from = start + durationMs / 4;
  const latencies: number[] = [];
  let errors = 0;
  let answered = 0;
  let next = 0;
  const loop = async () => {
    while (performance.now() < stop) {
      const ms = jobs[next++ % jobs.length];
      const sent = performance.now();
      try {
        const res = await fetch(`${system.url}?ms=${ms.toFixed(3)}`, {
          signal: AbortSignal.timeout(60_000),
        });
        await res.arrayBuffer();
        const done = performance.now();
        answered++;
        if (res.status !== 200) errors++;
        else if (done >= from && done < stop) latencies.push(done - sent);
      } catch {
        errors++;
      }
    }
  };
  await Promise.all(Array.from({ length: plan.outstanding }, loop));
  const sorted = latencies.sort((a, b) => a - b);
  const n = Math.max(1, answered);
  return {
    system: system.name as Run["system"],
    round,
    throughput: (sorted.length * 1000) / (stop - from),
    p50: sorted.length ? percentile(sorted, 50) : NaN,
    p99: sorted.length ? percentile(sorted, 99) : NaN,
    errors,
    hubCpuMs: (sum(system.balancerPids) - hub0) / n,
    workerCpuMs: (sum(system.workerPids) - workers0) / n,
    held: (await hubCounter(system) ?? 0) - held0,
    takeBacks: (await hubCounter(system, TAKE_BACKS) ?? 0) - backs0,
    answered,
  };
}

/**
 * The medians of each hub's runs, with the model fitted to them: the plain
 * hub's throughput gives the gap; the hold's, with the share it held, the
 * cost of a held start (jobs not held pay the gap).
 */
export function summarize(
  runs: Run[],
  plan: Plan,
  jobs: ArrayLike<number>,
): Summary[] {
  const of = (name: Run["system"]) => runs.filter((r) => r.system === name);
  const medians = (list: Run[]) => ({
    throughput: medianOf(list.map((r) => r.throughput)),
    p50: medianOf(list.map((r) => r.p50)),
    p99: medianOf(list.map((r) => r.p99)),
    hubCpuMs: medianOf(list.map((r) => r.hubCpuMs)),
    workerCpuMs: medianOf(list.map((r) => r.workerCpuMs)),
    heldShare: medianOf(list.map((r) => r.answered ? r.held / r.answered : 0)),
    takeBackShare: medianOf(
      list.map((r) => r.answered ? r.takeBacks / r.answered : 0),
    ),
  });
  const plain = medians(of("pothead"));
  const hold = medians(of("pothead-hold"));
  const gap = costForThroughput(plan.k, plan.meanMs, plain.throughput);
  const perJob = costForThroughput(plan.k, plan.meanMs, hold.throughput);
  // The held start's cost that gives the hold's throughput when `share` of
  // the requests run held (one asked back runs as plain dispatch's).
  const fit = (share: number) =>
    share > 0 ? Math.max(0, (perJob - (1 - share) * gap) / share) : perJob;
  const model = (holding: boolean, cost: number) => {
    const r = simulateClosed({
      servers: plan.k,
      customers: plan.outstanding,
      service: jobs,
      gapMs: gap,
      handMs: cost,
      hold: holding,
      // The hub's two arms: constant jobs end in the order they began, so
      // it holds whenever all are busy; otherwise only with a long queue,
      // a request per worker for every 5 ms of the mean exchange (hub.ts
      // HOLD_QUEUE_MS; the exchange includes its start cost, so a loop
      // that keeps about that many queued holds only part of the time).
      ...(plan.dist === "const" ? { queueMin: 1 } : { queueMs: 5 }),
      // hub.ts HOLD_MAX_WAIT and HOLD_MAX_WAIT_LONG.
      maxWait: 2,
      maxWaitLong: 4,
      durationMs: 600_000,
    });
    return {
      costMs: cost,
      throughput: r.throughput,
      p50: percentile(r.latency, 50),
      p99: percentile(r.latency, 99),
      heldShare: r.held / r.answered,
      takeBackShare: r.takeBacks / r.answered,
    };
  };
  // First with the share the hub ran held, then with the model's own (it
  // holds whenever the rule lets it; the hub held fewer in the runs here),
  // so that the model's throughput is the one measured.
  const ranHeld = (s: { heldShare: number; takeBackShare: number }) =>
    Math.min(1, Math.max(0, s.heldShare - s.takeBackShare));
  const first = model(true, fit(ranHeld(hold)));
  return [
    { system: "pothead", ...plain, model: model(false, gap) },
    {
      system: "pothead-hold",
      ...hold,
      model: model(true, fit(ranHeld(first))),
    },
  ];
}

function fixed(n: number, digits: number): string {
  return Number.isFinite(n) ? n.toFixed(digits) : "–";
}

// Held and asked back, as shares of the answers.
function shares(s: { heldShare: number; takeBackShare: number }): string {
  return `${fixed(s.heldShare * 100, 1)}% / ${
    fixed(s.takeBackShare * 100, 1)
  }%`;
}

/** The report as markdown. */
export function markdown(
  plan: Plan,
  runs: Run[],
  summary: Summary[],
  machine: string,
): string {
  const [plain, hold] = summary;
  const ratio = (a: number, b: number) => fixed(a / b, 3);
  return [
    "# Overload: holding ahead in steady overload",
    "",
    `Generated by \`deno run -A bench/overload.ts\`. ${machine}.`,
    "",
    `${plan.k} one-slot workers per hub, ${plan.outstanding} requests kept in flight (closed loop), ` +
    `${
      plan.dist === "exp" ? "exponential" : "constant"
    } ${plan.meanMs} ms jobs (seed ${plan.seed}), ` +
    `${plan.rounds} interleaved rounds of ${plan.durationS} s (first quarter not counted). ` +
    `The most the workers can do: ${
      fixed((plan.k * 1000) / plan.meanMs, 0)
    }/s.`,
    "",
    "| hub | throughput | p50 (ms) | p99 (ms) | CPU/request: hub / workers (ms) | held / asked back | model: cost (ms) | model: throughput | model: p50 | model: p99 | model: held / asked back |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ...summary.map((s) =>
      `| ${s.system === "pothead" ? "POTHEAD" : "POTHEAD --hold-ahead"} | ${
        fixed(s.throughput, 1)
      }/s | ${fixed(s.p50, 1)} | ${fixed(s.p99, 1)} | ${
        fixed(s.hubCpuMs, 3)
      } / ${fixed(s.workerCpuMs, 3)} | ${shares(s)} | ${
        fixed(s.model.costMs, 2)
      } | ${fixed(s.model.throughput, 1)}/s | ${fixed(s.model.p50, 1)} | ${
        fixed(s.model.p99, 1)
      } | ${shares(s.model)} |`
    ),
    "",
    `Hold against plain (medians): throughput ${
      ratio(hold.throughput, plain.throughput)
    }×, ` +
    `p50 ${ratio(hold.p50, plain.p50)}×, p99 ${ratio(hold.p99, plain.p99)}×; ` +
    `the model (costs fitted to the throughputs, p50 and p99 not fitted): ` +
    `p50 ${ratio(hold.model.p50, plain.model.p50)}×, p99 ${
      ratio(hold.model.p99, plain.model.p99)
    }×.`,
    "",
    "## Runs",
    "",
    "| round | hub | throughput | p50 | p99 | errors | CPU/request: hub / workers (ms) | held / asked back / answered |",
    "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ...runs.map((r) =>
      `| ${r.round + 1} | ${r.system} | ${fixed(r.throughput, 1)}/s | ${
        fixed(r.p50, 1)
      } | ${fixed(r.p99, 1)} | ${r.errors} | ${fixed(r.hubCpuMs, 3)} / ${
        fixed(r.workerCpuMs, 3)
      } | ${r.held} / ${r.takeBacks} / ${r.answered} |`
    ),
    "",
  ].join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      smoke: { type: "boolean" },
      k: { type: "string" },
      outstanding: { type: "string" },
      "mean-ms": { type: "string" },
      dist: { type: "string" },
      duration: { type: "string" },
      rounds: { type: "string" },
      seed: { type: "string" },
      out: { type: "string" },
    },
    strict: true,
  });
  const smoke = values.smoke ?? false;
  const k = numberFlag(
    "k",
    values.k,
    smoke ? 2 : 16,
    (n) => Number.isInteger(n) && n >= 1 && n <= 64,
    "1..64",
  );
  const dist = values.dist ?? "exp";
  if (dist !== "exp" && dist !== "const") {
    throw new RangeError(
      `Invalid --dist: expected exp or const, got "${dist}"`,
    );
  }
  const plan: Plan = {
    k,
    outstanding: numberFlag(
      "outstanding",
      values.outstanding,
      6 * k,
      (n) => Number.isInteger(n) && n >= k && n <= 4096,
      `an integer in [k, 4096]`,
    ),
    meanMs: numberFlag(
      "mean-ms",
      values["mean-ms"],
      20,
      (n) => n > 0 && n <= 10_000,
      "(0, 10000]",
    ),
    dist,
    durationS: numberFlag(
      "duration",
      values.duration,
      smoke ? 1.5 : 8,
      (n) => n > 0 && n <= 600,
      "(0, 600]",
    ),
    rounds: numberFlag(
      "rounds",
      values.rounds,
      smoke ? 1 : 4,
      (n) => Number.isInteger(n) && n >= 1 && n <= 50,
      "1..50",
    ),
    seed: numberFlag("seed", values.seed, 1, Number.isInteger, "an integer"),
  };
  const sample = serviceSampler(plan.dist, plan.meanMs, makeRandom(plan.seed));
  const jobs = Float64Array.from({ length: 100_000 }, sample);
  const dir = await Deno.makeTempDir({ prefix: "pothead-overload-" });
  const maxSeconds = 120 + plan.rounds * 2 * (plan.durationS + 5);
  const { systems, stop } = await startSystems(["pothead", "pothead-hold"], {
    workers: plan.k,
    mode: "sleep",
    dir,
    maxSeconds,
  });
  const runs: Run[] = [];
  try {
    for (const system of systems) {
      await runOnce(system, plan, jobs, smoke ? 500 : 3000, -1); // warm-up
    }
    for (let round = 0; round < plan.rounds; round++) {
      const order = round % 2 === 0 ? systems : [...systems].reverse();
      for (const system of order) {
        const run = await runOnce(
          system,
          plan,
          jobs,
          plan.durationS * 1000,
          round,
        );
        console.log(JSON.stringify(run));
        runs.push(run);
        await sleep(500);
      }
    }
  } finally {
    await stop();
    killAll();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  const summary = summarize(runs, plan, jobs);
  const info = await machineInfo();
  const machine =
    `${info.cpuModel}, ${info.cpus} CPUs, Deno ${info.deno}, ${info.date}`;
  const out = values.out ??
    (smoke
      ? await Deno.makeTempDir({ prefix: "pothead-smoke-" })
      : join(ROOT, "bench", "results"));
  await writeReport(out, "overload", markdown(plan, runs, summary, machine), {
    plan,
    machine: info,
    runs,
    summary,
  });
  if (smoke) {
    // A smoke proves it runs end to end; it judges only that requests went through.
    if (runs.every((r) => r.answered === 0)) {
      throw new Error("no request was answered");
    }
    console.log("smoke: timings not judged");
  }
}
