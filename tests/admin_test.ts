// Tests of the admin listener (_admin.ts) and the metrics behind it
// (_metrics.ts): the handler called with `new Request(...)` and fake stats,
// the Prometheus text checked by a small parser, and a real hub with a real
// worker and the admin handler on Deno.serve. Nothing asserts on durations:
// timing-dependent values use an injected clock, and every wait is a bounded
// poll or has a hang guard.

import { deadline, waitFor as waitUntil } from "./_wait.ts";
import assert from "node:assert/strict";
import { createAdminHandler } from "../_admin.ts";
import { formatAccess, HubMetrics } from "../_metrics.ts";
import {
  type AccessRecord,
  Hub,
  type HubServer,
  type HubStats,
  serveHub,
  type ServeHubOptions,
} from "../hub.ts";
import type { WorkerHandle } from "../worker.ts";
import { connectWorker } from "./_hub.ts";

const HANG_GUARD = 20_000;

const waitFor = (check: () => boolean | Promise<boolean>, what: string) =>
  waitUntil(check, what, HANG_GUARD);
const guard = <T>(promise: Promise<T>, what: string): Promise<T> =>
  deadline(promise, HANG_GUARD, what);

// ---------------------------------------------------------------------------
// Helpers

function fakeStats(over: Partial<HubStats> = {}): HubStats {
  return {
    draining: false,
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
    received: 0,
    answered: 0,
    retries: 0,
    affinityHits: 0,
    affinityMisses: 0,
    affinityWaits: 0,
    affinityWaitTimeouts: 0,
    affinityPicks: 0,
    rejectedFull: 0,
    rejectedKeyFull: 0,
    timedOutQueued: 0,
    failed: 0,
    abandoned: 0,
    handshakesRefused: 0,
    pings: 0,
    pingTimeouts: 0,
    pools: [],
    workers: [],
    ...over,
  };
}

function record(over: Partial<AccessRecord> = {}): AccessRecord {
  return {
    id: "req-1",
    pool: "default",
    method: "GET",
    path: "/",
    status: 200,
    outcome: "ok",
    queueMs: 1,
    workerMs: 2,
    totalMs: 3,
    bytesIn: 0,
    bytesOut: 10,
    worker: "addr:127.0.0.1",
    retries: 0,
    priority: 0,
    client: "127.0.0.1",
    ...over,
  };
}

/** A clock the test moves by hand. */
function fakeClock(start = 1_700_000_000_000) {
  let now = start;
  return {
    now: () => now,
    advance(ms: number) {
      now += ms;
    },
  };
}

// ---------------------------------------------------------------------------
// A small parser of the Prometheus text exposition format 0.0.4, strict
// enough to catch what scrapers reject.

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

