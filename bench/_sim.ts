/**
 * The ideal the queueing benchmark measures against, and the arithmetic on
 * measurements.
 *
 * {@linkcode simulateFifo} is a discrete-event simulation of one central FIFO
 * queue in front of K servers that each serve one request at a time, with no
 * dispatch cost: request i starts at the later of its arrival and the moment
 * the earliest server becomes free. No real balancer can beat it on the same
 * trace, which makes it the floor of the chart. {@linkcode simulatePriority}
 * is the same queue with strict priority classes (the priority benchmark's
 * ideal), and {@linkcode simulateFair} the same with fair queuing between
 * keys (the fairness benchmark's ideal).
 *
 * @module
 */

/** Options for {@linkcode simulateFifo}. */
export interface SimOptions {
  /**
   * Milliseconds a server stays unavailable after each job before it can
   * take a queued request (a model of the dispatch gap; 0 is ideal).
   * @default {0}
   */
  dispatchGapMs?: number;
}

/** Per-request outcome of a simulation, in milliseconds from time 0. */
export interface SimResult {
  /** When each request started service. */
  start: Float64Array;
  /** When each request finished. */
  finish: Float64Array;
  /** Finish minus arrival. */
  latency: Float64Array;
  /** Start minus arrival (time in the queue). */
  wait: Float64Array;
  /** Which server (0..K-1) served each request. */
  server: Int32Array;
}

/**
 * Simulates a central FIFO queue with `servers` servers on a trace.
 *
 * Requests are served in arrival order; each goes to the server that becomes
 * free first (the lowest index among equals). With arrivals in order, that
 * is exactly an ideal FIFO multi-server queue.
 *
 * @param arrivals arrival times, ascending.
 * @param service service time of each request.
 * @param servers how many servers.
 * @param options dispatch gap model.
 * @returns start, finish, latency and wait of every request.
 */
export function simulateFifo(
  arrivals: ArrayLike<number>,
  service: ArrayLike<number>,
  servers: number,
  options: SimOptions = {},
): SimResult {
  // One class: the priority queue's order is arrival order.
  return simulatePriority(
    arrivals,
    service,
    new Int32Array(arrivals.length),
    servers,
    options,
  );
}

// The number of requests, once the inputs agree on it and `servers` is a
// positive integer; `labels` are the classes or keys, named `what`.
function checkInput(
  arrivals: ArrayLike<number>,
  service: ArrayLike<number>,
  labels: ArrayLike<number>,
  what: string,
  servers: number,
): number {
  const n = arrivals.length;
  if (service.length !== n || labels.length !== n) {
    throw new RangeError(
      `Cannot simulate: ${n} arrivals, ${service.length} service times and ${labels.length} ${what}`,
    );
  }
  if (!Number.isInteger(servers) || servers < 1) {
    throw new RangeError(`Invalid servers: got ${servers}`);
  }
  return n;
}

function emptyResult(n: number): SimResult {
  return {
    start: new Float64Array(n),
    finish: new Float64Array(n),
    latency: new Float64Array(n),
    wait: new Float64Array(n),
    server: new Int32Array(n),
  };
}

/** Options for {@linkcode simulatePriority}. */
export interface PrioritySimOptions extends SimOptions {
  /**
   * Milliseconds of waiting one class is worth; Infinity is strict.
   * @default {Infinity}
   */
  step?: number;
}

/**
 * Simulates a central queue with strict priority classes in front of
 * `servers` servers: whenever a server frees, it takes the request of the
 * highest class that has arrived and waits, the earliest of that class first
 * (non-preemptive: a running job is never interrupted). A request that finds
 * a server free starts at once, whatever its class. This is the ideal of the
 * hub's priority queue, with no dispatch cost; with one class it is
 * {@linkcode simulateFifo}.
 *
 * With a `step`, classes age instead (the hub's `priorityStep`): of the
 * requests waiting, the one whose arrival less its class × `step` is
 * earliest goes first (a tie to the higher class).
 *
 * @param arrivals arrival times, ascending.
 * @param service service time of each request.
 * @param classes priority class of each request (higher is served first).
 * @param servers how many servers.
 * @param options dispatch gap model (as {@linkcode simulateFifo}'s) and
 * the step.
 * @returns start, finish, latency and wait of every request.
 */
