/**
 * Hub metrics: counters and histograms fed by the hub's access records,
 * rendered in the Prometheus text exposition format (version 0.0.4), a short
 * per-second history for the status page, and access-log lines.
 *
 * Every per-pool series carries a `pool` label. Gauges come from the hub's
 * stats (`stats.pools`; a hub that reports no pools counts as one pool named
 * `"default"`), counters and histograms from access records (their `pool`
 * field, else `"default"`).
 *
 * @module
 */

import type {
  AccessRecord,
  HubStats,
  PoolStats,
  QueueClassStats,
} from "./hub.ts";

/** The pool every request belongs to until pools are configured. */
export const DEFAULT_POOL = "default";

/**
 * Upper bounds, in seconds, of the queue-wait and worker-time histogram
 * buckets (`+Inf` is implied).
 */
export const DEFAULT_BUCKETS: readonly number[] = [
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
  60,
];

// The per-second history keeps finer histograms, so its percentiles are
// within 25% of the truth: bounds in milliseconds, 0.05 ms * 1.25^k up to
// about 6 minutes, then an overflow bucket.
const SERIES_BOUNDS_MS: Float64Array = (() => {
  const bounds: number[] = [];
  for (let b = 0.05; b < 400_000; b *= 1.25) bounds.push(b);
  return Float64Array.from(bounds);
})();
const SERIES_BUCKETS = SERIES_BOUNDS_MS.length + 1;

// How many recently seen worker connections are listed per pool.
const MAX_WORKERS = 256;

/** Options for {@linkcode HubMetrics}. Every field is optional. */
export interface HubMetricsOptions {
  /**
   * Histogram bucket upper bounds in seconds, ascending.
   * @default {DEFAULT_BUCKETS}
   */
  buckets?: readonly number[];
  /**
   * Seconds of per-second history kept for the status page.
   * @default {300}
   */
  seriesSeconds?: number;
  /**
   * The clock, in milliseconds since the epoch (tests pass a fake one).
   * @default {Date.now}
   */
  now?: () => number;
}

/** Requests and latency percentiles over a recent window. */
export interface RecentSummary {
  /** The window in seconds that the percentiles cover. */
  windowSeconds: number;
  /** Requests finished per second over the last 10 seconds. */
  requestsPerSecond: number;
  /** Requests finished in the window. */
  requests: number;
  /** Requests in the window that did not end with outcome "ok". */
  errors: number;
  /** Median queue wait in milliseconds, or null without requests. */
  queueP50Ms: number | null;
  /** 99th percentile queue wait in milliseconds, or null. */
  queueP99Ms: number | null;
  /** Median worker time in milliseconds, or null. */
  workerP50Ms: number | null;
  /** 99th percentile worker time in milliseconds, or null. */
  workerP99Ms: number | null;
}

/**
 * Per-second history, one array element per second, oldest first. Gauges
 * are null for seconds in which nothing sampled the hub; percentiles are
 * null for seconds without requests.
 */
export interface SeriesData {
  /** The first second, in seconds since the epoch. */
  start: number;
  /** Seconds between elements (always 1). */
  step: number;
  /** Queue depth. */
  queued: (number | null)[];
  /** Busy worker slots. */
  busy: (number | null)[];
  /** Idle worker slots. */
  idle: (number | null)[];
  /** Requests finished in that second. */
  requests: number[];
  /** Requests finished in that second with an outcome other than "ok". */
  errors: number[];
  /** Median queue wait in milliseconds. */
  queueP50Ms: (number | null)[];
  /** 99th percentile queue wait in milliseconds. */
  queueP99Ms: (number | null)[];
  /** Median worker time in milliseconds. */
  workerP50Ms: (number | null)[];
  /** 99th percentile worker time in milliseconds. */
  workerP99Ms: (number | null)[];
}

/** One worker: live gauges from the hub joined with what the metrics saw. */
export interface WorkerRow {
  /** The worker's id (`addr:<ip>` for plain workers), as in access records. */
  id: string;
  /** The pool it serves. */
  pool: string;
  /** Connections it has open now (0 once it is gone). */
  slots: number;
  /** Of those, carrying a request. */
  busy: number;
  /** Labels from its handshake. */
  labels: Record<string, string>;
  /** Requests it answered since the metrics started (any status). */
  requests: number;
  /** Of those, with an outcome other than "ok" or a 5xx status. */
  errors: number;
  /** Mean worker time in milliseconds, or null without requests. */
  meanWorkerMs: number | null;
  /** Status of its last request, or null. */
  lastStatus: number | null;
  /** When its last request finished (ms since the epoch), or null. */
  lastSeen: number | null;
}

/** The gauges of one pool: the hub's `PoolStats` without the name. */
export type PoolGauges = Omit<PoolStats, "name">;

/** Everything the status page shows about one pool. */
export interface PoolStatus {
  /** The pool's name. */
  name: string;
  /** The pool's gauges now. */
  stats: PoolGauges;
  /** Throughput and percentiles over the last minute. */
  recent: RecentSummary;
  /** Per-second history. */
  series: SeriesData;
  /** Connected workers first, then recently seen ones, most recent first. */
  workers: WorkerRow[];
}

