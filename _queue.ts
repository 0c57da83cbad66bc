/**
 * The hub's queues of waiting requests: a FIFO per priority class, or with
 * fair queuing a FIFO per consumer key served in turn.
 *
 * A doubly linked list, so that an entry whose consumer left is removed in
 * O(1), and a request that must be retried goes back to the head. Entries
 * stay in order of arrival, so queue timeouts use one timer for the oldest
 * entry, armed only while something waits: a request that finds an idle
 * worker never touches a timer. A fair queue keeps its keys in a heap by
 * their oldest entry, so that one timer serves all of them too.
 *
 * @module
 */

import { IndexedHeap } from "./_heap.ts";
import type { ShareEntry, ShareLedger } from "./_share.ts";

/** A queued item with its links and the time it joined. */
export interface QueueNode<T> {
  readonly value: T;
  /** `performance.now()` when the value first joined the queue. */
  readonly since: number;
  /** The priority class of the queue it is in (see {@linkcode PriorityQueue}). */
  readonly priority: number;
  prev: QueueNode<T> | null;
  next: QueueNode<T> | null;
  queued: boolean;
}

/** One class of a {@linkcode PriorityQueue}, as {@linkcode PriorityQueue.classes} lists it. */
export interface QueueClass {
  /** The class. */
  priority: number;
  /** Values waiting in it. */
  size: number;
  /** When its oldest value joined, or null if it is empty. */
  oldestSince: number | null;
}

/** Options for {@linkcode WaitQueue}. */
export interface WaitQueueOptions<T> {
  /** Milliseconds a value may wait; 0 means forever. */
  timeout: number;
  /** Called for each value that waited longer than `timeout`, after removal. */
  onTimeout(value: T): void;
  /** Clock in milliseconds; `performance.now` by default (tests inject one). */
  now?: () => number;
  /** The priority class its nodes carry. Default 0. */
  priority?: number;
}

// One timer for a queue's earliest deadline. It is armed again only for an
// earlier deadline, so serving the oldest value never touches it: it then
// fires early, finds nothing due, and the queue arms it for the next.
/**
 * The longest delay `setTimeout` takes, 2^31 - 1 ms (about 24.8 days); a
 * longer one fires at once.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

class Alarm {
  #timer: ReturnType<typeof setTimeout> | undefined;
  #due = Infinity;
  #fire: () => void;
  #now: () => number;

  constructor(fire: () => void, now: () => number) {
    this.#fire = fire;
    this.#now = now;
  }

  // The clock is read only when the timer is set: not on every push.
  set(due: number): void {
    if (this.#timer !== undefined) {
      if (this.#due <= due) return;
      clearTimeout(this.#timer);
    }
    this.#due = due;
    // At most MAX_TIMER_MS: a longer delay would fire at once (and again
    // and again, nothing being due). Firing early, #expire sets it anew.
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#fire();
    }, Math.min(Math.ceil(Math.max(0, due - this.#now())), MAX_TIMER_MS));
  }

  clear(): void {
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
  }
}

/** A FIFO with O(1) removal, re-queue at the head and a single expiry timer. */
export class WaitQueue<T> {
  #head: QueueNode<T> | null = null;
  #tail: QueueNode<T> | null = null;
  #size = 0;
  #alarm: Alarm;
  #timeout: number;
  #onTimeout: (value: T) => void;
  #now: () => number;
  #priority: number;

  constructor(options: WaitQueueOptions<T>) {
    this.#timeout = options.timeout;
    this.#onTimeout = options.onTimeout;
    this.#now = options.now ?? (() => performance.now());
    this.#priority = options.priority ?? 0;
    this.#alarm = new Alarm(() => this.#expire(), this.#now);
  }

  /** Number of waiting values. */
  get size(): number {
    return this.#size;
  }

  /** The priority class its nodes carry. */
  get priority(): number {
    return this.#priority;
  }

  /** The oldest waiting node, if any. */
  get head(): QueueNode<T> | null {
    return this.#head;
  }

  /** When the oldest waiting value joined, or null if it is empty. */
  get oldestSince(): number | null {
    return this.#head?.since ?? null;
  }

