/**
 * Hub memory: RSS per queued request (against `Deno.serve` holding the same
 * number of pending requests), and peak RSS while 1 GiB streams up and down
 * through the hub.
 *
 * Run as a program it is the client side of these runs:
 * - `--hold --port P --count N`: opens N sockets, writes one GET on each,
 *   prints `sent N`, then reads every response and prints a JSON summary;
 * - `--upload --port P --bytes N`: POSTs N bytes with Content-Length;
 * - `--download --port P --bytes N`: GETs N bytes and counts them.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  DENO,
  fdCount,
  peakRssKiB,
  type Proc,
  resetPeakRss,
  round,
  rssKiB,
  sleep,
  spawn,
  startDirect,
  startHub,
  startWorkers,
  stopAll,
} from "./_util.ts";

// ------------------------------------------------------- queued requests

/** Results of {@linkcode queuedMemory}. */
export interface QueuedMemoryResult {
  /** Requests held. */
  count: number;
  /** Hub RSS (KiB) just started, and with `count` requests queued. */
  hubIdleKiB: number;
  hubQueuedKiB: number;
  /** Plain Deno.serve RSS (KiB) idle and with `count` requests pending. */
  serveIdleKiB: number;
  servePendingKiB: number;
  /** Hub delta minus Deno.serve delta, per request, in bytes. */
  hubBytesPerRequest: number;
  /** Hub delta per request in bytes (including what Deno.serve costs). */
  hubTotalBytesPerRequest: number;
  /** Deno.serve delta per request in bytes. */
  serveBytesPerRequest: number;
  /** Of the hub's queued requests, how many a worker later answered 200. */
  answeredAfterwards: number;
  /** Shortest queue time a consumer saw (Server-Timing), in ms. */
  minQueueMs: number;
}

/** Waits until RSS of `pid` changes by < 0.5 % over 1 s (bounded). */
async function settledRss(pid: number, maxMs: number): Promise<number> {
  const deadline = performance.now() + maxMs;
  let last = rssKiB(pid);
  while (performance.now() < deadline) {
    await sleep(1000);
    const now = rssKiB(pid);
    if (Math.abs(now - last) <= last * 0.005) return now;
    last = now;
  }
  return last;
}

async function waitFds(pid: number, want: number, maxMs: number) {
  const deadline = performance.now() + maxMs;
  while (fdCount(pid) < want) {
    if (performance.now() > deadline) {
      throw new Error(
        `process ${pid} holds ${fdCount(pid)} fds, expected ${want}`,
      );
    }
    await sleep(200);
  }
}

/**
 * Opens `count` consumer requests against a hub with no workers and against
 * `Deno.serve` with a handler that never answers; compares the RSS growth.
 * Afterwards a worker attaches to the hub and must answer every request.
 */
export async function queuedMemory(
  count: number,
  boundSeconds: number,
): Promise<QueuedMemoryResult> {
  const fdLimit = count + 2000;
  const procs: Proc[] = [];
  const stop = () => stopAll(procs.splice(0));
  try {
    // --- the hub
    const h = await startHub({
      maxSeconds: boundSeconds,
      fdLimit,
      args: ["--max-queue", String(count * 2), "--queue-timeout", "0"],
    });
    procs.push(h.proc);
    await sleep(1000);
    const hubIdleKiB = await settledRss(h.proc.pid, 5000);
    const hubFds = fdCount(h.proc.pid);
    const holder = await hold(h.port, count, fdLimit, boundSeconds);
    procs.push(holder);
    await holder.waitFor(/^sent \d+/, boundSeconds * 500);
    await waitFds(h.proc.pid, hubFds + count, 60_000);
    const hubQueuedKiB = await settledRss(h.proc.pid, 15_000);
    // Prove they were queued: a worker now answers every one of them.
    procs.push(
      ...await startWorkers({
        count: 1,
        concurrency: 8,
        handler: "bench/workers/trivial.ts",
        workerPort: h.workerPort,
        maxSeconds: boundSeconds,
      }),
    );
    const done = JSON.parse(
      (await holder.waitFor(/^\{.*\}$/, 120_000))[0],
    ) as HoldReport;
    await stop();

    // --- plain Deno.serve holding the same number
    const d = await startDirect({
      handler: "bench/workers/pending.ts",
      maxSeconds: boundSeconds,
      fdLimit,
    });
    procs.push(d.proc);
    await sleep(1000);
    const serveIdleKiB = await settledRss(d.proc.pid, 5000);
    const holder2 = await hold(d.port, count, fdLimit, boundSeconds);
    procs.push(holder2);
    await holder2.waitFor(/^sent \d+/, boundSeconds * 500);
    const deadline = performance.now() + 60_000;
    while (true) {
      const res = await fetch(`http://127.0.0.1:${d.port}/__count`);
      const n = Number(await res.text());
      if (n >= count) break;
      if (performance.now() > deadline) {
        throw new Error(`Deno.serve holds ${n} of ${count} requests`);
      }
      await sleep(200);
    }
    const servePendingKiB = await settledRss(d.proc.pid, 15_000);
    await stop();

    const hubDelta = (hubQueuedKiB - hubIdleKiB) * 1024;
    const serveDelta = (servePendingKiB - serveIdleKiB) * 1024;
    return {
      count,
      hubIdleKiB,
      hubQueuedKiB,
      serveIdleKiB,
      servePendingKiB,
      hubBytesPerRequest: Math.round((hubDelta - serveDelta) / count),
      hubTotalBytesPerRequest: Math.round(hubDelta / count),
      serveBytesPerRequest: Math.round(serveDelta / count),
      answeredAfterwards: done.statuses["200"] ?? 0,
      minQueueMs: done.minQueueMs,
    };
  } finally {
    await stop();
  }
}

