/**
 * Dispatch against a model, at random: an in-process hub with every queue
 * feature on (priority classes with and without aging, fair keys by turns
 * and by time, affinity with waits and picks, small maxQueue and
 * maxQueuePerKey) and scripted workers on in-memory connections that
 * join, answer, decline, park, drain and die, while consumers come and
 * leave and timeouts fire on a simulated clock. After every step: no
 * request queued while a slot of its pool idles, the gauges agree with
 * the model, each request went to a worker in its class's order (per key
 * where keys reorder) and was answered once with the status of what
 * happened; at the end every gauge is back to 0.
 *
 * Seeds: a fixed list; `DISPATCH_SEEDS=1-500` (or `7,9`) tries others, and
 * `DISPATCH_STEPS` sets the steps per seed.
 */

import { type AccessRecord, Hub, type HubOptions } from "../hub.ts";
import { encodeHandshake } from "../_handshake.ts";
import { hash32, mix32 } from "../_hash.ts";
import { PARKED_RESPONSE, READY_RESPONSE } from "../_park.ts";
import { bytes, type MemConn, memPair, text } from "./_memconn.ts";

// ---- simulated time -------------------------------------------------------

interface Timer {
  id: number;
  at: number;
  every: number;
  fn: () => void;
}

class Clock implements Disposable {
  now = 0;
  timers = new Map<number, Timer>();
  #id = 1;
  #saved = {
    setTimeout: globalThis.setTimeout,
    clearTimeout: globalThis.clearTimeout,
    setInterval: globalThis.setInterval,
    clearInterval: globalThis.clearInterval,
    now: Object.getOwnPropertyDescriptor(performance, "now"),
  };

  constructor() {
    const add = (fn: () => void, delay = 0, every = 0) => {
      const t = {
        id: this.#id++,
        at: this.now + Math.max(0, delay),
        every,
        fn,
      };
      this.timers.set(t.id, t);
      return t.id;
    };
    const clear = (id?: number) => {
      if (id !== undefined) this.timers.delete(id);
    };
    globalThis.setTimeout =
      ((fn: () => void, delay?: number) =>
        add(fn, delay)) as unknown as typeof setTimeout;
    globalThis.setInterval =
      ((fn: () => void, delay = 0) =>
        add(fn, delay, Math.max(1, delay))) as unknown as typeof setInterval;
    globalThis.clearTimeout = clear as typeof clearTimeout;
    globalThis.clearInterval = clear as typeof clearInterval;
    Object.defineProperty(performance, "now", {
      value: () => this.now,
      configurable: true,
      writable: true,
    });
  }

  // The next due timer at or before `to`, run; false if none.
  runOne(to: number): boolean {
    let first: Timer | undefined;
    for (const t of this.timers.values()) {
      if (t.at <= to && (first === undefined || t.at < first.at)) first = t;
    }
    if (first === undefined) return false;
    if (first.every > 0) first.at += first.every;
    else this.timers.delete(first.id);
    this.now = Math.max(this.now, first.at - first.every);
    first.fn();
    return true;
  }

  [Symbol.dispose](): void {
    const s = this.#saved;
    globalThis.setTimeout = s.setTimeout;
    globalThis.clearTimeout = s.clearTimeout;
    globalThis.setInterval = s.setInterval;
    globalThis.clearInterval = s.clearInterval;
    delete (performance as { now?: unknown }).now;
    if (s.now !== undefined) Object.defineProperty(performance, "now", s.now);
  }
}

// Lets every promise chain the last step started run to its end: the
// connections are in memory, so nothing waits on anything but microtasks.
// A message is a task that, unlike a timer, is not held back a millisecond.
// The channel is made by the test, which closes it.
let channel: MessageChannel;
const tasks: (() => void)[] = [];
async function settle(): Promise<void> {
  for (let i = 0; i < 3; i++) {
    await new Promise<void>((r) => {
      tasks.push(r);
      channel.port2.postMessage(0);
    });
  }
}

function rng(seed: number) {
  let s = seed >>> 0 || 1;
  return () => {
    // xorshift32
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 0x1_0000_0000;
  };
}

// ---- the model ------------------------------------------------------------

// "returning": its worker gave it back (declined it, died, or was closed
// under it) and the hub has not yet put it back or answered it.
type ReqState = "pending" | "at-worker" | "returning" | "done";

