/**
 * The core performance benchmark (`deno task bench`): throughput, hub-added
 * latency, memory per queued request, and 1 GiB streaming, each with real
 * hub and worker CLI subprocesses on loopback.
 *
 * ```sh
 * deno run -A bench/run.ts            # full run, writes bench/results/core.{md,json}
 * deno run -A bench/run.ts --quick    # shorter runs (< 3 min), writes core-quick.*
 * deno run -A bench/run.ts --smoke    # tiny counts, checks it all still runs (CI)
 * deno run -A bench/run.ts --only=throughput,latency   # writes core-throughput-latency.*
 * deno run -A bench/run.ts --profile --only=profile     # where the hub's CPU goes
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  haveWrk,
  killAll,
  loadAverage,
  type MachineInfo,
  machineInfo,
  ROOT,
  round,
} from "./_util.ts";
import {
  type HubProfile,
  latency,
  type LatencyOptions,
  type LatencyResult,
  profileHub,
  throughput,
  type ThroughputOptions,
  type ThroughputResult,
  type ThroughputRun,
} from "./overhead.ts";
import {
  queuedMemory,
  type QueuedMemoryResult,
  stream,
  type StreamResult,
} from "./memory.ts";

const SECTIONS = ["throughput", "latency", "memory", "stream"] as const;
// Run only when asked for (--profile or --only=profile).
const EXTRA = ["profile"] as const;
type Section = (typeof SECTIONS)[number] | (typeof EXTRA)[number];
type Mode = "full" | "quick" | "smoke";

/** Targets from the design card. */
const TARGETS = {
  rps: 12_000,
  hubCpuUs: 40,
  addedP50Ms: 0.5,
  queuedBytes: 4096,
  streamPeakKiB: 128 * 1024,
};

interface Settings {
  throughput: ThroughputOptions;
  latency: LatencyOptions;
  memoryCount: number;
  /** Rounds of the memory run; the report takes the median. */
  memoryRounds: number;
  streamBytes: number;
  /** Hard bound on the whole run, seconds. */
  maxSeconds: number;
}

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

function settings(mode: Mode): Settings {
  const tp = {
    workers: 4,
    concurrency: 4,
    threads: 2,
    connections: 64,
  };
  switch (mode) {
    case "full":
      return {
        throughput: { ...tp, warmupSeconds: 3, seconds: 10 },
        latency: { rate: 200, count: 2000, block: 500, warmup: 200 },
        memoryCount: 10_000,
        memoryRounds: 3,
        streamBytes: GiB,
        maxSeconds: 900,
      };
    case "quick":
      return {
        throughput: { ...tp, warmupSeconds: 2, seconds: 4 },
        latency: { rate: 200, count: 600, block: 300, warmup: 100 },
        memoryCount: 10_000,
        memoryRounds: 1,
        streamBytes: 256 * MiB,
        maxSeconds: 175,
      };
    case "smoke":
      return {
        throughput: { ...tp, connections: 8, warmupSeconds: 1, seconds: 1 },
        latency: { rate: 200, count: 40, block: 20, warmup: 10 },
        memoryCount: 200,
        memoryRounds: 1,
        streamBytes: 8 * MiB,
        maxSeconds: 58,
      };
  }
}

interface Results {
  mode: Mode;
  machine: MachineInfo;
  loadAverageAtEnd?: number;
  seconds?: number;
  throughput?: ThroughputResult;
  latency?: LatencyResult;
  memory?: QueuedMemoryResult;
  /** The hub's own bytes per held request in each round, ascending. */
  memoryRounds?: number[];
  stream?: StreamResult;
  profile?: HubProfile;
  errors: Record<string, string>;
}

function verdict(mode: Mode, ok: boolean): string {
  if (mode === "smoke") return "n/a (smoke)";
  return ok ? "met" : "missed";
}

function kib(n: number): string {
  return `${(n / 1024).toFixed(1)} MiB`;
}