class Histogram {
  readonly bounds: readonly number[];
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(bounds: readonly number[]) {
    this.bounds = bounds;
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(value: number): void {
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && value > bounds[i]) i++;
    this.counts[i]++;
    this.sum += value;
    this.count++;
  }
}

function seriesBucket(ms: number): number {
  // Binary search for the first bound >= ms.
  let lo = 0;
  let hi = SERIES_BOUNDS_MS.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (ms > SERIES_BOUNDS_MS[mid]) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The q-quantile of `counts[offset .. offset + SERIES_BUCKETS)`. */
function quantile(
  counts: ArrayLike<number>,
  offset: number,
  total: number,
  q: number,
): number | null {
  if (total === 0) return null;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < SERIES_BUCKETS; i++) {
    const c = counts[offset + i];
    if (c === 0) continue;
    if (seen + c >= rank) {
      if (i === SERIES_BOUNDS_MS.length) return SERIES_BOUNDS_MS[i - 1];
      const lower = i === 0 ? 0 : SERIES_BOUNDS_MS[i - 1];
      const upper = SERIES_BOUNDS_MS[i];
      return lower + (upper - lower) * Math.max(0, rank - seen) / c;
    }
    seen += c;
  }
  return SERIES_BOUNDS_MS[SERIES_BOUNDS_MS.length - 1];
}

function round2(n: number | null): number | null {
  return n === null ? null : Math.round(n * 100) / 100;
}

// What only requests fill in a second's slot: counts and fine histograms.
// At 300 s that is 180 of the 190 kB a pool's history takes, so it is made
// at a pool's first request: a pool that never gets one keeps its gauges.
class Traffic {
  readonly requests: Uint32Array;
  readonly errors: Uint32Array;
  readonly queueCount: Uint32Array;
  readonly workerCount: Uint32Array;
  readonly queueHist: Uint32Array;
  readonly workerHist: Uint32Array;

  constructor(size: number) {
    this.requests = new Uint32Array(size);
    this.errors = new Uint32Array(size);
    this.queueCount = new Uint32Array(size);
    this.workerCount = new Uint32Array(size);
    this.queueHist = new Uint32Array(size * SERIES_BUCKETS);
    this.workerHist = new Uint32Array(size * SERIES_BUCKETS);
  }

  clear(i: number): void {
    this.requests[i] = 0;
    this.errors[i] = 0;
    this.queueCount[i] = 0;
    this.workerCount[i] = 0;
    const from = i * SERIES_BUCKETS;
    this.queueHist.fill(0, from, from + SERIES_BUCKETS);
    this.workerHist.fill(0, from, from + SERIES_BUCKETS);
  }
}

/** A ring of per-second slots: gauges, counts and fine histograms. */
class Series {
  #size: number;
  #sec: Float64Array;
  #queued: Float64Array;
  #busy: Float64Array;
  #idle: Float64Array;
  // Null until the first request: every second so far had none.
  #traffic: Traffic | null = null;

  constructor(size: number) {
    this.#size = size;
    this.#sec = new Float64Array(size).fill(-1);
    this.#queued = new Float64Array(size);
    this.#busy = new Float64Array(size);
    this.#idle = new Float64Array(size);
  }

