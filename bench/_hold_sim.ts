/**
 * A model of dispatch with holding ahead, to choose the rule before building
 * it (issue 5; see `bench/results/NOTES.md`, "Tried: holding requests
 * ahead").
 *
 * Plain dispatch pays a gap for every queued request: the worker's response
 * reaches the hub, the hub sends the next request, the worker reads it.
 * Holding ahead sends a queued request down a busy connection before the
 * job on it ends, so the worker starts it at once; but the request is then
 * bound to that worker, and another worker finishing first starts younger
 * work (or idles) while it waits. {@linkcode simulateHold} replays a trace
 * under both, with these costs (milliseconds):
 *
 * - a worker's finish is seen by the hub `gapMs / 2` later, and a request
 *   the hub sends reaches the worker `gapMs / 2` after it is sent (so a
 *   queued request starts `gapMs` after the finish that freed its worker);
 * - a held request starts `handMs` after the job before it ends (or when it
 *   arrives, if later);
 * - a take-back (a worker idle, the queue empty, a request held elsewhere)
 *   costs a round trip to the holder, `revokeMs`; if the holder started
 *   the request before the revoke reached it, the take-back fails.
 *
 * Requests are held at busy workers (one each, the earliest started first)
 * while no worker is idle and either the workers have been finishing in the
 * order they started (`inOrder` or more of the last ~20 finishes: jobs of
 * even length, where the earliest started is the next to finish; jobs that
 * started within `sameStart` of the mean job of each other count as
 * started together) or the queue is long: at least workers × (mean job ÷
 * `queueMs`) requests wait (the mean over the last ~20 jobs; 4 × workers
 * until one has ended), or, with `queueFactor`, at least `queueFactor` ×
 * workers. A long queue holds later for longer jobs: the gap holding saves
 * is a smaller share of them, and a request held behind one that runs long
 * waits all of it out. The "mean job" is the hub's mean exchange: from
 * sending a request (or a held one's turn) to seeing its job end, so it
 * includes the hand-over before the job.
 *
 * @module
 */

/** Options for {@linkcode simulateHold}. */
export interface HoldSimOptions {
  /** Finish to next queued start through the hub, in ms. @default {0.55} */
  gapMs?: number;
  /** Finish to the held request's start, in ms. @default {0.2} */
  handMs?: number;
  /** Round trip of a take-back, in ms. @default {0.3} */
  revokeMs?: number;
  /** Whether to hold at all (false: plain dispatch). @default {true} */
  hold?: boolean;
  /**
   * Hold while this share of recent finishes came in start order (0: always
   * hold; above 1: never by this test).
   * @default {0.8}
   */
  inOrder?: number;
  /**
   * Hold while at least workers × (mean job ÷ this) requests wait, in ms.
   * @default {5}
   */
  queueMs?: number;
  /**
   * Jobs that started within this share of the mean job of each other
   * count as started together: either may finish first "in order".
   * @default {0.05}
   */
  sameStart?: number;
  /**
   * Instead of `queueMs`: hold while at least this many requests per worker
   * wait, whatever the jobs' length (Infinity: never by queue length).
   */
  queueFactor?: number;
  /** Take held requests back for idle workers. @default {true} */
  takeBack?: boolean;
  /**
   * Take a held request back (to the front of the queue) once it has been
   * held this many mean jobs and its worker has not started it, checked as
   * jobs finish (as the hub does). @default {Infinity}
   */
  maxWait?: number;
  /**
   * `maxWait` while the queue is long (the long-queue arm's test holds):
   * there a request taken back is held again behind another job, so a
   * take-back helps only behind a job far longer than the rest, and each
   * costs its worker a hand-over. @default {maxWait}
   */
  maxWaitLong?: number;
}

/** What {@linkcode simulateHold} returns. */
export interface HoldSimResult {
  /** Latency of each request (arrival to finish), in ms. */
  latency: Float64Array;
  /** Requests that were held ahead. */
  held: number;
  /** Take-backs asked for, and those that came too late. */
  takeBacks: number;
  /** Take-backs that found the request started. */
  failedTakeBacks: number;
}

