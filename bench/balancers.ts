/**
 * What POTHEAD costs next to HAProxy and nginx, on loopback:
 *
 * 1. Overhead with a trivial handler: closed-loop `wrk` through POTHEAD (hub
 *    CLI + `worker.ts --concurrency 1` workers), HAProxy (`maxconn 1` per
 *    server), nginx (round-robin, upstream keep-alive) and directly to one
 *    worker, with the same number of worker slots; requests per second,
 *    latency percentiles and the balancer's CPU time per request.
 * 2. The overhead as a share of request time for requests of 1 to 50 ms
 *    (the job blocks its worker), at a closed-loop concurrency equal to the
 *    slots (no queueing): POTHEAD (and HAProxy) against the workers driven
 *    directly.
 * 3. Memory: the hub's RSS idle and with idle worker connections held open.
 *
 * ```sh
 * deno run -A bench/balancers.ts [--quick | --smoke] [--out DIR] [--nice N]
 * ```
 *
 * Writes `balancers.md` and `balancers.json` to `bench/results/` (a smoke
 * run writes to a temporary directory unless `--out` is given). Every child
 * runs under a hard time bound and is killed when this program exits.
 *
 * Run as `--hold HOST:PORT N` it is the memory stage's helper: it opens N
 * TCP connections to the hub's worker port, prints `Holding N connections`
 * and keeps them open until it is killed.
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  Child,
  cpuMs,
  ensureProgram,
  freePort,
  haproxyConfig,
  killAll as killSystems,
  nginxConfig,
  ROOT,
  setNiceness,
  versions,
  waitForPort,
} from "./_systems.ts";
import {
  DENO,
  killAll as killProcs,
  loadAverage,
  machineCpu,
  type MachineInfo,
  machineInfo,
  parseWrk,
  reapedChildrenCpuSeconds,
  round,
  rssKiB,
  sleep,
  spawn,
  startHub,
} from "./_util.ts";

// ------------------------------------------------------------------ the plan

type Mode = "smoke" | "quick" | "full";

/** Which system a measurement drove. */
type TargetName = "direct" | "pothead" | "haproxy" | "nginx-rr";

const LABELS: Record<TargetName, string> = {
  direct: "direct to worker(s)",
  pothead: "POTHEAD",
  haproxy: "HAProxy maxconn 1",
  "nginx-rr": "nginx round-robin",
};

interface Plan {
  mode: Mode;
  /** Worker slots of every system (processes × 1 slot). */
  slots: number;
  /** Part 1: wrk connection counts, seconds, warm-up seconds, rounds. */
  overhead: {
    connections: number[];
    threads: number;
    seconds: number;
    warmupSeconds: number;
    rounds: number;
    systems: TargetName[];
  };
  /** Part 2: request lengths (ms), seconds per run, rounds. */
  share: {
    durations: number[];
    seconds: number;
    rounds: number;
    systems: TargetName[];
    /** Seconds of the extra POTHEAD run that reads Server-Timing. */
    timingSeconds: number;
  };
  /** Part 3: idle worker connections to hold, in stages. */
  memory: { connections: number[]; settleMs: number };
  out: string | null;
  nice: number;
}

const HELP = `Overhead of POTHEAD next to HAProxy and nginx.

Usage: deno run -A bench/balancers.ts [options]

  --quick        about 2.5 minutes
  --smoke        under a minute; checks that it runs, judges nothing
  --out DIR      where balancers.md/.json go (default bench/results/;
                 a smoke run writes to a temporary directory)
  --nice N       nice value for the benchmark and all it starts (default -10
                 when root, else 0)
  --render FILE  only rewrite the .md next to a balancers.json from it
  -h, --help     this text
`;

function planFrom(args: string[]): Plan | "help" {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: "boolean" },
      smoke: { type: "boolean" },
      out: { type: "string" },
      nice: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) return "help";
  const mode: Mode = values.smoke ? "smoke" : values.quick ? "quick" : "full";
  const niceValue = values.nice === undefined
    ? (Deno.uid?.() === 0 ? -10 : 0)
    : Number(values.nice);
  if (!Number.isInteger(niceValue) || niceValue < -20 || niceValue > 19) {
    throw new RangeError(
      `Invalid --nice: expected -20..19, got "${values.nice}"`,
    );
  }
  const all: TargetName[] = ["direct", "pothead", "haproxy", "nginx-rr"];
  const base = {
    mode,
    slots: 4,
    out: values.out ??
      (mode === "smoke" ? null : join(ROOT, "bench/results")),
    nice: niceValue,
  };
  if (mode === "smoke") {
    return {
      ...base,
      overhead: {
        connections: [4],
        threads: 2,
        seconds: 1,
        warmupSeconds: 1,
        rounds: 1,
        systems: all,
      },
      share: {
        durations: [1, 50],
        seconds: 1,
        rounds: 1,
        systems: ["direct", "pothead", "haproxy"],
        timingSeconds: 1,
      },
      memory: { connections: [200], settleMs: 500 },
    };
  }
  if (mode === "quick") {
    return {
      ...base,
      overhead: {
        connections: [4, 64],
        threads: 2,
        seconds: 3,
        warmupSeconds: 1,
        rounds: 1,
        systems: all,
      },
      share: {
        durations: [1, 5, 20, 50],
        seconds: 4,
        rounds: 1,
        systems: ["direct", "pothead", "haproxy"],
        timingSeconds: 2,
      },
      memory: { connections: [1000], settleMs: 1500 },
    };
  }
  return {
    ...base,
    overhead: {
      connections: [4, 64],
      threads: 2,
      seconds: 10,
      warmupSeconds: 2,
      rounds: 2,
      systems: all,
    },
    share: {
      durations: [1, 5, 20, 50],
      seconds: 10,
      rounds: 3,
      systems: ["direct", "pothead", "haproxy"],
      timingSeconds: 5,
    },
    memory: { connections: [1000, 5000], settleMs: 2000 },
  };
}

/** Rough wall time of a plan in seconds (for the time bounds). */
function estimateSeconds(plan: Plan): number {
  const o = plan.overhead;
  const s = plan.share;
  return 30 +
    o.rounds * o.connections.length * o.systems.length *
      (o.seconds + o.warmupSeconds + 1) +
    s.systems.length * 2 +
    s.rounds * s.durations.length * s.systems.length * (s.seconds + 1) +
    s.durations.length * (s.timingSeconds + 1) +
    plan.memory.connections.length * 15 + 15;
}

function log(line: string): void {
  const t = new Date().toISOString().slice(11, 19);
  console.error(`[${t}] ${line}`);
}

// ---------------------------------------------------------------------- wrk

/** What one `wrk` process measured (latencies in microseconds). */
interface WrkRun {
  url: string;
  connections: number;
  requests: number;
  seconds: number;
  rps: number;
  meanUs: number;
  maxUs: number;
  /** Latency at percentiles 0.1, 0.2 … 99.9 (999 values), microseconds. */
  quantilesUs: number[];
  /** Socket errors (connect + read + write + timeout) and non-2xx answers. */
  socketErrors: number;
  non2xx: number;
  /** wrk's own p50/p90/p99 (ms, from `--latency`), to cross-check. */
  wrkP50: number;
  wrkP99: number;
  /** With `timing`: the hub's Server-Timing worker and queue durations, ms. */
  workerMs?: number[];
  queueMs?: number[];
}

