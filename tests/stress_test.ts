/**
 * Randomized, seeded stress of a real hub with in-process workers: each seed
 * draws a combination of features (pools with their own limits, priority
 * classes with and without aging, fair queuing by requests or time, key
 * limits, worker affinity with and without waits, upload and response
 * buffers, worker tokens and their withdrawal, a worker that declines,
 * recycling workers) and a load with random events (consumers that abort,
 * workers that join, drain or crash, single connections cut, an early
 * shutdown), then checks what must hold whatever the combination:
 *
 * - every consumer gets exactly one outcome, of a documented kind, and the
 *   answer to its own request (id and upload checksum echoed);
 * - a POST runs at most once, a GET or PUT at most 1 + maxRetries times;
 * - one access record per request; no queue timeout early or much late;
 * - strict class order and first come, first served where no fairness or
 *   affinity reorders;
 * - afterwards nothing queued, waiting, busy or buffered, the gauges at 0,
 *   every live worker back to all its connections, a clean shutdown.
 *
 * `SEEDS=1-40` (a range or a comma list) picks the seeds (default 1-6);
 * `INTENSE=1` gives heavier load; `VERBOSE=1` prints more. Margins on
 * times are wide: the checks are about order and bounds, not speed.
 */

import { type HubServer, serveHub, type ServeHubOptions } from "../hub.ts";
import type { WorkerHandle } from "../worker.ts";
import { connectWorker } from "./_hub.ts";
import { HubMetrics } from "../_metrics.ts";
import { createAdminHandler } from "../_admin.ts";

function rng(seed: number) {
  let a = (seed * 2654435761) >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
type R = () => number;
const pick = <T>(r: R, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)];
const int = (r: R, lo: number, hi: number) =>
  lo + Math.floor(r() * (hi - lo + 1));
const VERBOSE = Deno.env.get("VERBOSE") === "1";
const INTENSE = Deno.env.get("INTENSE") === "1";

function parseSeeds(s: string): number[] {
  const out: number[] = [];
  for (const part of s.split(",")) {
    const m = /^(\d+)-(\d+)$/.exec(part);
    if (m) { for (let i = +m[1]; i <= +m[2]; i++) out.push(i); }
    else out.push(+part);
  }
  return out;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

async function waitFor(
  cond: () => boolean,
  ms: number,
): Promise<boolean> {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) return false;
    await sleep(10);
  }
  return true;
}

const POOLS = ["default", "a", "b"] as const;
const TENANTS = ["t1", "t2", "t3", ""];
const MODELS = ["m1", "m2", "m3", "m4", ""];

interface Config {
  hub: ServeHubOptions;
  pools: string[]; // pools in use
  tokens: boolean;
  decliner: boolean;
  nReq: number;
  pAbort: number;
  pCrash: number;
  events: number;
  drainEarly: boolean;
  maxRetries: number;
  keyLimit: boolean;
  recycle: boolean;
}

