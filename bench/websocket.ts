/**
 * The WebSocket benchmark: what the hub's tunnel costs next to a client
 * talking to the worker's `Deno.serve` directly.
 *
 * One echo handler (`bench/workers/ws_echo.ts`), served directly by
 * `Deno.serve` and by one worker process (`--concurrency 1`) behind a hub
 * CLI process; the client is this process (Deno's `WebSocket`). For each:
 *
 * - round trip: small text messages sent one after another, each after the
 *   echo of the one before; percentiles of the round-trip time;
 * - throughput: binary messages of 64 KiB and of 1 MiB, 8 in flight, each
 *   echoed back; MiB/s each way, and the hub's CPU per MiB.
 *
 * ```sh
 * deno run -A bench/websocket.ts [--quick] [--smoke] [--out=DIR]
 * ```
 *
 * Writes `websocket.md` and `.json` under `bench/results/`
 * (`bench/results/quick/` with `--quick`; nothing with `--smoke`, which only
 * checks that every echo is whole).
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  cpuSeconds,
  killAll,
  loadAverage,
  type MachineInfo,
  machineInfo,
  percentile,
  ROOT,
  round,
  startDirect,
  startHub,
  startWorkers,
  stopAll,
  withTimeout,
  writeReport,
} from "./_util.ts";

type Mode = "full" | "quick" | "smoke";

interface Plan {
  /** Round trips measured (after as many again to warm up). */
  pings: number;
  /** Binary messages per throughput run, per size. */
  messages: Record<string, number>;
  /** Messages in flight in a throughput run. */
  window: number;
}

const PLANS: Record<Mode, Plan> = {
  full: { pings: 5000, messages: { "64 KiB": 4000, "1 MiB": 400 }, window: 8 },
  quick: { pings: 1000, messages: { "64 KiB": 800, "1 MiB": 80 }, window: 8 },
  smoke: { pings: 20, messages: { "64 KiB": 16, "1 MiB": 4 }, window: 4 },
};

const SIZES: Record<string, number> = {
  "64 KiB": 64 * 1024,
  "1 MiB": 1024 * 1024,
};

interface Throughput {
  size: string;
  messages: number;
  /** MiB per second each way (sent and echoed). */
  mibPerS: number;
  /** Hub CPU seconds per MiB each way (POTHEAD only). */
  hubCpuMsPerMiB: number | null;
}

interface SystemResult {
  system: "Deno.serve" | "POTHEAD";
  rttUs: { p50: number; p90: number; p99: number; max: number };
  /** Hub CPU per round trip, µs (POTHEAD only). */
  hubCpuUsPerRtt: number | null;
  throughput: Throughput[];
}

interface Report {
  mode: Mode;
  machine: MachineInfo & { loadAverageAtEnd: number };
  plan: Plan;
  results: SystemResult[];
  elapsedS: number;
}

// One WebSocket with a queue of the messages it receives.
async function open(url: string): Promise<{
  ws: WebSocket;
  next: () => Promise<string | ArrayBuffer>;
}> {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const inbox: (string | ArrayBuffer)[] = [];
  let waiting: ((m: string | ArrayBuffer) => void) | null = null;
  let failed: Error | null = null;
  ws.onmessage = (e) => {
    if (waiting !== null) {
      const w = waiting;
      waiting = null;
      w(e.data);
    } else inbox.push(e.data);
  };
  await new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = (e) => reject(new Error((e as ErrorEvent).message));
  });
  ws.onclose = (e) => failed = new Error(`closed: ${e.code} ${e.reason}`);
  return {
    ws,
    next: () => {
      if (inbox.length > 0) return Promise.resolve(inbox.shift()!);
      if (failed !== null) return Promise.reject(failed);
      return new Promise((r) => waiting = r);
    },
  };
}

async function measure(
  system: SystemResult["system"],
  url: string,
  plan: Plan,
  hubPid: number | null,
): Promise<SystemResult> {
  const { ws, next } = await open(url);
  const hubCpu = () => hubPid === null ? 0 : cpuSeconds(hubPid);
  try {
    // Round trips: warm up, then measure.
    const rtts: number[] = [];
    let cpu0 = 0;
    for (let i = 0; i < plan.pings * 2; i++) {
      if (i === plan.pings) cpu0 = hubCpu();
      const text = `ping ${i}`;
      const t0 = performance.now();
      ws.send(text);
      const echo = await next();
      const t = performance.now() - t0;
      if (echo !== text) throw new Error(`${system}: echo ${echo} for ${text}`);
      if (i >= plan.pings) rtts.push(t * 1000);
    }
    const hubCpuUsPerRtt = hubPid === null
      ? null
      : round((hubCpu() - cpu0) / plan.pings * 1e6, 1);
    rtts.sort((a, b) => a - b);
    const throughput: Throughput[] = [];
    for (const [size, count] of Object.entries(plan.messages)) {
      const bytes = SIZES[size];
      const payload = new Uint8Array(bytes);
      for (let i = 0; i < bytes; i += 4096) payload[i] = i & 0xff;
      const c0 = hubCpu();
      const t0 = performance.now();
      let sent = 0;
      for (; sent < Math.min(plan.window, count); sent++) ws.send(payload);
      for (let got = 0; got < count; got++) {
        const echo = await next();
        const view = new Uint8Array(echo as ArrayBuffer);
        if (
          view.length !== bytes || view[bytes - 4096] !== payload[bytes - 4096]
        ) {
          throw new Error(`${system}: a ${size} echo came back wrong`);
        }
        if (sent < count) {
          ws.send(payload);
          sent++;
        }
      }
      const seconds = (performance.now() - t0) / 1000;
      const mib = count * bytes / (1024 * 1024);
      throughput.push({
        size,
        messages: count,
        mibPerS: round(mib / seconds, 1),
        hubCpuMsPerMiB: hubPid === null
          ? null
          : round((hubCpu() - c0) / mib * 1000, 2),
      });
    }
    return {
      system,
      rttUs: {
        p50: round(percentile(rtts, 50), 0),
        p90: round(percentile(rtts, 90), 0),
        p99: round(percentile(rtts, 99), 0),
        max: round(rtts[rtts.length - 1], 0),
      },
      hubCpuUsPerRtt,
      throughput,
    };
  } finally {
    ws.close();
  }
}