  /**
   * Adds `value` in order of `since` (default now): at the tail, unless it
   * joined earlier than values already waiting (a request whose body took
   * a while to arrive), which it then goes ahead of, so that both the
   * order and the timeout follow arrival.
   */
  push(value: T, since: number = this.#now()): QueueNode<T> {
    let after = this.#tail;
    while (after !== null && after.since > since) after = after.prev;
    const node: QueueNode<T> = {
      value,
      since,
      priority: this.#priority,
      prev: after,
      next: after === null ? this.#head : after.next,
      queued: true,
    };
    if (node.next !== null) node.next.prev = node;
    else this.#tail = node;
    if (after !== null) after.next = node;
    else this.#head = node;
    this.#size++;
    this.#arm();
    return node;
  }

  /**
   * Puts `value` back, keeping the time it first joined: at the head,
   * unless values that joined earlier wait (one whose body took a while
   * joined while this one was away), which it then goes behind, so the
   * queue stays in order of `since` and the one timer serves every value.
   */
  unshift(value: T, since: number): QueueNode<T> {
    let before = this.#head;
    while (before !== null && before.since < since) before = before.next;
    const node: QueueNode<T> = {
      value,
      since,
      priority: this.#priority,
      prev: before === null ? this.#tail : before.prev,
      next: before,
      queued: true,
    };
    if (node.prev !== null) node.prev.next = node;
    else this.#head = node;
    if (before !== null) before.prev = node;
    else this.#tail = node;
    this.#size++;
    this.#arm();
    return node;
  }

  /** Removes and returns the oldest node. */
  shift(): QueueNode<T> | null {
    const node = this.#head;
    if (node) this.delete(node);
    return node;
  }

  /** Removes `node` if it is still queued; returns whether it was. */
  delete(node: QueueNode<T>): boolean {
    if (!node.queued) return false;
    node.queued = false;
    if (node.prev) node.prev.next = node.next;
    else this.#head = node.next;
    if (node.next) node.next.prev = node.prev;
    else this.#tail = node.prev;
    node.prev = node.next = null;
    this.#size--;
    if (this.#size === 0) this.#alarm.clear();
    return true;
  }

  /** Removes every node, oldest first, and stops the timer. */
  drain(): T[] {
    const out: T[] = [];
    for (let n = this.shift(); n; n = this.shift()) out.push(n.value);
    this.#alarm.clear();
    return out;
  }

  // A new head may be due before the deadline the timer was armed for.
  #arm(): void {
    if (this.#timeout <= 0 || this.#head === null) return;
    this.#alarm.set(this.#head.since + this.#timeout);
  }

  #expire(): void {
    const now = this.#now();
    while (this.#head && this.#head.since + this.#timeout <= now) {
      const node = this.#head;
      this.delete(node);
      this.#onTimeout(node.value);
    }
    this.#arm();
  }
}

/** Options for {@linkcode FairQueue}. */
export interface FairQueueOptions<T> extends WaitQueueOptions<T> {
  /**
   * The key a value is grouped by (its consumer). It must not change while
   * the value is queued, nor between a {@linkcode FairQueue.shift} and the
   * {@linkcode FairQueue.unshift} that puts the value back.
   */
  keyOf(value: T): string;
  /**
   * Serve the key that has used least worker time, by this ledger, instead
   * of the keys in turn. The queue holds a key in it for each value it
   * queues; whoever runs a value it shifts charges the key (see
   * `ShareLedger`).
   */
  ledger?: ShareLedger;
}

// One key's values (a WaitQueue without a timer of its own) and its places:
// among the keys by their oldest value (age), which the one timer follows;
// and among the keys in the rotation (prev, next), or with a ledger in the
// heap by the key's use and then by when it was last served or joined
// (index, seq).
interface Turn<T> {
  readonly key: string;
  readonly queue: WaitQueue<T>;
  prev: Turn<T> | null;
  next: Turn<T> | null;
  entry: ShareEntry | null;
  index: number;
  seq: number;
  age: number;
}

// Least used first, then the one served or joined longest ago.
const byUse = <T>(a: Turn<T>, b: Turn<T>): boolean => {
  const used = a.entry!.used - b.entry!.used;
  return used < 0 || (used === 0 && a.seq < b.seq);
};
// The key whose oldest value joined first.
const byAge = <T>(a: Turn<T>, b: Turn<T>): boolean =>
  a.queue.head!.since < b.queue.head!.since;
const never = (): void => {};

