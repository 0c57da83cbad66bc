/**
 * The worker's side of "how many connections, to which hubs".
 *
 * A worker with `concurrency` N has N permits. To every hub it knows it
 * offers as many idle connections as it has free permits, so a hub with
 * queued work is never starved while the worker idles elsewhere. A request
 * that arrives on a connection with no permit left is declined with the
 * "not started" 408 (its hub sends it to another worker) and the connection
 * is parked (`_park.ts`): kept open, offered again when a permit frees.
 * With several hubs every response parks its connection too, so a freed
 * permit is offered to all hubs at once. Hubs found not to know parking
 * get the older behaviour: surplus connections handed back (closed) and
 * one request per connection, then a reconnect. With one hub this is simply N
 * connections and no churn.
 *
 * Hub names are resolved to all their A and AAAA records and re-resolved
 * periodically, so a worker follows hubs behind a headless Service. Two
 * addresses of one name that turn out to reach the same hub (the id it
 * sends in its handshake answer: a dual-stack hub with an A and an AAAA
 * record) are served as one: the later found is an alias, given back and
 * not dialed while the other serves.
 *
 * @module
 */

import type { Connection } from "./_io.ts";

/** A hub address as given: a host name or IP literal and a port. */
export interface Target {
  hostname: string;
  port: number;
}

/** One resolved hub address. */
export interface Endpoint {
  /** `address:port`, unique. */
  readonly key: string;
  /** The IP (or, if it could not be resolved here, the name) to dial. */
  readonly address: string;
  readonly port: number;
  /** The name the user gave, for TLS verification and logs. */
  readonly name: string;
}

/** What the dialer needs from its owner. */
export interface DialerOptions {
  targets: Target[];
  concurrency: number;
  /** Milliseconds between DNS re-resolutions; 0 to resolve once. */
  resolveInterval: number;
  minBackoff: number;
  maxBackoff: number;
  /** Resolves a name to addresses (A and AAAA). */
  resolve(name: string): Promise<string[]>;
  /** Opens a connection to an endpoint (TCP or TLS, handshake included). */
  connect(endpoint: Endpoint): Promise<Connection>;
  /**
   * Serves requests on an open connection until it ends, with the hooks of
   * `ServeConnectionOptions`: `acquire` when a request arrives (false =
   * decline it), `release` after it, `reuse` before each response, `wait`
   * when the hub's wait request arrives on a parked connection, `noPark`
   * when the hub turned out not to know parking. `withdraw` aborting hands
   * the connection back once it is idle.
   */
  serve(
    conn: Connection,
    endpoint: Endpoint,
    hooks: {
      withdraw: AbortSignal;
      acquire(queuedMs: () => number): boolean;
      release(): void;
      reuse(): boolean | "park";
      wait(signal?: AbortSignal, renewMs?: number): Promise<boolean>;
      noPark(): void;
      heard(): void;
    },
  ): Promise<number>;
  /**
   * Milliseconds an idle connection may hear nothing from its hub before
   * it is handed back and dialed again (the hub went away without closing
   * it); 0 or absent: no limit. Asked once per connection. `heard` (a ping
   * arrived) restarts the count, as does every request.
   */
  silence?(conn: Connection): number;
  /**
   * The identity of the hub at the other end of an open connection (from
   * its handshake answer); undefined if unknown (a plain worker, a hub of
   * an earlier version). Asked once per connection.
   */
  hubId?(conn: Connection): string | undefined;
  /**
   * Adaptive capacity: awaited before a connection beyond the first (at each
   * hub) opens.
   */
  gate?: (slot: number, signal: AbortSignal) => Promise<void>;
  onError(error: unknown, context: string): void;
  onConnect?(endpoint: Endpoint): void;
}

interface Link {
  endpoint: Endpoint;
  conn: Connection | null;
  busy: boolean;
  // Declined a request, or parked after its response: offers nothing until
  // its wait request is answered.
  parked: boolean;
  // Answers the hub's wait request while it is held.
  wake: ((offer: boolean) => void) | null;
  withdraw: AbortController;
  // When the hub was last heard from (a ping, a request, a wait request),
  // or the link was last busy or parked.
  heardAt: number;
  // With a gate: served its one request and is closing (offers nothing).
  spent: boolean;
  // Parked at a hub that renews its wait requests (so sends one at least
  // every ping interval): the silence watchdog covers it as an idle link.
  renews: boolean;
}

