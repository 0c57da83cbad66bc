/**
 * A binary min-heap whose items know their place in it, so that one can be
 * moved after its order changed, or removed, in O(log n) without a search.
 *
 * @module
 */

/** Where an item keeps its index in an {@linkcode IndexedHeap} (-1: not in it). */
export interface HeapSlot<T> {
  get(item: T): number;
  set(item: T, index: number): void;
}

/** A binary min-heap by `before`, with O(log n) update and removal of any item. */
export class IndexedHeap<T> {
  #items: T[] = [];
  #before: (a: T, b: T) => boolean;
  #slot: HeapSlot<T>;

  /**
   * @param before Whether `a` comes out before `b`.
   * @param slot Reads and writes the index an item keeps.
   */
  constructor(before: (a: T, b: T) => boolean, slot: HeapSlot<T>) {
    this.#before = before;
    this.#slot = slot;
  }

  /** Number of items. */
  get size(): number {
    return this.#items.length;
  }

  /** The first item, if any. */
  peek(): T | undefined {
    return this.#items[0];
  }

  /** Whether `item` is in the heap. */
  has(item: T): boolean {
    return this.#slot.get(item) >= 0;
  }

  /** Adds `item`, which must not be in the heap. */
  push(item: T): void {
    this.#slot.set(item, this.#items.push(item) - 1);
    this.#up(item);
  }

  /** Puts `item` back in order after what orders it changed; no-op if absent. */
  update(item: T): void {
    if (this.#slot.get(item) < 0) return;
    this.#up(item);
    this.#down(item);
  }

  /** Removes `item`; no-op if absent. */
  delete(item: T): void {
    const at = this.#slot.get(item);
    if (at < 0) return;
    const last = this.#items.pop()!;
    if (last !== item) {
      this.#items[at] = last;
      this.#slot.set(last, at);
      this.update(last);
    }
    this.#slot.set(item, -1);
  }

  #up(item: T): void {
    const items = this.#items;
    let i = this.#slot.get(item);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.#before(item, items[parent])) break;
      items[i] = items[parent];
      this.#slot.set(items[i], i);
      i = parent;
    }
    items[i] = item;
    this.#slot.set(item, i);
  }

  #down(item: T): void {
    const items = this.#items;
    const n = items.length;
    let i = this.#slot.get(item);
    for (;;) {
      let child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && this.#before(items[child + 1], items[child])) {
        child++;
      }
      if (!this.#before(items[child], item)) break;
      items[i] = items[child];
      this.#slot.set(items[i], i);
      i = child;
    }
    items[i] = item;
    this.#slot.set(item, i);
  }
}
