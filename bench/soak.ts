/**
 * A bounded soak run: a hub (or several, every worker serving all of them)
 * and several worker processes under steady load, while workers are
 * SIGKILLed and restarted at random (and, with `--recycle-after N`, recycle
 * themselves with `--max-requests` and are started again) and consumers
 * abort at random; with `--hold-ahead` the hubs hold requests ahead. It
 * reports how every request ended, whether any request ran twice or got
 * another request's answer, and the hubs' peak RSS.
 *
 * ```sh
 * deno run -A bench/soak.ts --requests 100000
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { closeAll, type HubProc, startHub } from "../tests/_procs.ts";
import { makeRandom } from "./_trace.ts";

/** Options for {@linkcode runSoak}. */
export interface SoakOptions {
  /** Requests to send. */
  requests: number;
  /** Requests in flight at once. */
  inflight: number;
  /** Worker processes kept running. */
  workers: number;
  /** Concurrency of each worker process. */
  concurrency: number;
  /** Mean milliseconds between worker kills; 0 disables kills. */
  killEvery: number;
  /** Share of requests the consumer aborts early (0..1). */
  abortRate: number;
  /** Longest the whole run may take, in milliseconds (a hang guard). */
  deadline: number;
  /** Seed for the random choices. */
  seed: number;
  /**
   * Hubs; every worker serves all of them and requests go round the hubs.
   * Default 1.
   */
  hubs?: number;
  /**
   * Workers recycle themselves after this many requests (plus up to as
   * many again: `--max-requests` and `--max-requests-jitter`) and are
   * started again, as a supervisor would. 0 or unset: never.
   */
  recycleAfter?: number;
  /**
   * The hubs hold requests ahead (`--hold-ahead`), so held requests meet the
   * kills and the aborts too; the workers then run the `serve` engine, the
   * one that takes held requests. Default false.
   */
  holdAhead?: boolean;
  /**
   * Share of the GETs whose answer streams: its head 50 ms late, then a
   * chunk every 100 ms for 600 ms, so requests held behind it (with
   * `holdAhead`) meet answers whose end the hub cannot foresee. Default 0.
   */
  streamRate?: number;
}

// Held requests in the hubs' text access logs, and their statuses (the
// sixth field: TIME ID POOL METHOD PATH STATUS ...; the soak's paths hold no
// spaces).
function heldCounts(
  hubs: { stdout: { lines: string[] } }[],
): { held: number; heldStatuses: Record<string, number> } {
  const heldStatuses: Record<string, number> = {};
  let held = 0;
  for (const h of hubs) {
    for (const line of h.stdout.lines) {
      if (!/ held=1( |$)/.test(line)) continue;
      held++;
      const status = line.split(" ")[5];
      heldStatuses[status] = (heldStatuses[status] ?? 0) + 1;
    }
  }
  return { held, heldStatuses };
}

// Counts added key by key.
function sumCounts(
  ...counts: Record<string, number>[]
): Record<string, number> {
  const sum: Record<string, number> = {};
  for (const c of counts) {
    for (const [k, n] of Object.entries(c)) sum[k] = (sum[k] ?? 0) + n;
  }
  return sum;
}

/** What {@linkcode runSoak} saw. */
export interface SoakReport {
  sent: number;
  /** Requests that got a response carrying their own id. */
  answeredOnce: number;
  /** Responses that carried another request's id (must be 0). */
  wrongAnswer: number;
  /** Requests that got no response and no error before the deadline (must be 0). */
  lost: number;
  /** Requests the consumer aborted on purpose. */
  aborted: number;
  /** Requests that ended in a network error without an abort. */
  networkErrors: number;
  /** Status code counts. */
  statuses: Record<string, number>;
  /** Status code counts by method (GETs may be retried, POSTs not). */
  statusesByMethod: {
    GET: Record<string, number>;
    POST: Record<string, number>;
  };
  /** Non-idempotent requests that a worker started twice (must be 0). */
  ranTwiceUnsafe: number;
  /** Idempotent requests a worker started twice (allowed by the retry rule). */
  ranTwiceIdempotent: number;
  /** Retries the hubs logged. */
  retries: number;
  /** Requests whose answer streamed (see `streamRate`). */
  streams: number;
  /**
   * Of those, answered 200 but cut before the end (their worker was
   * killed mid-stream); not counted in `statuses`.
   */
  streamsCut: number;
  /**
   * Held requests sent elsewhere because the answer before them was still
   * streaming (from the hubs' logs).
   */
  heldReleased: number;
  /** Worker processes killed. */
  kills: number;
  /** Worker processes that recycled themselves (exit 0) and were restarted. */
  recycles: number;
  /**
   * Requests the hubs' access logs mark as held ahead (`held=1`); only with
   * `holdAhead`.
   */
  held?: number;
  /**
   * Status code counts of the held requests, from the same access logs;
   * only with `holdAhead`.
   */
  heldStatuses?: Record<string, number>;
  /** The largest peak resident set size of a hub in KiB (VmHWM). */
  hubPeakRssKiB: number;
  /** Wall time in seconds. */
  seconds: number;
}

