// The admin listener's /metrics against independent parsers (promtool,
// from the Debian package `prometheus`, and prometheus_client, from
// `python3-prometheus-client`), and its gauges and counters against
// hub.stats and /status, on a real hub with real sockets, under varied
// state and after churn. The tests are ignored where the tools are missing
// (.ci/run installs them).

import assert from "node:assert/strict";
import { createAdminHandler } from "../_admin.ts";
import { HubMetrics } from "../_metrics.ts";
import { type HubServer, serveHub, type ServeHubOptions } from "../hub.ts";
import type { WorkerHandle } from "../worker.ts";
import { connectWorker } from "./_hub.ts";
import { RawSocket } from "./_relay.ts";
import { deadline, waitFor as waitUntil } from "./_wait.ts";

const HANG = 20_000;
const waitFor = (check: () => boolean | Promise<boolean>, what: string) =>
  waitUntil(check, what, HANG);
const guard = <T>(p: Promise<T>, what: string) => deadline(p, HANG, what);

// ---------------------------------------------------------------------------
// Independent checks

const PYTHON = "/usr/bin/python3";
const CHECK_PY = `
import sys, json, math
from prometheus_client.parser import text_string_to_metric_families
text = sys.stdin.read()
errors = []
help_seen, type_seen = {}, {}
for line in text.split("\\n"):
    if line.startswith("# HELP "):
        n = line.split(" ")[2]; help_seen[n] = help_seen.get(n, 0) + 1
    elif line.startswith("# TYPE "):
        n = line.split(" ")[2]; type_seen[n] = type_seen.get(n, 0) + 1
for d, k in ((help_seen, "HELP"), (type_seen, "TYPE")):
    for n, c in d.items():
        if c > 1: errors.append("%s %s appears %d times" % (k, n, c))
if set(help_seen) != set(type_seen):
    errors.append("HELP without TYPE or back: %r" % (set(help_seen) ^ set(type_seen)))
samples, keys = [], set()
try:
    fams = list(text_string_to_metric_families(text))
except Exception as e:
    print(json.dumps({"errors": ["parse: %r" % (e,)], "samples": []})); sys.exit(0)
for f in fams:
    for s in f.samples:
        key = (s.name, tuple(sorted(s.labels.items())))
        if key in keys: errors.append("duplicate series %r" % (key,))
        keys.add(key)
        v = s.value
        samples.append({"family": f.name, "type": f.type, "name": s.name,
                        "labels": s.labels, "value": v if math.isfinite(v) else str(v)})
        if f.type == "counter" and not (v >= 0): errors.append("counter %r negative" % (key,))
        if f.type == "counter" and not s.name.endswith("_total"): errors.append("counter %s without _total" % s.name)
        if f.type == "gauge" and s.name.endswith("_total"): errors.append("gauge %s ends _total" % s.name)
        if f.type == "gauge" and not math.isfinite(v): errors.append("gauge %r not finite" % (key,))
    if f.type == "histogram":
        groups = {}
        for s in f.samples:
            lab = dict(s.labels); le = lab.pop("le", None)
            g = groups.setdefault(tuple(sorted(lab.items())), {"buckets": [], "sum": None, "count": None})
            if s.name.endswith("_bucket"): g["buckets"].append((float(le), s.value))
            elif s.name.endswith("_sum"): g["sum"] = s.value
            elif s.name.endswith("_count"): g["count"] = s.value
        for lab, g in groups.items():
            b = g["buckets"]
            if [x[0] for x in b] != sorted(x[0] for x in b): errors.append("%s %r buckets out of order" % (f.name, lab))
            if not b or b[-1][0] != float("inf"):
                errors.append("%s %r no +Inf bucket" % (f.name, lab)); continue
            for (l1, c1), (l2, c2) in zip(b, b[1:]):
                if c2 < c1: errors.append("%s %r bucket le=%s %s > le=%s %s" % (f.name, lab, l1, c1, l2, c2))
            if g["sum"] is None or g["count"] is None:
                errors.append("%s %r lacks _sum or _count" % (f.name, lab)); continue
            if g["count"] != b[-1][1]: errors.append("%s %r _count %s != +Inf %s" % (f.name, lab, g["count"], b[-1][1]))
            if g["count"] == 0 and g["sum"] != 0: errors.append("%s %r sum %s with count 0" % (f.name, lab, g["sum"]))
            if g["sum"] < 0: errors.append("%s %r negative sum" % (f.name, lab))
    if f.type == "summary":
        groups = {}
        for s in f.samples:
            lab = dict(s.labels); lab.pop("quantile", None)
            groups.setdefault(tuple(sorted(lab.items())), {})[s.name[len(f.name):]] = s.value
        for lab, g in groups.items():
            if "_sum" not in g or "_count" not in g: errors.append("summary %s %r lacks sum/count" % (f.name, lab))
            elif g["_count"] == 0 and g["_sum"] != 0: errors.append("summary %s %r sum with count 0" % (f.name, lab))
print(json.dumps({"errors": errors, "samples": samples}))
`;