export function simulatePriority(
  arrivals: ArrayLike<number>,
  service: ArrayLike<number>,
  classes: ArrayLike<number>,
  servers: number,
  options: PrioritySimOptions = {},
): SimResult {
  const n = checkInput(arrivals, service, classes, "classes", servers);
  // Each class's requests in arrival order, classes highest first; `head`
  // is the first of each not yet started (a class's own FIFO).
  const byClass = new Map<number, number[]>();
  for (let i = 0; i < n; i++) {
    if (i > 0 && arrivals[i] < arrivals[i - 1]) {
      throw new RangeError(`Cannot simulate: arrival ${i} is out of order`);
    }
    const c = classes[i];
    if (!Number.isFinite(c)) {
      throw new RangeError(`Invalid class of request ${i}: got ${c}`);
    }
    let list = byClass.get(c);
    if (list === undefined) byClass.set(c, list = []);
    list.push(i);
  }
  const sorted = [...byClass.entries()].sort((a, b) => b[0] - a[0]);
  const levels = sorted.map(([, list]) => list);
  const worth = sorted.map(([c]) => c);
  const stepMs = options.step ?? Infinity;
  const head = new Int32Array(levels.length);
  const gap = options.dispatchGapMs ?? 0;
  // When each server can next start a job. K is small (≤ a few hundred), so a
  // linear scan beats a heap and keeps the lowest-index tie rule obvious.
  const freeAt = new Float64Array(servers);
  const result = emptyResult(n);
  // One request starts per step: n steps, each O(classes + servers).
  for (let step = 0; step < n; step++) {
    let best = 0;
    for (let s = 1; s < servers; s++) if (freeAt[s] < freeAt[best]) best = s;
    const t = freeAt[best];
    // The highest class with a request waiting at t; failing that, the
    // request that arrives next (the highest class among equal arrivals).
    let pick = -1, next = -1, pickAt = Infinity;
    for (let l = 0; l < levels.length; l++) {
      if (head[l] >= levels[l].length) continue;
      const a = arrivals[levels[l][head[l]]];
      if (a <= t) {
        if (stepMs === Infinity) {
          pick = l;
          break;
        }
        // Aging: the earliest arrival less its class's worth.
        const at = a - worth[l] * stepMs;
        if (pick < 0 || at < pickAt) {
          pick = l;
          pickAt = at;
        }
        continue;
      }
      if (next < 0 || a < arrivals[levels[next][head[next]]]) next = l;
    }
    if (pick < 0) pick = next;
    const i = levels[pick][head[pick]++];
    const start = Math.max(arrivals[i], t);
    const finish = start + service[i];
    freeAt[best] = finish + gap;
    result.start[i] = start;
    result.finish[i] = finish;
    result.latency[i] = finish - arrivals[i];
    result.wait[i] = start - arrivals[i];
    result.server[i] = best;
  }
  return result;
}

/** Options for {@linkcode simulateFair}. */
export interface FairSimOptions extends SimOptions {
  /**
   * What the keys get equal shares of: `"requests"`, a turn each (round
   * robin); or `"time"`, server time: the key served next is the one whose
   * started requests add up to the least service time (the hub's
   * `fairShare: "time"`, which this ideal runs with every service time
   * known when its request starts).
   * @default {"requests"}
   */
  share?: "requests" | "time";
}

