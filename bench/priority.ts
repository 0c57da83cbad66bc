/**
 * The priority benchmark: what priority classes buy interactive requests
 * that share one-at-a-time workers with a flood of batch jobs.
 *
 * One hub (`--trust-priority`) with K `worker.ts --concurrency 1` workers
 * running the queueing benchmark's job (`bench/workers/pothead_job.ts`,
 * sleep-based). For each load, one seeded open-loop Poisson trace with
 * exponential service times (the queueing benchmark's trace generator);
 * each request is "interactive" with probability `--share` (its own seeded
 * stream), else "batch". The same trace is replayed twice through the hub:
 *
 * - `fifo`: no request carries a priority, so the pool's queue is one FIFO;
 * - `priority`: interactive requests carry `X-Pothead-Priority: 10` (the
 *   hub trusts the field), batch ones nothing (class 0).
 *
 * Both are set against discrete-event simulations of the ideal central
 * queue on the same trace: FIFO (`simulateFifo`) and strict non-preemptive
 * priority (`simulatePriority`); and against the same simulations with a
 * dispatch gap (`--model-gap-ms`, a server idle that long after each job
 * before it takes a queued request), a model of the hub's own hand-over.
 * With `--step-ms`, the hub runs with `--priority-step` and the classes
 * age (as the simulation with the same step) instead of being strict.
 *
 * ```sh
 * deno run -A bench/priority.ts [--smoke] [--k=4] [--loads=0.9,0.95]
 *   [--mean-ms=20] [--share=0.2] [--step-ms=MS] [--duration=60] [--seed=1]
 *   [--name=priority] [--out=DIR]
 * ```
 *
 * Writes `NAME.md` and `NAME.json` (`priority.*` by default) under
 * `bench/results/` (a temporary directory for `--smoke`, which checks only
 * that every request was answered, never a timing).
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { drawClasses, makeTrace } from "./_trace.ts";
import {
  type Percentiles,
  simulateFifo,
  simulatePriority,
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

// ------------------------------------------------------------------ options

/** Everything one invocation runs. */
export interface Plan {
  /** `full` or `smoke`. */
  mode: "full" | "smoke";
  /** Workers, each serving one request at a time. */
  workers: number;
  /** Utilisations, one trace each. */
  loads: number[];
  /** Mean service time (exponential), ms. */
  meanMs: number;
  /** Probability that a request is interactive. */
  share: number;
  /** The interactive class in the priority run (batch is 0). */
  priority: number;
  /** The hub's `--priority-step` in ms; Infinity: strict classes. */
  stepMs: number;
  /** Report file name, without extension. */
  name: string;
  /** Trace length per load, seconds. */
  durationS: number;
  /** Warm-up (saturated burst of 1 ms jobs), seconds. */
  warmS: number;
  /** Seed of every trace and of the class draws. */
  seed: number;
  /** Dispatch gap of the model simulations, ms (0: none). */
  modelGapMs: number;
  /** Output directory, or null for a temporary one. */
  out: string | null;
  /** Nice value for the benchmark and every process it starts (0: as is). */
  nice: number;
}