const PROMTOOL = "/usr/bin/promtool";
const PY_CLIENT = "/usr/lib/python3/dist-packages/prometheus_client";

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

const missing = !exists(PROMTOOL) || !exists(PYTHON) || !exists(PY_CLIENT);

// A test that needs both tools, ignored where either is missing.
function withTools(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore: missing, fn });
}

async function run(
  cmd: string,
  args: string[],
  input: string,
): Promise<{ code: number; out: string; err: string }> {
  const child = new Deno.Command(cmd, {
    args,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode(input));
  await w.close();
  const r = await guard(child.output(), `${cmd} to finish`);
  return {
    code: r.code,
    out: new TextDecoder().decode(r.stdout),
    err: new TextDecoder().decode(r.stderr),
  };
}

interface PySample {
  family: string;
  type: string;
  name: string;
  labels: Record<string, string>;
  value: number | string;
}

/** Runs both independent checks; returns prometheus_client's samples. */
async function independent(text: string, what: string): Promise<PySample[]> {
  const lint = await run(PROMTOOL, ["check", "metrics"], text);
  assert.equal(
    lint.code,
    0,
    `promtool check metrics (${what}): ${lint.out}${lint.err}`,
  );
  const r = await run(PYTHON, ["-c", CHECK_PY], text);
  assert.equal(r.code, 0, r.err);
  const { errors, samples } = JSON.parse(r.out) as {
    errors: string[];
    samples: PySample[];
  };
  assert.deepEqual(errors, [], `prometheus_client (${what})`);
  return samples;
}

function pick(
  samples: PySample[],
  name: string,
  labels: Record<string, string> = {},
): number[] {
  return samples.filter((s) =>
    s.name === name &&
    Object.entries(labels).every(([k, v]) => s.labels[k] === v)
  ).map((s) => Number(s.value));
}
const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

// ---------------------------------------------------------------------------
// Rig: a real hub, admin on Deno.serve, in-process workers, raw workers

interface Rig {
  hub: HubServer;
  admin: Deno.HttpServer<Deno.NetAddr>;
  stop: AbortController;
  workers: WorkerHandle[];
  raws: RawSocket[];
  gates: Set<PromiseWithResolvers<void>>;
  entered: Map<string, number>;
}

function startRig(options: Partial<ServeHubOptions>): Rig {
  const metrics = new HubMetrics();
  const hub = serveHub({
    hostname: "127.0.0.1",
    port: 0,
    workerPort: 0,
    shutdownGrace: 500,
    onAccess: (r) => metrics.observe(r),
    ...options,
  });
  const stop = new AbortController();
  const admin = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    createAdminHandler(hub.hub, metrics, { signal: stop.signal }),
  );
  return {
    hub,
    admin,
    stop,
    workers: [],
    raws: [],
    gates: new Set(),
    entered: new Map(),
  };
}

function release(rig: Rig) {
  for (const g of rig.gates) g.resolve();
  rig.gates.clear();
}

function addWorker(
  rig: Rig,
  opts: { pool?: string; workerId?: string; concurrency?: number },
): WorkerHandle {
  const w = connectWorker(async (req) => {
    const path = new URL(req.url).pathname;
    rig.entered.set(path, (rig.entered.get(path) ?? 0) + 1);
    if (path.includes("hold")) {
      const g = Promise.withResolvers<void>();
      rig.gates.add(g);
      await g.promise;
    }
    if (path.includes("big")) {
      return new Response(new Uint8Array(3 * 1024 * 1024));
    }
    if (path.includes("boom")) throw new Error("boom");
    return new Response(`hi ${path}\n`);
  }, {
    hostname: "127.0.0.1",
    port: rig.hub.workerAddr.port,
    concurrency: opts.concurrency ?? 1,
    minBackoff: 10,
    maxBackoff: 100,
    pool: opts.pool,
    workerId: opts.workerId,
  });
  rig.workers.push(w);
  return w;
}