function peakRss(pid: number): number {
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    return Number(/VmHWM:\s+([0-9]+)/.exec(status)?.[1] ?? 0);
  } catch {
    return 0;
  }
}

/** Runs one soak and returns the report. Cleans up every process. */
export async function runSoak(options: SoakOptions): Promise<SoakReport> {
  const random = makeRandom(options.seed);
  const dir = await Deno.makeTempDir({ prefix: "pothead-soak-" });
  const started = performance.now();
  const hubs: HubProc[] = [];
  let kills = 0;
  let recycles = 0;
  let logSeq = 0;
  try {
    for (let i = 0; i < (options.hubs ?? 1); i++) {
      hubs.push(
        await startHub([
          "--queue-timeout",
          "20s",
          "--head-timeout",
          "20s",
          "--max-queue",
          String(options.inflight * 4),
          "--log-level",
          "debug", // resends of declined requests are logged at debug
          // With holding ahead, its access log says which requests were held.
          ...(options.holdAhead
            ? ["--hold-ahead", "--access-log", "text"]
            : []),
        ], { listening: options.holdAhead ? "stderr" : "stdout" }),
      );
    }
    const workerEnv = () => ({ SOAK_LOG: `${dir}/w${logSeq++}.log` });
    const launch = () => {
      const p = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--allow-net",
          "--allow-env",
          "--allow-read",
          "--allow-write",
          "worker.ts",
          "--connect",
          hubs.map((h) => `127.0.0.1:${h.workerPort}`).join(","),
          "--concurrency",
          String(options.concurrency),
          "--max-backoff",
          "200ms",
          // Only the serve engine takes held requests (whatever
          // POTHEAD_ENGINE says, as in the inline run of the test suite).
          ...(options.holdAhead ? ["--engine", "serve"] : []),
          ...(options.recycleAfter
            ? [
              "--max-requests",
              String(options.recycleAfter),
              "--max-requests-jitter",
              String(options.recycleAfter),
            ]
            : []),
          "tests/fixtures/soak_handler.ts",
        ],
        cwd: new URL("../", import.meta.url),
        env: workerEnv(),
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn();
      return p;
    };
    // Each worker's place is kept filled, as a supervisor would: one that
    // exits (recycled, or killed by the chaos below) is started again.
    const procs: Deno.ChildProcess[] = [];
    let supervising = true;
    const supervisors = Array.from(
      { length: options.workers },
      async (_, i) => {
        while (supervising) {
          const p = procs[i] = launch();
          const status = await p.status;
          if (supervising && status.success) recycles++;
        }
      },
    );

    const bases = hubs.map((h) => `http://127.0.0.1:${h.port}`);
    const statusesByMethod = {
      GET: {} as Record<string, number>,
      POST: {} as Record<string, number>,
    };
    let answeredOnce = 0;
    let wrongAnswer = 0;
    let aborted = 0;
    let networkErrors = 0;
    let lost = 0;
    let streams = 0;
    let streamsCut = 0;
    let next = 0;
    const idempotent = new Set<number>();
    const stopAt = started + options.deadline;

    let chaos = true;
    const chaosLoop = (async () => {
      if (options.killEvery <= 0) return;
      while (chaos) {
        await new Promise((r) =>
          setTimeout(r, options.killEvery * (0.5 + random()))
        );
        if (!chaos) break;
        const victim = Math.floor(random() * procs.length);
        const p = procs[victim];
        try {
          p.kill("SIGKILL");
        } catch {
          // already gone
        }
        await p.status;
        kills++; // its supervisor starts it again
      }
    })();

    const streamRate = options.streamRate ?? 0;
    const one = async (n: number) => {
      const get = random() < 0.5;
      if (get) idempotent.add(n);
      // (No draw without streams: the same seed gives the same run as before.)
      const stream = get && streamRate > 0 && random() < streamRate;
      if (stream) streams++;
      const ms = Math.floor(random() * 4);
      const abort = random() < options.abortRate;
      const controller = new AbortController();
      const guard = setTimeout(
        () => controller.abort(new Error("lost")),
        Math.max(1000, stopAt - performance.now()),
      );
      let abortTimer: ReturnType<typeof setTimeout> | undefined;
      if (abort) {
        abortTimer = setTimeout(
          () => controller.abort(new Error("consumer abort")),
          Math.floor(random() * 6),
        );
      }
      let headIn = false;
      try {
        const base = bases[n % bases.length];
        const query = `ms=${ms}&id=${n}${stream ? "&stream=1" : ""}`;
        const res = await fetch(`${base}/soak?${query}`, {
          method: get ? "GET" : "POST",
          headers: { "x-soak-id": String(n) },
          body: get ? undefined : `payload ${n}`,
          signal: controller.signal,
        });
        headIn = true;
        const text = await res.text();
        const mine = statusesByMethod[get ? "GET" : "POST"];
        mine[res.status] = (mine[res.status] ?? 0) + 1;
        if (res.status === 200) {
          if (text.split(" ")[0] === String(n)) answeredOnce++;
          else wrongAnswer++;
        }
      } catch (error) {
        const reason = controller.signal.reason as Error | undefined;
        if (controller.signal.aborted && reason?.message === "lost") lost++;
        else if (controller.signal.aborted) aborted++;
        else if (stream && headIn) streamsCut++;
        else {
          networkErrors++;
          void error;
        }
      } finally {
        clearTimeout(guard);
        clearTimeout(abortTimer);
      }
    };
    const lanes = Array.from({ length: options.inflight }, async () => {
      while (next < options.requests && performance.now() < stopAt) {
        await one(next++);
      }
    });
    await Promise.all(lanes);
    chaos = false;
    await chaosLoop;
    const hubPeak = Math.max(...hubs.map((h) => peakRss(h.proc.pid)));
    supervising = false;
    for (const p of procs) {
      try {
        p.kill("SIGKILL");
      } catch {
        // gone
      }
    }
    await Promise.all(supervisors);

    // Count how often workers started each request.
    const runs = new Map<number, number>();
    for await (const entry of Deno.readDir(dir)) {
      const text = await Deno.readTextFile(`${dir}/${entry.name}`);
      for (const line of text.split("\n")) {
        const id = Number(line.split(" ")[1]);
        if (line !== "" && Number.isFinite(id)) {
          runs.set(id, (runs.get(id) ?? 0) + 1);
        }
      }
    }
    let ranTwiceUnsafe = 0;
    let ranTwiceIdempotent = 0;
    for (const [id, count] of runs) {
      if (count < 2) continue;
      if (idempotent.has(id)) ranTwiceIdempotent++;
      else ranTwiceUnsafe++;
    }
    const retries = hubs.reduce(
      (n, h) =>
        n +
        h.proc.stderr.lines.filter((l) => l.includes("retrying request"))
          .length,
      0,
    );
    // The reason _slot.ts gives a held request it sends elsewhere.
    const heldReleased = hubs.reduce(
      (n, h) =>
        n +
        h.proc.stderr.lines.filter((l) =>
          l.includes("retrying request") &&
          l.includes("the response before it was still coming")
        ).length,
      0,
    );
    return {
      sent: next,
      answeredOnce,
      wrongAnswer,
      lost,
      aborted,
      networkErrors,
      statuses: sumCounts(statusesByMethod.GET, statusesByMethod.POST),
      statusesByMethod,
      ranTwiceUnsafe,
      ranTwiceIdempotent,
      retries,
      streams,
      streamsCut,
      heldReleased,
      kills,
      recycles,
      ...(options.holdAhead ? heldCounts(hubs.map((h) => h.proc)) : {}),
      hubPeakRssKiB: hubPeak,
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    await closeAll(...hubs.map((h) => h.proc));
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      requests: { type: "string", default: "100000" },
      inflight: { type: "string", default: "32" },
      workers: { type: "string", default: "4" },
      concurrency: { type: "string", default: "2" },
      "kill-every": { type: "string", default: "1000" },
      "abort-rate": { type: "string", default: "0.02" },
      deadline: { type: "string", default: "1200" },
      seed: { type: "string", default: "42" },
      hubs: { type: "string", default: "1" },
      "recycle-after": { type: "string", default: "0" },
      "hold-ahead": { type: "boolean", default: false },
      "stream-rate": { type: "string", default: "0" },
    },
  });
  const options: SoakOptions = {
    requests: Number(values.requests),
    inflight: Number(values.inflight),
    workers: Number(values.workers),
    concurrency: Number(values.concurrency),
    killEvery: Number(values["kill-every"]),
    abortRate: Number(values["abort-rate"]),
    deadline: Number(values.deadline) * 1000,
    seed: Number(values.seed),
    hubs: Number(values.hubs),
    recycleAfter: Number(values["recycle-after"]),
    holdAhead: values["hold-ahead"],
    streamRate: Number(values["stream-rate"]),
  };
  console.log(`soak: ${JSON.stringify(options)}`);
  const report = await runSoak(options);
  console.log(JSON.stringify(report, null, 2));
  // A hub that died shows as network errors, not as lost requests.
  const ok = report.wrongAnswer === 0 && report.lost === 0 &&
    report.ranTwiceUnsafe === 0 && report.networkErrors === 0;
  console.log(ok ? "soak: OK" : "soak: FAILED");
  Deno.exit(ok ? 0 : 1);
}