const HELP = `Usage: deno run -A bench/priority.ts [options]

  --smoke             K=2, one load, 2 s; proves it runs, judges nothing
  --k=N               workers (default 4), one slot each
  --loads=0.9,0.95    utilisations, one trace each
  --mean-ms=20        mean (exponential) service time
  --share=0.2         probability that a request is interactive
  --priority=10       X-Pothead-Priority of interactive requests (1..1000)
  --step-ms=MS        the hub's --priority-step (default: none, strict):
                      a class is worth MS ms of waiting
  --duration=S        trace length per load in seconds (default 60)
  --seed=N            trace seed (default 1)
  --model-gap-ms=MS   dispatch gap of the model simulations (default 0.5,
                      about the hub's median gap at K=4 in queueing.md)
  --out=DIR           where to write NAME.{md,json}
  --name=priority     the report's file name
  --nice=N            nice value for the benchmark and all it starts
                      (default -10 as root, to keep other jobs' noise out)
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
      loads: { type: "string" },
      "mean-ms": { type: "string" },
      share: { type: "string" },
      priority: { type: "string" },
      "step-ms": { type: "string" },
      name: { type: "string" },
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
  const loads = values.loads === undefined
    ? (smoke ? [0.9] : [0.9, 0.95])
    : values.loads.split(",").map((s) => s.trim()).filter(Boolean).map((s) =>
      numberFlag("loads", s, 0, (l) => l > 0 && l < 1, "(0, 1)")
    );
  if (loads.length === 0) throw new RangeError("Invalid --loads: empty");
  const integer = (lo: number, hi: number) => (n: number) =>
    Number.isInteger(n) && n >= lo && n <= hi;
  const name = values.name ?? "priority";
  if (!/^[A-Za-z0-9_-]+$/.test(name)) {
    throw new RangeError(
      `Invalid --name: expected letters, digits, "-" or "_", got "${name}"`,
    );
  }
  return {
    mode: smoke ? "smoke" : "full",
    name,
    stepMs: numberFlag(
      "step-ms",
      values["step-ms"],
      Infinity,
      (n) => n >= 0 && n <= 3_600_000,
      "[0, 3600000]",
    ),
    workers: numberFlag("k", values.k, smoke ? 2 : 4, integer(1, 64), "1..64"),
    loads: loads.sort((a, b) => a - b),
    meanMs: numberFlag(
      "mean-ms",
      values["mean-ms"],
      20,
      (n) => n > 0 && n <= 10_000,
      "(0, 10000]",
    ),
    share: numberFlag(
      "share",
      values.share,
      0.2,
      (n) => n > 0 && n < 1,
      "(0, 1)",
    ),
    priority: numberFlag(
      "priority",
      values.priority,
      10,
      integer(1, 1000),
      "1..1000",
    ),
    durationS: numberFlag(
      "duration",
      values.duration,
      smoke ? 2 : 60,
      (n) => n > 0 && n <= 3600,
      "(0, 3600]",
    ),
    warmS: smoke ? 0.5 : 3,
    seed: numberFlag("seed", values.seed, 1, integer(0, 2 ** 31), "an integer"),
    modelGapMs: numberFlag(
      "model-gap-ms",
      values["model-gap-ms"],
      0.5,
      (n) => n >= 0 && n <= 100,
      "[0, 100]",
    ),
    out: values.out ??
      (smoke ? null : join(ROOT, "bench/results")),
    nice: numberFlag(
      "nice",
      values.nice,
      Deno.uid?.() === 0 ? -10 : 0,
      integer(-20, 19),
      "-20..19",
    ),
  };
}

/** Drain allowance after a trace's last arrival, ms (as the queueing bench). */
function drainMs(plan: Plan): number {
  return Math.max(15_000, plan.durationS * 1000, plan.meanMs * 200);
}

/** Rough wall time of the plan, in seconds. */
export function estimateSeconds(plan: Plan): number {
  return Math.round(
    5 + plan.warmS +
      plan.loads.length * 2 * (plan.durationS + 1 + plan.meanMs / 50),
  );
}

// ----------------------------------------------------------------- analysis

/** The two classes of the trace. */
export type ClassName = "interactive" | "batch";
/** The two runs of each trace. */
export type RunName = "fifo" | "priority";

/** One class's figures in one run. */
export interface ClassResult {
  /** Latencies of the answered (200) requests, ms. */
  latency: Percentiles;
  /** Requests of the class not answered 200. */
  errors: number;
  /** Errors by kind. */
  errorKinds: Record<string, number>;
  /** Answered requests of the class per second of the run's span. */
  throughput: number;
}

/** One replay of the trace. */
export interface RunResult {
  /** Per class. */
  classes: Record<ClassName, ClassResult>;
  /** Both classes together. */
  all: ClassResult;
  /** p99 of how late the client sent, ms. */
  sendLateP99: number;
}

/** One load: its trace, both replays and both simulations. */
export interface CellResult {
  load: number;
  /** The trace's own utilisation: its work over its span and K servers. */
  utilisation: number;
  requests: number;
  interactive: number;
  /** Order the two runs ran in. */
  order: RunName[];
  /** The ideal central queue on the same trace, per discipline and class. */
  ideal: Record<RunName, Record<ClassName | "all", Percentiles>>;
  /** The same simulations with the plan's dispatch gap. */
  model: Record<RunName, Record<ClassName | "all", Percentiles>>;
  /** The hub, per run. */
  runs: Record<RunName, RunResult>;
}

/** Everything the report is made of (also the `.json`). */
export interface Report {
  machine: MachineInfo & { loadAverageAtEnd: number };
  plan: Omit<Plan, "out">;
  nice: number;
  elapsedS: number;
  cells: CellResult[];
  args: string[];
}

/** Splits latencies of a simulation by class. */
function idealByClass(
  latency: Float64Array,
  marked: Uint8Array,
): Record<ClassName | "all", Percentiles> {
  return {
    interactive: summarize(latency.filter((_, i) => marked[i] === 1)),
    batch: summarize(latency.filter((_, i) => marked[i] === 0)),
    all: summarize(latency),
  };
}

function classResult(samples: Sample[], spanMs: number): ClassResult {
  const latencies: number[] = [];
  const errorKinds: Record<string, number> = {};
  for (const s of samples) {
    if (s.status === 200) {
      latencies.push(s.done - s.sent);
    } else {
      const kind = s.error ?? `HTTP ${s.status}`;
      errorKinds[kind] = (errorKinds[kind] ?? 0) + 1;
    }
  }
  return {
    latency: summarize(latencies),
    errors: samples.length - latencies.length,
    errorKinds,
    throughput: spanMs > 0 ? (latencies.length * 1000) / spanMs : 0,
  };
}

/**
 * Figures of one replay per class. Throughput is each class's answered
 * requests over the whole run's span (first send to last answer), so the
 * classes add up to the total.
 */
export function analyseRun(samples: Sample[], marked: Uint8Array): RunResult {
  let first = Infinity, last = -Infinity;
  const late: number[] = [];
  for (const s of samples) {
    first = Math.min(first, s.sent);
    if (s.status === 200) last = Math.max(last, s.done);
    late.push(s.sent - s.scheduled);
  }
  const span = last - first;
  return {
    classes: {
      interactive: classResult(samples.filter((_, i) => marked[i] === 1), span),
      batch: classResult(samples.filter((_, i) => marked[i] === 0), span),
    },
    all: classResult(samples, span),
    sendLateP99: summarize(late).p99,
  };
}

// ------------------------------------------------------------------- report

const ms = formatMs;

function ratio(a: number, b: number): string {
  return b > 0 && Number.isFinite(a / b) ? `${(a / b).toFixed(2)}×` : "–";
}

/** The Markdown report. */
export function renderMarkdown(report: Report): string {
  const { plan, machine } = report;
  const lines = [
    "# Priority classes: interactive requests sharing workers with a batch flood",
    "",
    `${machine.date}; ${machine.cpuModel}, ${machine.cpus} vCPUs; Deno ${machine.deno}; ` +
    `load average ${machine.loadAverageAtStart} at the start, ${machine.loadAverageAtEnd} at the end; ` +
    `${Math.round(report.elapsedS)} s; mode ${plan.mode}${
      report.nice ? `; nice ${report.nice}` : ""
    }.`,
    "",
    `One hub (\`--trust-priority\`) and ${plan.workers} \`worker.ts --concurrency 1\` workers running the queueing benchmark's job (\`bench/workers/pothead_job.ts\`, sleep-based), all on loopback on this machine with the client. ` +
    `Open-loop Poisson arrivals (seed ${plan.seed}), exponential service times with mean ${plan.meanMs} ms, ${plan.durationS} s per load; ` +
    `each request is interactive with probability ${plan.share}, else batch (its own seeded draw). ` +
    `The same trace runs twice through the same hub: **fifo**, no request carries a priority (one FIFO queue); ` +
    `**priority**, interactive requests send \`X-Pothead-Priority: ${plan.priority}\` and batch ones nothing (class 0)${
      plan.stepMs === Infinity
        ? ""
        : `; the hub runs with \`--priority-step ${plan.stepMs}ms\`, so a class is worth ${plan.stepMs} ms of waiting and an interactive request goes ahead of batch ones that arrived up to ${
          plan.stepMs * plan.priority
        } ms before it, not of older ones`
    }. ` +
    `The order of the two runs alternates from load to load. ` +
    `Latency runs from the client sending a request to the last byte of its answer. ` +
    `**ideal** is a discrete-event simulation of one central queue on the same trace with no dispatch or network cost: FIFO (\`simulateFifo\`) and ${
      plan.stepMs === Infinity ? "strict" : `aged (step ${plan.stepMs} ms)`
    } non-preemptive priority (\`simulatePriority\`, bench/_sim.ts); ` +
    `**model** is the same with each server idle ${plan.modelGapMs} ms after each job before it takes a queued request (about the hub's median dispatch gap at K=4 in queueing.md). ` +
    "A trace's own utilisation (its work over its span and K) differs from the asked load by chance; near saturation the queue is very sensitive to both.",
    "",
  ];
  if (plan.mode === "smoke") {
    lines.push("**Smoke run: timings are not judged.**", "");
  }
  lines.push(
    "## What priority classes buy (p99, ms)",
    "",
    `Measured on the hub, then the ideal queue on the same trace, then the model (the ideal with a ${plan.modelGapMs} ms dispatch gap after each job). ` +
      "For the interactive class the ratio is fifo ÷ priority (what priorities save it); for the batch class priority ÷ fifo (what they cost it).",
    "",
    "| load (trace's own) | class | fifo | priority | ratio | ideal fifo | ideal priority | ideal ratio | model fifo | model priority | model ratio |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  );
  for (const c of report.cells) {
    for (const cls of ["interactive", "batch"] as const) {
      const r = (f: number, p: number) =>
        cls === "interactive" ? ratio(f, p) : ratio(p, f);
      const m = (run: RunName) => c.runs[run].classes[cls].latency.p99;
      lines.push(
        `| ${Math.round(c.load * 100)}% (${
          (c.utilisation * 100).toFixed(1)
        }%) | ${cls} | ${ms(m("fifo"))} | ${ms(m("priority"))} | ${
          r(m("fifo"), m("priority"))
        } | ${ms(c.ideal.fifo[cls].p99)} | ${ms(c.ideal.priority[cls].p99)} | ${
          r(c.ideal.fifo[cls].p99, c.ideal.priority[cls].p99)
        } | ${ms(c.model.fifo[cls].p99)} | ${ms(c.model.priority[cls].p99)} | ${
          r(c.model.fifo[cls].p99, c.model.priority[cls].p99)
        } |`,
      );
    }
  }
  lines.push(
    "",
    "## Every run and class",
    "",
    "Latencies in ms. `req/s`: the class's answered requests per second of the run's span (first send to last answer). " +
      "`ideal` columns are the simulation of the same discipline on the same trace; `model p99` the same with the dispatch gap.",
  );
  for (const c of report.cells) {
    lines.push(
      "",
      `### ${Math.round(c.load * 100)}% load (the trace's own: ${
        (c.utilisation * 100).toFixed(1)
      }%): ${c.requests} requests, ${c.interactive} interactive (runs in the order ${
        c.order.join(", ")
      })`,
      "",
      "| run | class | n | p50 | p90 | p99 | max | errors | req/s | ideal p50 | ideal p90 | ideal p99 | ideal max | model p99 |",
      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    );
    for (const run of ["fifo", "priority"] as const) {
      const r = c.runs[run];
      for (const cls of ["interactive", "batch", "all"] as const) {
        const x = cls === "all" ? r.all : r.classes[cls];
        const ideal = c.ideal[run][cls];
        const errors = x.errors
          ? `${x.errors} (${
            Object.entries(x.errorKinds).map(([k, v]) => `${k}: ${v}`).join(
              ", ",
            )
          })`
          : "0";
        lines.push(
          `| ${run} | ${cls} | ${x.latency.n} | ${ms(x.latency.p50)} | ${
            ms(x.latency.p90)
          } | ${ms(x.latency.p99)} | ${ms(x.latency.max)} | ${errors} | ${
            x.throughput.toFixed(1)
          } | ${ms(ideal.p50)} | ${ms(ideal.p90)} | ${ms(ideal.p99)} | ${
            ms(ideal.max)
          } | ${ms(c.model[run][cls].p99)} |`,
        );
      }
    }
    lines.push(
      "",
      `Client send lateness p99: fifo ${
        c.runs.fifo.sendLateP99.toFixed(2)
      } ms, priority ${c.runs.priority.sendLateP99.toFixed(2)} ms.`,
    );
  }
  lines.push(
    "",
    "## What limited these figures",
    "",
    `- ${machine.cpus} shared vCPUs run the client, the hub, every worker and (at times) other people's jobs, so absolute figures move from run to run; ` +
      "compare the two runs of one load (same trace, same hub, minutes apart) and each against its simulation.",
    "- The hub's own dispatch gap and the loopback round trip are in every measured latency and in no ideal one; " +
      "a fraction of a millisecond per job raises the workers' real utilisation by a few percent, which near saturation lengthens the queue a lot (the model columns).",
    "- The interactive class is a fifth of the requests: its p99 rests on a few dozen samples per run, and its max on one.",
    "",
  );
  return lines.join("\n");
}

