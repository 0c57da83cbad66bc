/**
 * Fair shares of worker time: how much of a pool's workers each
 * fair-queuing key has used, for a {@linkcode FairQueue} that serves the
 * key that has used least (start-time fair queuing over keys).
 *
 * What a request will cost is not known when it starts, so it is charged
 * an estimate then (its key's recent mean, or the pool's) and corrected
 * with what it took, in milliseconds of a busy worker connection, when
 * that connection frees. The means of the keys seen last are kept after
 * their accounts go (a light consumer is often idle between requests,
 * and the pool's mean may be a heavy one's). A key is remembered only while it holds
 * something (a request queued or running); one that comes back after that
 * starts level with the key served last (the virtual clock), so it can
 * neither bank an idle spell nor be made to pay for a past burst. A key
 * that queues again while only running requests held it is raised to the
 * clock if it is behind it (as start-time fair queuing takes a flow's
 * start tag as at least the virtual time): a long request, charged its
 * estimate until it ends, must not bank the time it runs as a lead over
 * keys that waited. A key with a weight is charged its time divided by the
 * weight, so that keys get shares in proportion to their weights. Counting
 * requests instead of time (`per: "request"`), each request costs 1 (over
 * its key's weight): weighted turns.
 *
 * @module
 */

/** One key's account; kept by a {@linkcode ShareLedger} while held. */
export interface ShareEntry {
  readonly key: string;
  /** Milliseconds of worker time charged (divided by the weight), on the ledger's clock. */
  used: number;
  /** Its weight (1 unless the ledger's `weightOf` says otherwise). */
  readonly weight: number;
  /** Queued and running requests that hold it. */
  refs: number;
  /** Of those, the queued ones (over all the queues that share the ledger). */
  queued: number;
  /** Mean milliseconds its requests took (moving), or -1 before one ended. */
  mean: number;
}

// Keys whose means are kept after their accounts go, the last seen first.
const MEANS_KEPT = 4096;

// Weight of the newest request in a key's mean, and in the pool's.
const KEY_WEIGHT = 1 / 4;
const POOL_WEIGHT = 1 / 16;

/** Options for {@linkcode ShareLedger}. */
export interface ShareLedgerOptions {
  /** A key's weight (a positive finite number); 1 for every key if unset. */
  weightOf?: (key: string) => number;
  /**
   * What a request costs: the worker time it takes (`"time"`), or 1
   * (`"request"`), whatever it takes.
   * @default {"time"}
   */
  per?: "time" | "request";
}

/** Worker time used per key, in one pool (see the module docs). */
export class ShareLedger {
  #entries = new Map<string, ShareEntry>();
  #weightOf: ((key: string) => number) | null;
  #perRequest: boolean;
  #clock = 0;
  #mean = -1;
  // Means of recent keys, in the order they were last updated (oldest first).
  #means = new Map<string, number>();
  #listeners = new Set<(entry: ShareEntry) => void>();
  #released: ShareEntry[] = [];

  constructor(options: ShareLedgerOptions = {}) {
    this.#weightOf = options.weightOf ?? null;
    this.#perRequest = options.per === "request";
  }

  /** Keys remembered (holding a request, or released in this task). */
  get size(): number {
    return this.#entries.size;
  }

  /** The virtual clock: what the key served last had used when it started. */
  get clock(): number {
    return this.#clock;
  }

  /** Mean milliseconds a request of the pool took (moving), or -1 before one ended. */
  get mean(): number {
    return this.#mean;
  }

  /** The entry of `key` if it is remembered. */
  get(key: string): ShareEntry | undefined {
    return this.#entries.get(key);
  }

  /**
   * Calls `fn` whenever a key's `used` changes (its queues reorder), until
   * {@linkcode unlisten}.
   */
  listen(fn: (entry: ShareEntry) => void): void {
    this.#listeners.add(fn);
  }

  /** Stops calling `fn`. */
  unlisten(fn: (entry: ShareEntry) => void): void {
    this.#listeners.delete(fn);
  }

  /**
   * A request of `key` is queued (`queued`) or running: remembers the key
   * (starting level with the clock) until as many {@linkcode release}s. A
   * key that had nothing queued and is behind the clock (only running
   * requests held it while others were served) is raised to the clock.
   */
  hold(key: string, queued = false): ShareEntry {
    let entry = this.#entries.get(key);
    if (entry === undefined) {
      const weight = this.#weightOf?.(key) ?? 1;
      entry = {
        key,
        used: this.#clock,
        weight,
        refs: 0,
        queued: 0,
        mean: this.#means.get(key) ?? -1,
      };
      this.#entries.set(key, entry);
    }
    entry.refs++;
    if (queued && entry.queued++ === 0 && entry.used < this.#clock) {
      // Set, not charged: `used` is already divided by the weight.
      entry.used = this.#clock;
      this.#moved(entry);
    }
    return entry;
  }

  /**
   * Ends one {@linkcode hold} (of a queued request if `queued`). A key held
   * by nothing is forgotten once the current task ends, so a request that
   * leaves the queue to start on a worker keeps its key's account.
   */
  release(key: string, queued = false): void {
    const entry = this.#entries.get(key);
    if (entry === undefined || entry.refs <= 0) return;
    if (queued && entry.queued > 0) entry.queued--;
    if (--entry.refs > 0) return;
    if (this.#released.push(entry) === 1) {
      queueMicrotask(() => this.#forget());
    }
  }

  /**
   * A request of `key` starts on a worker: moves the clock up to the key's
   * use and charges it the estimate (in milliseconds of worker time, which
   * it returns for {@linkcode finish}). The key must be held.
   */
  start(key: string): number {
    const entry = this.#entries.get(key);
    if (entry === undefined) return 0;
    if (entry.used > this.#clock) this.#clock = entry.used;
    const estimate = this.#perRequest
      ? 1
      : entry.mean >= 0
      ? entry.mean
      : this.#mean >= 0
      ? this.#mean
      : 0;
    this.#charge(entry, estimate);
    return estimate;
  }

  /**
   * A request of `key` that {@linkcode start} charged `estimate` ended
   * after `ms` on its worker: the key is charged the difference, and the
   * means learn the time.
   */
  finish(key: string, estimate: number, ms: number): void {
    // Counting requests, what it took changes nothing.
    if (this.#perRequest) return;
    if (!(ms >= 0)) ms = 0;
    this.#mean = this.#mean < 0
      ? ms
      : this.#mean + (ms - this.#mean) * POOL_WEIGHT;
    const entry = this.#entries.get(key);
    if (entry === undefined) return;
    entry.mean = entry.mean < 0
      ? ms
      : entry.mean + (ms - entry.mean) * KEY_WEIGHT;
    const means = this.#means;
    means.delete(key);
    means.set(key, entry.mean);
    if (means.size > MEANS_KEPT) means.delete(means.keys().next().value!);
    this.#charge(entry, ms - estimate);
  }

  #charge(entry: ShareEntry, ms: number): void {
    if (ms === 0) return;
    entry.used += ms / entry.weight;
    this.#moved(entry);
  }

  // A key's use changed: its queues reorder.
  #moved(entry: ShareEntry): void {
    for (const fn of this.#listeners) fn(entry);
  }

  #forget(): void {
    const released = this.#released;
    this.#released = [];
    for (const entry of released) {
      if (entry.refs === 0 && this.#entries.get(entry.key) === entry) {
        this.#entries.delete(entry.key);
      }
    }
  }
}
