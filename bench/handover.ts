/**
 * The hand-over benchmark: what consumers see while the hub is replaced
 * under load, with `--reuse-port` (a new hub starts on the same ports and
 * the old one hands over) and without it (the old hub stops, then the new
 * one starts on the freed ports).
 *
 * One hub and K `worker.ts --concurrency 1` workers running the queueing
 * benchmark's job (sleep-based); a seeded open-loop Poisson trace with
 * exponential service times; at `--at` seconds the hub is replaced. Each
 * way runs twice: consumers with keep-alive connections (`fetch`'s pool)
 * and with a new connection per request. Reported per run: requests,
 * answers, failures by kind, latency of the answered ones overall and in
 * the 3 s from the replacement, and how long the old hub took to exit.
 *
 * ```sh
 * deno run -A bench/handover.ts [--smoke] [--k=4] [--load=0.5] [--mean-ms=20]
 *   [--duration=12] [--at=5] [--seed=1] [--name=handover] [--out=DIR]
 * ```
 *
 * Needs Linux with `net.ipv4.tcp_migrate_req=1` for the hand-over (set as
 * root; see README "Hand-over"). Writes `NAME.md` and `NAME.json` under
 * `bench/results/` (a temporary directory for `--smoke`, which judges
 * nothing).
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { exponential, makeRandom } from "./_trace.ts";
import {
  type HubProc,
  machineInfo,
  numberFlag,
  percentile,
  type Proc,
  ROOT,
  sleep,
  startHub,
  startWorkers,
  stopAll,
  writeReport,
} from "./_util.ts";

/** How the hub is replaced. */
export type Way = "handover" | "restart";
/** How consumers connect. */
export type Client = "keepalive" | "fresh";

/** One replacement under load, as measured. */
export interface RunResult {
  way: Way;
  client: Client;
  sent: number;
  answered: number;
  /** Failures by kind: a status other than 200, or the fetch error's name. */
  failures: Record<string, number>;
  /** Latency of the answered requests, ms. */
  p50: number;
  p99: number;
  max: number;
  /** The same for requests sent in the 3 s from the replacement. */
  windowSent: number;
  windowP99: number;
  windowMax: number;
  /** When the failed requests were sent, ms from the replacement. */
  failedAt: number[];
  /** From the old hub's SIGTERM to its exit, ms. */
  oldExitMs: number;
  /** From the old hub's SIGTERM to the new one listening (negative: before), ms. */
  newListeningMs: number;
  /** The old hub's exit code. */
  oldExitCode: number;
}

const WINDOW_MS = 3000;
const FLAGS = ["--unstable-no-legacy-abort", "--unstable-net"];

/** What every run of one invocation shares. */
export interface Plan {
  /** Workers, one slot each. */
  k: number;
  /** Utilisation of the workers. */
  load: number;
  /** Mean (exponential) job, ms. */
  meanMs: number;
  /** Length of each run, s. */
  durationS: number;
  /** When the hub is replaced, s into the run. */
  atS: number;
  /** Seed of the trace. */
  seed: number;
}

async function run(way: Way, client: Client, o: Plan): Promise<RunResult> {
  const maxSeconds = o.durationS + 120;
  const reuse = way === "handover" ? ["--reuse-port"] : [];
  let a: HubProc | undefined = await startHub({
    args: reuse,
    denoFlags: FLAGS,
    maxSeconds,
  });
  let b: HubProc | undefined;
  let workers: Proc[] = [];
  const http = Deno.createHttpClient(
    client === "fresh" ? { poolMaxIdlePerHost: 0 } : {},
  );
  try {
    workers = await startWorkers({
      count: o.k,
      concurrency: 1,
      handler: "bench/workers/pothead_job.ts",
      workerPort: a.workerPort,
      maxSeconds,
    });
    const { port, workerPort } = a;
    const random = makeRandom(o.seed);
    const rate = o.load * o.k / o.meanMs; // requests per ms
    const t0 = performance.now();
    const end = t0 + o.durationS * 1000;
    const at = t0 + o.atS * 1000;
    const done: Promise<void>[] = [];
    const failures: Record<string, number> = {};
    const failedAt: number[] = [];
    const latencies: number[] = [];
    const windowed: number[] = [];
    let windowSent = 0;
    let sent = 0;
    const send = (ms: number) => {
      const start = performance.now();
      const inWindow = start >= at && start < at + WINDOW_MS;
      if (inWindow) windowSent++;
      sent++;
      done.push(
        fetch(`http://127.0.0.1:${port}/?ms=${ms.toFixed(2)}`, {
          client: http,
          signal: AbortSignal.timeout(30_000),
        }).then(async (res) => {
          await res.arrayBuffer();
          const took = performance.now() - start;
          if (res.status !== 200) {
            failures[`status ${res.status}`] =
              (failures[`status ${res.status}`] ?? 0) + 1;
            failedAt.push(start - at);
            return;
          }
          latencies.push(took);
          if (inWindow) windowed.push(took);
        }, (error: Error) => {
          // fetch's TypeError says "fetch failed"; its cause says why.
          const cause = (error.cause as Error | undefined)?.message ?? "";
          const kind = `${error.message}${
            cause === "" ? "" : ": " +
              cause.replace(/^error sending request for url \([^)]*\): /, "")
          }`.replace(/\d+/g, "N").slice(0, 120);
          failures[kind] = (failures[kind] ?? 0) + 1;
          failedAt.push(start - at);
        }),
      );
    };
    // The replacement runs beside the load.
    let oldExitMs = -1;
    let oldExitCode = -1;
    let listening = NaN;
    let newListeningMs = NaN;
    const replace = (async () => {
      await sleep(at - performance.now());
      const startNew = async () => {
        b = await startHub({
          args: [
            ...reuse,
            "--port",
            String(port),
            "--worker-port",
            String(workerPort),
          ],
          denoFlags: FLAGS,
          maxSeconds,
        });
        listening = performance.now();
      };
      if (way === "handover") await startNew();
      const old = a!;
      const killed = performance.now();
      old.proc.kill("SIGTERM");
      const exited = old.proc.status.then((status) => {
        oldExitMs = performance.now() - killed;
        oldExitCode = status.code;
      });
      // Restarting, the ports are free once it has exited.
      if (way === "restart") {
        await exited;
        await startNew();
      }
      await exited;
      a = undefined;
      newListeningMs = listening - killed;
    })();
    for (let next = performance.now(); next < end;) {
      next += exponential(random, 1 / rate);
      const wait = next - performance.now();
      if (wait > 1) await sleep(wait);
      send(exponential(random, o.meanMs));
    }
    await replace;
    await Promise.all(done);
    latencies.sort((x, y) => x - y);
    windowed.sort((x, y) => x - y);
    return {
      way,
      client,
      sent,
      answered: latencies.length,
      failures,
      p50: percentile(latencies, 50),
      p99: percentile(latencies, 99),
      max: latencies.at(-1) ?? NaN,
      windowSent,
      windowP99: percentile(windowed, 99),
      windowMax: windowed.at(-1) ?? NaN,
      failedAt: failedAt.map((t) => Math.round(t)).sort((x, y) => x - y),
      oldExitMs,
      oldExitCode,
      newListeningMs,
    };
  } finally {
    http.close();
    await stopAll([...workers, a?.proc, b?.proc]);
  }
}