function makeConfig(r: R): Config {
  const pools = ["default", ...POOLS.slice(1).filter(() => r() < 0.6)];
  const hub: ServeHubOptions = {
    hostname: "127.0.0.1",
    port: 0,
    workerPort: 0,
    shutdownGrace: pick(r, [300, 1000, 2000]),
    queueTimeout: pick(r, [300, 800, 2000, 4000]),
    maxQueue: pick(r, [2, 5, 20, 10000]),
    maxRetries: pick(r, [0, 1, 2]),
    headTimeout: 20000,
  };
  const routes = [
    { pool: "a", pathPrefix: "/a/lo/", priority: -5 },
    { pool: "a", pathPrefix: "/a/" },
    { pool: "b", pathPrefix: "/b/hi/", priority: 5 },
    { pool: "b", pathPrefix: "/b/" },
    { pool: "default", pathPrefix: "/lo/", priority: -5 },
    { pool: "default", pathPrefix: "/hi/", priority: 5 },
  ];
  hub.routes = routes;
  if (r() < 0.3) hub.trustPriority = true;
  if (r() < 0.5) hub.priorityStep = pick(r, [0, 20, 200]);
  let keyLimit = false;
  if (r() < 0.55) {
    hub.fairBy = "header:x-tenant";
    if (r() < 0.5) hub.fairShare = "time";
    if (r() < 0.4) {
      hub.maxQueuePerKey = pick(r, [1, 2, 4]);
      keyLimit = true;
    }
    if (r() < 0.2) hub.fairWeights = { t1: 3 };
  }
  if (r() < 0.5) {
    hub.affinityBy = "header:x-model";
    if (r() < 0.6) hub.affinityWait = pick(r, [10, 50, 200]);
  }
  if (r() < 0.4) hub.bufferUploads = true;
  if (r() < 0.3) hub.requestBuffer = pick(r, [0, 16384]);
  if (r() < 0.3) hub.responseBuffer = pick(r, [0, 4096]);
  // per-pool overrides
  const poolOpts: Record<string, Record<string, unknown>> = {};
  for (const p of pools) {
    if (r() < 0.5) continue;
    const o: Record<string, unknown> = {};
    if (r() < 0.5) o.maxQueue = pick(r, [1, 3, 50]);
    if (r() < 0.4) o.queueTimeout = pick(r, [200, 1000, 3000]);
    if (r() < 0.3) o.priorityStep = pick(r, [0, 50]);
    if (r() < 0.2) o.headTimeout = pick(r, [100, 250]);
    if (r() < 0.2) o.maxRequestBodySize = pick(r, [2000, 100_000]);
    if (hub.fairBy && r() < 0.3) {
      o.fairBy = null;
    } else if (!hub.fairBy && r() < 0.3) {
      o.fairBy = "header:x-tenant";
      if (r() < 0.5) o.maxQueuePerKey = pick(r, [1, 3]);
      if (r() < 0.3) o.fairShare = "time";
      keyLimit ||= o.maxQueuePerKey !== undefined;
    }
    if (r() < 0.3) {
      o.affinityBy = hub.affinityBy ? null : "header:x-model";
      if (o.affinityBy && r() < 0.5) o.affinityWait = pick(r, [20, 100]);
    }
    poolOpts[p] = o;
  }
  hub.pools = poolOpts as ServeHubOptions["pools"];
  const tokens = r() < 0.3;
  if (tokens) hub.workerTokens = ["token-one-AAAA"];
  return {
    hub,
    pools,
    tokens,
    decliner: !tokens && r() < 0.4,
    nReq: INTENSE ? int(r, 100, 250) : int(r, 20, 90),
    pAbort: INTENSE ? pick(r, [0.1, 0.25, 0.4]) : pick(r, [0, 0.1, 0.25]),
    pCrash: pick(r, [0, 0.15, 0.3]),
    events: INTENSE ? int(r, 8, 25) : int(r, 2, 10),
    drainEarly: r() < 0.2,
    maxRetries: hub.maxRetries!,
    keyLimit,
    recycle: r() < 0.3,
  };
}

interface Plan {
  i: number;
  rid: string;
  method: string;
  bodyKind: "none" | "small" | "big" | "stream-small" | "stream-big";
  bodySize: number;
  path: string;
  pool: string;
  headers: Record<string, string>;
  startAt: number;
  abortAt: number; // -1 never
  slowRead: boolean;
  trickle: boolean;
}

function makePlans(r: R, seed: number, cfg: Config): Plan[] {
  const plans: Plan[] = [];
  let t = 0;
  for (let i = 0; i < cfg.nReq; i++) {
    t += INTENSE
      ? pick(r, [0, 0, 0, 2, 5, 10, 30])
      : pick(r, [0, 0, 5, 10, 30, 80]);
    const pool = pick(r, cfg.pools);
    const prefix = pool === "default"
      ? pick(r, ["/", "/lo/", "/hi/"])
      : pick(r, [`/${pool}/`, pool === "a" ? "/a/lo/" : "/b/hi/"]);
    const kind = pick(r, [
      "GET",
      "GET",
      "POST-small",
      "POST-big",
      "PUT-big",
      "POST-stream",
      "POST-stream-big",
      "GET",
    ]);
    const rid = `s${seed}r${i}`;
    const headers: Record<string, string> = {
      "x-rid": rid,
      "x-request-id": rid,
    };
    const tenant = pick(r, TENANTS);
    if (tenant) headers["x-tenant"] = tenant;
    const model = pick(r, MODELS);
    if (model) headers["x-model"] = model;
    const ms = pick(r, [0, 0, 5, 20, 60, 150, 300]);
    if (ms) headers["x-ms"] = String(ms);
    if (r() < 0.2) headers["x-stream"] = String(int(r, 2, 15));
    if (cfg.hub.trustPriority && r() < 0.5) {
      headers["x-pothead-priority"] = String(pick(r, [-3, 0, 3]));
    }
    let method = "GET", bodyKind: Plan["bodyKind"] = "none", bodySize = 0;
    switch (kind) {
      case "POST-small":
        method = "POST";
        bodyKind = "small";
        bodySize = int(r, 1, 3000);
        break;
      case "POST-big":
      case "PUT-big":
        method = kind.startsWith("PUT") ? "PUT" : "POST";
        bodyKind = "big";
        bodySize = int(r, 70_000, 300_000);
        break;
      case "POST-stream":
        method = "POST";
        bodyKind = "stream-small";
        bodySize = int(r, 1, 5000);
        break;
      case "POST-stream-big":
        method = "POST";
        bodyKind = "stream-big";
        bodySize = int(r, 70_000, 200_000);
        break;
    }
    plans.push({
      i,
      rid,
      method,
      bodyKind,
      bodySize,
      path: `${prefix}${rid}`,
      pool,
      headers,
      startAt: t,
      abortAt: r() < cfg.pAbort ? int(r, 0, 500) : -1,
      slowRead: r() < 0.15,
      trickle: r() < 0.3,
    });
  }
  return plans;
}