/**
 * Fair queuing: values grouped by key, each key first come first served,
 * and the keys served in turn, one value per turn (round robin). One key
 * with hundreds of values waiting then delays another key's next value by
 * at most one value per other waiting key, instead of by all of its own.
 * With a `ledger`, the key served next is instead the one that has used
 * least worker time (ties in turn), so that a key whose values take
 * longer gets fewer turns.
 *
 * A key joins the rotation at its end when its first value arrives and
 * leaves it (its memory freed) when its last one goes: keys are
 * unbounded (client addresses), so only keys with something queued cost
 * anything. A value put back ({@linkcode unshift}: a retry, a worker's
 * decline) goes to the head of its key, and that key serves next (with a
 * ledger: first among the keys that have used as little), so a retry
 * never waits a whole round again. The keys are also kept in order of
 * their oldest value, so that one timer, armed while anything waits,
 * times out every key's values. The same surface as
 * {@linkcode WaitQueue}, so that a {@linkcode PriorityQueue} class can be
 * either.
 */
export class FairQueue<T> {
  #turns = new Map<string, Turn<T>>();
  // The rotation: #first serves next; a served key moves to #last.
  #first: Turn<T> | null = null;
  #last: Turn<T> | null = null;
  // With a ledger: the keys least used first.
  #ledger: ShareLedger | null;
  #byUse: IndexedHeap<Turn<T>>;
  #seq = 0;
  // The keys by their oldest value, for the timer and oldestSince.
  #byAge: IndexedHeap<Turn<T>>;
  #alarm: Alarm;
  #size = 0;
  #options: FairQueueOptions<T>;
  #keyOf: (value: T) => string;
  #priority: number;
  #now: () => number;
  // What each key's WaitQueue is made with: no timer of its own.
  #keyQueue: WaitQueueOptions<T>;