// wrk's `done` hook: the exact mean and a fine percentile table (µs) from
// wrk's own histogram, so runs of parallel clients can be pooled.
const WRK_DONE = `  local e = summary.errors
  io.write(string.format("BENCHSUM %.0f %.0f %.0f %.0f %.0f %.0f %.3f %.0f\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write,
    e.timeout, e.status, latency.min, latency.mean, latency.max))
  local q = {}
  for k = 1, 999 do q[k] = string.format("%.0f", latency:percentile(k / 10)) end
  io.write("BENCHQ " .. table.concat(q, " ") .. "\\n")
`;

const WRK_SCRIPT = `done = function(summary, latency, requests)
${WRK_DONE}end
`;

// The same, and every response's Server-Timing from the hub (queue and
// worker durations, ms), collected per thread and printed at the end.
const WRK_TIMING_SCRIPT = `local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) wlist = {}; qlist = {} end
function response(status, headers, body)
  local st = headers["server-timing"] or headers["Server-Timing"]
  if st ~= nil then
    local w = string.match(st, "worker;dur=([%d%.]+)")
    if w ~= nil then
      wlist[#wlist + 1] = w
      qlist[#qlist + 1] = string.match(st, "queue;dur=([%d%.]+)") or "0"
    end
  end
end
done = function(summary, latency, requests)
${WRK_DONE}  for _, t in ipairs(threads) do
    io.write("BENCHW " .. table.concat(t:get("wlist"), " ") .. "\\n")
    io.write("BENCHQD " .. table.concat(t:get("qlist"), " ") .. "\\n")
  end
end
`;

let wrkScript = "";
let wrkTimingScript = "";
const wrkChildren = new Set<Deno.ChildProcess>();
globalThis.addEventListener("unload", () => {
  for (const c of wrkChildren) {
    try {
      c.kill("SIGKILL");
    } catch {
      // gone
    }
  }
});

/**
 * Runs `wrk` for `seconds` under `timeout -s KILL` (killed 20 s past its
 * duration, and on our exit).
 */
async function wrk(
  url: string,
  options: {
    threads: number;
    connections: number;
    seconds: number;
    timing?: boolean;
  },
): Promise<WrkRun> {
  const child = new Deno.Command("timeout", {
    args: [
      "-s",
      "KILL",
      String(options.seconds + 20),
      "wrk",
      `-t${options.threads}`,
      `-c${options.connections}`,
      `-d${options.seconds}s`,
      "--timeout",
      "10s",
      "--latency",
      "-s",
      options.timing ? wrkTimingScript : wrkScript,
      url,
    ],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  wrkChildren.add(child);
  let out: Deno.CommandOutput;
  try {
    out = await child.output();
  } finally {
    wrkChildren.delete(child);
  }
  const text = new TextDecoder().decode(out.stdout);
  const sum = text.match(/^BENCHSUM (.*)$/m);
  const q = text.match(/^BENCHQ (.*)$/m);
  if (!out.success || sum === null || q === null) {
    throw new Error(
      `wrk failed (exit ${out.code}) against ${url}: ${text.slice(-2000)} ${
        new TextDecoder().decode(out.stderr).slice(-2000)
      }`,
    );
  }
  const [requests, durationUs, sockErr, timeouts, non2xx, , mean, max] = sum[1]
    .trim().split(/\s+/).map(Number);
  const std = parseWrk(text);
  const seconds = durationUs / 1e6;
  const numbers = (tag: string) =>
    [...text.matchAll(new RegExp(`^${tag} ?(.*)$`, "gm"))].flatMap((m) =>
      m[1].trim() === "" ? [] : m[1].trim().split(/\s+/).map(Number)
    );
  return {
    url,
    connections: options.connections,
    requests,
    seconds,
    rps: requests / seconds,
    meanUs: mean,
    maxUs: max,
    quantilesUs: q[1].trim().split(/\s+/).map(Number),
    socketErrors: sockErr + timeouts,
    non2xx,
    wrkP50: std.p50,
    wrkP99: std.p99,
    ...(options.timing
      ? { workerMs: numbers("BENCHW"), queueMs: numbers("BENCHQD") }
      : {}),
  };
}

/** Latency summary of pooled runs, in milliseconds. */
interface Latency {
  requests: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

/**
 * Pools runs (of parallel clients or repeated rounds): the mean exactly
 * (weighted by requests), percentiles from every run's 999-point percentile
 * table weighted by its request count (exact to 0.1 percentile points).
 */
function pool(runs: WrkRun[]): Latency {
  const requests = runs.reduce((a, r) => a + r.requests, 0);
  const points: [number, number][] = [];
  for (const r of runs) {
    const w = r.requests / r.quantilesUs.length;
    for (const v of r.quantilesUs) points.push([v, w]);
  }
  points.sort((a, b) => a[0] - b[0]);
  const total = points.reduce((a, p) => a + p[1], 0);
  const at = (p: number) => {
    let acc = 0;
    for (const [v, w] of points) {
      acc += w;
      if (acc >= (p / 100) * total - 1e-9) return v / 1000;
    }
    return NaN;
  };
  return {
    requests,
    mean: requests === 0
      ? NaN
      : runs.reduce((a, r) => a + r.meanUs * r.requests, 0) / requests / 1000,
    p50: at(50),
    p90: at(90),
    p99: at(99),
    max: Math.max(...runs.map((r) => r.maxUs)) / 1000,
  };
}

// ----------------------------------------------------------------- targets

/** A system as the load generator sees it. */
interface Target {
  name: TargetName;
  /** One URL per worker slot (direct: each worker's own; else the same). */
  urls: string[];
  balancerPids: number[];
  workerPids: number[];
}

function sumCpuMs(pids: number[]): number {
  return pids.reduce((a, p) => a + cpuMs(p), 0);
}

/** CPU and machine readings around a measurement. */
function cpuMark(target: Target) {
  return {
    balancer: sumCpuMs(target.balancerPids),
    workers: sumCpuMs(target.workerPids),
    wrk: reapedChildrenCpuSeconds() * 1000,
    machine: machineCpu(),
  };
}

interface CpuUse {
  /** CPU ms of the balancer process(es), the workers and wrk. */
  balancerMs: number;
  workersMs: number;
  wrkMs: number;
  /** Busy share of the whole machine (all cores, every process), %. */
  machineBusyPct: number;
}

function cpuSince(target: Target, m: ReturnType<typeof cpuMark>): CpuUse {
  const now = cpuMark(target);
  const total = now.machine.total - m.machine.total;
  return {
    balancerMs: now.balancer - m.balancer,
    workersMs: now.workers - m.workers,
    wrkMs: now.wrk - m.wrk,
    machineBusyPct: total > 0
      ? (100 * (now.machine.busy - m.machine.busy)) / total
      : NaN,
  };
}

// ------------------------------------------------------- part 1: overhead

interface OverheadRun {
  system: TargetName;
  connections: number;
  round: number;
  run: WrkRun;
  cpu: CpuUse;
}

interface OverheadRow {
  system: TargetName;
  connections: number;
  requests: number;
  rps: number;
  latency: Latency;
  balancerUsPerRequest: number;
  workersUsPerRequest: number;
  wrkUsPerRequest: number;
  machineBusyPct: number;
  errors: number;
}

function rotate<T>(list: T[], by: number): T[] {
  const k = ((by % list.length) + list.length) % list.length;
  return [...list.slice(k), ...list.slice(0, k)];
}

async function measureOverhead(
  plan: Plan,
  targets: Map<TargetName, Target>,
): Promise<OverheadRun[]> {
  const o = plan.overhead;
  const runs: OverheadRun[] = [];
  let turn = 0;
  for (let pass = 0; pass < o.rounds; pass++) {
    for (const connections of o.connections) {
      for (const name of rotate(o.systems, turn++)) {
        const target = targets.get(name);
        if (target === undefined) continue;
        const opts = {
          threads: Math.min(o.threads, connections),
          connections,
        };
        await wrk(target.urls[0], { ...opts, seconds: o.warmupSeconds });
        const mark = cpuMark(target);
        const run = await wrk(target.urls[0], { ...opts, seconds: o.seconds });
        const cpu = cpuSince(target, mark);
        runs.push({ system: name, connections, round: pass, run, cpu });
        log(
          `overhead ${LABELS[name]} c=${connections} round ${pass + 1}: ${
            Math.round(run.rps)
          } req/s, p50 ${(run.quantilesUs[499] / 1000).toFixed(3)} ms, p99 ${
            (run.quantilesUs[989] / 1000).toFixed(3)
          } ms, balancer ${
            round((cpu.balancerMs * 1000) / run.requests, 1)
          } µs/req`,
        );
      }
    }
  }
  return runs;
}

function overheadRows(plan: Plan, runs: OverheadRun[]): OverheadRow[] {
  const rows: OverheadRow[] = [];
  for (const connections of plan.overhead.connections) {
    for (const system of plan.overhead.systems) {
      const mine = runs.filter((r) =>
        r.system === system && r.connections === connections
      );
      if (mine.length === 0) continue;
      const requests = mine.reduce((a, r) => a + r.run.requests, 0);
      const seconds = mine.reduce((a, r) => a + r.run.seconds, 0);
      const per = (f: (c: CpuUse) => number) =>
        (mine.reduce((a, r) => a + f(r.cpu), 0) * 1000) / requests;
      rows.push({
        system,
        connections,
        requests,
        rps: requests / seconds,
        latency: pool(mine.map((r) => r.run)),
        balancerUsPerRequest: per((c) => c.balancerMs),
        workersUsPerRequest: per((c) => c.workersMs),
        wrkUsPerRequest: per((c) => c.wrkMs),
        machineBusyPct: mine.reduce((a, r) => a + r.cpu.machineBusyPct, 0) /
          mine.length,
        errors: mine.reduce(
          (a, r) => a + r.run.socketErrors + r.run.non2xx,
          0,
        ),
      });
    }
  }
  return rows;
}

// -------------------------------------------------- part 2: share of time

interface ShareRun {
  system: TargetName;
  ms: number;
  round: number;
  /** One wrk per slot, each `-t1 -c1`. */
  clients: WrkRun[];
  latency: Latency;
  cpu: CpuUse;
}

interface ShareRow {
  system: TargetName;
  ms: number;
  latency: Latency;
  rps: number;
  balancerUsPerRequest: number;
  errors: number;
  /** Added over direct (ms), and as a share of direct (%), by mean and median. */
  addedMeanMs: number;
  addedMedianMs: number;
  shareMeanPct: number;
  shareMedianPct: number;
  /** The mean share of each round (round-by-round spread). */
  roundSharesPct: number[];
}

async function driveClosedLoop(
  target: Target,
  ms: number,
  seconds: number,
  timing = false,
): Promise<{ clients: WrkRun[]; cpu: CpuUse }> {
  const mark = cpuMark(target);
  const clients = await Promise.all(
    target.urls.map((url) =>
      wrk(`${url}?ms=${ms}`, { threads: 1, connections: 1, seconds, timing })
    ),
  );
  return { clients, cpu: cpuSince(target, mark) };
}

/** POTHEAD's latency split by the hub's Server-Timing, at one length. */
interface TimingRun {
  ms: number;
  requests: number;
  /** Consumer-observed latency (wrk), ms. */
  totalMean: number;
  totalMedian: number;
  /** `worker;dur`: hub sends the request → response head from the worker. */
  workerMean: number;
  workerMedian: number;
  /** `queue;dur`: time in the hub's queue. */
  queueMean: number;
  queueMedian: number;
}

function mean(xs: number[]): number {
  return xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length;
}

function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)];
}

