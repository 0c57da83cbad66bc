/**
 * The slow-clients benchmark: how long an expensive worker waits for
 * consumers on slow links, with and without the hub's read-ahead.
 *
 * One worker process (`--concurrency 1`, `bench/workers/slow_job.ts`: 20 ms
 * of work per request) behind a hub CLI process; N consumers at once, each
 * on a link of fixed bandwidth: a raw socket that moves 64 KiB at a time and
 * never catches up after a stall (unlike curl's `--limit-rate`, which sends
 * at full speed after one until its average is back).
 *
 * - uploads: each consumer POSTs a body; the worker reads it whole, then
 *   works, and reports how long it waited for the body. Settings:
 *   `--request-buffer 0`, the default buffer, a spill directory, and a
 *   spill directory with `--buffer-uploads`.
 * - downloads: each consumer GETs a body and reads it at its link's pace.
 *   Settings: `--response-buffer 0`, the default buffer, a 32 MiB buffer,
 *   and the default buffer with a spill directory.
 *
 * Reported per setting: when each consumer had its answer (seconds from the
 * start) and, for uploads, the worker's total wait for bodies.
 *
 * ```sh
 * deno run -A bench/slow_clients.ts [--quick] [--smoke] [--out=DIR]
 * ```
 *
 * Writes `slow_clients.md` and `.json` under `bench/results/`
 * (`bench/results/quick/` with `--quick`; nothing with `--smoke`, which only
 * checks that every answer is whole).
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  killAll,
  loadAverage,
  type MachineInfo,
  machineInfo,
  ROOT,
  sleep,
  startHub,
  startWorkers,
  stopAll,
  withTimeout,
  writeReport,
} from "./_util.ts";

type Mode = "full" | "quick" | "smoke";
type Direction = "upload" | "download";

interface Plan {
  mode: Mode;
  consumers: number;
  uploadBytes: number;
  downloadBytes: number;
  /** Bytes per second of each consumer's link. */
  rate: number;
  out: string | null;
}

interface Setting {
  direction: Direction;
  name: string;
  /** Hub flags; `SPILL` stands for a fresh temporary directory. */
  args: string[];
}

const SPILL = "<spill>";
const MIB = 1024 * 1024;

const SETTINGS: Setting[] = [
  {
    direction: "upload",
    name: "--request-buffer 0",
    args: ["--request-buffer", "0"],
  },
  { direction: "upload", name: "default (1 MiB)", args: [] },
  {
    direction: "upload",
    name: "--request-spill-dir",
    args: ["--request-spill-dir", SPILL],
  },
  {
    direction: "upload",
    name: "--request-spill-dir --buffer-uploads",
    args: ["--request-spill-dir", SPILL, "--buffer-uploads"],
  },
  {
    direction: "download",
    name: "--response-buffer 0",
    args: ["--response-buffer", "0"],
  },
  { direction: "download", name: "default (1 MiB)", args: [] },
  {
    direction: "download",
    name: "--response-buffer 33554432",
    args: ["--response-buffer", String(32 * MIB)],
  },
  {
    direction: "download",
    name: "--response-spill-dir",
    args: ["--response-spill-dir", SPILL],
  },
];

interface ClientResult {
  status: number;
  /** Body bytes the worker read (uploads) or the consumer got (downloads). */
  bytes: number;
  /** Uploads: how long the worker waited for the body, ms. */
  workerWaitMs: number;
  /** Seconds from the start of the setting to the whole answer. */
  doneS: number;
}

interface SettingResult {
  direction: Direction;
  name: string;
  clients: ClientResult[];
  /** Uploads: the worker's total wait for bodies, s. */
  workerWaitS: number;
}

interface Report {
  mode: Mode;
  machine: MachineInfo & { loadAverageAtEnd: number };
  plan: Omit<Plan, "out">;
  results: SettingResult[];
  elapsedS: number;
}

// ---------------------------------------------------------------- clients