interface EndpointState {
  endpoint: Endpoint;
  links: Set<Link>;
  opening: number;
  failures: number;
  retryAt: number;
  timer: ReturnType<typeof setTimeout> | undefined;
  removed: boolean;
  /**
   * Whether the hub parks connections: true once it sent a wait request,
   * false once it answered a park with a request instead; unknown until
   * then. Forgotten when connecting to it fails (it may come back another
   * version).
   */
  parks: boolean | undefined;
  /** Connections past the gate (or not gated) that are still opening. */
  admitted: number;
  /** A request from this hub was declined since the worker last took one. */
  owed: boolean;
  /** When the oldest such request reached its hub (this process's clock). */
  owedSince: number;
  /** The id its hub sent on its latest connection, if any. */
  hubId: string | undefined;
  /**
   * Another endpoint of the same name that reaches the same hub (same id)
   * and serves it: this one is not dialed while that holds.
   */
  aliasOf: EndpointState | null;
}

const IPV4 = /^[0-9]{1,3}(\.[0-9]{1,3}){3}$/;

/** Whether `host` is an IP literal (no DNS needed). */
export function isIpLiteral(host: string): boolean {
  return IPV4.test(host) || host.includes(":");
}

/** Keeps a worker's connections to one or more hubs. */
export class Dialer {
  #o: DialerOptions;
  #states = new Map<string, EndpointState>();
  #inUse = 0;
  #refreshing: Promise<void> | null = null;
  #stop: AbortSignal;
  #kill: AbortSignal;
  #resolver: ReturnType<typeof setInterval> | undefined;
  #pending = new Set<Promise<unknown>>();
  #idleWaiters: (() => void)[] = [];
  #turn = 0;

  constructor(options: DialerOptions, stop: AbortSignal, kill: AbortSignal) {
    this.#o = options;
    this.#stop = stop;
    this.#kill = kill;
    stop.addEventListener("abort", () => this.#shutdown(), { once: true });
    kill.addEventListener("abort", () => this.#killAll(), { once: true });
  }

  /** Open connections right now. */
  get connected(): number {
    let n = 0;
    for (const s of this.#states.values()) {
      for (const l of s.links) if (l.conn !== null) n++;
    }
    return n;
  }

  /** Requests in progress. */
  get inUse(): number {
    return this.#inUse;
  }

  /**
   * Endpoints remembered: those that serve, aliases, and addresses gone
   * from DNS whose connections have not all ended yet (then forgotten).
   */
  get remembered(): number {
    return this.#states.size;
  }

  /** The endpoints currently known. */
  get endpoints(): Endpoint[] {
    return [...this.#states.values()].filter((s) => this.#serves(s)).map((
      s,
    ) => s.endpoint);
  }

  // Neither gone from DNS nor an alias of another endpoint.
  #serves(s: EndpointState): boolean {
    return !s.removed && s.aliasOf === null;
  }