function hold(
  port: number,
  count: number,
  fdLimit: number,
  boundSeconds: number,
): Promise<Proc> {
  return spawn([
    DENO,
    "run",
    "-A",
    "bench/memory.ts",
    "--hold",
    "--port",
    String(port),
    "--count",
    String(count),
  ], { name: "holding client", maxSeconds: boundSeconds, fdLimit });
}

// ------------------------------------------------------------- streaming

/** One 1 GiB transfer through the hub. */
export interface StreamRun {
  bytes: number;
  seconds: number;
  /** Megabytes (10^6) per second. */
  mbPerSecond: number;
  /** Hub RSS (KiB) before, and the peak of 100 ms samples during. */
  hubBeforeKiB: number;
  hubPeakSampledKiB: number;
  /** The kernel's peak RSS mark (VmHWM) over the transfer, when resettable. */
  hubPeakKernelKiB: number | null;
  /** Peak sampled RSS of the worker process (KiB), for context. */
  workerPeakSampledKiB: number;
  /** CPU of the transfer is in the client/worker; status and check here. */
  ok: boolean;
  detail: string;
}

/** Results of {@linkcode stream}. */
export interface StreamResult {
  upload: StreamRun;
  download: StreamRun;
}

async function transfer(
  hub: Proc,
  worker: Proc,
  port: number,
  mode: "upload" | "download",
  bytes: number,
  boundSeconds: number,
): Promise<StreamRun> {
  await sleep(500);
  const hubBeforeKiB = rssKiB(hub.pid);
  const kernelReset = resetPeakRss(hub.pid);
  let hubPeak = hubBeforeKiB;
  let workerPeak = rssKiB(worker.pid);
  const sampler = setInterval(() => {
    try {
      hubPeak = Math.max(hubPeak, rssKiB(hub.pid));
      workerPeak = Math.max(workerPeak, rssKiB(worker.pid));
    } catch {
      // a process went away; the run reports the failure
    }
  }, 100);
  try {
    const client = await spawn([
      DENO,
      "run",
      "-A",
      "bench/memory.ts",
      `--${mode}`,
      "--port",
      String(port),
      "--bytes",
      String(bytes),
    ], { name: `${mode} client`, maxSeconds: boundSeconds });
    try {
      const line = await client.waitFor(/^\{.*\}$/, boundSeconds * 1000);
      const r = JSON.parse(line[0]) as TransferReport;
      hubPeak = Math.max(hubPeak, rssKiB(hub.pid));
      return {
        bytes: r.bytes,
        seconds: round(r.ms / 1000, 2),
        mbPerSecond: round(r.bytes / 1e6 / (r.ms / 1000), 1),
        hubBeforeKiB,
        hubPeakSampledKiB: hubPeak,
        hubPeakKernelKiB: kernelReset ? peakRssKiB(hub.pid) : null,
        workerPeakSampledKiB: workerPeak,
        ok: r.ok,
        detail: r.detail,
      };
    } finally {
      await client.stop();
    }
  } finally {
    clearInterval(sampler);
  }
}

/**
 * Streams `bytes` up through the hub to a worker that discards them, then
 * `bytes` down from a worker that generates them, sampling the hub's RSS.
 */
export async function stream(
  bytes: number,
  boundSeconds: number,
): Promise<StreamResult> {
  const procs: Proc[] = [];
  try {
    const h = await startHub({ maxSeconds: boundSeconds * 2 + 30 });
    procs.push(h.proc);
    const [worker] = await startWorkers({
      count: 1,
      concurrency: 1,
      handler: "bench/workers/stream.ts",
      workerPort: h.workerPort,
      maxSeconds: boundSeconds * 2 + 30,
    });
    procs.push(worker);
    const upload = await transfer(
      h.proc,
      worker,
      h.port,
      "upload",
      bytes,
      boundSeconds,
    );
    const download = await transfer(
      h.proc,
      worker,
      h.port,
      "download",
      bytes,
      boundSeconds,
    );
    return { upload, download };
  } finally {
    await stopAll(procs);
  }
}