interface Server {
  busy: boolean; // running a job, or one is on its way to it
  started: number; // when its current job started
  // When the hub began its exchange: sent it, or saw the job before it end
  // (a held request's turn). The hub's mean exchange runs from then to
  // when it sees the job end, so it includes the hand-over.
  from: number;
  seenIdle: boolean; // the hub knows it is idle
  held: number; // the request held at it, or -1
  heldAt: number; // when that request reaches it
  heldSince: number; // when it was held
  revoking: boolean;
  // Asked back: it holds nothing more until its job ends (the hub's
  // connection owes the answers of the held request and the revoke).
  owes: boolean;
}

// A binary heap of events by time, then by insertion (equal times in order).
class Events {
  #time: number[] = [];
  #seq: number[] = [];
  #run: (() => void)[] = [];
  #n = 0;

  get size(): number {
    return this.#time.length;
  }

  at(time: number, run: () => void): void {
    const t = this.#time, s = this.#seq, r = this.#run;
    let i = t.length;
    const seq = this.#n++;
    t.push(time), s.push(seq), r.push(run);
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (t[p] < time || (t[p] === time && s[p] < seq)) break;
      t[i] = t[p], s[i] = s[p], r[i] = r[p];
      i = p;
    }
    t[i] = time, s[i] = seq, r[i] = run;
  }

  next(): () => void {
    const t = this.#time, s = this.#seq, r = this.#run;
    const run = r[0];
    const lt = t.pop()!, ls = s.pop()!, lr = r.pop()!;
    const n = t.length;
    if (n > 0) {
      let i = 0;
      for (;;) {
        let c = 2 * i + 1;
        if (c >= n) break;
        if (
          c + 1 < n &&
          (t[c + 1] < t[c] || (t[c + 1] === t[c] && s[c + 1] < s[c]))
        ) c++;
        if (t[c] > lt || (t[c] === lt && s[c] > ls)) break;
        t[i] = t[c], s[i] = s[c], r[i] = r[c];
        i = c;
      }
      t[i] = lt, s[i] = ls, r[i] = lr;
    }
    return run;
  }
}

/**
 * Replays a trace through a hub that dispatches with the costs and rule of
 * `options` (see the module's description).
 *
 * @param arrivals arrival times, ascending.
 * @param service service time of each request.
 * @param servers how many one-at-a-time workers.
 * @param options costs and rule.
 * @returns every request's latency and what holding did.
 */