async function measureTiming(
  target: Target,
  ms: number,
  seconds: number,
): Promise<TimingRun> {
  const { clients } = await driveClosedLoop(target, ms, seconds, true);
  const total = pool(clients);
  const worker = clients.flatMap((c) => c.workerMs ?? []);
  const queue = clients.flatMap((c) => c.queueMs ?? []);
  return {
    ms,
    requests: total.requests,
    totalMean: total.mean,
    totalMedian: total.p50,
    workerMean: mean(worker),
    workerMedian: median(worker),
    queueMean: mean(queue),
    queueMedian: median(queue),
  };
}

async function measureShare(
  plan: Plan,
  targets: Map<TargetName, Target>,
): Promise<{ runs: ShareRun[]; timing: TimingRun[] }> {
  const s = plan.share;
  const names = s.systems.filter((n) => targets.has(n));
  // Warm-up: connections, JIT and the workers' timer-lateness estimate.
  for (const name of names) {
    await driveClosedLoop(targets.get(name)!, 1, 1);
  }
  const runs: ShareRun[] = [];
  const timing: TimingRun[] = [];
  let turn = 0;
  for (const ms of s.durations) {
    for (let pass = 0; pass < s.rounds; pass++) {
      for (const name of rotate(names, turn++)) {
        const { clients, cpu } = await driveClosedLoop(
          targets.get(name)!,
          ms,
          s.seconds,
        );
        const latency = pool(clients);
        runs.push({ system: name, ms, round: pass, clients, latency, cpu });
        log(
          `share ${ms} ms ${LABELS[name]} round ${pass + 1}: mean ${
            latency.mean.toFixed(3)
          } ms, median ${latency.p50.toFixed(3)} ms (${latency.requests} req)`,
        );
      }
    }
    const pothead = targets.get("pothead");
    if (pothead !== undefined && s.timingSeconds > 0) {
      const t = await measureTiming(pothead, ms, s.timingSeconds);
      timing.push(t);
      log(
        `timing ${ms} ms POTHEAD: total median ${
          t.totalMedian.toFixed(3)
        } ms, worker;dur median ${
          t.workerMedian.toFixed(3)
        } ms, queue;dur median ${
          t.queueMedian.toFixed(3)
        } ms (${t.requests} req)`,
      );
    }
  }
  return { runs, timing };
}