interface Exposition {
  types: Map<string, string>;
  help: Map<string, string>;
  samples: Sample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function parseValue(text: string, line: string): number {
  if (text === "NaN") return NaN;
  if (text === "+Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) {
    throw new SyntaxError(`Cannot parse value: "${text}" in line "${line}"`);
  }
  return Number(text);
}

function parseLabels(text: string, line: string): Record<string, string> {
  const labels: Record<string, string> = {};
  let i = 0;
  while (i < text.length) {
    const eq = text.indexOf("=", i);
    if (eq < 0) throw new SyntaxError(`Cannot parse labels in "${line}"`);
    const name = text.slice(i, eq);
    if (!LABEL_NAME.test(name)) {
      throw new SyntaxError(`Invalid label name "${name}" in "${line}"`);
    }
    if (text[eq + 1] !== '"') {
      throw new SyntaxError(`Label value not quoted in "${line}"`);
    }
    let value = "";
    let j = eq + 2;
    for (; j < text.length && text[j] !== '"'; j++) {
      if (text[j] === "\\") {
        const next = text[++j];
        if (next === "n") value += "\n";
        else if (next === "\\" || next === '"') value += next;
        else throw new SyntaxError(`Bad escape in "${line}"`);
      } else if (text[j] === "\n") {
        throw new SyntaxError(`Raw newline in label value in "${line}"`);
      } else {
        value += text[j];
      }
    }
    if (j >= text.length) {
      throw new SyntaxError(`Unterminated value in "${line}"`);
    }
    if (name in labels) throw new SyntaxError(`Duplicate label in "${line}"`);
    labels[name] = value;
    i = j + 1;
    if (text[i] === ",") i++;
    else if (i < text.length) {
      throw new SyntaxError(`Expected "," after a label in "${line}"`);
    }
  }
  return labels;
}

/** The family a sample belongs to, given the declared types. */
function familyOf(name: string, types: Map<string, string>): string {
  if (types.has(name)) return name;
  for (const suffix of ["_bucket", "_sum", "_count"]) {
    if (name.endsWith(suffix)) {
      const base = name.slice(0, -suffix.length);
      const type = types.get(base);
      // A summary has a sum and a count too, but no buckets.
      if (
        type === "histogram" || (type === "summary" && suffix !== "_bucket")
      ) return base;
    }
  }
  return name;
}

function parseExposition(text: string): Exposition {
  assert.ok(text.endsWith("\n"), "exposition ends with a newline");
  const out: Exposition = { types: new Map(), help: new Map(), samples: [] };
  const seenSeries = new Set<string>();
  const familiesWithSamples = new Set<string>();
  for (const line of text.slice(0, -1).split("\n")) {
    if (line.startsWith("# HELP ")) {
      const m = /^# HELP (\S+) (.*)$/.exec(line);
      assert.ok(m, `HELP line: ${line}`);
      assert.match(m[1], METRIC_NAME);
      assert.ok(!out.help.has(m[1]), `one HELP for ${m[1]}`);
      out.help.set(m[1], m[2]);
      continue;
    }
    if (line.startsWith("# TYPE ")) {
      const m = /^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/
        .exec(line);
      assert.ok(m, `TYPE line: ${line}`);
      assert.ok(!out.types.has(m[1]), `one TYPE for ${m[1]}`);
      assert.ok(
        !familiesWithSamples.has(m[1]),
        `TYPE of ${m[1]} comes before its samples`,
      );
      out.types.set(m[1], m[2]);
      continue;
    }
    assert.ok(!line.startsWith("#"), `no other comments: ${line}`);
    assert.notEqual(line.trim(), "", "no blank lines");
    const m = /^([^{\s]+)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$/.exec(line);
    assert.ok(m, `sample line: ${line}`);
    assert.match(m[1], METRIC_NAME, `metric name in ${line}`);
    const labels = parseLabels(m[2] ?? "", line);
    const value = parseValue(m[3], line);
    const family = familyOf(m[1], out.types);
    assert.ok(out.types.has(family), `TYPE declared for ${m[1]}`);
    assert.ok(out.help.has(family), `HELP declared for ${m[1]}`);
    familiesWithSamples.add(family);
    const key = `${m[1]}${JSON.stringify(Object.entries(labels).sort())}`;
    assert.ok(!seenSeries.has(key), `series appears once: ${line}`);
    seenSeries.add(key);
    out.samples.push({ name: m[1], labels, value });
  }
  // Families must be contiguous: a family's samples are not split by another.
  let previous = "";
  const closed = new Set<string>();
  for (const s of out.samples) {
    const f = familyOf(s.name, out.types);
    if (f !== previous) {
      assert.ok(!closed.has(f), `samples of ${f} are grouped together`);
      if (previous) closed.add(previous);
      previous = f;
    }
  }
  for (const [name, type] of out.types) {
    if (type === "counter") {
      assert.ok(name.endsWith("_total"), `counter ${name} ends with _total`);
    }
    if (type === "histogram") checkHistogram(out, name);
  }
  return out;
}

function checkHistogram(exp: Exposition, name: string): void {
  const groups = new Map<string, { le: number; count: number }[]>();
  const counts = new Map<string, number>();
  const sums = new Map<string, number>();
  for (const s of exp.samples) {
    const { le, ...rest } = s.labels;
    const key = JSON.stringify(Object.entries(rest).sort());
    if (s.name === `${name}_bucket`) {
      assert.ok(le !== undefined, `${name}_bucket has le`);
      let g = groups.get(key);
      if (g === undefined) groups.set(key, g = []);
      g.push({ le: parseValue(le, le), count: s.value });
    } else if (s.name === `${name}_count`) counts.set(key, s.value);
    else if (s.name === `${name}_sum`) sums.set(key, s.value);
  }
  assert.ok(groups.size > 0, `${name} has buckets`);
  for (const [key, buckets] of groups) {
    for (let i = 1; i < buckets.length; i++) {
      assert.ok(buckets[i].le > buckets[i - 1].le, `${name} le ascending`);
      assert.ok(
        buckets[i].count >= buckets[i - 1].count,
        `${name}${key} buckets are cumulative`,
      );
    }
    const last = buckets[buckets.length - 1];
    assert.equal(last.le, Infinity, `${name}${key} ends with le="+Inf"`);
    assert.equal(last.count, counts.get(key), `${name}${key} +Inf == _count`);
    assert.ok(sums.has(key), `${name}${key} has _sum`);
  }
}

function value(
  exp: Exposition,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const found = exp.samples.find((s) =>
    s.name === name &&
    Object.entries(labels).every(([k, v]) => s.labels[k] === v)
  );
  return found?.value;
}

async function get(
  handler: (req: Request) => Response,
  path: string,
  init?: RequestInit,
): Promise<{ res: Response; body: string }> {
  const res = handler(new Request(`http://admin${path}`, init));
  return { res, body: await res.text() };
}

// ---------------------------------------------------------------------------
// Unit tests: the handler and the metrics with fake stats

Deno.test("admin /metrics is valid Prometheus text and counts what the records say", async () => {
  const metrics = new HubMetrics();
  metrics.observe(record({ queueMs: 0.3, workerMs: 4, bytesOut: 100 }));
  metrics.observe(
    record({ queueMs: 20, workerMs: 700, bytesIn: 50, bytesOut: 5 }),
  );
  metrics.observe(record({ status: 404, bytesOut: 1, retries: 1 }));
  metrics.observe(
    record({
      status: 503,
      outcome: "queue-full",
      queueMs: 0,
      workerMs: -1,
      bytesOut: 0,
      worker: null,
    }),
  );
  metrics.observe(
    record({
      status: 503,
      outcome: "queue-timeout",
      queueMs: 30_000,
      workerMs: -1,
      bytesOut: 0,
      worker: null,
    }),
  );
  metrics.observe(
    record({
      status: 503,
      outcome: "shutting-down",
      queueMs: 5,
      workerMs: -1,
      bytesOut: 0,
      worker: null,
    }),
  );
  metrics.observe(
    record({
      status: 504,
      outcome: "worker-timeout",
      workerMs: 90_000,
      bytesOut: 0,
    }),
  );
  metrics.observe(
    record({ pool: "gpu", queueMs: 2, workerMs: 3, bytesOut: 7 }),
  );
  metrics.observe(
    record({ pool: "gpu", priority: 5, queueMs: 40, workerMs: 3 }),
  );
  metrics.observe(
    record({ pool: "gpu", priority: 5, queueMs: 60, workerMs: 3 }),
  );
  metrics.observe(
    record({ pool: "gpu", priority: -3, queueMs: 500, workerMs: 3 }),
  );
  metrics.observe(
    record({
      pool: "gpu",
      status: 429,
      outcome: "key-full",
      queueMs: 0,
      workerMs: -1,
      bytesOut: 0,
      worker: null,
    }),
  );
  const stats = fakeStats({
    queued: 3,
    oldestWaitMs: 1500,
    slots: 6,
    idle: 1,
    parked: 1,
    busy: 4,
    received: 11,
    handshakesRefused: 2,
    affinityHits: 7,
    affinityMisses: 3,
    affinityWaits: 5,
    affinityWaitTimeouts: 2,
    affinityPicks: 6,
    pings: 9,
    pingTimeouts: 1,
    pools: [
      {
        name: "default",
        queued: 2,
        keys: 0,
        oldestWaitMs: 1500,
        waiting: 0,
        slots: 3,
        idle: 0,
        parked: 0,
        busy: 3,
        held: 0,
        heldTotal: 0,
        takeBacks: 0,
        workers: 1,
        classes: [{ priority: 0, queued: 2, oldestWaitMs: 1500 }],
        named: true,
      },
      {
        name: "gpu",
        queued: 1,
        keys: 1,
        oldestWaitMs: 250,
        waiting: 4,
        slots: 3,
        idle: 1,
        parked: 1,
        busy: 1,
        held: 0,
        heldTotal: 0,
        takeBacks: 0,
        workers: 2,
        classes: [
          { priority: 7, queued: 1, oldestWaitMs: 250 },
          { priority: 0, queued: 0, oldestWaitMs: 0 },
        ],
        named: true,
      },
    ],
  });
  const handler = createAdminHandler({ stats }, metrics);
  const { res, body } = await get(handler, "/metrics");
  assert.equal(res.status, 200);
  assert.equal(
    res.headers.get("content-type"),
    "text/plain; version=0.0.4; charset=utf-8",
  );
  const exp = parseExposition(body);

  const d = { pool: "default" };
  const gpu = { pool: "gpu" };
  assert.equal(value(exp, "pothead_queue_depth", d), 2);
  assert.equal(value(exp, "pothead_queue_depth", gpu), 1);
  assert.equal(value(exp, "pothead_queue_oldest_age_seconds", d), 1.5);
  assert.equal(value(exp, "pothead_queue_keys", d), 0);
  assert.equal(value(exp, "pothead_queue_keys", gpu), 1);
  assert.equal(value(exp, "pothead_worker_slots", { ...d, state: "busy" }), 3);
  assert.equal(
    value(exp, "pothead_worker_slots", { ...gpu, state: "idle" }),
    1,
  );
  assert.equal(
    value(exp, "pothead_worker_slots", { ...gpu, state: "parked" }),
    1,
  );
  assert.equal(
    value(exp, "pothead_worker_slots", { ...d, state: "parked" }),
    0,
  );
  // By class: the queue now (the hub's stats) and the waits served (the
  // records); a class seen in either is listed, 0 where the other has none.
  const cls = (pool: string, priority: number) => ({
    pool,
    priority: String(priority),
  });
  assert.equal(value(exp, "pothead_queue_class_depth", cls("default", 0)), 2);
  assert.equal(value(exp, "pothead_queue_class_depth", cls("gpu", 7)), 1);
  assert.equal(value(exp, "pothead_queue_class_depth", cls("gpu", 5)), 0);
  assert.equal(value(exp, "pothead_queue_class_depth", cls("gpu", -3)), 0);
  assert.equal(
    value(exp, "pothead_queue_class_oldest_age_seconds", cls("gpu", 7)),
    0.25,
  );
  assert.equal(
    value(exp, "pothead_queue_class_wait_seconds_count", cls("gpu", 5)),
    2,
  );
  assert.equal(
    value(exp, "pothead_queue_class_wait_seconds_sum", cls("gpu", 5)),
    0.1,
  );
  assert.equal(
    value(exp, "pothead_queue_class_wait_seconds_sum", cls("gpu", -3)),
    0.5,
  );
  assert.equal(
    value(exp, "pothead_queue_class_wait_seconds_count", cls("gpu", 7)),
    0,
  );
  // Of the default pool's 7 records, 6 queued (class 0).
  assert.equal(
    value(exp, "pothead_queue_class_wait_seconds_count", cls("default", 0)),
    6,
  );
  // Highest class first within a pool.
  const order = [...body.matchAll(
    /^pothead_queue_class_depth\{pool="gpu",priority="(-?[0-9]+)"\}/gm,
  )].map((m) => Number(m[1]));
  assert.deepEqual(order, [7, 5, 0, -3]);
  assert.equal(value(exp, "pothead_worker_slots_connected", gpu), 3);
  assert.equal(value(exp, "pothead_workers_connected", gpu), 2);
  assert.equal(value(exp, "pothead_requests_received_total"), 11);
  assert.equal(
    value(exp, "pothead_requests_total", {
      ...d,
      status: "200",
      outcome: "ok",
    }),
    2,
  );
  assert.equal(
    value(exp, "pothead_requests_total", {
      ...d,
      status: "404",
      outcome: "ok",
    }),
    1,
  );
  assert.equal(
    value(exp, "pothead_requests_total", {
      ...gpu,
      status: "200",
      outcome: "ok",
    }),
    4,
  );
  assert.equal(
    value(exp, "pothead_rejections_total", { ...d, reason: "queue_full" }),
    1,
  );
  assert.equal(
    value(exp, "pothead_rejections_total", { ...d, reason: "queue_timeout" }),
    1,
  );
  assert.equal(
    value(exp, "pothead_rejections_total", { ...d, reason: "shutting_down" }),
    1,
  );
  assert.equal(
    value(exp, "pothead_rejections_total", { ...gpu, reason: "queue_full" }),
    0,
  );
  assert.equal(
    value(exp, "pothead_rejections_total", { ...gpu, reason: "key_full" }),
    1,
  );
  assert.equal(
    value(exp, "pothead_rejections_total", { ...d, reason: "key_full" }),
    0,
  );
  assert.equal(
    value(exp, "pothead_requests_total", {
      ...gpu,
      status: "429",
      outcome: "key-full",
    }),
    1,
  );
  // A request refused by its key never queued: 4 of the pool's 5 count.
  assert.equal(value(exp, "pothead_queue_wait_seconds_count", gpu), 4);
  assert.equal(value(exp, "pothead_worker_timeouts_total", d), 1);
  assert.equal(value(exp, "pothead_retries_total", d), 1);
  assert.equal(value(exp, "pothead_bytes_in_total", d), 50);
  assert.equal(value(exp, "pothead_bytes_out_total", d), 106);
  assert.equal(value(exp, "pothead_worker_handshakes_refused_total"), 2);
  assert.equal(value(exp, "pothead_worker_pings_total"), 9);
  assert.equal(value(exp, "pothead_affinity_hits_total"), 7);
  assert.equal(value(exp, "pothead_affinity_misses_total"), 3);
  assert.equal(value(exp, "pothead_affinity_waits_total"), 5);
  assert.equal(value(exp, "pothead_affinity_wait_timeouts_total"), 2);
  assert.equal(value(exp, "pothead_affinity_picks_total"), 6);
  assert.equal(value(exp, "pothead_affinity_waiting", gpu), 4);
  assert.equal(value(exp, "pothead_affinity_waiting", d), 0);
  assert.equal(value(exp, "pothead_worker_ping_timeouts_total"), 1);
  assert.ok(value(exp, "process_resident_memory_bytes")! > 0);

  // Queue wait: the queue-full rejection never queued, so 6 of 7 count.
  assert.equal(value(exp, "pothead_queue_wait_seconds_count", d), 6);
  assert.equal(
    value(exp, "pothead_queue_wait_seconds_bucket", { ...d, le: "0.0005" }),
    1,
  );
  assert.equal(
    value(exp, "pothead_queue_wait_seconds_bucket", { ...d, le: "60" }),
    6,
  );
  // Worker time: only dispatched requests (4 in the default pool).
  assert.equal(value(exp, "pothead_worker_seconds_count", d), 4);
  assert.equal(
    value(exp, "pothead_worker_seconds_bucket", { ...d, le: "1" }),
    3,
  );
  assert.equal(
    value(exp, "pothead_worker_seconds_bucket", { ...d, le: "60" }),
    3,
  );
  assert.equal(
    value(exp, "pothead_worker_seconds_bucket", { ...d, le: "+Inf" }),
    4,
  );
  assert.ok(
    Math.abs(value(exp, "pothead_worker_seconds_sum", d)! - 90.706) < 1e-9,
  );
  for (
    const family of [
      "pothead_queue_depth",
      "pothead_queue_oldest_age_seconds",
      "pothead_queue_keys",
      "pothead_worker_slots",
      "pothead_requests_total",
      "pothead_queue_wait_seconds",
      "pothead_worker_seconds",
      "pothead_rejections_total",
      "pothead_worker_timeouts_total",
      "pothead_retries_total",
      "pothead_bytes_in_total",
      "pothead_bytes_out_total",
      "process_resident_memory_bytes",
    ]
  ) {
    assert.ok(exp.types.has(family), `${family} is exposed`);
  }
});

Deno.test("metrics treat a hub without pools as the default pool and escape label values", () => {
  const metrics = new HubMetrics();
  metrics.observe(record({ pool: 'we"ird\\pool\nname' }));
  const stats = fakeStats({ queued: 4, slots: 2, idle: 0, busy: 2 });
  const exp = parseExposition(metrics.render(stats));
  assert.equal(value(exp, "pothead_queue_depth", { pool: "default" }), 4);
  assert.equal(
    value(exp, "pothead_worker_slots", { pool: "default", state: "busy" }),
    2,
  );
  assert.equal(
    value(exp, "pothead_requests_total", {
      pool: 'we"ird\\pool\nname',
      status: "200",
    }),
    1,
  );
});

Deno.test("metrics reject bad options with RangeError", () => {
  assert.throws(() => new HubMetrics({ buckets: [1, 0.5] }), RangeError);
  assert.throws(() => new HubMetrics({ buckets: [NaN] }), RangeError);
  assert.throws(() => new HubMetrics({ seriesSeconds: 0 }), RangeError);
  const m = new HubMetrics();
  assert.throws(
    () => createAdminHandler({ stats: fakeStats() }, m, { readyMinSlots: -1 }),
    RangeError,
  );
  assert.throws(
    () => createAdminHandler({ stats: fakeStats() }, m, { eventInterval: 0 }),
    RangeError,
  );
});

Deno.test("admin /healthz answers ok and /readyz follows connected slots", async () => {
  let stats = fakeStats();
  const hub = {
    get stats() {
      return stats;
    },
  };
  const handler = createAdminHandler(hub, new HubMetrics());
  let r = await get(handler, "/healthz");
  assert.equal(r.res.status, 200);
  assert.equal(r.body, "ok\n");

  r = await get(handler, "/readyz");
  assert.equal(r.res.status, 503);
  assert.match(r.body, /not ready: 0 worker slots connected, need at least 1/);

  stats = fakeStats({ slots: 1, idle: 1 });
  r = await get(handler, "/readyz");
  assert.equal(r.res.status, 200);
  assert.match(r.body, /ready: 1 worker slot connected/);

  const strict = createAdminHandler(hub, new HubMetrics(), {
    readyMinSlots: 2,
  });
  r = await get(strict, "/readyz");
  assert.equal(r.res.status, 503);
  assert.match(r.body, /need at least 2/);

  // Draining: not ready, whatever is connected.
  stats = fakeStats({ slots: 3, idle: 3, draining: true });
  r = await get(handler, "/readyz");
  assert.equal(r.res.status, 503);
  assert.equal(r.body, "not ready: draining\n");
});

Deno.test("a real hub reports draining in its stats once shutdown begins", async () => {
  const { Hub } = await import("../hub.ts");
  const hub = new Hub();
  assert.equal(hub.stats.draining, false);
  const done = hub.shutdown(0);
  assert.equal(hub.stats.draining, true);
  await done;
});

Deno.test("admin answers 405 to other methods, 404 to other paths, and HEAD without a body", async () => {
  const handler = createAdminHandler({ stats: fakeStats() }, new HubMetrics());
  let r = await get(handler, "/metrics", { method: "POST", body: "x" });
  assert.equal(r.res.status, 405);
  assert.equal(r.res.headers.get("allow"), "GET, HEAD");
  r = await get(handler, "/nope");
  assert.equal(r.res.status, 404);
  r = await get(handler, "/metrics/");
  assert.equal(r.res.status, 404);
  for (const path of ["/metrics", "/status", "/", "/healthz"]) {
    const res = handler(new Request(`http://admin${path}`, { method: "HEAD" }));
    assert.equal(res.status, 200, path);
    assert.equal(res.body, null, `HEAD ${path} has no body`);
  }
  const events = handler(
    new Request("http://admin/events", { method: "HEAD" }),
  );
  assert.equal(events.status, 200);
  assert.equal(await events.text(), "", "HEAD /events has an empty body");
  const head = handler(new Request("http://admin/readyz", { method: "HEAD" }));
  assert.equal(head.status, 503);
  assert.equal(head.body, null);
});

Deno.test("admin HEAD over a socket announces GET's Content-Length, not 0 (none for /events)", async () => {
  const handler = createAdminHandler({ stats: fakeStats() }, new HubMetrics());
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    handler,
  );
  try {
    const base = `http://127.0.0.1:${server.addr.port}`;
    for (const path of ["/healthz", "/readyz", "/", "/nope"]) {
      const got = await guard(fetch(base + path), `GET ${path}`);
      const length = (await got.arrayBuffer()).byteLength;
      assert.ok(length > 0, path);
      const head = await guard(
        fetch(base + path, { method: "HEAD" }),
        `HEAD ${path}`,
      );
      assert.equal(head.status, got.status, path);
      assert.equal(head.headers.get("content-length"), String(length), path);
      assert.equal((await head.arrayBuffer()).byteLength, 0, path);
    }
    // Their bodies change from one request to the next (memory, uptime).
    for (const path of ["/metrics", "/status"]) {
      const head = await guard(
        fetch(base + path, { method: "HEAD" }),
        `HEAD ${path}`,
      );
      await head.body?.cancel();
      assert.ok(Number(head.headers.get("content-length")) > 100, path);
    }
    // GET's event stream has no length, so HEAD must not say 0.
    const events = await guard(
      fetch(`${base}/events`, { method: "HEAD" }),
      "HEAD /events",
    );
    assert.equal(events.status, 200);
    assert.equal(events.headers.get("content-length"), null);
    assert.equal((await events.arrayBuffer()).byteLength, 0);
  } finally {
    await server.shutdown();
  }
});

Deno.test("admin / serves the self-contained status page", async () => {
  const handler = createAdminHandler({ stats: fakeStats() }, new HubMetrics(), {
    version: "9.8.7<x>",
  });
  const { res, body } = await get(handler, "/");
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "text/html; charset=utf-8");
  assert.match(
    res.headers.get("content-security-policy")!,
    /default-src 'none'/,
  );
  assert.match(body, /^<!doctype html>/);
  assert.match(body, /9\.8\.7&#60;x&#62;/, "version escaped into the header");
  assert.ok(!body.includes("9.8.7<x>"));
  assert.match(body, /new EventSource\("events"\)/);
  assert.match(body, /fetch\("status"/);
  // No external resources: no http(s) URLs in src/href, no CDN.
  assert.doesNotMatch(body, /(src|href)=["']?https?:/i);
  assert.doesNotMatch(body, /<script[^>]+src=/i);
  assert.doesNotMatch(body, /<link[^>]+stylesheet/i);
});

Deno.test("admin /status reports version, uptime, totals, pools, series and workers", async () => {
  const clock = fakeClock();
  const metrics = new HubMetrics({ now: clock.now, seriesSeconds: 60 });
  clock.advance(5_500);
  for (let i = 1; i <= 100; i++) {
    metrics.observe(record({ queueMs: i, workerMs: 10 * i }));
  }
  metrics.observe(
    record({ status: 502, outcome: "worker-error", worker: "w-2" }),
  );
  const stats = fakeStats({
    queued: 7,
    slots: 3,
    idle: 0,
    busy: 3,
    received: 111,
    pools: [
      {
        name: "default",
        queued: 7,
        keys: 0,
        oldestWaitMs: 80,
        waiting: 0,
        slots: 3,
        idle: 0,
        parked: 0,
        busy: 3,
        held: 0,
        heldTotal: 0,
        takeBacks: 0,
        workers: 1,
        classes: [{ priority: 0, queued: 7, oldestWaitMs: 80 }],
        named: true,
      },
    ],
    workers: [
      {
        id: "addr:127.0.0.1",
        pool: "default",
        slots: 3,
        busy: 3,
        labels: { zone: "a" },
      },
    ],
  });
  const handler = createAdminHandler({ stats }, metrics, {
    version: "1.2.3",
    readyMinSlots: 1,
  });
  const { res, body } = await get(handler, "/status");
  assert.equal(res.status, 200);
  assert.equal(
    res.headers.get("content-type"),
    "application/json; charset=utf-8",
  );
  const status = JSON.parse(body);
  assert.equal(status.version, "1.2.3");
  assert.equal(status.uptimeSeconds, 5.5);
  assert.equal(status.ready, true);
  assert.equal(status.stats.received, 111);
  assert.equal(
    status.stats.pools,
    undefined,
    "per-pool lists are not repeated",
  );
  assert.equal(status.pools.length, 1);
  const pool = status.pools[0];
  assert.equal(pool.name, "default");
  assert.equal(pool.stats.queued, 7);
  assert.equal(pool.series.queued.length, 60);
  assert.equal(pool.series.queued.at(-1), 7, "the snapshot sampled the gauges");
  assert.equal(pool.series.busy.at(-1), 3);
  assert.equal(pool.series.queued.at(-2), null, "unsampled seconds are null");
  assert.equal(pool.series.requests.at(-1), 101);
  assert.equal(pool.series.errors.at(-1), 1);
  assert.equal(pool.recent.requests, 101);
  // Percentiles come from ~25% wide buckets: p50 of 1..100 ms (+ one 1 ms).
  assert.ok(
    pool.recent.queueP50Ms >= 35 && pool.recent.queueP50Ms <= 65,
    String(pool.recent.queueP50Ms),
  );
  assert.ok(
    pool.recent.queueP99Ms >= 75 && pool.recent.queueP99Ms <= 125,
    String(pool.recent.queueP99Ms),
  );
  assert.ok(pool.recent.workerP50Ms >= 350 && pool.recent.workerP50Ms <= 650);
  // Connected workers first with what the records said about them, then
  // workers only seen in records.
  assert.deepEqual(pool.workers.map((w: { id: string }) => w.id), [
    "addr:127.0.0.1",
    "w-2",
  ]);
  assert.equal(pool.workers[0].requests, 100);
  assert.equal(pool.workers[0].busy, 3);
  assert.deepEqual(pool.workers[0].labels, { zone: "a" });
  assert.equal(pool.workers[1].slots, 0);
  assert.equal(pool.workers[1].errors, 1);

  // Two seconds later the history has moved on.
  clock.advance(2000);
  const later = JSON.parse((await get(handler, "/status")).body);
  assert.equal(later.pools[0].series.requests.at(-3), 101);
  assert.equal(later.pools[0].series.requests.at(-1), 0);
});

Deno.test("metrics history forgets seconds older than its length", () => {
  const clock = fakeClock();
  const metrics = new HubMetrics({ now: clock.now, seriesSeconds: 5 });
  metrics.observe(record());
  metrics.sample(fakeStats({ queued: 9 }));
  clock.advance(5000);
  metrics.sample(fakeStats({ queued: 1 }));
  const [pool] = metrics.status(fakeStats({ queued: 1 }));
  assert.deepEqual(pool.series.queued, [null, null, null, null, 1]);
  assert.deepEqual(pool.series.requests, [0, 0, 0, 0, 0]);
  assert.equal(pool.recent.requests, 0);
});

async function readEvent(
  reader: ReadableStreamDefaultReader<string>,
  buffer: { text: string },
): Promise<string | null> {
  for (let i = 0; i < 1000; i++) {
    const end = buffer.text.indexOf("\n\n");
    if (end >= 0) {
      const event = buffer.text.slice(0, end);
      buffer.text = buffer.text.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data: "))
        .map((l) => l.slice(6)).join("\n");
      if (data !== "") return data;
      continue;
    }
    const { value, done } = await guard(reader.read(), "an event");
    if (done) return null;
    buffer.text += value;
  }
  throw new Error("too many reads without an event");
}

Deno.test("admin /events sends a snapshot at once and then every interval, and ends when the request aborts", async () => {
  let queued = 0;
  const hub = {
    get stats() {
      return fakeStats({ queued });
    },
  };
  const handler = createAdminHandler(hub, new HubMetrics(), {
    eventInterval: 20,
  });
  const abort = new AbortController();
  const res = handler(
    new Request("http://admin/events", { signal: abort.signal }),
  );
  assert.equal(res.status, 200);
  assert.equal(
    res.headers.get("content-type"),
    "text/event-stream; charset=utf-8",
  );
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  const buffer = { text: "" };
  const first = JSON.parse((await readEvent(reader, buffer))!);
  assert.equal(first.pools[0].stats.queued, 0);
  queued = 5;
  let seen = 0;
  for (let i = 0; i < 100 && seen !== 5; i++) {
    seen = JSON.parse((await readEvent(reader, buffer))!).pools[0].stats.queued;
  }
  assert.equal(seen, 5, "a later event shows the new queue depth");
  abort.abort();
  // Drain what was already queued; the stream must then end.
  let ended = false;
  for (let i = 0; i < 10 && !ended; i++) {
    ended = (await guard(reader.read(), "the stream to end")).done;
  }
  assert.ok(ended, "the event stream ended after the request aborted");
});

Deno.test("admin /events subscribers share one snapshot per interval", async () => {
  // Many watchers (or connections that never read) must not each cost a
  // snapshot of the hub per interval.
  let reads = 0;
  const hub = {
    get stats() {
      reads++;
      return fakeStats();
    },
  };
  const stop = new AbortController();
  const handler = createAdminHandler(hub, new HubMetrics(), {
    eventInterval: 200,
    signal: stop.signal,
  });
  const streams = Array.from(
    { length: 50 },
    () => handler(new Request("http://admin/events")),
  );
  // Each sent its first event at once, from one snapshot (or two, if the
  // loop above straddled half an interval on a loaded machine).
  assert.ok(reads >= 1 && reads <= 2, `${reads} snapshots for 50 streams`);
  stop.abort();
  for (const res of streams) {
    assert.match(
      await guard(res.text(), "the stream to end"),
      /^retry: 2000\n\ndata: \{/,
    );
  }
});

Deno.test("admin /events streams end when the admin signal aborts", async () => {
  const stop = new AbortController();
  const handler = createAdminHandler({ stats: fakeStats() }, new HubMetrics(), {
    eventInterval: 20,
    signal: stop.signal,
  });
  const a = handler(new Request("http://admin/events"));
  const b = handler(new Request("http://admin/events"));
  stop.abort();
  for (const res of [a, b]) {
    const text = await guard(res.text(), "the stream to end");
    assert.match(text, /^retry: 2000\n\ndata: \{/);
  }
  const after = handler(new Request("http://admin/events"));
  assert.equal(await guard(after.text(), "an empty stream"), "");
});

/**
 * Runs `fn` with setInterval and clearInterval wrapped, and returns how many
 * intervals it left running. Deno's sanitizers do not report a leaked
 * setInterval, so the tests count them.
 */
async function leakedIntervals(
  fn: (active: () => number) => Promise<void>,
): Promise<number> {
  const set = globalThis.setInterval;
  const clear = globalThis.clearInterval;
  const live = new Set<unknown>();
  // deno-lint-ignore no-explicit-any
  (globalThis as any).setInterval = (...args: Parameters<typeof set>) => {
    const id = set(...args);
    live.add(id);
    return id;
  };
  globalThis.clearInterval = (id?: Parameters<typeof clear>[0]) => {
    live.delete(id);
    clear(id);
  };
  try {
    await fn(() => live.size);
  } finally {
    globalThis.setInterval = set;
    globalThis.clearInterval = clear;
    for (const id of live) clear(id as Parameters<typeof clear>[0]);
  }
  return live.size;
}

Deno.test("admin /events stops its timer when the reader cancels", async () => {
  const handler = createAdminHandler({ stats: fakeStats() }, new HubMetrics(), {
    eventInterval: 20,
  });
  const leaked = await leakedIntervals(async () => {
    const res = handler(new Request("http://admin/events"));
    const reader = res.body!.getReader();
    await reader.read();
    await reader.cancel();
  });
  assert.equal(leaked, 0, "the event timer was cleared");
});

Deno.test("formatAccess writes one text line or one JSON object per request", () => {
  const time = new Date("2025-01-02T03:04:05.678Z");
  const r = record({
    id: "abc",
    method: "POST",
    path: "/jobs?x=1",
    status: 201,
    queueMs: 1.23456,
    workerMs: 45.678,
    totalMs: 50,
    bytesIn: 12,
    bytesOut: 34,
    worker: "gpu-1",
    retries: 1,
    priority: -5,
    client: "2001:db8::5",
  });
  assert.equal(
    formatAccess(r, "text", { time }),
    "2025-01-02T03:04:05.678Z abc default POST /jobs?x=1 201 ok queue_ms=1.23 worker_ms=45.68 total_ms=50 bytes_in=12 bytes_out=34 worker=gpu-1 retries=1 priority=-5 client=2001:db8::5",
  );
  assert.deepEqual(JSON.parse(formatAccess(r, "json", { time })), {
    time: "2025-01-02T03:04:05.678Z",
    id: "abc",
    pool: "default",
    method: "POST",
    path: "/jobs?x=1",
    status: 201,
    outcome: "ok",
    queueMs: 1.23,
    workerMs: 45.68,
    totalMs: 50,
    bytesIn: 12,
    bytesOut: 34,
    worker: "gpu-1",
    retries: 1,
    priority: -5,
    client: "2001:db8::5",
  });
  // A request held ahead says so in both formats (and only that one).
  const held = record({ ...r, held: true });
  assert.equal(
    formatAccess(held, "text", { time }),
    `${formatAccess(r, "text", { time })} held=1`,
  );
  assert.deepEqual(JSON.parse(formatAccess(held, "json", { time })), {
    ...JSON.parse(formatAccess(r, "json", { time })),
    held: true,
  });
  const odd = formatAccess(
    record({
      path: '/a b"\n',
      worker: null,
      workerMs: -1,
      status: 503,
      outcome: "queue-full",
      client: null,
    }),
    "text",
    { time },
  );
  assert.ok(!odd.includes("\n"), "one line");
  assert.match(odd, / "\/a b\\"\\n" 503 queue-full .*worker_ms=-1 .*worker=- /);
  assert.match(odd, / client=-$/);
  assert.throws(() => formatAccess(r, "xml" as "text"), TypeError);
});

// ---------------------------------------------------------------------------
// Integration: a real hub, a real worker, the admin handler on Deno.serve

interface Rig {
  hub: HubServer;
  admin: Deno.HttpServer<Deno.NetAddr>;
  metrics: HubMetrics;
  stop: AbortController;
  workers: WorkerHandle[];
  /** Requests to /hold that reached the worker. */
  entered: number;
  /** Resolves when the test releases the held requests. */
  hold(): Promise<void>;
  /** Releases the requests held now. */
  release(): void;
}

function startRig(options: Partial<ServeHubOptions> = {}): Rig {
  const metrics = new HubMetrics();
  const hub = serveHub({
    hostname: "127.0.0.1",
    port: 0,
    workerPort: 0,
    shutdownGrace: 1000,
    onAccess: (r) => metrics.observe(r),
    ...options,
  });
  const stop = new AbortController();
  const admin = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    createAdminHandler(hub.hub, metrics, { signal: stop.signal }),
  );
  let gate = Promise.withResolvers<void>();
  const rig: Rig = {
    hub,
    admin,
    metrics,
    stop,
    workers: [],
    entered: 0,
    hold: () => gate.promise,
    release() {
      gate.resolve();
      gate = Promise.withResolvers<void>();
    },
  };
  return rig;
}

function addWorker(rig: Rig, concurrency: number): WorkerHandle {
  const worker = connectWorker(async (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/hold") {
      rig.entered++;
      await rig.hold();
    }
    if (path === "/missing") return new Response("no\n", { status: 404 });
    if (path === "/big") {
      // 8 MiB in 64 KiB chunks, made as they are read.
      let left = 128;
      return new Response(
        new ReadableStream<Uint8Array>({
          pull(c) {
            if (left-- === 0) c.close();
            else c.enqueue(new Uint8Array(64 * 1024));
          },
        }, { highWaterMark: 0 }),
      );
    }
    return new Response(`hello ${path}\n`);
  }, {
    hostname: "127.0.0.1",
    port: rig.hub.workerAddr.port,
    concurrency,
    minBackoff: 10,
    maxBackoff: 100,
  });
  rig.workers.push(worker);
  return worker;
}

async function stopRig(rig: Rig): Promise<void> {
  rig.release();
  for (const w of rig.workers) w.close();
  await guard(
    Promise.all(rig.workers.map((w) => w.finished)),
    "workers to stop",
  );
  await guard(rig.hub.shutdown(), "hub shutdown");
  rig.stop.abort();
  await guard(rig.admin.shutdown(), "admin shutdown");
}

async function scrape(rig: Rig): Promise<Exposition> {
  const res = await fetch(`http://127.0.0.1:${rig.admin.addr.port}/metrics`);
  assert.equal(res.status, 200);
  return parseExposition(await res.text());
}

async function adminGet(
  rig: Rig,
  path: string,
): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${rig.admin.addr.port}${path}`);
  return { status: res.status, body: await res.text() };
}

Deno.test("admin metrics follow a real hub: readiness, counters, queue depth and busy slots change with traffic", async () => {
  const rig = startRig();
  const consumers: Promise<Response>[] = [];
  try {
    assert.equal((await adminGet(rig, "/readyz")).status, 503);
    addWorker(rig, 1);
    await waitFor(
      async () => (await adminGet(rig, "/readyz")).status === 200,
      "readyz 200",
    );

    const base = `http://127.0.0.1:${rig.hub.addr.port}`;
    for (const path of ["/a", "/b", "/missing"]) {
      const res = await fetch(base + path);
      await res.body?.cancel();
    }
    // The access record comes when the body is fully read; poll for it.
    let exp = await scrape(rig);
    await waitFor(async () => {
      exp = await scrape(rig);
      return value(exp, "pothead_requests_total", { status: "404" }) === 1 &&
        value(exp, "pothead_requests_total", {
            status: "200",
            outcome: "ok",
          }) === 2;
    }, "request counters");
    assert.equal(value(exp, "pothead_requests_received_total"), 3);
    assert.equal(
      value(exp, "pothead_worker_seconds_count", { pool: "default" }),
      3,
    );
    assert.equal(
      value(exp, "pothead_bytes_out_total", { pool: "default" }),
      9 + 9 + 3,
    );
    assert.equal(
      value(exp, "pothead_worker_slots_connected", { pool: "default" }),
      1,
    );

    // One slot: the first held request is busy, the next two queue.
    for (let i = 0; i < 3; i++) consumers.push(fetch(`${base}/hold`));
    await waitFor(async () => {
      exp = await scrape(rig);
      return value(exp, "pothead_queue_depth", { pool: "default" }) === 2;
    }, "queue depth 2");
    assert.equal(
      value(exp, "pothead_worker_slots", { pool: "default", state: "busy" }),
      1,
    );
    assert.equal(
      value(exp, "pothead_worker_slots", { pool: "default", state: "idle" }),
      0,
    );
    assert.ok(
      value(exp, "pothead_queue_oldest_age_seconds", { pool: "default" })! > 0,
    );

    const status = JSON.parse((await adminGet(rig, "/status")).body);
    assert.equal(status.pools[0].stats.queued, 2);
    assert.equal(status.stats.received, 6);

    for (let i = 0; i < 3; i++) {
      await waitFor(
        () => rig.entered === i + 1,
        `held request ${i + 1} running`,
      );
      rig.release();
    }
    for (const res of await Promise.all(consumers.splice(0))) {
      assert.equal(res.status, 200);
      await res.text();
    }
    await waitFor(async () => {
      exp = await scrape(rig);
      return value(exp, "pothead_requests_total", {
        status: "200",
        outcome: "ok",
      }) === 5;
    }, "five answered requests");
    assert.equal(value(exp, "pothead_queue_depth", { pool: "default" }), 0);
    assert.equal(
      value(exp, "pothead_queue_wait_seconds_count", { pool: "default" }),
      6,
    );
  } finally {
    for (let i = 0; i < 3; i++) rig.release();
    await Promise.allSettled(
      consumers.map(async (p) => (await p).body?.cancel()),
    );
    await stopRig(rig);
  }
});

Deno.test("pools that get no requests keep only their gauges' history; a pool with requests still shows its history on /status", async () => {
  const names = Array.from({ length: 200 }, (_, i) => `quiet-${i}`);
  // Routed pools exist from the start, with or without workers.
  const rig = startRig({
    routes: names.map((pool) => ({ pool, pathPrefix: `/${pool}/` })),
  });
  try {
    addWorker(rig, 1);
    await waitFor(() => rig.hub.hub.stats.idle === 1, "worker idle");
    // The first sample and status make every pool's history. Typed arrays
    // live outside the JS heap: the external bytes count them.
    const before = Deno.memoryUsage().external;
    rig.metrics.sample(rig.hub.hub.stats);
    assert.equal(rig.metrics.status(rig.hub.hub.stats).length, 201);
    const perPool = (Deno.memoryUsage().external - before) / 201;
    // Gauges for 300 s are 9.6 kB; with the request histograms, 190 kB.
    assert.ok(perPool < 32 * 1024, `${Math.round(perPool)} bytes per pool`);

    const base = `http://127.0.0.1:${rig.hub.addr.port}`;
    for (const path of ["/a", "/b", "/c"]) {
      const res = await fetch(base + path);
      await res.text();
    }
    type Pool = {
      name: string;
      recent: Record<string, number | null>;
      series: Record<string, (number | null)[]>;
    };
    let pools: Pool[] = [];
    const pool = (name: string) => pools.find((p) => p.name === name)!;
    const sum = (a: (number | null)[]) => a.reduce((x, y) => x! + (y ?? 0), 0);
    await waitFor(async () => {
      pools = JSON.parse((await adminGet(rig, "/status")).body).pools;
      return sum(pool("default").series.requests) === 3;
    }, "three requests in the default pool's history");
    const busy = pool("default");
    assert.equal(busy.recent.requests, 3);
    assert.ok(busy.recent.workerP50Ms !== null);
    assert.ok(busy.series.workerP50Ms.some((v) => v !== null));
    assert.ok(busy.series.queueP99Ms.some((v) => v !== null));
    assert.ok(busy.series.idle.some((v) => v === 1));
    // A quiet pool: its gauges each second, no requests, no percentiles.
    const quiet = pool("quiet-7");
    assert.equal(quiet.series.requests.length, busy.series.requests.length);
    assert.ok(quiet.series.idle.some((v) => v === 0));
    assert.equal(sum(quiet.series.requests), 0);
    assert.ok(quiet.series.workerP50Ms.every((v) => v === null));
    assert.equal(quiet.recent.requests, 0);
    assert.equal(quiet.recent.queueP50Ms, null);
  } finally {
    await stopRig(rig);
  }
});

Deno.test("admin /events over a real socket ends when the client disconnects", async () => {
  const metrics = new HubMetrics();
  const admin = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    createAdminHandler({ stats: fakeStats({ queued: 3 }) }, metrics, {
      eventInterval: 20,
    }),
  );
  try {
    const leaked = await leakedIntervals(async (active) => {
      const res = await fetch(`http://127.0.0.1:${admin.addr.port}/events`);
      assert.equal(
        res.headers.get("content-type"),
        "text/event-stream; charset=utf-8",
      );
      const reader = res.body!.pipeThrough(new TextDecoderStream())
        .getReader();
      const buffer = { text: "" };
      const event = JSON.parse((await readEvent(reader, buffer))!);
      assert.equal(event.pools[0].stats.queued, 3);
      await reader.cancel();
      // Deno.serve notices the disconnect (the request signal aborts or the
      // body is cancelled on its next write); poll until the timer is gone.
      await waitFor(
        () => active() === 0,
        "the event timer to stop after the client left",
      );
    });
    assert.equal(leaked, 0, "the event timer was cleared");
  } finally {
    await guard(admin.shutdown(), "admin shutdown after the client left");
  }
});

Deno.test("metrics count open WebSockets as a hub-wide gauge", () => {
  const metrics = new HubMetrics();
  const exp = parseExposition(metrics.render(fakeStats({ webSockets: 3 })));
  assert.equal(value(exp, "pothead_websockets", {}), 3);
});

Deno.test("a consumer that stops reading its response is recorded as abandoned, not as an error of the worker", async () => {
  const rig = startRig({ responseBuffer: 64 * 1024 });
  try {
    addWorker(rig, 1);
    await waitFor(() => rig.hub.hub.stats.idle === 1, "worker idle");
    const res = await fetch(`http://127.0.0.1:${rig.hub.addr.port}/big`);
    const reader = res.body!.getReader();
    await reader.read();
    await reader.cancel();
    let exp = await scrape(rig);
    await waitFor(async () => {
      exp = await scrape(rig);
      return value(exp, "pothead_requests_total", { status: "200" }) === 1;
    }, "the request recorded");
    assert.equal(
      value(exp, "pothead_requests_total", {
        status: "200",
        outcome: "abandoned",
      }),
      1,
    );
    assert.equal(rig.hub.hub.stats.failed, 0);
    assert.equal(rig.hub.hub.stats.abandoned, 1);
    const status = JSON.parse((await adminGet(rig, "/status")).body);
    const pool = status.pools[0];
    assert.equal(pool.workers[0].requests, 1);
    assert.equal(pool.workers[0].errors, 0, "the worker blamed");
    assert.equal(pool.recent.errors, 0);
  } finally {
    await stopRig(rig);
  }
});

Deno.test("requests turned away on arrival while the hub drains have no queue wait (-1), and the queue-wait metrics leave them out", async () => {
  const records: AccessRecord[] = [];
  const metrics = new HubMetrics();
  const hub = new Hub({
    onAccess: (r) => {
      records.push(r);
      metrics.observe(r);
    },
  });
  const ask = (path: string) => hub.fetch(new Request(`http://hub${path}`));
  // One request queued (no worker), so the drain lasts while others come.
  const queued = ask("/queued");
  assert.equal(hub.stats.queued, 1);
  const stopping = hub.shutdown(300);
  for (let i = 0; i < 3; i++) {
    const res = await ask(`/late${i}`);
    assert.equal(res.status, 503);
    await res.text();
  }
  await (await queued).text();
  await stopping;
  assert.deepEqual(records.map((r) => [r.path, r.outcome, r.queueMs < 0]), [
    ["/late0", "shutting-down", true],
    ["/late1", "shutting-down", true],
    ["/late2", "shutting-down", true],
    ["/queued", "shutting-down", false],
  ]);
  assert.equal(records[0].queueMs, -1);
  // Only the one that waited counts in the queue wait.
  assert.match(
    metrics.render(hub.stats),
    /^pothead_queue_wait_seconds_count\{pool="default"\} 1$/m,
  );
});

Deno.test("/readyz counts only slots of pools the hub's options name: a worker of a pool no route leads to does not make the hub ready", async () => {
  const rig = startRig({
    routes: [{ pool: "images", pathPrefix: "/img/" }],
  });
  const stray = connectWorker(() => new Response("never asked"), {
    hostname: "127.0.0.1",
    port: rig.hub.workerAddr.port,
    pool: "imagse",
    minBackoff: 10,
    maxBackoff: 100,
  });
  rig.workers.push(stray);
  try {
    await waitFor(() => rig.hub.hub.stats.slots === 1, "the stray slot");
    let r = await adminGet(rig, "/readyz");
    assert.equal(r.status, 503, r.body);
    assert.match(r.body, /not ready: 0 worker slots connected/);
    const status = JSON.parse((await adminGet(rig, "/status")).body);
    assert.equal(status.ready, false);
    const named = Object.fromEntries(
      rig.hub.hub.stats.pools.map((p) => [p.name, p.named]),
    );
    assert.deepEqual(named, { default: true, images: true, imagse: false });
    // A worker of a routed pool does.
    const images = connectWorker(() => new Response("img"), {
      hostname: "127.0.0.1",
      port: rig.hub.workerAddr.port,
      pool: "images",
      minBackoff: 10,
      maxBackoff: 100,
    });
    rig.workers.push(images);
    await waitFor(() => rig.hub.hub.stats.slots === 2, "the images slot");
    r = await adminGet(rig, "/readyz");
    assert.equal(r.status, 200, r.body);
    assert.match(r.body, /ready: 1 worker slot connected/);
  } finally {
    await stopRig(rig);
  }
});