/** Renders the results as markdown. */
export function toMarkdown(r: Results): string {
  const m = r.machine;
  const out: string[] = [];
  out.push(`# POTHEAD core benchmark (${r.mode})`, "");
  out.push(`- Date: ${m.date}`);
  out.push(`- Machine: \`${m.uname}\``);
  out.push(`- CPU: ${m.cpuModel} × ${m.cpus}`);
  out.push(`- Deno ${m.deno} (V8 ${m.v8}); ${m.wrk}`);
  out.push(
    `- Load average (1 min) at start ${m.loadAverageAtStart}, at end ${
      r.loadAverageAtEnd ?? "?"
    }; wall time ${r.seconds ?? "?"} s`,
  );
  if (r.mode === "smoke") {
    out.push("- Smoke run: tiny counts, timings are not meaningful.");
  }
  out.push("");
  out.push("| Measure | Hub | Deno.serve direct | Target | Verdict |");
  out.push("|---|---|---|---|---|");
  const t = r.throughput;
  if (t !== undefined) {
    const o = t.options;
    out.push(
      `| Throughput, trivial handler (wrk -t${o.threads} -c${o.connections} -d${o.seconds}s; ${o.workers}×${o.concurrency} slots) | ${t.hub.rps} req/s | ${t.direct.rps} req/s | ≥ ${TARGETS.rps} req/s | ${
        verdict(r.mode, t.hub.rps >= TARGETS.rps)
      } |`,
    );
    out.push(
      `| wrk latency p50 / p99 | ${t.hub.p50} / ${t.hub.p99} ms | ${t.direct.p50} / ${t.direct.p99} ms | | |`,
    );
    const fl = t.floor;
    if (fl !== undefined) {
      out.push(
        `| Floor of the design in Deno (\`bench/workers/floor_hub.ts\` + raw-socket workers, same ${o.workers}×${o.concurrency}): throughput, relay / worker CPU per request | ${fl.rps} req/s, ${fl.serverCpuUsPerRequest} / ${fl.workersCpuUsPerRequest} µs | | (context) | |`,
      );
    }
    out.push(
      `| Worker processes' CPU per request (${o.workers}×${o.concurrency}, default engine) | ${t.hub.workersCpuUsPerRequest} µs | | (context) | |`,
    );
    const inl = t.inline;
    if (inl !== undefined) {
      out.push(
        `| Same ${o.workers}×${o.concurrency} with the workers' inline engine (\`--engine inline\`): throughput, hub / worker CPU per request | ${inl.rps} req/s, ${inl.serverCpuUsPerRequest} / ${inl.workersCpuUsPerRequest} µs | | (context) | |`,
      );
    }
    const one = t.oneProcess;
    if (one !== undefined) {
      out.push(
        `| Same ${
          o.workers * o.concurrency
        } slots in one worker process: throughput, hub / worker CPU per request | ${one.rps} req/s, ${one.serverCpuUsPerRequest} / ${one.workersCpuUsPerRequest} µs | | (context) | |`,
      );
    }
    out.push(
      `| Server process CPU per request | ${t.hub.serverCpuUsPerRequest} µs | ${t.direct.serverCpuUsPerRequest} µs | hub < ${TARGETS.hubCpuUs} µs | ${
        verdict(r.mode, t.hub.serverCpuUsPerRequest < TARGETS.hubCpuUs)
      } |`,
    );
  }
  const l = r.latency;
  if (l !== undefined) {
    const o = l.options;
    out.push(
      `| Open-loop latency at ${o.rate} req/s (${o.count} req each) p50 / p90 / p99 | ${l.hub.p50} / ${l.hub.p90} / ${l.hub.p99} ms | ${l.direct.p50} / ${l.direct.p90} / ${l.direct.p99} ms | | |`,
    );
    out.push(
      `| Hub-added median latency | ${l.addedP50} ms | | < ${TARGETS.addedP50Ms} ms | ${
        verdict(r.mode, l.addedP50 < TARGETS.addedP50Ms)
      } |`,
    );
    if (l.floor !== undefined) {
      out.push(
        `| Floor relay (same run, one raw worker): added median latency, relay / worker CPU per request | ${l.floorAddedP50} ms, ${l.floorCpuUsPerRequest} / ${l.floorWorkerCpuUsPerRequest} µs | | (context) | |`,
      );
    }
  }
  const q = r.memory;
  if (q !== undefined) {
    const rounds = r.memoryRounds ?? [];
    out.push(
      `| RSS idle → ${q.count} requests held | ${kib(q.hubIdleKiB)} → ${
        kib(q.hubQueuedKiB)
      } | ${kib(q.serveIdleKiB)} → ${kib(q.servePendingKiB)} | | |`,
    );
    out.push(
      `| Memory per held request (hub's own share = hub − Deno.serve${
        rounds.length > 1 ? `; median of ${rounds.join(", ")} B` : ""
      }) | ${q.hubBytesPerRequest} B (total ${q.hubTotalBytesPerRequest} B) | ${q.serveBytesPerRequest} B | < ${TARGETS.queuedBytes} B | ${
        verdict(r.mode, q.hubBytesPerRequest < TARGETS.queuedBytes)
      } |`,
    );
  }
  const s = r.stream;
  if (s !== undefined) {
    for (
      const [name, run] of [["upload", s.upload], [
        "download",
        s.download,
      ]] as const
    ) {
      const peak = Math.max(run.hubPeakSampledKiB, run.hubPeakKernelKiB ?? 0);
      out.push(
        `| ${
          (run.bytes / MiB).toFixed(0)
        } MiB ${name}: hub peak RSS (throughput) | ${
          kib(peak)
        } (${run.mbPerSecond} MB/s) | | < ${
          TARGETS.streamPeakKiB / 1024
        } MiB | ${verdict(r.mode, run.ok && peak < TARGETS.streamPeakKiB)} |`,
      );
    }
  }
  out.push("");
  if (t !== undefined) {
    out.push("## Throughput details", "");
    out.push(
      "| Run | requests | req/s | p50 | p75 | p90 | p99 | server CPU s | workers CPU s | wrk CPU s | other CPU s | machine busy / capacity s | socket errors | non-2xx |",
    );
    out.push("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    const runs: [string, ThroughputRun][] = [[
      `hub, ${t.options.workers}×${t.options.concurrency}`,
      t.hub,
    ]];
    if (t.inline !== undefined) {
      runs.push([
        `hub, ${t.options.workers}×${t.options.concurrency}, inline engine`,
        t.inline,
      ]);
    }
    if (t.oneProcess !== undefined) {
      runs.push([
        `hub, 1×${t.options.workers * t.options.concurrency}`,
        t.oneProcess,
      ]);
    }
    if (t.floor !== undefined) {
      runs.push([
        `floor relay, ${t.options.workers}×${t.options.concurrency}`,
        t.floor,
      ]);
    }
    runs.push(["direct", t.direct]);
    for (const [name, x] of runs) {
      out.push(
        `| ${name} | ${x.requests} | ${x.rps} | ${x.p50} | ${x.p75} | ${x.p90} | ${x.p99} | ${x.serverCpu} | ${x.workersCpu} | ${x.wrkCpu} | ${x.otherCpu} | ${x.machineBusy} / ${x.machineCapacity} | ${x.socketErrors} | ${x.non2xx} |`,
      );
    }
    out.push("");
  }
  if (l !== undefined) {
    out.push("## Latency details", "");
    out.push(
      `- Block medians (ms), alternating blocks of ${l.options.block}: direct ${
        l.direct.blockMedians.join(", ")
      }; hub ${l.hub.blockMedians.join(", ")}${
        l.floor === undefined
          ? ""
          : `; floor relay ${l.floor.blockMedians.join(", ")}`
      }`,
    );
    out.push(
      `- Max: direct ${l.direct.max} ms, hub ${l.hub.max} ms; errors: direct ${l.direct.errors}, hub ${l.hub.errors}; latest send ${l.maxSendLag} ms behind schedule; at most ${l.maxSockets} sockets per target`,
    );
    out.push(
      `- CPU per request at this rate: hub ${l.hubCpuUsPerRequest} µs + worker process ${l.workerCpuUsPerRequest} µs; direct Deno.serve ${l.directCpuUsPerRequest} µs`,
      `- Hub responses split by their Server-Timing: median worker time (hub sends request → response from worker) ${l.serverTiming.workerP50} ms; median of the rest (consumer ↔ hub and hub processing) ${l.serverTiming.restP50} ms (${l.serverTiming.count} responses)`,
      "",
    );
  }
  if (q !== undefined) {
    out.push("## Memory details", "");
    out.push(
      `- After measuring, a worker answered ${q.answeredAfterwards} of the ${q.count} held hub requests with 200; the shortest queue time reported was ${q.minQueueMs} ms.`,
      "",
    );
  }
  if (s !== undefined) {
    out.push("## Streaming details", "");
    for (
      const [name, run] of [["upload", s.upload], [
        "download",
        s.download,
      ]] as const
    ) {
      out.push(
        `- ${name}: ${run.bytes} bytes in ${run.seconds} s (${run.mbPerSecond} MB/s); hub RSS before ${
          kib(run.hubBeforeKiB)
        }, sampled peak ${kib(run.hubPeakSampledKiB)}, kernel peak (VmHWM) ${
          run.hubPeakKernelKiB === null ? "n/a" : kib(run.hubPeakKernelKiB)
        }; worker sampled peak ${kib(run.workerPeakSampledKiB)}; ${run.detail}`,
      );
    }
    out.push("");
  }
  const p = r.profile;
  if (p !== undefined) {
    out.push("## Where the hub's CPU goes", "");
    out.push(
      `Saturated throughput run profiled with ${
        p.tool === "perf"
          ? "`perf record -e cpu-clock -g` (hub started with `--v8-flags=--perf-basic-prof`)"
          : "`deno run --cpu-prof` (wall-time samples)"
      }: ${p.requests} requests, ${p.rps} req/s, hub CPU ${p.hubCpuUsPerRequest} µs/request.`,
      "",
    );
    for (const section of p.sections) {
      out.push(`### ${section.title}`, "");
      out.push("| share of samples | µs per request | what |");
      out.push("|---|---|---|");
      for (const [pct, us, what] of section.rows) {
        out.push(`| ${pct}% | ${us} | \`${what.replaceAll("|", "\\|")}\` |`);
      }
      out.push("");
    }
  }
  const errs = Object.entries(r.errors);
  if (errs.length > 0) {
    out.push("## Errors", "");
    for (const [k, v] of errs) out.push(`- ${k}: ${v}`);
    out.push("");
  }
  return out.join("\n");
}