function markdown(results: RunResult[], o: Plan, machine: string): string {
  const f = (n: number) => Number.isFinite(n) ? n.toFixed(1) : "-";
  const rows = results.map((r) =>
    `| ${r.way} | ${r.client} | ${r.sent} | ${r.answered} | ${
      Object.entries(r.failures).map(([k, n]) => `${n} × ${k}`).join("; ") ||
      "none"
    } | ${f(r.p50)} | ${f(r.p99)} | ${f(r.max)} | ${r.windowSent} | ${
      f(r.windowP99)
    } | ${f(r.windowMax)} | ${f(r.oldExitMs)} (exit ${r.oldExitCode}) | ${
      f(r.newListeningMs)
    } |`
  );
  return [
    "# Replacing the hub under load",
    "",
    `${o.k} one-slot workers, exponential ${o.meanMs} ms jobs, Poisson arrivals at ${
      o.load * 100
    }% of capacity for ${o.durationS} s; the hub replaced at ${o.atS} s. ` +
    "`handover`: a new hub with `--reuse-port` on the same ports, then SIGTERM to the old one. " +
    "`restart`: SIGTERM to the old hub, and the new one started once it exited. " +
    "`keepalive`: consumers reuse connections (`fetch`'s pool); `fresh`: a new connection per request. " +
    `Latencies in ms; the window is the ${
      WINDOW_MS / 1000
    } s from the replacement.`,
    "",
    `Machine: ${machine}`,
    "",
    "| way | consumers | sent | answered | failures | p50 | p99 | max | sent in window | window p99 | window max | old hub's exit, ms | new hub listening, ms |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ...rows,
    "",
  ].join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      smoke: { type: "boolean" },
      k: { type: "string" },
      load: { type: "string" },
      "mean-ms": { type: "string" },
      duration: { type: "string" },
      at: { type: "string" },
      seed: { type: "string" },
      name: { type: "string" },
      out: { type: "string" },
    },
    strict: true,
  });
  const smoke = values.smoke ?? false;
  const o: Plan = {
    k: numberFlag(
      "k",
      values.k,
      smoke ? 2 : 4,
      (n) => n >= 1 && n <= 64,
      "1..64",
    ),
    load: numberFlag("load", values.load, 0.5, (n) => n > 0 && n < 1, "(0, 1)"),
    meanMs: numberFlag(
      "mean-ms",
      values["mean-ms"],
      20,
      (n) => n > 0 && n <= 10_000,
      "(0, 10000]",
    ),
    durationS: numberFlag(
      "duration",
      values.duration,
      smoke ? 4 : 12,
      (n) => n > 0 && n <= 600,
      "(0, 600]",
    ),
    atS: numberFlag(
      "at",
      values.at,
      smoke ? 1.5 : 5,
      (n) => n > 0 && n <= 600,
      "(0, 600]",
    ),
    seed: numberFlag("seed", values.seed, 1, Number.isInteger, "an integer"),
  };
  if (o.atS >= o.durationS) {
    throw new RangeError("--at must come before --duration ends");
  }
  const results: RunResult[] = [];
  for (const way of ["handover", "restart"] as const) {
    for (const client of ["keepalive", "fresh"] as const) {
      console.log(`== ${way}, ${client} consumers`);
      const r = await run(way, client, o);
      console.log(JSON.stringify(r));
      results.push(r);
    }
  }
  const info = await machineInfo();
  const machine =
    `${info.cpuModel}, ${info.cpus} CPUs, Deno ${info.deno}, ${info.date}`;
  const out = values.out ??
    (smoke
      ? await Deno.makeTempDir({ prefix: "pothead-smoke-" })
      : join(ROOT, "bench", "results"));
  await writeReport(
    out,
    values.name ?? "handover",
    markdown(results, o, machine),
    {
      options: o,
      machine: info,
      results,
    },
  );
  if (smoke) {
    // A smoke proves it runs end to end; it judges only that requests went through.
    const answered = results.reduce((n, r) => n + r.answered, 0);
    if (answered === 0) throw new Error("no request was answered");
    console.log("smoke: timings not judged");
  }
}