async function stopRig(rig: Rig): Promise<void> {
  release(rig);
  for (const r of rig.raws) r.close();
  for (const w of rig.workers) w.close();
  await guard(Promise.all(rig.workers.map((w) => w.finished)), "workers");
  await guard(rig.hub.shutdown(), "hub shutdown");
  rig.stop.abort();
  await guard(rig.admin.shutdown(), "admin shutdown");
}

async function adminGet(rig: Rig, path: string) {
  const res = await fetch(`http://127.0.0.1:${rig.admin.addr.port}${path}`);
  return { status: res.status, body: await res.text() };
}

async function scrape(rig: Rig, what: string): Promise<PySample[]> {
  const r = await adminGet(rig, "/metrics");
  assert.equal(r.status, 200);
  return await independent(r.body, what);
}

function consumer(rig: Rig, path: string, init: RequestInit = {}) {
  return fetch(`http://127.0.0.1:${rig.hub.addr.port}${path}`, init).then(
    async (res) => {
      await res.body?.cancel();
      return res.status;
    },
    () => -1,
  );
}

// ---------------------------------------------------------------------------

withTools(
  "/metrics under pools, classes, fair keys and affinity passes promtool and prometheus_client",
  async () => {
    const rig = startRig({
      routes: [
        { pool: "images", pathPrefix: "/img/" },
        { pool: "fair", pathPrefix: "/fair/" },
        { pool: "aff", pathPrefix: "/aff/" },
        { pool: "empty", pathPrefix: "/empty/" },
        { pool: "default", pathPrefix: "/batch/", priority: -10 },
        { pool: "default", pathPrefix: "/hi/", priority: 7 },
      ],
      pools: {
        fair: { fairBy: "header:x-tenant", maxQueuePerKey: 1 },
        aff: { affinityBy: "header:x-model", affinityWait: 30 },
        empty: { queueTimeout: 30, maxQueue: 1 },
      },
      trustPriority: true,
    });
    const pending: Promise<number>[] = [];
    try {
      await scrape(rig, "empty hub");
      addWorker(rig, { workerId: "w-default" });
      addWorker(rig, { pool: "images", workerId: "w-img", concurrency: 2 });
      addWorker(rig, { pool: "fair", workerId: "w-fair" });
      addWorker(rig, { pool: "aff", workerId: "a-1" });
      addWorker(rig, { pool: "aff", workerId: "a-2" });
      await waitFor(() => rig.hub.hub.stats.slots === 6, "6 slots");
      await scrape(rig, "idle workers");

      // Busy default slot, then a queue of three classes and a client class.
      pending.push(consumer(rig, "/hold-1"));
      await waitFor(() => rig.entered.get("/hold-1") === 1, "hold-1");
      pending.push(consumer(rig, "/batch/x"));
      pending.push(consumer(rig, "/hi/x"));
      pending.push(
        consumer(rig, "/x", { headers: { "x-pothead-priority": "3" } }),
      );
      pending.push(
        consumer(rig, "/fair/hold", { headers: { "x-tenant": "a" } }),
      );
      await waitFor(() => rig.entered.get("/fair/hold") === 1, "fair hold");
      pending.push(consumer(rig, "/fair/q", { headers: { "x-tenant": "a" } }));
      pending.push(consumer(rig, "/fair/q", { headers: { "x-tenant": "b" } }));
      await waitFor(() => rig.hub.hub.stats.queued === 5, "5 queued");
      // key-full (429), bad priority (400), queue-full and queue-timeout.
      assert.equal(
        await consumer(rig, "/fair/q", { headers: { "x-tenant": "a" } }),
        429,
      );
      assert.equal(
        await consumer(rig, "/x", { headers: { "x-pothead-priority": "x" } }),
        400,
      );
      const timedOut = consumer(rig, "/empty/1");
      assert.equal(await timedOut, 503);
      for (const m of ["m1", "m2", "m3", "m1"]) {
        assert.equal(
          await consumer(rig, "/aff/x", { headers: { "x-model": m } }),
          200,
        );
      }
      assert.equal(await consumer(rig, "/img/boom"), 500);
      assert.equal(await consumer(rig, "/img/a"), 200);

      let samples = await scrape(rig, "busy, queued by class and by key");
      if (samples.length > 0) {
        assert.deepEqual(
          pick(samples, "pothead_queue_depth", { pool: "default" }),
          [3],
        );
        assert.deepEqual(
          pick(samples, "pothead_queue_class_depth", { pool: "default" })
            .length,
          4,
          "classes 7, 3, 0, -10",
        );
        assert.deepEqual(
          pick(samples, "pothead_queue_keys", { pool: "fair" }),
          [2],
        );
      }

      release(rig);
      for (const s of await guard(Promise.all(pending.splice(0)), "pending")) {
        assert.equal(s, 200);
      }
      await waitFor(() => rig.hub.hub.stats.busy === 0, "idle");
      // Records come when bodies end; wait until every received is counted.
      await waitFor(async () => {
        samples = await scrape(rig, "idle again");
        if (samples.length === 0) return true;
        return sum(pick(samples, "pothead_requests_total")) ===
          pick(samples, "pothead_requests_received_total")[0];
      }, "every request counted");
    } finally {
      release(rig);
      await Promise.allSettled(pending);
      await stopRig(rig);
    }
  },
);