/**
 * Simulates a central queue with fair queuing between keys in front of
 * `servers` servers: waiting requests are grouped by key, each key first
 * come first served, and whenever a server frees it takes the head of the
 * key whose turn it is (round robin, one request per turn). A key joins the
 * rotation at its end when a request of it arrives to find none of it
 * waiting, and leaves when its last waiting request starts. A request that
 * finds a server free starts at once. This is the ideal of the hub's
 * `fairBy` queue (one class), with no dispatch cost; with one key it is
 * {@linkcode simulateFifo}.
 *
 * With `share: "time"` the key served is instead the one that has used
 * least service time, the first in the rotation among equals; a key with
 * nothing waiting when a request of it arrives starts level with the
 * clock, what the key served last had used when it started: afresh if it
 * has nothing running either, raised to it if it has and is behind (as the
 * hub's ledger).
 *
 * @param arrivals arrival times, ascending.
 * @param service service time of each request.
 * @param keys key (consumer) of each request.
 * @param servers how many servers.
 * @param options dispatch gap model (as {@linkcode simulateFifo}'s) and
 * the share.
 * @returns start, finish, latency and wait of every request.
 */
export function simulateFair(
  arrivals: ArrayLike<number>,
  service: ArrayLike<number>,
  keys: ArrayLike<number>,
  servers: number,
  options: FairSimOptions = {},
): SimResult {
  const n = checkInput(arrivals, service, keys, "keys", servers);
  for (let i = 1; i < n; i++) {
    if (arrivals[i] < arrivals[i - 1]) {
      throw new RangeError(`Cannot simulate: arrival ${i} is out of order`);
    }
  }
  const gap = options.dispatchGapMs ?? 0;
  const byTime = options.share === "time";
  const freeAt = new Float64Array(servers);
  const result = emptyResult(n);
  // Waiting requests per key (indices, arrival order) and the rotation of
  // keys with something waiting; `admitted` arrivals have been placed.
  const waiting = new Map<number, number[]>();
  const rotation: number[] = [];
  let admitted = 0;
  // By time: each key's use, and when its last started request finishes.
  const used = new Map<number, number>();
  const busyUntil = new Map<number, number>();
  let clock = 0;
  // A key with nothing waiting starts level with the clock: afresh if it
  // has nothing running either, and if it has, raised to it when behind.
  const arrive = (i: number) => {
    const key = keys[i];
    if (!byTime || waiting.has(key)) return;
    const idle = (busyUntil.get(key) ?? -1) <= arrivals[i];
    used.set(key, idle ? clock : Math.max(used.get(key)!, clock));
  };
  const started = (i: number, finish: number) => {
    if (!byTime) return;
    const key = keys[i];
    const u = used.get(key)!;
    if (u > clock) clock = u;
    used.set(key, u + service[i]);
    busyUntil.set(key, Math.max(busyUntil.get(key) ?? 0, finish));
  };
  // Requests that arrived before `t` found every server busy (`t` is the
  // earliest a server frees): they wait, in the order they arrived.
  const admit = (t: number) => {
    while (admitted < n && arrivals[admitted] < t) {
      const key = keys[admitted];
      arrive(admitted);
      let list = waiting.get(key);
      if (list === undefined) {
        waiting.set(key, list = []);
        rotation.push(key);
      }
      list.push(admitted++);
    }
  };
  // The key served next: the rotation's first, or by time the least used
  // (the first in the rotation among equals).
  const nextAt = () => {
    if (!byTime) return 0;
    let at = 0;
    for (let r = 1; r < rotation.length; r++) {
      if (used.get(rotation[r])! < used.get(rotation[at])!) at = r;
    }
    return at;
  };
  // Server free times only grow from step to step, so admitting in order of
  // them is admitting in time order. O(n × servers) plus the rotation's
  // shifts (a plain array: fine for benchmark sizes).
  for (let step = 0; step < n; step++) {
    let best = 0;
    for (let s = 1; s < servers; s++) if (freeAt[s] < freeAt[best]) best = s;
    const t = freeAt[best];
    admit(t);
    let i: number;
    if (rotation.length === 0) {
      // Nothing waits: the next arrival finds this server free.
      arrive(admitted);
      i = admitted++;
    } else {
      const key = rotation.splice(nextAt(), 1)[0];
      const list = waiting.get(key)!;
      i = list.shift()!;
      if (list.length > 0) rotation.push(key);
      else waiting.delete(key);
    }
    const start = Math.max(arrivals[i], t);
    const finish = start + service[i];
    started(i, finish);
    freeAt[best] = finish + gap;
    result.start[i] = start;
    result.finish[i] = finish;
    result.latency[i] = finish - arrivals[i];
    result.wait[i] = start - arrivals[i];
    result.server[i] = best;
  }
  return result;
}