interface MReq {
  n: number;
  id: string;
  pool: string;
  priority: number;
  user: string;
  model: string;
  arrived: number;
  state: ReqState;
  conn: MConn | null;
  sentAt: number;
  // What happened to it, for the status it must get.
  deaths: number;
  declines: number;
  finished: boolean;
  left: boolean;
  // It went ahead of a request waiting for its worker (see cannotWait).
  skippedWait: boolean;
  ctrl: AbortController;
  access: AccessRecord | null;
  response: Response | null;
  responses: number;
  body: string | null;
}

type ConnState = "setup" | "idle" | "busy" | "parking" | "parked" | "closed";

interface MConn {
  n: number;
  worker: MWorker;
  state: ConnState;
  req: MReq | null;
  end: MemConn; // the worker's end
}

interface MWorker {
  id: string;
  pool: string;
  conns: MConn[];
}

interface PoolSpec {
  fair: boolean;
  affinity: boolean;
  affinityWait: number;
  step: number;
  maxQueue: number;
  maxQueuePerKey: number;
}

const POOLS = ["default", "fifo", "gpu", "mix"] as const;
const QUEUE_TIMEOUT = 200;
const HEAD_TIMEOUT = 300;
const MAX_RETRIES = 2;
// Times are sums of fractions of a millisecond (see randomStep).
const EPSILON = 1e-6;

function specs(random: () => number): Record<string, PoolSpec> {
  const step = () => random() < 0.5 ? Infinity : [5, 40][random() * 2 | 0];
  return {
    default: {
      fair: true,
      affinity: false,
      affinityWait: 0,
      step: step(),
      maxQueue: 10_000,
      maxQueuePerKey: 3,
    },
    fifo: {
      fair: false,
      affinity: false,
      affinityWait: 0,
      step: step(),
      maxQueue: 6,
      maxQueuePerKey: Infinity,
    },
    gpu: {
      fair: false,
      affinity: true,
      affinityWait: random() < 0.3 ? 0 : 30,
      step: step(),
      // Small enough that waiting requests alone may fill it.
      maxQueue: random() < 0.5 ? 2 : 8,
      maxQueuePerKey: Infinity,
    },
    mix: {
      fair: true,
      affinity: true,
      // Longer than the queue timeout, which then bounds it.
      affinityWait: random() < 0.5 ? 30 : 250,
      step: step(),
      maxQueue: 10_000,
      maxQueuePerKey: random() < 0.5 ? 1 : 4,
    },
  };
}

class Run {
  clock: Clock;
  random: () => number;
  seed: number;
  hub: Hub;
  spec: Record<string, PoolSpec>;
  reqs: MReq[] = [];
  byId = new Map<string, MReq>();
  workers: MWorker[] = [];
  conns: MConn[] = [];
  workerN = 0;
  connN = 0;
  step = 0;
  // Set once the run ended (or failed): what the cleanup causes is not checked.
  over = false;
  trace: string[] = [];
  // Counters the stats are checked against.
  timedOut = 0;
  // Requests that, without room to wait, went ahead of one waiting.
  overtaken = 0;
  // The request being handed to the hub, with what its pool held then.
  arriving:
    | { q: MReq; idle: number; waiting: number; keyWaiting: number }
    | null = null;
  full = 0;
  keyFull = 0;

  constructor(seed: number, clock: Clock) {
    this.seed = seed;
    this.clock = clock;
    this.random = rng(seed * 2654435761);
    this.spec = specs(this.random);
    const pools: HubOptions["pools"] = {};
    for (const [name, s] of Object.entries(this.spec)) {
      pools[name] = {
        maxQueue: s.maxQueue,
        ...(s.step === Infinity ? {} : { priorityStep: s.step }),
        ...(s.fair
          ? {
            fairBy: "header:x-user" as const,
            maxQueuePerKey: s.maxQueuePerKey,
            fairShare: this.random() < 0.5
              ? "time" as const
              : "requests" as const,
          }
          : {}),
        ...(s.affinity
          ? {
            affinityBy: "header:x-model" as const,
            affinityWait: s.affinityWait,
          }
          : {}),
      };
    }
    this.hub = new Hub({
      routes: [
        { pool: "fifo", pathPrefix: "/fifo/" },
        { pool: "gpu", pathPrefix: "/gpu/" },
        { pool: "mix", pathPrefix: "/mix/" },
      ],
      pools,
      trustPriority: true,
      queueTimeout: QUEUE_TIMEOUT,
      headTimeout: HEAD_TIMEOUT,
      maxRetries: MAX_RETRIES,
      pingInterval: 0,
      onAccess: (r) => this.accessed(r),
      onLog: (r) => {
        if (r.msg === "retrying request on another worker" && !this.over) {
          const q = this.byId.get(r.id as string);
          if (q?.state === "returning") q.state = "pending";
        }
        if (r.msg !== "worker handshake accepted") {
          this.log(`hub: ${r.msg} ${r.worker ?? ""} ${r.reason ?? ""}`);
        }
      },
    });
  }

