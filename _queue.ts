/**
 * The hub's queues of waiting requests: a FIFO per priority class.
 *
 * A doubly linked list, so that an entry whose consumer left is removed in
 * O(1), and a request that must be retried goes back to the head. Entries
 * stay in order of arrival, so queue timeouts use one timer for the oldest
 * entry, armed only while something waits: a request that finds an idle
 * worker never touches a timer.
 *
 * @module
 */

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

/** A FIFO with O(1) removal, re-queue at the head and a single expiry timer. */
export class WaitQueue<T> {
  #head: QueueNode<T> | null = null;
  #tail: QueueNode<T> | null = null;
  #size = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timeout: number;
  #onTimeout: (value: T) => void;
  #now: () => number;
  #priority: number;

  constructor(options: WaitQueueOptions<T>) {
    this.#timeout = options.timeout;
    this.#onTimeout = options.onTimeout;
    this.#now = options.now ?? (() => performance.now());
    this.#priority = options.priority ?? 0;
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
    else {
      this.#head = node;
      this.#disarm(); // a new head: its own deadline
    }
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
    // A new head may be due before the deadline the timer was armed for.
    if (node.prev === null) this.#disarm();
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
    if (this.#size === 0) this.#disarm();
    return true;
  }

  /** Removes every node, oldest first, and stops the timer. */
  drain(): T[] {
    const out: T[] = [];
    for (let n = this.shift(); n; n = this.shift()) out.push(n.value);
    this.#disarm();
    return out;
  }

  #arm(): void {
    if (this.#timeout <= 0 || this.#timer !== undefined || !this.#head) return;
    const wait = Math.max(0, this.#head.since + this.#timeout - this.#now());
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#expire();
    }, Math.ceil(wait));
  }

  #disarm(): void {
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
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

/**
 * Waiting values in priority classes: a higher class is always served
 * first, and each class is a {@linkcode WaitQueue} (first come, first
 * served, with its own timeout timer). Strict: a lower class waits while a
 * higher one has anything, bounded by the queue timeout. Only class 0 and
 * the classes that hold something are looked at (an empty class is kept for
 * its next value), so a request path pays for classes only where they are
 * used.
 */
export class PriorityQueue<T> {
  // Highest class first: class 0 and the classes that hold something.
  #levels: WaitQueue<T>[];
  #byPriority = new Map<number, WaitQueue<T>>();
  #base: WaitQueue<T>;
  #options: WaitQueueOptions<T>;
  #size = 0;

  constructor(options: WaitQueueOptions<T>) {
    this.#options = options;
    this.#base = this.#make(0);
    this.#levels = [this.#base];
  }

  /** Number of waiting values, over all classes. */
  get size(): number {
    return this.#size;
  }

  /** The node {@linkcode shift} would return: the oldest of the highest class. */
  get head(): QueueNode<T> | null {
    // Only class 0 can be empty, so the first or the second class has it.
    for (const level of this.#levels) if (level.size > 0) return level.head;
    return null;
  }

  /** When the longest-waiting value joined, over all classes; null if empty. */
  get oldestSince(): number | null {
    let oldest: number | null = null;
    for (const level of this.#levels) {
      const head = level.head;
      if (head !== null && (oldest === null || head.since < oldest)) {
        oldest = head.since;
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
      oldestSince: level.head?.since ?? null,
    }));
  }

  /** Adds `value` to its class in order of `since` (see {@linkcode WaitQueue.push}). */
  push(value: T, since?: number, priority = 0): QueueNode<T> {
    const node = this.#level(priority).push(value, since);
    this.#size++;
    return node;
  }

  /** Puts `value` back at the head of its class (see {@linkcode WaitQueue.unshift}). */
  unshift(value: T, since: number, priority = 0): QueueNode<T> {
    const node = this.#level(priority).unshift(value, since);
    this.#size++;
    return node;
  }

  /** Removes and returns the oldest node of the highest class. */
  shift(): QueueNode<T> | null {
    for (const level of this.#levels) {
      if (level.size > 0) {
        const node = level.shift()!;
        this.#removed(level);
        return node;
      }
    }
    return null;
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

  #make(priority: number): WaitQueue<T> {
    const { onTimeout } = this.#options;
    const level: WaitQueue<T> = new WaitQueue<T>({
      ...this.#options,
      priority,
      onTimeout: (value) => {
        this.#removed(level);
        onTimeout(value);
      },
    });
    this.#byPriority.set(priority, level);
    return level;
  }

  #level(priority: number): WaitQueue<T> {
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
  #removed(level: WaitQueue<T>): void {
    this.#size--;
    if (level.size > 0 || level === this.#base) return;
    const at = this.#place(level.priority);
    if (this.#levels[at] === level) this.#levels.splice(at, 1);
  }
}