  /** Resolves targets, opens connections; resolves when fully stopped. */
  async run(): Promise<void> {
    // A lookup that hangs (a name server that does not answer) must not
    // hold up a drain or a close: stopping does not wait for it.
    const stopped = new Promise<void>((resolve) => {
      if (this.#stop.aborted || this.#kill.aborted) resolve();
      this.#stop.addEventListener("abort", () => resolve(), { once: true });
      this.#kill.addEventListener("abort", () => resolve(), { once: true });
    });
    await Promise.race([this.#refreshOnce(), stopped]);
    const dynamic = this.#o.targets.some((t) => !isIpLiteral(t.hostname));
    if (dynamic && this.#o.resolveInterval > 0 && !this.#stop.aborted) {
      this.#resolver = setInterval(() => {
        // One lookup at a time: slow ones do not pile up.
        if (this.#refreshing === null) this.#refreshOnce();
      }, this.#o.resolveInterval);
    }
    // Done once stopped and nothing is open or opening.
    while (true) {
      if (this.#stop.aborted || this.#kill.aborted) {
        if (this.#resolver !== undefined) clearInterval(this.#resolver);
        this.#resolver = undefined;
        await Promise.allSettled([...this.#pending]);
        if (this.#pending.size === 0) break;
      }
      await new Promise<void>((r) => this.#idleWaiters.push(r));
    }
    for (const s of this.#states.values()) clearTimeout(s.timer);
  }

  #wake(): void {
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const w of waiters) w();
  }

  #track<T>(p: Promise<T>): void {
    this.#pending.add(p);
    p.finally(() => {
      this.#pending.delete(p);
      this.#wake();
    }).catch(() => {});
  }

  #refreshOnce(): Promise<void> {
    const running = this.#refresh().catch((error) =>
      this.#o.onError(error, "resolve")
    ).finally(() => {
      this.#refreshing = null;
    });
    this.#refreshing = running;
    return running;
  }

  async #refresh(): Promise<void> {
    const found = new Map<string, Endpoint>();
    for (const t of this.#o.targets) {
      let addrs: string[] = [];
      if (isIpLiteral(t.hostname)) {
        addrs = [t.hostname];
      } else {
        try {
          addrs = await this.#o.resolve(t.hostname);
        } catch (error) {
          // Stopped: the lookup was abandoned, not failed.
          if (this.#stop.aborted || this.#kill.aborted) return;
          this.#o.onError(error, `resolve ${t.hostname}`);
          // A failed lookup says nothing about the hubs: keep the addresses
          // the name had. (Deno reports a SERVFAIL as NotFound, like a name
          // that does not exist, so no failure can count as an answer.)
          addrs = this.#known(t);
        }
        // Names DNS cannot answer here (e.g. from /etc/hosts) are dialed
        // as names; connect resolves them.
        if (addrs.length === 0) addrs = [t.hostname];
      }
      for (const address of addrs) {
        const key = `${
          address.includes(":") ? `[${address}]` : address
        }:${t.port}`;
        found.set(key, { key, address, port: t.port, name: t.hostname });
      }
    }
    if (this.#stop.aborted) return;
    for (const [key, s] of this.#states) {
      if (!found.has(key) && !s.removed) {
        s.removed = true;
        clearTimeout(s.timer);
        s.timer = undefined;
        for (const l of s.links) l.withdraw.abort();
        this.#unalias(s);
        this.#forgetGone(s);
      }
    }
    for (const [key, endpoint] of found) {
      const s = this.#states.get(key);
      if (s === undefined || s.removed) {
        this.#states.set(key, {
          endpoint,
          links: s?.links ?? new Set(),
          opening: 0,
          failures: 0,
          retryAt: 0,
          timer: undefined,
          removed: false,
          parks: undefined,
          admitted: 0,
          owed: false,
          owedSince: 0,
          hubId: undefined,
          aliasOf: null,
        });
      }
    }
    this.#reconcile();
  }

  // Makes every endpoint's idle offer equal the free permits: parked
  // connections are offered again first, new ones opened for the rest. A
  // hub that parks, or may (until it shows it does not), keeps a surplus
  // offer: a request on it is declined and the connection parked. One that
  // does not park gets it handed back.
  #reconcile(): void {
    if (this.#stop.aborted || this.#kill.aborted) return;
    const free = this.#o.concurrency - this.#inUse;
    const now = performance.now();
    for (const s of this.#fairOrder()) {
      if (!this.#serves(s)) continue;
      let idle = this.#idleLinks(s);
      if (idle > free && s.parks === false) {
        for (const l of s.links) {
          if (idle <= free) break;
          if (!l.busy && !l.parked && !l.withdraw.signal.aborted) {
            l.withdraw.abort();
            idle--;
          }
        }
      }
      let parked = 0;
      for (const l of s.links) {
        // A busy link holds its own permit (the inline engine parks it
        // before the handler runs): it is no offer of a free one.
        if (!l.parked || l.busy || l.withdraw.signal.aborted) continue;
        if (l.wake !== null && idle < free) {
          const wake = l.wake;
          l.wake = null;
          l.parked = false;
          idle++;
          wake(true);
        } else parked++;
      }
      // Parked connections are offered again as permits free, so they
      // count as offers to come.
      const want = free - idle - s.opening - parked;
      if (want <= 0) continue;
      if (now < s.retryAt) {
        if (s.timer === undefined) {
          s.timer = setTimeout(() => {
            s.timer = undefined;
            this.#reconcile();
          }, s.retryAt - now);
        }
        continue;
      }
      for (let i = 0; i < want; i++) this.#track(this.#open(s));
    }
  }

  // The order in which hubs hear of a freed permit. Every hub with a parked
  // connection hears of it, but the first to hear usually wins it: hubs
  // that had a request declined since they were last served go first, the
  // one whose declined request is oldest first (it heads its class in its
  // hub's queue, so this is as close to one FIFO over the hubs as the worker
  // can see);
  // the others in an order whose start turns round, so none is always last.
  #fairOrder(): Iterable<EndpointState> {
    // One hub (the usual case): no order to decide, nothing to allocate.
    if (this.#states.size < 2) return this.#states.values();
    const all = [...this.#states.values()];
    const turn = this.#turn++ % all.length;
    const rotated = all.slice(turn).concat(all.slice(0, turn));
    return rotated.filter((s) => s.owed)
      .sort((a, b) => a.owedSince - b.owedSince)
      .concat(rotated.filter((s) => !s.owed));
  }

  async #open(s: EndpointState): Promise<void> {
    s.opening++;
    const link: Link = {
      endpoint: s.endpoint,
      conn: null,
      busy: false,
      parked: false,
      wake: null,
      withdraw: new AbortController(),
      heardAt: 0,
      spent: false,
      renews: false,
    };
    let conn: Connection;
    let admitted = false;
    try {
      if (this.#o.gate !== undefined) {
        // The slot this connection would be: permits in use, connections
        // offered to this hub, and its connections already admitted and
        // still opening (not those still waiting at the gate, nor spent ones
        // closing). Per hub: the permits offered to each hub are the same
        // ones, so every hub's first offer to an idle worker is slot 0.
        const slot = this.#inUse + this.#idleLinks(s) + s.admitted;
        if (slot > 0) {
          await this.#o.gate(slot, AbortSignal.any([this.#stop, this.#kill]));
        }
        if (this.#stop.aborted || this.#kill.aborted) {
          s.opening--;
          this.#forgetGone(s);
          return;
        }
      }
      s.admitted++;
      admitted = true;
      conn = await this.#o.connect(s.endpoint);
    } catch (error) {
      if (admitted) s.admitted--;
      s.opening--;
      this.#failed(s, error);
      this.#forgetGone(s);
      return;
    }
    s.admitted--;
    s.opening--;
    if (this.#kill.aborted) {
      conn.close();
      this.#forgetGone(s);
      this.#reconcile();
      return;
    }
    link.conn = conn;
    s.links.add(link);
    this.#learn(s, this.#o.hubId?.(conn));
    // Draining, the hub left DNS, or it is served at another address, while
    // this connection was being made: the hub may already have sent a
    // request on it, so it is handed back the usual way (the engine answers
    // such a request with the "not started" 408 and the hub sends it
    // elsewhere) rather than closed.
    if (this.#stop.aborted || !this.#serves(s)) link.withdraw.abort();
    // The permits may have gone while this connection was being made: a hub
    // that does not park gets it back at once rather than send a request
    // it would have to decline (elsewhere a request on it parks it).
    if (
      s.parks === false &&
      this.#idleLinks(s) > this.#o.concurrency - this.#inUse
    ) {
      link.withdraw.abort();
    }
    if (!link.withdraw.signal.aborted) this.#o.onConnect?.(s.endpoint);
    const since = performance.now();
    let served = 0;
    let declined = false;
    const withdraw = AbortSignal.any([link.withdraw.signal, this.#stop]);
    const unwait = () => {
      const wake = link.wake;
      link.wake = null;
      wake?.(false);
    };
    withdraw.addEventListener("abort", unwait, { once: true });
    link.heardAt = performance.now();
    const silence = this.#o.silence?.(conn) ?? 0;
    let watchdog: ReturnType<typeof setInterval> | undefined;
    if (silence > 0) {
      watchdog = setInterval(() => {
        const now = performance.now();
        // Only an idle connection, or a parked one whose hub renews its wait
        // request, expects to hear from its hub.
        if (link.busy || (link.parked && !link.renews)) link.heardAt = now;
        if (withdraw.aborted || now - link.heardAt < silence) return;
        this.#o.onError(
          new Error(
            `Hub ${s.endpoint.key} sent nothing for ${
              Math.round(silence / 1000)
            } s on ${
              link.parked ? "a parked" : "an idle"
            } connection; dialing again`,
          ),
          "connection",
        );
        link.withdraw.abort();
      }, Math.max(10, Math.min(1000, silence / 8)));
    }
    try {
      served = await this.#o.serve(conn, s.endpoint, {
        withdraw,
        acquire: (queuedMs) => {
          // A request is word from the hub, declined or not.
          link.heardAt = performance.now();
          if (this.#inUse >= this.#o.concurrency || this.#kill.aborted) {
            // Declined, not a hub failure: parked, or closed by the engine.
            // The request goes back to the head of its hub's queue.
            link.parked = true;
            declined = true;
            const since = performance.now() - (queuedMs() || 0);
            if (!s.owed || since < s.owedSince) s.owedSince = since;
            s.owed = true;
            return false;
          }
          this.#inUse++;
          link.busy = true;
          link.parked = false;
          s.owed = false;
          this.#reconcile();
          return true;
        },
        reuse: () => {
          if (!this.rotate) return true;
          if (s.parks === false) return false;
          link.parked = true;
          return "park";
        },
        release: () => {
          this.#inUse--;
          link.busy = false;
          // The silence is counted from the end of the request, not from
          // before it: a connection busy more often than the ping interval
          // is never pinged.
          link.heardAt = performance.now();
          // With a gate a connection carries one request: this one is done.
          if (this.#o.gate !== undefined) link.spent = true;
          this.#reconcile();
        },
        wait: (signal, renewMs) => {
          link.heardAt = performance.now();
          link.renews = (renewMs ?? 0) > 0;
          s.parks = true;
          link.parked = true;
          const { promise, resolve } = Promise.withResolvers<boolean>();
          if (withdraw.aborted) resolve(false);
          else {
            link.wake = resolve;
            // The engine stops waiting (to renew the parked connection):
            // false, unless a permit woke it first.
            signal?.addEventListener("abort", () => {
              if (link.wake !== resolve) return;
              link.wake = null;
              resolve(false);
            }, { once: true });
            this.#reconcile();
          }
          return promise;
        },
        noPark: () => {
          s.parks = false;
          link.parked = false;
        },
        heard: () => {
          link.heardAt = performance.now();
        },
      });
    } catch (error) {
      this.#o.onError(error, "connection");
    } finally {
      clearInterval(watchdog);
      withdraw.removeEventListener("abort", unwait);
      unwait();
      s.links.delete(link);
      link.conn = null;
      this.#forgetGone(s);
    }
    // A hub that accepts and drops connections at once gets backoff too;
    // not one that sent a request (a declined upload closes its connection),
    // nor one the worker itself is closing.
    if (
      served === 0 && !declined && performance.now() - since < 1000 &&
      !link.withdraw.signal.aborted && !this.#stop.aborted &&
      !this.#kill.aborted
    ) {
      this.#failed(s, new Error("hub closed the connection at once"));
    } else {
      s.failures = 0;
      this.#reconcile();
    }
  }

  // An address gone from DNS is forgotten once nothing of it is open or
  // opening (unless it came back meanwhile as a fresh entry): a hub name
  // whose addresses change (hub pods replaced) must not pile them up.
  #forgetGone(s: EndpointState): void {
    if (
      s.removed && s.links.size === 0 && s.opening === 0 &&
      this.#states.get(s.endpoint.key) === s
    ) {
      clearTimeout(s.timer);
      s.timer = undefined;
      this.#states.delete(s.endpoint.key);
    }
  }

  // Connections a hub may send a request on now.
  #idleLinks(s: EndpointState): number {
    let idle = 0;
    for (const l of s.links) {
      if (!l.busy && !l.parked && !l.spent && !l.withdraw.signal.aborted) {
        idle++;
      }
    }
    return idle;
  }

  /**
   * With several hubs, a connection carries one request and is then parked
   * (or, at a hub that does not park, given back), so the freed permit is
   * offered to every hub at once instead of going straight back to the hub
   * that was just served (which would starve the others while it has a
   * queue).
   */
  get rotate(): boolean {
    let n = 0;
    for (const s of this.#states.values()) if (this.#serves(s)) n++;
    return n > 1;
  }

  // `s` has a connection to the hub with id `id`. If another address of the
  // same name already serves that hub, `s` becomes its alias: its
  // connections are handed back (busy ones once their request is done).
  #learn(s: EndpointState, id: string | undefined): void {
    // A plain worker, or a hub of an earlier version: nothing learned.
    if (id === undefined || s.hubId === id) return;
    // Another hub answers here now (a restart, or a hand-over on the same
    // port): aliases of this address may no longer be the same hub.
    let changed = s.hubId !== undefined && this.#unalias(s);
    s.hubId = id;
    if (s.aliasOf !== null && s.aliasOf.hubId !== id) {
      // Not the same hub after all (one of them was handed over).
      s.aliasOf = null;
      changed = true;
    }
    const kept = s.aliasOf === null ? this.#servingHub(s) : undefined;
    if (kept !== undefined) {
      s.aliasOf = kept;
      s.owed = false;
      clearTimeout(s.timer);
      s.timer = undefined;
      for (const l of s.links) l.withdraw.abort();
    }
    if (changed) this.#reconcile();
  }

  // Another address that serves the hub `s` reaches. Only addresses of one
  // name count: a hub behind another name cannot, by claiming an id, take a
  // worker away from this one.
  #servingHub(s: EndpointState): EndpointState | undefined {
    for (const t of this.#states.values()) {
      if (
        t !== s && this.#serves(t) && t.hubId === s.hubId &&
        t.endpoint.name === s.endpoint.name &&
        t.endpoint.port === s.endpoint.port
      ) return t;
    }
    return undefined;
  }

  // `s` no longer serves its hub, or it is another hub now: its aliases
  // are to be dialed again (by the caller's reconcile), each learning afresh
  // which hub it reaches. Whether there were any.
  #unalias(s: EndpointState): boolean {
    let freed = false;
    for (const a of this.#states.values()) {
      if (a.aliasOf !== s) continue;
      a.aliasOf = null;
      a.hubId = undefined;
      freed = true;
    }
    return freed;
  }

  // The addresses `t` resolved to last time (none if it never did).
  #known(t: Target): string[] {
    const addrs: string[] = [];
    for (const s of this.#states.values()) {
      const e = s.endpoint;
      if (
        !s.removed && e.name === t.hostname && e.port === t.port &&
        e.address !== t.hostname
      ) addrs.push(e.address);
    }
    return addrs;
  }

  #failed(s: EndpointState, error: unknown): void {
    s.parks = undefined;
    // The hub may come back as another one; its aliases re-learn too.
    s.hubId = undefined;
    this.#unalias(s);
    this.#o.onError(error, `connect ${s.endpoint.key}`);
    // Connections opened together fail together: one failure per round, or
    // the backoff would grow with the concurrency.
    if (performance.now() < s.retryAt) return this.#reconcile();
    s.failures++;
    const ceiling = Math.min(
      this.#o.maxBackoff,
      this.#o.minBackoff * 2 ** Math.min(30, s.failures - 1),
    );
    s.retryAt = performance.now() + ceiling / 2 + Math.random() * ceiling / 2;
    this.#reconcile();
  }

  #shutdown(): void {
    for (const s of this.#states.values()) {
      clearTimeout(s.timer);
      s.timer = undefined;
      for (const l of s.links) l.withdraw.abort();
    }
    this.#wake();
  }

  #killAll(): void {
    for (const s of this.#states.values()) {
      clearTimeout(s.timer);
      s.timer = undefined;
      for (const l of s.links) {
        try {
          l.conn?.close();
        } catch {
          // already closed
        }
      }
    }
    this.#wake();
  }
}