  // The first failure: thrown where it is found, and again at the next
  // check, since the hub may catch it (a failing write is the worker's).
  failure: Error | null = null;

  fail(message: string): never {
    this.failure ??= new Error(
      `seed ${this.seed} step ${this.step} t=${this.clock.now}: ${message}\n` +
        this.trace.slice(-(Number(Deno.env.get("DISPATCH_TRACE")) || 40))
          .join("\n"),
    );
    this.over = true;
    throw this.failure;
  }

  check(ok: unknown, message: string): void {
    if (!ok) this.fail(message);
  }

  log(s: string): void {
    this.trace.push(`#${this.step} t=${this.clock.now} ${s}`);
    if (this.trace.length > 400) this.trace.splice(0, 200);
  }

  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.random() * xs.length)];
  }

  // -- hub events, as they happen --

  accessed(r: AccessRecord): void {
    if (this.over) return;
    // (A throw here would reach the hub, not the test.)
    const q = this.byId.get(r.id);
    if (q === undefined) this.fail(`access record for unknown id ${r.id}`);
    this.log(`access ${q.id} ${r.status} ${r.outcome}`);
    this.check(q.access === null, `${q.id} recorded twice`);
    q.access = r;
    const now = this.clock.now;
    switch (r.outcome) {
      case "ok":
        this.check(
          q.finished && r.status === 200,
          `${q.id}: ok without an answer`,
        );
        break;
      case "queue-timeout":
        this.check(
          q.state !== "done",
          `${q.id}: queue timeout in state ${q.state}`,
        );
        this.check(
          now - q.arrived >= QUEUE_TIMEOUT - EPSILON,
          `${q.id}: queue timeout after ${now - q.arrived} ms`,
        );
        this.timedOut++;
        break;
      case "worker-error":
        this.check(
          q.deaths > MAX_RETRIES,
          `${q.id}: 502 after ${q.deaths} worker deaths`,
        );
        break;
      case "worker-timeout":
        this.check(
          q.state === "at-worker" || q.conn === null,
          `${q.id}: worker timeout in state ${q.state}`,
        );
        this.check(
          now - q.sentAt >= HEAD_TIMEOUT - EPSILON,
          `${q.id}: worker timeout after ${now - q.sentAt} ms`,
        );
        break;
      case "abandoned":
        this.check(q.left, `${q.id}: abandoned, but its consumer is there`);
        break;
      case "queue-full":
      case "key-full":
        // Checked where it arrived (see arrive).
        if (r.outcome === "queue-full") this.full++;
        else this.keyFull++;
        break;
      default:
        this.fail(`${q.id}: unexpected outcome ${r.outcome} (${r.status})`);
    }
    if (q.conn !== null && q.conn.req === q) {
      q.conn.req = null;
      // Its connection is closed by the hub for a timeout or a consumer
      // that left; its other ends were set where the worker acted.
    }
    q.state = "done";
    q.conn = null;
  }

  // The hub wrote to a worker connection: the 101, a request, a wait request.
  wrote(c: MConn, data: Uint8Array): void {
    if (this.over) return;
    const s = text(data);
    if (s.startsWith("HTTP/1.1 101")) {
      this.check(c.state === "setup", `conn ${c.n}: 101 in ${c.state}`);
      c.state = "idle";
      return;
    }
    if (s.includes("x-pothead-wait:")) {
      this.check(
        c.state === "parking" || c.state === "parked",
        `conn ${c.n}: wait request in ${c.state}`,
      );
      c.state = "parked";
      return;
    }
    const m = /\r\nx-model-id: *(\S+)/i.exec(s);
    if (m === null) {
      this.fail(`conn ${c.n}: unknown write ${JSON.stringify(s)}`);
    }
    const q = this.byId.get(m[1])!;
    this.log(`dispatch ${q.id} -> conn ${c.n} (${c.worker.id})`);
    this.check(c.state === "idle", `${q.id} sent to conn ${c.n} in ${c.state}`);
    this.check(
      q.state === "pending" || q.state === "returning",
      `${q.id} sent while ${q.state}`,
    );
    this.check(
      q.pool === c.worker.pool,
      `${q.id} of ${q.pool} sent to ${c.worker.pool}`,
    );
    this.checkOrder(q);
    if (this.arriving?.q === q) this.checkAffinity(q, c.worker);
    c.state = "busy";
    c.req = q;
    q.state = "at-worker";
    q.conn = c;
    q.sentAt = this.clock.now;
  }

  // A request that finds idle slots in an affinity pool goes to its key's
  // first worker if that one has one idle; else, where it could wait (an
  // affinityWait, and room under maxQueue and maxQueuePerKey), it waits.
  checkAffinity(q: MReq, to: MWorker): void {
    const s = this.spec[q.pool];
    const first = this.firstWorker(q);
    if (!s.affinity || first === null || first === to) return;
    this.check(
      !first.conns.some((c) => c.state === "idle"),
      `${q.id} went to ${to.id} while its first worker ${first.id} idles`,
    );
    this.check(
      s.affinityWait === 0 || this.cannotWait(q),
      `${q.id} went to ${to.id} instead of waiting for ${first.id}`,
    );
  }

  // `q` is arriving, finds idle slots, and has no room to wait in.
  cannotWait(q: MReq): boolean {
    const a = this.arriving;
    if (a?.q !== q || a.idle === 0) return false;
    const s = this.spec[q.pool];
    return a.waiting >= s.maxQueue ||
      (s.fair && a.keyWaiting >= s.maxQueuePerKey);
  }

  // Within its pool and class, and its fair key and affinity key where
  // the pool has them, nothing that came before `q` still waits.
  checkOrder(q: MReq): void {
    const s = this.spec[q.pool];
    for (const o of this.reqs) {
      if (o === q || o.n > q.n) continue;
      if (o.state !== "pending" && o.state !== "returning") continue;
      if (o.pool !== q.pool || o.priority !== q.priority) continue;
      if (s.fair && o.user !== q.user) continue;
      if (s.affinity && o.model !== q.model) continue;
      if (
        this.cannotWait(q) ||
        (q.skippedWait && this.poolStats(q.pool).queued === 0)
      ) {
        // Documented: past maxQueue or maxQueuePerKey a request that finds
        // idle slots goes to the next one, ahead of those waiting (and so
        // does it when put back, while nothing queues).
        q.skippedWait = true;
        this.overtaken++;
        continue;
      }
      this.fail(
        `${q.id} sent while ${o.id}, before it in its class, ${
          o.state === "returning" ? "is being put back" : "waits"
        }`,
      );
    }
    // Its class goes first: the highest with anything waiting, or with a
    // priorityStep the one whose oldest is due first (a tie to the higher).
    // Not checked while requests wait for their worker outside the queue
    // (they go by goesBefore, and may wait for a worker busy with a lower
    // class).
    if (s.affinity && this.poolStats(q.pool).waiting > 0) return;
    const oldest = new Map<number, number>();
    for (const o of this.reqs) {
      if (o.pool !== q.pool || (o !== q && o.state !== "pending")) continue;
      oldest.set(
        o.priority,
        Math.min(oldest.get(o.priority) ?? Infinity, o.arrived),
      );
    }
    const due = (p: number) =>
      s.step === Infinity ? -p : oldest.get(p)! - p * s.step;
    for (const p of oldest.keys()) {
      if (
        due(p) < due(q.priority) ||
        (due(p) === due(q.priority) && p > q.priority)
      ) {
        this.fail(
          `${q.id} of class ${q.priority} sent before class ${p} (${[
            ...oldest,
          ]})`,
        );
      }
    }
  }

  closed(c: MConn): void {
    if (this.over) return;
    if (c.state === "closed") return;
    this.log(`hub closed conn ${c.n} (${c.state})`);
    const q = c.req;
    c.state = "closed";
    c.req = null;
    // Its request is answered, or goes to another worker (not one whose
    // consumer left: the hub closed the connection for that).
    if (q !== null && q.state === "at-worker" && !q.left) {
      q.state = "returning";
      q.conn = null;
    }
  }

  // -- actions --

  addWorker(): void {
    const pool = this.pick(POOLS);
    const w: MWorker = { id: `w${++this.workerN}`, pool, conns: [] };
    this.workers.push(w);
    const n = 1 + Math.floor(this.random() * 3);
    this.log(`worker ${w.id} joins ${pool} with ${n}`);
    for (let i = 0; i < n; i++) this.addConn(w);
  }

  addConn(w: MWorker): void {
    const [hubEnd, end] = memPair();
    const c: MConn = {
      n: ++this.connN,
      worker: w,
      state: "setup",
      req: null,
      end,
    };
    w.conns.push(c);
    this.conns.push(c);
    end.write(encodeHandshake({
      host: "hub",
      workerId: w.id,
      pool: w.pool,
      labels: { n: String(c.n) },
    }));
    this.hub.addWorker({
      read: (p) => hubEnd.read(p),
      // What the hub writes and when it closes, as it happens.
      write: (p) => {
        this.wrote(c, p);
        return hubEnd.write(p);
      },
      close: () => {
        this.closed(c);
        hubEnd.close();
      },
    }, `127.0.0.${c.n % 250 + 1}:1`);
  }

  arrive(): void {
    const pool = this.pick(POOLS);
    const n = this.reqs.length + 1;
    const q: MReq = {
      n,
      id: `r${n}`,
      pool,
      priority: this.pick([0, 0, 1, 2, -1]),
      user: this.pick(["u1", "u2", "u3"]),
      model: this.pick(["m1", "m2", "m3", "m4", ""]),
      arrived: this.clock.now,
      state: "pending",
      conn: null,
      sentAt: -1,
      deaths: 0,
      declines: 0,
      finished: false,
      left: false,
      skippedWait: false,
      ctrl: new AbortController(),
      access: null,
      response: null,
      responses: 0,
      body: null,
    };
    this.reqs.push(q);
    this.byId.set(q.id, q);
    this.log(`arrive ${q.id} ${pool} p${q.priority} ${q.user} ${q.model}`);
    const path = pool === "default" ? "/x" : `/${pool}/x`;
    const headers: Record<string, string> = {
      "x-request-id": q.id,
      "x-model-id": q.id,
      "x-pothead-priority": String(q.priority),
      "x-user": q.user,
    };
    if (q.model !== "") headers["x-model"] = q.model;
    // What the pool holds and has idle before it comes, for a refusal.
    const before = this.poolStats(pool);
    const keyBefore =
      this.reqs.filter((o) =>
        o !== q && o.pool === pool && o.user === q.user && o.state === "pending"
      ).length;
    this.arriving = {
      q,
      idle: before.idle,
      waiting: before.queued + before.waiting,
      keyWaiting: keyBefore,
    };
    this.hub.fetch(
      new Request(`http://hub${path}`, { headers, signal: q.ctrl.signal }),
      { remoteAddr: { hostname: "10.1.1.1" } },
    ).then(async (res) => {
      q.responses++;
      q.response = res;
      q.body = await res.text();
    });
    this.arriving = null;
    if (q.state === "pending" && q.access === null && before.idle > 0) {
      // It waits for its key's first worker: only with room for it.
      const s = this.spec[pool];
      this.check(
        s.affinityWait > 0 && before.queued + before.waiting < s.maxQueue &&
          (!s.fair || keyBefore < s.maxQueuePerKey),
        `${q.id} waits with ${JSON.stringify(before)}, ${keyBefore} of its key`,
      );
    }
    // Refused at once, or not at all.
    if (q.access?.outcome === "queue-full") {
      this.check(
        before.idle === 0 &&
          before.queued + before.waiting >= this.spec[pool].maxQueue,
        `${q.id} refused queue-full with ${JSON.stringify(before)}`,
      );
    } else if (q.access?.outcome === "key-full") {
      this.check(
        before.idle === 0 && keyBefore >= this.spec[pool].maxQueuePerKey,
        `${q.id} refused key-full with ${keyBefore} of its key waiting`,
      );
    }
  }

  poolStats(name: string) {
    const p = this.hub.stats.pools.find((x) => x.name === name);
    return p ??
      { queued: 0, waiting: 0, idle: 0, parked: 0, busy: 0, slots: 0 };
  }

  busyConns(): MConn[] {
    return this.conns.filter((c) => c.state === "busy" && c.req !== null);
  }

  respond(c: MConn, head: string): void {
    const q = c.req!;
    c.req = null;
    c.end.write(bytes(head));
    this.log(`conn ${c.n} answers ${q.id}: ${head.split("\r\n")[0]}`);
  }

  finish(c: MConn, close = false): void {
    const q = c.req!;
    q.finished = true;
    this.respond(
      c,
      `HTTP/1.1 200 OK\r\ncontent-length: ${q.id.length}\r\n${
        close ? "connection: close\r\n" : ""
      }\r\n${q.id}`,
    );
    c.state = close ? "closed" : "idle";
    if (close) c.end.close();
  }

  decline(c: MConn, park: boolean): void {
    const q = c.req!;
    q.declines++;
    q.state = "returning";
    q.conn = null;
    if (park) {
      this.respond(c, text(PARKED_RESPONSE));
      c.state = "parking";
    } else {
      this.respond(
        c,
        "HTTP/1.1 408 Request Timeout\r\nx-pothead-not-started: 1\r\ncontent-length: 0\r\n\r\n",
      );
      // A decline without the park option: the hub closes it.
      c.state = "closed";
    }
  }

  die(c: MConn): void {
    const q = c.req;
    this.log(`conn ${c.n} dies (${c.state}${q ? " with " + q.id : ""})`);
    if (q !== null) {
      q.deaths++;
      q.state = "returning";
      q.conn = null;
      c.req = null;
    }
    c.state = "closed";
    c.end.close();
  }

  unpark(c: MConn): void {
    this.log(`conn ${c.n} offered again`);
    c.end.write(READY_RESPONSE);
    c.state = "idle";
  }

  leave(): void {
    const waiting = this.reqs.filter((q) => q.state !== "done" && !q.left);
    if (waiting.length === 0) return;
    const q = this.pick(waiting);
    this.log(`consumer of ${q.id} leaves (${q.state})`);
    q.left = true;
    q.ctrl.abort();
  }

  // Time passes up to `ms`: timers fire in order, each one settled.
  async advance(ms: number): Promise<void> {
    const to = this.clock.now + ms;
    for (let i = 0; i < 1000 && this.clock.runOne(to); i++) await settle();
    this.clock.now = to;
  }

  async randomStep(): Promise<void> {
    // performance.now() has microseconds: two consumers never come at the
    // same instant, so neither do two steps here.
    this.clock.now += 0.001;
    const r = this.random();
    const live = () => this.conns.filter((c) => c.state !== "closed");
    if (r < 0.3) this.arrive();
    else if (r < 0.5) {
      const busy = this.busyConns();
      if (busy.length > 0) this.finish(this.pick(busy), this.random() < 0.1);
    } else if (r < 0.56) {
      const busy = this.busyConns();
      if (busy.length > 0) this.decline(this.pick(busy), this.random() < 0.6);
    } else if (r < 0.62) {
      const parked = this.conns.filter((c) => c.state === "parked");
      if (parked.length > 0) this.unpark(this.pick(parked));
    } else if (r < 0.66) {
      const all = live().filter((c) => c.state !== "setup");
      if (all.length > 0) this.die(this.pick(all));
    } else if (r < 0.72) {
      if (live().length < 12) this.addWorker();
    } else if (r < 0.75) {
      const w = this.pick(this.workers);
      if (w !== undefined && w.conns.some((c) => c.state !== "closed")) {
        this.log(`worker ${w.id} adds a connection`);
        this.addConn(w);
      }
    } else if (r < 0.79) {
      this.leave();
    } else {
      await this.advance(1 + Math.floor(this.random() * 40));
      return;
    }
    await settle();
  }

  // -- invariants, with everything settled --

  invariants(): void {
    if (this.failure !== null) throw this.failure;
    const stats = this.hub.stats;
    for (const name of POOLS) {
      const p = this.poolStats(name);
      const conns = this.conns.filter((c) => c.worker.pool === name);
      const count = (s: ConnState) => conns.filter((c) => c.state === s).length;
      const pending = this.reqs.filter((q) =>
        q.pool === name && q.state === "pending"
      );
      const at = `pool ${name} ${JSON.stringify(p)}`;
      this.check(
        p.queued === 0 || p.idle === 0,
        `${at}: requests queued while a slot idles`,
      );
      this.check(
        p.idle === count("idle"),
        `${at}: idle, model ${count("idle")}`,
      );
      this.check(
        p.parked === count("parked"),
        `${at}: parked, model ${count("parked")}`,
      );
      this.check(
        p.busy === count("busy"),
        `${at}: busy, model ${count("busy")}`,
      );
      this.check(
        p.queued + p.waiting === pending.length,
        `${at}: queued + waiting, model ${pending.map((q) => q.id)}`,
      );
      const spec = this.spec[name];
      if (spec.affinityWait === 0) {
        this.check(p.waiting === 0, `${at}: waiting without affinityWait`);
      }
      for (const q of pending) {
        this.check(
          // (Timers take whole milliseconds: up to one late.)
          this.clock.now - q.arrived < QUEUE_TIMEOUT + 1,
          `${q.id} still waits ${this.clock.now - q.arrived} ms after it came`,
        );
        if (p.idle > 0) {
          // Only a request waiting for its key's busy worker may wait
          // while a slot idles, and for at most the affinity wait.
          const first = this.firstWorker(q);
          this.check(
            first !== null &&
              !first.conns.some((c) => c.state === "idle"),
            `${q.id} waits while a slot idles, and its key's first worker is ${
              first === null ? "none" : first.id + " with an idle slot"
            }`,
          );
          this.check(
            this.clock.now - q.arrived < spec.affinityWait + 1,
            `${q.id} waits ${this.clock.now - q.arrived} ms while a slot idles`,
          );
        }
      }
    }
    for (const q of this.reqs) {
      this.check(q.state !== "returning", `${q.id} given back and left so`);
      if (q.state === "at-worker") {
        this.check(
          this.clock.now - q.sentAt < HEAD_TIMEOUT + 100,
          `${q.id} at its worker ${this.clock.now - q.sentAt} ms`,
        );
      }
      if (q.state === "done") {
        this.check(q.responses === 1, `${q.id}: ${q.responses} responses`);
        // A 499 (the consumer left) reaches nobody; the Response says 503.
        const status = q.access!.status === 499 ? 503 : q.access!.status;
        this.check(
          q.response!.status === status,
          `${q.id}: answered ${q.response!.status}, recorded ${
            q.access!.status
          }`,
        );
        if (q.access!.outcome === "ok") {
          this.check(q.body === q.id, `${q.id}: got the body ${q.body}`);
        }
      } else {
        this.check(q.responses === 0, `${q.id}: answered while ${q.state}`);
      }
    }
    this.check(stats.received === this.reqs.length, "stats.received");
    this.check(stats.timedOutQueued === this.timedOut, "stats.timedOutQueued");
    this.check(stats.rejectedFull === this.full, "stats.rejectedFull");
    this.check(stats.rejectedKeyFull === this.keyFull, "stats.rejectedKeyFull");
  }

  // Every worker answers what it has and offers what it parked, until
  // nothing is left; then every gauge is 0 and the workers leave.
  async end(): Promise<void> {
    for (let i = 0; i < 2000; i++) {
      if (
        this.reqs.every((q) => q.state === "done") &&
        this.conns.every((c) => c.state !== "parked" && c.state !== "parking")
      ) break;
      this.step++;
      for (const c of this.conns) {
        if (c.state === "parked") this.unpark(c);
        else if (c.state === "busy" && c.req !== null) this.finish(c);
      }
      await settle();
      if (this.conns.every((c) => c.state !== "busy" && c.state !== "parked")) {
        // Nothing to serve it: time runs on to the next timeout.
        if (!this.conns.some((c) => c.state === "idle")) this.addWorkerFor();
        await this.advance(10);
      }
      this.invariants();
    }
    this.check(
      this.reqs.every((q) => q.state === "done"),
      "requests left at the end",
    );
    const stats = this.hub.stats;
    for (const p of stats.pools) {
      this.check(
        p.queued === 0 && p.waiting === 0 && p.busy === 0 && p.parked === 0,
        `at the end: ${JSON.stringify(p)}`,
      );
    }
    for (const c of this.conns) if (c.state !== "closed") this.die(c);
    await settle();
    for (const p of this.hub.stats.pools) {
      this.check(
        p.slots === 0 && p.idle === 0,
        `after the workers left: ${JSON.stringify(p)}`,
      );
    }
    this.check(this.hub.stats.workers.length === 0, "workers left");
    await this.hub.shutdown(0);
    await settle();
  }

  // The worker `q`'s affinity key ranks first among those with a
  // connection in its pool (rendezvous hashing, as the hub's #firstGroup).
  firstWorker(q: MReq): MWorker | null {
    if (q.model === "") return null;
    const key = hash32(q.model);
    let best: MWorker | null = null;
    let top = -1;
    for (const w of this.workers) {
      if (w.pool !== q.pool) continue;
      const live = w.conns.some((c) =>
        c.state !== "setup" && c.state !== "closed"
      );
      if (!live) continue;
      const score = mix32(key ^ hash32(w.id));
      if (score > top) {
        top = score;
        best = w;
      }
    }
    return best;
  }

  addWorkerFor(): void {
    for (const pool of POOLS) {
      if (this.reqs.some((q) => q.pool === pool && q.state === "pending")) {
        const w: MWorker = { id: `w${++this.workerN}`, pool, conns: [] };
        this.workers.push(w);
        this.addConn(w);
      }
    }
  }
}

