/**
 * The hub's FIFO of waiting requests.
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
  prev: QueueNode<T> | null;
  next: QueueNode<T> | null;
  queued: boolean;
}

/** Options for {@linkcode WaitQueue}. */
export interface WaitQueueOptions<T> {
  /** Milliseconds a value may wait; 0 means forever. */
  timeout: number;
  /** Called for each value that waited longer than `timeout`, after removal. */
  onTimeout(value: T): void;
  /** Clock in milliseconds; `performance.now` by default (tests inject one). */
  now?: () => number;
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

  constructor(options: WaitQueueOptions<T>) {
    this.#timeout = options.timeout;
    this.#onTimeout = options.onTimeout;
    this.#now = options.now ?? (() => performance.now());
  }

  /** Number of waiting values. */
  get size(): number {
    return this.#size;
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