function shareRows(plan: Plan, runs: ShareRun[]): ShareRow[] {
  const rows: ShareRow[] = [];
  for (const ms of plan.share.durations) {
    const of = (system: TargetName) =>
      runs.filter((r) => r.system === system && r.ms === ms);
    const direct = pool(of("direct").flatMap((r) => r.clients));
    for (const system of plan.share.systems) {
      const mine = of(system);
      if (mine.length === 0) continue;
      const clients = mine.flatMap((r) => r.clients);
      const latency = pool(clients);
      const seconds = mine.reduce((a, r) => a + r.clients[0].seconds, 0);
      const roundSharesPct = mine.map((r) => {
        const d = of("direct").find((x) => x.round === r.round);
        return d === undefined
          ? NaN
          : (100 * (r.latency.mean - d.latency.mean)) / d.latency.mean;
      });
      rows.push({
        system,
        ms,
        latency,
        rps: latency.requests / seconds,
        balancerUsPerRequest: (mine.reduce((a, r) =>
          a + r.cpu.balancerMs, 0) * 1000) /
          latency.requests,
        errors: clients.reduce((a, c) => a + c.socketErrors + c.non2xx, 0),
        addedMeanMs: latency.mean - direct.mean,
        addedMedianMs: latency.p50 - direct.p50,
        shareMeanPct: (100 * (latency.mean - direct.mean)) / direct.mean,
        shareMedianPct: (100 * (latency.p50 - direct.p50)) / direct.p50,
        roundSharesPct,
      });
    }
  }
  return rows;
}

/**
 * The smallest request length from which on the added share stays under 2%
 * (by mean and by median, at that length and every longer one measured).
 */
function smallestUnder2(rows: ShareRow[], system: TargetName): number | null {
  const mine = rows.filter((r) => r.system === system).sort((a, b) =>
    b.ms - a.ms
  );
  let smallest: number | null = null;
  for (const r of mine) {
    if (!(r.shareMeanPct < 2 && r.shareMedianPct < 2)) break;
    smallest = r.ms;
  }
  return smallest;
}

// ---------------------------------------------------------- part 3: memory

interface MemoryResult {
  /** Hub RSS idle (no worker connected), KiB. */
  idleKiB: number;
  stages: {
    connections: number;
    /** Slots the hub counted (from its /readyz). */
    slots: number;
    rssKiB: number;
    bytesPerConnection: number;
  }[];
  /** Hub RSS after the last helper closed its connections, KiB. */
  afterCloseKiB: number;
  slotsAfterClose: number;
  fdLimitNote: string;
}

async function readySlots(adminPort: number): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${adminPort}/readyz`, {
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  const m = text.match(/(\d+) worker slots?/);
  return m === null ? NaN : Number(m[1]);
}

async function waitSlots(
  adminPort: number,
  want: (n: number) => boolean,
  ms: number,
): Promise<number> {
  const deadline = performance.now() + ms;
  let n = NaN;
  while (performance.now() < deadline) {
    n = await readySlots(adminPort);
    if (want(n)) return n;
    await sleep(200);
  }
  return n;
}

/** Median of a few RSS samples of `pid` over `ms`, KiB. */
async function settledRss(pid: number, ms: number): Promise<number> {
  await sleep(ms);
  const samples: number[] = [];
  for (let i = 0; i < 5; i++) {
    samples.push(rssKiB(pid));
    await sleep(100);
  }
  samples.sort((a, b) => a - b);
  return samples[2];
}

async function measureMemory(
  plan: Plan,
  maxSeconds: number,
): Promise<MemoryResult> {
  const hub = await startHub({
    args: ["--admin-port", "0", "--ready-min-slots", "1"],
    fdLimit: 65536,
    maxSeconds,
  });
  try {
    const admin = Number(
      (await hub.proc.waitFor(
        /Listening on http:\/\/.*:(\d+)\/ \(admin\)/,
        30_000,
      ))[1],
    );
    const pid = hub.proc.pid;
    const fdLimit = Deno.readTextFileSync(`/proc/${pid}/limits`).match(
      /^Max open files\s+(\d+)/m,
    )?.[1] ?? "?";
    const idleKiB = await settledRss(pid, plan.memory.settleMs);
    log(`memory: hub idle RSS ${(idleKiB / 1024).toFixed(1)} MiB`);
    const stages: MemoryResult["stages"] = [];
    let slotsAfterClose = NaN;
    for (const n of plan.memory.connections) {
      const holder = await spawn([
        DENO,
        "run",
        "-A",
        "bench/balancers.ts",
        "--hold",
        `127.0.0.1:${hub.workerPort}`,
        String(n),
      ], { name: "connection holder", maxSeconds, fdLimit: 65536 });
      try {
        await holder.waitFor(/^Holding \d+ connections/, 60_000);
        // Plain workers count after the hub's 50 ms handshake wait.
        const slots = await waitSlots(admin, (s) => s >= n, 30_000);
        const rss = await settledRss(pid, plan.memory.settleMs);
        stages.push({
          connections: n,
          slots,
          rssKiB: rss,
          bytesPerConnection: ((rss - idleKiB) * 1024) / n,
        });
        log(
          `memory: ${n} idle connections (${slots} slots): RSS ${
            (rss / 1024).toFixed(1)
          } MiB, ${Math.round(((rss - idleKiB) * 1024) / n)} B per connection`,
        );
      } finally {
        await holder.stop("SIGKILL");
      }
      slotsAfterClose = await waitSlots(admin, (s) => s === 0, 30_000);
    }
    const afterCloseKiB = await settledRss(pid, plan.memory.settleMs);
    return {
      idleKiB,
      stages,
      afterCloseKiB,
      slotsAfterClose,
      fdLimitNote: `hub and helper started with \`ulimit -n 65536\` ` +
        `(falling back to the hard limit); the hub's limit was ${fdLimit}`,
    };
  } finally {
    await hub.proc.stop();
  }
}

/** The `--hold` helper: opens `n` connections and keeps them. */
async function hold(address: string, n: number): Promise<number> {
  const [hostname, port] = [
    address.slice(0, address.lastIndexOf(":")),
    Number(address.slice(address.lastIndexOf(":") + 1)),
  ];
  const conns: Deno.TcpConn[] = [];
  for (let i = 0; i < n; i += 50) {
    const batch = Math.min(50, n - i);
    conns.push(
      ...await Promise.all(
        Array.from({ length: batch }, () => Deno.connect({ hostname, port })),
      ),
    );
  }
  console.log(`Holding ${conns.length} connections`);
  // Until killed (the parent bounds our life); at most an hour.
  await sleep(3_600_000);
  for (const c of conns) c.close();
  return 0;
}

// ------------------------------------------------------------------ report

interface Report {
  mode: Mode;
  date: string;
  elapsedS: number;
  machine: MachineInfo;
  versions: Record<string, string>;
  loadAverageAtEnd: number;
  nice: number;
  plan: Plan;
  setup: string[];
  skipped: Record<string, string>;
  overhead: { rows: OverheadRow[]; runs: OverheadRun[] };
  share: {
    rows: ShareRow[];
    runs: Omit<ShareRun, "clients">[];
    smallestUnder2Pct: Partial<Record<TargetName, number | null>>;
    timing: TimingRun[];
  };
  memory: MemoryResult | null;
  core: unknown;
}