/**
 * Nearest-rank percentile of ascending `sorted`: the smallest value with at
 * least `p`% of the values at or below it.
 *
 * @param sorted values, ascending.
 * @param p percentile in [0, 100].
 * @returns the value, or NaN for no values.
 */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  const n = sorted.length;
  if (n === 0) return NaN;
  // The epsilon keeps 99.9% of 1000 at rank 999 despite binary fractions.
  const rank = Math.ceil((p / 100) * n - 1e-9);
  return sorted[Math.min(n, Math.max(1, rank)) - 1];
}

/** Latency percentiles, in milliseconds. */
export interface Percentiles {
  /** How many values. */
  n: number;
  /** Median. */
  p50: number;
  /** 90th percentile. */
  p90: number;
  /** 99th percentile. */
  p99: number;
  /** 99.9th percentile. */
  p999: number;
  /** Largest value. */
  max: number;
  /** Arithmetic mean. */
  mean: number;
}

/**
 * Summarises values into the benchmark's percentiles.
 *
 * @param values any order; not modified.
 * @returns the percentiles (NaN fields for no values).
 */
export function summarize(values: ArrayLike<number>): Percentiles {
  const sorted = Float64Array.from(values).sort();
  let sum = 0;
  for (let i = 0; i < sorted.length; i++) sum += sorted[i];
  return {
    n: sorted.length,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    p999: percentile(sorted, 99.9),
    max: sorted.length ? sorted[sorted.length - 1] : NaN,
    mean: sorted.length ? sum / sorted.length : NaN,
  };
}

/** One job as a worker reported it (its own clock, milliseconds). */
export interface JobTiming {
  /** The worker that ran it. */
  worker: string;
  /** When the request reached the worker's handler. */
  arrived: number;
  /** When the job began (the worker was free). */
  started: number;
  /** When the job ended and the response was handed back. */
  finished: number;
  /** `warm` or `cold`, from jobs that load something (`x-bench-cache`). */
  cache?: string;
}

/**
 * The dispatch gaps in a set of jobs: for each worker, the time from the end
 * of one job to the start of the next, taken in start order. Only call this
 * for jobs run while the queue was never empty (a saturated run), where
 * every such gap is time the balancer took to hand the worker more work.
 *
 * @param jobs timings of every job, any order.
 * @param window only gaps whose previous job finished in [from, to).
 * @returns the gaps in milliseconds.
 */
export function dispatchGaps(
  jobs: readonly JobTiming[],
  window: { from: number; to: number } = { from: -Infinity, to: Infinity },
): number[] {
  const byWorker = new Map<string, JobTiming[]>();
  for (const job of jobs) {
    let list = byWorker.get(job.worker);
    if (list === undefined) byWorker.set(job.worker, list = []);
    list.push(job);
  }
  const gaps: number[] = [];
  for (const list of byWorker.values()) {
    list.sort((x, y) => x.started - y.started);
    for (let i = 1; i < list.length; i++) {
      const prev = list[i - 1];
      if (prev.finished < window.from || prev.finished >= window.to) continue;
      gaps.push(list[i].started - prev.finished);
    }
  }
  return gaps;
}