// --------------------------------------------------------------------- main

function log(line: string): void {
  console.log(line);
}

/**
 * Runs the benchmark. Returns the exit code: 0 when every run completed, 1
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
    console.error(`priority: ${(error as Error).message}\n\n${HELP}`);
    return 2;
  }
  const began = performance.now();
  const estimate = estimateSeconds(plan);
  log(
    `priority benchmark (${plan.mode}): K=${plan.workers}, loads ${
      plan.loads.join(",")
    }, exp ${plan.meanMs} ms, ${
      plan.share * 100
    }% interactive, ${plan.durationS} s per load; estimated ${estimate} s`,
  );
  const niced = plan.nice !== 0 && await setNiceness(plan.nice);
  if (plan.nice !== 0 && !niced) log(`could not set nice ${plan.nice}`);
  const maxSeconds = estimate * 3 + 300;
  // Everything is bounded: each child by `timeout -s KILL`, each replay by
  // its drain allowance, and the whole run by this watchdog.
  const watchdog = setTimeout(() => {
    console.error(`priority: took longer than ${maxSeconds} s; killed`);
    killAll();
    Deno.exit(1);
  }, maxSeconds * 1000);
  Deno.unrefTimer(watchdog);
  const info = await machineInfo();
  const cells: CellResult[] = [];
  const dir = await Deno.makeTempDir({ prefix: "pothead-priority-" });
  let failed = false;
  try {
    const running = await startSystems(["pothead"], {
      workers: plan.workers,
      mode: "sleep",
      dir,
      maxSeconds,
      hubArgs: plan.stepMs === Infinity
        ? ["--trust-priority"]
        : ["--trust-priority", "--priority-step", `${plan.stepMs}ms`],
    });
    try {
      const [hub] = running.systems;
      await saturate(hub.url, {
        concurrency: 2 * plan.workers,
        ms: 1,
        durationMs: plan.warmS * 1000,
        run: "warm",
      });
      for (const [index, load] of plan.loads.entries()) {
        const trace = makeTrace({
          workers: plan.workers,
          load,
          meanMs: plan.meanMs,
          dist: "exp",
          durationMs: plan.durationS * 1000,
          seed: plan.seed,
        });
        const n = trace.arrivals.length;
        const marked = drawClasses(n, plan.share, plan.seed);
        const classes = Int32Array.from(marked, (m) => m * plan.priority);
        let work = 0;
        for (const s of trace.service) work += s;
        const simulate = (gap: number) => ({
          fifo: idealByClass(
            simulateFifo(trace.arrivals, trace.service, plan.workers, {
              dispatchGapMs: gap,
            }).latency,
            marked,
          ),
          priority: idealByClass(
            simulatePriority(
              trace.arrivals,
              trace.service,
              classes,
              plan.workers,
              { dispatchGapMs: gap, step: plan.stepMs },
            ).latency,
            marked,
          ),
        });
        const cell: CellResult = {
          load,
          utilisation: n ? work / (trace.arrivals[n - 1] * plan.workers) : 0,
          requests: n,
          interactive: marked.reduce((sum, m) => sum + m, 0),
          order: index % 2 === 0 ? ["fifo", "priority"] : ["priority", "fifo"],
          ideal: simulate(0),
          model: simulate(plan.modelGapMs),
          runs: {} as Record<RunName, RunResult>,
        };
        const field = { "x-pothead-priority": String(plan.priority) };
        for (const run of cell.order) {
          const samples = await replay(
            hub.url,
            trace,
            `${run}-${index}`,
            drainMs(plan),
            run === "priority"
              ? (i) => marked[i] === 1 ? field : undefined
              : undefined,
          );
          const r = analyseRun(samples, marked);
          cell.runs[run] = r;
          const { interactive: i, batch: b } = r.classes;
          log(
            `${Math.round(load * 100)}% ${
              run.padEnd(8)
            } interactive n=${i.latency.n} p50=${ms(i.latency.p50)} p99=${
              ms(i.latency.p99)
            } (ideal ${
              ms(cell.ideal[run].interactive.p99)
            }) | batch n=${b.latency.n} p50=${ms(b.latency.p50)} p99=${
              ms(b.latency.p99)
            } (ideal ${
              ms(cell.ideal[run].batch.p99)
            }) | errors ${r.all.errors}`,
          );
          if (r.all.errors) {
            log(`  errors: ${JSON.stringify(r.all.errorKinds)}`);
          }
          await new Promise((resolve) => setTimeout(resolve, 300));
        }
        cells.push(cell);
      }
    } finally {
      await running.stop();
    }
  } catch (error) {
    failed = true;
    console.error(`priority: ${(error as Error).stack ?? error}`);
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
    cells,
    args,
  };
  if (plan.mode === "smoke") {
    // It must still have worked: every load ran both runs, both classes
    // were answered, (almost) no errors. No timing is judged.
    if (cells.length !== plan.loads.length) failed = true;
    for (const c of cells) {
      for (const run of ["fifo", "priority"] as const) {
        const r = c.runs[run];
        const bad = !r || r.classes.interactive.latency.n === 0 ||
          r.classes.batch.latency.n === 0 ||
          r.all.latency.n + r.all.errors !== c.requests ||
          r.all.errors > c.requests * 0.01;
        if (bad) {
          console.error(
            `priority: the ${run} run at ${c.load} failed in the smoke run: ${
              JSON.stringify(r?.all)
            }`,
          );
          failed = true;
        }
      }
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