const f = (n: number, d = 2) => Number.isFinite(n) ? n.toFixed(d) : "n/a";
const signed = (n: number, d = 2) => n >= 0 ? `+${f(n, d)}` : `−${f(-n, d)}`;
const MiB = (kib: number) => `${(kib / 1024).toFixed(1)} MiB`;

function coreReference(): {
  date: string;
  mode: string;
  memory: Record<string, number>;
  stream: Record<string, Record<string, number | string | boolean>>;
} | null {
  try {
    const core = JSON.parse(
      Deno.readTextFileSync(join(ROOT, "bench/results/core.json")),
    );
    return {
      date: core.machine?.date ?? "?",
      mode: core.mode ?? "?",
      memory: core.memory,
      stream: core.stream,
    };
  } catch {
    return null;
  }
}

/** The headline figures, as markdown lines. */
function summary(r: Report): string[] {
  const L = ["## Summary", ""];
  for (const c of r.plan.overhead.connections) {
    const row = (sys: TargetName) =>
      r.overhead.rows.find((x) => x.system === sys && x.connections === c);
    const cells = (["pothead", "haproxy", "nginx-rr", "direct"] as TargetName[])
      .map((sys) => [sys, row(sys)] as const)
      .filter(([, x]) => x !== undefined)
      .map(([sys, x]) =>
        `${LABELS[sys]} ${Math.round(x!.rps)} req/s (p50 ${
          f(x!.latency.p50, 3)
        } ms${
          sys === "direct" ? "" : `, ${f(x!.balancerUsPerRequest, 0)} µs CPU`
        })`
      );
    L.push(
      `- Trivial handler, ${c} connections${
        c <= r.plan.slots ? " (no queueing)" : " (requests queue)"
      }: ${cells.join("; ")}. µs CPU = the balancer process's CPU per request.`,
    );
  }
  const pr = r.share.rows.filter((x) => x.system === "pothead");
  if (pr.length > 0) {
    const s = r.share.smallestUnder2Pct.pothead;
    const hs = r.share.smallestUnder2Pct.haproxy;
    L.push(
      `- Requests of ${
        pr.map((x) => x.ms).join(", ")
      } ms, no queueing: POTHEAD adds ${
        pr.map((x) => `${f(x.addedMeanMs, 2)} ms (${f(x.shareMeanPct, 1)}%)`)
          .join(", ")
      } to the mean latency over direct; under 2% from: **${
        s === null || s === undefined ? "none of these lengths" : `${s} ms`
      }**${
        hs === undefined
          ? ""
          : ` (HAProxy: ${hs === null ? "none" : `${hs} ms`})`
      }. The original README advised against POTHEAD under 50 ms.`,
    );
  }
  const m = r.memory;
  if (m !== null && m.stages.length > 0) {
    L.push(
      `- Hub RSS idle ${MiB(m.idleKiB)}; ${
        m.stages.map((st) =>
          `with ${st.connections} idle worker connections ${MiB(st.rssKiB)} (${
            f(st.bytesPerConnection / 1024, 1)
          } KiB each)`
        ).join(", ")
      }.`,
    );
  }
  L.push("");
  return L;
}