// A plain worker on a raw socket that takes one request and then crashes
// (closes the connection) or declines it with the "not started" 408.
async function rawWorker(rig: Rig, act: "crash" | "decline"): Promise<void> {
  const s = await RawSocket.connect(rig.hub.workerAddr.port);
  rig.raws.push(s);
  const head = await s.readHead();
  if (head !== null && act === "decline") {
    await s.write(
      "HTTP/1.1 408 Request Timeout\r\nx-pothead-not-started: 1\r\n" +
        "connection: close\r\ncontent-length: 0\r\n\r\n",
    );
  }
  s.close();
}

type Series = Map<string, number>;
function counters(samples: PySample[]): Series {
  const out: Series = new Map();
  for (const s of samples) {
    if (
      s.type === "counter" || s.type === "histogram" || s.type === "summary"
    ) {
      if (s.name.endsWith("_sum")) continue; // sums of waits only grow too
      out.set(`${s.name}${JSON.stringify(s.labels)}`, Number(s.value));
    }
  }
  return out;
}
function assertMonotonic(before: Series, after: Series, what: string) {
  for (const [k, v] of before) {
    const now = after.get(k);
    assert.ok(now !== undefined, `${what}: counter ${k} vanished`);
    assert.ok(now >= v, `${what}: counter ${k} went from ${v} to ${now}`);
  }
}