  constructor(options: FairQueueOptions<T>) {
    this.#options = options;
    this.#keyOf = options.keyOf;
    this.#priority = options.priority ?? 0;
    this.#ledger = options.ledger ?? null;
    this.#now = options.now ?? (() => performance.now());
    this.#keyQueue = {
      timeout: 0,
      onTimeout: never,
      now: this.#now,
      priority: this.#priority,
    };
    this.#alarm = new Alarm(() => this.#expire(), this.#now);
    this.#byUse = new IndexedHeap<Turn<T>>(byUse, {
      get: (t) => t.index,
      set: (t, i) => t.index = i,
    });
    this.#byAge = new IndexedHeap<Turn<T>>(byAge, {
      get: (t) => t.age,
      set: (t, i) => t.age = i,
    });
  }

  // With a ledger, a key's use changed: its place in the heap follows. Heard
  // only while a key waits here, so a charge costs the classes that hold
  // something, not every class ever made.
  #heard = (entry: ShareEntry): void => {
    const turn = this.#turns.get(entry.key);
    if (turn !== undefined && turn.entry === entry) this.#byUse.update(turn);
  };

  /** Number of waiting values, over all keys. */
  get size(): number {
    return this.#size;
  }

  /** The priority class its nodes carry. */
  get priority(): number {
    return this.#priority;
  }

  /** Number of keys with values waiting. */
  get keys(): number {
    return this.#turns.size;
  }

  /** The node {@linkcode shift} would return: the oldest of the key whose turn it is. */
  get head(): QueueNode<T> | null {
    return this.#next()?.queue.head ?? null;
  }

  /** When the longest-waiting value joined, over all keys; null if empty. */
  get oldestSince(): number | null {
    return this.#byAge.peek()?.queue.head?.since ?? null;
  }

  /** Values of `key` waiting. */
  sizeOf(key: string): number {
    return this.#turns.get(key)?.queue.size ?? 0;
  }

  /**
   * The keys with values waiting: in the order they will be served, or
   * with a ledger in no set order.
   */
  *keyNames(): IterableIterator<string> {
    if (this.#ledger !== null) {
      yield* this.#turns.keys();
      return;
    }
    for (let t = this.#first; t !== null; t = t.next) yield t.key;
  }

  /**
   * Adds `value` to its key, in order of `since` within the key (see
   * {@linkcode WaitQueue.push}); a key new to the rotation joins at its end.
   */
  push(value: T, since?: number): QueueNode<T> {
    const key = this.#keyOf(value);
    let turn = this.#turns.get(key);
    if (turn === undefined) turn = this.#join(key, false);
    else this.#ledger?.hold(key, true);
    const node = turn.queue.push(value, since);
    this.#joined(turn, node);
    return node;
  }

  /**
   * Puts `value` back at the head of its key (behind only values of the key
   * that joined earlier, see {@linkcode WaitQueue.unshift}), and makes that
   * key the next served (with a ledger: the first of those that have used
   * as little).
   */
  unshift(value: T, since: number): QueueNode<T> {
    const key = this.#keyOf(value);
    let turn = this.#turns.get(key);
    if (turn === undefined) turn = this.#join(key, true);
    else if (this.#ledger !== null) {
      turn.seq = -++this.#seq;
      this.#ledger.hold(key, true);
      this.#byUse.update(turn);
    } else if (turn !== this.#first) {
      this.#unlink(turn);
      this.#link(turn, true);
    }
    const node = turn.queue.unshift(value, since);
    this.#joined(turn, node);
    return node;
  }

  /** Removes and returns the head of the key whose turn it is; that key's turn passes. */
  shift(): QueueNode<T> | null {
    const turn = this.#next();
    if (turn === null) return null;
    const node = turn.queue.shift()!;
    this.#size--;
    this.#ledger?.release(turn.key, true);
    if (turn.queue.size === 0) this.#leave(turn);
    else {
      this.#byAge.update(turn);
      if (this.#ledger !== null) {
        turn.seq = ++this.#seq;
        this.#byUse.update(turn);
      } else if (turn.next !== null) {
        this.#unlink(turn);
        this.#link(turn, false);
      }
    }
    return node;
  }

  /** Removes `node` if it is still queued here; returns whether it was. */
  delete(node: QueueNode<T>): boolean {
    if (!node.queued) return false;
    const turn = this.#turns.get(this.#keyOf(node.value));
    if (turn === undefined) return false;
    const head = turn.queue.head === node;
    if (!turn.queue.delete(node)) return false;
    this.#left(turn, head);
    return true;
  }

  /** Removes every node, in the order {@linkcode shift} would, and stops the timer. */
  drain(): T[] {
    const out: T[] = [];
    for (let n = this.shift(); n; n = this.shift()) out.push(n.value);
    return out;
  }

  // The key whose turn it is.
  #next(): Turn<T> | null {
    return this.#ledger === null ? this.#first : this.#byUse.peek() ?? null;
  }

  #join(key: string, front: boolean): Turn<T> {
    const turn: Turn<T> = {
      key,
      queue: new WaitQueue<T>(this.#keyQueue),
      prev: null,
      next: null,
      entry: null,
      index: -1,
      seq: front ? -++this.#seq : ++this.#seq,
      age: -1,
    };
    if (this.#turns.size === 0) this.#ledger?.listen(this.#heard);
    this.#turns.set(key, turn);
    // The ledger holds the key once per value queued, the first one here.
    if (this.#ledger !== null) turn.entry = this.#ledger.hold(key, true);
    this.#link(turn, front);
    return turn;
  }

  // `node` joined `turn`'s queue: a new head moves the key among the ages,
  // and may be due before the deadline the timer was armed for.
  #joined(turn: Turn<T>, node: QueueNode<T>): void {
    this.#size++;
    if (turn.age < 0) this.#byAge.push(turn);
    else if (node.prev === null) this.#byAge.update(turn);
    this.#arm();
  }

  // A value left a key without being served (it timed out or was deleted).
  #left(turn: Turn<T>, head: boolean): void {
    this.#size--;
    this.#ledger?.release(turn.key, true);
    if (turn.queue.size === 0) this.#leave(turn);
    else if (head) this.#byAge.update(turn);
  }

  // An emptied key leaves the rotation and is forgotten; with nothing left
  // the timer stops.
  #leave(turn: Turn<T>): void {
    this.#unlink(turn);
    this.#byAge.delete(turn);
    this.#turns.delete(turn.key);
    if (this.#turns.size > 0) return;
    this.#ledger?.unlisten(this.#heard);
    this.#alarm.clear();
  }

  #link(turn: Turn<T>, front: boolean): void {
    if (this.#ledger !== null) this.#byUse.push(turn);
    else if (front) {
      turn.next = this.#first;
      if (this.#first !== null) this.#first.prev = turn;
      else this.#last = turn;
      this.#first = turn;
    } else {
      turn.prev = this.#last;
      if (this.#last !== null) this.#last.next = turn;
      else this.#first = turn;
      this.#last = turn;
    }
  }

  #unlink(turn: Turn<T>): void {
    if (this.#ledger !== null) {
      this.#byUse.delete(turn);
      return;
    }
    if (turn.prev !== null) turn.prev.next = turn.next;
    else this.#first = turn.next;
    if (turn.next !== null) turn.next.prev = turn.prev;
    else this.#last = turn.prev;
    turn.prev = turn.next = null;
  }

  // The oldest value's deadline (see Alarm).
  #arm(): void {
    const timeout = this.#options.timeout;
    const oldest = this.#byAge.peek();
    if (timeout <= 0 || oldest === undefined) return;
    this.#alarm.set(oldest.queue.head!.since + timeout);
  }

  #expire(): void {
    const now = this.#now();
    const timeout = this.#options.timeout;
    for (let t = this.#byAge.peek(); t !== undefined; t = this.#byAge.peek()) {
      const node = t.queue.head!;
      if (node.since + timeout > now) break;
      t.queue.delete(node);
      this.#left(t, true);
      this.#options.onTimeout(node.value);
    }
    this.#arm();
  }
}

