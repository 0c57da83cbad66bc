/**
 * A model of steady overload: a closed loop of `customers` requests over
 * `servers` one-at-a-time workers (each answered request is replaced at once
 * by a new one, so the queue never empties), under plain dispatch or holding
 * ahead (issue 5; `bench/overload.ts` measures the same thing on real
 * processes).
 *
 * Costs, in ms: under plain dispatch a queued request starts `gapMs` after
 * the finish that freed its worker; a held request starts `handMs` after the
 * job before it ends. The rule is the hub's long-queue arm alone: while at
 * least `queueMin` requests wait (or, with `queueMs`, as many as the hub's
 * test asks), the head of the queue is held behind the busy worker whose
 * job began earliest among those holding nothing. With `maxWait`, as jobs
 * end, a request held that many mean exchanges (`maxWaitLong` while the
 * queue is long by that test) is taken back to the front of the queue, and
 * its worker holds nothing more until its job ends (the hub's bound; the
 * revoke's round trip is left out: with the queue this long, the request
 * waits longer than that at the front).
 * (The in-order arm and the take-backs for idle workers play no part here:
 * jobs of random length do not end in order, and the queue never empties.)
 *
 * @module
 */

/** Options for {@linkcode simulateClosed}. */
export interface ClosedSimOptions {
  /** One-at-a-time workers. */
  servers: number;
  /** Requests kept outstanding. */
  customers: number;
  /** Job lengths in ms, taken in order (and again from the start if used up). */
  service: ArrayLike<number>;
  /** Finish to the next queued request's start, plain dispatch. */
  gapMs: number;
  /** Finish to the held request's start. */
  handMs: number;
  /** Whether to hold at all. @default {true} */
  hold?: boolean;
  /** Hold while at least this many wait. @default {4 × servers} */
  queueMin?: number;
  /**
   * Instead of `queueMin`, the hub's test: hold while at least `servers` ×
   * the mean exchange ÷ `queueMs` wait (the mean over about the last 20
   * exchanges, each a job and its start cost; 4 × `servers` until one has
   * ended).
   */
  queueMs?: number;
  /**
   * Take a held request back once held this many mean exchanges (a job and
   * its start cost; the mean over about the last 20). @default {Infinity}
   */
  maxWait?: number;
  /** `maxWait` while the queue is long enough to hold. @default {maxWait} */
  maxWaitLong?: number;
  /** Simulated time, ms. */
  durationMs: number;
  /** Answers before this time are not counted, ms. @default {durationMs / 10} */
  warmMs?: number;
}

/** What {@linkcode simulateClosed} gives. */
export interface ClosedSimResult {
  /** Latency of each counted answer (sent to answered), ms, ascending. */
  latency: Float64Array;
  /** Counted answers per second. */
  throughput: number;
  /** Answers, counted or not. */
  answered: number;
  /** Requests held (counted or not). */
  held: number;
  /** Held requests taken back (maxWait). */
  takeBacks: number;
}

/**
 * Runs the closed loop. Pure: the same options give the same result.
 *
 * @throws {RangeError} on a non-positive count, an empty service list or
 *   a negative cost.
 */