function bodyBytes(rid: string, n: number): Uint8Array {
  const b = new Uint8Array(n);
  let h = 0;
  for (let i = 0; i < rid.length; i++) h = (h * 31 + rid.charCodeAt(i)) & 0xff;
  for (let i = 0; i < n; i++) b[i] = (h + i * 7) & 0xff;
  return b;
}
function checksum(b: Uint8Array, sum = 0): number {
  for (let i = 0; i < b.length; i++) sum = (sum * 31 + b[i]) % 1000003;
  return sum;
}

interface Outcome {
  status?: number;
  text?: string;
  headerRid?: string | null;
  hubError?: boolean;
  error?: string;
  errorAfterHead?: boolean;
  aborted: boolean;
  ms: number;
}

interface W {
  id: string;
  pool: string;
  handle: WorkerHandle;
  conns: Set<Deno.Conn>;
  dead: boolean;
  concurrency: number;
}

export async function runSeed(seed: number): Promise<string[]> {
  const r = rng(seed);
  const cfg = makeConfig(r);
  const plans = makePlans(r, seed, cfg);
  const violations: string[] = [];
  const notes: string[] = [];
  const v = (s: string) => violations.push(s);
  const invocations = new Map<string, string[]>();
  let orderPairs = 0;
  const dispatches: { rid: string; t: number; queueMs: number }[] = [];
  const cfgDesc = JSON.stringify({
    ...cfg.hub,
    routes: undefined,
    nReq: cfg.nReq,
    pools: cfg.pools,
    poolOpts: cfg.hub.pools,
    decliner: cfg.decliner,
    pAbort: cfg.pAbort,
    pCrash: cfg.pCrash,
    events: cfg.events,
    drainEarly: cfg.drainEarly,
  });
  let server: HubServer;
  const metrics = new HubMetrics();
  const access = new Map<string, string[]>();
  const recs: import("../hub.ts").AccessRecord[] = [];
  cfg.hub.onAccess = (rec) => {
    metrics.observe(rec);
    recs.push(rec);
    const l = access.get(rec.id) ?? [];
    l.push(`${rec.status}/${rec.outcome}`);
    access.set(rec.id, l);
  };
  try {
    server = serveHub(cfg.hub);
  } catch (e) {
    console.log(`seed ${seed}: config rejected: ${(e as Error).message}`);
    return [];
  }
  const hub = server.hub;
  const url = `http://127.0.0.1:${server.addr.port}`;
  const client = Deno.createHttpClient({});
  let token = "token-one-AAAA";
  const workers: W[] = [];
  let wn = 0;
  let crashes = 0;
  let recycles = 0;
  const ctrl = new AbortController();

  function handlerFor(wid: string) {
    return async (req: Request): Promise<Response> => {
      const rid = req.headers.get("x-rid") ?? "?";
      dispatches.push({
        rid,
        t: performance.now(),
        queueMs: Number(req.headers.get("x-pothead-queue-ms") ?? "NaN"),
      });
      const list = invocations.get(rid) ?? [];
      list.push(wid);
      invocations.set(rid, list);
      let len = 0, sum = 0;
      if (req.body) {
        for await (const c of req.body) {
          len += c.length;
          sum = checksum(c, sum);
        }
      }
      const ms = Number(req.headers.get("x-ms") ?? 0);
      if (ms) await sleep(ms, req.signal);
      const head = JSON.stringify({ rid, len, sum, wid });
      const n = Number(req.headers.get("x-stream") ?? 0);
      if (!n) return new Response(head, { headers: { "x-rid": rid } });
      let k = 0;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const enc = new TextEncoder();
      const stream = new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(enc.encode(head + "\n"));
        },
        pull(c) {
          return new Promise<void>((resolve) => {
            timer = setTimeout(() => {
              timer = undefined;
              if (k++ >= n) c.close();
              else c.enqueue(enc.encode("x".repeat(1000) + "\n"));
              resolve();
            }, 15);
          });
        },
        cancel() {
          if (timer !== undefined) clearTimeout(timer);
        },
      });
      return new Response(stream, { headers: { "x-rid": rid } });
    };
  }

  function addWorker(pool: string): W {
    const id = `w${wn++}-${pool}`;
    const conns = new Set<Deno.Conn>();
    const concurrency = 1 + ((seed * 7 + wn * 13) % 3);
    const recycle = cfg.recycle ? 3 + ((seed + wn * 5) % 8) : 0;
    const w: W = {
      concurrency,
      id,
      pool,
      conns,
      dead: false,
      handle: connectWorker(handlerFor(id), {
        hostname: "127.0.0.1",
        port: server.workerAddr.port,
        concurrency,
        maxRequests: recycle,
        onRecycle: () => {
          w.dead = true;
          recycles++;
          // a supervisor would start a fresh one
          if (!ctrl.signal.aborted) addWorker(pool);
        },
        minBackoff: 10,
        maxBackoff: 100,
        pool,
        workerId: id,
        token: cfg.tokens ? () => token : undefined,
        onError: VERBOSE
          ? (e, ctx) => console.log(`worker ${id} error ${ctx}: ${e}`)
          : () => {},
        connect: async (hostname, port) => {
          const c = await Deno.connect({ hostname, port });
          conns.add(c);
          return c;
        },
      }),
    };
    workers.push(w);
    return w;
  }

  // A plain worker (default pool) that declines with the not-started 408.
  let declinerRuns = 0;
  async function decliner(): Promise<void> {
    while (!ctrl.signal.aborted && declinerRuns < 8) {
      let c: Deno.Conn;
      try {
        c = await Deno.connect({
          hostname: "127.0.0.1",
          port: server.workerAddr.port,
        });
      } catch {
        return;
      }
      const onAbort = () => {
        try {
          c.close();
        } catch { /* closed */ }
      };
      ctrl.signal.addEventListener("abort", onAbort, { once: true });
      try {
        const buf = new Uint8Array(65536);
        let got = "";
        while (!got.includes("\r\n\r\n")) {
          const n = await c.read(buf);
          if (n === null) break;
          got += new TextDecoder().decode(buf.subarray(0, n));
        }
        if (got.includes("\r\n\r\n")) {
          declinerRuns++;
          await c.write(
            new TextEncoder().encode(
              "HTTP/1.1 408 Request Timeout\r\nX-Pothead-Not-Started: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            ),
          );
        }
      } catch { /* closed */ }
      ctrl.signal.removeEventListener("abort", onAbort);
      try {
        c.close();
      } catch { /* closed */ }
      await sleep(30, ctrl.signal);
    }
  }

  for (const p of cfg.pools) {
    const n = int(r, 1, cfg.hub.affinityBy ? 4 : 2);
    for (let i = 0; i < n; i++) addWorker(p);
  }
  const declining = cfg.decliner ? decliner() : Promise.resolve();
  await waitFor(() => hub.stats.slots >= cfg.pools.length, 3000);

  // Events
  const eventPlan: { at: number; kind: string; x: number }[] = [];
  const span = plans.at(-1)!.startAt + 300;
  for (let i = 0; i < cfg.events; i++) {
    const kinds = ["join", "leave-drain", "crash-conn", "slow"];
    if (cfg.pCrash > 0) kinds.push("crash-worker", "crash-conn");
    if (cfg.tokens) kinds.push("withdraw");
    eventPlan.push({ at: int(r, 0, span), kind: pick(r, kinds), x: r() });
  }
  eventPlan.sort((a, b) => a.at - b.at);
  const eventLog: string[] = [];
  const t0 = performance.now();
  const events = (async () => {
    for (const e of eventPlan) {
      const wait = e.at - (performance.now() - t0);
      if (wait > 0) await sleep(wait, ctrl.signal);
      if (ctrl.signal.aborted) return;
      const live = workers.filter((w) => !w.dead);
      const w = live.length ? live[Math.floor(e.x * live.length)] : undefined;
      switch (e.kind) {
        case "join": {
          const nw = addWorker(cfg.pools[Math.floor(e.x * cfg.pools.length)]);
          eventLog.push(`${e.at} join ${nw.id}`);
          break;
        }
        case "leave-drain":
          if (!w) break;
          // keep one worker per pool alive at least
          if (live.filter((x) => x.pool === w.pool).length < 2) {
            addWorker(w.pool);
          }
          w.dead = true;
          w.handle.drain();
          eventLog.push(`${e.at} drain ${w.id}`);
          break;
        case "crash-worker":
          if (!w) break;
          if (live.filter((x) => x.pool === w.pool).length < 2) {
            addWorker(w.pool);
          }
          w.dead = true;
          crashes++;
          for (const c of w.conns) {
            try {
              c.close();
            } catch { /* */ }
          }
          w.handle.close();
          eventLog.push(`${e.at} crash ${w.id}`);
          break;
        case "crash-conn": {
          if (!w) break;
          const cs = [...w.conns];
          if (!cs.length) break;
          crashes++;
          const c = cs[Math.floor(e.x * cs.length)];
          w.conns.delete(c);
          try {
            c.close();
          } catch { /* */ }
          eventLog.push(`${e.at} crash-conn ${w.id}`);
          break;
        }
        case "withdraw": {
          token = `token-${Math.floor(e.x * 1e9)}-BBBB`;
          const ended = hub.setWorkerTokens([token]);
          // A withdrawn worker's connections close as they free: count
          // it with the crashes that may cut bodies.
          crashes++;
          eventLog.push(`${e.at} withdraw ended=${ended}`);
          break;
        }
        case "slow":
          break;
      }
    }
  })();

  // Consumers
  const outcomes = new Map<string, Outcome>();
  let drainStarted = false;
  let drainAt = Infinity;
  async function consume(p: Plan): Promise<void> {
    await sleep(p.startAt);
    const ac = new AbortController();
    let at: ReturnType<typeof setTimeout> | undefined;
    if (p.abortAt >= 0) {
      at = setTimeout(() => ac.abort(), p.abortAt);
    }
    const start = performance.now();
    const o: Outcome = { aborted: false, ms: 0 };
    let body: BodyInit | undefined;
    if (p.bodyKind === "small" || p.bodyKind === "big") {
      body = bodyBytes(p.rid, p.bodySize) as Uint8Array<ArrayBuffer>;
    } else if (p.bodyKind.startsWith("stream")) {
      const all = bodyBytes(p.rid, p.bodySize);
      let off = 0;
      const step = 16384;
      body = new ReadableStream<Uint8Array>({
        async pull(c) {
          if (off >= all.length) return c.close();
          await sleep(p.trickle ? 40 : 2);
          c.enqueue(all.slice(off, off + step));
          off += step;
        },
      });
    }
    try {
      const res = await fetch(url + p.path, {
        method: p.method,
        headers: p.headers,
        body,
        signal: ac.signal,
        client,
      });
      o.status = res.status;
      o.headerRid = res.headers.get("x-rid");
      o.hubError = res.headers.get("x-pothead-error") === "1";
      try {
        if (p.slowRead && res.body) {
          let t = "";
          const dec = new TextDecoder();
          for await (const c of res.body) {
            t += dec.decode(c, { stream: true });
            await sleep(20);
          }
          o.text = t;
        } else o.text = await res.text();
      } catch (e) {
        o.error = `${(e as Error).name}: ${(e as Error).message}`;
        o.errorAfterHead = true;
      }
    } catch (e) {
      o.error = `${(e as Error).name}: ${(e as Error).message}`;
    } finally {
      clearTimeout(at);
      o.aborted = ac.signal.aborted;
      o.ms = performance.now() - start;
    }
    outcomes.set(p.rid, o);
  }
  const consumers = plans.map((p) => consume(p));
  let drainP: Promise<void> | undefined;
  if (cfg.drainEarly) {
    const at = plans[Math.floor(plans.length * 0.7)].startAt;
    await sleep(at);
    drainStarted = true;
    drainAt = at;
    drainP = server.shutdown();
  }
  const BOUND = 25000;
  let bt: ReturnType<typeof setTimeout> | undefined;
  const allDone = Promise.all(consumers).then(() => true);
  const hung = await Promise.race([
    allDone,
    new Promise<boolean>((res) => {
      bt = setTimeout(() => res(false), BOUND);
    }),
  ]);
  clearTimeout(bt);
  if (!hung) {
    const missing = plans.filter((p) => !outcomes.has(p.rid)).map((p) =>
      `${p.rid}(${p.method} ${p.bodyKind} ${p.path} ${
        JSON.stringify(p.headers)
      })`
    );
    v(`HANG: ${missing.length} consumers got no outcome within ${BOUND}ms: ${
      missing.slice(0, 5).join(" ")
    }; stats=${JSON.stringify(hub.stats.pools)}`);
  }
  ctrl.abort();
  await events;
  await declining;

  // Check outcomes
  const counts: Record<string, number> = {};
  for (const p of plans) {
    const o = outcomes.get(p.rid);
    if (!o) continue;
    const inv = invocations.get(p.rid) ?? [];
    const key = o.error
      ? (o.aborted
        ? "aborted"
        : (o.errorAfterHead ? "body-error" : "net-error"))
      : String(o.status);
    counts[key] = (counts[key] ?? 0) + 1;
    const desc = `${p.rid} ${p.method} ${p.bodyKind}(${p.bodySize}) ${p.path} ${
      JSON.stringify(p.headers)
    } -> ${key} ${o.text?.slice(0, 120) ?? ""} ${o.error ?? ""} inv=${
      JSON.stringify(inv)
    } ms=${o.ms.toFixed(0)}`;
    const idem = p.method === "GET" || p.method === "PUT";
    const replayable = p.bodyKind === "none" || p.bodyKind === "small";
    const maxInv = idem && (replayable || p.method === "PUT")
      ? 1 + cfg.maxRetries
      : 1;
    if (inv.length > maxInv) v(`RUN TWICE (max ${maxInv}): ${desc}`);
    if (o.error && !o.aborted) {
      if (!o.errorAfterHead) {
        if (p.startAt >= drainAt - 50) continue; // listener closed: refused
        v(`NETWORK ERROR without abort: ${desc}`);
      } else if (crashes === 0 && !drainStarted) {
        v(`BODY ERROR without crash: ${desc}`);
      }
      continue;
    }
    if (o.error) continue;
    const s = o.status!;
    if (s === 200) {
      let body: { rid: string; len: number; sum: number } | undefined;
      try {
        body = JSON.parse(o.text!.split("\n")[0]);
      } catch {
        v(`200 with bad body: ${desc}`);
        continue;
      }
      if (body!.rid !== p.rid || o.headerRid !== p.rid) {
        v(`WRONG RESPONSE: ${desc} hdr=${o.headerRid}`);
      }
      const want = p.bodyKind === "none"
        ? { len: 0, sum: 0 }
        : { len: p.bodySize, sum: checksum(bodyBytes(p.rid, p.bodySize)) };
      if (body!.len !== want.len || body!.sum !== want.sum) {
        v(`BODY MISMATCH: want ${JSON.stringify(want)} ${desc}`);
      }
      if (inv.length === 0) v(`200 without invocation: ${desc}`);
    } else if (s === 503 || s === 429) {
      if (!o.hubError) v(`non-hub ${s}: ${desc}`);
      if (s === 429 && !cfg.keyLimit) v(`429 without key limit: ${desc}`);
      if (!idem && inv.length > 0 && !drainStarted) {
        v(`POST answered ${s} after running: ${desc}`);
      }
      if (s === 503 && VERBOSE) notes.push(desc);
    } else if (
      s === 504 &&
      (cfg.hub.pools as Record<string, { headTimeout?: number }>)[p.pool]
        ?.headTimeout
    ) {
      if (!o.hubError) v(`non-hub 504: ${desc}`);
    } else if (
      s === 413 &&
      (cfg.hub.pools as Record<string, { maxRequestBodySize?: number }>)[p.pool]
        ?.maxRequestBodySize
    ) {
      if (!o.hubError) v(`non-hub 413: ${desc}`);
      if (
        p.bodySize <=
          (cfg.hub.pools as Record<string, { maxRequestBodySize?: number }>)[
            p.pool
          ]!.maxRequestBodySize!
      ) v(`413 under limit: ${desc}`);
      if (
        inv.length > 0 && p.bodyKind !== "stream-big" &&
        p.bodyKind !== "stream-small" && p.bodyKind !== "big"
      ) v(`413 after running: ${desc}`);
    } else if (s === 502) {
      if (crashes === 0) v(`502 without crash: ${desc}`);
      if (VERBOSE) notes.push(desc);
    } else {
      v(`UNEXPECTED STATUS ${s}: ${desc}`);
    }
  }

  // Quiescence: queues empty, nothing busy or waiting.
  if (!drainStarted) {
    const quiet = () => {
      const st = hub.stats;
      return st.queued === 0 && st.busy === 0 && st.webSockets === 0 &&
        st.responseBuffered === 0 && st.requestBuffered === 0 &&
        st.pools.every((p) =>
          p.queued === 0 && p.waiting === 0 && p.busy === 0 && p.keys === 0
        );
    };
    if (!(await waitFor(quiet, 5000))) {
      const st = hub.stats;
      v(
        `NOT QUIET after consumers done: queued=${st.queued} busy=${st.busy} ` +
          `respBuf=${st.responseBuffered} reqBuf=${st.requestBuffered} pools=${
            JSON.stringify(
              st.pools.map((p) => ({
                n: p.name,
                q: p.queued,
                w: p.waiting,
                b: p.busy,
                k: p.keys,
                s: p.slots,
                i: p.idle,
                cls: p.classes,
              })),
            )
          }`,
      );
    }
  }

  // Every live worker back at its full concurrency, idle.
  if (!drainStarted) {
    const full = () => {
      const ws = hub.stats.workers;
      return workers.filter((w) => !w.dead).every((w) => {
        const s = ws.find((x) => x.id === w.id);
        return s !== undefined && s.slots === w.concurrency && s.busy === 0;
      });
    };
    if (!(await waitFor(full, 4000))) {
      const ws = hub.stats.workers;
      v(`WORKERS NOT BACK: ${
        workers.filter((w) => !w.dead).map((w) => {
          const s = ws.find((x) => x.id === w.id);
          return `${w.id} want ${w.concurrency} have ${s?.slots}/${s?.busy} connected=${w.handle.connected} active=${w.handle.active}`;
        }).join("; ")
      }`);
    }
  }
  // Access records: exactly one per request that reached the hub.
  await sleep(50);
  for (const p of plans) {
    const o = outcomes.get(p.rid);
    const a = access.get(p.rid) ?? [];
    const refused = o?.error && !o.errorAfterHead && p.startAt >= drainAt - 50;
    if (a.length > 1) {
      v(`ACCESS RECORDED ${a.length}x: ${p.rid} ${
        JSON.stringify(a)
      } status=${o?.status} err=${o?.error}`);
    }
    if (a.length === 0 && !refused && !(o?.aborted)) {
      v(`NO ACCESS RECORD: ${p.rid} status=${o?.status} err=${o?.error}`);
    }
  }
  // Order: within a pool, a request that waited in the queue while another
  // was dispatched must not be outranked by it (strict classes, FIFO per
  // class), for pools without fairBy, affinity or priorityStep.
  {
    const planOf = new Map(plans.map((p) => [p.rid, p]));
    const recOf = new Map(recs.map((x) => [x.id, x]));
    const poolCfg = (name: string) =>
      ((cfg.hub.pools ?? {}) as Record<string, Record<string, unknown>>)[
        name
      ] ?? {};
    const effective = (name: string, key: string) => {
      const pc = poolCfg(name);
      return pc[key] !== undefined
        ? pc[key]
        : (cfg.hub as Record<string, unknown>)[key];
    };
    const first = new Map<string, { t: number; queueMs: number }>();
    const multi = new Set<string>();
    for (const d of dispatches) {
      if (first.has(d.rid)) multi.add(d.rid);
      else first.set(d.rid, d);
    }
    // Under load a request reaches its handler some time after the hub
    // sent it: only pairs further apart than this margin are compared.
    const M = 100;
    const items = [...first.entries()].filter(([rid]) =>
      !multi.has(rid) && (recOf.get(rid)?.retries ?? 1) === 0
    )
      .map(([rid, d]) => {
        const p = planOf.get(rid)!;
        const rec = recOf.get(rid)!;
        return {
          rid,
          pool: rec.pool,
          prio: rec.priority,
          arrive: d.t - d.queueMs,
          disp: d.t,
          p,
        };
      });
    for (const a of items) {
      const pool = a.pool;
      if (effective(pool, "fairBy") || effective(pool, "affinityBy")) continue;
      const stepRaw = effective(pool, "priorityStep");
      const step = typeof stepRaw === "number" ? stepRaw : Infinity;
      for (const b of items) {
        if (b.pool !== pool || b === a) continue;
        // a waited (queued) while b was dispatched
        if (!(a.arrive + M < b.disp && a.disp > b.disp + M)) continue;
        orderPairs++;
        let aFirst: boolean;
        if (step === Infinity) {
          aFirst = a.prio > b.prio ||
            (a.prio === b.prio && a.arrive + M < b.arrive);
        } else {
          const ea = a.arrive - a.prio * step, eb = b.arrive - b.prio * step;
          aFirst = ea + M < eb;
        }
        if (aFirst) {
          v(`ORDER: ${a.rid}(prio ${a.prio}, arrived ${
            a.arrive.toFixed(0)
          }, sent ${
            a.disp.toFixed(0)
          }) waited while ${b.rid}(prio ${b.prio}, arrived ${
            b.arrive.toFixed(0)
          }, sent ${
            b.disp.toFixed(0)
          }) went first in pool ${pool} step=${step}`);
        }
      }
    }
  }
  if (hub.stats.received !== recs.length) {
    v(`RECEIVED ${hub.stats.received} != access records ${recs.length}`);
  }
  // How late a queue timer may fire on a loaded machine.
  const SLACK = 1000;
  for (const rec of recs) {
    const po = (cfg.hub.pools ?? {})[rec.pool] as
      | { queueTimeout?: number }
      | undefined;
    const qt = po?.queueTimeout ?? cfg.hub.queueTimeout!;
    if (rec.retries > 0) continue;
    if (
      (rec.outcome === "ok" || rec.outcome === "queue-timeout") &&
      rec.queueMs > qt + SLACK
    ) {
      v(`QUEUED PAST TIMEOUT ${qt}: ${rec.id} pool=${rec.pool} outcome=${rec.outcome} queueMs=${
        rec.queueMs.toFixed(0)
      } prio=${rec.priority}`);
    }
    if (rec.outcome === "queue-timeout" && rec.queueMs < qt - 5) {
      v(`TIMED OUT EARLY ${qt}: ${rec.id} pool=${rec.pool} queueMs=${
        rec.queueMs.toFixed(0)
      }`);
    }
  }
  if (!drainStarted) {
    const admin = createAdminHandler(hub, metrics, {});
    const text = await admin(new Request("http://admin/metrics")).text();
    const bad = text.split("\n").filter((l) =>
      /^pothead_(queue_depth|affinity_waiting|queue_keys|response_buffered_bytes|request_buffered_bytes|websockets|queue_class_depth)\b/
        .test(l) ||
      /^pothead_worker_slots\{.*state="busy"/.test(l)
    ).filter((l) => !/ 0$/.test(l));
    if (bad.length) v(`METRICS NOT ZERO: ${bad.join(" | ")}`);
  }

  // Shutdown
  for (const w of workers) if (!w.dead) w.handle.drain();
  const shutT0 = performance.now();
  let shutMs = -1;
  const fin = (async () => {
    await (drainP ?? server.shutdown());
    shutMs = performance.now() - shutT0;
    await server.finished;
    await Promise.all(workers.map((w) => w.handle.finished));
  })();
  let st: ReturnType<typeof setTimeout> | undefined;
  const ok = await Promise.race([
    fin.then(() => true),
    new Promise<boolean>((res) => {
      st = setTimeout(() => res(false), 15000);
    }),
  ]);
  clearTimeout(st);
  if (!ok) {
    v(`SHUTDOWN HANG: stats=${JSON.stringify(hub.stats)}`);
    for (const w of workers) w.handle.close();
    await Promise.race([fin, sleep(3000)]);
  }
  if (shutMs > cfg.hub.shutdownGrace! + 5000) {
    v(`SHUTDOWN SLOW: ${
      shutMs.toFixed(0)
    } ms with grace ${cfg.hub.shutdownGrace}`);
  }
  client.close();
  {
    const st = hub.stats;
    if (
      st.queued || st.busy ||
      st.pools.some((p) => p.waiting || p.queued || p.busy)
    ) {
      v(`AFTER SHUTDOWN not empty: ${JSON.stringify(st.pools)}`);
    }
    if (hub.stats.received !== recs.length) {
      v(`AFTER SHUTDOWN received ${hub.stats.received} != access records ${recs.length}`);
    }
  }

  console.log(
    `seed ${seed}: ${plans.length} reqs ${JSON.stringify(counts)} events=[${
      eventLog.join(", ")
    }] decl=${declinerRuns} recycles=${recycles} orderPairs=${orderPairs} retries=${hub.stats.retries} violations=${violations.length}`,
  );
  if (violations.length || VERBOSE) {
    console.log(`  config: ${cfgDesc}`);
    for (const x of violations.slice(0, 15)) console.log(`  VIOLATION ${x}`);
    for (const x of notes.slice(0, 10)) console.log(`  note ${x}`);
  }
  return violations;
}

for (const seed of parseSeeds(Deno.env.get("SEEDS") ?? "1-6")) {
  Deno.test(`stress seed ${seed}`, async () => {
    const vs = await runSeed(seed);
    if (vs.length) {
      throw new Error(
        `seed ${seed}: ${vs.length} violations:\n${vs.slice(0, 5).join("\n")}`,
      );
    }
  });
}