/** Options for {@linkcode PriorityQueue}. */
export interface PriorityQueueOptions<T> extends WaitQueueOptions<T> {
  /**
   * With a key function, each class is a {@linkcode FairQueue} that serves
   * the keys in turn; without one (the default), a {@linkcode WaitQueue}.
   */
  keyOf?: (value: T) => string;
  /**
   * With `keyOf`: serve in each class the key that has used least worker
   * time by this ledger (see {@linkcode FairQueueOptions.ledger}), shared
   * by the classes.
   */
  ledger?: ShareLedger;
  /**
   * Milliseconds of waiting one class is worth: a value is served as if it
   * had joined `priority × step` ms earlier, so a lower class goes ahead of
   * a higher one's values that joined long enough after it, and never
   * starves. Infinity (the default): strict, a higher class always first.
   * @default {Infinity}
   */
  step?: number;
}

// One class: first come first served, or fair between keys.
type Level<T> = WaitQueue<T> | FairQueue<T>;

/**
 * Waiting values in priority classes: a higher class is always served
 * first, and each class is a {@linkcode WaitQueue} (first come, first
 * served, with its own timeout timer), or with `keyOf` a
 * {@linkcode FairQueue} (its keys in turn). Strict: a lower class waits
 * while a higher one has anything, bounded by the queue timeout; unless a
 * `step` makes a class worth a time, and the classes are compared by when
 * their oldest value joined, less `priority × step`. Only class
 * 0 and the classes that hold something are looked at (an empty class is
 * kept for its next value), so a request path pays for classes only where
 * they are used.
 */
export class PriorityQueue<T> {
  // Highest class first: class 0 and the classes that hold something.
  #levels: Level<T>[];
  #byPriority = new Map<number, Level<T>>();
  #base: Level<T>;
  #options: PriorityQueueOptions<T>;
  #size = 0;
  // Milliseconds one class is worth; Infinity: strict.
  #step: number;

  constructor(options: PriorityQueueOptions<T>) {
    this.#options = options;
    this.#step = options.step ?? Infinity;
    this.#base = this.#make(0);
    this.#levels = [this.#base];
  }

  /** Whether its classes are fair between keys (a `keyOf` was given). */
  get fair(): boolean {
    return this.#options.keyOf !== undefined;
  }

  /**
   * Number of distinct keys with values waiting, over all classes; 0
   * without `keyOf`. O(keys): for the stats, not the request path.
   */
  get keys(): number {
    if (!this.fair) return 0;
    const seen = new Set<string>();
    for (const level of this.#levels) {
      for (const key of (level as FairQueue<T>).keyNames()) seen.add(key);
    }
    return seen.size;
  }