export function simulateClosed(options: ClosedSimOptions): ClosedSimResult {
  const { servers, customers, service, gapMs, handMs, durationMs } = options;
  if (!(Number.isInteger(servers) && servers > 0)) {
    throw new RangeError(`Invalid servers: got ${servers}`);
  }
  if (!(Number.isInteger(customers) && customers >= servers)) {
    throw new RangeError(
      `Invalid customers: expected an integer >= servers, got ${customers}`,
    );
  }
  if (service.length === 0) throw new RangeError("Invalid service: empty");
  if (!(gapMs >= 0 && handMs >= 0 && durationMs > 0)) {
    throw new RangeError("Invalid costs: expected gapMs, handMs >= 0");
  }
  const hold = options.hold ?? true;
  const queueMs = options.queueMs;
  const fixedMin = options.queueMin ?? 4 * servers;
  const maxWait = options.maxWait ?? Infinity;
  const maxWaitLong = options.maxWaitLong ?? maxWait;
  const warm = options.warmMs ?? durationMs / 10;
  let next = 0;
  const job = (): number => service[next++ % service.length];

  // Per worker: when the hub gave it its request, when its job began and
  // ends, when its request was sent, the send time of the request held
  // behind it (-1: none) and when that was held, and whether it was asked
  // back during the job in progress.
  const given = new Float64Array(servers);
  const began = new Float64Array(servers);
  const ends = new Float64Array(servers);
  const sentAt = new Float64Array(servers);
  const heldSent = new Float64Array(servers).fill(-1);
  const heldSince = new Float64Array(servers);
  const owes = new Uint8Array(servers);
  // The mean exchange (given to end), over about the last 20 (-1: none).
  let meanMs = -1;
  // The queue: send times, in order (a ring would do; an index suffices).
  const queue: number[] = [];
  let head = 0;
  for (let i = 0; i < customers - servers; i++) queue.push(0);
  for (let w = 0; w < servers; w++) {
    began[w] = 0;
    ends[w] = job();
    sentAt[w] = 0;
  }
  const queueMin = (): number =>
    queueMs === undefined
      ? fixedMin
      : meanMs < 0
      ? 4 * servers
      : servers * meanMs / queueMs;
  let held = 0, takeBacks = 0, answered = 0;
  const holdAhead = (now: number): void => {
    while (hold && queue.length - head >= queueMin()) {
      let best = -1;
      for (let w = 0; w < servers; w++) {
        if (
          heldSent[w] < 0 && !owes[w] && (best < 0 || began[w] < began[best])
        ) best = w;
      }
      if (best < 0) return;
      heldSent[best] = queue[head++];
      heldSince[best] = now;
      held++;
    }
  };
  holdAhead(0);
  const latencies: number[] = [];
  for (let guard = 0; guard < 1e8; guard++) {
    let w = 0;
    for (let j = 1; j < servers; j++) if (ends[j] < ends[w]) w = j;
    const now = ends[w];
    if (now >= durationMs) break;
    answered++;
    if (now >= warm) latencies.push(now - sentAt[w]);
    queue.push(now); // its customer sends the next request at once
    const took = now - given[w];
    meanMs = meanMs < 0 ? took : meanMs + (took - meanMs) / 20;
    owes[w] = 0;
    given[w] = now;
    if (heldSent[w] >= 0) {
      sentAt[w] = heldSent[w];
      heldSent[w] = -1;
      began[w] = now + handMs;
    } else {
      sentAt[w] = queue[head++];
      began[w] = now + gapMs;
    }
    ends[w] = began[w] + job();
    // Held too long behind another's job: back to the queue's front, for
    // the next worker to finish (this one has its next request already,
    // as in the hub, where the revoke's answer comes later).
    const bound = (queue.length - head >= queueMin() ? maxWaitLong : maxWait) *
      meanMs;
    for (let x = 0; x < servers; x++) {
      if (heldSent[x] < 0 || now - heldSince[x] < bound) continue;
      if (head > 0) queue[--head] = heldSent[x];
      else queue.unshift(heldSent[x]);
      heldSent[x] = -1;
      owes[x] = 1;
      takeBacks++;
    }
    if (head > 4096 && head * 2 > queue.length) {
      queue.splice(0, head);
      head = 0;
    }
    holdAhead(now);
  }
  const latency = Float64Array.from(latencies).sort();
  return {
    latency,
    throughput: (latency.length * 1000) / (durationMs - warm),
    answered,
    held,
    takeBacks,
  };
}

/**
 * The cost per job beyond the job itself that makes `servers` workers
 * answer `throughput` requests per second with jobs of mean `meanMs`: what
 * to give {@linkcode simulateClosed} as `gapMs` (plain) or `handMs` (held)
 * to match a measured throughput. Never below 0.
 */
export function costForThroughput(
  servers: number,
  meanMs: number,
  throughput: number,
): number {
  return Math.max(0, (servers * 1000) / throughput - meanMs);
}