function renderMarkdown(report: Report): string {
  const { machine, plan } = report;
  const [direct, hub] = report.results;
  const lines = [
    "# WebSockets: the hub's tunnel against Deno.serve directly",
    "",
    `${machine.date}; ${machine.cpuModel}, ${machine.cpus} vCPUs; Deno ${machine.deno}; ` +
    `load average ${machine.loadAverageAtStart} at the start, ${machine.loadAverageAtEnd} at the end; ` +
    `${Math.round(report.elapsedS)} s; mode ${report.mode}.`,
    "",
    "An echo handler (`bench/workers/ws_echo.ts`) on `Deno.serve` directly, and on one worker " +
    "process behind the hub (both CLIs as separate processes, loopback); the client is Deno's " +
    "`WebSocket` in the benchmark process.",
    "",
    `## Round trip (${plan.pings} small text messages, one at a time, after as many to warm up)`,
    "",
    "| system | p50 (µs) | p90 (µs) | p99 (µs) | max (µs) | hub CPU per round trip (µs) |",
    "| --- | --- | --- | --- | --- | --- |",
  ];
  for (const r of report.results) {
    lines.push(
      `| ${r.system} | ${r.rttUs.p50} | ${r.rttUs.p90} | ${r.rttUs.p99} | ${r.rttUs.max} | ${
        r.hubCpuUsPerRtt ?? "–"
      } |`,
    );
  }
  lines.push(
    "",
    `Added by the hub at the median: ${
      round(hub.rttUs.p50 - direct.rttUs.p50, 0)
    } µs per round trip ` +
      `(${round(hub.rttUs.p50 / direct.rttUs.p50, 2)}×).`,
    "",
    `## Throughput (binary messages, ${plan.window} in flight, each echoed)`,
    "",
    "| size | messages | Deno.serve (MiB/s each way) | POTHEAD (MiB/s each way) | POTHEAD / direct | hub CPU per MiB each way (ms) |",
    "| --- | --- | --- | --- | --- | --- |",
  );
  for (let i = 0; i < hub.throughput.length; i++) {
    const d = direct.throughput[i];
    const h = hub.throughput[i];
    lines.push(
      `| ${h.size} | ${h.messages} | ${d.mibPerS} | ${h.mibPerS} | ${
        round(h.mibPerS / d.mibPerS, 2)
      } | ${h.hubCpuMsPerMiB} |`,
    );
  }
  return lines.join("\n") + "\n";
}

/** Runs the benchmark; returns the exit code. */
export async function main(args = Deno.args): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: "boolean" },
      smoke: { type: "boolean" },
      out: { type: "string" },
    },
  });
  const mode: Mode = values.smoke ? "smoke" : values.quick ? "quick" : "full";
  const plan = PLANS[mode];
  const out = mode === "smoke" ? null : values.out ??
    join(ROOT, "bench", "results", mode === "quick" ? "quick" : "");
  const began = performance.now();
  const info = await machineInfo();
  const maxSeconds = 300;
  const results: SystemResult[] = [];
  let failed = false;
  try {
    const direct = await startDirect({
      handler: "bench/workers/ws_echo.ts",
      maxSeconds,
    });
    try {
      results.push(
        await withTimeout(
          measure("Deno.serve", `ws://127.0.0.1:${direct.port}/`, plan, null),
          maxSeconds * 1000,
          "Deno.serve",
        ),
      );
    } finally {
      await stopAll([direct.proc]);
    }
    const hub = await startHub({ maxSeconds });
    const workers = await startWorkers({
      count: 1,
      concurrency: 1,
      handler: "bench/workers/ws_echo.ts",
      workerPort: hub.workerPort,
      maxSeconds,
    }).catch(async (error) => {
      await hub.proc.stop();
      throw error;
    });
    try {
      results.push(
        await withTimeout(
          measure("POTHEAD", `ws://127.0.0.1:${hub.port}/`, plan, hub.proc.pid),
          maxSeconds * 1000,
          "POTHEAD",
        ),
      );
    } finally {
      await stopAll([...workers, hub.proc]);
    }
    for (const r of results) {
      console.log(
        `${r.system}: round trip p50 ${r.rttUs.p50} µs, p99 ${r.rttUs.p99} µs; ${
          r.throughput.map((t) => `${t.size} ${t.mibPerS} MiB/s`).join(", ")
        }`,
      );
    }
  } catch (error) {
    failed = true;
    console.error(`websocket: ${(error as Error).stack ?? error}`);
  } finally {
    killAll();
  }
  const report: Report = {
    mode,
    machine: { ...info, loadAverageAtEnd: loadAverage() },
    plan,
    results,
    elapsedS: (performance.now() - began) / 1000,
  };
  if (out !== null && !failed) {
    await writeReport(out, "websocket", renderMarkdown(report), report);
  }
  return failed ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main());