// ---------------------------------------------------------- client modes

interface HoldReport {
  statuses: Record<string, number>;
  minQueueMs: number;
}

interface TransferReport {
  bytes: number;
  ms: number;
  ok: boolean;
  detail: string;
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();

async function holdMain(port: number, count: number): Promise<void> {
  const request = encoder.encode(
    `GET /queued HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\n\r\n`,
  );
  const conns: Deno.TcpConn[] = [];
  const BATCH = 200;
  for (let i = 0; i < count; i += BATCH) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(BATCH, count - i) }, async () => {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port });
        await conn.write(request);
        return conn;
      }),
    );
    conns.push(...batch);
  }
  console.log(`sent ${conns.length}`);
  const statuses: Record<string, number> = {};
  let minQueueMs = Infinity;
  await Promise.all(conns.map(async (conn) => {
    const buf = new Uint8Array(4096);
    let got = 0;
    let status = "closed";
    try {
      while (got < buf.length) {
        const n = await conn.read(buf.subarray(got));
        if (n === null) break;
        got += n;
        const text = decoder.decode(buf.subarray(0, got));
        if (text.includes("\r\n\r\n")) {
          status = text.slice(9, 12);
          const q = text.match(/queue;dur=([\d.]+)/);
          if (q !== null) minQueueMs = Math.min(minQueueMs, Number(q[1]));
          break;
        }
      }
    } catch {
      status = "error";
    }
    statuses[status] = (statuses[status] ?? 0) + 1;
    conn.close();
  }));
  const report: HoldReport = {
    statuses,
    minQueueMs: Number.isFinite(minQueueMs) ? round(minQueueMs, 1) : -1,
  };
  console.log(JSON.stringify(report));
}

async function readResponse(
  conn: Deno.TcpConn,
): Promise<{ status: number; body: string }> {
  const buf = new Uint8Array(8192);
  let got = 0;
  while (got < buf.length) {
    const n = await conn.read(buf.subarray(got));
    if (n === null) break;
    got += n;
    const text = decoder.decode(buf.subarray(0, got));
    const end = text.indexOf("\r\n\r\n");
    if (end < 0) continue;
    const cl = text.match(/content-length: *(\d+)/i);
    const want = cl === null ? 0 : Number(cl[1]);
    if (got - end - 4 >= want) {
      return {
        status: Number(text.slice(9, 12)),
        body: text.slice(end + 4, end + 4 + want),
      };
    }
  }
  throw new Error(
    `incomplete response: ${decoder.decode(buf.subarray(0, got))}`,
  );
}

async function uploadMain(port: number, bytes: number): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const chunk = new Uint8Array(256 * 1024).fill(121);
  const start = performance.now();
  await writeAllTo(
    conn,
    encoder.encode(
      `POST /upload HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\n` +
        `content-type: application/octet-stream\r\ncontent-length: ${bytes}\r\n\r\n`,
    ),
  );
  let left = bytes;
  while (left > 0) {
    const n = Math.min(left, chunk.length);
    await writeAllTo(conn, n === chunk.length ? chunk : chunk.subarray(0, n));
    left -= n;
  }
  const res = await readResponse(conn);
  const ms = performance.now() - start;
  conn.close();
  const report: TransferReport = {
    bytes,
    ms,
    ok: res.status === 200 && res.body === String(bytes),
    detail: `status ${res.status}, worker counted ${res.body.trim()} bytes`,
  };
  console.log(JSON.stringify(report));
}

async function writeAllTo(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let at = 0;
  while (at < data.length) at += await conn.write(data.subarray(at));
}

async function downloadMain(port: number, bytes: number): Promise<void> {
  const start = performance.now();
  const res = await fetch(`http://127.0.0.1:${port}/download?bytes=${bytes}`);
  let total = 0;
  if (res.body !== null) {
    for await (const chunk of res.body) total += chunk.length;
  }
  const ms = performance.now() - start;
  const report: TransferReport = {
    bytes: total,
    ms,
    ok: res.status === 200 && total === bytes,
    detail: `status ${res.status}, content-length ${
      res.headers.get("content-length")
    }, received ${total} bytes`,
  };
  console.log(JSON.stringify(report));
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      hold: { type: "boolean" },
      upload: { type: "boolean" },
      download: { type: "boolean" },
      port: { type: "string" },
      count: { type: "string" },
      bytes: { type: "string" },
    },
  });
  const port = Number(values.port);
  if (values.hold) await holdMain(port, Number(values.count ?? 10_000));
  else if (values.upload) await uploadMain(port, Number(values.bytes));
  else if (values.download) await downloadMain(port, Number(values.bytes));
  else {
    console.error("usage: memory.ts --hold|--upload|--download --port P ...");
    Deno.exit(2);
  }
  Deno.exit(0);
}