// A link of fixed bandwidth: each transfer of n bytes is followed by n/rate
// of silence, counted from when it ended (so a stall is never made up).
class Link {
  #due = 0;
  constructor(readonly rate: number) {}
  async moved(n: number): Promise<void> {
    this.#due = Math.max(performance.now(), this.#due) + n / this.rate * 1000;
    const wait = this.#due - performance.now();
    // Short waits add up in #due; sleep once there is enough to sleep.
    if (wait > 2) await sleep(wait);
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let at = 0;
  while (at < bytes.length) at += await conn.write(bytes.subarray(at));
}

// Reads until the hub closes; returns the status, the body's length and,
// unless `onBytes` takes the body as it comes, the body.
async function readAnswer(
  conn: Deno.Conn,
  onBytes?: (n: number) => Promise<void>,
): Promise<{ status: number; bytes: number; body: string }> {
  const buf = new Uint8Array(64 * 1024);
  let head: Uint8Array = new Uint8Array(0);
  let headEnd = -1;
  const bodyParts: Uint8Array[] = [];
  let bodyBytes = 0;
  while (true) {
    const n = await conn.read(buf);
    if (n === null) break;
    let chunk: Uint8Array = buf.subarray(0, n);
    if (headEnd < 0) {
      const joined = new Uint8Array(head.length + n);
      joined.set(head);
      joined.set(chunk, head.length);
      head = joined;
      const text = new TextDecoder().decode(head);
      const at = text.indexOf("\r\n\r\n");
      if (at < 0) continue;
      headEnd = at + 4;
      chunk = head.subarray(headEnd);
      head = head.subarray(0, headEnd);
    }
    bodyBytes += chunk.length;
    // Downloads keep only their count; answers to uploads are short.
    if (onBytes === undefined) bodyParts.push(chunk.slice());
    else await onBytes(chunk.length);
  }
  const status = Number(
    /^HTTP\/1\.[01] (\d{3})/.exec(new TextDecoder().decode(head))?.[1] ?? 0,
  );
  const decoder = new TextDecoder();
  const body = bodyParts.map((p) => decoder.decode(p, { stream: true }))
    .join("") + decoder.decode();
  return { status, bytes: bodyBytes, body };
}

// One consumer on a link of `rate`: opens a connection, sends its request
// (with `bytes` of body for an upload), reads the answer, and closes.
async function consumer(
  direction: Direction,
  port: number,
  bytes: number,
  rate: number,
  t0: number,
): Promise<ClientResult> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const link = new Link(rate);
    const head = direction === "upload"
      ? `POST /upload HTTP/1.1\r\nhost: bench\r\ncontent-length: ${bytes}\r\n`
      : `GET /download?bytes=${bytes} HTTP/1.1\r\nhost: bench\r\n`;
    await writeAll(
      conn,
      new TextEncoder().encode(head + "connection: close\r\n\r\n"),
    );
    if (direction === "download") {
      const answer = await readAnswer(conn, (n) => link.moved(n));
      return {
        status: answer.status,
        bytes: answer.bytes,
        workerWaitMs: 0,
        doneS: (performance.now() - t0) / 1000,
      };
    }
    const chunk = new Uint8Array(64 * 1024).fill(65);
    for (let sent = 0; sent < bytes;) {
      const n = Math.min(chunk.length, bytes - sent);
      await writeAll(conn, chunk.subarray(0, n));
      sent += n;
      await link.moved(n);
    }
    const { status, body } = await readAnswer(conn);
    const [got, waited] = body.split(" ").map(Number);
    return {
      status,
      bytes: got,
      workerWaitMs: waited,
      doneS: (performance.now() - t0) / 1000,
    };
  } finally {
    conn.close();
  }
}

// ------------------------------------------------------------------- runs

async function runSetting(
  plan: Plan,
  setting: Setting,
): Promise<SettingResult> {
  const spill = await Deno.makeTempDir({ prefix: "pothead-slow-clients-" });
  const maxSeconds = 120;
  const hub = await startHub({
    args: setting.args.map((a) => a === SPILL ? spill : a),
    maxSeconds,
  });
  const workers = await startWorkers({
    count: 1,
    concurrency: 1,
    handler: "bench/workers/slow_job.ts",
    workerPort: hub.workerPort,
    maxSeconds,
  }).catch(async (error) => {
    await hub.proc.stop();
    throw error;
  });
  try {
    const t0 = performance.now();
    const size = setting.direction === "upload"
      ? plan.uploadBytes
      : plan.downloadBytes;
    const clients = await withTimeout(
      Promise.all(
        Array.from(
          { length: plan.consumers },
          () => consumer(setting.direction, hub.port, size, plan.rate, t0),
        ),
      ),
      maxSeconds * 1000,
      `${setting.direction} ${setting.name}`,
    );
    for (const c of clients) {
      if (c.status !== 200 || c.bytes !== size) {
        throw new Error(
          `${setting.direction} ${setting.name}: status ${c.status}, ${c.bytes} of ${size} bytes`,
        );
      }
    }
    clients.sort((a, b) => a.doneS - b.doneS);
    return {
      direction: setting.direction,
      name: setting.name,
      clients,
      workerWaitS: clients.reduce((s, c) => s + c.workerWaitMs, 0) / 1000,
    };
  } finally {
    await stopAll([...workers, hub.proc]);
    await Deno.remove(spill, { recursive: true }).catch(() => {});
  }
}