withTools(
  "after churn (aborts, crashes, declines, timeouts, drain) gauges return to 0 and outcomes add up to requests received",
  async () => {
    const rig = startRig({
      routes: [
        { pool: "short", pathPrefix: "/short/" },
        { pool: "never", pathPrefix: "/never/" },
      ],
      pools: { short: { queueTimeout: 40 } },
      requestBuffer: 64 * 1024,
      responseBuffer: 256 * 1024,
      shutdownGrace: 300,
    });
    const pending: Promise<number>[] = [];
    const aborts: AbortController[] = [];
    let last: Series = new Map();
    const check = async (what: string) => {
      const samples = await scrape(rig, what);
      if (samples.length === 0) return samples;
      const now = counters(samples);
      assertMonotonic(last, now, what);
      last = now;
      return samples;
    };
    try {
      addWorker(rig, { workerId: "w1", concurrency: 2 });
      const raws: Promise<void>[] = [];
      for (let i = 0; i < 3; i++) raws.push(rawWorker(rig, "crash"));
      for (let i = 0; i < 3; i++) raws.push(rawWorker(rig, "decline"));
      await waitFor(() => rig.hub.hub.stats.slots === 8, "8 slots");

      // A bounded burst of 40 mixed requests.
      for (let i = 0; i < 40; i++) {
        const ac = new AbortController();
        aborts.push(ac);
        const kind = i % 5;
        if (kind === 0) pending.push(consumer(rig, `/ok-${i}`));
        else if (kind === 1) {
          pending.push(consumer(rig, `/hold-${i}`, { signal: ac.signal }));
        } else if (kind === 2) {
          // Read a little of a big response, then leave.
          pending.push(
            fetch(`http://127.0.0.1:${rig.hub.addr.port}/big-${i}`, {
              signal: ac.signal,
            }).then(async (res) => {
              const r = res.body!.getReader();
              await r.read();
              await r.cancel();
              return res.status;
            }, () => -1),
          );
        } else if (kind === 3) {
          // A streamed upload that never ends, then the consumer leaves.
          const body = new ReadableStream<Uint8Array>({
            start(c) {
              c.enqueue(new Uint8Array(100 * 1024));
              // Ended on abort, so that neither end waits for it for ever.
              ac.signal.addEventListener("abort", () => {
                try {
                  c.close();
                } catch {
                  // cancelled already
                }
              });
            },
          });
          pending.push(
            consumer(rig, `/up-${i}`, {
              method: "POST",
              body,
              signal: ac.signal,
            }),
          );
        } else pending.push(consumer(rig, `/short/${i}`));
        if (i % 10 === 9) await check(`burst ${i}`);
      }
      await guard(Promise.all(raws), "raw workers to act");
      await new Promise((r) => setTimeout(r, 100));
      await check("mid-burst");
      for (const ac of aborts) ac.abort();
      release(rig);
      await guard(Promise.all(pending.splice(0)), "burst settles");

      // Requests for a pool with no workers, then a drain.
      for (let i = 0; i < 3; i++) pending.push(consumer(rig, `/never/${i}`));
      await waitFor(() => rig.hub.hub.stats.queued === 3, "3 queued");
      for (const w of rig.workers) w.close();
      await guard(Promise.all(rig.workers.map((w) => w.finished)), "workers");
      const shut = rig.hub.shutdown();
      const ready = await adminGet(rig, "/readyz");
      assert.equal(ready.status, 503);
      assert.match(ready.body, /draining/);
      assert.equal((await adminGet(rig, "/healthz")).status, 200);
      await guard(shut, "shutdown");
      for (const s of await guard(Promise.all(pending.splice(0)), "never")) {
        assert.equal(s, 503);
      }

      const stats = rig.hub.hub.stats;
      const gauges = {
        queued: stats.queued,
        oldestWaitMs: stats.oldestWaitMs,
        slots: stats.slots,
        idle: stats.idle,
        parked: stats.parked,
        busy: stats.busy,
        responseBuffered: stats.responseBuffered,
        responseSpilled: stats.responseSpilled,
        requestBuffered: stats.requestBuffered,
        requestSpilled: stats.requestSpilled,
        webSockets: stats.webSockets,
      };
      assert.deepEqual(gauges, {
        queued: 0,
        oldestWaitMs: 0,
        slots: 0,
        idle: 0,
        parked: 0,
        busy: 0,
        responseBuffered: 0,
        responseSpilled: 0,
        requestBuffered: 0,
        requestSpilled: 0,
        webSockets: 0,
      });
      for (const p of stats.pools) {
        assert.deepEqual(
          [p.name, p.queued, p.waiting, p.slots, p.idle, p.busy, p.parked],
          [p.name, 0, 0, 0, 0, 0, 0],
        );
      }
      let samples: PySample[] = [];
      await waitFor(async () => {
        samples = await check("after drain");
        return samples.length === 0 ||
          sum(pick(samples, "pothead_requests_total")) === stats.received;
      }, "outcomes add up to received");
      if (samples.length > 0) {
        for (
          const g of [
            "pothead_queue_depth",
            "pothead_worker_slots",
            "pothead_worker_slots_connected",
            "pothead_workers_connected",
            "pothead_affinity_waiting",
            "pothead_queue_keys",
            "pothead_held",
            "pothead_queue_class_depth",
            "pothead_response_buffered_bytes",
            "pothead_response_spilled_bytes",
            "pothead_request_buffered_bytes",
            "pothead_request_spilled_bytes",
            "pothead_websockets",
          ]
        ) {
          assert.equal(sum(pick(samples, g)), 0, g);
        }
        assert.equal(
          pick(samples, "pothead_requests_received_total")[0],
          stats.received,
        );
        assert.equal(
          sum(
            pick(samples, "pothead_rejections_total", {
              reason: "queue_timeout",
            }),
          ),
          stats.timedOutQueued,
        );
        assert.equal(
          sum(pick(samples, "pothead_retries_total")),
          stats.retries,
        );
        assert.equal(
          sum(
            pick(samples, "pothead_requests_total", { outcome: "abandoned" }),
          ),
          stats.abandoned,
        );
      }
      const status = JSON.parse((await adminGet(rig, "/status")).body);
      const { pools: _p, workers: _w, ...totals } = rig.hub.hub.stats;
      assert.deepEqual(
        { ...status.stats, oldestWaitMs: 0 },
        { ...totals, oldestWaitMs: 0 },
      );
    } finally {
      release(rig);
      for (const ac of aborts) ac.abort();
      await Promise.allSettled(pending);
      await stopRig(rig);
    }
  },
);