async function runSeed(
  seed: number,
  steps: number,
): Promise<Record<string, number>> {
  using clock = new Clock();
  const run = new Run(seed, clock);
  try {
    // Start with a worker in some pools.
    for (let i = 0; i < 3; i++) run.addWorker();
    await settle();
    for (run.step = 1; run.step <= steps; run.step++) {
      await run.randomStep();
      run.invariants();
    }
    const s = run.hub.stats;
    const outcomes: Record<string, number> = {};
    await run.end();
    if (run.failure !== null) throw run.failure;
    for (const q of run.reqs) {
      const o = q.access!.outcome;
      outcomes[o] = (outcomes[o] ?? 0) + 1;
    }
    return {
      requests: run.reqs.length,
      ...outcomes,
      retries: s.retries,
      affinityWaits: s.affinityWaits,
      affinityWaitTimeouts: s.affinityWaitTimeouts,
      affinityPicks: s.affinityPicks,
      affinityHits: s.affinityHits,
      affinityMisses: s.affinityMisses,
      overtaken: run.overtaken,
    };
  } finally {
    run.over = true;
    for (const c of run.conns) if (c.state !== "closed") c.end.close();
    for (const q of run.reqs) if (q.state !== "done") q.ctrl.abort();
    await run.hub.shutdown(0).catch(() => {});
    await settle();
  }
}