function renderMarkdown(report: Report): string {
  const { plan, machine } = report;
  const rate = plan.rate / MIB;
  const lines = [
    "# Slow consumers: what the read-ahead saves a worker",
    "",
    `${machine.date}; ${machine.cpuModel}, ${machine.cpus} vCPUs; Deno ${machine.deno}; ` +
    `load average ${machine.loadAverageAtStart} at the start, ${machine.loadAverageAtEnd} at the end; ` +
    `${Math.round(report.elapsedS)} s; mode ${report.mode}.`,
    "",
    `One worker slot, 20 ms of work per request; ${plan.consumers} consumers at once, each on a ` +
    `link of ${rate} MiB/s (64 KiB at a time, no catching up after a stall), loopback.`,
    "",
    `## Uploads of ${
      plan.uploadBytes / MIB
    } MiB (the worker reads the body whole, then works)`,
    "",
    "| hub setting | answered after (s) | worker waited for bodies (s) |",
    "| --- | --- | --- |",
  ];
  const setting = (r: SettingResult) =>
    r.name.startsWith("--") ? `\`${r.name}\`` : r.name;
  const times = (r: SettingResult) =>
    r.clients.map((c) => c.doneS.toFixed(2)).join(", ");
  for (const r of report.results.filter((r) => r.direction === "upload")) {
    lines.push(
      `| ${setting(r)} | ${times(r)} | ${r.workerWaitS.toFixed(2)} |`,
    );
  }
  lines.push(
    "",
    `## Downloads of ${plan.downloadBytes / MIB} MiB`,
    "",
    "| hub setting | downloaded after (s) |",
    "| --- | --- |",
  );
  for (const r of report.results.filter((r) => r.direction === "download")) {
    lines.push(`| ${setting(r)} | ${times(r)} |`);
  }
  lines.push(
    "",
    "With no read-ahead each consumer waits for the ones before it: the one worker slot is held",
    "while a consumer's link moves its body. Loopback's socket buffers (up to 32 MiB on the",
    "machine of the first runs) hold part of each body whatever the hub does.",
    "",
  );
  return lines.join("\n");
}

const HELP =
  `Usage: deno run -A bench/slow_clients.ts [--quick] [--smoke] [--out=DIR]

  --quick    half-size bodies (under a minute)
  --smoke    tiny bodies, two settings per direction; checks answers only
  --out=DIR  where to write slow_clients.{md,json} (default bench/results,
             bench/results/quick with --quick)`;

/** Runs the benchmark; returns the exit code. */
export async function main(args: string[] = Deno.args): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        quick: { type: "boolean" },
        smoke: { type: "boolean" },
        out: { type: "string" },
        help: { type: "boolean" },
      },
      strict: true,
    }));
  } catch (error) {
    console.error(`slow_clients: ${(error as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const mode: Mode = values.smoke ? "smoke" : values.quick ? "quick" : "full";
  const plan: Plan = {
    mode,
    consumers: mode === "smoke" ? 2 : 4,
    uploadBytes: { full: 16, quick: 8, smoke: 1 }[mode] * MIB,
    downloadBytes: { full: 32, quick: 16, smoke: 1 }[mode] * MIB,
    rate: (mode === "smoke" ? 32 : 8) * MIB,
    out: mode === "smoke" ? null : values.out ??
      join(ROOT, mode === "quick" ? "bench/results/quick" : "bench/results"),
  };
  const settings = mode === "smoke"
    ? SETTINGS.filter((s) =>
      s.args.length === 0 || s.args.includes("--buffer-uploads") ||
      s.args.includes("--response-spill-dir")
    )
    : SETTINGS;
  const began = performance.now();
  const watchdog = setTimeout(() => {
    console.error("slow_clients: took longer than 15 min; killed");
    killAll();
    Deno.exit(1);
  }, 15 * 60_000);
  Deno.unrefTimer(watchdog);
  const info = await machineInfo();
  const results: SettingResult[] = [];
  let failed = false;
  try {
    for (const setting of settings) {
      const r = await runSetting(plan, setting);
      console.log(
        `${r.direction} ${r.name}: answered after ${
          r.clients.map((c) => c.doneS.toFixed(2)).join(", ")
        } s${
          r.direction === "upload"
            ? `; worker waited ${r.workerWaitS.toFixed(2)} s`
            : ""
        }`,
      );
      results.push(r);
    }
  } catch (error) {
    failed = true;
    console.error(`slow_clients: ${(error as Error).stack ?? error}`);
  } finally {
    killAll();
    clearTimeout(watchdog);
  }
  const { out, ...planShown } = plan;
  const report: Report = {
    mode,
    machine: { ...info, loadAverageAtEnd: loadAverage() },
    plan: planShown,
    results,
    elapsedS: (performance.now() - began) / 1000,
  };
  if (out !== null && !failed) {
    await writeReport(out, "slow_clients", renderMarkdown(report), report);
  }
  return failed ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main());