async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: "boolean" },
      smoke: { type: "boolean" },
      only: { type: "string" },
      profile: { type: "boolean" },
      out: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(
      "usage: deno run -A bench/run.ts [--quick | --smoke] [--only=throughput,latency,memory,stream,profile] [--profile] [--out=PATH_WITHOUT_EXT]",
    );
    return 0;
  }
  const mode: Mode = values.smoke ? "smoke" : values.quick ? "quick" : "full";
  const only = values.only?.split(",").map((s) => s.trim()).filter((s) => s);
  const known: readonly string[] = [...SECTIONS, ...EXTRA];
  for (const s of only ?? []) {
    if (!known.includes(s)) {
      console.error(
        `Invalid --only: unknown section "${s}" (expected ${known.join(", ")})`,
      );
      return 2;
    }
  }
  const selected = (only ?? [...SECTIONS]) as Section[];
  if (values.profile && !selected.includes("profile")) {
    selected.push("profile");
  }
  const set = settings(mode);
  const started = performance.now();
  // The whole run is bounded: on overrun every child is killed.
  const deadline = setTimeout(() => {
    console.error(`bench: overran ${set.maxSeconds} s; killing everything`);
    killAll();
    Deno.exit(1);
  }, set.maxSeconds * 1000);

  const results: Results = {
    mode,
    machine: await machineInfo(),
    errors: {},
  };
  if (!(await haveWrk())) {
    for (const s of ["throughput", "profile"] as const) {
      if (!selected.includes(s)) continue;
      results.errors[s] = "wrk is not installed (apt-get install -y wrk)";
      selected.splice(selected.indexOf(s), 1);
    }
  }
  for (const section of selected) {
    console.error(`bench: ${section} (${mode})...`);
    const t0 = performance.now();
    try {
      switch (section) {
        case "throughput":
          results.throughput = await throughput(set.throughput);
          break;
        case "latency":
          results.latency = await latency(set.latency);
          break;
        case "memory": {
          // RSS moves in steps of V8's heap growth (about 1 KiB per held
          // request between two runs of the same build), so the full run
          // takes the median of three rounds and shows them all.
          const rounds: QueuedMemoryResult[] = [];
          for (let i = 0; i < set.memoryRounds; i++) {
            rounds.push(
              await queuedMemory(set.memoryCount, mode === "smoke" ? 40 : 150),
            );
          }
          rounds.sort((a, b) => a.hubBytesPerRequest - b.hubBytesPerRequest);
          results.memory = rounds[rounds.length >> 1];
          results.memoryRounds = rounds.map((r) => r.hubBytesPerRequest);
          break;
        }
        case "profile":
          results.profile = await profileHub(set.throughput);
          break;
        case "stream":
          results.stream = await stream(
            set.streamBytes,
            mode === "smoke" ? 30 : 300,
          );
          break;
      }
    } catch (error) {
      results.errors[section] = error instanceof Error
        ? error.message
        : String(error);
    }
    console.error(
      `bench: ${section} took ${round((performance.now() - t0) / 1000, 1)} s`,
    );
  }
  clearTimeout(deadline);
  results.loadAverageAtEnd = loadAverage();
  results.seconds = round((performance.now() - started) / 1000, 1);

  const md = toMarkdown(results);
  console.log(md);
  // A partial run never overwrites the full report.
  const suffix = (mode === "full" ? "" : `-${mode}`) +
    (only !== undefined || values.profile ? `-${selected.join("-")}` : "");
  const base = values.out ??
    (mode === "smoke" ? null : `${ROOT}bench/results/core${suffix}`);
  if (base !== null) {
    await Deno.mkdir(new URL("results/", import.meta.url), { recursive: true });
    await Deno.writeTextFile(`${base}.md`, md + "\n");
    await Deno.writeTextFile(
      `${base}.json`,
      JSON.stringify(results, null, 2) + "\n",
    );
    console.error(`bench: wrote ${base}.md and ${base}.json`);
  }
  // Smoke mode fails only when something did not run end to end.
  const failed = Object.keys(results.errors).length > 0 ||
    (results.memory !== undefined &&
      results.memory.answeredAfterwards !== results.memory.count) ||
    (results.stream !== undefined &&
      !(results.stream.upload.ok && results.stream.download.ok)) ||
    (results.latency !== undefined &&
      (results.latency.hub.errors > 0 || results.latency.direct.errors > 0)) ||
    (results.throughput !== undefined &&
      (results.throughput.hub.requests === 0 ||
        results.throughput.hub.non2xx > 0));
  return failed ? 1 : 0;
}

if (import.meta.main) {
  let code = 1;
  try {
    code = await main(Deno.args);
  } finally {
    killAll();
  }
  Deno.exit(code);
}