function seedsFrom(spec: string | undefined): number[] {
  // 1 to 30, and 206: its worker's last connection closes under a request
  // that others of its key waited behind (put back after them before).
  if (spec === undefined) {
    return [...Array.from({ length: 30 }, (_, i) => i + 1), 206];
  }
  const out: number[] = [];
  for (const part of spec.split(",")) {
    const [a, b] = part.split("-").map(Number);
    for (let s = a; s <= (b ?? a); s++) out.push(s);
  }
  return out;
}

Deno.test("dispatch follows the model under random arrivals, departures, worker churn, declines, parking and timeouts", async () => {
  const seeds = seedsFrom(Deno.env.get("DISPATCH_SEEDS"));
  const steps = Number(Deno.env.get("DISPATCH_STEPS") ?? 400);
  channel = new MessageChannel();
  channel.port1.onmessage = () => tasks.shift()?.();
  const totals: Record<string, number> = {};
  try {
    for (const seed of seeds) {
      const stats = await runSeed(seed, steps);
      for (const [k, v] of Object.entries(stats)) {
        totals[k] = (totals[k] ?? 0) + v;
      }
    }
  } finally {
    channel.port1.close();
    channel.port2.close();
  }
  if (Deno.env.get("DISPATCH_VERBOSE")) {
    console.log(seeds.length, "seeds", steps, "steps", totals);
  }
});