function markdown(r: Report): string {
  const L: string[] = [];
  const p = r.plan;
  L.push(
    `# POTHEAD next to HAProxy and nginx: overhead and memory${
      r.mode === "full" ? "" : ` (${r.mode})`
    }`,
  );
  L.push("");
  L.push(
    `Generated by \`deno run -A bench/balancers.ts${
      r.mode === "full" ? "" : ` --${r.mode}`
    }\` on ${r.date} in ${r.elapsedS} s.`,
  );
  L.push("");
  L.push(`- Machine: \`${r.machine.uname}\``);
  L.push(
    `- CPU: ${r.machine.cpuModel}, ${r.machine.cpus} cores; load average (1 min) ${r.machine.loadAverageAtStart} at start, ${r.loadAverageAtEnd} at end (a shared machine; other jobs may have run alongside)`,
  );
  L.push(
    `- ${
      r.versions.pothead ? `POTHEAD build ${r.versions.pothead}; ` : ""
    }${r.versions.deno}; ${r.versions.haproxy}; ${r.versions.nginx}; ${r.machine.wrk}`,
  );
  L.push(
    `- Every process of the benchmark (client, balancers, workers) ran at nice ${r.nice}, all systems alike.`,
  );
  for (const s of r.setup) L.push(`- ${s}`);
  for (const [k, v] of Object.entries(r.skipped)) {
    L.push(`- Skipped ${k}: ${v}`);
  }
  L.push("");

  L.push(...summary(r));
  L.push("## 1. Overhead with a trivial handler (closed loop, wrk)");
  L.push("");
  L.push(
    `${p.slots} worker slots behind every balancer; \`wrk -t${p.overhead.threads} -cC -d${p.overhead.seconds}s --latency\` after a ${p.overhead.warmupSeconds} s warm-up, ${p.overhead.rounds} round(s), systems in rotating order. CPU per request is the CPU time (user + system, all threads, from \`/proc/<pid>/stat\`) over the measured run divided by the requests answered.`,
  );
  L.push("");
  L.push(
    "| system | C | req/s | mean ms | p50 ms | p90 ms | p99 ms | balancer CPU µs/req | worker CPU µs/req | wrk CPU µs/req | machine busy | errors |",
  );
  L.push("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
  for (const row of r.overhead.rows) {
    L.push(
      `| ${LABELS[row.system]} | ${row.connections} | ${
        Math.round(row.rps)
      } | ${f(row.latency.mean, 3)} | ${f(row.latency.p50, 3)} | ${
        f(row.latency.p90, 3)
      } | ${f(row.latency.p99, 3)} | ${
        row.system === "direct" ? "—" : f(row.balancerUsPerRequest, 1)
      } | ${f(row.workersUsPerRequest, 1)} | ${f(row.wrkUsPerRequest, 1)} | ${
        f(row.machineBusyPct, 0)
      }% | ${row.errors} |`,
    );
  }
  L.push("");
  const ov = (sys: TargetName, c: number) =>
    r.overhead.rows.find((x) => x.system === sys && x.connections === c);
  for (const c of p.overhead.connections) {
    const ph = ov("pothead", c);
    const parts: string[] = [];
    for (const other of ["direct", "haproxy", "nginx-rr"] as TargetName[]) {
      const o = ov(other, c);
      if (ph && o) {
        parts.push(
          `${f(ph.rps / o.rps, 2)}× the req/s of ${LABELS[other]} (p50 ${
            signed(ph.latency.p50 - o.latency.p50, 3)
          } ms)`,
        );
      }
    }
    if (parts.length > 0) {
      L.push(`- C=${c}: POTHEAD reached ${parts.join("; ")}.`);
    }
  }
  L.push("");

  L.push("## 2. Overhead as a share of request time");
  L.push("");
  L.push(
    `Requests of N ms (\`?ms=N\`: the job blocks its worker for N ms, see above). Closed loop at concurrency ${p.slots} = the slots, so nothing queues: ${p.slots} \`wrk -t1 -c1 -d${p.share.seconds}s\` clients at once. POTHEAD and HAProxy: all ${p.slots} clients to the balancer; direct: client i to worker i, the same one-at-a-time job program behind no balancer. ${p.share.rounds} round(s) per length, systems in rotating order; the mean is exact, the median pooled from each client's 0.1%-step percentile table. Share = (system − direct) / direct.`,
  );
  L.push("");
  L.push(
    "| request | system | mean ms | median ms | p90 ms | p99 ms | added mean ms | added median ms | share (mean) | share (median) | per-round share (mean) | balancer CPU µs/req | req/s | errors |",
  );
  L.push(
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
  );
  for (const row of r.share.rows) {
    const isDirect = row.system === "direct";
    L.push(
      `| ${row.ms} ms | ${LABELS[row.system]} | ${f(row.latency.mean, 3)} | ${
        f(row.latency.p50, 3)
      } | ${f(row.latency.p90, 3)} | ${f(row.latency.p99, 3)} | ${
        isDirect ? "—" : f(row.addedMeanMs, 3)
      } | ${isDirect ? "—" : f(row.addedMedianMs, 3)} | ${
        isDirect ? "—" : `${f(row.shareMeanPct, 2)}%`
      } | ${isDirect ? "—" : `${f(row.shareMedianPct, 2)}%`} | ${
        isDirect ? "—" : row.roundSharesPct.map((x) => `${f(x, 2)}%`).join(
          ", ",
        )
      } | ${isDirect ? "—" : f(row.balancerUsPerRequest, 1)} | ${
        f(row.rps, 0)
      } | ${row.errors} |`,
    );
  }
  L.push("");
  const pr = r.share.rows.filter((x) => x.system === "pothead");
  const smallest = r.share.smallestUnder2Pct.pothead;
  const added = pr.map((x) => x.addedMeanMs).filter(Number.isFinite);
  const medAdded = added.length === 0
    ? NaN
    : [...added].sort((a, b) => a - b)[Math.floor(added.length / 2)];
  L.push(
    `- **Smallest request length measured from which on POTHEAD adds under 2% (by mean and by median, at it and every longer length): ${
      smallest === null || smallest === undefined
        ? "none of those measured"
        : `${smallest} ms`
    }.** POTHEAD added ${
      pr.map((x) => `${f(x.addedMeanMs, 3)} ms at ${x.ms} ms`).join(", ")
    } to the mean latency. At the median of those (${
      f(medAdded, 3)
    } ms) the added time is 2% of a request of about ${
      f(medAdded / 0.02, 0)
    } ms.`,
  );
  const hs = r.share.smallestUnder2Pct.haproxy;
  if (hs !== undefined) {
    L.push(
      `- HAProxy, for comparison: under 2% from ${
        hs === null ? "none of those measured" : `${hs} ms`
      }.`,
    );
  }
  L.push(
    '- The original README advised: "it\'s not recommended to use POTHEAD for requests with less than 50ms of average execution time" — because its workers reconnected (`Connection: close`) for every request. This POTHEAD keeps the worker link alive between requests; the rows above show what it costs instead.',
  );
  L.push(
    `- Not measured here: nginx round-robin, because at a closed loop of ${p.slots} it can send two requests to one worker while another is idle, so its latency includes queueing, not only forwarding.`,
  );
  L.push("");

  const timing = r.share.timing;
  if (timing.length > 0) {
    L.push("### Where POTHEAD's added time goes");
    L.push("");
    L.push(
      `One more POTHEAD run per length (${p.share.timingSeconds} s, the same ${p.slots} clients) whose wrk reads each response's \`Server-Timing\` from the hub: \`worker;dur\` runs from the hub sending the request down the worker link to the worker's response head arriving, \`queue;dur\` is the time in the hub's queue. By means: worker link beyond direct = worker;dur − the direct round trip (wrk → Deno.serve → wrk, same job); hub's consumer side = total − worker;dur − queue;dur (the consumer's HTTP connection to the hub, dispatch and relaying the body).`,
    );
    L.push("");
    L.push(
      "| request | direct mean (median) ms | POTHEAD total mean (median) ms | worker;dur mean (median) ms | queue;dur mean (median) ms | worker link beyond direct ms | hub's consumer side ms |",
    );
    L.push("|---:|---:|---:|---:|---:|---:|---:|");
    for (const t of timing) {
      const d = r.share.rows.find((x) =>
        x.system === "direct" && x.ms === t.ms
      );
      L.push(
        `| ${t.ms} ms | ${
          d ? `${f(d.latency.mean, 3)} (${f(d.latency.p50, 3)})` : "n/a"
        } | ${f(t.totalMean, 3)} (${f(t.totalMedian, 3)}) | ${
          f(t.workerMean, 3)
        } (${f(t.workerMedian, 3)}) | ${f(t.queueMean, 3)} (${
          f(t.queueMedian, 3)
        }) | ${d ? f(t.workerMean - d.latency.mean, 3) : "n/a"} | ${
          f(t.totalMean - t.workerMean - t.queueMean, 3)
        } |`,
      );
    }
    L.push("");
  }
  L.push("## 3. Memory of the hub");
  L.push("");
  const m = r.memory;
  if (m === null) {
    L.push("Not measured.");
  } else {
    L.push(
      `The hub CLI (\`hub.ts\`, with \`--admin-port\` to count slots via \`/readyz\`) on its own; a helper process opens raw TCP connections to the worker port and sends nothing, so after the hub's 50 ms handshake wait each counts as an idle plain worker slot. RSS is VmRSS from \`/proc/<pid>/status\`, the median of 5 samples after ${p.memory.settleMs} ms of settling; ${m.fdLimitNote}.`,
    );
    L.push("");
    L.push("| state | slots counted | hub RSS | RSS per idle connection |");
    L.push("|---|---:|---:|---:|");
    L.push(`| idle, no workers | 0 | ${MiB(m.idleKiB)} | — |`);
    for (const s of m.stages) {
      L.push(
        `| ${s.connections} idle worker connections | ${s.slots} | ${
          MiB(s.rssKiB)
        } | ${Math.round(s.bytesPerConnection)} B (${
          f(s.bytesPerConnection / 1024, 1)
        } KiB) |`,
      );
    }
    L.push(
      `| after they closed | ${m.slotsAfterClose} | ${
        MiB(m.afterCloseKiB)
      } | — |`,
    );
    L.push("");
  }
  const core = r.core as ReturnType<typeof coreReference>;
  if (core !== null && core.memory && core.stream) {
    const cm = core.memory;
    const up = core.stream.upload ?? {};
    L.push(
      `From the core benchmark (\`bench/results/core.md\`, ${core.mode} run of ${core.date}; not re-measured here): hub RSS idle ${
        MiB(Number(cm.hubIdleKiB))
      } → ${
        MiB(Number(cm.hubQueuedKiB))
      } with ${cm.count} queued requests (${cm.hubTotalBytesPerRequest} B per queued request, of which ${cm.hubBytesPerRequest} B beyond what \`Deno.serve\` itself needs to hold a request); streaming a ${
        Math.round(Number(up.bytes) / 2 ** 20)
      } MiB upload, hub peak RSS ${
        MiB(Number(up.hubPeakKernelKiB))
      } (${up.mbPerSecond} MB/s).`,
    );
    L.push("");
  }

  L.push("## What limits these figures");
  L.push("");
  const busy = r.overhead.rows.map((x) => x.machineBusyPct).filter(
    Number.isFinite,
  );
  L.push(
    `Everything — wrk, the balancer, ${p.slots} worker processes (and the idle processes of the other systems) — shares ${r.machine.cpus} cores of one virtual machine, which other jobs also used (load average ${r.machine.loadAverageAtStart} at start, ${r.loadAverageAtEnd} at end). With the trivial handler the machine was ${
      busy.length
        ? `${f(Math.min(...busy), 0)}–${f(Math.max(...busy), 0)}%`
        : "?"
    } busy, so requests per second here measure how much CPU each system spends per request (balancer + workers + wrk, all on the same 2 cores) rather than the ceiling of any balancer; the CPU-per-request columns are the more portable figures. POTHEAD pays on both sides of the worker link: the hub (one JavaScript event loop, which frames the worker link's HTTP/1.1 in JavaScript) and each worker, whose default engine relays the hub's connection to a private Deno.serve (one more loopback hop and event-loop turn per request), where HAProxy and nginx are C and their backends are that Deno.serve alone. Latencies at low concurrency are mostly process wake-ups on the loopback, so they move with whatever else runs on the machine; rounds of the same cell differ by up to a few tenths of a millisecond, which is the resolution of the shares (at 50 ms, 0.1 ms is 0.2%). The job's Atomics.wait overshoots by about 0.1 ms; the job corrects for the mean, and since direct and balanced runs use the same job, the overshoot is in both. RSS per connection counts the hub's heap and buffers only, not kernel socket memory, and includes whatever garbage V8 had not yet collected when it was sampled.`,
  );
  L.push("");
  return L.join("\n");
}

// -------------------------------------------------------------------- main

// The job every worker of this benchmark runs, written to a temporary file
// and loaded by `bench/workers/serve.ts` (plain Deno.serve) and `worker.ts`
// alike. Without `ms` it answers at once (the trivial handler). With
// `?ms=N` it blocks its thread for N ms with Atomics.wait, as a synchronous
// job would, without using CPU; it learns the wait's mean overshoot and asks
// for that much less, so the mean job length matches the request. (A timer
// cannot do this: setTimeout fires about a millisecond late here, so the
// queueing benchmark's timer has to spin out jobs that short.)
const JOB_SOURCE = `const cell = new Int32Array(new SharedArrayBuffer(4));
const OK = new TextEncoder().encode("ok\\n");
let overshoot = 0.1;

export default function handler(request: Request): Response {
  const ms = Number(new URL(request.url).searchParams.get("ms") ?? "0");
  if (!(ms >= 0 && ms <= 60_000)) {
    return new Response("invalid ms\\n", { status: 400 });
  }
  if (ms > 0) {
    const ask = Math.max(0, ms - overshoot);
    const t0 = performance.now();
    Atomics.wait(cell, 0, 0, ask);
    const late = performance.now() - t0 - ask;
    overshoot += 0.05 * (Math.min(late, 5) - overshoot);
  }
  return new Response(OK, { headers: { "content-type": "text/plain" } });
}
`;

const STARTUP_MS = 30_000;

/** Every system, started; `stop()` ends all their processes. */
interface Running {
  targets: Map<TargetName, Target>;
  stop(): Promise<void>;
}

/**
 * Starts the backends (plain Deno.serve, one per slot), POTHEAD (hub CLI and
 * one `worker.ts --concurrency 1` per slot), HAProxy and nginx in front of
 * the backends. Direct runs go to the backends themselves.
 */
async function startAll(
  plan: Plan,
  dir: string,
  skipped: Record<string, string>,
  maxSeconds: number,
): Promise<Running> {
  const children: Child[] = [];
  const stop = async () => {
    await Promise.all(children.map((c) => c.stop()));
  };
  const child = (name: string, cmd: string, args: string[]) => {
    const c = new Child(name, cmd, args, { maxSeconds });
    children.push(c);
    return c;
  };
  try {
    const job = join(dir, "job.ts");
    await Deno.writeTextFile(job, JOB_SOURCE);
    const backends = Array.from(
      { length: plan.slots },
      (_, i) =>
        child(`backend ${i}`, DENO, [
          "run",
          "--allow-net",
          "--allow-read",
          "bench/workers/serve.ts",
          job,
        ]),
    );
    const ports: number[] = [];
    for (const b of backends) {
      const m = await b.waitFor(
        /Listening on http:\/\/[^:]+:(\d+)\//,
        STARTUP_MS,
      );
      ports.push(Number(m[1]));
    }
    const targets = new Map<TargetName, Target>();
    const backendPids = backends.map((b) => b.pid);
    targets.set("direct", {
      name: "direct",
      urls: ports.map((p) => `http://127.0.0.1:${p}/`),
      balancerPids: [],
      workerPids: backendPids,
    });

    // As `deno task start` and `deno task worker` run them.
    const hub = child("POTHEAD hub", DENO, [
      "run",
      "--unstable-no-legacy-abort",
      "--allow-net",
      "--allow-env",
      "--allow-read",
      "hub.ts",
      "--hostname",
      "127.0.0.1",
      "--port",
      "0",
      "--worker-port",
      "0",
      "--max-queue",
      "1000000",
      "--queue-timeout",
      "600s",
      "--log-level",
      "warn",
    ]);
    const consumer = await hub.waitFor(
      /Listening on http:\/\/[^ ]*:(\d+)\/ \(consumers\)/,
      STARTUP_MS,
    );
    const workerPort = await hub.waitFor(
      /Listening on tcp:\/\/[^ ]*:(\d+)\/ \(workers\)/,
      STARTUP_MS,
    );
    const workers = Array.from(
      { length: plan.slots },
      (_, i) =>
        child(`POTHEAD worker ${i}`, DENO, [
          "run",
          "--allow-net",
          "--allow-env",
          "--allow-read",
          "worker.ts",
          "--connect",
          `127.0.0.1:${workerPort[1]}`,
          "--concurrency",
          "1",
          job,
        ]),
    );
    for (const w of workers) await w.waitFor(/^Connected to /, STARTUP_MS);
    targets.set("pothead", {
      name: "pothead",
      urls: Array.from(
        { length: plan.slots },
        () => `http://127.0.0.1:${consumer[1]}/`,
      ),
      balancerPids: [hub.pid],
      workerPids: workers.map((w) => w.pid),
    });

    if (!("haproxy" in skipped)) {
      const port = freePort();
      const config = join(dir, `haproxy-${port}.cfg`);
      await Deno.writeTextFile(config, haproxyConfig(port, ports));
      const h = child("haproxy", "haproxy", ["-db", "-f", config]);
      await waitForPort(port, STARTUP_MS, h);
      targets.set("haproxy", {
        name: "haproxy",
        urls: Array.from(
          { length: plan.slots },
          () => `http://127.0.0.1:${port}/`,
        ),
        balancerPids: [h.pid],
        workerPids: backendPids,
      });
    }
    if (!("nginx-rr" in skipped)) {
      const port = freePort();
      const config = join(dir, `nginx-${port}.conf`);
      await Deno.writeTextFile(config, nginxConfig(port, ports, false, dir));
      const n = child("nginx", "nginx", [
        "-p",
        dir,
        "-c",
        config,
        "-e",
        join(dir, `nginx-${port}.log`),
      ]);
      await waitForPort(port, STARTUP_MS, n);
      targets.set("nginx-rr", {
        name: "nginx-rr",
        urls: Array.from(
          { length: plan.slots },
          () => `http://127.0.0.1:${port}/`,
        ),
        balancerPids: [n.pid],
        workerPids: backendPids,
      });
    }
    return { targets, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

async function main(args: string[]): Promise<number> {
  if (args[0] === "--hold") return await hold(args[1], Number(args[2]));
  if (args[0] === "--render") {
    // Rewrites balancers.md from a balancers.json (after a wording change).
    const file = args[1] ?? join(ROOT, "bench/results/balancers.json");
    const report = JSON.parse(await Deno.readTextFile(file)) as Report;
    const md = file.replace(/\.json$/, ".md");
    await Deno.writeTextFile(md, markdown(report));
    log(`wrote ${md}`);
    return 0;
  }
  let plan: Plan | "help";
  try {
    plan = planFrom(args);
  } catch (error) {
    console.error(`balancers: ${(error as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (plan === "help") {
    console.log(HELP);
    return 0;
  }
  const began = performance.now();
  const estimate = estimateSeconds(plan);
  log(
    `balancers benchmark (${plan.mode}); estimated ${estimate} s`,
  );
  const maxSeconds = estimate * 2 + 300;
  // The whole run is bounded too: past twice the estimate, kill and exit.
  const watchdog = setTimeout(() => {
    log(`took longer than ${maxSeconds} s: killing everything`);
    killSystems();
    killProcs();
    Deno.exit(3);
  }, maxSeconds * 1000);
  Deno.unrefTimer(watchdog);

  const niced = plan.nice !== 0 && await setNiceness(plan.nice);
  if (plan.nice !== 0 && !niced) log(`could not set nice ${plan.nice}`);
  const skipped: Record<string, string> = {};
  if (!await ensureProgram("wrk", "wrk", log)) {
    log("wrk is required");
    return 1;
  }
  if (!await ensureProgram("haproxy", "haproxy", log)) {
    skipped.haproxy = "haproxy not installed";
  }
  if (!await ensureProgram("nginx", "nginx", log)) {
    skipped["nginx-rr"] = "nginx not installed";
  }
  const dir = await Deno.makeTempDir({ prefix: "pothead-balancers-" });
  wrkScript = join(dir, "report.lua");
  await Deno.writeTextFile(wrkScript, WRK_SCRIPT);
  wrkTimingScript = join(dir, "timing.lua");
  await Deno.writeTextFile(wrkTimingScript, WRK_TIMING_SCRIPT);
  const machine = await machineInfo();

  let running: Running | null = null;
  let overheadRuns: OverheadRun[] = [];
  let shareRuns: ShareRun[] = [];
  let timingRuns: TimingRun[] = [];
  let memory: MemoryResult | null = null;
  try {
    log(
      `starting ${plan.slots} backends, POTHEAD with ${plan.slots} workers, ${
        ["haproxy", "nginx-rr"].filter((n) => !(n in skipped)).join(", ")
      }`,
    );
    running = await startAll(plan, dir, skipped, maxSeconds);
    overheadRuns = await measureOverhead(plan, running.targets);
    ({ runs: shareRuns, timing: timingRuns } = await measureShare(
      plan,
      running.targets,
    ));
  } finally {
    await running?.stop();
  }
  memory = await measureMemory(plan, maxSeconds);

  const shareRowsList = shareRows(plan, shareRuns);
  const report: Report = {
    mode: plan.mode,
    date: new Date().toISOString(),
    elapsedS: Math.round((performance.now() - began) / 1000),
    machine,
    versions: {
      ...await versions(),
      wrk: machine.wrk,
    },
    loadAverageAtEnd: loadAverage(),
    nice: niced ? plan.nice : 0,
    plan,
    setup: [
      `One job program for every worker (written by the benchmark to a temporary \`job.ts\`): without \`ms\` it answers \`ok\\n\` at once — the trivial handler; with \`?ms=N\` it blocks its thread for N ms with \`Atomics.wait\` (a synchronous job that uses no CPU), correcting for the wait's mean overshoot.`,
      `Backends: ${plan.slots} plain \`Deno.serve\` processes (\`bench/workers/serve.ts job.ts\`).`,
      `POTHEAD: the \`hub.ts\` CLI as \`deno task start\` runs it (\`--max-queue 1000000 --queue-timeout 600s\`) and ${plan.slots} \`worker.ts --concurrency 1 job.ts\` processes: ${plan.slots} slots.`,
      `HAProxy: one process (\`haproxy -db\`, default threads), \`balance roundrobin\`, \`maxconn 1\` on each of the ${plan.slots} backends, \`http-reuse always\`, keep-alive on both sides. nginx: \`worker_processes 1\`, \`master_process off\`, plain round-robin upstream over the ${plan.slots} backends with \`keepalive 1024\` and HTTP/1.1 upstream. Configurations from \`haproxyConfig\`/\`nginxConfig\` of \`bench/_systems.ts\` (those of the queueing benchmark).`,
      `Direct: in part 1, wrk against ONE backend process (backend 0) with the same wrk threads and connections as the balancers — one \`Deno.serve\` process where the balancers have ${plan.slots} behind them; in part 2, ${plan.slots} clients, client i to backend i (the same processes HAProxy forwards to).`,
    ],
    skipped,
    overhead: {
      rows: overheadRows(plan, overheadRuns),
      // Without the 999-point tables (pooled into the rows already).
      runs: overheadRuns.map((r) => ({
        ...r,
        run: { ...r.run, quantilesUs: [] },
      })),
    },
    share: {
      rows: shareRowsList,
      runs: shareRuns.map(({ clients: _c, ...rest }) => rest),
      timing: timingRuns,
      smallestUnder2Pct: Object.fromEntries(
        plan.share.systems.filter((s) => s !== "direct").map((
          s,
        ) => [s, smallestUnder2(shareRowsList, s)]),
      ),
    },
    memory,
    core: coreReference(),
  };
  const out = plan.out ??
    await Deno.makeTempDir({ prefix: "pothead-balancers-smoke-" });
  await Deno.mkdir(out, { recursive: true });
  await Deno.writeTextFile(join(out, "balancers.md"), markdown(report));
  await Deno.writeTextFile(
    join(out, "balancers.json"),
    JSON.stringify(report, null, 1) + "\n",
  );
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  log(
    `wrote ${
      join(out, "balancers.md")
    } and balancers.json in ${report.elapsedS} s`,
  );
  clearTimeout(watchdog);
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (error) {
    console.error(`balancers: ${(error as Error).stack ?? error}`);
    killSystems();
    killProcs();
    Deno.exit(1);
  }
}