Deno.test("fair keys, affinity waiters and class depths return to 0 after consumers leave while queued or waiting", async () => {
  const rig = startRig({
    routes: [
      { pool: "fair", pathPrefix: "/fair/" },
      { pool: "aff", pathPrefix: "/aff/" },
    ],
    pools: {
      fair: { fairBy: "header:x-tenant", maxQueuePerKey: 3 },
      aff: { affinityBy: "header:x-model", affinityWait: 5000 },
    },
    trustPriority: true,
  });
  const pending: Promise<number>[] = [];
  const aborts: AbortController[] = [];
  try {
    addWorker(rig, { pool: "fair", workerId: "f" });
    addWorker(rig, { pool: "aff", workerId: "a-1" });
    addWorker(rig, { pool: "aff", workerId: "a-2" });
    await waitFor(() => rig.hub.hub.stats.slots === 3, "3 slots");
    pending.push(consumer(rig, "/fair/hold", { headers: { "x-tenant": "z" } }));
    await waitFor(() => rig.entered.get("/fair/hold") === 1, "fair held");
    // Hold the worker key "h" ranks first; the other stays idle, so more
    // requests of key "h" wait for the held one, outside the queue.
    pending.push(
      consumer(rig, "/aff/hold", { headers: { "x-model": "h" } }),
    );
    await waitFor(() => rig.entered.get("/aff/hold") === 1, "aff held");
    let n = 0;
    for (let i = 0; i < 12; i++) {
      const ac = new AbortController();
      aborts.push(ac);
      pending.push(consumer(rig, `/fair/q${i}`, {
        headers: {
          "x-tenant": `t${i % 4}`,
          "x-pothead-priority": String((i % 3) - 1),
        },
        signal: ac.signal,
      }));
      n++;
    }
    for (let i = 0; i < 6; i++) {
      const ac = new AbortController();
      aborts.push(ac);
      pending.push(consumer(rig, `/aff/q${i}`, {
        headers: { "x-model": "h", "x-pothead-priority": String(i % 2) },
        signal: ac.signal,
      }));
    }
    await waitFor(() => {
      const s = rig.hub.hub.stats;
      const aff = s.pools.find((p) => p.name === "aff")!;
      return s.pools.find((p) => p.name === "fair")!.queued === n &&
        aff.queued + aff.waiting === 6;
    }, "all queued or waiting");
    const busy = await scrape(rig, "fair and affinity backlog");
    if (busy.length > 0) {
      assert.deepEqual(pick(busy, "pothead_queue_keys", { pool: "fair" }), [4]);
      assert.deepEqual(
        pick(busy, "pothead_affinity_waiting", { pool: "aff" }),
        [6],
      );
    }
    for (const ac of aborts) ac.abort();
    await waitFor(() => rig.hub.hub.stats.queued === 0, "queue empties");
    await waitFor(
      () => rig.hub.hub.stats.pools.every((p) => p.waiting === 0),
      "waiters leave",
    );
    const s = rig.hub.hub.stats;
    for (const p of s.pools) {
      assert.deepEqual(
        [p.name, p.queued, p.keys, p.waiting, p.classes.map((c) => c.priority)],
        [p.name, 0, 0, 0, [0]],
      );
    }
    release(rig);
    await guard(Promise.all(pending.splice(0)), "settle");
    await waitFor(() => rig.hub.hub.stats.busy === 0, "idle");
    const after = await scrape(rig, "after");
    for (
      const g of [
        "pothead_queue_keys",
        "pothead_affinity_waiting",
        "pothead_queue_class_depth",
        "pothead_queue_depth",
        "pothead_queue_oldest_age_seconds",
        "pothead_queue_class_oldest_age_seconds",
      ]
    ) assert.equal(sum(pick(after, g)), 0, g);
  } finally {
    release(rig);
    for (const ac of aborts) ac.abort();
    await Promise.allSettled(pending);
    await stopRig(rig);
  }
});