  /** Values of `key` waiting, over all classes; 0 without `keyOf`. */
  sizeOf(key: string): number {
    if (!this.fair) return 0;
    let n = 0;
    for (const level of this.#levels) n += (level as FairQueue<T>).sizeOf(key);
    return n;
  }

  /** Number of waiting values, over all classes. */
  get size(): number {
    return this.#size;
  }

  /**
   * The node {@linkcode shift} would return: the head of the highest class,
   * or with a `step` of the class whose oldest value is due first (its
   * oldest, or with `keyOf` the oldest of the key whose turn it is).
   */
  get head(): QueueNode<T> | null {
    return this.#next()?.head ?? null;
  }

  /** When the longest-waiting value joined, over all classes; null if empty. */
  get oldestSince(): number | null {
    let oldest: number | null = null;
    for (const level of this.#levels) {
      const since = level.oldestSince;
      if (since !== null && (oldest === null || since < oldest)) {
        oldest = since;
      }
    }
    return oldest;
  }

  /**
   * Class 0 and the classes holding something, highest first: each one's
   * priority, size, and when its oldest value joined (null if empty).
   */
  classes(): QueueClass[] {
    return this.#levels.map((level) => ({
      priority: level.priority,
      size: level.size,
      oldestSince: level.oldestSince,
    }));
  }

  /**
   * Adds `value` to its class in order of `since` (see
   * {@linkcode WaitQueue.push} and {@linkcode FairQueue.push}).
   */
  push(value: T, since?: number, priority = 0): QueueNode<T> {
    const node = this.#level(priority).push(value, since);
    this.#size++;
    return node;
  }

  /**
   * Puts `value` back at the head of its class (see
   * {@linkcode WaitQueue.unshift} and {@linkcode FairQueue.unshift}).
   */
  unshift(value: T, since: number, priority = 0): QueueNode<T> {
    const node = this.#level(priority).unshift(value, since);
    this.#size++;
    return node;
  }

  /** Removes and returns the head of the highest class (see {@linkcode head}). */
  shift(): QueueNode<T> | null {
    const level = this.#next();
    if (level === null) return null;
    const node = level.shift()!;
    this.#removed(level);
    return node;
  }

  // The class whose head goes next: the highest that holds something, or
  // with a step the one whose oldest value joined first less its class's
  // worth (a tie goes to the higher class). The oldest, not the head: with
  // keys, a class's head is the value of the key whose turn it is, which
  // may have joined just now while another of its keys has waited long.
  // The same at any time: head and shift agree however long values wait.
  #next(): Level<T> | null {
    const levels = this.#levels;
    const step = this.#step;
    if (step === Infinity) {
      // Only class 0 can be empty, so the first or the second class has it.
      for (const level of levels) if (level.size > 0) return level;
      return null;
    }
    let best: Level<T> | null = null;
    let bestAt = Infinity;
    for (const level of levels) {
      const since = level.oldestSince;
      if (since === null) continue;
      const at = since - level.priority * step;
      if (best === null || at < bestAt) {
        best = level;
        bestAt = at;
      }
    }
    return best;
  }

  /** Removes `node` if it is still queued; returns whether it was. */
  delete(node: QueueNode<T>): boolean {
    const level = this.#byPriority.get(node.priority);
    if (level === undefined || !level.delete(node)) return false;
    this.#removed(level);
    return true;
  }

  /** Removes every node, highest class first, and stops the timers. */
  drain(): T[] {
    const out: T[] = [];
    for (const level of this.#levels) {
      for (const value of level.drain()) out.push(value);
    }
    this.#levels = [this.#base];
    this.#size = 0;
    return out;
  }

  #make(priority: number): Level<T> {
    const { onTimeout, keyOf } = this.#options;
    const options = {
      ...this.#options,
      priority,
      onTimeout: (value: T) => {
        this.#removed(level);
        onTimeout(value);
      },
    };
    const level: Level<T> = keyOf === undefined
      ? new WaitQueue<T>(options)
      : new FairQueue<T>({ ...options, keyOf });
    this.#byPriority.set(priority, level);
    return level;
  }

  #level(priority: number): Level<T> {
    if (priority === 0) return this.#base;
    const level = this.#byPriority.get(priority) ?? this.#make(priority);
    // An empty class is kept for its next value, but not in the list.
    if (level.size === 0) {
      const at = this.#place(priority);
      if (this.#levels[at] !== level) this.#levels.splice(at, 0, level);
    }
    return level;
  }

  // Where class `priority` is or goes in #levels (highest first).
  #place(priority: number): number {
    const levels = this.#levels;
    let lo = 0;
    let hi = levels.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (levels[mid].priority > priority) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  // One value left `level`: a class other than 0 leaves the list when it
  // empties (and stays made, for its next value).
  #removed(level: Level<T>): void {
    this.#size--;
    if (level.size > 0 || level === this.#base) return;
    const at = this.#place(level.priority);
    if (this.#levels[at] === level) this.#levels.splice(at, 1);
  }
}