  // The slot for second `sec`, cleared if it held an older second.
  #slot(sec: number): number {
    const i = sec % this.#size;
    if (this.#sec[i] !== sec) {
      this.#sec[i] = sec;
      this.#queued[i] = NaN;
      this.#busy[i] = NaN;
      this.#idle[i] = NaN;
      this.#traffic?.clear(i);
    }
    return i;
  }

  record(sec: number, queueMs: number, workerMs: number, error: boolean) {
    // Made zeroed, which is right for every slot: no request came before.
    const t = this.#traffic ??= new Traffic(this.#size);
    const i = this.#slot(sec);
    t.requests[i]++;
    if (error) t.errors[i]++;
    if (queueMs >= 0) {
      t.queueHist[i * SERIES_BUCKETS + seriesBucket(queueMs)]++;
      t.queueCount[i]++;
    }
    if (workerMs >= 0) {
      t.workerHist[i * SERIES_BUCKETS + seriesBucket(workerMs)]++;
      t.workerCount[i]++;
    }
  }

  sample(sec: number, stats: PoolGauges): void {
    const i = this.#slot(sec);
    this.#queued[i] = stats.queued;
    this.#busy[i] = stats.busy;
    this.#idle[i] = stats.idle;
  }

  read(now: number, seconds: number): SeriesData {
    const n = Math.min(seconds, this.#size);
    const start = now - n + 1;
    const out: SeriesData = {
      start,
      step: 1,
      queued: [],
      busy: [],
      idle: [],
      requests: [],
      errors: [],
      queueP50Ms: [],
      queueP99Ms: [],
      workerP50Ms: [],
      workerP99Ms: [],
    };
    const gauge = (a: Float64Array, i: number) =>
      Number.isNaN(a[i]) ? null : a[i];
    // A second with no requests (or none recorded).
    const quiet = () => {
      out.requests.push(0);
      out.errors.push(0);
      out.queueP50Ms.push(null);
      out.queueP99Ms.push(null);
      out.workerP50Ms.push(null);
      out.workerP99Ms.push(null);
    };
    for (let sec = start; sec <= now; sec++) {
      const i = sec % this.#size;
      if (sec < 0 || this.#sec[i] !== sec) {
        out.queued.push(null);
        out.busy.push(null);
        out.idle.push(null);
        quiet();
        continue;
      }
      out.queued.push(gauge(this.#queued, i));
      out.busy.push(gauge(this.#busy, i));
      out.idle.push(gauge(this.#idle, i));
      const t = this.#traffic;
      if (t === null) {
        quiet();
        continue;
      }
      const off = i * SERIES_BUCKETS;
      const qc = t.queueCount[i];
      const wc = t.workerCount[i];
      out.requests.push(t.requests[i]);
      out.errors.push(t.errors[i]);
      out.queueP50Ms.push(round2(quantile(t.queueHist, off, qc, 0.5)));
      out.queueP99Ms.push(round2(quantile(t.queueHist, off, qc, 0.99)));
      out.workerP50Ms.push(round2(quantile(t.workerHist, off, wc, 0.5)));
      out.workerP99Ms.push(round2(quantile(t.workerHist, off, wc, 0.99)));
    }
    return out;
  }

  summary(now: number, window: number, elapsed: number): RecentSummary {
    const n = Math.min(window, this.#size);
    const queue = new Float64Array(SERIES_BUCKETS);
    const worker = new Float64Array(SERIES_BUCKETS);
    let requests = 0;
    let errors = 0;
    let last10 = 0;
    let qc = 0;
    let wc = 0;
    const t = this.#traffic;
    for (let sec = now - n + 1; t !== null && sec <= now; sec++) {
      const i = sec % this.#size;
      if (sec < 0 || this.#sec[i] !== sec) continue;
      requests += t.requests[i];
      errors += t.errors[i];
      if (sec > now - 10) last10 += t.requests[i];
      qc += t.queueCount[i];
      wc += t.workerCount[i];
      const off = i * SERIES_BUCKETS;
      for (let b = 0; b < SERIES_BUCKETS; b++) {
        queue[b] += t.queueHist[off + b];
        worker[b] += t.workerHist[off + b];
      }
    }
    // Before 10 s of uptime, divide by the time actually covered.
    const span = Math.max(1, Math.min(10, elapsed));
    return {
      windowSeconds: n,
      requestsPerSecond: Math.round(last10 / span * 100) / 100,
      requests,
      errors,
      queueP50Ms: round2(quantile(queue, 0, qc, 0.5)),
      queueP99Ms: round2(quantile(queue, 0, qc, 0.99)),
      workerP50Ms: round2(quantile(worker, 0, wc, 0.5)),
      workerP99Ms: round2(quantile(worker, 0, wc, 0.99)),
    };
  }
}

interface WorkerSeen {
  pool: string;
  requests: number;
  errors: number;
  workerMsSum: number;
  workerCount: number;
  lastStatus: number;
  lastSeen: number;
}

/** Counters, histograms and history of one pool. */
class PoolMetrics {
  // status -> outcome -> count
  readonly requests = new Map<number, Map<string, number>>();
  readonly queueWait: Histogram;
  readonly workerTime: Histogram;
  readonly series: Series;
  rejectedFull = 0;
  rejectedKeyFull = 0;
  rejectedTimeout = 0;
  rejectedShutdown = 0;
  workerTimeouts = 0;
  retries = 0;
  bytesIn = 0;
  bytesOut = 0;
  // priority class -> [queue wait sum in seconds, count], for the classes
  // this pool's requests have had (at most 2 001, the valid classes).
  readonly classWait = new Map<number, [number, number]>();

  constructor(buckets: readonly number[], seriesSeconds: number) {
    this.queueWait = new Histogram(buckets);
    this.workerTime = new Histogram(buckets);
    this.series = new Series(seriesSeconds);
  }
}

// An error of the hub's or a worker's: not a consumer that went away
// (abandoned), wherever it was.
function isError(record: AccessRecord): boolean {
  return (record.outcome !== "ok" && record.outcome !== "abandoned") ||
    record.status >= 500;
}

/**
 * The hub's gauges per pool: `stats.pools`, or the whole hub as the
 * default pool when the hub reports no pools.
 */
function poolGauges(stats: HubStats): Map<string, PoolGauges> {
  const out = new Map<string, PoolGauges>();
  const pools = (stats as { pools?: HubStats["pools"] }).pools;
  if (pools !== undefined && pools.length > 0) {
    for (const p of pools) out.set(p.name, p);
  } else {
    out.set(DEFAULT_POOL, {
      queued: stats.queued,
      keys: 0,
      oldestWaitMs: stats.oldestWaitMs,
      waiting: 0,
      slots: stats.slots,
      idle: stats.idle,
      parked: stats.parked ?? 0,
      busy: stats.busy,
      held: 0,
      heldTotal: 0,
      takeBacks: 0,
      workers: (stats as { workers?: unknown[] }).workers?.length ?? 0,
      classes: [],
      named: true,
    });
  }
  return out;
}

/**
 * Collects hub metrics from access records and renders them for Prometheus
 * and the status page.
 *
 * @example Feed it from the hub and render
 * ```ts ignore
 * import { serveHub } from "@pothead/hub";
 * import { HubMetrics } from "./_metrics.ts";
 *
 * const metrics = new HubMetrics();
 * const server = serveHub({ onAccess: (r) => metrics.observe(r) });
 * console.log(metrics.render(server.hub.stats));
 * ```
 */
export class HubMetrics {
  /** When the metrics started, in milliseconds since the epoch. */
  readonly startedAt: number;
  #buckets: readonly number[];
  #seriesSeconds: number;
  #now: () => number;
  #pools = new Map<string, PoolMetrics>();
  #workers = new Map<string, WorkerSeen>();

  /** Makes an empty set of metrics; throws `RangeError` on a bad option. */
  constructor(options: HubMetricsOptions = {}) {
    const buckets = options.buckets ?? DEFAULT_BUCKETS;
    for (let i = 0; i < buckets.length; i++) {
      if (
        !Number.isFinite(buckets[i]) || (i > 0 && buckets[i] <= buckets[i - 1])
      ) {
        throw new RangeError(
          `Invalid option "buckets": expected ascending finite numbers, got [${
            buckets.join(", ")
          }]`,
        );
      }
    }
    const seriesSeconds = options.seriesSeconds ?? 300;
    if (!Number.isInteger(seriesSeconds) || seriesSeconds < 1) {
      throw new RangeError(
        `Invalid option "seriesSeconds": expected an integer >= 1, got ${seriesSeconds}`,
      );
    }
    this.#buckets = [...buckets];
    this.#seriesSeconds = seriesSeconds;
    this.#now = options.now ?? Date.now;
    this.startedAt = this.#now();
  }

  /** The metrics' clock, in milliseconds since the epoch. */
  now(): number {
    return this.#now();
  }

  #pool(name: string): PoolMetrics {
    let pool = this.#pools.get(name);
    if (pool === undefined) {
      pool = new PoolMetrics(this.#buckets, this.#seriesSeconds);
      this.#pools.set(name, pool);
    }
    return pool;
  }

  /**
   * Counts one finished request. Cheap enough for the hub's `onAccess` hook:
   * a few map lookups and array increments, no allocation once its status,
   * outcome, pool and worker have been seen.
   *
   * @param record the hub's access record.
   * @param pool the pool to count it in; by default the record's `pool`,
   *   else `"default"`.
   */
  observe(
    record: AccessRecord,
    pool: string = (record as { pool?: string }).pool ?? DEFAULT_POOL,
  ): void {
    const p = this.#pool(pool);
    let byOutcome = p.requests.get(record.status);
    if (byOutcome === undefined) {
      byOutcome = new Map();
      p.requests.set(record.status, byOutcome);
    }
    byOutcome.set(record.outcome, (byOutcome.get(record.outcome) ?? 0) + 1);

    // Requests turned away before they queued have no queue wait.
    const queued = record.queueMs >= 0 &&
      record.outcome !== "queue-full" &&
      record.outcome !== "key-full" &&
      record.outcome !== "bad-request" &&
      !(record.outcome === "too-large" && record.workerMs < 0);
    if (queued) {
      p.queueWait.observe(record.queueMs / 1000);
      const priority = record.priority ?? 0;
      const wait = p.classWait.get(priority);
      if (wait === undefined) {
        p.classWait.set(priority, [record.queueMs / 1000, 1]);
      } else {
        wait[0] += record.queueMs / 1000;
        wait[1]++;
      }
    }
    if (record.workerMs >= 0) p.workerTime.observe(record.workerMs / 1000);
    switch (record.outcome) {
      case "queue-full":
        p.rejectedFull++;
        break;
      case "key-full":
        p.rejectedKeyFull++;
        break;
      case "queue-timeout":
        p.rejectedTimeout++;
        break;
      case "shutting-down":
        p.rejectedShutdown++;
        break;
      case "worker-timeout":
        p.workerTimeouts++;
        break;
    }
    p.retries += record.retries;
    if (record.bytesIn > 0) p.bytesIn += record.bytesIn;
    if (record.bytesOut > 0) p.bytesOut += record.bytesOut;

    const now = this.#now();
    const error = isError(record);
    p.series.record(
      Math.floor(now / 1000),
      queued ? record.queueMs : -1,
      record.workerMs,
      error,
    );
    if (record.worker !== null) {
      let w = this.#workers.get(record.worker);
      if (w === undefined) {
        if (this.#workers.size >= MAX_WORKERS) evictOldest(this.#workers);
        w = {
          pool,
          requests: 0,
          errors: 0,
          workerMsSum: 0,
          workerCount: 0,
          lastStatus: 0,
          lastSeen: 0,
        };
        this.#workers.set(record.worker, w);
      }
      w.pool = pool;
      w.requests++;
      if (error) w.errors++;
      if (record.workerMs >= 0) {
        w.workerMsSum += record.workerMs;
        w.workerCount++;
      }
      w.lastStatus = record.status;
      w.lastSeen = now;
    }
  }

  /**
   * Records the hub's gauges (queue depth, busy and idle slots per pool) for
   * the current second of the history. Call it about once a second; the
   * admin handler also calls it whenever it serves `/status` or an event.
   *
   * @param stats the hub's stats.
   */
  sample(stats: HubStats): void {
    const sec = Math.floor(this.#now() / 1000);
    const gauges = poolGauges(stats);
    this.#forget(gauges);
    for (const [name, g] of gauges) this.#pool(name).series.sample(sec, g);
  }

  // Drops the pools the hub no longer reports that never had a request (a
  // pool only its workers named goes with them): names must not pile up.
  #forget(gauges: Map<string, PoolGauges>): void {
    for (const [name, p] of this.#pools) {
      if (!gauges.has(name) && p.requests.size === 0) this.#pools.delete(name);
    }
  }

  /**
   * The status of every pool: gauges, recent percentiles, history, workers.
   *
   * @param stats the hub's stats.
   * @param seconds how much history to include.
   * @returns one entry per pool: the hub's pools in its order, then pools
   *   only seen in access records.
   */
  status(
    stats: HubStats,
    seconds: number = this.#seriesSeconds,
  ): PoolStatus[] {
    const gauges = poolGauges(stats);
    this.#forget(gauges);
    const now = this.#now();
    const sec = Math.floor(now / 1000);
    const elapsed = (now - this.startedAt) / 1000;
    const names = new Set([...gauges.keys(), ...this.#pools.keys()]);
    const rows = this.#workerRows(stats);
    const out: PoolStatus[] = [];
    for (const name of names) {
      const p = this.#pool(name);
      out.push({
        name,
        stats: gauges.get(name) ?? {
          queued: 0,
          keys: 0,
          oldestWaitMs: 0,
          waiting: 0,
          slots: 0,
          idle: 0,
          parked: 0,
          busy: 0,
          held: 0,
          heldTotal: 0,
          takeBacks: 0,
          workers: 0,
          classes: [],
          named: false,
        },
        recent: p.series.summary(sec, 60, elapsed),
        series: p.series.read(sec, seconds),
        workers: rows.filter((r) => r.pool === name),
      });
    }
    return out;
  }

  // Connected workers (from the hub) joined with the ones seen in records.
  #workerRows(stats: HubStats): WorkerRow[] {
    const live = (stats as { workers?: HubStats["workers"] }).workers ?? [];
    const rows: WorkerRow[] = [];
    const listed = new Set<string>();
    const row = (
      id: string,
      pool: string,
      slots: number,
      busy: number,
      labels: Record<string, string>,
    ): WorkerRow => {
      const w = this.#workers.get(id);
      return {
        id,
        pool,
        slots,
        busy,
        labels,
        requests: w?.requests ?? 0,
        errors: w?.errors ?? 0,
        meanWorkerMs: w !== undefined && w.workerCount > 0
          ? Math.round(w.workerMsSum / w.workerCount * 100) / 100
          : null,
        lastStatus: w?.lastStatus ?? null,
        lastSeen: w?.lastSeen ?? null,
      };
    };
    for (const w of live) {
      listed.add(w.id);
      rows.push(row(w.id, w.pool, w.slots, w.busy, w.labels));
    }
    const gone: WorkerRow[] = [];
    for (const [id, w] of this.#workers) {
      if (!listed.has(id)) gone.push(row(id, w.pool, 0, 0, {}));
    }
    gone.sort((a, b) => (b.lastSeen ?? 0) - (a.lastSeen ?? 0));
    return rows.concat(gone);
  }

  /**
   * The metrics in the Prometheus text exposition format 0.0.4. Gauges come
   * from `stats` (per pool from `stats.pools`), counters and histograms from
   * the access records observed.
   *
   * @param stats the hub's stats.
   * @returns the exposition text, ending with a newline.
   */
  render(stats: HubStats): string {
    const gauges = poolGauges(stats);
    this.#forget(gauges);
    for (const name of gauges.keys()) this.#pool(name);
    const pools = [...this.#pools];
    const out: string[] = [];
    const gauge = (
      name: string,
      help: string,
      value: (g: PoolGauges) => number,
    ) => {
      header(out, name, "gauge", help);
      for (const [pool] of pools) {
        const g = gauges.get(pool);
        if (g !== undefined) {
          out.push(`${name}{pool="${label(pool)}"} ${num(value(g))}`);
        }
      }
    };
    const counter = (
      name: string,
      help: string,
      value: (p: PoolMetrics) => number,
    ) => {
      header(out, name, "counter", help);
      for (const [pool, p] of pools) {
        out.push(`${name}{pool="${label(pool)}"} ${num(value(p))}`);
      }
    };

    gauge(
      "pothead_queue_depth",
      "Requests waiting in the pool's queue for a worker slot.",
      (g) => g.queued,
    );
    gauge(
      "pothead_queue_oldest_age_seconds",
      "How long the oldest queued request has waited (0 if none).",
      (g) => g.oldestWaitMs / 1000,
    );
    gauge(
      "pothead_affinity_waiting",
      "Requests waiting for their affinity key's first worker, outside the queue.",
      (g) => g.waiting ?? 0,
    );
    gauge(
      "pothead_queue_keys",
      "Distinct fair-queuing keys (consumers) with requests queued; 0 without fairBy.",
      (g) => g.keys ?? 0,
    );
    gauge(
      "pothead_held",
      "Requests held ahead now: written behind a busy connection's request (holdAhead).",
      (g) => g.held ?? 0,
    );
    // Counters the hub keeps itself (a hub's stats, not access records).
    for (
      const [name, help, value] of [
        [
          "pothead_held_total",
          "Requests held ahead (holdAhead), each time one was.",
          (g: PoolGauges) => g.heldTotal ?? 0,
        ],
        [
          "pothead_take_backs_total",
          "Held requests asked back: for a connection idle with nothing queued, for a higher priority class, after two mean exchanges (four in a long queue), or from behind a response still streaming.",
          (g: PoolGauges) => g.takeBacks ?? 0,
        ],
      ] as const
    ) {
      header(out, name, "counter", help);
      for (const [pool] of pools) {
        const g = gauges.get(pool);
        if (g !== undefined) {
          out.push(`${name}{pool="${label(pool)}"} ${num(value(g))}`);
        }
      }
    }
    header(
      out,
      "pothead_worker_slots",
      "gauge",
      "Worker slots (connections) by state; idle slots next to queue depth are the scaling signal.",
    );
    for (const [pool] of pools) {
      const g = gauges.get(pool);
      if (g === undefined) continue;
      const l = label(pool);
      out.push(
        `pothead_worker_slots{pool="${l}",state="idle"} ${num(g.idle)}`,
        `pothead_worker_slots{pool="${l}",state="parked"} ${
          num(g.parked ?? 0)
        }`,
        `pothead_worker_slots{pool="${l}",state="busy"} ${num(g.busy)}`,
      );
    }
    classGauges(out, pools, gauges);
    gauge(
      "pothead_worker_slots_connected",
      "Worker slots (connections) attached, idle, parked or busy.",
      (g) => g.slots,
    );
    gauge(
      "pothead_workers_connected",
      "Distinct workers with at least one slot attached.",
      (g) => g.workers,
    );

    header(
      out,
      "pothead_requests_received_total",
      "counter",
      "Consumer requests received by the hub (all pools).",
    );
    out.push(`pothead_requests_received_total ${num(stats.received)}`);
    header(
      out,
      "pothead_requests_total",
      "counter",
      "Finished consumer requests by status sent and outcome.",
    );
    for (const [pool, p] of pools) {
      const l = label(pool);
      const statuses = [...p.requests.keys()].sort((a, b) => a - b);
      for (const status of statuses) {
        for (const [outcome, n] of p.requests.get(status)!) {
          out.push(
            `pothead_requests_total{pool="${l}",status="${status}",outcome="${
              label(outcome)
            }"} ${num(n)}`,
          );
        }
      }
    }

    histogram(
      out,
      "pothead_queue_wait_seconds",
      "Time requests waited in the queue (requests turned away at once are not counted).",
      pools.map(([pool, p]) => [pool, p.queueWait]),
    );
    histogram(
      out,
      "pothead_worker_seconds",
      "Time from sending a request to a worker to its response head.",
      pools.map(([pool, p]) => [pool, p.workerTime]),
    );

    header(
      out,
      "pothead_rejections_total",
      "counter",
      "Requests the hub turned away itself, by reason (key_full: 429, the others 503).",
    );
    for (const [pool, p] of pools) {
      const l = label(pool);
      out.push(
        `pothead_rejections_total{pool="${l}",reason="queue_full"} ${
          num(p.rejectedFull)
        }`,
        `pothead_rejections_total{pool="${l}",reason="key_full"} ${
          num(p.rejectedKeyFull)
        }`,
        `pothead_rejections_total{pool="${l}",reason="queue_timeout"} ${
          num(p.rejectedTimeout)
        }`,
        `pothead_rejections_total{pool="${l}",reason="shutting_down"} ${
          num(p.rejectedShutdown)
        }`,
      );
    }
    counter(
      "pothead_worker_timeouts_total",
      "Requests answered 504 because the worker sent no response head in time.",
      (p) => p.workerTimeouts,
    );
    counter(
      "pothead_retries_total",
      "Resends to another worker after a provably unstarted attempt, counted when the request finishes.",
      (p) => p.retries,
    );
    counter(
      "pothead_bytes_in_total",
      "Request body bytes received from consumers (when the length was known).",
      (p) => p.bytesIn,
    );
    counter(
      "pothead_bytes_out_total",
      "Response body bytes read from workers.",
      (p) => p.bytesOut,
    );
    // Hub-wide values, each when the stats carry it (older or partial
    // stats objects may not).
    const extra = stats as Partial<HubStats>;
    const hubWide = (
      name: string,
      type: "counter" | "gauge",
      help: string,
      value: number | undefined,
    ) => {
      if (value === undefined) return;
      header(out, name, type, help);
      out.push(`${name} ${num(value)}`);
    };
    hubWide(
      "pothead_worker_handshakes_refused_total",
      "counter",
      "Worker handshakes refused (bad or missing token, malformed).",
      extra.handshakesRefused,
    );
    hubWide(
      "pothead_affinity_hits_total",
      "counter",
      "Requests that found idle slots and went to the worker their affinity key ranks first.",
      extra.affinityHits,
    );
    hubWide(
      "pothead_affinity_misses_total",
      "counter",
      "Requests that found their affinity key's first worker busy and went to the next idle one.",
      extra.affinityMisses,
    );
    hubWide(
      "pothead_affinity_waits_total",
      "counter",
      "Requests that waited for their affinity key's first worker (affinityWait).",
      extra.affinityWaits,
    );
    hubWide(
      "pothead_affinity_wait_timeouts_total",
      "counter",
      "Requests whose wait for their affinity key's first worker ran out.",
      extra.affinityWaitTimeouts,
    );
    hubWide(
      "pothead_affinity_picks_total",
      "counter",
      "Queued requests a freed slot took ahead of the queue's head, its worker being their affinity key's first (or they having no key).",
      extra.affinityPicks,
    );
    hubWide(
      "pothead_worker_pings_total",
      "counter",
      "Pings sent on idle worker connections.",
      extra.pings,
    );
    hubWide(
      "pothead_worker_ping_timeouts_total",
      "counter",
      "Worker connections closed because a ping went unanswered.",
      extra.pingTimeouts,
    );
    hubWide(
      "pothead_response_buffered_bytes",
      "gauge",
      "Response body bytes read from workers ahead of slower consumers.",
      extra.responseBuffered,
    );
    hubWide(
      "pothead_response_spilled_bytes",
      "gauge",
      "Response body bytes waiting on disk for slower consumers.",
      extra.responseSpilled,
    );
    hubWide(
      "pothead_request_buffered_bytes",
      "gauge",
      "Upload bytes read from consumers while their requests wait.",
      extra.requestBuffered,
    );
    hubWide(
      "pothead_request_spilled_bytes",
      "gauge",
      "Upload bytes waiting on disk for the workers that will take them.",
      extra.requestSpilled,
    );
    hubWide(
      "pothead_websockets",
      "gauge",
      "WebSockets open through the hub, each holding one worker connection.",
      extra.webSockets,
    );

    header(
      out,
      "process_resident_memory_bytes",
      "gauge",
      "Resident memory size in bytes.",
    );
    out.push(`process_resident_memory_bytes ${num(Deno.memoryUsage().rss)}`);
    return out.join("\n") + "\n";
  }
}

function evictOldest(workers: Map<string, WorkerSeen>): void {
  let oldest: string | undefined;
  let at = Infinity;
  for (const [k, w] of workers) {
    if (w.lastSeen < at) {
      at = w.lastSeen;
      oldest = k;
    }
  }
  if (oldest !== undefined) workers.delete(oldest);
}

// The queue by priority class: depth and oldest wait from the hub's stats,
// the mean wait (a summary's sum and count) from the access records. Every
// class a pool has queued or served is listed, 0 when empty, so that a
// series does not come and go with its requests.
function classGauges(
  out: string[],
  pools: [string, PoolMetrics][],
  gauges: Map<string, PoolGauges>,
): void {
  const rows: [string, number, QueueClassStats | undefined, PoolMetrics][] = [];
  for (const [pool, p] of pools) {
    const now = new Map<number, QueueClassStats>();
    for (const c of gauges.get(pool)?.classes ?? []) now.set(c.priority, c);
    const classes = new Set([...now.keys(), ...p.classWait.keys()]);
    for (const priority of [...classes].sort((a, b) => b - a)) {
      rows.push([label(pool), priority, now.get(priority), p]);
    }
  }
  const series = (name: string, value: (row: typeof rows[0]) => number) => {
    for (const row of rows) {
      out.push(
        `${name}{pool="${row[0]}",priority="${row[1]}"} ${num(value(row))}`,
      );
    }
  };
  header(
    out,
    "pothead_queue_class_depth",
    "gauge",
    "Requests waiting in the pool's queue, by priority class (served highest first).",
  );
  series("pothead_queue_class_depth", (r) => r[2]?.queued ?? 0);
  header(
    out,
    "pothead_queue_class_oldest_age_seconds",
    "gauge",
    "How long the oldest queued request of the class has waited (0 if none).",
  );
  series(
    "pothead_queue_class_oldest_age_seconds",
    (r) => (r[2]?.oldestWaitMs ?? 0) / 1000,
  );
  header(
    out,
    "pothead_queue_class_wait_seconds",
    "summary",
    "Time requests of the class waited in the queue (sum and count: the mean).",
  );
  series(
    "pothead_queue_class_wait_seconds_sum",
    (r) => r[3].classWait.get(r[1])?.[0] ?? 0,
  );
  series(
    "pothead_queue_class_wait_seconds_count",
    (r) => r[3].classWait.get(r[1])?.[1] ?? 0,
  );
}

function header(out: string[], name: string, type: string, help: string) {
  out.push(
    `# HELP ${name} ${help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}`,
    `# TYPE ${name} ${type}`,
  );
}

function histogram(
  out: string[],
  name: string,
  help: string,
  pools: [string, Histogram][],
): void {
  header(out, name, "histogram", help);
  for (const [pool, h] of pools) {
    const l = label(pool);
    let cumulative = 0;
    for (let i = 0; i < h.bounds.length; i++) {
      cumulative += h.counts[i];
      out.push(
        `${name}_bucket{pool="${l}",le="${num(h.bounds[i])}"} ${cumulative}`,
      );
    }
    cumulative += h.counts[h.bounds.length];
    out.push(
      `${name}_bucket{pool="${l}",le="+Inf"} ${cumulative}`,
      `${name}_sum{pool="${l}"} ${num(h.sum)}`,
      `${name}_count{pool="${l}"} ${h.count}`,
    );
  }
}

/** Escapes a label value: backslash, double quote and newline. */
function label(value: string): string {
  return value.replace(/[\\"\n]/g, (c) => c === "\n" ? "\\n" : `\\${c}`);
}

function num(n: number): string {
  if (Number.isNaN(n)) return "NaN";
  if (n === Infinity) return "+Inf";
  if (n === -Infinity) return "-Inf";
  return String(n);
}

/** Options for {@linkcode formatAccess}. */
export interface FormatAccessOptions {
  /**
   * The time written in the line.
   * @default {new Date()}
   */
  time?: Date;
}

function ms(n: number): number {
  return Math.round(n * 100) / 100;
}

// Characters that would break a space-separated line or a terminal.
// deno-lint-ignore no-control-regex
const UNSAFE = /[\x00-\x20"\\\x7f-\uffff]/;

function field(value: string): string {
  return value === "" || UNSAFE.test(value) ? JSON.stringify(value) : value;
}

/**
 * Formats one access-log line (without the trailing newline).
 *
 * `text`: `TIME ID POOL METHOD PATH STATUS OUTCOME queue_ms=N worker_ms=N
 * total_ms=N bytes_in=N bytes_out=N worker=ID retries=N priority=N
 * client=ADDRESS`, then `held=1` for a request held ahead, with any field
 * holding spaces, quotes or control characters written as a JSON string and
 * a missing worker or client as `-`. `json`: one JSON object with `time`
 * and every field of the record (`held` only when true), milliseconds
 * rounded to 0.01.
 *
 * @example
 * ```ts ignore
 * const metrics = new HubMetrics();
 * serveHub({
 *   onAccess(record) {
 *     metrics.observe(record);
 *     console.log(formatAccess(record, "text"));
 *   },
 * });
 * ```
 *
 * @param record the hub's access record.
 * @param format `"text"` or `"json"`.
 * @param options the time to write.
 * @returns one line.
 * @throws {TypeError} on another format.
 */
export function formatAccess(
  record: AccessRecord,
  format: "text" | "json",
  options: FormatAccessOptions = {},
): string {
  const time = (options.time ?? new Date()).toISOString();
  const pool = (record as { pool?: string }).pool ?? DEFAULT_POOL;
  const workerMs = record.workerMs < 0 ? -1 : ms(record.workerMs);
  if (format === "json") {
    return JSON.stringify({
      time,
      id: record.id,
      pool,
      method: record.method,
      path: record.path,
      status: record.status,
      outcome: record.outcome,
      queueMs: ms(record.queueMs),
      workerMs,
      totalMs: ms(record.totalMs),
      bytesIn: record.bytesIn,
      bytesOut: record.bytesOut,
      worker: record.worker,
      retries: record.retries,
      priority: record.priority ?? 0,
      client: record.client ?? null,
      ...(record.held ? { held: true } : {}),
    });
  }
  if (format !== "text") {
    throw new TypeError(
      `Cannot format access record: expected format "text" or "json", got "${format}"`,
    );
  }
  return `${time} ${field(record.id)} ${field(pool)} ${field(record.method)} ${
    field(record.path)
  } ${record.status} ${record.outcome} queue_ms=${
    ms(record.queueMs)
  } worker_ms=${workerMs} total_ms=${
    ms(record.totalMs)
  } bytes_in=${record.bytesIn} bytes_out=${record.bytesOut} worker=${
    record.worker === null ? "-" : field(record.worker)
  } retries=${record.retries} priority=${record.priority ?? 0} client=${
    record.client == null ? "-" : field(record.client)
  }${record.held ? " held=1" : ""}`;
}