export function simulateHold(
  arrivals: ArrayLike<number>,
  service: ArrayLike<number>,
  servers: number,
  options: HoldSimOptions = {},
): HoldSimResult {
  const gap = options.gapMs ?? 0.55;
  const hand = options.handMs ?? 0.2;
  const revoke = options.revokeMs ?? 0.3;
  const hold = options.hold ?? true;
  const inOrderMin = options.inOrder ?? 0.8;
  const queueMs = options.queueMs ?? 5;
  const queueFactor = options.queueFactor;
  const sameStart = options.sameStart ?? 0.05;
  // The mean exchange, over the last ~20 (-1: none has ended).
  let meanJob = -1;
  const queueMin = (): number =>
    queueFactor !== undefined
      ? queueFactor * servers
      : meanJob < 0
      ? 4 * servers
      : servers * meanJob / queueMs;
  const takeBack = options.takeBack ?? true;
  const maxWait = options.maxWait ?? Infinity;
  const maxWaitLong = options.maxWaitLong ?? maxWait;
  const n = arrivals.length;
  if (service.length !== n) {
    throw new RangeError("Cannot simulate: lengths differ");
  }
  const latency = new Float64Array(n).fill(NaN);
  const ws: Server[] = Array.from({ length: servers }, () => ({
    busy: false,
    started: 0,
    from: 0,
    seenIdle: true,
    held: -1,
    heldAt: 0,
    heldSince: 0,
    revoking: false,
    owes: false,
  }));
  const events = new Events();
  const queue: number[] = [];
  let head = 0;
  let inOrder = 0;
  let held = 0, takeBacks = 0, failedTakeBacks = 0;

  const start = (w: Server, i: number, t: number): void => {
    w.busy = true;
    w.seenIdle = false;
    w.started = t;
    events.at(t + service[i], () => finish(w, i, t + service[i]));
  };
  const finish = (w: Server, i: number, t: number): void => {
    latency[i] = t - arrivals[i];
    let first = true;
    for (const x of ws) {
      if (
        x !== w && x.busy &&
        x.started < w.started - sameStart * Math.max(meanJob, 0)
      ) first = false;
    }
    inOrder += ((first ? 1 : 0) - inOrder) / 20;
    const took = t + gap / 2 - w.from;
    meanJob = meanJob < 0 ? took : meanJob + (took - meanJob) / 20;
    w.busy = false;
    w.owes = false;
    // Held too long behind another worker's job (maxWait): asked back; the
    // worker, still at that job, gives it back at once (the interim 150).
    const longQueue = queue.length - head >= queueMin();
    for (const x of ws) {
      if (
        x === w || x.held < 0 || x.revoking ||
        t - x.heldSince < (longQueue ? maxWaitLong : maxWait) * meanJob
      ) continue;
      askBack(x, t, (j) => {
        // Back at the front of the queue.
        if (head > 0) queue[--head] = j;
        else queue.unshift(j);
        dispatch(t + revoke);
      });
    }
    // A revoke on its way has not reached the worker: it starts the request.
    if (w.held >= 0) {
      const j = w.held;
      w.held = -1;
      start(w, j, Math.max(t + hand, w.heldAt));
      w.from = t + gap / 2;
      events.at(t + gap / 2, () => dispatch(t + gap / 2));
      return;
    }
    events.at(t + gap / 2, () => {
      if (!w.busy) w.seenIdle = true;
      dispatch(t + gap / 2);
    });
  };
  // Asks `holder` at `t` for the request held there: the revoke reaches
  // the worker `revoke / 2` later, which gives the request back unless it
  // has started it; the answer is in at `t + revoke`, where `back` gets the
  // request, or `late` runs. Either way the holder's connection owes the
  // revoke's answer, behind the job it runs then, and holds nothing more
  // until that job ends (as the hub's does).
  const askBack = (
    holder: Server,
    t: number,
    back: (j: number) => void,
    late?: () => void,
  ): void => {
    const j = holder.held;
    holder.revoking = true;
    holder.owes = true;
    takeBacks++;
    events.at(t + revoke / 2, () => {
      holder.revoking = false;
      // Again if its job ended meanwhile: the revoke follows the next.
      holder.owes = true;
      if (holder.held !== j) {
        failedTakeBacks++;
        if (late !== undefined) events.at(t + revoke, late);
        return;
      }
      holder.held = -1;
      events.at(t + revoke, () => back(j));
    });
  };
  const send = (w: Server, i: number, t: number): void => {
    w.seenIdle = false;
    w.busy = true; // on its way
    w.started = t + gap / 2;
    w.from = t;
    events.at(t + gap / 2, () => start(w, i, t + gap / 2));
  };
  const dispatch = (t: number): void => {
    for (const w of ws) {
      if (head === queue.length) break;
      if (w.seenIdle) send(w, queue[head++], t);
    }
    if (takeBack && head === queue.length) {
      for (const a of ws) {
        if (!a.seenIdle) continue;
        let b: Server | null = null;
        for (const x of ws) {
          if (x.held >= 0 && !x.revoking && (b === null || x.held < b.held)) {
            b = x;
          }
        }
        if (b === null) break;
        const idle = a;
        idle.seenIdle = false;
        idle.busy = true; // kept for the request taken back
        askBack(b, t, (j) => send(idle, j, t + revoke), () => {
          idle.busy = false;
          idle.seenIdle = true;
          dispatch(t + revoke);
        });
      }
    }
    if (!hold) return;
    while (head < queue.length && !ws.some((w) => w.seenIdle)) {
      if (inOrder < inOrderMin && queue.length - head < queueMin()) return;
      let at: Server | null = null;
      for (const w of ws) {
        if (
          w.busy && w.held < 0 && !w.owes &&
          (at === null || w.started < at.started)
        ) {
          at = w;
        }
      }
      if (at === null) return;
      at.held = queue[head++];
      at.heldAt = t + gap / 2;
      at.heldSince = t;
      held++;
    }
  };
  for (let i = 0; i < n; i++) {
    events.at(arrivals[i], () => {
      queue.push(i);
      dispatch(arrivals[i]);
    });
  }
  // Bounded: each request makes a fixed number of events.
  while (events.size > 0) events.next()();
  return { latency, held, takeBacks, failedTakeBacks };
}
